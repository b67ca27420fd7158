"""Aligned 2-D projections of every block's points over time.

A projection method maps ``Features`` (a store of (L, N, D) key frames) to ``Trajectories``
(T, L, N, 2). Methods live in the ``PROJECTIONS`` registry; ``pca`` fits one basis per block on
all key frames pooled, so frames share axes and nothing flips or jumps unless the weights did.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from .features import Features
from .registry import Registry


@dataclass(frozen=True)
class Trajectories:
    steps: np.ndarray  # (T,) int64
    blocks: np.ndarray  # (L,) int64
    point_ids: np.ndarray  # (L, N) int64
    xy: np.ndarray  # (T, L, N, 2) float32
    method: str
    stats: dict[str, np.ndarray] = field(default_factory=dict)  # per-block arrays, e.g. explained variance

    def extent(self, lo: float = 0.5, hi: float = 99.5, margin: float = 0.08) -> np.ndarray:
        """(L, 4) fixed axes per panel [x0, x1, y0, y1]: robust percentiles over all key frames,
        equal scale on both axes (distances on screen are distances in the projection)."""
        pts = self.xy.transpose(1, 0, 2, 3).reshape(self.xy.shape[1], -1, 2)  # (L, T*N, 2)
        a = np.percentile(pts, lo, axis=1)
        b = np.percentile(pts, hi, axis=1)
        centre = (a + b) / 2
        half = np.maximum((b - a).max(axis=1), 1e-12) * (0.5 + margin)  # (L,)
        return np.stack(
            [centre[:, 0] - half, centre[:, 0] + half, centre[:, 1] - half, centre[:, 1] + half], axis=1
        )


PROJECTIONS: Registry = Registry("projection")


def _orient(vecs: np.ndarray) -> np.ndarray:
    """Fix each eigenvector's sign: its largest-magnitude entry is positive (determinism)."""
    idx = np.abs(vecs).argmax(axis=0)
    signs = np.sign(vecs[idx, np.arange(vecs.shape[1])])
    signs[signs == 0] = 1
    return vecs * signs


def pca_basis(sum_x: np.ndarray, sum_xx: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean (D,), top-2 basis (D, 2) and explained-variance ratio (2,) from pooled moments."""
    mean = sum_x / n
    cov = sum_xx / n - np.outer(mean, mean)
    vals, vecs = np.linalg.eigh(cov)
    order = np.argsort(vals)[::-1][:2]
    total = max(float(np.clip(vals, 0, None).sum()), 1e-300)
    return mean, _orient(vecs[:, order]), np.clip(vals[order], 0, None) / total


@PROJECTIONS.register("pca")
def project_pca(features: Features, progress: bool = True, fit: str = "all") -> Trajectories:
    """One PCA basis per block, fitted on the key frames pooled, applied to every key frame."""
    store = features.store
    T = len(store)
    fit_frames = {"all": range(T), "first": [0], "last": [T - 1]}[fit]
    sum_x = sum_xx = None
    for t in tqdm(fit_frames, desc="fitting PCA", unit="frame", disable=not progress):
        x = store[t].astype(np.float64)  # (L, N, D)
        sx, sxx = x.sum(axis=1), np.einsum("lnd,lne->lde", x, x, optimize=True)  # BLAS: 25x faster at D=2048
        sum_x, sum_xx = (sx, sxx) if sum_x is None else (sum_x + sx, sum_xx + sxx)
    n = len(fit_frames) * store[0].shape[1]
    L = sum_x.shape[0]
    means, bases, ratios = zip(*(pca_basis(sum_x[l], sum_xx[l], n) for l in range(L)))
    mean, basis = np.stack(means), np.stack(bases)  # (L, D), (L, D, 2)
    xy = np.empty((T, L, store[0].shape[1], 2), np.float32)
    for t in tqdm(range(T), desc="projecting", unit="frame", disable=not progress):
        x = store[t].astype(np.float64) - mean[:, None, :]
        xy[t] = np.einsum("lnd,ldk->lnk", x, basis, optimize=True)
    return Trajectories(
        features.steps, features.blocks, features.point_ids, xy, "pca",
        {"explained_variance": np.stack(ratios).astype(np.float32)},
    )


def project(features: Features, method: str = "pca", progress: bool = True, **kwargs) -> Trajectories:
    """Project every block's points to 2-D with a method from ``PROJECTIONS``."""
    return PROJECTIONS.get(method)(features, progress=progress, **kwargs)
