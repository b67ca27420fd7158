"""umap's aligned SGD epoch (umap.layouts._optimize_layout_aligned_euclidean_single_epoch, 2-D, the
same updates, random numbers and order) on arrays instead of lists of arrays: slices' layouts (S, N, 2)
and edges (S, E) padded to the longest slice. Reading a layout through a numba typed list in the
innermost loop makes umap's version slower by a factor that grows with the number of slices.

Compiled at module level with numba's on-disk cache, so a process (a test, a worker) that imports it
loads the compiled code instead of compiling it again. Imported only when a UMAP projection runs
(layerfilm.projection.umap): it imports numba and umap-learn.
"""

import numba
import numpy as np
from umap.utils import tau_rand_int


@numba.njit(fastmath=True, inline="always", cache=True)
def clip(v):
    return 4.0 if v > 4.0 else (-4.0 if v < -4.0 else v)

@numba.njit(fastmath=True, inline="always", cache=True)
def pull(emb, sim, rel, coef, m, j, d):
    """The alignment term: point j's pull (dimension d) to its place in the slices around m."""
    w = (rel.shape[1] - 1) // 2
    out = 0.0
    for o in range(-w, w):  # umap's window, as it is (it stops short of +w)
        s = m + o
        if o != 0 and 0 <= s < emb.shape[0] and rel[m, o + w, j] >= 0:
            out += clip(coef[o + w] * sim[m, o + w, j] * (emb[m, j, d] - emb[s, rel[m, o + w, j], d]))
    return out

@numba.njit(fastmath=True, cache=True)
def epoch(emb, heads, tails, n_edges, eps, next_s, eps_neg, next_neg, sim, rel, coef, a, b, move_other,
          alpha, n, rng_state):
    S, N = emb.shape[0], emb.shape[1]
    order = np.arange(S).astype(np.int32)
    np.random.seed(abs(rng_state[0]))
    np.random.shuffle(order)
    for i in range(heads.shape[1]):
        for m in order:
            if i >= n_edges[m] or next_s[m, i] > n:
                continue
            j, k = heads[m, i], tails[m, i]
            d2 = (emb[m, j, 0] - emb[m, k, 0]) ** 2 + (emb[m, j, 1] - emb[m, k, 1]) ** 2
            g = -2.0 * a * b * d2 ** (b - 1.0) / (a * d2 ** b + 1.0) if d2 > 0.0 else 0.0
            for d in range(2):
                emb[m, j, d] += clip(clip(g * (emb[m, j, d] - emb[m, k, d])) - pull(emb, sim, rel, coef, m, j, d)) * alpha
                if move_other:
                    emb[m, k, d] += clip(clip(g * (emb[m, k, d] - emb[m, j, d]))
                                         - pull(emb, sim, rel, coef, m, k, d)) * alpha
            next_s[m, i] += eps[m, i]
            n_neg = int((n - next_neg[m, i]) / eps_neg[m, i]) if eps_neg[m, i] > 0 else 0
            for _ in range(n_neg):
                k = tau_rand_int(rng_state) % N
                d2 = (emb[m, j, 0] - emb[m, k, 0]) ** 2 + (emb[m, j, 1] - emb[m, k, 1]) ** 2
                if d2 > 0.0:
                    g = 2.0 * b / ((0.001 + d2) * (a * d2 ** b + 1.0))  # umap's gamma (repulsion) 1
                elif j == k:
                    continue
                else:
                    g = 0.0
                for d in range(2):
                    push = clip(g * (emb[m, j, d] - emb[m, k, d])) if g > 0.0 else 0.0
                    emb[m, j, d] += clip(push - pull(emb, sim, rel, coef, m, j, d)) * alpha
            next_neg[m, i] += n_neg * eps_neg[m, i]

