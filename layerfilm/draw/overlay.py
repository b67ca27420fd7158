"""Per-panel "still moving" bar and "settled" / "barely moved" mark, drawn over frames the Renderer made.

Along the bottom of each panel a thin bar shows the block's relative update on a log scale over
``DECADES`` decades below the film's largest update: a full bar is the fastest any block moved, an
empty one a thousand times slower or still. Between key frames the bar follows the update
happening on screen (from key k to k+1). The bar's colour and the mark in the panel's corner say the
block's status (``layerfilm.stability.Settling``, the definition that stability, the report and watch
share): blue while it moves; green and "settled" from its settling step on; grey and "barely moved" on
every frame of a block whose total change over the film is below the floor. Where the word does not
fit beside the panel's label, the bar's colour alone says it.

A film measures its own points (``stability.point_measures``: the filmed rows or activations, read once
for the projection anyway); ``Overlay.of`` takes the whole-block measures of ``layerfilm stability``.
"""

from __future__ import annotations

import numpy as np

from layerfilm.draw.raster import TRACK, Renderer
from layerfilm.draw.timeline import lerp
from layerfilm.stability import BARELY_MOVED, Settling, Stability

DECADES = 3.0
MOVING = np.array([110, 190, 255], np.float32)
SETTLED = np.array([110, 215, 120], np.float32)
BARELY = np.array([150, 150, 150], np.float32)
MARKS = ("settled", "barely moved")  # the words written beside a panel's label (the renderer keeps room for them)


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


def bar_text(relative_update: np.ndarray, top: float | None = None) -> str:
    """The legend's words for the bar: what it measures and its scale, with the film's own numbers."""
    top = float(updates(relative_update).max()) if top is None else top  # a full bar, as moving_level draws it
    return (f"bottom bar: relative update of the points per key frame, log: full {top:.2g} (fastest), "
            f"empty <= {top / 10**DECADES:.2g}")


def marks_text(threshold: float) -> list[str]:
    """The legend's words for the marks (layerfilm.stability.Settling), each rule with its numbers."""
    return [f"green: settled (near its end, moving < {threshold:g}x the median block)",
            f"grey: barely moved (changed < {BARELY_MOVED:.0%} over the film)"]


RATIO_SCALE = (1e-5, 1e-1)  # the update-ratio bar's log scale: empty .. full
FLAGGED = np.array([255, 150, 60], np.float32)


def ratio_text() -> str:
    """The legend's words for the update-ratio bar."""
    lo, hi = RATIO_SCALE
    return (f"bottom bar: Adam update ratio lr*|m/(sqrt(v)+eps)|/|W| of the block's matrices, log: empty {lo:g}, "
            f"full {hi:g}; orange: outside 1e-4 to 1e-2; none: no optimizer state")


def ratio_overlay(renderer: Renderer, ratio: np.ndarray, healthy: tuple[float, float]) -> Overlay:
    """The per-panel bars of the update ratio (T, L; NaN: no state) on the fixed log scale ``RATIO_SCALE``,
    orange where a ratio lies outside ``healthy``; no settled marks."""
    lo, hi = RATIO_SCALE
    r = np.asarray(ratio, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        level = np.nan_to_num(np.clip(np.log10(r / lo) / np.log10(hi / lo), 0.0, 1.0), nan=0.0)
        outside = np.isfinite(r) & ((r < healthy[0]) | (r > healthy[1]))
    o = Overlay(renderer, np.zeros_like(r), None, colours=np.where(outside[..., None], FLAGGED, MOVING))
    o.level = level
    return o


class Overlay:
    """Call with a frame (H, W, 3) uint8, key frame k and fraction a; draws in place.

    relative_update (T, L): how much each block moved into each key frame; settling: each block's
    status (None: no marks, the bars in blue)."""

    def __init__(self, renderer: Renderer, relative_update: np.ndarray, settling: Settling | None,
                 top: float | None = None, colours: np.ndarray | None = None) -> None:
        self.r = renderer
        self.level = moving_level(relative_update, top)
        self.settling = settling
        self.colours = colours  # (T, L, 3): each bar's colour at each key frame (None: by its status)
        c = renderer.cell
        bw, bh = renderer.panel_bins
        self.size = (bw * c, bh * c)
        self.bar = renderer.bar_px  # the renderer keeps points off it

    @classmethod
    def of(cls, renderer: Renderer, stab: Stability) -> Overlay:
        """The overlay of whole-block measures (``layerfilm.stability.measure``)."""
        return cls(renderer, stab.relative_update, stab.settling)

    @classmethod
    def of_points(cls, renderer: Renderer, stats: dict[str, np.ndarray], threshold: float,
                  top: float | None = None) -> Overlay:
        """The overlay of a film's own points: ``stats`` holds ``point_measures``' arrays; ``top``: the
        update of a full bar (None: the film's largest)."""
        return cls(renderer, stats["point_update"],
                   Settling.of(stats["point_distance"], stats["point_update"], threshold), top)

    def status(self, k: int) -> list[str]:
        """Each panel's status at key frame k (all "moving" without marks)."""
        return ["moving"] * len(self.level[0]) if self.settling is None else self.settling.status(k)

    def __call__(self, img: np.ndarray, k: int, a: float) -> None:
        level = lerp(self.level, k, a)
        w, h = self.size
        c = self.r.cell
        for l, ((ox, oy), status) in enumerate(zip(self.r.panels, self.status(k))):
            x, y = ox * c, oy * c + h - self.bar
            colour = {"settled": SETTLED, "barely moved": BARELY}.get(status, MOVING) if self.colours is None \
                else self.colours[k, l]
            img[y : y + self.bar, x : x + w] = TRACK
            img[y : y + self.bar, x : x + int(round(level[l] * w))] = colour
            if status != "moving":  # where the word does not fit, the bar's colour alone says it
                self.r.mark(img, l, status, colour)
