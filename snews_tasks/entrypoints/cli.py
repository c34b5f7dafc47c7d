"""`snews-tasks`: the operator's command line (click). Also `celery snews ...`.

Each command loads the settings once, at its start, and checks what its own
role needs (Flower's credentials only for `flower`); admin operations exist only
here, never as something a Kafka message can trigger.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import redis
from pymongo.errors import PyMongoError

from ..adapters.observation_publisher import PublishError, publish_observations
from ..core.examples import EXAMPLES, describe, example_messages
from ..core.sites import SiteError
from ..settings import (
    MODES,
    Settings,
    SettingsError,
    describe_settings,
    load_settings,
    require_console_auth,
    require_flower_auth,
)
from ..tasks import context
from ..tasks.app import app
from .failed import failed_records, redrive
from .ingest import run_ingest
from .publish import read_jsonl
from .replay import heartbeats_file, replay_file
from .stack import DEFAULT_PROCFILE, run_stack
from .status import build_status, short_error

F = TypeVar("F", bound=Callable[..., Any])
HELP_WIDTH = 100


def _settings_epilog() -> str:
    lines = ["\b", "Settings (config/<mode>.env, overridden by SNEWS_* environment variables):"]
    for doc in describe_settings():
        wrapped = textwrap.wrap(doc.doc, width=HELP_WIDTH - 40) or [""]
        lines.append(f"  {doc.name:<34} {wrapped[0]}")
        lines += [" " * 37 + more for more in wrapped[1:]]
    return "\n".join(lines)


@click.group(
    name="snews",
    epilog=_settings_epilog(),
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": HELP_WIDTH},
)
@click.option(
    "--mode",
    type=click.Choice(MODES),
    default=None,
    help="configuration mode: reads config/<mode>.env (default: $SNEWS_MODE or local)",
)
@click.pass_context
def cli(ctx: click.Context, mode: str | None) -> None:
    """SNEWS coincidence backend: replay streams, run and operate the Celery stack."""
    ctx.obj = mode


def _load(ctx: click.Context, *checks: Callable[[Settings], None]) -> Settings:
    """The command's settings, with its role's own checks; a configuration error stops it
    with exit status 2 naming the key."""
    try:
        settings = load_settings(ctx.find_root().obj)
        for check in checks:
            check(settings)
    except SettingsError as error:
        click.echo(f"snews-tasks: configuration error: {error}", err=True)
        sys.exit(2)
    return settings


def _settings(ctx: click.Context, *checks: Callable[[Settings], None]) -> Settings:
    """`_load`, and the Celery app of this process runs with them."""
    settings = _load(ctx, *checks)

    context.use_settings(settings)
    return settings


def _services_errors(command: F) -> F:
    """Redis or MongoDB unreachable: one line naming the error, exit status 2."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (redis.RedisError, PyMongoError) as error:
            click.echo(
                f"snews-tasks {click.get_current_context().info_name}: {short_error(error)}",
                err=True,
            )
            sys.exit(2)

    return wrapper  # type: ignore[return-value]


def _offline_stream(dry_run_help: str) -> Callable[[F], F]:
    """The STREAM.jsonl argument and the required --dry-run flag of the offline commands."""

    def decorate(command: F) -> F:
        command = click.option("--dry-run", is_flag=True, required=True, help=dry_run_help)(command)
        return click.argument("stream", type=click.Path(path_type=Path), metavar="STREAM.jsonl")(
            command
        )

    return decorate


@cli.command()
@_offline_stream("required: use an in-memory store, touch no service")
@click.option(
    "--state-out",
    type=click.Path(path_type=Path),
    metavar="STATE.json",
    help="write the live coincidences after the last message here",
)
@click.option(
    "--progress/--no-progress",
    default=None,
    help="progress bar on stderr (default: when stderr is a terminal)",
)
@click.option(
    "--skymap-dir",
    type=click.Path(file_okay=False, path_type=Path),
    metavar="DIR",
    help="localize each coincidence revision as the live system does, print the UPDATE "
    "carrying its localization, and write its FITS map and PNG picture to DIR",
)
@click.option(
    "--gcn-out",
    type=click.Path(file_okay=False, path_type=Path),
    metavar="DIR",
    help="write the GCN notice each live or fire-drill alert revision would produce to "
    "DIR/<alert_id>-<revision>.json",
)
@click.pass_context
def replay(
    ctx: click.Context,
    stream: Path,
    dry_run: bool,
    state_out: Path | None,
    progress: bool | None,
    skymap_dir: Path | None,
    gcn_out: Path | None,
) -> None:
    """Run a JSONL stream of observation messages through the coincidence engine.

    Replay STREAM (one observation message per line, in arrival order, any tier) through the
    same engine as the coincidence worker, with an in-memory store and no services. The
    stream's latest neutrino time is the clock. Each alert is printed to stdout as one JSON
    object per line; rejected lines go to stderr with their line number and reason. With
    --skymap-dir, each revision the live system localizes is followed at once by the UPDATE
    that carries its localization (as if the localize worker answered instantly), using the
    stream's timing-tier messages; the maps go to DIR/<skymap>. With --gcn-out, the GCN
    SNEWS2 notice of each live and fire-drill revision goes to its own file, so the mapping
    can be checked offline. Exit status 0 unless STREAM cannot be read, a DIR cannot be
    written or the detector sites file is unusable.
    """

    settings = _load(ctx)  # replay touches no service, so it needs no Celery app either
    show = sys.stderr.isatty() if progress is None else progress
    try:
        report = replay_file(
            settings,
            stream,
            state_out=state_out,
            progress=show,
            out=sys.stdout,
            skymap_dir=skymap_dir,
            gcn_out=gcn_out,
        )
    except OSError as error:
        where = error.filename or stream
        what = "cannot read" if str(where) == str(stream) else "cannot write"
        click.echo(f"snews-tasks replay: {what} {where}: {error.strerror}", err=True)
        ctx.exit(2)
    except SiteError as error:
        click.echo(f"snews-tasks replay: detector sites: {error}", err=True)
        ctx.exit(2)
    click.echo(
        f"replay: {report.lines} messages, {report.rejected} rejected, {report.alerts} alerts",
        err=True,
    )


@cli.command()
@click.option(
    "--start-at",
    type=click.Choice(["latest", "earliest"]),
    default="latest",
    show_default=True,
    help="where a consumer group without committed offsets starts (latest, so a "
    "first start does not replay the topic's retention)",
)
@click.pass_context
def ingest(ctx: click.Context, start_at: str) -> None:
    """Read the observation topic and enqueue its messages as Celery tasks.

    Consume SNEWS_KAFKA_URL/SNEWS_OBSERVATION_TOPIC as consumer group
    snews-tasks-ingest-<mode>. CoincidenceTier and Retraction messages go to the coincidence
    queue, batched while the writer is busy (up to 500 per task); the other tiers and rejects
    go to the storage queue, one task each. Offsets are committed only once a worker has
    started the tasks made from them; a task not started 10 s after its send, with its queue
    empty, is sent again. Runs until SIGTERM or Ctrl-C.
    """

    ctx.exit(run_ingest(_settings(ctx), start_at=start_at))


@cli.command()
@click.option(
    "--only", metavar="NAMES", help="comma-separated Procfile processes to run (default: all)"
)
@click.option(
    "--no-services", is_flag=True, help="start no servers: Redis, Kafka and MongoDB already run"
)
@click.option(
    "--procfile",
    type=click.Path(path_type=Path),
    default=None,
    help="the process list (default: the checkout's Procfile)",
)
@click.option(
    "--strict",
    is_flag=True,
    help="stop the whole stack (exit status 1) when a process exits, instead of starting it again",
)
@click.pass_context
def up(
    ctx: click.Context, only: str | None, no_services: bool, procfile: Path | None, strict: bool
) -> None:
    """Run the whole system locally: services and every Procfile process.

    Start Redis, a Kafka-protocol broker (Tansu) and a MongoDB-protocol server (SecantusDB) on
    their configured 127.0.0.1 ports unless one already answers there, then every Procfile
    process with its output prefixed by its name. A process that exits is started again,
    after a pause that doubles (0.5 s up to 30 s) while it keeps failing, and the stack goes
    on; --strict stops it instead. Ctrl-C or SIGTERM stops everything this command started.
    """
    ctx.exit(
        run_stack(
            _settings(ctx),
            only=only,
            services=not no_services,
            procfile=procfile or DEFAULT_PROCFILE,
            strict=strict,
        )
    )


@cli.command()
@click.option(
    "--example",
    type=click.Choice(sorted(EXAMPLES)),
    help="a built-in burst: three-detector (neutrino times now-11 s, now-2 s, now: "
    "two coincidences), burst20 (every configured detector within 5 s)",
)
@click.option(
    "--file",
    "path",
    type=click.Path(path_type=Path),
    metavar="PATH",
    help="JSONL file, one observation message per line",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["json", "pickle"]),
    default="json",
    show_default=True,
    help="json (hop JSONBlob) or pickle (exactly what snews-pt 3.0.0's Publisher "
    "sends; needs snews-pt installed)",
)
@click.option(
    "--live",
    is_flag=True,
    help="with --file: keep each message's is_test as written (real alerts!)",
)
@click.option("--confirm-live", is_flag=True, help="required with --live")
@click.pass_context
def publish(
    ctx: click.Context,
    example: str | None,
    path: Path | None,
    fmt: str,
    live: bool,
    confirm_live: bool,
) -> None:
    """Send test observations to the observation topic, as detectors do (hop-client).

    Publishes to SNEWS_KAFKA_URL/SNEWS_OBSERVATION_TOPIC. All messages are test messages
    (is_test) unless --live --confirm-live is given with --file.
    """

    settings = _settings(ctx)
    try:
        if (example is None) == (path is None):
            raise PublishError("give one of --example or --file")
        if live and example:
            raise PublishError("--live applies to --file only; examples are always test messages")
        if live and not confirm_live:
            raise PublishError(
                "--live publishes messages that can raise real alerts to "
                "astronomers; add --confirm-live if that is intended"
            )
        if example is not None:
            messages = example_messages(example, settings.detectors, time.time_ns())
        else:
            assert path is not None
            messages = read_jsonl(path, live=live)
        publish_observations(settings, messages, fmt=fmt)
    except (PublishError, ValueError) as error:
        click.echo(f"snews-tasks publish: {error}", err=True)
        ctx.exit(1)
    for message in messages:
        click.echo(f"sent {describe(message)}")
    click.echo(
        f"published {len(messages)} message(s) as {fmt} to "
        f"{settings.kafka_url.rstrip('/')}/{settings.observation_topic}"
    )


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="print the checks as JSON")
@click.option(
    "--timeout",
    type=float,
    default=2.0,
    show_default=True,
    help="seconds to wait for workers and services to answer",
)
@click.pass_context
@_services_errors
def status(ctx: click.Context, as_json: bool, timeout: float) -> None:
    """Health of the running system; exit status 1 when unhealthy.

    Checks: the Celery broker and the state Redis answer; every queue that has registered
    tasks has a consumer; the ingest polled recently; queue depths; failed notifications;
    detectors online and their last heartbeat; the last alert; the latest significance-tier
    combination; the canary; the heartbeat feedback (detectors that missed heartbeats, the
    day's events); detectors without mail contacts. The web console's operations page shows
    the same checks.
    """

    report = build_status(app, _settings(ctx), timeout=timeout)
    if as_json:
        click.echo(
            json.dumps(
                {"healthy": report.healthy, "checks": [c.__dict__ for c in report.checks]},
                indent=2,
                default=str,
            )
        )
    else:
        for check in report.checks:
            click.echo(f"{'OK  ' if check.ok else 'FAIL'} {check.name:<22} {check.detail}")
        click.echo("healthy" if report.healthy else "UNHEALTHY")
    ctx.exit(0 if report.healthy else 1)


@cli.group()
def failed() -> None:
    """List or re-drive notifications whose retries ran out.

    Notifications (MongoDB archive writes, Kafka alerts, Slack posts) that exhausted their
    retries are recorded with their payload. List them, or re-enqueue them once the service
    is back.
    """


@failed.command("list")
@click.option("--json", "as_json", is_flag=True, help="print a JSON list of records")
@click.pass_context
@_services_errors
def failed_list(ctx: click.Context, as_json: bool) -> None:
    """Show failed notifications."""

    _settings(ctx)
    records = failed_records()
    if as_json:
        click.echo(json.dumps(records, indent=2))
        return
    if not records:
        click.echo("no failed notifications")
    for r in records:
        click.echo(f"{r['id']}  attempts={r['attempts']}  failed={r['failed_utc']}  {r['error']}")


@failed.command("retry")
@click.argument("ids", nargs=-1, metavar="[ID]...")
@click.option("--all", "everything", is_flag=True, help="re-drive every failed notification")
@click.pass_context
@_services_errors
def failed_retry(ctx: click.Context, ids: tuple[str, ...], everything: bool) -> None:
    """Re-enqueue failed notifications: record ids (KIND:KEY, from `list`) or --all."""

    if bool(ids) == everything:
        click.echo("snews-tasks failed retry: give record ids or --all (not both)")
        ctx.exit(2)
    _settings(ctx)
    done, unknown = redrive(None if everything else ids)
    for record_id in done:
        click.echo(f"re-driven {record_id}")
    for record_id in unknown:
        click.echo(f"no failed notification {record_id}")
    ctx.exit(1 if unknown else 0)


@cli.command()
@click.pass_context
def flower(ctx: click.Context) -> None:
    """Run Flower on the configured address, with basic auth unless local.

    Runs `celery -A snews_tasks flower` on SNEWS_FLOWER_ADDRESS:SNEWS_FLOWER_PORT. Basic auth
    comes from SNEWS_FLOWER_BASIC_AUTH (passed in the environment, never on the command line);
    the API is open without auth only in local mode on 127.0.0.1.
    """
    settings = _settings(ctx, require_flower_auth)
    env = dict(os.environ, SNEWS_MODE=settings.mode)
    if settings.flower_basic_auth is not None:
        env["FLOWER_BASIC_AUTH"] = settings.flower_basic_auth.get_secret_value()
    else:
        env["FLOWER_UNAUTHENTICATED_API"] = "true"
    celery = shutil.which("celery") or "celery"
    os.execvpe(
        celery,
        [
            celery,
            "-A",
            "snews_tasks",
            "flower",
            f"--address={settings.flower_address}",
            f"--port={settings.flower_port}",
        ],
        env,
    )


@cli.command()
@_offline_stream("required: run the rule in memory, touch no service")
@click.pass_context
def heartbeats(ctx: click.Context, stream: Path, dry_run: bool) -> None:
    """Print the missed and back events a heartbeat stream raises.

    Run STREAM (one heartbeat message per line, in arrival order) through the heartbeat
    feedback rule the beat task runs live (README: "Detector feedback"), on the stream's own
    clock: each heartbeat's sent_time_utc. Each event is printed to stdout as one JSON
    object per line (detector_name, event: missed or back, time_utc, last_heartbeat_utc,
    gap_s, allowed_gap_s, mean_interval_s, sigma_interval_s); unusable lines (unknown
    detector, bad status, sent long after received_time_utc, repeats) go to stderr with
    their line number. Exit status 0 unless STREAM cannot be read.
    """

    settings = _load(ctx)
    try:
        count = heartbeats_file(settings, stream, out=sys.stdout, err=sys.stderr)
    except OSError as error:
        click.echo(f"snews-tasks heartbeats: cannot read {stream}: {error.strerror}", err=True)
        ctx.exit(2)
    click.echo(f"heartbeats: {count} events", err=True)


@cli.command()
@click.pass_context
def console(ctx: click.Context) -> None:
    """Run the web console (read-only) on the configured address.

    Serves http://SNEWS_CONSOLE_ADDRESS:SNEWS_CONSOLE_PORT/: detectors (online, heartbeats,
    missed beats, 24 h timelines), alerts (revisions, members, FAR, significance, sky maps),
    operations (the checks of `status`), /skymaps/<name>; every page also as JSON
    (?format=json). HTTP basic auth from SNEWS_CONSOLE_BASIC_AUTH, required unless local on
    127.0.0.1. Runs until SIGTERM or Ctrl-C.
    """

    settings = _settings(ctx, require_console_auth)
    from .console import serve  # Flask, waitress and matplotlib: the console role's alone

    serve(settings)


def main() -> None:
    cli(prog_name="snews-tasks")
