"""The linear projections, ``pca`` and ``procrustes``:

- ``pca``: one basis per block fitted on the key frames pooled (or the first / last), applied to
  every key frame, so frames share axes and nothing flips or jumps unless the weights did.
- ``procrustes``: each key frame's own PCA, turned and mirrored onto the previous frame by
  orthogonal Procrustes, so each frame keeps its best local view and frames chain smoothly.

Top-2 principal axes come from a subspace iteration over the store (block Krylov on the covariance,
never formed: each pass costs 4·N·D·k per block and frame instead of the N·D² of a covariance),
with ``k = 2 + OVERSAMPLE`` directions and a Rayleigh-Ritz step; ``explained_variance`` is the
variance of the axes actually shown over the total, so it is exact for the film that is drawn.

Speed (benchmarks/bench_projection.py): each key frame is cut into chunks of ``CHUNK`` blocks run by a
thread pool, one per CPU core (NumPy's products release the GIL; BLAS stays single-threaded, see
``project``). A chunk is small enough to stay in cache through all its products, so a frame is read
from memory once per pass. Every chunk's result depends only on its own blocks, so the output is the
same bytes whatever the number of threads.

A block whose values would overflow or underflow float32's products (weights times 1e38) is projected
from its points times a power of two (``features.in_safe_range``), so its coordinates are in those units.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace

import numpy as np
from tqdm.auto import tqdm

from layerfilm.errors import OptionsError
from layerfilm.points import Features, ScaledStore, in_safe_range
from layerfilm.points.measures import sum_sq
from layerfilm.projection.trajectories import PROJECTIONS, Trajectories

FITS = ("all", "first", "last")
OVERSAMPLE = 6  # extra directions in the subspace iteration; more = closer to the exact top-2 axes
PROCRUSTES_ITERS = (4, 1)  # subspace iterations on the first key frame, then warm-started on each next one:
# one is enough there (the subspace keeps converging from frame to frame): 30% faster than two, and on
# a 512 x 256 random walk the axes keep 99.5% of the exact top-2 variance (99.8% with two)
CHUNK = 4  # blocks per thread task: 4 x 512 x 256 float32 (2 MB) stays in cache through a chunk's products


def _orient(vecs: np.ndarray) -> np.ndarray:
    """Signs (..., 1, k) that make each column's largest-magnitude entry positive (determinism)."""
    idx = np.abs(vecs).argmax(axis=-2)[..., None, :]
    signs = np.sign(np.take_along_axis(vecs, idx, axis=-2))
    signs[signs == 0] = 1
    return signs


def _start(features: Features, D: int, seed: int = 0) -> np.ndarray:
    """(L, D, k) seeded orthonormal start directions for the subspace iteration: block i's are the i-th
    of one seeded stream over all the blocks of the run (``Features.positions``), so a block gets the
    same ones whichever chunk of blocks it is projected with."""
    k = min(D, 2 + OVERSAMPLE)
    L = len(features.blocks)
    positions = np.arange(L) if features.positions is None else np.asarray(features.positions)
    g = np.random.default_rng(seed).standard_normal((int(positions.max()) + 1, D, k))[positions]
    return np.linalg.qr(g)[0].astype(np.float32)


def _ritz(q: np.ndarray, h: np.ndarray, total: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rayleigh-Ritz on the subspace q (L, D, k) with h = q^T C q (L, k, k): the subspace rotated so its
    columns are the covariance's best axes in order (L, D, k), the small rotation (L, k, k), and the
    top-2 explained-variance ratios (L, 2) (variance along the axes / total variance)."""
    q64 = q.astype(np.float64)
    vals, rot = np.linalg.eigh((h + h.transpose(0, 2, 1)) / 2)
    vals, rot = vals[:, ::-1], rot[:, :, ::-1]
    rot = rot * _orient(q64 @ rot)
    ratio = np.clip(vals[:, :2], 0, None) / np.maximum(total, 1e-300)[:, None]
    return (q64 @ rot).astype(np.float32), rot, ratio


def _gram(y: np.ndarray) -> np.ndarray:
    """(L, k, k) y^T y for y (L, N, k), in float64."""
    return (y.transpose(0, 2, 1) @ y).astype(np.float64)


@contextmanager
def _chunks(L: int):
    """Yields run(fn): fn(blocks) for every slice of ``CHUNK`` blocks of ``range(L)``, on a thread per
    core. Chunks never depend on one another, so results do not depend on the number of threads."""
    chunks = [slice(i, min(i + CHUNK, L)) for i in range(0, L, CHUNK)]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    with ThreadPoolExecutor(min(cores, len(chunks))) as pool:
        yield lambda fn: list(pool.map(fn, chunks))  # list(): re-raises a chunk's exception here


def _check_dims(x: np.ndarray) -> None:
    if x.shape[1] < 2 or x.shape[2] < 2:
        raise OptionsError(f"features of shape {x.shape[1:]} per block: a 2-D projection needs at least 2 points "
                           f"and 2 dimensions")


@dataclass(frozen=True)
class PcaBasis:
    """A fitted block-wise PCA basis, fixed: key frame points x (L, N, D) -> (L, N, 2) =
    ((x * scale) - shift) q rot - offset. Kept apart from the fitting so that a live film
    (layerfilm.live.film) projects each new key frame with the basis fitted earlier, by the same arithmetic
    as ``project_pca`` (so the same bytes as a one-shot render with that basis)."""

    shift: np.ndarray  # (L, 1, D) float32: keeps sums well-conditioned
    q: np.ndarray  # (L, D, k) float32: the subspace the points are first projected on
    rot: np.ndarray  # (L, k, 2) float32: the top-2 axes inside it
    offset: np.ndarray  # (L, 2) float32: the mean's coordinates (subtracted: clouds centred on the fit)
    explained_variance: np.ndarray  # (L, 2) float32
    scale: np.ndarray  # (L,) float32 powers of two (features.safe_scale; 1 for ordinary blocks)

    def coords(self, x: np.ndarray, out: np.ndarray, run) -> None:
        """out (L, N, k) = (x - shift) q, one chunk of blocks per ``run`` task (``_chunks``)."""
        run(lambda b: np.matmul(x[b] - self.shift[b], self.q[b], out=out[b]))

    def rotate(self, coords: np.ndarray) -> np.ndarray:
        """(..., L, N, 2) points from coordinates (..., L, N, k) in ``q``."""
        return (coords @ self.rot) - self.offset[:, None, :]

    def aligned(self, coords: np.ndarray, ref: np.ndarray) -> PcaBasis:
        """This basis turned in its plane, per block, by the rotation or mirroring (orthogonal
        Procrustes) that brings key frames' points, from their coordinates in ``q`` (T, L, N, k), closest
        to ``ref`` (T, L, N, 2), the same points in an earlier basis (both centred on their mean over the
        T frames). The plane and the variance it explains are unchanged; a refitted live film
        (layerfilm.live.film) keeps its orientation: no axis flips sign or swaps."""
        y, r = self.rotate(coords).astype(np.float64), np.asarray(ref, np.float64)
        L = y.shape[1]

        def pooled(a: np.ndarray) -> np.ndarray:  # (L, T * N, 2), centred
            a = a - a.mean(axis=(0, 2), keepdims=True)
            return a.transpose(1, 0, 2, 3).reshape(L, -1, 2)

        turn = procrustes_rotation(pooled(y), pooled(r)).astype(np.float32)
        return replace(self, rot=self.rot @ turn, offset=np.einsum("li,lij->lj", self.offset, turn))

    def apply(self, x: np.ndarray) -> np.ndarray:
        """(L, N, 2) one key frame's points x (L, N, D) in this basis."""
        if (self.scale != 1).any():
            x = x * self.scale[:, None, None]
        coords = np.empty((*x.shape[:2], self.q.shape[2]), np.float32)
        with _chunks(x.shape[0]) as run:
            self.coords(x, coords, run)
        return self.rotate(coords)


def fit_pca(features: Features, fit: str = "all", progress: bool = True) -> tuple[PcaBasis, np.ndarray]:
    """The basis of ``project_pca`` and every key frame's coordinates in its subspace (T, L, N, k).

    Two passes over the store: the first multiplies seeded start directions by the pooled covariance
    (and sums the points and their squares); the second projects every frame on the orthonormalised
    result (T, L, N, k) and takes the covariance's restriction to that subspace from those coordinates
    (q^T C q = coordinates^T coordinates); the Ritz rotation then picks the top-2 axes, fixed for every frame.
    """
    if fit not in FITS:
        raise OptionsError(f"fit={fit!r}: choose one of {', '.join(FITS)}")
    store = in_safe_range(features.store)
    scale = store.scale if isinstance(store, ScaledStore) else np.ones(len(features.blocks), np.float32)
    T = len(store)
    fit_frames = {"all": range(T), "first": range(1), "last": range(T - 1, T)}[fit]
    x0 = store[fit_frames[0]]
    _check_dims(x0)
    L, N, D = x0.shape
    shift = x0.mean(axis=1, dtype=np.float64).astype(np.float32)[:, None, :]  # (L, 1, D): keeps sums well-conditioned
    q = _start(features, D)
    k = q.shape[2]
    coords = np.empty((T, L, N, k), np.float32)
    cq, sx, sxx, h = np.zeros((L, D, k)), np.zeros((L, D)), np.zeros(L), np.zeros((L, k, k))

    def fit_chunk(x: np.ndarray, b: slice) -> None:
        xs = x[b] - shift[b]
        cq[b] += xs.transpose(0, 2, 1) @ (xs @ q[b])
        sx[b] += xs.sum(axis=1)
        sxx[b] += sum_sq(xs)

    n = len(fit_frames) * N
    with _chunks(L) as run:
        for t in tqdm(fit_frames, desc="fitting PCA", unit="frame", disable=not progress):
            x = store[t]
            run(lambda b, x=x: fit_chunk(x, b))
        m = sx / n  # (L, D) mean minus shift
        cq = cq / n - m[:, :, None] * np.einsum("ld,ldk->lk", m, q)[:, None, :]  # centred covariance times q
        q = np.linalg.qr(cq)[0].astype(np.float32)
        subspace = PcaBasis(shift, q, np.empty((L, k, 2), np.float32), np.zeros((L, 2), np.float32),
                            np.zeros((L, 2), np.float32), scale)
        for t in tqdm(range(T), desc="projecting", unit="frame", disable=not progress):
            subspace.coords(store[t], coords[t], run)
            if t in fit_frames:
                h += np.concatenate(run(lambda b, t=t: _gram(coords[t, b])))
    mq = np.einsum("ld,ldk->lk", m, q.astype(np.float64))  # the mean's coordinates in q
    axes, rot, ratio = _ritz(q, h / n - mq[:, :, None] * mq[:, None, :], sxx / n - (m * m).sum(axis=1))
    offset = np.einsum("ld,ldk->lk", m, axes[:, :, :2].astype(np.float64))  # the mean's coordinates
    basis = PcaBasis(shift, q, rot[:, :, :2].astype(np.float32), offset.astype(np.float32),
                     ratio.astype(np.float32), scale)
    return basis, coords


@PROJECTIONS.register("pca")
def project_pca(features: Features, progress: bool = True, fit: str = "all") -> Trajectories:
    """One PCA basis per block, fitted on the key frames pooled (or the first / last), applied to all
    (``fit_pca``)."""
    basis, coords = fit_pca(features, fit, progress)
    return Trajectories(features.steps, features.blocks, features.point_ids, basis.rotate(coords), "pca",
                        {"explained_variance": basis.explained_variance})


def unchanged(x: np.ndarray, prev: np.ndarray | None) -> np.ndarray:
    """(L,) True where a block's points are bitwise the same as in the previous key frame."""
    if prev is None:
        return np.zeros(x.shape[0], bool)
    same = (x[:, 0] == prev[:, 0]).all(axis=1)  # the first point rules out most changed blocks cheaply
    same[same] = (x[same] == prev[same]).all(axis=(1, 2))
    return same


def procrustes_rotation(y: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """(L, 2, 2) orthogonal R (rotation or reflection) minimising ||y R - ref|| for y, ref (L, N, 2)."""
    u, _, vt = np.linalg.svd(np.einsum("lni,lnj->lij", y.astype(np.float64), ref.astype(np.float64)))
    return u @ vt


@PROJECTIONS.register("procrustes")
def project_procrustes(features: Features, progress: bool = True) -> Trajectories:
    """Each key frame's own top-2 PCA axes, aligned to the previous frame by orthogonal Procrustes.

    Per frame and block: centre the points, refine the previous frame's subspace by a few subspace
    iterations (warm start), pick the top-2 axes by Rayleigh-Ritz, project, then rotate/mirror the
    2-D cloud onto the previous frame's. A block whose points did not change keeps its coordinates.
    """
    store = in_safe_range(features.store)
    T = len(store)
    x = store[0]
    _check_dims(x)
    L, N, D = x.shape
    q = _start(features, D)
    xy = np.empty((T, L, N, 2), np.float32)
    ratios = np.empty((T, L, 2))

    def frame_chunk(x: np.ndarray, prev_x: np.ndarray | None, b: slice, t: int) -> None:
        # centring errors are second order in the variances: a float32 mean is enough
        xc = x[b] - (x[b].sum(axis=1, keepdims=True) / np.float32(N))
        qb = q[b]
        for _ in range(PROCRUSTES_ITERS[t > 0]):
            qb = np.linalg.qr(xc.transpose(0, 2, 1) @ (xc @ qb))[0]
        y = xc @ qb  # (l, N, k)
        q[b], rot, ratios[t, b] = _ritz(qb, _gram(y) / N, sum_sq(xc) / N)
        cur = y @ rot[:, :, :2].astype(np.float32)
        if prev_x is not None:
            prev = xy[t - 1, b]
            cur = cur @ procrustes_rotation(cur, prev).astype(np.float32)
            same = unchanged(x[b], prev_x[b])
            cur[same] = prev[same]
        xy[t, b] = cur

    prev_x = None
    with _chunks(L) as run:
        for t in tqdm(range(T), desc="procrustes", unit="frame", disable=not progress):
            x = store[t] if t else x
            run(lambda b, x=x, prev_x=prev_x, t=t: frame_chunk(x, prev_x, b, t))
            prev_x = x
    return Trajectories(features.steps, features.blocks, features.point_ids, xy, "procrustes",
                        {"explained_variance": ratios.mean(axis=0).astype(np.float32)})
