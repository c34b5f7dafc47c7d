"""`snews-tasks replay --dry-run` and `heartbeats --dry-run`: JSONL streams through the
worker's engine and the heartbeat feedback rule, no services."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from ..core.gcn import alert_notice, notice_file_name, wants_notice
from ..core.heartbeat_feedback import replay_heartbeats
from ..core.localization_request import attach_payload, request_of
from ..core.processing import Processor
from ..core.replay import Localizer, Replayer, ReplayReport, replay_lines
from ..core.sites import load_sites
from ..core.times import NS_PER_S
from ..settings import Settings


class _BarSafe:
    """Writes rejected-line reports above the progress bar instead of through it."""

    def __init__(self, bar: tqdm) -> None:
        self.bar = bar

    def write(self, text: str) -> None:
        self.bar.write(text.rstrip("\n"), file=sys.stderr)


def skymap_localizer(settings: Settings, directory: Path) -> Localizer:
    """Localizes as the localize task does, writing the FITS map and its PNG picture to
    `directory` (their URLs in the alert are file:// URLs there) instead of GridFS, with the
    stream's own timing-tier messages."""
    # The sky-map stack (astropy, healpy, matplotlib) takes seconds to import: only a replay
    # that localizes pays for it, not every command of the CLI, which imports this module.
    from ..core.alert_localization import run, timing_messages_for

    sites = load_sites(settings.detector_sites_file)
    window_ns = round(settings.coincidence_threshold_s * NS_PER_S)
    directory.mkdir(parents=True, exist_ok=True)

    def localize(alert: dict, timing: Sequence[Mapping[str, Any]]) -> dict:
        request = request_of(alert)
        found = timing_messages_for(request, lambda _detector, _t_ns: timing, window_ns)
        result = run(request, sites, settings.skymap_nside, found)
        for name, data in result.files().items():
            (directory / name).write_bytes(data)
        return attach_payload(request, result.summary(lambda n: (directory / n).resolve().as_uri()))

    return localize


def notice_writer(settings: Settings, directory: Path) -> Callable[[dict], None]:
    """Writes the GCN notice of each alert revision that gets one, as the notice task would."""
    directory.mkdir(parents=True, exist_ok=True)

    def write(alert: dict) -> None:
        if wants_notice(alert):
            notice = alert_notice(alert, detectors=settings.detectors)
            (directory / notice_file_name(alert)).write_text(json.dumps(notice, indent=2) + "\n")

    return write


def replay_file(
    settings: Settings,
    stream: Path,
    *,
    state_out: Path | None,
    progress: bool,
    out: TextIO,
    skymap_dir: Path | None = None,
    gcn_out: Path | None = None,
) -> ReplayReport:
    """Alerts to `out`, rejected lines to stderr, each live or fire-drill revision's GCN notice
    to `gcn_out`/<alert_id>-<revision>.json; raises OSError if `stream` cannot be read (or
    `skymap_dir` or `gcn_out` written), SiteError if the sites file is unusable."""
    size = stream.stat().st_size
    on_alert = (lambda _alert: None) if gcn_out is None else notice_writer(settings, gcn_out)
    localizer = None if skymap_dir is None else skymap_localizer(settings, skymap_dir)
    replayer = Replayer(Processor(settings), localizer)
    with (
        stream.open("r", encoding="utf-8", errors="surrogateescape") as handle,
        tqdm(
            total=size,
            unit="B",
            unit_scale=True,
            disable=not progress,
            file=sys.stderr,
            desc="replay",
        ) as bar,
    ):

        def lines() -> Iterator[str]:
            for line in handle:
                bar.update(len(line.encode("utf-8", "surrogateescape")))
                yield line

        report = replay_lines(lines(), replayer, out=out, err=_BarSafe(bar), on_alert=on_alert)
    if state_out is not None:
        state_out.write_text(json.dumps(replayer.state(), indent=2) + "\n")
    return report


def heartbeats_file(settings: Settings, stream: Path, *, out: TextIO, err: TextIO) -> int:
    """The heartbeat feedback's events for a JSONL stream of heartbeats, one JSON object per
    line on `out`, on the stream's clock; unusable lines to `err` with their line number.
    Returns the number of events; raises OSError if `stream` cannot be read."""
    numbers: list[int] = []
    records: list[object] = []
    not_json: dict[int, str] = {}
    with stream.open("r", encoding="utf-8", errors="surrogateescape") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            numbers.append(number)
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                not_json[len(numbers)] = f"not valid JSON: {error}"
                records.append(None)

    def reject(position: int, reason: str) -> None:
        err.write(f"line {numbers[position - 1]}: {not_json.get(position, reason)}\n")

    events = 0
    for event in replay_heartbeats(
        records,
        detectors=settings.detectors,
        max_future_skew_s=settings.max_future_skew_s,
        on_reject=reject,
    ):
        out.write(json.dumps(event) + "\n")
        events += 1
    return events
