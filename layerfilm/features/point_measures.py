"""How much a block's points move: the film's own measures, from its points instead of whole blocks.

``point_update`` and ``point_distance`` (T, L) are ``layerfilm.stability``'s relative update and
distance to the final key frame, computed on the points the film shows (the tracked rows, or the
activations). They come for free while the points are read (``PointMeasures.add`` per key frame,
given the final one first), or from one pass over a feature store (``point_measures``); the film's
overlay uses them, so it never reads the checkpoints a second time.
"""

from __future__ import annotations

import numpy as np

from . import ArrayStore, FeatureStore


def relative_update(prev_sq: np.ndarray, norm: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """(T, L) ||W_t - W_{t-1}|| / ||W_t|| scaled to the median step gap (a gap twice the median counts
    half); NaN at t = 0. prev_sq (T, L): squared distances to the previous key frame; norm (T, L)."""
    gaps = np.diff(np.asarray(steps, np.float64))
    rel = np.full(prev_sq.shape, np.nan)
    rel[1:] = np.sqrt(prev_sq[1:]) / np.maximum(norm[1:], 1e-300) * (np.median(gaps) / gaps)[:, None]
    return rel


SMALLEST_SQ = 2.0 ** -64  # a float32 sum of squares below this may have lost bits to underflow


def sum_sq(x: np.ndarray, y: np.ndarray | None = None, buf: np.ndarray | None = None) -> np.ndarray:
    """(L,) sum of squares of each block's array in x (L, N, ...), or of x - y (through ``buf``, x's shape,
    if given): float32 per row (no float64 copy of x), float64 over rows. A block whose float32 sums
    overflowed or may have underflowed (finite weights times 1e38, or 1e-38) is summed again in float64."""
    with np.errstate(over="ignore", under="ignore"):  # found below
        d = x if y is None else np.subtract(x, y, out=buf)
        flat = d.reshape(d.shape[0], d.shape[1], -1)
        out = np.einsum("lnd,lnd->ln", flat, flat).sum(axis=1, dtype=np.float64)
    for l in np.flatnonzero(~(out >= SMALLEST_SQ) | ~np.isfinite(out)):  # 0 included: it may be underflow
        d64 = x[l].astype(np.float64)
        if y is not None:
            d64 -= y[l]
        out[l] = np.vdot(d64, d64)
    return out


def sum_sq_diff(x: np.ndarray, y: np.ndarray, buf: np.ndarray) -> np.ndarray:
    """(L,) ``sum_sq(x, y)``, one block at a time through ``buf`` so the difference stays in the CPU's cache."""
    return np.concatenate([sum_sq(x[l:l + 1], y[l:l + 1], buf[None]) for l in range(x.shape[0])])


class PointMeasures:
    """Feed every key frame's (L, N, D) points in order with ``add``; ``result`` gives the measures."""

    def __init__(self, final: np.ndarray) -> None:
        self.final = final
        self.prev: np.ndarray | None = None
        self.buf = np.empty(final.shape[1:], final.dtype)
        self.sq: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (norm², to previous², to final²)

    def add(self, x: np.ndarray) -> None:
        to_prev = sum_sq_diff(x, self.prev, self.buf) if self.prev is not None else np.zeros(x.shape[0])
        self.sq.append((sum_sq(x), to_prev, sum_sq_diff(x, self.final, self.buf)))
        self.prev = x

    def result(self, steps: np.ndarray) -> dict[str, np.ndarray]:
        norm, prev, final = (np.stack(a) for a in zip(*self.sq))
        return measures_of(norm, prev, final, steps)


def measures_of(norm_sq: np.ndarray, prev_sq: np.ndarray, final_sq: np.ndarray, steps: np.ndarray) -> dict[str, np.ndarray]:
    """``point_update`` and ``point_distance`` (T, L) from each key frame's squared norm, squared distance
    to the previous key frame and to the final one (T, L each): one formula for a film made at once
    (``PointMeasures``) and one made a key frame at a time (layerfilm.live)."""
    norm = np.sqrt(norm_sq)
    return {"point_update": relative_update(prev_sq, norm, steps),
            "point_distance": np.sqrt(final_sq) / np.maximum(norm[-1], 1e-300)}


def point_measures(store: FeatureStore | ArrayStore, steps: np.ndarray) -> dict[str, np.ndarray]:
    """``PointMeasures`` over every key frame of ``store``: one pass, no checkpoint read."""
    acc = PointMeasures(store[len(store) - 1])
    for t in range(len(store)):
        acc.add(store[t])
    return acc.result(steps)
