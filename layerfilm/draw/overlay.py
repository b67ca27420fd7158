"""Per-panel "still moving" bar and "settled" mark, drawn over frames the Renderer made.

Along the bottom of each panel a thin bar shows the block's relative update on a log scale over
``DECADES`` decades below the film's largest update: a full bar is the fastest any block moved, an
empty one a thousand times slower or still. Between key frames the bar follows the update
happening on screen (from key k to k+1). From its settling step on, a block's bar turns green and the
panel says "settled".

A film measures its own points (``stability.point_measures``: the filmed rows or activations, read once
for the projection anyway); ``Overlay.of`` takes the whole-block measures of ``layerfilm stability``.
"""

from __future__ import annotations

import numpy as np

from layerfilm.draw.raster import TRACK, Renderer
from layerfilm.draw.timeline import lerp
from layerfilm.stability import Stability, settle_index

DECADES = 3.0
MOVING = np.array([110, 190, 255], np.float32)
SETTLED = np.array([110, 215, 120], np.float32)
MARKS = ("settled",)  # the words written beside a panel's label (the renderer keeps room for them)


def updates(relative_update: np.ndarray) -> np.ndarray:
    """(T, L) the update into each key frame (key 0: the first update), NaN as 0."""
    rel = np.array(relative_update, np.float64)
    rel[0] = rel[1]
    return np.nan_to_num(rel, nan=0.0)


def moving_level(relative_update: np.ndarray, top: float | None = None) -> np.ndarray:
    """(T, L) bar length in [0, 1] at each key frame: the update into key k (key 0: the first update),
    relative to ``top`` (None: the film's largest update; a live film's is fixed: layerfilm.draw.film_layout)."""
    rel = updates(relative_update)
    top = rel.max() if top is None else top
    if top <= 0:
        return np.zeros_like(rel)
    with np.errstate(divide="ignore"):
        return np.clip(1 + np.log10(rel / top) / DECADES, 0.0, 1.0)


def bar_text(relative_update: np.ndarray, top: float | None = None, settled: bool = True) -> str:
    """The legend's words for the bar: what it measures and its scale, with the film's own numbers
    (``settled``: the film marks settled blocks)."""
    top = float(updates(relative_update).max()) if top is None else top  # a full bar, as moving_level draws it
    return (f"bottom bar: relative update of the points per key frame, log: full {top:.2g} (fastest), "
            f"empty <= {top / 10**DECADES:.2g}" + ("; green: settled" if settled else ""))


class Overlay:
    """Call with a frame (H, W, 3) uint8, key frame k and fraction a; draws in place.

    relative_update (T, L): how much each block moved into each key frame; settle (L,): the key frame
    each block settles at, -1 never."""

    def __init__(self, renderer: Renderer, relative_update: np.ndarray, settle: np.ndarray,
                 top: float | None = None) -> None:
        self.r = renderer
        self.level = moving_level(relative_update, top)
        self.settle = np.asarray(settle)
        c = renderer.cell
        bw, bh = renderer.panel_bins
        self.size = (bw * c, bh * c)
        self.bar = renderer.bar_px  # the renderer keeps points off it

    @classmethod
    def of(cls, renderer: Renderer, stab: Stability) -> Overlay:
        """The overlay of whole-block measures (``layerfilm.stability.measure``)."""
        return cls(renderer, stab.relative_update, stab.settle_index)

    @classmethod
    def of_points(cls, renderer: Renderer, stats: dict[str, np.ndarray], threshold: float,
                  top: float | None = None) -> Overlay:
        """The overlay of a film's own points: ``stats`` holds ``point_measures``' arrays; ``top``: the
        update of a full bar (None: the film's largest)."""
        return cls(renderer, stats["point_update"], settle_index(stats["point_distance"], threshold), top)

    def __call__(self, img: np.ndarray, k: int, a: float) -> None:
        level = lerp(self.level, k, a)
        w, h = self.size
        c = self.r.cell
        for l, (ox, oy) in enumerate(self.r.panels):
            x, y = ox * c, oy * c + h - self.bar
            settled = 0 <= self.settle[l] <= k
            img[y : y + self.bar, x : x + w] = TRACK
            img[y : y + self.bar, x : x + int(round(level[l] * w))] = SETTLED if settled else MOVING
            if settled:
                self.r.mark(img, l, "settled", SETTLED)
