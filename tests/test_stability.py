"""layerfilm.stability and `layerfilm stability`: measures known by construction, settling, ranking."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from conftest import FROZEN_BLOCKS, FROZEN_STEP
from layerfilm.errors import OptionsError
from layerfilm.film_options import FilmOptions, StabilityOptions, StudyOptions
from layerfilm.io.scan import scan
from layerfilm.points.whole import Work, abs_percentile, bf16_counts, histogram, linear_cka, sums_of_squares
from layerfilm.stability import near_index
from layerfilm.study import Study, block_task, measure


def test_frozen_blocks_settle_first_and_the_others_never(frozen_stability):
    st = frozen_stability
    settle = dict(zip(st.blocks.tolist(), st.settle_steps))
    for b in FROZEN_BLOCKS:
        assert settle[b] is not None and settle[b] <= FROZEN_STEP
    for b in set(st.blocks.tolist()) - set(FROZEN_BLOCKS):
        assert settle[b] is None
    ranked = [int(st.blocks[l]) for l in st.ranking()]
    assert set(ranked[: len(FROZEN_BLOCKS)]) == set(FROZEN_BLOCKS)


def test_frozen_blocks_stop_moving_on_every_measure(frozen_stability):
    st = frozen_stability
    k = list(st.steps).index(FROZEN_STEP)
    frozen = [list(st.blocks).index(b) for b in FROZEN_BLOCKS]
    moving = [l for l in range(len(st.blocks)) if l not in frozen]
    assert np.all(st.relative_update[k + 1 :, frozen] == 0)
    assert np.all(st.distance_to_final[k:, frozen] == 0)
    assert np.all(st.motion[k + 1 :, frozen] == 0)
    assert np.allclose(st.cka_to_final[k:, frozen], 1)
    assert np.all(st.relative_update[1:, moving] > 0)
    assert np.all(st.motion[1:, moving] > 0)
    assert np.all(st.distance_to_final[:-1, moving] > 0)
    # CKA to the final checkpoint grows towards 1 for the blocks that keep training
    assert np.all(st.cka_to_final[0, moving] < st.cka_to_final[-2, moving])
    # each key frame's histogram counts every entry of the block's matrices exactly once
    entries = 32 * 96 + 32 * 32 + 32 * 128 + 128 * 32
    assert np.all(st.hist.sum(axis=-1) == entries)
    assert st.param_norm.shape == (5, 4, len(st.components)) and np.isfinite(st.param_norm).all()


def test_cli_json_lists_blocks_in_settling_order(frozen_run, run_cli):
    code, out, err = run_cli("stability", frozen_run, "--json", "--quiet", "--points", "64")
    assert code == 0, err
    rows = json.loads(out)
    assert [r["rank"] for r in rows] == [1, 2, 3, 4]
    assert {r["block"] for r in rows[:2]} == set(FROZEN_BLOCKS)
    assert all(r["settle_step"] <= FROZEN_STEP for r in rows[:2])
    assert [r["settle_step"] for r in rows[2:]] == [None, None]
    assert [r["status"] for r in rows] == ["settled", "settled", "moving", "moving"]
    for r in rows:
        assert r["steps"] == [0, 10, 20, 30, 40]
        assert r["relative_update"][0] is None and r["motion"][0] is None
        assert len(r["distance_to_final"]) == len(r["cka_to_final"]) == len(r["norm"]) == 5
        assert all(len(v) == 5 for v in r["param_norm"].values())
        assert "mlp.c_fc.weight" in r["param_norm"]


def test_cli_table_is_ranked_by_settling_step(frozen_run, run_cli):
    code, out, err = run_cli("stability", frozen_run, "--quiet", "--points", "64")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["rank", "block"]
    blocks = [line.split()[1] for line in lines[1:5]]
    assert set(blocks[:2]) == {f"L{b}" for b in FROZEN_BLOCKS}
    assert [line.split()[2:4] for line in lines[3:5]] == [["moving", "-"], ["moving", "-"]]
    assert [line.split()[2:4] for line in lines[1:3]] == [["settled", f"{FROZEN_STEP}"]] * 2


def test_settle_threshold_changes_the_answer(tiny_run, run_cli):
    """tiny_run settles no block at 0.1; at 0.99 those whose updates stay below the median block's do, at
    the step the documented rule gives, computed here from the JSON's own series."""
    answers = {}
    for th in (0.1, 0.99):
        code, out, err = run_cli("stability", tiny_run, "--json", "--quiet", "--points", "16", "--settle-threshold", str(th))
        assert code == 0, err
        answers[th] = rows = json.loads(out)
        update = np.array([r["relative_update"][1:] for r in rows]).T  # (T - 1, L)
        distance = np.array([r["distance_to_final"] for r in rows]).T
        steps = rows[0]["steps"]
        for l, r in enumerate(rows):
            ok = [all(distance[t, l] < th * distance[0, l] for t in range(k, len(steps))) and
                  all(update[t - 1, l] < th * np.median(update[t - 1]) for t in range(k + 1, len(steps)))
                  for k in range(len(steps) - 1)]
            want = steps[ok.index(True)] if any(ok) else None
            assert r["settle_step"] == want and r["status"] == ("moving" if want is None else "settled")
    assert [r["status"] for r in answers[0.1]] == ["moving"] * 4
    assert "settled" in [r["status"] for r in answers[0.99]]


def test_settle_index_exact():
    d = np.array([
        [1.0, 1.0, 1.0, 0.0],
        [0.5, 0.05, 0.5, 0.0],
        [0.05, 0.2, 0.5, 0.0],
        [0.01, 0.01, 0.5, 0.0],
        [0.0, 0.0, 0.0, 0.0],
    ])
    # settles at 2; settles at the last-but-one key frame; only the last key frame is close: never;
    # never moved: settled from the start
    assert near_index(d, 0.1).tolist() == [2, 3, -1, 0]


def test_linear_cka_invariances():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 8))
    q, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    assert linear_cka(x, 3.0 * x @ q + 1.0) == pytest.approx(1.0)
    assert linear_cka(x, rng.normal(size=(200, 8))) < 0.2


def _synthetic(folder, steps):
    """Two blocks whose weights follow known curves: block 0 drifts along D orthogonal to A
    (W = A + s D), block 1 is a pure rescaling (W = (1 + s/10) A)."""
    rng = np.random.default_rng(1)
    a = rng.normal(size=(8, 4)).astype(np.float64)
    d = rng.normal(size=(8, 4))
    d -= (d * a).sum() / (a * a).sum() * a  # D orthogonal to A (Frobenius)
    d *= 0.01
    ln = np.ones(4)
    for s in steps:
        tensors = {
            "transformer.h.0.mlp.c_fc.weight": a + s * d, "transformer.h.0.ln_1.weight": ln,
            "transformer.h.1.mlp.c_fc.weight": (1 + s / 10) * a, "transformer.h.1.ln_1.weight": ln,
        }
        save_file({k: torch.tensor(v, dtype=torch.float64).float() for k, v in tensors.items()},
                  str(folder / f"step_{s:06d}.safetensors"))
    return a, d, ln


def test_measures_match_known_curves_with_uneven_steps(tmp_path):
    steps = np.array([0, 10, 30, 40, 100])
    a, d, ln = _synthetic(tmp_path, steps)
    st = measure(scan(tmp_path), progress=False)
    gap = np.diff(steps)
    median = np.median(gap)  # 15: updates are scaled to 15 steps
    # block 0: W = [A + sD, ln]; ||W||^2 = |A|^2 + s^2 |D|^2 + |ln|^2 (A orthogonal to D)
    na, nd, nl = np.linalg.norm(a), np.linalg.norm(d), np.linalg.norm(ln)
    norm0 = np.sqrt(na**2 + steps**2 * nd**2 + nl**2)
    np.testing.assert_allclose(st.norm[:, 0], norm0, rtol=1e-5)
    np.testing.assert_allclose(st.relative_update[1:, 0], nd * median / norm0[1:], rtol=1e-4)
    np.testing.assert_allclose(st.distance_to_final[:, 0], (steps[-1] - steps) * nd / norm0[-1], rtol=1e-4, atol=1e-7)
    # block 1: W = [(1 + s/10) A, ln]: pure rescaling of the points, so CKA is 1 throughout
    c = 1 + steps / 10
    norm1 = np.sqrt(c**2 * na**2 + nl**2)
    np.testing.assert_allclose(st.relative_update[1:, 1], (gap / 10) * na / norm1[1:] * median / gap, rtol=1e-4)
    np.testing.assert_allclose(st.cka_to_final[:, 1], 1.0, rtol=1e-5)
    # per-tensor norms, in the order of st.components
    assert st.components == ("ln_1.weight", "mlp.c_fc.weight")
    np.testing.assert_allclose(st.param_norm[:, 1, 1], c * na, rtol=1e-5)
    np.testing.assert_allclose(st.param_norm[:, :, 0], nl, rtol=1e-6)
    assert np.isnan(st.relative_update[0]).all() and np.isnan(st.motion[0]).all()


def test_errors(tmp_path, frozen_run, run_cli):
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(frozen_run / "step_000000.safetensors", one)
    code, out, err = run_cli("stability", one)
    assert code == 2 and err.strip().splitlines() == [
        f"layerfilm: error: {one}: found 1 checkpoint; measuring movement needs at least two"]
    with pytest.raises(OptionsError, match=r"^settle_threshold=0.0: must be between 0 and 1"):
        StabilityOptions(settle_threshold=0.0)
    code, _, err = run_cli("stability", frozen_run, "--settle-threshold", "1")
    assert code == 2 and err.startswith("layerfilm: error: --settle-threshold 1.0: must be between 0 and 1")
    # a later checkpoint that lacks one of the block's tensors names the file and the tensor: the scan
    # finds it from the headers; one changed after the scan is found when read; skipped either way
    from safetensors.torch import load_file

    broken = tmp_path / "broken"
    broken.mkdir()
    _synthetic(broken, [0, 10, 20])
    series = scan(broken)
    state = load_file(str(broken / "step_000010.safetensors"))
    del state["transformer.h.1.ln_1.weight"]
    save_file(state, str(broken / "step_000010.safetensors"))
    with pytest.warns(UserWarning, match=r"step_000010.safetensors: block tensor 1.ln_1.weight is missing"):
        assert scan(broken).steps == [0, 20]
    with pytest.warns(UserWarning, match=r"step_000010.safetensors: tensor transformer.h.1.ln_1.weight is missing; skipped"):
        st = measure(series, progress=False)
    assert st.steps.tolist() == [0, 20] and [c.path.name for c in st.skipped] == ["step_000010.safetensors"]


def _bf16(x: np.ndarray) -> np.ndarray:
    """float32 ``x`` rounded down to bf16 values (the low 16 bits cleared)."""
    return ((np.ascontiguousarray(x, np.float32).view(np.uint32) >> 16) << 16).view(np.float32)


@pytest.mark.parametrize("kind", ["bf16", "float32"])
def test_whole_block_sums_and_histograms_equal_numpys(kind):
    """The chunked, value-counted kernels give numpy's histogram and percentile exactly and float64 sums."""
    rng = np.random.default_rng(3)
    edges = np.linspace(-0.9375, 0.9375, 61)  # multiples of 1/32: bf16 values sit exactly on edges
    w = rng.standard_normal((700, 300)).astype(np.float32) * 0.4
    w.flat[:61] = edges  # on every edge, and beyond both ends
    w.flat[61:64] = (-0.0, 5.0, -7.0)
    w = _bf16(w) if kind == "bf16" else w
    others = [w + rng.standard_normal(w.shape).astype(np.float32) * s for s in (0.01, 1e-4)]
    counts = bf16_counts(w, Work())
    assert (counts is None) == (kind == "float32")
    want = np.histogram(np.clip(w.astype(np.float64), edges[0], edges[-1]), bins=60, range=(edges[0], edges[-1]))[0]
    assert np.array_equal(histogram(w, edges, counts), want)
    n2, sq = sums_of_squares(w, others, Work())
    w64 = w.astype(np.float64)
    assert n2 == pytest.approx(np.vdot(w64, w64), rel=1e-13)
    for o, got in zip(others, sq):
        d = w64 - o.astype(np.float64)
        assert got == pytest.approx(np.vdot(d, d), rel=1e-13)


@pytest.mark.parametrize("n", [1, 2, 3, 10, 999, 20_000])
def test_the_percentile_from_bf16_counts_is_numpys(n):
    rng = np.random.default_rng(n)
    w = _bf16(rng.standard_normal(n).astype(np.float32) * rng.uniform(0.01, 3))
    counts = bf16_counts(w, Work())
    assert counts is not None
    for q in (0.0, 50.0, 99.9, 100.0):
        assert abs_percentile(counts, q) == np.percentile(np.abs(w.astype(np.float64)), q)


@pytest.mark.parametrize("run", ["pythia_run", "bin_run", "tiny_run"])  # bf16 safetensors, fp16 pickles, float32
def test_whole_block_measures_on_a_torch_device_equal_numpys(run, request):
    """DeviceBlockStats (``stability --device cuda``), run here on torch's CPU: the same points, histograms
    and value ranges exactly, and the same sums to float64's rounding."""
    folder = request.getfixturevalue(run)
    study = Study.open(folder, FilmOptions(cache=False), progress=False)
    wp = study.weight_plan()
    args = (study.series, wp, tuple(range(len(wp.tensor_names))), tuple(range(len(study.series))), "pca", {}, True)
    here, there = block_task(*args), block_task(*args, device="cpu")
    assert here.xy.tobytes() == there.xy.tobytes()
    assert here.measures is not None and there.measures is not None
    for k in ("hist", "hist_edges"):
        assert np.array_equal(here.measures[k], there.measures[k]), k
    for k in ("norm_sq", "prev_sq", "final_sq", "param_norm", "cka"):
        np.testing.assert_allclose(there.measures[k], here.measures[k], rtol=1e-12, atol=0, err_msg=k)


def test_stability_device_cuda_measures_on_the_device_or_says_there_is_none(pythia_run, monkeypatch, run_cli):
    """``--device cuda`` sends the whole-block measures to DeviceBlockStats (here on torch's CPU, standing in
    for the GPU): the same stability; on a machine without that GPU, one line."""
    import layerfilm.study as study_module

    if not torch.cuda.is_available():
        code, _, err = run_cli("stability", pythia_run, "--device", "cuda:0", "--no-cache", "--quiet")
        assert code == 2 and err.strip().splitlines()[-1].endswith("--device cuda:0: no such CUDA device here (torch sees 0)")
    used = []

    class OnThisCpu(study_module.DeviceBlockStats):
        def __init__(self, *args, device):
            used.append(device)
            super().__init__(*args, device="cpu")

    monkeypatch.setattr(study_module, "DeviceBlockStats", lambda *a: OnThisCpu(*a[:-1], device=a[-1]))
    monkeypatch.setattr(study_module, "check_device", lambda device: None)
    here = Study.open(pythia_run, StudyOptions(cache=False, jobs=1), progress=False).stability()
    there = Study.open(pythia_run, StudyOptions(cache=False, jobs=1, device="cuda:1"), progress=False).stability()
    assert used and set(used) == {"cuda:1"}
    assert np.array_equal(here.hist, there.hist) and np.array_equal(here.settle_index, there.settle_index)
    for k in ("relative_update", "distance_to_final", "norm", "param_norm", "cka_to_final"):
        np.testing.assert_allclose(getattr(there, k), getattr(here, k), rtol=1e-12, err_msg=k)
