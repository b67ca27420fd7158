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


@dataclass(frozen=True)
class Timeline:
    keyframes: int
    fps: float = 15.0
    seconds_per_keyframe: float = 1.0

    def __post_init__(self) -> None:
        if self.fps <= 0:
            raise OptionsError(f"--fps {self.fps}: must be positive")
        if self.seconds_per_keyframe <= 0:
            raise OptionsError(f"--seconds-per-keyframe {self.seconds_per_keyframe}: must be positive")
        if self.frames_per_key < 1:
            raise OptionsError(
                f"--fps {self.fps} x --seconds-per-keyframe {self.seconds_per_keyframe} is under one frame per key frame"
            )

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
