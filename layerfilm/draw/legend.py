"""The film's legend in words: what is filmed, how, from which run, and how to read the colours,
the bars and the time, so that a frame explains itself without the README.

This module only composes the words and numbers (from the ``Trajectories``: their ``Subject``, stats
and steps); ``layerfilm.draw.raster`` lays them out and draws them once, with the colour bar, into the
static part of every frame. Rules that choose numbers shown in the legend live here too, so the
numbers drawn are the numbers used:

- the colour scale's top (:func:`scale_top`): the ``VMAX_PERCENTILE``-th percentile of the key
  frames' densest bins (points per bin, exact counts), rounded up to a whole count, fixed for the
  film; denser bins are drawn in the top colour (clipped), and the
  colour bar says in how many key frames that happens;
- the per-key-frame zoom of activation films (:func:`zooms`): each key frame's own robust extent,
  because block outputs at random init are orders of magnitude smaller than after training and a
  film-wide extent shows them as one dot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from layerfilm.points import Subject

VMAX_PERCENTILE = 75.0  # of the key frames' densest bins: the top of the fixed colour scale
SEP = "  ·  "


def scale_top(maxima: np.ndarray) -> tuple[float, int]:
    """(vmax, clipped): the fixed top of the colour scale from each key frame's densest bin (K,), and in
    how many key frames a bin is denser (drawn in the top colour).

    Why a percentile: the densest frame is often one outlier (the random-init blob at step 0); with it
    at the top, a log scale leaves the other frames in its lower half, nearly uniform. The 75th
    percentile lets every key frame's densest bins reach at least ``log(1 + m) / log(1 + vmax)`` of the
    scale, and at most a quarter of the key frames clip."""
    m = np.asarray(maxima, np.float64)
    vmax = whole_top(float(np.percentile(m, VMAX_PERCENTILE))) if m.size else 2.0
    return vmax, int((m > vmax * (1 + 1e-9)).sum())


def whole_top(top: float) -> float:
    """A colour scale's top as a whole count of points per bin (bins hold whole counts), at least 2 (the
    bar runs from 1 point per bin to its top)."""
    return float(max(math.ceil(top - 1e-9), 2))


@dataclass(frozen=True)
class Legend:
    """What the legend says, besides the colour bar (whose numbers the renderer measures).

    parts: phrases of the text rows under the panels, in order; the renderer wraps them between phrases.
    ticks: each key frame's place in the film (0 first frame .. 1 last), for the timeline.
    marks: places of key frames marked on the timeline in red (update-ratio spikes).
    unit: what the colour bar counts.
    skips: the key frames k whose gap to k + 1 skipped checkpoints (``layerfilm.draw.timeline.skips``):
        the timeline is dashed between their ticks.
    runs: a film of several runs (layerfilm.compare): (name, places of that run's own key frames) per
        run; the timeline gets a row per run, its ticks and name in the run's colour (``run_colour``).
    """

    parts: tuple[str, ...]
    ticks: tuple[float, ...] = ()
    unit: str = "points per bin"
    skips: tuple[int, ...] = ()
    marks: tuple[float, ...] = ()  # places (as ticks) marked in red on the timeline: update-ratio spikes
    runs: tuple[tuple[str, tuple[float, ...]], ...] = ()


RUN_COLOURS = ((110, 190, 255), (255, 150, 70), (130, 225, 120), (240, 120, 230), (245, 225, 90), (120, 235, 235))


def run_colour(r: int) -> np.ndarray:
    """Run r's colour on the timeline of a film of several runs (bright on the dark background; repeats
    after six runs, whose rows and names still tell them apart)."""
    return np.array(RUN_COLOURS[r % len(RUN_COLOURS)], np.uint8)


def subject_text(subject: Subject | None, method: str, stats: dict[str, np.ndarray]) -> list[str]:
    """What is filmed, sampled or not, and the projection with the variance its axes explain."""
    parts = []
    if subject is not None:
        if subject.sampled():
            count = f"{subject.points:,} of {subject.of:,} {subject.unit} (a seeded sample, --points)"
        else:
            count = f"all {subject.of:,} {subject.unit}"
        parts.append(f"{subject.what}: {count}, {subject.kind}")
    projection = subject.projection if subject is not None and subject.projection else method
    ev = stats.get("explained_variance")
    if ev is not None and len(ev):
        total = np.asarray(ev, np.float64).reshape(len(ev), -1)[:, :2].sum(axis=1)
        spread = f"median of {len(total)} blocks, {total.min():.0%}-{total.max():.0%}" if len(total) > 1 else "one block"
        projection += f"; axes explain {np.median(total):.0%} of the variance ({spread})"
    parts.append(projection)
    return parts


def time_text(time: str, seconds_per_keyframe: float, auto: bool = False, skipped: int = 0) -> str:
    """The time rule in words: ``time`` as used (never auto); ``auto``: picked by the checkpoints' spacing;
    ``skipped``: the gaps where checkpoints are missing (dashed on the timeline)."""
    rule = {"keys": f"time: a key frame every {seconds_per_keyframe:g} s",
            "steps": "time: proportional to the step",
            "log-steps": "time: proportional to log(1 + step)"}[time]
    why = f", as checkpoints are {'evenly' if time == 'keys' else 'unevenly'} spaced" if auto else ""
    gaps = f"; dashed: {skipped} gap{'s' * (skipped > 1)} of skipped checkpoints" if skipped else ""
    return f"{rule}{why} (ticks above: key frames{gaps})"


def zooms(xy: np.ndarray, lo: float = 0.5, hi: float = 99.5, margin: float = 0.08) -> np.ndarray:
    """(T, L, 4) each key frame's own axes [x0, x1, y0, y1] per block: robust percentiles of that
    frame only, equal scale on both axes (``Trajectories.extent``'s rule, one frame at a time)."""
    T, L = xy.shape[:2]
    out = np.empty((T, L, 4))
    for t in range(T):
        a, b = np.percentile(xy[t].astype(np.float64), [lo, hi], axis=1)  # (L, 2) each
        centre = (a + b) / 2
        half = np.maximum((b - a).max(axis=1), 1e-30) * (0.5 + margin)
        out[t] = np.stack([centre[:, 0] - half, centre[:, 0] + half, centre[:, 1] - half, centre[:, 1] + half], 1)
    return out


def zoom_text(ext: np.ndarray) -> str:
    """The legend's words for a per-key-frame zoom: how much the spread changes over the film."""
    half = ext[..., 1] - ext[..., 0]  # (T, L)
    growth = float(np.median(half.max(axis=0) / np.maximum(half.min(axis=0), 1e-300)))
    return f"axes zoom to each key frame's spread (it changes {growth:.3g}x over the film, median block)"
