"""Text in frames: glyph coverage masks (DejaVu Sans through matplotlib's FreeType), blending them into
a frame, and the boxes text takes, so that a frame's layout (layerfilm.draw.frame_layout) can place every
word where it fits and a test can check that no two overlap.

A text's box is its coverage mask's rectangle at the point it is drawn: exactly the pixels it may change.
"""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path

import numpy as np

TEXT = np.array([235, 235, 235], np.float32)
MIN_PX = 8  # the smallest text drawn (pixels high); below it DejaVu Sans is no longer legible
ELLIPSIS = "…"


@dataclass(frozen=True)
class Box:
    """A rectangle of the frame in pixels, [x, x + w) x [y, y + h): where a text (``text`` set) or a
    graphic (``text`` empty: the colour bar, the timeline, a panel's points area or bar) is drawn."""

    x: int
    y: int
    w: int
    h: int
    text: str = ""

    def overlaps(self, other: Box) -> bool:
        return (self.x < other.x + other.w and other.x < self.x + self.w
                and self.y < other.y + other.h and other.y < self.y + self.h)

    def inside(self, width: int, height: int) -> bool:
        return self.x >= 0 and self.y >= 0 and self.x + self.w <= width and self.y + self.h <= height


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


def text_width(text: str, px: int) -> int:
    return text_mask(text, px).shape[1] if text else 0


@cache
def line_height(px: int) -> int:
    """The height of a row of text at ``px``: the tallest mask of letters that reach furthest up and down
    (accents, descenders, brackets), so any text at ``px`` fits in it."""
    return int(text_mask("ÅÉ|([gjy≥_", px).shape[0])


def elide(text: str, px: int, room: int) -> str:
    """``text`` if it fits ``room`` pixels at ``px``, else its longest start that fits with "…" after it,
    else "" (nothing fits)."""
    if text_width(text, px) <= room:
        return text
    lo, hi = 0, len(text)  # the longest start that fits, by bisection (widths grow with the length)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if text_width(text[:mid].rstrip() + ELLIPSIS, px) <= room:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo].rstrip() + ELLIPSIS if lo else ""


def wrap(parts: tuple[str, ...] | list[str], sep: str, px: int, room: int, most: int) -> list[str]:
    """Phrases in at most ``most`` rows of at most ``room`` pixels: joined by ``sep`` while a row fits,
    broken between phrases, and within a phrase (between words) only where it is wider than a row alone;
    a word wider than a row is elided. Phrases past the last row are cut (the first ones matter most)."""
    rows: list[str] = []
    for part in parts:
        joined = rows[-1] + sep + part if rows else part
        if rows and text_width(joined, px) <= room:
            rows[-1] = joined
            continue
        line = ""
        for word in part.split(" "):
            longer = f"{line} {word}" if line else word
            if line and text_width(longer, px) > room:
                rows.append(line)
                line = word
            else:
                line = longer
        rows.append(elide(line, px, room))
    return [r for r in rows[:most] if r]


def clipped(img: np.ndarray, text: str, x: int, y: int, px: int,
            x_range: tuple[int, int] | None = None) -> tuple[np.ndarray, slice, slice] | None:
    """The coverage of ``text`` at (x, y) cut to ``img`` (and to columns ``x_range``), and the rows and
    columns it covers."""
    m = text_mask(text, px)
    lo, hi = x_range if x_range is not None else (0, img.shape[1])
    lo, hi = max(lo, 0), min(hi, img.shape[1])
    m = m[max(0, -y):, max(0, lo - x):]  # text starting left of or above the frame loses that part
    x, y = max(lo, x), max(0, y)
    h = min(m.shape[0], img.shape[0] - y)
    w = min(m.shape[1], hi - x)
    if h <= 0 or w <= 0:
        return None
    return m[:h, :w], slice(y, y + h), slice(x, x + w)


def draw_text(img: np.ndarray, text: str, x: int, y: int, px: int, color: np.ndarray = TEXT,
              x_range: tuple[int, int] | None = None) -> None:
    """Blend ``text`` into ``img`` (H, W, 3) uint8 with its top-left corner at (x, y), clipped to the
    frame (and to columns ``x_range``)."""
    clip = clipped(img, text, x, y, px, x_range)
    if clip is None:
        return
    m, ys, xs = clip
    a = m[:, :, None]
    img[ys, xs] = (img[ys, xs].astype(np.float32) * (1 - a) + color * a + 0.5).astype(np.uint8)
