"""Weight points (layerfilm.points).

layerfilm.points.FeatureStore: frames come back bit-exact; bfloat16-exact frames take half the bytes.

Key frames held as the checkpoints store them (layerfilm.study.block_task, ``WeightPlan.held``): bf16
and float16 rows take half float32's memory, and the film computed from them is the float32 one, bit for bit.

DistanceBounds (layerfilm.points.measures): a live film's settling blocks from triangle-inequality
bounds, equal to layerfilm.stability.near_index of the exact distances, while reading back few rows."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import layerfilm.study as study_module
from layerfilm.film_options import FilmOptions
from layerfilm.io.formats import NotExact, narrow, widen
from layerfilm.points import ArrayStore, FeatureStore
from layerfilm.points.measures import DistanceBounds, measures_of, point_measures, sum_sq, sum_sq_diff
from layerfilm.points.weights import WeightSpec
from layerfilm.stability import near_index
from layerfilm.study import Study, block_task


# ==== layerfilm.points.FeatureStore
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


# ==== Key frames held as the checkpoints store them (layerfilm.study.block_task, ``WeightPlan.held``)
POINTS = 24


def test_narrow_and_widen_are_exact_or_refuse():
    rng = np.random.default_rng(0)
    full = rng.standard_normal((3, 5, 7)).astype(np.float32) * np.float32(1e3)
    bf16 = torch.from_numpy(full).bfloat16().float().numpy()  # what a bf16 checkpoint widens to
    f16 = full.astype(np.float16).astype(np.float32)
    bits = narrow(bf16, np.empty(bf16.shape, np.uint16))
    assert widen(bits).tobytes() == bf16.tobytes()
    assert widen(narrow(f16, np.empty(f16.shape, np.float16))).tobytes() == f16.tobytes()
    for x, held in ((full, np.uint16), (full, np.float16), (f16 * np.float32(1e5), np.float16)):  # rounding, overflow
        with pytest.raises(NotExact):
            narrow(x, np.empty(x.shape, held))
    store = ArrayStore(bits)
    assert store[1].tobytes() == bf16[1].tobytes() and store.block(2).tobytes() == bf16[:, 2].tobytes()
    assert store.max_abs.tobytes() == ArrayStore(bf16).max_abs.tobytes()  # the largest |value| of a block, negative too


def _chunk(folder, monkeypatch, whole: bool, held=None):
    """One block task over every checkpoint and block of ``folder``, and the dtype its key frames were held in."""
    run = Study.open(folder, FilmOptions(weights=WeightSpec(points=POINTS), cache=False), progress=False)
    wp = run.weight_plan()
    seen = []

    def recorded(arr):
        seen.append(arr.dtype)
        return ArrayStore(arr)

    monkeypatch.setattr(study_module, "ArrayStore", recorded)
    blocks = tuple(range(len(wp.tensor_names)))
    got = block_task(run.series, wp, blocks, tuple(range(len(run.series))), run.opts.projection,
                     run.opts.projection_kwargs(), whole, held=held)
    return got, seen[-1], wp


def _same(a, b) -> None:
    assert a.xy.tobytes() == b.xy.tobytes()
    assert a.stats.keys() == b.stats.keys() and all(a.stats[k].tobytes() == b.stats[k].tobytes() for k in a.stats)
    assert (a.measures is None) == (b.measures is None)
    if a.measures is not None:
        assert all(a.measures[k].tobytes() == b.measures[k].tobytes() for k in a.measures)


@pytest.mark.parametrize("whole", [False, True])
@pytest.mark.parametrize("run, stored, held", [("pythia_run", "BF16", np.uint16), ("bin_run", "F16", np.float16)])
def test_rows_held_as_stored_give_the_float32_film(run, stored, held, whole, request, monkeypatch):
    """Sharded bf16 safetensors (rows read as stored) and fp16 torch pickles (read whole, narrowed)."""
    compact, dtype, wp = _chunk(request.getfixturevalue(run), monkeypatch, whole)
    assert wp.dtype == stored and dtype == held
    wide, dtype, _ = _chunk(request.getfixturevalue(run), monkeypatch, whole, held=np.dtype(np.float32))
    assert dtype == np.float32
    _same(compact, wide)


def test_a_float32_checkpoint_in_a_bf16_series(tiny_run, tmp_path, monkeypatch):
    """The first checkpoint is bf16, so the rows are held as bf16; a later float32 checkpoint whose values
    bf16 holds exactly is narrowed, one it cannot hold starts the task again in float32: the film is the
    float32 one either way."""
    names = sorted(p.name for p in tiny_run.glob("step_*.safetensors"))[:4]
    for case in ("exact", "not exact"):
        folder = tmp_path / case.replace(" ", "_")
        folder.mkdir()
        for i, name in enumerate(names):
            state = load_file(str(tiny_run / name))
            if i == 0:
                state = {k: v.bfloat16() for k, v in state.items()}
            elif case == "exact":
                state = {k: v.bfloat16().float() for k, v in state.items()}
            save_file(state, str(folder / name))
        compact, dtype, wp = _chunk(folder, monkeypatch, False)
        assert wp.dtype == "BF16" and dtype == (np.uint16 if case == "exact" else np.float32)
        _same(compact, _chunk(folder, monkeypatch, False, held=np.dtype(np.float32))[0])
        shutil.rmtree(folder)


# ==== DistanceBounds (layerfilm.points.measures)
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
