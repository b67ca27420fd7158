"""Where each thing drawn in a frame goes, planned once from the frame's size and its words, before any
pixel is drawn (layerfilm.draw.raster draws at these places; a test reads the boxes, never a pixel).

    header   the title (left), the step caption (right, room kept for the film's widest caption) and, in
             between, the colour bar: its unit, the bar with counts under it, and a note when bins are
             clipped. Where that row is too narrow the words get shorter (the note, then the bin size in
             the unit); then the colour bar moves to a second row of its own, and the title is elided.
    panels   a grid of near-square panels; each has a strip at its top for its label and the overlay's
             mark ("settled"), the overlay's bar at its bottom, and the points' area between. Labels too
             wide for their panels are hidden, and the legend says in which order the panels run; marks
             that do not fit beside a label are hidden (the bar's colour still says it).
    footer   the timeline, then the legend's phrases wrapped into rows (between phrases, and between
             words where a phrase is wider than the frame), at most a quarter of the frame's height.
             A film of several runs has a row of the timeline per run (its key frames' ticks), each
             run's name left of its row (elided to a fifth of the frame's width at most).

Text scales with the frame's 16:9 height ``min(height, width * 9 / 16)`` and is never smaller than
``MIN_PX``. Every accepted size (``MIN_WIDTH`` x ``MIN_HEIGHT`` up to 8K) fits: no two texts overlap,
none crosses the colour bar, the timeline or a panel's points or bar, and all lie inside the frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from layerfilm.draw.fonts import MIN_PX, Box, elide, line_height, text_mask, text_width, wrap
from layerfilm.draw.legend import SEP
from layerfilm.errors import OptionsError

MIN_WIDTH, MIN_HEIGHT = 320, 180  # the smallest frame whose words fit (tests/test_frame_layout.py)
HEADER_FRACTION = 0.06  # of the frame's 16:9 height: the header at least
TITLE_FRACTION = 0.033  # the title and the step (23 px at 720p)
LEGEND_FRACTION = 0.016  # the legend's and the colour bar's words (12 px at 720p, 17 px at 1080p)
LABEL_FRACTION = 0.022  # panel labels at most (16 px at 720p)
BAR_FRACTION = 0.02  # the colour bar's height
PAD_FRACTION = 0.014  # margins and gaps (10 px at 720p)
LABEL_INSET = 3  # pixels between a panel's edge and its label or mark
TOP_SAMPLE = "≥8.88e+88"  # the widest top count the colour bar leaves room for
CAPTION_SAMPLE = "step 8,888,888   key 8,888/8,888"


def grid_shape(n: int, width: int, height: int) -> tuple[int, int]:
    """(rows, cols) for n panels: among layouts whose panels are near square (aspect 2:3 to 3:2),
    the one with the fewest empty cells, then the squarest. 128 panels in 16:9 give 8 x 16."""
    options = []
    for rows in range(1, n + 1):
        cols = math.ceil(n / rows)
        off_square = abs(math.log((width / cols) / max(height / rows, 1e-9)))
        options.append((off_square > math.log(1.5), rows * cols - n, off_square, (rows, cols)))
    return min(options)[3]


def check_frame_size(width: int, height: int) -> None:
    if width < MIN_WIDTH or height < MIN_HEIGHT:
        raise OptionsError(f"size={width}x{height}: at least {MIN_WIDTH}x{MIN_HEIGHT}, the smallest frame whose "
                           "words fit (title, step, colour bar, labels, legend)")


def note_text(form: int, clipped: int, keyframes: int | None) -> str:
    """The colour bar's note that bins denser than its top are drawn in the top colour: ``form`` 0 full,
    1 short, 2 none; ``keyframes`` None: a live film, which counts no key frames."""
    if form == 2:
        return ""
    if keyframes is None:
        return "denser bins clipped" if form == 0 else "clipped"
    return f"denser bins clipped in {clipped} of {keyframes} key frames" if form == 0 else f"clipped in {clipped} of {keyframes}"


def unit_text(unit: str, cell: int, form: int) -> str:
    """The colour bar's unit: ``form`` 0 with the bin's size in pixels, 1 without."""
    return f"{unit} ({cell}x{cell} px), log" if form == 0 else f"{unit}, log"


@dataclass(frozen=True)
class ColourBar:
    """The colour bar's places: ``bar`` the gradient from 1 point per bin (left end) to the scale's top
    (right end); ``unit`` its words at the left (``unit_form`` of :func:`unit_text`); the note's form
    (``note_form`` of :func:`note_text`) and place at the right; counts under the bar at ``label_y``
    after ticks ``tick`` pixels long, in ``px`` pixels high text."""

    bar: Box
    unit: Box
    unit_form: int
    px: int
    tick: int
    label_y: int
    note_x: int
    note_form: int

    def ticks(self, vmax: float, clipped: bool) -> list[tuple[int, Box]]:
        """(tick column, label box) of the counts under the bar, on its log scale from 1 to ``vmax``:
        the top ("≥" when clipped) and 1 always, then 2, 5, 10, ... where they do not crowd the others."""
        b, px = self.bar, self.px
        vmax = max(vmax, 2.0)
        top = f"{'≥' if clipped else ''}{vmax:,.3g}"
        marks = [(1.0, top), (0.0, "1")]
        marks += [(math.log(v) / math.log(vmax), f"{v:,}") for v in (2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000,
                                                                      10_000, 20_000, 50_000) if v < vmax]
        out: list[tuple[int, Box]] = []
        for pos, text in marks:
            m = text_mask(text, px)
            tx = b.x + int(round(pos * (b.w - 1)))
            lx = min(max(tx - m.shape[1] // 2, b.x), b.x + b.w - m.shape[1])  # labels stay under the bar
            box = Box(lx, self.label_y, m.shape[1], m.shape[0], text)
            if any(box.x < o.x + o.w + px // 2 and o.x < box.x + box.w + px // 2 for _, o in out):
                continue
            out.append((tx, box))
        return out

    def note(self, clipped: int, keyframes: int | None) -> Box | None:
        text = note_text(self.note_form, clipped, keyframes) if clipped else ""
        if not text:
            return None
        m = text_mask(text, self.px)
        return Box(self.note_x, self.bar.y + (self.bar.h - m.shape[0]) // 2, m.shape[1], m.shape[0], text)


@dataclass(frozen=True, eq=False)
class FrameLayout:
    """Every place in a frame, in pixels unless named in bins (the density's cells, ``cell`` px a side).

    panels (L, 2): each panel's top-left corner in bins, ``panel_bins`` (w, h) in bins; ``origin`` (L, 2)
    and ``bins`` (w, h): the points' area in each panel. ``labels``: each panel's label box (empty: hidden).
    ``rows``: the legend's rows under the timeline (``timeline``: x0, x1, y; ``timeline_h`` high)."""

    width: int
    height: int
    pad: int
    header: int
    footer: int
    text_px: int
    legend_px: int
    title: Box | None
    caption: Box
    colour: ColourBar | None
    rows: list[str]
    row_h: int
    timeline_h: int
    cell: int
    panels: np.ndarray
    panel_bins: tuple[int, int]
    origin: np.ndarray
    bins: tuple[int, int]
    bar_px: int
    label_px: int
    labels: tuple[Box, ...]
    marks: tuple[str, ...] = ()  # the words the overlay may write in a panel's strip; () hidden
    grid: tuple[int, int] = (1, 1)
    panel_px: tuple[int, int] = (0, 0)
    legend_parts: tuple[str, ...] = field(default=())
    strip_h: int = 0  # the loss/lr strip under the timeline (layerfilm.draw.curves), with its gap above; 0: none
    runs: tuple[Box, ...] = ()  # several runs: each run's name, left of its row of the timeline
    run_h: int = 0  # the height of a run's row of the timeline (timeline_h = runs x run_h)

    @property
    def timeline(self) -> tuple[int, int, int]:
        left = max((b.x + b.w for b in self.runs), default=0)
        return max(self.pad * 2, left + self.pad), self.width - self.pad * 2, self.height - self.footer

    def row_boxes(self) -> list[Box]:
        """The legend's rows as drawn."""
        x0, y = self.pad * 2, self.height - self.footer
        out = []
        for i, row in enumerate(self.rows):
            m = text_mask(row, self.legend_px)
            out.append(Box(x0, y + self.timeline_h + self.strip_h + self.legend_px // 4 + i * self.row_h, m.shape[1],
                           m.shape[0], row))
        return out

    def mark_box(self, l: int, word: str) -> Box | None:
        """Where panel ``l``'s mark ``word`` goes (right of its label), None where marks do not fit."""
        if word not in self.marks:
            return None
        m = text_mask(word, self.label_px)
        c = self.cell
        ox, oy = self.panels[l]
        return Box(int(ox + self.panel_bins[0]) * c - m.shape[1] - LABEL_INSET, int(oy) * c + 2, m.shape[1], m.shape[0], word)

    def graphics(self) -> list[Box]:
        """The boxes no text may cross: the colour bar, the timeline, each panel's points' area and bar."""
        c = self.cell
        out = [self.colour.bar] if self.colour is not None else []
        if self.footer:
            x0, x1, y = self.timeline
            out.append(Box(x0, y, x1 - x0, self.timeline_h + self.strip_h))
        bw, bh = self.bins
        for (px, py), (ox, oy) in zip(self.panels, self.origin):
            out.append(Box(int(ox) * c, int(oy) * c, bw * c, bh * c))
            out.append(Box(int(px) * c, int(py + self.panel_bins[1]) * c - self.bar_px, self.panel_bins[0] * c, self.bar_px))
        return out

    def text_boxes(self, vmax: float | None = None, clipped: int = 0, keyframes: int | None = 0) -> list[Box]:
        """Every text a frame may show: title, caption (the room kept for it), the colour bar's words
        (its counts for a scale topped at ``vmax``), the panels' labels and marks, the legend's rows."""
        out = [b for b in (self.title, self.caption) if b is not None]
        if self.colour is not None:
            out.append(self.colour.unit)
            if vmax is not None:
                out += [b for _, b in self.colour.ticks(vmax, bool(clipped))]
                note = self.colour.note(clipped, keyframes)
                out += [note] if note is not None else []
        out += self.labels + self.runs
        for l in range(len(self.panels)):
            out += [b for b in (self.mark_box(l, w) for w in self.marks) if b is not None]
        return out + self.row_boxes()


def plan_frame(width: int, height: int, labels: list[str], title: str = "layerfilm", legend: tuple[str, ...] | None = None,
               unit: str = "points per bin", keyframes: int | None = None, caption: str = CAPTION_SAMPLE,
               marks: tuple[str, ...] = ("settled",), cell: int = 0, group: int = 1, strip: bool = False,
               timeline: bool = True, runs: tuple[str, ...] = ()) -> FrameLayout:
    """The places of a frame of ``width`` x ``height`` with panels ``labels``.

    Args:
        title: the header's first words.
        legend: the legend's phrases (None: no legend, no colour bar, no timeline).
        unit: what the colour bar counts; ``keyframes``: the film's key frames, for the clipped note
            (None: a live film's note, without counts).
        caption: the widest caption the film shows (room is kept for it at the header's right).
        marks: the words the overlay may write beside a panel's label.
        cell: pixels per bin (0: about 110 bins across a panel).
        group: panels that sit side by side in one cell of the grid (a still's key frames of one block, or
            a block's runs).
        strip: keep room for the loss/lr strip under the timeline; ``timeline``: draw the timeline (a
            still has none).
        runs: the names of the runs of a film of several runs: the timeline gets a row per run.
    Raises OptionsError where the frame is too small for its words."""
    check_frame_size(width, height)
    S = min(height, width * 9 / 16)
    text_px = max(MIN_PX, int(S * TITLE_FRACTION))
    legend_px = max(MIN_PX + 1, round(S * LEGEND_FRACTION))
    pad = max(2, round(S * PAD_FRACTION))
    header, title_box, caption_box, colour = _header(width, height, S, pad, text_px, legend_px, title, caption,
                                                     unit if legend is not None else None, keyframes)
    parts = tuple(legend or ())
    hide = False
    on = timeline and legend is not None
    run_h = line_height(legend_px) if on and runs else 0
    while True:
        row_h, timeline_h = round(legend_px * 1.45), (max(4, legend_px // 2) if not runs else len(runs) * run_h) if on else 0
        rows = wrap(parts, SEP, legend_px, width - 4 * pad, max(1, height // 4 // row_h)) if legend is not None else []
        strip_h = strip_height(legend_px, height) + legend_px // 4 if strip else 0
        footer = (timeline_h + len(rows) * row_h + legend_px // 2 if legend is not None else 0) + strip_h
        panels = _panels(width, height, header, footer, S, labels, marks, cell, hide, group)
        if panels["labels"] or hide or not labels or legend is None:
            break
        hide = True  # labels do not fit: the legend says the panels' order instead (with a row less, maybe)
        order = f"panels {labels[0]}…{labels[-1]}, row by row"
        parts = parts[:1] + (order,) + parts[1:]
    if colour is not None:  # the unit's words with the bin's real size (room was kept for 88x88)
        u = colour.unit
        text = unit_text(unit, panels["cell"], colour.unit_form)
        m = text_mask(text, legend_px)
        y = colour.bar.y + (colour.bar.h - m.shape[0]) // 2  # centred on the bar
        colour = ColourBar(**{**colour.__dict__, "unit": Box(u.x, y, m.shape[1], m.shape[0], text)})
    names = _run_names(runs, legend_px, 2 * pad, height - footer, run_h, width // 5) if run_h else ()
    return FrameLayout(width, height, pad, header, footer, text_px, legend_px, title_box, caption_box, colour, rows, row_h,
                       timeline_h, legend_parts=parts, strip_h=strip_h, runs=names, run_h=run_h, **panels)


def _run_names(runs: tuple[str, ...], px: int, x: int, y: int, row: int, room: int) -> tuple[Box, ...]:
    """Each run's name left of its row of the timeline (rows ``row`` pixels high from ``y``), elided to
    ``room`` pixels; a name that cannot be shown at all is left out."""
    out = []
    for r, name in enumerate(runs):
        text = elide(name, px, room)
        if text:
            m = text_mask(text, px)
            out.append(Box(x, y + r * row + (row - m.shape[0]) // 2, m.shape[1], m.shape[0], text))
    return tuple(out)


def _header(W: int, H: int, S: float, pad: int, text_px: int, legend_px: int, title: str, caption: str, unit: str | None,
            keyframes: int | None) -> tuple[int, Box | None, Box, ColourBar | None]:
    """(height, title, caption, colour bar) of the header (see the module's docstring)."""
    line_a, vpad = line_height(text_px), max(1, pad // 4)
    cap_w = min(text_width(caption, text_px), W - 4 * pad)
    cap_x = W - 2 * pad - cap_w
    title_w = text_width(title, text_px)
    least = int(S * HEADER_FRACTION)
    if unit is None:
        header = max(least, line_a + 2 * vpad)
        y = (header - line_a) // 2
        return header, _title(title, text_px, pad, y, cap_x - 4 * pad), Box(cap_x, y, cap_w, line_a, caption), None
    line_b = line_height(legend_px)
    bar_h = max(3, round(S * BAR_FRACTION))
    tick = max(2, bar_h // 3)
    above = max(0, (line_b - bar_h + 1) // 2)  # the unit's and the note's words reach above the bar
    group_h = above + bar_h + tick + line_b
    bar_min = text_width("1", legend_px) + text_width(TOP_SAMPLE, legend_px) + legend_px
    units = [text_width(unit_text(unit, 88, 0), legend_px), text_width(unit_text(unit, 88, 1), legend_px)]
    notes = [text_width(note_text(f, keyframes or 0, keyframes), legend_px) for f in (0, 1, 2)]
    for two_rows, u, n in ((0, 0, 0), (0, 0, 1), (0, 1, 1), (1, 0, 0), (1, 0, 1), (1, 1, 1), (1, 1, 2)):
        x0 = 2 * pad if two_rows else 2 * pad + title_w + 2 * pad
        x1 = W - 2 * pad if two_rows else cap_x - 2 * pad
        fixed = units[u] + pad + (pad + notes[n] if notes[n] else 0)
        if fixed + bar_min <= x1 - x0:
            break
    else:
        raise OptionsError(f"size={W}x{H}: too narrow for the colour bar and its words")
    if two_rows:
        header = vpad + line_a + vpad + group_h + vpad
        y_a, y_b = vpad, 2 * vpad + line_a
    else:
        header = max(least, max(line_a, group_h) + 2 * vpad)
        y_a, y_b = (header - line_a) // 2, (header - group_h) // 2
    bar_w = min(max(W // 4, bar_min), x1 - x0 - fixed)
    bar = Box(x0 + units[u] + pad, y_b + above, bar_w, bar_h)
    text_y = bar.y + (bar_h - line_b) // 2
    colour = ColourBar(bar, Box(x0, text_y, units[u], line_b, unit_text(unit, 88, u)), u, legend_px, tick, bar.y + bar_h + tick,
                       bar.x + bar_w + pad, n)
    room = cap_x - 4 * pad if two_rows else title_w
    return header, _title(title, text_px, pad, y_a, room), Box(cap_x, y_a, cap_w, line_a, caption), colour


def _title(title: str, px: int, pad: int, y: int, room: int) -> Box | None:
    text = elide(title, px, room)
    if not text:
        return None
    m = text_mask(text, px)
    return Box(2 * pad, y, m.shape[1], m.shape[0], text)


def strip_height(px: int, frame_height: int) -> int:
    """Pixels of the loss/lr strip under a legend of ``px``-pixel text in a frame ``frame_height`` high (an
    eighth of it at most)."""
    return max(12, min(round(px * 3.5), frame_height // 8))


def _panels(W: int, H: int, header: int, footer: int, S: float, labels: list[str], marks: tuple[str, ...], cell: int,
            hide: bool, group: int = 1) -> dict:
    """The grid of panels between header and footer: FrameLayout's panel fields (labels () where they
    do not fit, or ``hide``); ``group`` panels side by side in each cell of the grid."""
    grid_h = H - header - footer
    rows, cols = grid_shape(-(-len(labels) // group), W // group, grid_h)
    cols *= group
    c = cell or max(1, round(min(W // cols, grid_h // rows) / 110))  # about 110 bins across a panel
    pw, ph = W // cols // c * c, grid_h // rows // c * c  # whole bins: panels start on a bin's edge
    gap = max(1, min(pw, ph) // 40)
    bw, bh = (pw - gap) // c, (ph - gap) // c
    top0 = -(-header // c) * c  # the first row starts on a bin's edge below the header
    panels = np.array([[(i % cols) * pw // c, (top0 + (i // cols) * ph) // c] for i in range(len(labels))]).reshape(-1, 2)
    label_px = max(MIN_PX, min(ph // 9, round(S * LABEL_FRACTION)))
    bar_px = max(2, bh * c // 45)  # the overlay's bar along the bottom of a panel
    strip = line_height(label_px) + 4
    widest = max((text_width(t, label_px) for t in labels), default=0)
    shown = not hide and 2 * LABEL_INSET + widest <= bw * c and strip <= 0.4 * bh * c
    side = max(1, round(min(bw, bh) * 0.03))
    top, bottom = (-(-strip // c) if shown else 0), -(-bar_px // c) + side
    if bw - 2 * side < 2 or bh - top - bottom < 2:  # panels too small for margins: use all of them
        shown, side, top, bottom = False, 0, 0, 0
    boxes: tuple[Box, ...] = ()
    fit: tuple[str, ...] = ()
    if shown:
        sizes = [text_mask(t, label_px).shape for t in labels]
        boxes = tuple(Box(int(x) * c + LABEL_INSET, int(y) * c + 2, w, h, t) for (x, y), (h, w), t in zip(panels, sizes, labels))
        room = bw * c - 3 * LABEL_INSET - widest - max(LABEL_INSET, label_px // 2)
        fit = tuple(m for m in marks if text_width(m, label_px) <= room)  # each word where it fits
    return {"cell": c, "panels": panels, "panel_bins": (bw, bh), "origin": panels + np.array([side, top]),
            "bins": (bw - 2 * side, bh - top - bottom), "bar_px": bar_px, "label_px": label_px, "labels": boxes,
            "marks": fit, "grid": (rows, cols), "panel_px": (pw, ph)}
