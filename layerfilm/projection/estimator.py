"""``AlignedProjection``: the film's aligned 2-D projection as an estimator for the user's own arrays.

    xy = layerfilm.AlignedProjection("pca").fit_transform(X)    # X: (T, N, D) -> xy: (T, N, 2)

The same code and the same numbers as a film (layerfilm.projection): one block of N points in D
dimensions over T key frames, or several blocks at once, X of shape (T, L, N, D) -> (T, L, N, 2).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from layerfilm.errors import OptionsError
from layerfilm.points import ArrayStore, Features
from layerfilm.projection.linear import FITS
from layerfilm.projection.trajectories import PROJECTIONS, Trajectories
from layerfilm.projection.umap import UmapOptions


class AlignedProjection:
    """Project T key frames of the same N points to 2-D, aligned over time (no flips or jumps).

    Args:
        method: "pca" (one basis shared by all key frames), "procrustes" (each key frame's own PCA,
            rotated onto the previous) or "umap" (AlignedUMAP; needs ``pip install 'layerfilm[umap]'``).
        fit: pca only: the key frames the basis is fitted on, "all" (pooled), "first" or "last".
        umap: umap only: its options (neighbours, min_dist, alignment, stride, seed).
        seed: seed of the seeded choices (pca's start directions, umap's layout).

    Fitted attributes: ``embedding_`` (T, N, 2) or (T, L, N, 2) float32, ``trajectories_`` (the film's
    ``Trajectories``), ``explained_variance_`` (L, 2) for pca and procrustes.

    Example:
        >>> X = np.random.default_rng(0).normal(size=(5, 100, 16)).astype(np.float32)
        >>> AlignedProjection("pca").fit_transform(X).shape
        (5, 100, 2)
    """

    def __init__(self, method: str = "pca", fit: str = "all", umap: UmapOptions | None = None, seed: int = 0) -> None:
        self.method, self.fit_on, self.umap, self.seed = method, fit, umap, seed

    def _kwargs(self) -> dict:
        PROJECTIONS.get(self.method)  # an unknown method: one line listing the known ones
        if self.fit_on not in FITS:
            raise OptionsError(f"fit={self.fit_on!r}: choose one of {', '.join(FITS)}")
        if self.fit_on != "all" and self.method != "pca":
            raise OptionsError(f"fit={self.fit_on!r} applies to method 'pca' only, not {self.method!r}")
        if self.method == "pca":
            return {"fit": self.fit_on}
        if self.method == "umap":
            return {"options": replace(self.umap or UmapOptions(), seed=self.seed)}
        return {}

    def fit(self, X: np.ndarray) -> AlignedProjection:
        """Fit on X: (T, N, D) one block's points at T key frames, or (T, L, N, D) L blocks'."""
        kwargs = self._kwargs()
        x = np.asarray(X)
        if x.ndim not in (3, 4):
            raise OptionsError(f"X of shape {x.shape}: must be (T, N, D) or (T, L, N, D)")
        self._one_block = x.ndim == 3
        x = x[:, None] if self._one_block else x
        T, L, N, D = x.shape
        if T < 1 or N < 2 or D < 2:
            raise OptionsError(f"X of shape {np.asarray(X).shape}: need at least one key frame, 2 points and 2 dimensions")
        if not np.isfinite(x).all():
            raise OptionsError("X holds NaN or infinite values")
        steps = np.arange(T, dtype=np.int64)
        blocks = np.arange(L, dtype=np.int64)
        ids = np.broadcast_to(np.arange(N, dtype=np.int64), (L, N)).copy()
        features = Features(steps, blocks, ids, "points", ArrayStore(np.ascontiguousarray(x, np.float32)), positions=blocks)
        from layerfilm.projection import project

        traj: Trajectories = project(features, self.method, progress=False, **kwargs)
        self.trajectories_ = traj
        self.embedding_ = traj.xy[:, 0] if self._one_block else traj.xy
        if "explained_variance" in traj.stats:
            self.explained_variance_ = traj.stats["explained_variance"]
        return self

    def fit_transform(self, X: np.ndarray) -> np.ndarray:
        """The aligned 2-D points of X: (T, N, 2) for (T, N, D), (T, L, N, 2) for (T, L, N, D)."""
        return self.fit(X).embedding_
