"""`snews-tasks replay --dry-run`: a JSONL stream through the worker's engine, no services."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from tqdm import tqdm

from ..core.processing import Processor
from ..core.replay import Replayer, ReplayReport, replay_lines
from ..settings import Settings


class _BarSafe:
    """Writes rejected-line reports above the progress bar instead of through it."""

    def __init__(self, bar: tqdm) -> None:
        self.bar = bar

    def write(self, text: str) -> None:
        self.bar.write(text.rstrip("\n"), file=sys.stderr)


def replay_file(
    settings: Settings, stream: Path, *, state_out: Path | None, progress: bool, out: TextIO
) -> ReplayReport:
    """Alerts to `out`, rejected lines to stderr; raises OSError if `stream` cannot be read."""
    size = stream.stat().st_size
    replayer = Replayer(Processor(settings))
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

        report = replay_lines(lines(), replayer, out=out, err=_BarSafe(bar))
    if state_out is not None:
        state_out.write_text(json.dumps(replayer.state(), indent=2) + "\n")
    return report
