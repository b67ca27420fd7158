"""Rasterising frames with NumPy: a grid of per-block density panels, log-scaled colours, labels.

Everything that does not change between frames (layout, background, colour table, the legend under
the panels with its timeline and the colour bar, and the title and panel labels as one sparse layer of
(pixel, coverage) pairs) is built once (``Renderer.__init__``, ``set_scale``);
a frame is then one ``np.bincount`` splat of all points, a log scale and a table look-up on the
non-empty bins only, an upscale when bins are bigger than pixels, one blend of the label layer, the
caption and the timeline's cursor. matplotlib is used only for its colormaps and fonts.
"""

from __future__ import annotations

import hashlib
import math
import pickle
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

import numpy as np

from layerfilm.draw.fonts import TEXT, Box, clipped, draw_text, text_mask
from layerfilm.draw.frame_layout import CAPTION_SAMPLE, FrameLayout, check_frame_size, grid_shape, plan_frame
from layerfilm.draw.legend import Legend, run_colour
from layerfilm.draw.timeline import lerp
from layerfilm.errors import OptionsError

if TYPE_CHECKING:  # the strip draws with this module's text
    from layerfilm.draw.curves import Strip

__all__ = ["Renderer", "Style", "colormap_lut", "count_index", "draw_text", "grid_shape", "parse_size", "text_mask"]

BACKGROUND = np.array([12, 12, 14], np.uint8)
TRACK = np.array([45, 45, 52], np.uint8)  # the timeline's track (and the overlay's)
TICK = np.array([170, 170, 180], np.uint8)  # a key frame on the timeline
CURSOR = np.array([255, 200, 60], np.uint8)  # now, on the timeline
MARK = np.array([235, 60, 60], np.uint8)  # a marked key frame on the timeline (an update-ratio spike)
FLOOR = 0.25  # colour-scale position of a bin holding one point (the colour bar's left end)


DEFAULT_CMAP = "magma"
MAX_SIDE = 7680
MAX_PIXELS = 7680 * 4320
BYTES_PER_PIXEL = 160  # peak memory per pixel of a frame (benchmarks/RESULTS.md)


_SCRATCH = threading.local()


def _marks(n: int) -> np.ndarray:
    """This thread's scratch canvas of ``n`` marks, all False (and left so by its user). Per thread, not
    per renderer: threads drawing with one renderer (Dask workers inside one process share the film they
    are sent) would otherwise clear each other's marks between marking and reading them."""
    mark = getattr(_SCRATCH, "mark", None)
    if mark is None or len(mark) < n:
        mark = _SCRATCH.mark = np.zeros(n, bool)
    return mark[:n]


@dataclass(frozen=True)
class Style:
    """How frames look.

    width, height: frame size in pixels (even numbers: H.264 needs them), from 320x180 (the smallest frame
        whose words fit: layerfilm.draw.frame_layout) to 8K.
    cmap: a matplotlib colormap name; perceptually uniform ones (magma, viridis, ...) read best.
    cell: pixels per density bin; 0 picks one from the panel size (points stay visible when panels are large).
    title: text at the top left.
    """

    width: int = 1280
    height: int = 720
    cmap: str = DEFAULT_CMAP
    cell: int = 0
    title: str = "layerfilm"

    def __post_init__(self) -> None:
        if self.width % 2 or self.height % 2:
            raise OptionsError(f"size={self.width}x{self.height}: need even sizes (H.264 needs them)")
        check_frame_size(self.width, self.height)
        if max(self.width, self.height) > MAX_SIDE or self.width * self.height > MAX_PIXELS:
            raise OptionsError(f"size={self.width}x{self.height}: at most 8K ({MAX_SIDE} a side, {MAX_PIXELS:,} pixels); "
                               f"drawing and encoding need about {BYTES_PER_PIXEL} bytes of memory a pixel")
        if self.cell < 0:
            raise OptionsError(f"cell {self.cell}: must be 0 (auto) or positive")
        if self.cmap != DEFAULT_CMAP:  # the default is in every matplotlib: left unchecked, defaults such as
            colormap_lut(self.cmap)  # FilmOptions() import no matplotlib (~0.25 s in each worker process)


def parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise OptionsError(f"size={text!r}: expected WxH, e.g. 1920x1080") from None
    return w, h


@cache
def colormap_lut(name: str, n: int = 256) -> np.ndarray:
    """(n, 3) uint8 colour table of a matplotlib colormap."""
    import matplotlib

    try:
        cmap = matplotlib.colormaps[name]
    except KeyError:
        raise OptionsError(f"cmap={name!r}: not a matplotlib colormap (try magma, viridis, inferno)") from None
    return (cmap(np.linspace(0, 1, n))[:, :3] * 255 + 0.5).astype(np.uint8)


def count_index(counts: np.ndarray, vmax: float, n: int = 255) -> np.ndarray:
    """The colour-table index (1 .. ``n``) of bins holding ``counts`` (>= 1) points, on the colour bar's
    log scale: one point at its left end (``FLOOR`` up the table, so lone points stay visible), ``vmax``
    points and more at its right end (the top colour)."""
    level = np.log(np.asarray(counts, np.float64)) / math.log(max(vmax, 2.0))
    return np.clip((FLOOR + np.clip(level, 0.0, 1.0) * (1 - FLOOR)) * n, 1, n).astype(np.int64)


class Renderer:
    """Draws frames of L panels; positions come as (L, N, 2) in projection coordinates.

    Args:
        style: sizes, colours, title.
        labels: L panel labels ("L0", "L1", ...).
        extent: (L, 4) fixed axes per panel [x0, x1, y0, y1], all shown: one data unit is the same
            number of pixels on both axes, so a panel wider (taller) than its extent shows more around it.
        vmax: the count of points per bin that maps to the top of the colour scale (fixed for the film;
            see ``set_scale``, which also draws it on the legend's colour bar).
        legend: the words under the panels and the timeline's key frames (None: no legend, no colour bar).
        zoom: (T, L, 4) per-key-frame axes instead of fixed ones (``layerfilm.draw.legend.zooms``); ``place``
            maps a frame's points into them, and ``extent`` must then be the unit box [-1, 1, -1, 1].
        passed_ticks: draw a key frame's tick on the timeline only from the frame that reaches it (a live
            film: a tick of a key frame to come would change every frame before it; layerfilm.draw.film_layout).
        group: panels that sit side by side in one cell of the grid: a still's before and after of one block, or
            a block's runs (layerfilm.compare).
        strip: the loss and learning-rate curves drawn under the timeline (layerfilm.draw.curves), or None.
        caption: the widest caption the film shows (room is kept for it; a wider one is cut at its left).
        marks: the words the overlay may write beside a panel's label (layerfilm.draw.overlay).

    Where everything goes is planned first (``layout``: layerfilm.draw.frame_layout), so that all text
    fits the frame without overlapping; ``text_boxes`` lists it. Each panel is a rectangle (``panels``,
    ``panel_bins``) with a strip at its top for its label, the overlay's bar at its bottom and a margin at
    its sides: points are drawn only in the area between (``origin``, ``bins``), so they never touch an
    edge or hide a label.

    The colour of a bin is the exact number of points in it (each point counts in the bin its position
    falls in), on the colour bar's log scale (``count_index``): a lone point has the colour of the bar's
    "1", whatever the frame.

    A renderer keeps no per-frame state (its scratch canvas is per thread), so threads may share one.
    """

    def __init__(self, style: Style, labels: list[str], extent: np.ndarray, vmax: float | None = None,
                 legend: Legend | None = None, zoom: np.ndarray | None = None, passed_ticks: bool = False,
                 group: int = 1, strip: Strip | None = None, caption: str = CAPTION_SAMPLE,
                 marks: tuple[str, ...] = ("settled",)) -> None:
        self.style = style
        self.passed_ticks = passed_ticks
        self._ticks: list[tuple[float, int]] = []  # (place in the film, x) of each key frame's tick
        self.zoom = zoom
        self.labels = labels
        self.legend = legend
        W, H = style.width, style.height
        self.keyframes = None if passed_ticks or legend is None else len(legend.ticks)
        lay = self.layout = self.plan(style, labels, legend, passed_ticks, group, strip is not None, caption, marks)
        self._scale_boxes: list[Box] = []  # the colour bar's counts and note (set_scale)
        self.header, self.footer, self.text_px, self.legend_px = lay.header, lay.footer, lay.text_px, lay.legend_px
        self.text_pad, self.rows, self.row_h, self.timeline_h = lay.pad, lay.rows, lay.row_h, lay.timeline_h
        self.strip, self.strip_h = strip, lay.strip_h
        self.cell = c = lay.cell
        self.small = ((H + c - 1) // c, (W + c - 1) // c)
        self.panels, self.panel_bins, self.panel_px = lay.panels, lay.panel_bins, lay.panel_px  # (L, 2) in bins
        self.label_px, self.bar_px = lay.label_px, lay.bar_px
        self.origin, self.bins = lay.origin, lay.bins  # the drawing areas (L, 2) and their size, in bins
        bw, bh = self.bins
        # one data unit is as many bins across as down (a round cloud is drawn round): the extent fits the
        # drawing area along its tighter side and the other side shows more of the plane, about the same centre
        ext = np.asarray(extent, np.float64)
        s = np.minimum(bw / (ext[:, 1] - ext[:, 0]), bh / (ext[:, 3] - ext[:, 2]))  # (L,) bins per data unit
        self.scale = np.stack([s, s], 1)  # (L, 2)
        self.offset = np.stack([(ext[:, 0] + ext[:, 1]) / 2 - bw / (2 * s), (ext[:, 2] + ext[:, 3]) / 2 - bh / (2 * s)], 1)
        self.lut = colormap_lut(style.cmap)
        self._lut_planes = [np.ascontiguousarray(self.lut[:, ch]) for ch in range(3)]
        self.vmax, self.clipped = vmax, 0  # the colour scale's top; key frames with denser bins (set_scale)
        # static layer: background, empty panels in the colormap's zero colour, labels, the legend's words
        base = np.empty(self.small + (3,), np.uint8)
        base[:] = BACKGROUND
        pbw, pbh = self.panel_bins
        for ox, oy in self.panels:
            base[oy : oy + pbh, ox : ox + pbw] = self.lut[0]
        self.base = np.ascontiguousarray(base.repeat(c, 0).repeat(c, 1)[:H, :W])  # the static frame
        self._block = (np.arange(c)[:, None] * W + np.arange(c)).ravel()  # pixel offsets in a bin
        self.labels_at, self.labels_alpha = self._label_layer()
        if strip is not None:
            tx0, tx1, ty = self.layout.timeline
            strip.draw(self.base, tx0, tx1, ty + self.timeline_h + self.legend_px // 4, self.strip_h - self.legend_px // 4,
                       self.legend_px)
        if legend is not None:
            self._draw_footer(legend)
        # for _splat: projection -> bin coordinates in float32 (bin j of a panel holds [j, j + 1)), each
        # area's corner as a flat index
        self._scale32 = self.scale.astype(np.float32)[:, None, :]
        self._shift32 = (-self.offset * self.scale).astype(np.float32)[:, None, :]
        self._corner = (self.origin[:, 1] * self.small[1] + self.origin[:, 0])[:, None]

    @staticmethod
    def plan(style: Style, labels: list[str], legend: Legend | None = None, passed_ticks: bool = False, group: int = 1,
             strip: bool = False, caption: str = CAPTION_SAMPLE, marks: tuple[str, ...] = ("settled",)) -> FrameLayout:
        """Where a renderer of these arguments puts everything (layerfilm.draw.frame_layout.plan_frame), without
        drawing: e.g. whether its panels' labels fit (``labels`` empty: they do not)."""
        keyframes = None if passed_ticks or legend is None else len(legend.ticks)
        return plan_frame(style.width, style.height, labels, style.title, legend.parts if legend is not None else None,
                          legend.unit if legend is not None else "", keyframes, caption, marks, style.cell, group, strip,
                          legend is not None and bool(legend.ticks),
                          tuple(n for n, _ in legend.runs) if legend is not None else ())

    def density(self, pts: np.ndarray) -> np.ndarray:
        """(small_h, small_w) int64: the number of points in each bin (points outside their panel's area
        are not counted)."""
        return self._splat(pts)[0].reshape(self.small)

    def _splat(self, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The counts, flat (small_h * small_w,), and the sorted flat indices of the bins holding points."""
        bw, bh = self.bins
        sh, sw = self.small
        u = np.floor(pts * self._scale32 + self._shift32)  # (L, N, 2) bins, float32 (bins < 2^24: exact enough)
        ix, iy = u[..., 0].astype(np.int64), u[..., 1].astype(np.int64)
        inside = (ix >= 0) & (ix < bw) & (iy >= 0) & (iy < bh)
        flat = (iy * sw + ix + self._corner)[inside]
        # the bins holding points, found by marking them in a reused boolean canvas: 8x fewer bytes to
        # scan than the counts, and ``frame`` colours only these
        mark = _marks(sh * sw)
        mark[flat] = True
        touched = np.flatnonzero(mark)
        mark[touched] = False
        return np.bincount(flat, minlength=sh * sw), touched

    def place(self, xy: np.ndarray, k: int, a: float, first: int = 0) -> np.ndarray:
        """(L, N, 2) the points of key frames ``xy`` (key frames ``first`` .. ``first + K - 1``, K x L x N x 2)
        at key k plus a fraction a, in this renderer's coordinates: straight lines between key frames,
        then the zoom, if any, between the two key frames' axes."""
        pts = lerp(xy, k - first, a)
        if self.zoom is None:
            return pts
        e = lerp(self.zoom, k, a)  # (L, 4)
        centre = np.stack([e[:, 0] + e[:, 1], e[:, 2] + e[:, 3]], 1)[:, None, :] / 2
        half = (e[:, 1] - e[:, 0])[:, None, None] / 2
        return ((pts - centre) / half).astype(np.float32)

    def key_maxima(self, keyframes: Iterable[np.ndarray]) -> np.ndarray:
        """(K,) the densest bin of each key frame (L, N, 2): what the colour scale's rule
        (``layerfilm.draw.legend.scale_top``) chooses from."""
        return np.array([float(self._splat(k)[0].max()) for k in keyframes])

    def set_scale(self, vmax: float, clipped: int = 0, keyframes: int | None = 0) -> None:
        """Fix the top of the colour scale, and with a legend draw the colour bar that shows it: log
        scale, points per bin from 1 to ``vmax``, and how many of the ``keyframes`` have bins above it
        (``clipped``; with ``keyframes`` None, only that some have: a live film's legend holds no count of
        key frames)."""
        self.vmax, self.clipped = vmax, clipped
        if self.legend is not None:
            self._draw_colour_bar(vmax, clipped, keyframes)

    def frame(self, pts: np.ndarray, caption: str, when: float | None = None) -> np.ndarray:
        """(H, W, 3) uint8 frame for point positions ``pts`` (L, N, 2); ``when`` (0..1), the frame's place
        in the film, moves the legend's timeline cursor."""
        d, nz = self._splat(pts)
        counts = d[nz]
        vmax = self.vmax if self.vmax is not None else float(counts.max(initial=2))
        idx = count_index(counts, vmax, len(self.lut) - 1)
        img = self.base.copy()
        c, W = self.cell, self.style.width
        if c == 1:
            at = nz * 3
        else:  # every touched bin is a c x c block of pixels (panels lie inside the frame)
            by, bx = np.divmod(nz, self.small[1])
            at = (((by * c * W + bx * c)[:, None] + self._block).ravel()) * 3
            idx = np.repeat(idx, c * c)
        for ch in range(3):  # three 1-D scatters are twice as fast as one of (k, 3) rows
            img.reshape(-1)[at + ch] = self._lut_planes[ch][idx]
        self.decorate(img, caption, when)
        return img

    def _label_layer(self) -> tuple[np.ndarray, np.ndarray]:
        """The title and panel labels as (flat pixel indices, (k, 1) coverage), drawn once.

        Blending text of one colour twice over the same pixel equals blending once with coverage
        1 - (1 - a1)(1 - a2), so one layer holds every label."""
        cover = np.zeros((self.style.height, self.style.width), np.float32)
        lay = self.layout
        for box in [b for b in (lay.title,) if b is not None] + list(lay.labels):
            clip = clipped(cover, box.text, box.x, box.y, self.text_px if box is lay.title else self.label_px)
            if clip is not None:
                m, ys, xs = clip
                cover[ys, xs] = 1 - (1 - cover[ys, xs]) * (1 - m)
        at = np.flatnonzero(cover)
        return at, cover.ravel()[at, None]

    def decorate(self, img: np.ndarray, caption: str, when: float | None = None) -> None:
        """Title, caption (the step) and panel labels, blended over the frame; the timeline's cursor."""
        px = img.reshape(-1, 3)
        a = self.labels_alpha
        px[self.labels_at] = (px[self.labels_at] * (1 - a) + TEXT * a + 0.5).astype(np.uint8)
        room = self.layout.caption
        x1 = room.x + room.w
        draw_text(img, caption, x1 - text_mask(caption, self.text_px).shape[1], room.y, self.text_px, x_range=(room.x, x1))
        if when is not None and (self.legend is not None or self.strip is not None):
            x0, x1, y = self.layout.timeline
            x = x0 + int(round(min(max(when, 0.0), 1.0) * (x1 - x0 - 1)))
            w = max(3, min(self.timeline_h, max(4, self.legend_px // 2)))  # as wide as one row's track is high
            for _, tx in self.passed(when):
                img[y : y + self.timeline_h, tx] = TICK
            img[y : y + self.timeline_h, max(x0, x - w // 2) : min(x1, x - w // 2 + w)] = CURSOR
            if self.strip is not None:  # a thinner cursor across the strip, within the timeline's
                gap, thin = self.legend_px // 4, max(1, w // 2)
                top = y + self.timeline_h + gap
                img[top : top + self.strip_h - gap, max(x0, x - thin // 2) : min(x1, x - thin // 2 + thin)] = CURSOR

    def bin_mapping(self) -> tuple[np.ndarray, np.ndarray]:
        """(scale, shift), each (L, 2) float32: a point p of panel l falls in bin floor(p * scale[l] + shift[l])
        of its drawing area, in float32 exactly as the frames are drawn (for a viewer that redraws them)."""
        return self._scale32[:, 0, :], self._shift32[:, 0, :]

    @property
    def _timeline(self) -> tuple[int, int, int]:
        """(x0, x1, y) of the timeline's track (``FrameLayout.timeline``)."""
        return self.layout.timeline

    def mark(self, img: np.ndarray, l: int, word: str, color: np.ndarray) -> None:
        """Write the overlay's ``word`` (one of ``marks``) in panel ``l``'s label strip, right of its label;
        nothing where marks do not fit the panels (the layout hides them)."""
        box = self.layout.mark_box(l, word)
        if box is not None:
            draw_text(img, word, box.x, box.y, self.label_px, color)

    def text_boxes(self) -> list[Box]:
        """Every text this renderer's frames may show, as boxes of the frame (``FrameLayout.text_boxes``
        with the colour bar's counts and note as drawn)."""
        return self.layout.text_boxes() + self._scale_boxes

    def passed(self, when: float) -> list[tuple[float, int]]:
        """The key frames' ticks drawn on a frame at ``when`` (its place in the film) over the static
        timeline: with ``passed_ticks``, those it has reached, as (place, x); otherwise none (every tick
        is in the static frame)."""
        return [t for t in self._ticks if t[0] <= when + 1e-9] if self.passed_ticks else []

    def digest(self) -> bytes:
        """A digest of what this renderer draws the same on every frame: its static frame (background,
        panels, labels, legend, colour bar), axes, colour scale and sizes. What changes from frame to
        frame is the points, the caption, ``zoom`` (per key frame) and :meth:`passed`; with those, equal
        digests give equal pixels (a live film re-encodes only the segments whose digest changed)."""
        state = {k: v for k, v in vars(self).items() if k not in ("legend", "_ticks", "zoom")}
        return hashlib.sha256(pickle.dumps(state, protocol=5)).digest()

    # ---------------------------------------------------------------- the legend (drawn once)

    def _draw_footer(self, legend: Legend) -> None:
        """The timeline (a track with a tick per key frame, dashed across skipped checkpoints, red at marked
        key frames) and the legend's rows, into the static frame."""
        x0, x1, y = self.layout.timeline
        self.base[y : y + self.timeline_h, x0:x1] = TRACK
        self._ticks = [(t, x0 + int(round(min(max(t, 0.0), 1.0) * (x1 - x0 - 1)))) for t in legend.ticks]
        dash = max(3, self.timeline_h)
        for k in legend.skips:  # skipped checkpoints: the track dashed between the two key frames' ticks
            if k + 1 < len(self._ticks):
                a, b = self._ticks[k][1] + 1, self._ticks[k + 1][1]
                gap = np.arange(a, b)
                self.base[y : y + self.timeline_h, gap[(gap - a) // dash % 2 == 1]] = BACKGROUND
        for _, x in [] if self.passed_ticks or legend.runs else self._ticks:
            self.base[y : y + self.timeline_h, x] = TICK
        if legend.runs:
            self._draw_run_rows(legend)
        for t in legend.marks:
            x = x0 + int(round(min(max(t, 0.0), 1.0) * (x1 - x0 - 1)))
            self.base[y : y + self.timeline_h, max(x0, x - 1) : x + 2] = MARK
        for box in self.layout.row_boxes():
            draw_text(self.base, box.text, box.x, box.y, self.legend_px)

    def _draw_run_rows(self, legend: Legend) -> None:
        """A film of several runs: a row of the timeline per run (the track between, background), its key
        frames' ticks and its name in the run's colour."""
        x0, x1, y = self.layout.timeline
        h = self.layout.run_h
        gap = max(1, h // 5)  # background between the rows' tracks
        for r, (_, places) in enumerate(legend.runs):
            top = y + r * h
            self.base[top + h - gap : top + h, x0:x1] = BACKGROUND
            colour = run_colour(r)
            for t in places:
                x = x0 + int(round(min(max(t, 0.0), 1.0) * (x1 - x0 - 1)))
                self.base[top : top + h - gap, x : x + max(1, self.legend_px // 8)] = colour
        for box in self.layout.runs:  # a name's row: the one its box sits in
            draw_text(self.base, box.text, box.x, box.y, self.legend_px, run_colour((box.y + box.h // 2 - y) // h))

    def _draw_colour_bar(self, vmax: float, clipped: int, keyframes: int | None) -> None:
        """The colour bar in the header: the colours of 1 .. vmax points per bin on the frames' log scale
        (``count_index``), with counts under it, its unit at its left and the clipped note at its right."""
        bar = self.layout.colour
        if bar is None:
            return
        b, px = bar.bar, bar.px
        unit = bar.unit
        draw_text(self.base, unit.text, unit.x, unit.y, px)
        counts = max(vmax, 2.0) ** (np.arange(b.w) / max(b.w - 1, 1))  # the count at each column
        self.base[b.y : b.y + b.h, b.x : b.x + b.w] = self.lut[count_index(counts, vmax, len(self.lut) - 1)]
        ticks = bar.ticks(vmax, bool(clipped))
        for tx, box in ticks:
            self.base[b.y + b.h : box.y, tx] = TEXT.astype(np.uint8)
            draw_text(self.base, box.text, box.x, box.y, px)
        note = bar.note(clipped, keyframes)
        if note is not None:
            draw_text(self.base, note.text, note.x, note.y, px)
        self._scale_boxes = [box for _, box in ticks] + ([note] if note is not None else [])
