"""The strip of training curves under the timeline: the loss and the learning rate the run logged
(layerfilm.io.logs), over the film's steps, with the film's cursor.

The strip's x axis is the timeline's: a step between two key frames lies between their ticks, in
proportion to the step (so with ``--time keys`` the steps are not evenly spread, but the curve under a
tick is the loss at that key frame's step, and the cursor above and below is at the same place). A
still has no timeline: its strip is linear in the step and marks the key frames it shows.

Each curve has its own vertical scale: the loss from its lowest to its highest value over the film's
steps, the learning rate from 0 to its highest; the label at the right says both. The curves are drawn
once into the static frame; a frame adds only the cursor (layerfilm.draw.raster.Renderer.decorate).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from layerfilm.draw.frame_layout import strip_height
from layerfilm.draw.raster import BACKGROUND, TRACK, draw_text, text_mask
from layerfilm.io.logs import Curve, RunLogs

LOSS = np.array([250, 130, 110], np.float32)  # coral
LR = np.array([90, 215, 200], np.float32)  # teal
MARK = np.array([200, 200, 210], np.uint8)  # a still's key frame


@dataclass(frozen=True)
class Strip:
    """What the strip draws: ``loss`` and ``lr`` curves (either may be None) and where the film's key frames
    at ``steps`` (T,) lie on its x axis, ``places`` (T,) from 0 to 1; ``marks``: places of lines drawn
    across it (a still's key frames)."""

    loss: Curve | None
    lr: Curve | None
    steps: np.ndarray
    places: np.ndarray
    marks: tuple[float, ...] = ()

    @classmethod
    def of(cls, logs: RunLogs | None, steps: np.ndarray, places: np.ndarray | None = None,
           marks: tuple[float, ...] = ()) -> Strip | None:
        """The strip of ``logs`` over key frames at ``steps`` placed at ``places`` (None: linear in the
        step), cut to the key frames' steps; None when no logged value falls there."""
        if logs is None or len(steps) < 2:
            return None
        s = np.asarray(steps, np.float64)
        at = (s - s[0]) / max(s[-1] - s[0], 1e-300) if places is None else np.asarray(places, np.float64)

        def cut(c: Curve | None) -> Curve | None:
            if c is None:
                return None
            keep = (c.steps >= s[0]) & (c.steps <= s[-1])
            return Curve(c.name, c.steps[keep], c.values[keep]) if keep.any() else None

        loss, lr = cut(logs.loss), cut(logs.lr)
        return cls(loss, lr, s, at, marks) if loss is not None or lr is not None else None

    @staticmethod
    def height(px: int, frame_height: int) -> int:
        """Pixels of a strip under a legend of ``px``-pixel text in a frame ``frame_height`` high (an eighth
        of it at most)."""
        return strip_height(px, frame_height)

    def labels(self, short: bool = False) -> list[tuple[str, np.ndarray]]:
        """(text, colour) of each curve: what it is and its scale (``short``: for a narrow frame)."""
        parts = []
        if self.loss is not None:
            v = self.loss.values
            parts.append((f"loss {v[0]:.3g} → {v[-1]:.3g}" + ("" if short else f" (min {v.min():.3g})"), LOSS))
        if self.lr is not None:
            parts.append((f"{'lr' if short else 'learning rate'} 0 – {self.lr.values.max():.2g}", LR))
        return parts

    def x(self, steps: np.ndarray, x0: int, x1: int) -> np.ndarray:
        """Pixel columns of ``steps`` on a strip from ``x0`` to ``x1`` (the timeline's formula)."""
        return x0 + np.interp(steps.astype(np.float64), self.steps, self.places) * (x1 - x0 - 1)

    def draw(self, img: np.ndarray, x0: int, x1: int, y: int, h: int, px: int) -> None:
        """Into ``img``: the strip's track, marks, curves and label in the rectangle x0..x1, y..y+h."""
        img[y : y + h, x0:x1] = (np.asarray(BACKGROUND, np.float32) * 0.5 + TRACK * 0.5).astype(np.uint8)
        for m in self.marks:
            img[y : y + h, x0 + int(round(m * (x1 - x0 - 1)))] = MARK
        pad = max(1, h // 12)
        thick = max(1, h // 24)
        for curve, colour, low in ((self.lr, LR, 0.0), (self.loss, LOSS, None)):
            if curve is None:
                continue
            v = curve.values
            lo = float(v.min()) if low is None else low
            span = max(float(v.max()) - lo, 1e-300)
            ys = y + pad + (1 - (v - lo) / span) * (h - 2 * pad - thick)
            polyline(img, self.x(curve.steps, x0, x1), ys, colour.astype(np.uint8), thick)
        gap = px
        for labels in (self.labels(), self.labels(short=True), []):  # the first that fits in half the strip
            width = sum(text_mask(t, px).shape[1] for t, _ in labels) + gap * (len(labels) - 1)
            if width <= (x1 - x0) // 2:
                break
        if not labels:
            return
        tx, ty = x1 - width - px // 2, y + pad
        img[ty : ty + px + px // 2, max(x0, tx - px // 4) : x1 - px // 4] = BACKGROUND
        for text, colour in labels:
            draw_text(img, text, tx, ty, px, colour)
            tx += text_mask(text, px).shape[1] + gap


def polyline(img: np.ndarray, xs: np.ndarray, ys: np.ndarray, colour: np.ndarray, thick: int = 1) -> None:
    """Straight segments through the points (``xs``, ``ys``) in pixels, ``thick`` rows thick, into ``img``."""
    xs, ys = np.asarray(xs, np.float64), np.asarray(ys, np.float64)
    if len(xs) > 1:
        dx, dy = np.diff(xs), np.diff(ys)
        n = np.maximum(np.ceil(np.maximum(np.abs(dx), np.abs(dy))), 1).astype(np.int64)
        seg = np.repeat(np.arange(len(n)), n)
        frac = (np.arange(len(seg)) - np.repeat(np.cumsum(n) - n, n)) / n[seg]
        xs, ys = np.r_[xs[seg] + frac * dx[seg], xs[-1]], np.r_[ys[seg] + frac * dy[seg], ys[-1]]
    H, W = img.shape[:2]
    cx, cy = np.clip(np.round(xs).astype(np.int64), 0, W - 1), np.round(ys).astype(np.int64)
    for t in range(thick):
        img[np.clip(cy + t, 0, H - 1), cx] = colour
