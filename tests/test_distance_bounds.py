"""DistanceBounds (layerfilm.points.measures): a live film's settling blocks from triangle-inequality
bounds, equal to layerfilm.stability.near_index of the exact distances, while reading back few rows."""

from __future__ import annotations

import numpy as np
import pytest

from layerfilm.points.measures import DistanceBounds, measures_of, sum_sq, sum_sq_diff
from layerfilm.stability import near_index


def series(T: int = 40, L: int = 12, N: int = 16, D: int = 24, seed: int = 0) -> np.ndarray:
    """(T, L, N, D) float32 rows: each block drifts towards its own end point, settling at its own pace
    (block 0 never moves, block 1 freezes at T // 3, block 2 keeps moving, block 3 holds a NaN at one key
    frame, the rest converge geometrically with fading noise)."""
    rng = np.random.default_rng(seed)
    start = rng.normal(size=(L, N, D))
    end = rng.normal(size=(L, N, D))
    out = np.empty((T, L, N, D), np.float32)
    for l in range(L):
        rate = 0.05 + 0.5 * l / L
        for t in range(T):
            w = 1 - (1 - rate) ** t
            out[t, l] = start[l] + w * (end[l] - start[l]) + 0.3 * (1 - w) * rng.normal(size=(N, D))
    out[:, 0] = out[0, 0]
    out[T // 3:, 1] = out[T // 3, 1]
    out[:, 2] = start[2] + np.arange(T)[:, None, None] * rng.normal(size=(N, D)) * 0.1
    out[T // 2, 3, 0, 0] = np.nan
    return out


def exact_settle(x: np.ndarray, threshold: float) -> np.ndarray:
    """near_index of the render's own point_distance for the key frames x (T, L, N, D)."""
    T = len(x)
    buf = np.empty(x.shape[2:], np.float32)
    final_sq = np.stack([sum_sq_diff(x[t], x[-1], buf) for t in range(T)])
    norm_sq = np.stack([sum_sq(x[t]) for t in range(T)])
    prev_sq = np.stack([np.zeros(x.shape[1])] + [sum_sq_diff(x[t], x[t - 1], buf) for t in range(1, T)])
    return near_index(measures_of(norm_sq, prev_sq, final_sq, np.arange(T))["point_distance"], threshold)


@pytest.mark.parametrize("threshold", [0.1, 0.02, 0.5])
def test_settle_from_bounds_equals_near_index_at_every_key_frame(threshold):
    x = series()
    T, L = x.shape[:2]
    reads: list[tuple[int, int | None]] = []

    def read(t: int, l: int | None = None) -> np.ndarray:
        reads.append((t, l))
        return x[t] if l is None else x[t, l]

    bounds = DistanceBounds(L)
    buf = np.empty(x.shape[2:], np.float32)
    for t in range(T):
        bounds.add(sum_sq_diff(x[t], x[t - 1], buf) if t else np.zeros(L))
        got = bounds.settle(threshold, sum_sq(x[t]), x[t], read)
        if t:  # (near_index of one key frame: every block at 0, the bounds' too)
            assert np.array_equal(got, exact_settle(x[: t + 1], threshold)), t
    # all rows read back at every update would be sum(T) x L blocks; the bounds need a small part of it
    assert bounds.read_back < 0.25 * L * T * (T - 1) / 2, bounds.read_back
    assert all(l is not None for _, l in reads)  # one block's rows at a time


def test_exact_distances_equal_a_full_read_back_bit_for_bit():
    x = series(T=25, seed=1)
    T, L = x.shape[:2]
    bounds = DistanceBounds(L)
    buf = np.empty(x.shape[2:], np.float32)
    for t in range(T):
        bounds.add(sum_sq_diff(x[t], x[t - 1], buf) if t else np.zeros(L))
        if t % 5 == 4:  # some updates decide the settling blocks only, leaving bounds behind
            bounds.settle(0.1, sum_sq(x[t]), x[t], lambda t, l=None: x[t] if l is None else x[t, l])
    got = bounds.exact(x[-1], lambda t, l=None: x[t] if l is None else x[t, l])
    want = np.stack([sum_sq_diff(x[t], x[-1], buf) for t in range(T)])
    assert np.array_equal(got, want, equal_nan=True)
    # blocks 0 and 1 did not move at the end: their distances stayed exact, never read back
    assert bounds.known[:, 0].all()


def test_a_frozen_block_is_never_read_back():
    """A block whose rows stopped changing keeps exact distances: deciding it reads nothing."""
    x = series(T=30)
    x[:, :] = x[:1]  # nothing moves at all
    L = x.shape[1]
    bounds = DistanceBounds(L)
    for t in range(len(x)):
        bounds.add(np.zeros(L))
        assert (bounds.settle(0.1, sum_sq(x[t]), x[t], lambda *a: pytest.fail("read back")) == 0).all()
    assert bounds.read_back == 0
