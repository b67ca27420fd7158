"""Aligned 2-D projections of every block's points over time.

A projection method maps ``Features`` (a store of (L, N, D) key frames) to ``Trajectories``
(T, L, N, 2); methods are registered in ``PROJECTIONS`` by their modules:

- ``linear.py``: ``pca`` (one basis per block fitted on the key frames pooled, or the first / last)
  and ``procrustes`` (each key frame's own PCA, turned onto the previous frame);
- ``umap.py``: ``umap``, AlignedUMAP over the key frames (its compiled epoch in ``umap_kernel.py``).

:func:`project` runs one and adds the coherence measures (how far points move between key frames).
Imports flow one way: this module imports the methods; they import only ``trajectories``.
"""

from __future__ import annotations

import numpy as np

from layerfilm.points import Features
from layerfilm.projection import linear, umap  # noqa: F401  (registers pca, procrustes, umap)
from layerfilm.projection.linear import FITS
from layerfilm.projection.trajectories import PROJECTIONS, Trajectories
from layerfilm.projection.umap import UmapOptions
from layerfilm.text import text_table

__all__ = ["FITS", "PROJECTIONS", "Trajectories", "UmapOptions", "coherence", "describe", "project", "stats_table"]


def describe(method: str, keyframes: int, fit: str = "all") -> str:
    """How the 2-D axes were made, in the words of the film's legend."""
    if method == "pca":
        return {"all": f"PCA pooled over {keyframes} key frames", "first": "PCA fitted on the first key frame",
                "last": "PCA fitted on the last key frame"}[fit]
    if method == "procrustes":
        return f"each of {keyframes} key frames' own PCA, Procrustes-aligned"
    if method == "umap":
        return f"AlignedUMAP over {keyframes} key frames"
    return method


def coherence(xy: np.ndarray) -> dict[str, np.ndarray]:
    """Per block, how far points move between consecutive key frames relative to the cloud's spread.

    motion (L, T-1): mean over points of |p_{t+1} - p_t| / spread_t, spread_t = RMS distance of the
    points from their centroid at key frame t; motion_mean, motion_max (L,): over the steps.
    """
    T, L = xy.shape[:2]
    motion = np.zeros((L, max(T - 1, 0)), np.float32)
    for t0 in range(0, T - 1, 16):  # 16 key frames at a time: vectorised, temporaries bounded
        a = xy[t0 : min(t0 + 17, T)].astype(np.float64)  # (<=17, L, N, 2)
        centred = a[:-1] - a[:-1].mean(axis=2, keepdims=True)
        spread = np.sqrt(np.einsum("tlnc,tlnc->tl", centred, centred) / a.shape[2])
        step = np.diff(a, axis=0)
        moved = np.sqrt(np.einsum("tlnc,tlnc->tln", step, step)).mean(-1)
        motion[:, t0 : t0 + len(step)] = (moved / np.maximum(spread, 1e-30)).T
    empty = np.zeros(L, np.float32)
    return {"motion": motion, "motion_mean": motion.mean(1) if T > 1 else empty,
            "motion_max": motion.max(1) if T > 1 else empty}


def project(features: Features, method: str = "pca", progress: bool = True, **kwargs) -> Trajectories:
    """Project every block's points to 2-D with a method from ``PROJECTIONS``; adds the coherence
    measures (``coherence``) to the trajectories' stats."""
    from threadpoolctl import threadpool_limits  # comes with scikit-learn

    # one BLAS thread: the products here are small (N x D by D x 8) and a threaded OpenBLAS spin-waits;
    # and many times slower on busy cores (benchmarks/bench_projection.py)
    with threadpool_limits(1, "blas"):
        traj = PROJECTIONS.get(method)(features, progress=progress, **kwargs)
    traj.stats.update(coherence(traj.xy))
    return traj


def stats_table(traj: Trajectories) -> str:
    """The per-block coherence table printed by ``layerfilm render --stats``."""
    ev = traj.stats.get("explained_variance")
    head = ["block", "motion mean", "motion max"] + (["var PC1", "var PC2"] if ev is not None else [])
    rows = [[f"L{b}", f"{traj.stats['motion_mean'][i]:.4f}", f"{traj.stats['motion_max'][i]:.4f}"]
            + ([f"{ev[i, 0]:.1%}", f"{ev[i, 1]:.1%}"] if ev is not None else []) for i, b in enumerate(traj.blocks)]
    return (f"projection {traj.method}: motion = mean point displacement between consecutive key frames "
            f"/ RMS spread of the cloud\n" + text_table(head, rows))
