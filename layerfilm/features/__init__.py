"""Point clouds per checkpoint: every block's points as an (N x D) array.

``Features`` is what the projection stage consumes: the steps, the block indices, which points
(neurons, tokens) are tracked, and a ``FeatureStore`` that hands out one checkpoint's
(L, N, D) array at a time, so memory stays flat however many checkpoints there are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


class FeatureStore:
    """One ``.npy`` file per key frame, each (L, N, D) float32, read back one at a time."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._paths: list[Path] = []

    def append(self, arr: np.ndarray) -> None:
        path = self.folder / f"frame_{len(self._paths):06d}.npy"
        np.save(path, np.ascontiguousarray(arr, dtype=np.float32))
        self._paths.append(path)

    def __len__(self) -> int:
        return len(self._paths)

    def __getitem__(self, t: int) -> np.ndarray:
        return np.load(self._paths[t])

    def block(self, l: int) -> np.ndarray:
        """(T, N, D) one block's points at every key frame, read by memory map (only that block's bytes)."""
        return np.stack([np.load(p, mmap_mode="r")[l] for p in self._paths])


@dataclass(frozen=True)
class Features:
    steps: np.ndarray  # (T,) int64
    blocks: np.ndarray  # (L,) int64
    point_ids: np.ndarray  # (L, N) int64: which neuron/token each point is
    name: str  # what the points are, e.g. "mlp.c_fc.weight rows"
    store: FeatureStore  # store[t] -> (L, N, D) float32
    skipped: tuple = ()  # Checkpoints that could not be read, with their problem
    stats: dict[str, np.ndarray] = field(default_factory=dict)  # measured while extracting, e.g. act_norm (T, L)
