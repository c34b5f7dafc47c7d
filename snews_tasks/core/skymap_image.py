"""A picture of the sky map for Slack and the operator console.

Mollweide projection in equatorial coordinates, right ascension increasing to the left as on
the sky: probability density, the 50% and 90% credible contours, the most probable point and
the rings of the most constraining detector pairs. Drawn with matplotlib's object API on an
Agg canvas: no display, no pyplot global state, so concurrent workers do not share figures.
"""

from __future__ import annotations

import io

import healpy as hp
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from numpy.typing import ArrayLike

from snews_tasks.core.localization import Localization, Ring, pair_rings

WIDTH_IN, HEIGHT_IN, DPI = 10.0, 5.2, 100
GRID_LON, GRID_LAT = 360, 180  # 1 degree cells, about an nside-64 pixel
RING_POINTS = 721
RING_COLORS = ("tab:cyan", "tab:orange", "tab:green", "tab:pink", "tab:olive", "tab:purple")


def _plot_x(ra_deg: ArrayLike) -> np.ndarray:
    """Mollweide abscissa in radians: RA 0 in the middle, increasing to the left."""
    x: np.ndarray = -np.radians((np.asarray(ra_deg) + 180.0) % 360.0 - 180.0)
    return x


def _credible_levels(probability: np.ndarray) -> np.ndarray:
    """Per pixel, the probability of all more probable pixels (contour q = region q)."""
    order = np.argsort(probability)[::-1]
    levels = np.empty_like(probability)
    levels[order] = np.cumsum(probability[order]) - probability[order]
    return levels


def _ring_points(ring: Ring) -> tuple[np.ndarray, np.ndarray]:
    """The cone's trace on the sky, with NaN breaks where it crosses the plot's edge."""
    axis = hp.ang2vec(ring.axis_ra_deg, ring.axis_dec_deg, lonlat=True)
    helper = np.array([0.0, 0.0, 1.0]) if abs(axis[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
    first = np.cross(axis, helper)
    first /= np.linalg.norm(first)
    second = np.cross(axis, first)
    phi = np.linspace(0.0, 2.0 * np.pi, RING_POINTS)
    theta = np.radians(ring.opening_deg)
    points = np.cos(theta) * axis[None, :] + np.sin(theta) * (
        np.cos(phi)[:, None] * first + np.sin(phi)[:, None] * second
    )
    ra, dec = hp.vec2ang(points, lonlat=True)
    x, y = _plot_x(ra), np.radians(dec)
    breaks = np.flatnonzero(np.abs(np.diff(x)) > np.pi) + 1
    return np.insert(x, breaks, np.nan), np.insert(y, breaks, np.nan)


def png_bytes(
    localization: Localization,
    alert_id: str | None = None,
    revision: int | None = None,
    max_rings: int = len(RING_COLORS),
) -> bytes:
    """The PNG image of a localization."""
    figure = Figure(figsize=(WIDTH_IN, HEIGHT_IN), dpi=DPI)
    FigureCanvasAgg(figure)
    axes = figure.add_axes((0.03, 0.16, 0.72, 0.70), projection="mollweide")

    x_edges = np.linspace(-np.pi, np.pi, GRID_LON + 1)
    y_edges = np.linspace(-np.pi / 2, np.pi / 2, GRID_LAT + 1)
    x_mid, y_mid = np.meshgrid((x_edges[:-1] + x_edges[1:]) / 2, (y_edges[:-1] + y_edges[1:]) / 2)
    pixels = hp.ang2pix(
        localization.nside, np.degrees(-x_mid) % 360.0, np.degrees(y_mid), lonlat=True
    )
    density = localization.probability[pixels] / hp.nside2pixarea(localization.nside, degrees=True)
    mesh = axes.pcolormesh(x_edges, y_edges, density, cmap="Blues", shading="flat", rasterized=True)
    colorbar = figure.colorbar(
        mesh, cax=figure.add_axes((0.18, 0.08, 0.42, 0.03)), orientation="horizontal", format="%.1e"
    )
    colorbar.set_label("probability per deg²", fontsize=8)
    colorbar.ax.tick_params(labelsize=7)
    colorbar.locator = MaxNLocator(4)
    colorbar.update_ticks()
    levels = _credible_levels(localization.probability)[pixels]
    for level, style in ((0.5, "solid"), (0.9, "dashed")):
        axes.contour(
            x_mid, y_mid, levels, levels=[level], colors="black", linestyles=style, linewidths=1.0
        )
        axes.plot(
            [],
            [],
            color="black",
            linestyle=style,
            linewidth=1.0,
            label=f"{level:.0%} credible region",
        )

    for ring, color in zip(pair_rings(localization)[:max_rings], RING_COLORS, strict=False):
        ring_x, ring_y = _ring_points(ring)
        axes.plot(
            ring_x,
            ring_y,
            color=color,
            linewidth=0.9,
            alpha=0.9,
            label=f"{ring.detector_a} - {ring.detector_b}",
        )
    axes.plot(
        _plot_x(localization.ra_deg),
        np.radians(localization.dec_deg),
        marker="*",
        markersize=13,
        color="crimson",
        markeredgecolor="white",
        linestyle="none",
        label=f"most probable ({localization.ra_deg:.1f}°, {localization.dec_deg:+.1f}°)",
    )

    ticks = np.arange(-150, 181, 30)
    axes.set_xticks(np.radians(ticks))
    axes.set_xticklabels([f"{(-t) % 360:d}°" for t in ticks], fontsize=7)
    axes.tick_params(axis="y", labelsize=7)
    axes.grid(True, linewidth=0.3, alpha=0.6)
    axes.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)

    name = f"{alert_id} revision {revision}" if alert_id and revision is not None else alert_id
    heading = f"SNEWS localization{f' — {name}' if name else ''}"
    figure.suptitle(heading, fontsize=11)
    axes.set_title(
        f"{', '.join(localization.detectors)}\n"
        f"50%: {localization.area_50_deg2:,.0f} deg²   90%: {localization.area_90_deg2:,.0f} deg²"
        "   (RA, Dec; ICRS)",
        fontsize=8,
    )
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
