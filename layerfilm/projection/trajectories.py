"""``Trajectories``: every block's aligned 2-D key-frame points, the output of a projection, with
their one layout on disk (cache entries and ``--export-points``); and the registry of projection
methods (``PROJECTIONS``), which each method module fills."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from layerfilm.points import Subject
from layerfilm.registry import Registry

PROJECTIONS: Registry = Registry("projection")


@dataclass(frozen=True)
class Trajectories:
    steps: np.ndarray  # (T,) int64
    blocks: np.ndarray  # (L,) int64
    point_ids: np.ndarray  # (L, N) int64
    xy: np.ndarray  # (T, L, N, 2) float32
    method: str
    stats: dict[str, np.ndarray] = field(default_factory=dict)  # per-block arrays, e.g. explained variance
    subject: Subject | None = None  # what is filmed, for the legend

    CORE = ("steps", "blocks", "point_ids", "xy", "method")

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The one layout on disk (cache entries and --export-points): steps, blocks, point_ids, xy
        (float32), method, every stat under its own name, and the subject (``subject_*``)."""
        subject = self.subject.to_arrays() if self.subject is not None else {}
        return {"steps": self.steps, "blocks": self.blocks, "point_ids": self.point_ids,
                "xy": self.xy.astype(np.float32, copy=False), "method": np.str_(self.method), **self.stats, **subject}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> Trajectories:
        """Inverse of :meth:`to_arrays`; ValueError unless the shapes are those of one film's key frames."""
        steps, blocks, ids, xy = (np.asarray(arrays[k]) for k in cls.CORE[:4])
        T, L = len(steps), len(blocks)
        if steps.ndim != 1 or blocks.ndim != 1 or ids.ndim != 2 or ids.shape[0] != L:
            raise ValueError("steps, blocks or point_ids of the wrong shape")
        if xy.shape != (T, L, ids.shape[1], 2) or xy.dtype.kind != "f":
            raise ValueError(f"points of shape {xy.shape}, not {(T, L, ids.shape[1], 2)}")
        stats = {k: np.asarray(v) for k, v in arrays.items() if k not in cls.CORE and not k.startswith(Subject.PREFIX)}
        return cls(steps, blocks, ids, xy, str(arrays.get("method", "")), stats, Subject.from_arrays(arrays))

    def take(self, keep: np.ndarray) -> Trajectories:
        """Only the key frames where ``keep`` (T,) is True (stats over time are recomputed by the caller)."""
        if keep.all():
            return self
        return Trajectories(self.steps[keep], self.blocks, self.point_ids, self.xy[keep], self.method, self.stats,
                            self.subject)

    def extent(self, lo: float = 0.5, hi: float = 99.5, margin: float = 0.08) -> np.ndarray:
        """(L, 4) fixed axes per panel [x0, x1, y0, y1]: robust percentiles over all key frames,
        equal scale on both axes (distances on screen are distances in the projection)."""
        # one block at a time: a copy of all of xy would make memory grow with the key frames
        a, b = np.empty((2, self.xy.shape[1], 2), self.xy.dtype)
        for l in range(self.xy.shape[1]):
            a[l], b[l] = np.percentile(self.xy[:, l].reshape(-1, 2), [lo, hi], axis=0)
        centre = (a + b) / 2
        half = np.maximum((b - a).max(axis=1), 1e-12) * (0.5 + margin)  # (L,)
        return np.stack(
            [centre[:, 0] - half, centre[:, 0] + half, centre[:, 1] - half, centre[:, 1] + half], axis=1
        )
