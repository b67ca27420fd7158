"""Time: which key frames a film frame falls between, and where each point is then.

A film of T key frames has ``n = (T - 1) * round(fps * seconds_per_keyframe) + 1`` frames, starting
on the first key frame and ending exactly on the last, whatever ``--time`` says; ``--time`` only
places the key frames between those ends:

- ``auto`` (default): ``keys`` when the checkpoints are evenly spaced (every gap between key frames
  the same number of steps), else ``steps``, so that a skipped checkpoint gets its screen time;
- ``keys``: key frame ``k`` on frame ``k * round(fps * seconds_per_keyframe)``, one every
  ``--seconds-per-keyframe`` whatever the steps between them;
- ``steps``: film time proportional to the training step, key frame ``k`` on frame
  ``round((n - 1) * (s_k - s_0) / (s_last - s_0))``;
- ``log-steps``: the same with ``log(1 + step - s_0)``, so Pythia-style series (0, 1, 2, 4, ..., 512,
  1000, 2000, ...) spread their early doublings evenly.

A *skip* is a gap between two key frames of at least ``SKIP`` times the usual spacing (the most common
gap, when at least half the gaps have it: a regular series missing a checkpoint; a log-spaced series
has no usual spacing and no skips); the legend's timeline draws it dashed, whatever ``--time`` says.

Every key frame keeps a frame of its own: where two would fall on one frame, the later moves on by
one (and the earlier back where the end is near), so all T are shown. Between two key frames each
point moves on a straight line from its place in one to its place in the next (1-to-1: point i is
always the same neuron).
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass

import numpy as np

from layerfilm.errors import OptionsError

MAX_FPS = 240.0  # beyond this no player shows the frames; --fps 1e6 would ask for millions
MAX_SECONDS_PER_KEYFRAME = 3600.0
MAX_FRAMES = 500_000  # about 9 hours at 15 fps
TIMES = ("auto", "keys", "steps", "log-steps")
SKIP = 1.5  # a gap this many times the usual spacing or more skipped checkpoints


def check_time(fps: float, seconds_per_keyframe: float) -> None:
    """The rules for --fps and --seconds-per-keyframe, checked before any work (nan and inf refused)."""
    if not 0 < fps <= MAX_FPS:
        raise OptionsError(f"fps={fps}: must be a number above 0 and at most {MAX_FPS:g}")
    if not 0 < seconds_per_keyframe <= MAX_SECONDS_PER_KEYFRAME:
        raise OptionsError(f"seconds_per_keyframe={seconds_per_keyframe}: must be a number above 0 "
                           f"and at most {MAX_SECONDS_PER_KEYFRAME:g}")
    if round(fps * seconds_per_keyframe) < 1:
        raise OptionsError(f"fps={fps} x seconds_per_keyframe={seconds_per_keyframe} is under one frame per key frame")


def check_time_mode(time: str) -> None:
    if time not in TIMES:
        raise OptionsError(f"time={time!r}: choose one of {', '.join(TIMES)}")


def even(steps: np.ndarray) -> bool:
    """Whether the key frames at ``steps`` are evenly spaced (every gap the same; fewer than 3: yes)."""
    gaps = np.diff(np.asarray(steps, np.int64))
    return bool(len(gaps) == 0 or (gaps == gaps[0]).all())


def resolve_time(time: str, steps: np.ndarray) -> str:
    """The ``--time`` a film of key frames at ``steps`` uses: ``auto`` picks keys (evenly spaced) or steps."""
    check_time_mode(time)
    if time != "auto":
        return time
    return "keys" if even(steps) else "steps"


def skips(steps: np.ndarray) -> tuple[int, ...]:
    """The key frames k whose gap to key frame k + 1 skipped checkpoints (the module's docstring)."""
    gaps = np.diff(np.asarray(steps, np.int64))
    if len(gaps) < 2:
        return ()
    values, counts = np.unique(gaps, return_counts=True)
    usual = values[np.argmax(counts)]  # the smallest of the most common gaps
    if 2 * counts.max() < len(gaps) or usual <= 0:
        return ()
    return tuple(int(k) for k in np.flatnonzero(gaps >= SKIP * usual))


@dataclass(frozen=True)
class Timeline:
    """Where the key frames fall in the film. ``at``: the frame of each key frame (increasing, first 0,
    last ``n_frames - 1``); empty means one every ``frames_per_key`` (``--time keys``). ``span``: the
    frames the legend's timeline spans (0: the film's own; a live film's horizon is longer,
    layerfilm.draw.film_layout); with a span, ``at`` may end anywhere (the film ends on its last key frame)."""

    keyframes: int
    fps: float = 15.0
    seconds_per_keyframe: float = 1.0
    at: tuple[int, ...] = ()
    span: int = 0

    def __post_init__(self) -> None:
        check_time(self.fps, self.seconds_per_keyframe)
        last = (self.keyframes - 1) * self.frames_per_key
        if self.at and (len(self.at) != self.keyframes or self.at[0] != 0 or (not self.span and self.at[-1] != last)
                        or any(b <= a for a, b in zip(self.at, self.at[1:]))):
            raise ValueError(f"key-frame positions {self.at[:4]}...: not {self.keyframes} increasing frames from 0 "
                             f"to {last}")

    @classmethod
    def of(cls, steps: np.ndarray, fps: float = 15.0, seconds_per_keyframe: float = 1.0, time: str = "auto") -> Timeline:
        """The timeline of key frames at ``steps`` (T,) under ``--time`` (see the module's docstring)."""
        time = resolve_time(time, steps)
        plain = cls(len(steps), fps, seconds_per_keyframe)
        if time == "keys" or len(steps) < 2:
            return plain
        s = np.asarray(steps, np.float64)
        g = np.log1p(s - s[0]) if time == "log-steps" else s - s[0]
        last = plain.n_frames - 1
        at = np.round(last * g / max(g[-1], 1e-300)).astype(np.int64)
        T = len(at)
        for k in range(1, T):  # each key frame on a frame of its own ...
            at[k] = max(at[k], at[k - 1] + 1)
        for k in range(T - 1, -1, -1):  # ... and room left for those after it
            at[k] = min(at[k], last - (T - 1 - k))
        at[0] = 0
        return cls(T, fps, seconds_per_keyframe, tuple(int(f) for f in at))

    @property
    def frames_per_key(self) -> int:
        return int(round(self.fps * self.seconds_per_keyframe))

    @property
    def n_frames(self) -> int:
        return self.at[-1] + 1 if self.at else (self.keyframes - 1) * self.frames_per_key + 1

    @property
    def key_frames(self) -> np.ndarray:
        """(T,) the frame of each key frame."""
        if self.at:
            return np.asarray(self.at, np.int64)
        return np.arange(self.keyframes, dtype=np.int64) * self.frames_per_key

    def locate(self, frame: int) -> tuple[int, float]:
        """(key frame k, fraction a in [0, 1)) such that the frame lies a of the way from k to k+1."""
        if not self.at:
            k, r = divmod(frame, self.frames_per_key)
            if k >= self.keyframes - 1:
                return self.keyframes - 1, 0.0
            return k, r / self.frames_per_key
        at = self.at
        k = bisect_right(at, frame) - 1
        if k >= self.keyframes - 1:
            return self.keyframes - 1, 0.0
        return k, (frame - at[k]) / (at[k + 1] - at[k])

    def position(self, k: int, a: float) -> float:
        """Where key frame k plus a fraction a lies in the film, from 0 (first frame) to 1 (last)."""
        f = self.key_frames
        at = f[k] if a == 0 else f[k] + a * (f[k + 1] - f[k])
        return float(at) / max(self.span or self.n_frames - 1, 1)


def lerp(keys: np.ndarray, k: int, a: float) -> np.ndarray:
    """Linear interpolation along the first axis of ``keys`` (T, ...) at key k plus a fraction a."""
    if a == 0.0:
        return keys[k]
    return (1.0 - a) * keys[k] + a * keys[k + 1]
