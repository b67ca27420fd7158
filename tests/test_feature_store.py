"""layerfilm.points.FeatureStore: frames come back bit-exact; bfloat16-exact frames take half the bytes."""

from __future__ import annotations

import numpy as np
import torch

from layerfilm.points import FeatureStore
from layerfilm.points.measures import point_measures


def test_store_round_trips_bf16_exact_and_other_frames_bit_exact(tmp_path):
    rng = np.random.default_rng(0)
    full = rng.standard_normal((3, 8, 5)).astype(np.float32)  # float32 values: not bf16-exact
    bf16 = torch.from_numpy(full).bfloat16().float().numpy()  # what a bf16 checkpoint widens to
    assert not np.array_equal(full, bf16)
    store = FeatureStore(tmp_path)
    for frame in (full, bf16, -bf16):
        store.append(frame)
    for t, frame in enumerate((full, bf16, -bf16)):
        got = store[t]
        assert got.dtype == np.float32 and got.tobytes() == frame.tobytes()
    np.testing.assert_array_equal(store.block(1), np.stack([full[1], bf16[1], -bf16[1]]))
    sizes = sorted(p.stat().st_size for p in tmp_path.iterdir())
    assert sizes[0] == sizes[1] and sizes[2] - 128 == 2 * (sizes[0] - 128)  # payload halves (npy header 128 bytes)


def test_point_measures_of_a_store_by_construction(tmp_path):
    # frame t = base * (1 + t): update ||x_t - x_{t-1}|| / ||x_t|| = 1 / (1 + t); distance to final (T-1-t) / T
    base = np.random.default_rng(1).standard_normal((2, 6, 4)).astype(np.float32)
    store = FeatureStore(tmp_path)
    T = 4
    for t in range(T):
        store.append(base * (1 + t))
    m = point_measures(store, np.array([0, 10, 20, 30]))
    t = np.arange(T, dtype=np.float64)[:, None]
    np.testing.assert_allclose(m["point_update"][1:], np.broadcast_to(1 / (1 + t[1:]), (T - 1, 2)), rtol=1e-6)
    np.testing.assert_allclose(m["point_distance"], np.broadcast_to((T - 1 - t) / T, (T, 2)), rtol=1e-6, atol=1e-7)
