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
import io
import math
import pickle
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from layerfilm.draw.legend import SEP, Legend
from layerfilm.draw.timeline import lerp
from layerfilm.errors import OptionsError

if TYPE_CHECKING:  # the strip draws with this module's text
    from layerfilm.draw.curves import Strip

HEADER_FRACTION = 0.06  # of the frame height, for the title and the step counter
LEGEND_FRACTION = 0.016  # of the frame height: the legend's text (12 px at 720p, 17 px at 1080p)
BACKGROUND = np.array([12, 12, 14], np.uint8)
TEXT = np.array([235, 235, 235], np.float32)
TRACK = np.array([45, 45, 52], np.uint8)  # the timeline's track (and the overlay's)
TICK = np.array([170, 170, 180], np.uint8)  # a key frame on the timeline
CURSOR = np.array([255, 200, 60], np.uint8)  # now, on the timeline
MARK = np.array([235, 60, 60], np.uint8)  # a marked key frame on the timeline (an update-ratio spike)
FLOOR = 0.25  # colour-scale position of the faintest non-empty bin


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

    width, height: frame size in pixels (even numbers: H.264 needs them).
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
        if self.width < 64 or self.height < 64 or self.width % 2 or self.height % 2:
            raise OptionsError(f"size={self.width}x{self.height}: need even sizes of at least 64x64")
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


@lru_cache(maxsize=4096)
def text_mask(text: str, px: int) -> np.ndarray:
    """Anti-aliased coverage (h, w) in [0, 1] of ``text`` at ``px`` pixels high (DejaVu Sans)."""
    with _FONT_LOCK:  # one font object per size, shared by the drawing threads
        font = _font(px)
        font.clear()
        font.set_text(text)
        font.draw_glyphs_to_bitmap()
        return np.asarray(font.get_image(), np.float32) / 255.0


_FONT_LOCK = threading.Lock()


@cache
def _font_bytes(path: str) -> bytes:
    return Path(path).read_bytes()


@cache
def _font(px: int):
    """The font at ``px`` pixels, loaded once and read from memory: opened from its file, FreeType reads
    the whole font file again for every new text, and a film draws a new caption on every frame."""
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    font = FT2Font(io.BytesIO(_font_bytes(font_manager.findfont("DejaVu Sans"))))
    font.set_size(px, 72)
    return font


def _clipped(img: np.ndarray, text: str, x: int, y: int, px: int) -> tuple[np.ndarray, slice, slice] | None:
    """The coverage of ``text`` at (x, y) cut to ``img``, and the rows and columns it covers."""
    m = text_mask(text, px)
    m = m[max(0, -y):, max(0, -x):]  # text starting left of or above the frame loses that part
    x, y = max(0, x), max(0, y)
    h = min(m.shape[0], img.shape[0] - y)
    w = min(m.shape[1], img.shape[1] - x)
    if h <= 0 or w <= 0:
        return None
    return m[:h, :w], slice(y, y + h), slice(x, x + w)


def draw_text(img: np.ndarray, text: str, x: int, y: int, px: int, color: np.ndarray = TEXT) -> None:
    """Blend ``text`` into ``img`` (H, W, 3) uint8 with its top-left corner at (x, y), clipped."""
    clip = _clipped(img, text, x, y, px)
    if clip is None:
        return
    m, ys, xs = clip
    a = m[:, :, None]
    img[ys, xs] = (img[ys, xs].astype(np.float32) * (1 - a) + color * a + 0.5).astype(np.uint8)


def grid_shape(n: int, width: int, height: int) -> tuple[int, int]:
    """(rows, cols) for n panels: among layouts whose panels are near square (aspect 2:3 to 3:2),
    the one with the fewest empty cells, then the squarest. 128 panels in 16:9 give 8 x 16."""
    options = []
    for rows in range(1, n + 1):
        cols = math.ceil(n / rows)
        off_square = abs(math.log((width / cols) / (height / rows)))
        options.append((off_square > math.log(1.5), rows * cols - n, off_square, (rows, cols)))
    return min(options)[3]


class Renderer:
    """Draws frames of L panels; positions come as (L, N, 2) in projection coordinates.

    Args:
        style: sizes, colours, title.
        labels: L panel labels ("L0", "L1", ...).
        extent: (L, 4) fixed axes per panel [x0, x1, y0, y1], all shown: one data unit is the same
            number of pixels on both axes, so a panel wider (taller) than its extent shows more around it.
        vmax: the density that maps to the top of the colour scale (fixed for the film; see
            ``set_scale``, which also draws it on the legend's colour bar).
        legend: the words under the panels and the timeline's key frames (None: no legend, no colour bar).
        zoom: (T, L, 4) per-key-frame axes instead of fixed ones (``layerfilm.draw.legend.zooms``); ``place``
            maps a frame's points into them, and ``extent`` must then be the unit box [-1, 1, -1, 1].
        passed_ticks: draw a key frame's tick on the timeline only from the frame that reaches it (a live
            film: a tick of a key frame to come would change every frame before it; layerfilm.draw.film_layout).
        group: panels that sit side by side in one cell of the grid: a still's before and after of one block, or
            a block's runs (layerfilm.compare).
        strip: the loss and learning-rate curves drawn under the timeline (layerfilm.draw.curves), or None.

    Each panel is a rectangle (``panels``, ``panel_bins``) with a strip at its top for its label, the
    overlay's bar at its bottom and a margin at its sides: points are drawn only in the area between
    (``origin``, ``bins``), so they never touch an edge or hide a label.

    A renderer keeps no per-frame state (its scratch canvas is per thread), so threads may share one.
    """

    def __init__(self, style: Style, labels: list[str], extent: np.ndarray, vmax: float | None = None,
                 legend: Legend | None = None, zoom: np.ndarray | None = None, passed_ticks: bool = False,
                 group: int = 1, strip: Strip | None = None) -> None:
        self.style = style
        self.passed_ticks = passed_ticks
        self._ticks: list[tuple[float, int]] = []  # (place in the film, x) of each key frame's tick
        self.zoom = zoom
        self.labels = labels
        self.legend = legend
        W, H = style.width, style.height
        self.header = max(14, int(H * HEADER_FRACTION))
        self.text_px = max(8, int(self.header * 0.55))
        self.text_pad = max(2, (self.header - self.text_px) // 2)
        self.legend_px = max(9, round(H * LEGEND_FRACTION))
        self.rows = self._wrap(legend.parts) if legend is not None else []
        self.row_h = round(self.legend_px * 1.45)
        self.timeline_h = max(4, self.legend_px // 2) if legend is not None and legend.ticks else 0
        self.strip = strip
        self.strip_h = strip.height(self.legend_px, H) + self.legend_px // 4 if strip is not None else 0
        self.footer = self.timeline_h + len(self.rows) * self.row_h + self.legend_px // 2 if legend is not None else 0
        self.footer += self.strip_h
        grid_h = H - self.header - self.footer
        rows, cols = grid_shape(-(-len(labels) // group), W // group, grid_h)
        cols *= group
        pw, ph = W // cols, grid_h // rows
        self.cell = style.cell or max(1, round(min(pw, ph) / 110))  # about 110 bins across a panel
        c = self.cell
        gap = max(1, min(pw, ph) // 40)
        # panel rectangles in bin units (the small canvas), left/top inclusive, size bw x bh
        self.small = ((H + c - 1) // c, (W + c - 1) // c)
        bw, bh = (pw - gap) // c, (ph - gap) // c
        x0 = np.array([(i % cols) * pw // c for i in range(len(labels))])
        y0 = np.array([(self.header + (i // cols) * ph) // c for i in range(len(labels))])
        self.panels = np.stack([x0, y0], 1)  # (L, 2)
        self.panel_bins = (bw, bh)
        self.label_px = max(8, min(ph // 9, 16))
        self.bar_px = max(2, bh * c // 45)  # the overlay's bar along the bottom of a panel
        # the drawing area: below the label strip, above the bar, a margin at the sides (all in bins)
        label_h = max(text_mask(t, self.label_px).shape[0] for t in [*labels, "settled"]) + 4
        side = max(1, round(min(bw, bh) * 0.03))
        top, bottom = -(-label_h // c), -(-self.bar_px // c) + side
        if bw - 2 * side < 2 or bh - top - bottom < 2:  # panels too small for margins: use all of them
            side = top = bottom = 0
        self.origin = self.panels + np.array([side, top])  # (L, 2)
        self.bins = (bw - 2 * side, bh - top - bottom)
        bw, bh = self.bins
        # one data unit is as many bins across as down (a round cloud is drawn round): the extent fits the
        # drawing area along its tighter side and the other side shows more of the plane, about the same centre
        ext = np.asarray(extent, np.float64)
        s = np.minimum(bw / (ext[:, 1] - ext[:, 0]), bh / (ext[:, 3] - ext[:, 2]))  # (L,) bins per data unit
        self.scale = np.stack([s, s], 1)  # (L, 2)
        self.offset = np.stack([(ext[:, 0] + ext[:, 1]) / 2 - bw / (2 * s), (ext[:, 2] + ext[:, 3]) / 2 - bh / (2 * s)], 1)
        self.lut = colormap_lut(style.cmap)
        self._lut_planes = [np.ascontiguousarray(self.lut[:, ch]) for ch in range(3)]
        self.vmax = vmax
        # static layer: background, empty panels in the colormap's zero colour, labels, the legend's words
        base = np.empty(self.small + (3,), np.uint8)
        base[:] = BACKGROUND
        pbw, pbh = self.panel_bins
        for ox, oy in self.panels:
            base[oy : oy + pbh, ox : ox + pbw] = self.lut[0]
        self.base = np.ascontiguousarray(base.repeat(c, 0).repeat(c, 1)[:H, :W])  # the static frame
        self._block = (np.arange(c)[:, None] * W + np.arange(c)).ravel()  # pixel offsets in a bin
        self.panel_px = (pw, ph)
        self.labels_at, self.labels_alpha = self._label_layer()
        self._timeline = (self.text_pad * 2, W - self.text_pad * 2, H - self.footer)
        if strip is not None:
            tx0, tx1, ty = self._timeline
            strip.draw(self.base, tx0, tx1, ty + self.timeline_h + self.legend_px // 4, self.strip_h - self.legend_px // 4,
                       self.legend_px)
        if legend is not None:
            self._draw_footer(legend)
        # for _splat: projection -> bin coordinates in float32, each area's corner as a flat index
        self._scale32 = self.scale.astype(np.float32)[:, None, :]
        self._shift32 = (-self.offset * self.scale - 0.5).astype(np.float32)[:, None, :]
        self._corner = (self.origin[:, 1] * self.small[1] + self.origin[:, 0])[:, None]

    def density(self, pts: np.ndarray) -> np.ndarray:
        """(small_h, small_w) float splat of all points, bilinear so motion is sub-pixel smooth."""
        return self._splat(pts)[0].reshape(self.small)

    def _splat(self, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The density, flat (small_h * small_w,), and the sorted flat indices of the bins it touched."""
        bw, bh = self.bins
        sh, sw = self.small
        u = pts * self._scale32 + self._shift32  # (L, N, 2) in bins, float32 (bins < 2^24: exact enough)
        i0 = np.floor(u)
        f = u - i0
        ix, iy = i0[..., 0].astype(np.int64), i0[..., 1].astype(np.int64)
        fx, fy = f[..., 0], f[..., 1]
        # bilinear weights of the 4 neighbours; a neighbour outside its panel weighs 0
        wx0 = np.where((ix >= 0) & (ix < bw), 1 - fx, 0)
        wx1 = np.where((ix >= -1) & (ix < bw - 1), fx, 0)
        wy0 = np.where((iy >= 0) & (iy < bh), 1 - fy, 0)
        wy1 = np.where((iy >= -1) & (iy < bh - 1), fy, 0)
        w = np.stack([wx0 * wy0, wx1 * wy0, wx0 * wy1, wx1 * wy1]).ravel()  # (4 * L * N,)
        flat = (iy * sw + ix + self._corner)[None] + np.array([0, 1, sw, sw + 1])[:, None, None]
        flat = np.where(w > 0, flat.ravel(), 0)  # weightless neighbours go to bin 0, in bounds
        # the touched bins, found by marking them in a reused boolean canvas: 8x fewer bytes to
        # scan than the float density, and ``frame`` colours only these
        mark = _marks(sh * sw)
        mark[flat] = True
        touched = np.flatnonzero(mark)
        mark[touched] = False
        return np.bincount(flat, w, minlength=sh * sw), touched

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
        scale, absolute counts, and how many of the ``keyframes`` have bins above it (``clipped``; with
        ``keyframes`` None, only that some have: a live film's legend holds no count of key frames)."""
        self.vmax = vmax
        if self.legend is not None:
            self._draw_colour_bar(vmax, clipped, keyframes)

    def frame(self, pts: np.ndarray, caption: str, when: float | None = None) -> np.ndarray:
        """(H, W, 3) uint8 frame for point positions ``pts`` (L, N, 2); ``when`` (0..1), the frame's place
        in the film, moves the legend's timeline cursor."""
        d, nz = self._splat(pts)
        nz = nz[d[nz] > 0]
        vmax = self.vmax if self.vmax is not None else max(float(d[nz].max(initial=0.0)), 1.0)
        level = np.log1p(d[nz]) / np.log1p(vmax)
        # a lone point starts a quarter up the scale so that sparse clouds stay visible
        n = len(self.lut) - 1
        idx = np.clip((FLOOR + level * (1 - FLOOR)) * n, 1, n).astype(np.int64)
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
        c = self.cell
        texts = [(self.style.title, self.text_pad * 2, self.text_pad, self.text_px)]
        texts += [(label, ox * c + 3, oy * c + 2, self.label_px) for (ox, oy), label in zip(self.panels, self.labels)]
        for text, x, y, px in texts:
            clip = _clipped(cover, text, x, y, px)
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
        cap = text_mask(caption, self.text_px)
        draw_text(img, caption, self.style.width - cap.shape[1] - self.text_pad * 2, self.text_pad, self.text_px)
        if when is not None and (self.legend is not None or self.strip is not None):
            x0, x1, y = self._timeline
            x = x0 + int(round(min(max(when, 0.0), 1.0) * (x1 - x0 - 1)))
            w = max(3, self.timeline_h)
            for _, tx in self.passed(when):
                img[y : y + self.timeline_h, tx] = TICK
            img[y : y + self.timeline_h, max(x0, x - w // 2) : x - w // 2 + w] = CURSOR
            if self.strip is not None:  # a thinner cursor across the strip, within the timeline's
                gap, thin = self.legend_px // 4, max(1, w // 2)
                top = y + self.timeline_h + gap
                img[top : top + self.strip_h - gap, max(x0, x - thin // 2) : x - thin // 2 + thin] = CURSOR

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

    def _wrap(self, parts: Sequence[str]) -> list[str]:
        """The legend's phrases in rows that fit the frame's width, broken between phrases. In a frame
        too small for all of them (a quarter of its height at most), the last phrases are cut: the
        first (what is filmed, and whether it is a sample) always stays."""
        room = self.style.width - 4 * self.text_pad
        rows: list[str] = []
        for part in parts:
            joined = rows[-1] + SEP + part if rows else part
            if rows and text_mask(joined, self.legend_px).shape[1] <= room:
                rows[-1] = joined
            else:
                rows.append(part)
        most = max(1, self.style.height // 4 // round(self.legend_px * 1.45))
        return rows[:most]

    def _draw_footer(self, legend: Legend) -> None:
        """The timeline (a track with a tick per key frame, dashed across skipped checkpoints) and the
        legend's rows, into the static frame."""
        x0, x1, y = self._timeline
        self.base[y : y + self.timeline_h, x0:x1] = TRACK
        self._ticks = [(t, x0 + int(round(min(max(t, 0.0), 1.0) * (x1 - x0 - 1)))) for t in legend.ticks]
        dash = max(3, self.timeline_h)
        for k in legend.skips:  # skipped checkpoints: the track dashed between the two key frames' ticks
            if k + 1 < len(self._ticks):
                a, b = self._ticks[k][1] + 1, self._ticks[k + 1][1]
                gap = np.arange(a, b)
                self.base[y : y + self.timeline_h, gap[(gap - a) // dash % 2 == 1]] = BACKGROUND
        for _, x in [] if self.passed_ticks else self._ticks:
            self.base[y : y + self.timeline_h, x] = TICK
        for t in legend.marks:
            x = x0 + int(round(min(max(t, 0.0), 1.0) * (x1 - x0 - 1)))
            self.base[y : y + self.timeline_h, max(x0, x - 1) : x + 2] = MARK
        for i, row in enumerate(self.rows):
            draw_text(self.base, row, x0, y + self.timeline_h + self.strip_h + self.legend_px // 4 + i * self.row_h,
                      self.legend_px)

    def _draw_colour_bar(self, vmax: float, clipped: int, keyframes: int | None) -> None:
        """The colour bar in the header, between the title and the step: the colours of 0 .. vmax points
        per bin on the frames' log scale, with counts under it."""
        assert self.legend is not None
        W, c = self.style.width, self.cell
        px = self.legend_px
        unit = self.legend.unit + (f" ({c}x{c} px), log" if c > 1 else ", log")
        x = text_mask(self.style.title, self.text_px).shape[1] + self.text_pad * 6
        h = max(3, self.header // 3)
        y = max(1, (self.header - h - px) // 2)
        ulen = text_mask(unit, px).shape[1]
        width = min(W // 4, W - x - ulen - self.text_pad * 2 - W // 3)
        if width < 16:  # a frame too small for a colour bar (thumbnails)
            return
        draw_text(self.base, unit, x, y + (h - text_mask(unit, px).shape[0]) // 2, px)
        x += ulen + self.text_pad * 2
        n = len(self.lut) - 1
        level = np.arange(width) / max(width - 1, 1)
        self.base[y : y + h, x : x + width] = self.lut[np.clip((FLOOR + level * (1 - FLOOR)) * n, 1, n).astype(np.int64)]
        top = f"{'≥' if clipped else ''}{vmax:,.3g}"
        marks = [(1.0, top)]
        for v in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10_000, 20_000, 50_000):
            if v < vmax:
                marks.append((np.log1p(v) / np.log1p(vmax), f"{v:,}"))
        taken: list[tuple[int, int]] = []
        for pos, text in marks:  # the top first; then the others where they do not overlap
            tw = text_mask(text, px).shape[1]
            tx = x + int(round(pos * (width - 1)))
            lx = min(max(tx - tw // 2, x - tw // 2), x + width - tw) if pos < 1 else x + width - tw
            if any(lx < b + px // 2 and lx + tw + px // 2 > a for a, b in taken):
                continue
            taken.append((lx, lx + tw))
            self.base[y + h : y + h + max(2, h // 3), tx] = TEXT.astype(np.uint8)
            draw_text(self.base, text, lx, y + h + max(2, h // 3), px)
        if clipped:
            note = "denser bins clipped" + (f" in {clipped} of {keyframes} key frames" if keyframes is not None else "")
            draw_text(self.base, note, x + width + self.text_pad * 2, y + (h - text_mask(note, px).shape[0]) // 2, px)
