"""Time: which key frames a film frame falls between, and where each point is then.

Frame ``f`` shows time ``f / fps``; key frame ``k`` sits at ``k * seconds_per_keyframe``. Between two
key frames each point moves on a straight line from its place in one to its place in the next
(1-to-1: point i is always the same neuron). A film of T key frames has
``(T - 1) * round(fps * seconds_per_keyframe) + 1`` frames, ending exactly on the last key frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import OptionsError

MAX_FPS = 240.0  # beyond this no player shows the frames; --fps 1e6 would ask for millions
MAX_SECONDS_PER_KEYFRAME = 3600.0
MAX_FRAMES = 500_000  # about 9 hours at 15 fps


def check_time(fps: float, seconds_per_keyframe: float) -> None:
    """The rules for --fps and --seconds-per-keyframe, checked before any work (nan and inf refused)."""
    if not 0 < fps <= MAX_FPS:
        raise OptionsError(f"--fps {fps}: must be a number above 0 and at most {MAX_FPS:g}")
    if not 0 < seconds_per_keyframe <= MAX_SECONDS_PER_KEYFRAME:
        raise OptionsError(f"--seconds-per-keyframe {seconds_per_keyframe}: must be a number above 0 "
                           f"and at most {MAX_SECONDS_PER_KEYFRAME:g}")
    if round(fps * seconds_per_keyframe) < 1:
        raise OptionsError(f"--fps {fps} x --seconds-per-keyframe {seconds_per_keyframe} is under one frame per key frame")


@dataclass(frozen=True)
class Timeline:
    keyframes: int
    fps: float = 15.0
    seconds_per_keyframe: float = 1.0

    def __post_init__(self) -> None:
        check_time(self.fps, self.seconds_per_keyframe)

    @property
    def frames_per_key(self) -> int:
        return int(round(self.fps * self.seconds_per_keyframe))

    @property
    def n_frames(self) -> int:
        return (self.keyframes - 1) * self.frames_per_key + 1

    def locate(self, frame: int) -> tuple[int, float]:
        """(key frame k, fraction a in [0, 1)) such that the frame lies a of the way from k to k+1."""
        k, r = divmod(frame, self.frames_per_key)
        if k >= self.keyframes - 1:
            return self.keyframes - 1, 0.0
        return k, r / self.frames_per_key


def lerp(keys: np.ndarray, k: int, a: float) -> np.ndarray:
    """Linear interpolation along the first axis of ``keys`` (T, ...) at key k plus a fraction a."""
    if a == 0.0:
        return keys[k]
    return (1.0 - a) * keys[k] + a * keys[k + 1]
