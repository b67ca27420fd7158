"""Key frames held as the checkpoints store them (layerfilm.study.block_task, ``WeightPlan.held``): bf16
and float16 rows take half float32's memory, and the film computed from them is the float32 one, bit for bit."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import layerfilm.study as study_module
from layerfilm.film_options import FilmOptions
from layerfilm.io.formats import NotExact, narrow, widen
from layerfilm.points import ArrayStore
from layerfilm.points.weights import WeightSpec
from layerfilm.study import Study, block_task

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
