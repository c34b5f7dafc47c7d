"""`snews-tasks`: the operator's command line."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import redis
from pymongo.errors import PyMongoError

from . import ingest, publish, stack
from .operations import add_failed_parser, add_status_parser, short_error
from .settings import MODES, Settings, SettingsError, describe_settings, load_settings

Command = Callable[[argparse.Namespace, Settings], int]


def _settings_epilog() -> str:
    lines = ["settings (config/<mode>.env, overridden by the environment):"]
    lines += [f"  {doc.name:<34} {doc.doc}" for doc in describe_settings()]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="snews-tasks",
        description="SNEWS coincidence backend: replay streams, run and operate the Celery stack.",
        epilog=_settings_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--mode", choices=MODES, default=None,
                        help="configuration mode: reads config/<mode>.env "
                             "(default: $SNEWS_MODE or local)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    replay = sub.add_parser(
        "replay",
        help="run a JSONL stream of observation messages through the coincidence engine",
        description=(
            "Replay STREAM (one observation message per line, in arrival order, any tier) "
            "through the same engine as the coincidence worker, with an in-memory store and no "
            "services. The stream's latest neutrino time is the clock. Each alert is printed to "
            "stdout as one JSON object per line; rejected lines go to stderr with their line "
            "number and reason. Exit status 0 unless STREAM cannot be read."
        ),
    )
    replay.add_argument("stream", type=Path, metavar="STREAM.jsonl", help="the message stream")
    replay.add_argument("--dry-run", action="store_true", required=True,
                        help="required: use an in-memory store, touch no service")
    replay.add_argument("--state-out", type=Path, metavar="STATE.json",
                        help="write the live coincidences after the last message here")
    replay.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bar on stderr (default: when stderr is a terminal)")
    replay.set_defaults(handler=_replay)

    ingest.add_parser(sub)
    stack.add_parser(sub)
    publish.add_parser(sub)
    add_failed_parser(sub)
    add_status_parser(sub)
    flower = sub.add_parser(
        "flower", help="run Flower on the configured address, with basic auth unless local",
        description="Runs `celery -A snews_tasks flower` on "
                    "SNEWS_FLOWER_ADDRESS:SNEWS_FLOWER_PORT. Basic auth comes from "
                    "SNEWS_FLOWER_BASIC_AUTH (passed in the environment, never on the command "
                    "line); the API is open without auth only in local mode on 127.0.0.1.")
    flower.set_defaults(handler=_flower)
    return parser


def _flower(args: argparse.Namespace, settings: Settings) -> int:
    env = dict(os.environ)
    if settings.flower_basic_auth is not None:
        env["FLOWER_BASIC_AUTH"] = settings.flower_basic_auth.reveal()
    elif settings.mode == "local" and settings.flower_address == "127.0.0.1":
        env["FLOWER_UNAUTHENTICATED_API"] = "true"
    celery = shutil.which("celery") or "celery"
    os.execvpe(celery, [celery, "-A", "snews_tasks", "flower",
                        f"--address={settings.flower_address}", f"--port={settings.flower_port}"],
               env)
    return 1  # not reached: exec replaced the process


def _replay(args: argparse.Namespace, settings: Settings) -> int:
    from tqdm import tqdm

    from .processing import Processor
    from .replay import Replayer, replay_lines

    try:
        size = args.stream.stat().st_size
        handle = args.stream.open("r", encoding="utf-8", errors="surrogateescape")
    except OSError as exc:
        print(f"snews-tasks replay: cannot read {args.stream}: {exc.strerror}", file=sys.stderr)
        return 2
    show = sys.stderr.isatty() if args.progress is None else args.progress
    replayer = Replayer(Processor(settings))
    with handle, tqdm(total=size, unit="B", unit_scale=True, disable=not show,
                      file=sys.stderr, desc="replay") as bar:
        def lines() -> Iterator[str]:
            for line in handle:
                bar.update(len(line.encode("utf-8", "surrogateescape")))
                yield line

        report = replay_lines(lines(), replayer, out=sys.stdout, err=_BarSafe(bar))
    if args.state_out is not None:
        args.state_out.write_text(json.dumps(replayer.state(), indent=2) + "\n")
    print(f"replay: {report.lines} messages, {report.rejected} rejected, {report.alerts} alerts",
          file=sys.stderr)
    return 0


class _BarSafe:
    """Writes rejected-line reports above the progress bar instead of through it."""

    def __init__(self, bar) -> None:
        self.bar = bar

    def write(self, text: str) -> None:
        self.bar.write(text.rstrip("\n"), file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.mode is not None:
        os.environ["SNEWS_MODE"] = args.mode  # the Celery app reads its settings at import
    try:
        settings = load_settings(args.mode)
    except SettingsError as exc:
        print(f"snews-tasks: configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        return args.handler(args, settings)
    except (redis.RedisError, PyMongoError) as error:
        print(f"snews-tasks {args.command}: {short_error(error)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
