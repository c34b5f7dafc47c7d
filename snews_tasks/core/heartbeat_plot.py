"""A detector's heartbeat timeline as a PNG, for feedback mails and the console.

Built on a bare `Figure` (Agg, no pyplot): no display, no global figure state, safe in a
worker thread.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from datetime import UTC, datetime

import matplotlib.dates as mdates
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from numpy.typing import NDArray

from .heartbeat_feedback import FeedbackEvent, Heartbeat
from .times import NS_PER_S

STATUS_COLOURS = {"ON": "tab:green", "OFF": "tab:red"}
MISSED_COLOUR = "tab:orange"


def timeline_png(
    heartbeats: Iterable[Heartbeat],
    detector: str,
    start_ns: int,
    end_ns: int,
    events: Iterable[FeedbackEvent],
) -> bytes:
    """One detector over [start_ns, end_ns): beats by status, latency, missed periods shaded."""
    beats = sorted(
        (hb for hb in heartbeats if hb.detector == detector and start_ns <= hb.sent_ns < end_ns),
        key=lambda hb: hb.sent_ns,
    )
    # Fixed margins: a constrained layout draws the figure twice, and the console draws these
    # on request.
    figure = Figure(figsize=(8, 3.6), dpi=100)
    figure.subplots_adjust(left=0.09, right=0.98, top=0.91, bottom=0.25, hspace=0.12)
    strip, latency = figure.subplots(2, 1, sharex=True, height_ratios=[1, 2])
    for begin, end in _missed_periods(events, detector, start_ns, end_ns):
        for axes in (strip, latency):
            axes.axvspan(_dates([begin])[0], _dates([end])[0], color=MISSED_COLOUR, alpha=0.3)

    strip.vlines(
        _dates([hb.sent_ns for hb in beats]),
        0,
        1,
        colors=[STATUS_COLOURS[hb.status] for hb in beats],
        linewidth=0.8,
    )
    strip.set_yticks([])
    strip.set_ylabel("beats")

    timed = [hb for hb in beats if hb.received_ns is not None]
    latency.plot(
        _dates([hb.sent_ns for hb in timed]),
        [(hb.received_ns - hb.sent_ns) / NS_PER_S for hb in timed if hb.received_ns is not None],
        ".",
        markersize=3,
        color="tab:blue",
    )
    if not timed:
        latency.text(0.5, 0.5, "no receive times", transform=latency.transAxes, ha="center")
    latency.set_ylabel("latency [s]")
    latency.set_xlim(_dates([start_ns, end_ns]))
    locator = mdates.AutoDateLocator()
    latency.xaxis.set_major_locator(locator)
    latency.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    latency.set_xlabel("sent time (UTC)")

    span = " to ".join(
        f"{datetime.fromtimestamp(t // NS_PER_S, UTC):%Y-%m-%d %H:%M}" for t in (start_ns, end_ns)
    )
    figure.suptitle(f"{detector}: {len(beats)} heartbeats, {span} UTC", fontsize="medium")
    figure.legend(
        handles=[
            Line2D([], [], color=STATUS_COLOURS["ON"], label="ON"),
            Line2D([], [], color=STATUS_COLOURS["OFF"], label="OFF"),
            Patch(color=MISSED_COLOUR, alpha=0.3, label="missed"),
        ],
        loc="lower center",
        ncols=3,
        fontsize="small",
    )
    png = io.BytesIO()
    figure.savefig(png, format="png")
    return png.getvalue()


def _missed_periods(
    events: Iterable[FeedbackEvent], detector: str, start_ns: int, end_ns: int
) -> list[tuple[int, int]]:
    """From each gap's last heartbeat to the heartbeat that ended it (or `end_ns`), clipped."""
    ends: dict[int, int] = {}
    missed: list[int] = []
    for event in events:
        if event.detector_name != detector:
            continue
        if event.event == "missed":
            missed.append(event.last_heartbeat_ns)
        else:
            ends[event.last_heartbeat_ns] = event.time_ns
    periods = [(max(start_ns, last), min(end_ns, ends.get(last, end_ns))) for last in missed]
    return [(begin, end) for begin, end in periods if begin < end]


def _dates(times_ns: list[int]) -> NDArray[np.datetime64]:
    return np.array(times_ns, dtype="datetime64[ns]")
