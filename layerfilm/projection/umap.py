"""``umap``: AlignedUMAP over the key frames, made usable on 128 blocks x 100+ key frames.

This is ``umap.AlignedUMAP.fit`` with the identity relation between consecutive key frames (point i is
the same neuron in every frame), built from umap-learn's own pieces (fuzzy graphs, neighbourhood
similarities, spectral init chained by Procrustes, the aligned SGD epoch), minus what makes it slow:

- AlignedUMAP fits a full UMAP embedding per slice only to keep its graph; we build the graph only,
  on exact nearest neighbours from one BLAS product per frame (below 4096 points).
- Its numba epoch reads every layout through a typed list in the innermost loop and is recompiled at
  every call; ours makes the same updates (tested bitwise) on plain arrays, compiled once per process.
- It optimises all T slices jointly (cost ~ T x epochs). We fit jointly only every ``stride``-th key
  frame (the anchors, at most 8 by default) and place each frame between two anchors by a short
  aligned optimisation (``place_epochs`` at ``place_rate``) that starts from the anchors'
  interpolation and is pulled by the alignment term to its neighbours, the anchors held fixed. Every
  layout is still optimised on its own frame's graph: motion on screen comes from that frame's data.
- Blocks run in parallel worker processes (numba and BLAS single-threaded in each, so results do not
  depend on the number of workers). A worker holds one block's frames (T x N x D float32), read from
  the feature store by memory map, so memory is bounded by jobs x one block.
- A block whose points did not change between key frames keeps its layout exactly.

Cost per block (512 x 256, one core, benchmarks/bench_projection.py): the joint fit is fixed (anchors
x epochs), graphs and placement grow linearly with the key frames.

Deterministic for a given seed. umap's ``min_dist`` is honoured (AlignedUMAP ignores it in its
aligned optimisation: it never passes ``a, b``).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from functools import lru_cache
from typing import cast

import numpy as np
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from layerfilm.errors import OptionsError, need
from layerfilm.options import check_seed
from layerfilm.parallel.engines import LocalEngine
from layerfilm.points import Features, in_safe_range
from layerfilm.projection.trajectories import PROJECTIONS, Trajectories

MAX_ANCHORS = 8  # auto stride: fit AlignedUMAP jointly on at most this many key frames


@dataclass(frozen=True)
class UmapOptions:
    """AlignedUMAP settings.

    neighbors: n_neighbors of each frame's fuzzy graph (local vs global structure).
    min_dist: how tightly points may pack in the layout.
    alignment: alignment_regularisation: how strongly a point is pulled to its place in nearby frames.
    window: alignment_window_size: how many frames each side a point is aligned to.
    epochs: SGD epochs of the joint fit on the anchor frames (AlignedUMAP's default 200).
    place_epochs: epochs for each frame placed between two anchors.
    place_rate: initial learning rate of the placement (the joint fit's is 1): low, as in
            ``UMAP.transform`` (1/4), since a placed frame starts from a good layout. Measured on
            random walks and drifting clusters (512 x 256, 179 key frames): 5 epochs at 0.1 keep each
            frame's trustworthiness (sklearn, 15 neighbours) at or above 15 epochs at 1.0, with half
            the frame-to-frame motion (no SGD jitter) at a third of the cost.
    stride: fit jointly every stride-th key frame (and the last); 0 = auto (at most 8 anchors);
            1 = plain AlignedUMAP on every key frame.
    jobs: worker processes over blocks; 0 = one per CPU core.
    seed: seeds the graphs, initialisation and SGD.
    """

    neighbors: int = 15
    min_dist: float = 0.1
    alignment: float = 0.01
    window: int = 3
    epochs: int = 200
    place_epochs: int = 5
    place_rate: float = 0.1
    stride: int = 0
    jobs: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        check_seed(self.seed)
        if self.neighbors < 2:
            raise OptionsError(f"umap_neighbors={self.neighbors}: must be at least 2")
        if not 0 <= self.min_dist <= 1:  # nan too
            raise OptionsError(f"umap_min_dist={self.min_dist}: must be between 0 and 1")
        if not 0 <= self.alignment <= 1e6:  # also refuses nan and inf (every point pulled onto one line)
            raise OptionsError(f"umap_alignment={self.alignment}: must be a number from 0 to 1e6")
        for name in ("window", "epochs", "place_epochs"):
            if getattr(self, name) < 1:
                raise OptionsError(f"umap {name} {getattr(self, name)}: must be at least 1")
        if not 0 < self.place_rate <= 1:
            raise OptionsError(f"umap place_rate {self.place_rate}: must be in (0, 1]")
        if self.stride < 0 or self.jobs < 0:
            raise OptionsError(f"umap_stride={self.stride} / jobs={self.jobs}: must be 0 (auto) or positive")


@lru_cache(maxsize=1)
def _umap():
    """numba, after umap-learn's import and with the umap-learn functions we call cached on disk (see
    ``_cache_umaps_jit``)."""
    need("umap", "umap", "projection=umap")
    import numba

    _cache_umaps_jit()
    return numba


def _cache_umaps_jit() -> None:
    """Turn on numba's on-disk cache for the umap-learn functions a layout calls that umap-learn compiles
    without it: else every process (each worker of every render) compiles them again, 20-60 s on a
    busy 2-core machine for a layout that then takes about a second. The same compiled code, loaded
    instead of rebuilt: results do not change. Where no cache folder is writable, they compile as before."""
    from umap import aligned_umap, umap_

    for fn in (umap_.smooth_knn_dist, umap_.compute_membership_strengths, aligned_umap.procrustes_align):
        try:
            fn.enable_caching()
        except RuntimeError:  # numba found no writable cache folder
            return


def _epoch_fn():
    """The compiled aligned epoch (layerfilm.umap_kernel; numba-cached on disk)."""
    _umap()
    from layerfilm.projection.umap_kernel import epoch

    return epoch


@lru_cache(maxsize=8)
def _relations(m: int, n: int, window: int) -> np.ndarray:
    """AlignedUMAP's relation tensor for m slices of n points, identity relation between neighbours."""
    from umap.aligned_umap import expand_relations

    ident = {i: i for i in range(n)}
    return expand_relations([ident] * (m - 1), window)


def _graph(x: np.ndarray, opts: UmapOptions, rs: np.random.RandomState):
    """The fuzzy neighbour graph of one frame, as UMAP.fit builds it, on exact nearest neighbours (the
    point itself first, as umap's) from one BLAS product of the centred points (float32, as umap's own
    distances); approximate (NN-descent, umap's default) from 4096 points on."""
    from umap.umap_ import fuzzy_simplicial_set

    k = min(opts.neighbors, len(x) - 1)
    if len(x) >= 4096:
        return fuzzy_simplicial_set(x, k, rs, "euclidean")[0]
    xc = x - x.mean(axis=0)
    sq = np.einsum("nd,nd->n", xc, xc)
    d2 = sq[:, None] + sq[None, :] - 2 * (xc @ xc.T)
    np.fill_diagonal(d2, -np.inf)
    idx = np.argpartition(d2, k - 1, axis=1)[:, :k]
    d2 = np.take_along_axis(d2, idx, axis=1)
    order = np.argsort(d2, axis=1, kind="stable")
    idx, d2 = np.take_along_axis(idx, order, axis=1), np.take_along_axis(d2, order, axis=1)
    return fuzzy_simplicial_set(x, k, rs, "euclidean", knn_indices=idx, knn_dists=np.sqrt(np.maximum(d2, 0)))[0]


def similarities(graphs: list, relations: np.ndarray) -> np.ndarray:
    """umap.aligned_umap.build_neighborhood_similarities for identity relations, vectorised: the Jaccard
    overlap of each point's neighbour sets in two slices (theirs builds a set per point: O(N^2) per pair,
    minutes per block at 512 points)."""
    m, width, n = relations.shape
    centre = (width - 1) // 2
    pattern = [(g > 0).astype(np.float32) for g in graphs]
    degree = [np.asarray(p.sum(axis=1)).ravel() for p in pattern]
    out = np.zeros(relations.shape, np.float32)
    for i in range(m):
        for j in range(width):
            o = i + j - centre
            if 0 <= o < m and relations[i, j, 0] >= 0:
                inter = np.asarray(pattern[i].multiply(pattern[o]).sum(axis=1)).ravel()
                union = degree[i] + degree[o] - inter
                out[i, j] = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    return out


def _optimize(embs: list[np.ndarray], graphs: list, frozen: set[int], epochs: int, opts: UmapOptions,
              rs: np.random.RandomState, move_other: bool, alpha: float = 1.0) -> np.ndarray:
    """umap.layouts.optimize_layout_aligned_euclidean with our epoch (``_epoch_fn``): (S, N, 2) layouts of
    the slices, starting from ``embs``, each on its own graph; ``frozen`` slices never move."""
    from umap.umap_ import find_ab_params, make_epochs_per_sample

    S, E = len(graphs), max(g.nnz for g in graphs)
    heads, tails = np.zeros((2, S, E), np.int32)
    eps = np.ones((S, E))
    for i, g in enumerate(graphs):
        coo = g.tocoo()
        heads[i, :coo.nnz], tails[i, :coo.nnz] = coo.row, coo.col
        eps[i, :coo.nnz] = epochs + 1.0 if i in frozen else make_epochs_per_sample(coo.data, epochs)
    n_edges = np.array([g.nnz for g in graphs])
    relations = _relations(S, embs[0].shape[0], opts.window)
    weights = similarities(graphs, relations)
    offsets = np.abs(np.arange(-opts.window, opts.window + 1))
    coef = opts.alignment * np.exp(-(offsets - 1.0))  # umap's alignment weight by distance in slices
    emb = np.array(embs, np.float32)
    next_s, neg = eps.astype(np.float32), (eps / 5.0).astype(np.float32)
    next_neg = neg.copy()
    a, b = find_ab_params(1.0, opts.min_dist)
    seed = rs.randint(np.iinfo(np.int32).min + 1, np.iinfo(np.int32).max - 1, 3).astype(np.int64)
    fn = _epoch_fn()
    for n in range(epochs):
        fn(emb, heads, tails, n_edges, eps, next_s, neg, next_neg, weights, relations, coef, a, b, move_other,
           alpha * (1.0 - n / epochs), n, seed)
    return emb


def layout_block(frames: np.ndarray, opts: UmapOptions) -> np.ndarray:
    """(T, N, 2) aligned UMAP layouts of one block's key frames (T, N, D)."""
    _umap()
    from umap.aligned_umap import procrustes_align
    from umap.spectral import spectral_layout

    rs = np.random.RandomState(opts.seed)
    T, N = frames.shape[:2]
    keep = [0] + [t for t in range(1, T) if not np.array_equal(frames[t], frames[t - 1])]
    which = np.cumsum([t in set(keep) for t in range(T)]) - 1  # key frame -> distinct frame
    U = len(keep)
    graphs = [_graph(frames[t], opts, rs) for t in keep]
    stride = opts.stride or max(1, math.ceil((U - 1) / (MAX_ANCHORS - 1)))
    anchors = sorted(set(range(0, U, stride)) | {U - 1})
    out: list[np.ndarray | None] = [None] * U
    if U == 1:
        init = spectral_layout(frames[0], graphs[0], 2, rs)
        return np.stack([(init * 10 / np.abs(init).max()).astype(np.float32)])[which]
    embs: list[np.ndarray] = []
    ident = np.vstack([np.arange(N), np.arange(N)]).astype(np.int32)
    for i in anchors:  # AlignedUMAP.fit's initialisation: spectral, each Procrustes-aligned to the previous
        init = spectral_layout(frames[keep[i]], graphs[i], 2, rs)
        init = (init * 10.0 / np.abs(init).max()).astype(np.float32, order="C")
        embs.append(init if not embs else procrustes_align(embs[-1], init, ident).astype(np.float32))
    for i, e in zip(anchors, _optimize(embs, [graphs[i] for i in anchors], set(), opts.epochs, opts, rs, True)):
        out[i] = e
    for a, b in zip(anchors, anchors[1:]):
        if b - a < 2:
            continue
        ea, eb = out[a], out[b]
        assert ea is not None and eb is not None  # anchors: laid out above
        mids = [((b - i) * ea + (i - a) * eb) / (b - a) for i in range(a + 1, b)]
        placed = _optimize([ea, *mids, eb], graphs[a:b + 1], {0, b - a}, opts.place_epochs, opts, rs, False,
                           opts.place_rate)
        out[a + 1:b] = placed[1:-1]
    assert all(e is not None for e in out)  # each frame is an anchor or lies between two
    return np.stack(cast("list[np.ndarray]", out))[which]


def _layout_task(store, l: int, opts: UmapOptions, progress=None) -> np.ndarray:
    xy = layout_block(store.block(l), opts)
    if progress is not None:
        progress()
    return xy


@PROJECTIONS.register("umap")
def project_umap(features: Features, progress: bool = True, options: UmapOptions = UmapOptions()) -> Trajectories:
    """AlignedUMAP layouts of every block over the key frames, blocks in parallel processes."""
    _umap()
    store = in_safe_range(features.store)
    L = len(features.blocks)
    jobs = min(options.jobs or os.cpu_count() or 1, L)
    if jobs == 1:  # one numba and BLAS thread, as in a worker (threaded, they spin on busy cores)
        _umap().set_num_threads(1)
        threadpool_limits(1)
    with tqdm(total=L, desc="AlignedUMAP", unit="block", disable=not progress) as bar:
        results = LocalEngine(jobs).map(_layout_task, [(store, l, options) for l in range(L)], bar.update)
    xy = np.stack(results, axis=1).astype(np.float32)  # (T, L, N, 2)
    return Trajectories(features.steps, features.blocks, features.point_ids, xy, "umap", {})
