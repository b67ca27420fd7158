"""A film's layout: what every frame shows besides the points themselves (the panel axes, the colour
scale, the legend's numbers, where the timeline puts the key frames), fitted to the data in one of two
ways (``--film-layout``):

fit   (render's default) fitted to the whole film: axes on all key frames' robust extent, the colour
      scale's top at a percentile of their densest bins, the timeline spanning the film. The best fit
      for a finished run; but it depends on the number of key frames T, so adding one changes every
      frame.
live  (watch's and the callbacks' default) a function of the data that changes rarely as key frames
      are appended, so that a live film re-encodes only the frames of the new key frames
      (layerfilm.video.segments.SegmentStore), and still a function of the key frames alone, so that
      ``render --film-layout live`` of the finished folder draws the same frames as the live film:
        axes     kept while each new key frame's own robust box (``legend.zooms``) lies inside them
                 in every panel; when one does not, every panel's axes are put at once on a coarse grid
                 (sizes in quarter octaves, centres on an eighth of the size) around the union of its
                 key frames' boxes so far, with room to grow (``HEADROOM``): they change only when
                 points leave them, all panels together (a film of 128 panels whose panels changed
                 one by one would change on almost every key frame), and never shrink;
        colour   the top: the largest of the percentile rule's values (``legend.scale_top``) over the
                 film's prefixes, rounded up to half an octave and then to a whole count; the colour bar says whether bins are
                 clipped, not in how many of T key frames;
        bar      the overlay's full bar: the largest update so far, rounded up to half an octave;
        time     the timeline spans a horizon of key frames (the next power of two >= T, and for
                 ``--time steps|log-steps`` the next power of two of the step span), a key frame's tick
                 appears once the film has reached it, and the caption says "key k" without "/T".
      The overlay draws its bars but no settled marks: a block settles at the first key frame from
      which every later one stays near the newest, so the newest key frame could move a mark on any
      earlier frame (the stability JSON and the printed lines say which blocks settled).
"""

from __future__ import annotations

import math

import numpy as np

from layerfilm.draw.legend import scale_top, whole_top, zooms
from layerfilm.draw.timeline import Timeline, resolve_time
from layerfilm.errors import OptionsError

LAYOUTS = ("fit", "live")
SIZE_STEPS = 4  # axes sizes per octave (a coarser grid changes less often and wastes more of the panel)
SCALE_STEPS = 2  # colour-scale and bar tops per octave
HEADROOM = 2 ** 0.5  # room the axes leave for points to grow into before they change again


def check_film_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise OptionsError(f"film_layout={layout!r}: choose one of {', '.join(LAYOUTS)}")


def grid_up(x: float, per_octave: int) -> float:
    """The smallest ``2 ** (i / per_octave)`` (i an integer) at least ``x`` (> 0)."""
    i = math.ceil(math.log2(x) * per_octave - 1e-9)
    return 2.0 ** (i / per_octave)


def horizon(keyframes: int) -> int:
    """The key frames the live timeline spans: the next power of two >= ``keyframes`` (2 at least)."""
    return max(2, 1 << max(0, keyframes - 1).bit_length())


def live_extent(xy: np.ndarray) -> np.ndarray:
    """(L, 4) axes [x0, x1, y0, y1] per panel of key frames ``xy`` (T, L, N, 2), equal scale on both axes,
    as a live film builds them one key frame at a time: kept while the key frame's own robust box
    (``legend.zooms``, margin included) lies inside them in every panel, else every panel put on the
    coarse grid around the union of its boxes so far (:func:`snap_box`), none smaller than it was. A
    render replays the same fold, so it draws the same axes."""
    boxes = zooms(xy).reshape(len(xy), -1, 4)  # (T, L, 4)
    union = boxes[0].copy()
    out = snap_box(union)
    for b in boxes[1:]:
        union = np.stack([np.minimum(union[:, 0], b[:, 0]), np.maximum(union[:, 1], b[:, 1]),
                          np.minimum(union[:, 2], b[:, 2]), np.maximum(union[:, 3], b[:, 3])], 1)
        if ((b[:, 0] < out[:, 0]) | (b[:, 1] > out[:, 1]) | (b[:, 2] < out[:, 2]) | (b[:, 3] > out[:, 3])).any():
            out = snap_box(union, least=(out[:, 1] - out[:, 0]) / 2)
    return out


def snap_box(need: np.ndarray, least: np.ndarray | None = None) -> np.ndarray:
    """(K, 4) the square boxes on the coarse grid holding boxes ``need`` (K, 4) with ``HEADROOM``: sizes in
    quarter octaves, centres on an eighth of the size (within a sixteenth of the needed centre: the size
    leaves room for that); half sizes at least ``least`` (K,) (on the grid already)."""
    out = np.empty_like(need)
    for i, (x0, x1, y0, y1) in enumerate(need):
        half = grid_up(max((x1 - x0) / 2, (y1 - y0) / 2, 1e-12) * 16 / 15 * HEADROOM, SIZE_STEPS)
        half = max(half, float(least[i])) if least is not None else half
        while True:  # (once more only for rounding at a grid line)
            step = half / 8
            cx, cy = round((x0 + x1) / 2 / step) * step, round((y0 + y1) / 2 / step) * step
            if cx - half <= x0 and cx + half >= x1 and cy - half <= y0 and cy + half >= y1:
                break
            half *= 2.0 ** (1 / SIZE_STEPS)
        out[i] = (cx - half, cx + half, cy - half, cy + half)
    return out


def live_scale(maxima: np.ndarray) -> tuple[float, bool]:
    """(vmax, clipped): the colour scale's top for key frames whose densest bins are ``maxima`` (T,): the
    largest ``scale_top`` of the film's prefixes (monotone in T) on the half-octave grid; whether a key
    frame's bins are denser (drawn in the top colour)."""
    m = np.asarray(maxima, np.float64)
    top = max((scale_top(m[: t + 1])[0] for t in range(len(m))), default=2.0)
    vmax = whole_top(grid_up(top, SCALE_STEPS))
    return vmax, bool((m > vmax * (1 + 1e-9)).any())


def live_top(updates: np.ndarray) -> float:
    """The overlay's full bar: the largest update so far (``overlay.updates``), half-octave grid."""
    top = float(np.max(updates, initial=0.0))
    return grid_up(top, SCALE_STEPS) if top > 0 else 0.0


def live_timeline(steps: np.ndarray, fps: float, seconds_per_keyframe: float, time: str = "auto") -> Timeline:
    """Where the key frames at ``steps`` (T,) fall in a live film: ``--time keys`` one every
    ``frames_per_key``; steps and log-steps at a fixed number of frames per step (per log-step) within
    the horizon, each key frame at least one frame after the previous. Appending key frames moves none
    of the earlier ones until the horizon doubles (``auto``: as the key frames so far say, so the first
    uneven gap moves them once)."""
    time = resolve_time(time, steps)
    T = len(steps)
    plain = Timeline(T, fps, seconds_per_keyframe)
    span = (horizon(T) - 1) * plain.frames_per_key
    if time == "keys" or T < 2:
        return Timeline(T, fps, seconds_per_keyframe, span=span)
    s = np.asarray(steps, np.float64)
    g = np.log1p(s - s[0]) if time == "log-steps" else s - s[0]
    scale = span / grid_up(max(float(g[-1]), 1e-300), 1)
    at = [0]
    for k in range(1, T):
        at.append(max(int(round(g[k] * scale)), at[-1] + 1))
    return Timeline(T, fps, seconds_per_keyframe, tuple(at), span=span)


def live_segments(timeline: Timeline, min_frames: int) -> list[tuple[int, int]]:
    """[start, stop) frame ranges of a live film that appending key frames leaves as they are: from key
    frame to key frame, merged from the start until each holds ``min_frames`` or more, then the last
    key frame's own frame alone (the next key frame's interval starts there)."""
    at = timeline.key_frames
    out: list[tuple[int, int]] = []
    start = 0
    for f in at[1:]:
        if f - start >= min_frames:
            out.append((start, int(f)))
            start = int(f)
    if start < at[-1]:
        out.append((start, int(at[-1])))
    out.append((int(at[-1]), int(at[-1]) + 1))
    return out
