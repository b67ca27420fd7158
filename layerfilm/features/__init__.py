"""Point clouds per checkpoint: every block's points as an (N x D) array.

``Features`` is what the projection stage consumes: the steps, the block indices, which points
(neurons, tokens) are tracked, and a ``FeatureStore`` that hands out one checkpoint's
(L, N, D) array at a time, so memory stays flat however many checkpoints there are.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import OutputError


class FeatureStore:
    """One ``.npy`` file per key frame, each (L, N, D) float32, read back one at a time.

    A frame whose values are all bfloat16 numbers (a bf16 checkpoint's weights, bf16 activations: the
    low 16 bits of every float32 are zero) is kept as its high 16 bits, half the bytes to write and
    read back, and widened exactly when read."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._paths: list[Path] = []

    def append(self, arr: np.ndarray) -> None:
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        halves = arr.reshape(-1).view(np.uint16)  # little-endian: low, high, low, high, ...
        half = sys.byteorder == "little" and not halves[0::2].any()
        path = self.folder / f"frame_{len(self._paths):06d}{'.bf16' if half else ''}.npy"
        try:
            np.save(path, np.ascontiguousarray(halves[1::2]).reshape(arr.shape) if half else arr)
        except OSError as e:
            path.unlink(missing_ok=True)
            raise OutputError(f"scratch folder {self.folder.parent}: cannot write key frames ({e.strerror or e}); "
                              "set TMPDIR to a folder with room") from None
        self._paths.append(path)

    def __len__(self) -> int:
        return len(self._paths)

    def _load(self, t: int, l: int | None = None) -> np.ndarray:
        path = self._paths[t]
        arr = np.load(path) if l is None else np.load(path, mmap_mode="r")[l]
        if arr.dtype == np.uint16:  # bfloat16 bits
            return (arr.astype(np.uint32) << 16).view(np.float32)
        return np.asarray(arr)

    def __getitem__(self, t: int) -> np.ndarray:
        return self._load(t)

    def block(self, l: int) -> np.ndarray:
        """(T, N, D) one block's points at every key frame, read by memory map (only that block's bytes)."""
        return np.stack([self._load(t, l) for t in range(len(self._paths))])


@dataclass(frozen=True)
class Features:
    steps: np.ndarray  # (T,) int64
    blocks: np.ndarray  # (L,) int64
    point_ids: np.ndarray  # (L, N) int64: which neuron/token each point is
    name: str  # what the points are, e.g. "mlp.c_fc.weight rows"
    store: FeatureStore  # store[t] -> (L, N, D) float32
    skipped: tuple = ()  # Checkpoints that could not be read, with their problem
    stats: dict[str, np.ndarray] = field(default_factory=dict)  # measured while extracting, e.g. act_norm (T, L)
