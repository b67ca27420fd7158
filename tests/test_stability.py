"""Stability: settling, status and its measures (layerfilm.stability).

layerfilm.stability and `layerfilm stability`: measures known by construction, settling, ranking.

`layerfilm stability` / `report` with --features activations: activation statistics beside the weight measures.

Two fixtures: an exact construction (blocks that multiply their input by g * an orthogonal matrix, so
the norm grows by exactly g per block) and the tiny real training run, whose statistics are recomputed
here independently with plain torch forward hooks on the bundled probe.

Settled, moving or barely moved (layerfilm.stability.Settling): one definition for `stability`, the film's
marks, the report and watch, that tells a block that stopped from a learning rate that decays for all.

Finite but huge weights (issue 11): a real training run with every tensor times 1e38, still finite
float32, films and measures like the run itself: exit 0, finite output, the projected points the same
up to a scale per block, and the scale-free measures (relative update, distance to final, CKA, motion)
the same as the unscaled run's."""

from __future__ import annotations

import io
import json
import math
import re
import shutil
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
import torch.nn as nn
from safetensors.torch import save_file

from conftest import FROZEN_BLOCKS, FROZEN_STEP, ROOT
from layerfilm.draw.overlay import BARELY, MOVING, SETTLED, TRACK
from layerfilm.draw.raster import Style
from layerfilm.errors import OptionsError
from layerfilm.film import film_frames, render
from layerfilm.film_options import FilmOptions, StabilityOptions, StudyOptions
from layerfilm.io.scan import scan
from layerfilm.live.film import LiveFilm, LiveOptions, report_line
from layerfilm.points import FeatureStore, in_safe_range, safe_scale
from layerfilm.points.act_stats import HIST_EDGES, N_BINS, ActivationStats
from layerfilm.points.activations import DEFAULT_PROBE, ActivationSpec
from layerfilm.points.measures import sum_sq
from layerfilm.points.weights import WeightSpec
from layerfilm.points.whole import Work, abs_percentile, bf16_counts, histogram, linear_cka, sums_of_squares
from layerfilm.projection import project
from layerfilm.reports.figures import activation_hot_figure, activation_near_zero_figure, activation_norm_figure, save_figure
from layerfilm.stability import BARELY_MOVED, Settling, calm_index, near_index, relative_motion, settle_index
from layerfilm.study import Study, block_task, measure, measure_activations
from makers import Chain


# ==== layerfilm.stability and `layerfilm stability`
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


# ==== `layerfilm stability` / `report` with --features activations
VOCAB, DIM = 32, 8
# step -> gain of blocks 0..3: the first two blocks keep the norm, the later ones scale it up
GAINS = {0: [1.0, 1.0, 1.5, 2.0], 10: [1.0, 1.0, 2.0, 3.0], 20: [1.0, 1.0, 2.5, 1.25]}
SCALED = [2, 3]
NANO = str(ROOT / "examples" / "make_checkpoints.py") + ":make_model"
WEIGHT_FIELDS = ["block", "rank", "settle_step", "settle_threshold", "steps", "relative_update", "distance_to_final",
                 "norm", "param_norm", "cka_to_final", "motion", "status", "update_ratio", "grad_rms", "m_norm",
                 "update_flag", "update_spikes"]
ACT_SERIES = ["act_norm", "act_mean", "act_std", "act_near_zero", "act_growth"]


class Scale(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(DIM, DIM, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class ScaleNet(Chain):
    """Embedding, then 4 blocks with no residual: x -> x @ (g Q)^T, Q orthogonal, so ||out|| = g ||in||."""

    def __init__(self) -> None:
        super().__init__(VOCAB, DIM, (Scale() for _ in range(4)))


def make_scale_net() -> ScaleNet:
    return ScaleNet()


@pytest.fixture(scope="module")
def scale_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("scale_run")
    rng = np.random.default_rng(0)
    embed = torch.from_numpy(rng.normal(size=(VOCAB, DIM)).astype(np.float32))
    for step, gains in GAINS.items():
        state = {"embed.weight": embed}
        for l, g in enumerate(gains):  # a new orthogonal Q per step, so the weights also move
            q, _ = np.linalg.qr(rng.normal(size=(DIM, DIM)))
            state[f"blocks.{l}.proj.weight"] = torch.from_numpy((g * q).astype(np.float32))
        save_file(state, str(out / f"step_{step:03d}.safetensors"))
    np.save(out.parent / "scale_ids.npy", rng.integers(0, VOCAB, size=(6, 10)))
    return out


def scale_args(run: Path) -> list:
    return [run, "--features", "activations", "--model", f"{__file__}:make_scale_net", "--probe",
            run.parent / "scale_ids.npy", "--device", "cpu", "--param", "proj", "--points", "8", "--quiet"]


def test_growth_is_the_gain_of_each_block(scale_run, run_cli):
    code, out, err = run_cli("stability", *scale_args(scale_run), "--json")
    assert code == 0, err
    rows = sorted(json.loads(out), key=lambda r: r["block"])
    growth = np.array([r["act_growth"] for r in rows]).T  # (T, L)
    want = np.array(list(GAINS.values()))
    np.testing.assert_allclose(growth, want, rtol=1e-5)
    assert (growth[:, SCALED] > 1.2).all() and np.allclose(growth[:, :2], 1, rtol=1e-5)
    per_block = np.prod(want[:, 1:], axis=1) ** (1 / 3)  # first block's output to the last's
    for r in rows:
        np.testing.assert_allclose(r["act_growth_per_block"], per_block, rtol=1e-5)
        assert r["act_threshold"] == 0.05 and r["act_hist_edges"] == HIST_EDGES.tolist()
    # the norm itself: the input's norm times the product of the gains so far
    norm = np.array([r["act_norm"] for r in rows]).T
    input_norm = np.array(rows[0]["act_input_norm"])
    np.testing.assert_allclose(norm, input_norm[:, None] * np.cumprod(want, axis=1), rtol=1e-5)


def test_json_extends_the_weight_measures(scale_run, run_cli):
    code, out, err = run_cli("stability", *scale_args(scale_run)[:1], "--param", "proj", "--points", "8", "--quiet", "--json")
    assert code == 0, err
    weights_only = json.loads(out)
    code, out, err = run_cli("stability", *scale_args(scale_run), "--json")
    assert code == 0, err
    both = json.loads(out)
    assert all(not any(k.startswith("act_") for k in r) for r in weights_only)
    T = len(GAINS)
    for w, r in zip(weights_only, both):
        assert list(r)[: len(WEIGHT_FIELDS)] == WEIGHT_FIELDS == list(w)  # nothing renamed, nothing moved
        assert {k: r[k] for k in w} == w  # the weight measures are the same with activations
        assert all(len(r[k]) == T for k in ACT_SERIES + ["act_input_norm", "act_growth_per_block"])
        hist = np.array(r["act_hist"])
        assert hist.shape == (T, N_BINS) and (hist.sum(axis=1) == 6 * 10 * DIM).all()  # every activation once


def test_text_has_a_table_per_measure_over_time(scale_run, run_cli):
    code, out, err = run_cli("stability", *scale_args(scale_run))
    assert code == 0, err
    assert out.startswith("rank  block  status  settles at step")  # the weight table first, as before
    section = out[out.index("activations: mean token norm"):]
    for title in ("growth of the norm", "activations: mean\n", "activations: std", "fraction near zero (|a| < 0.05)"):
        assert title in section
    growth = section[section.index("activations: growth"):].splitlines()
    assert growth[1].split() == ["step", "L0", "L1", "L2", "L3"]
    got = np.array([[float(v) for v in line.split()[1:]] for line in growth[2:2 + len(GAINS)]])
    np.testing.assert_allclose(got, np.array(list(GAINS.values())), atol=1e-3)
    assert "activations at step 20: norm growth" in out.splitlines()[-6]
    code, out, _ = run_cli("stability", *scale_args(scale_run)[:1], "--param", "proj", "--points", "8", "--quiet")
    assert code == 0 and "activations" not in out


@pytest.fixture(scope="module")
def tiny_json(tiny_run):
    """`layerfilm stability --json --features activations` of the real tiny run (nanoGPT factory, bundled probe)."""
    import contextlib

    from layerfilm.cli.commands import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["stability", str(tiny_run), "--features", "activations", "--model", NANO, "--device", "cpu",
                     "--points", "32", "--quiet", "--json"]) == 0
    return sorted(json.loads(buf.getvalue()), key=lambda r: r["block"])


def test_statistics_match_plain_torch_hooks(example, tiny_run, tiny_json):
    """Recompute every block's statistics with our own hooks on the same probe (UTF-8 bytes, rows of the
    model's context of 32 tokens) and compare with the JSON."""
    from safetensors.torch import load_file

    raw = np.frombuffer(DEFAULT_PROBE.read_bytes(), np.uint8).astype(np.int64)
    ids = torch.as_tensor(raw[: len(raw) // 32 * 32].reshape(-1, 32))
    series = scan(tiny_run)
    assert tiny_json[0]["steps"] == series.steps
    for t, ckpt in enumerate(series.checkpoints):
        model = example.make_model(ckpt.path)
        model.load_state_dict(load_file(ckpt.path))
        outs, ins = {}, []
        handles = [b.register_forward_hook(lambda m, a, o, l=l, outs=outs: outs.__setitem__(l, o.detach()))
                   for l, b in enumerate(model.transformer.h)]
        handles.append(model.transformer.h[0].register_forward_pre_hook(lambda m, a, ins=ins: ins.append(a[0].detach())))
        with torch.no_grad():
            model.eval()(ids)
        for h in handles:
            h.remove()
        norms = [outs[l].norm(dim=-1).mean().item() for l in range(len(outs))]
        growth = np.array(norms) / np.r_[ins[0].norm(dim=-1).mean().item(), norms[:-1]]
        for l, r in enumerate(tiny_json):
            x = outs[l].double()
            assert r["act_norm"][t] == pytest.approx(norms[l], rel=1e-5)
            assert r["act_mean"][t] == pytest.approx(x.mean().item(), rel=1e-3, abs=1e-6)
            assert r["act_std"][t] == pytest.approx(x.std(unbiased=False).item(), rel=1e-4)
            assert r["act_near_zero"][t] == pytest.approx((x.abs() < 0.05).double().mean().item(), abs=2 / x.numel())
            assert r["act_growth"][t] == pytest.approx(growth[l], rel=1e-5)
            assert sum(r["act_hist"][t]) == x.numel()
    # the real run's activation norms do grow with depth once trained (> 1 per block)
    assert all(g > 1 for g in tiny_json[0]["act_growth_per_block"])


def _data_uris(text: str) -> list[tuple[str, bytes]]:
    import base64

    return [(m, base64.b64decode(d)) for m, d in re.findall(r'src="data:([\w/]+);base64,([A-Za-z0-9+/=]+)"', text)]


REPORT = ("--features", "activations", "--model", NANO, "--device", "cpu", "--points", "32", "--size", "320x180", "--quiet")


def test_html_report_embeds_the_activation_figures(tiny_run, tiny_json, run_cli, tmp_path):
    out = tmp_path / "report.html"
    code, _, err = run_cli("report", tiny_run, "--out", out, *REPORT)
    assert code == 0, err
    text = out.read_text()
    uris = _data_uris(text)
    assert [m for m, _ in uris] == ["image/png"] * 8  # the 5 weight figures and the 3 activation figures
    for _, png in uris[5:]:
        img = iio.imread(io.BytesIO(png))
        assert img.ndim == 3 and img.shape[0] > 300 and img.std() > 10  # a drawn figure, not a blank
    for heading in ("Settling table", "Histograms over time", "Activations at the last key frame",
                    "Activation histograms over time", "Activation norm against depth", "Activations near zero"):
        assert f"<h2>{heading}</h2>" in text
    table = text[text.index("<h2>Activations at the last key frame</h2>"):]
    rows = re.findall(r"<tr><td[^>]*>(\d+)</td><td[^>]*>([^<]+)</td><td[^>]*>([^<]+)</td>", table[: table.index("</table>")])
    assert [int(b) for b, _, _ in rows] == [r["block"] for r in tiny_json]
    assert [float(n) for _, n, _ in rows] == pytest.approx([r["act_norm"][-1] for r in tiny_json], rel=1e-3)


def test_markdown_report_writes_the_activation_pngs(scale_run, run_cli, tmp_path):
    out = tmp_path / "r.md"
    code, _, err = run_cli("report", *scale_args(scale_run), "--out", out, "--size", "320x180")
    assert code == 0, err
    text = out.read_text()
    names = ("stills", "heatmap", "settling", "hot", "norms", "act_hot", "act_norms", "act_near_zero")
    assert re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text) == [f"./r_{n}.png" for n in names]
    assert all((tmp_path / f"r_{n}.png").read_bytes().startswith(b"\x89PNG") for n in names)
    assert "| block | norm | growth | mean | std | \\|a\\|&lt;0.05 |" in text  # |a| escaped, < as an entity
    assert "| 3 | " in text and "norm growth" in text


@pytest.fixture(scope="module")
def scale_stats(scale_run, tmp_path_factory) -> ActivationStats:
    spec = ActivationSpec(model=f"{__file__}:make_scale_net", probe=scale_run.parent / "scale_ids.npy", device="cpu",
                          points=8, near_zero=0.3)
    return measure_activations(scan(scale_run), spec, tmp_path_factory.mktemp("act"), progress=False)


def test_figures_hold_the_statistics(scale_stats, tmp_path):
    st = scale_stats
    hot = activation_hot_figure(st)
    panels = [ax for ax in hot.axes if ax.collections and ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["L0", "L1", "L2", "L3"]
    used = np.flatnonzero(st.hist.sum(axis=(0, 1)))
    lo, hi = used[0], used[-1] + 1  # the value axis spans the bins any block reaches
    for l, ax in enumerate(panels):
        np.testing.assert_allclose(ax.collections[0].get_array().reshape(-1),
                                   np.log1p(st.hist[:, l, lo:hi]).T.reshape(-1))
        assert ax.get_ylim() == (lo, hi)
        ticks = dict(zip([t.get_text() for t in ax.get_yticklabels()], ax.get_yticks()))
        # a decade's tick sits on its bin edge: edge k is at y = k + 1
        assert ticks["1"] == pytest.approx(np.flatnonzero(np.isclose(HIST_EDGES, 1.0))[0] + 1)
    norms = activation_norm_figure(st)
    lines = norms.axes[0].get_lines()
    assert len(lines) == len(st.steps)
    for t, line in enumerate(lines):
        np.testing.assert_allclose(line.get_ydata(), np.r_[st.input_norm[t], st.norm[t]])
    np.testing.assert_allclose(norms.axes[1].get_lines()[0].get_ydata(), st.growth_per_block)
    near = activation_near_zero_figure(st)
    assert near.axes[0].get_ylabel() == "% of activations with |a| < 0.3"
    for l, line in enumerate(near.axes[0].get_lines()):
        np.testing.assert_allclose(line.get_ydata(), 100 * st.near_zero[:, l])
    for fig, name in ((hot, "hot.pdf"), (norms, "norms.svg"), (near, "near.png")):
        assert save_figure(fig, tmp_path / name).stat().st_size > 1000


def test_activation_errors_are_one_line(tiny_run, scale_run, run_cli, tmp_path):
    code, _, err = run_cli("stability", tiny_run, "--features", "activations", "--quiet")
    assert (code, err) == (2, f"layerfilm: error: {tiny_run}: no config.json to build the model from; "
                              "pass --model package.module:make_model\n")
    code, _, err = run_cli("report", *scale_args(scale_run), "--out", tmp_path / "r.html", "--dtype", "fp8")
    assert (code, err) == (2, "layerfilm: error: --dtype 'fp8': choose one of float32, bfloat16, float16\n")
    assert list(tmp_path.iterdir()) == []


# ==== Settled, moving or barely moved (layerfilm.stability.Settling)
SMALL = ("--size", "320x180", "--points", "64", "--quiet", "--jobs", "1")
OPTS = FilmOptions(cache=False, jobs=1, fps=1, style=Style(320, 180), weights=WeightSpec(points=64))


def test_rules_exact():
    """Rule (a) (near the end), rule (b) (calm against the median block) and their join, on a series
    whose answer is known by construction: block 0 stops after key frame 1, block 3 slows to a twentieth
    of the others from key frame 2, blocks 1 and 2 keep their pace."""
    nan = np.nan
    update = np.array([[nan] * 4, [1, 1, 1, 1], [0, 1, 1, 0.5], [0, 1, 1, 0.05], [0, 1, 1, 0.05]])
    distance = np.array([[1, 1, 1, 1], [0, 0.6, 0.6, 0.5], [0, 0.4, 0.4, 0.05], [0, 0.2, 0.2, 0.04], [0, 0, 0, 0]])
    median = np.array([nan, 1, 0.75, 0.525, 0.525])
    np.testing.assert_allclose(relative_motion(update)[1:], update[1:] / median[1:, None])
    assert np.isnan(relative_motion(update)[0]).all()
    assert near_index(distance, 0.1).tolist() == [1, -1, -1, 2]
    assert calm_index(update, 0.1).tolist() == [1, 4, 4, 2]
    assert settle_index(near_index(distance, 0.1), update, 0.1).tolist() == [1, -1, -1, 2]
    s = Settling.of(distance, update, 0.1)
    assert s.status(0) == ["moving"] * 4
    assert s.status(1) == ["settled", "moving", "moving", "moving"]
    assert s.status() == ["settled", "moving", "moving", "settled"] and s.moving() == 2
    # a block that never moved, or moved less than the floor, barely moved: at every key frame
    still = Settling.of(distance * BARELY_MOVED * 0.9, update, 0.1)
    assert still.status(0) == still.status() == ["barely moved"] * 4 and still.moving() == 0
    # where most blocks stopped the median is 0 (then the mean counts): those that stopped settle, the
    # one that goes on moves; where every block stopped (a learning rate of 0) none is calm
    three_stopped = np.array([[nan] * 4, [1, 1, 1, 1], [0, 0, 0, 1], [0, 0, 0, 1]])
    assert calm_index(three_stopped, 0.1).tolist() == [1, 1, 1, 3]
    assert calm_index(np.concatenate([three_stopped, np.zeros((1, 4))]), 0.1).tolist() == [4, 4, 4, 4]


def _decay(frozen_from: int | None = None, T: int = 21, L: int = 4, seed: int = 0):
    """Exact blocks W_l(t) = A_l + s(t) D_l moved by a warmup-cosine learning rate that decays to 0 for
    every block alike (s: its running sum), block 0 frozen from key frame ``frozen_from``: (distance, update)."""
    rng = np.random.default_rng(seed)
    a, d = rng.normal(size=(L, 64)), rng.normal(size=(L, 64)) * np.linspace(0.5, 1.5, L)[:, None] * 0.05
    lr = np.minimum(1, (np.arange(T) + 1) / 3) * 0.5 * (1 + np.cos(np.pi * np.arange(T) / T))
    s = np.repeat(np.concatenate([[0], np.cumsum(lr[1:])])[:, None], L, 1)  # (T, L)
    if frozen_from is not None:
        s[frozen_from:, 0] = s[frozen_from, 0]
    w = a[None] + s[..., None] * d[None]  # (T, L, 64)
    norm = np.linalg.norm(w, axis=-1)
    update = np.full((T, L), np.nan)
    update[1:] = np.linalg.norm(np.diff(w, axis=0), axis=-1) / norm[1:]
    return np.linalg.norm(w - w[-1], axis=-1) / norm[-1], update


def test_a_learning_rate_that_decays_for_all_settles_no_block():
    distance, update = _decay()
    assert (near_index(distance, 0.1) >= 0).all()  # distance alone: every block "settles" in the decay
    assert Settling.of(distance, update, 0.1).status() == ["moving"] * 4
    distance, update = _decay(frozen_from=10)  # ... while a block that stops settles where it stopped
    s = Settling.of(distance, update, 0.1)
    assert s.status() == ["settled", "moving", "moving", "moving"] and s.index[0] == 10


def test_a_run_at_lr_1e_7_barely_moved(still_run, run_cli):
    """A real run that learned nothing: no block settled, all barely moved, in stability, the film and watch."""
    code, out, err = run_cli("stability", still_run, "--json", *SMALL[2:])
    assert code == 0, err
    rows = json.loads(out)
    assert [r["status"] for r in rows] == ["barely moved"] * 4
    assert all(r["settle_step"] is None and 0 < r["distance_to_final"][0] < BARELY_MOVED for r in rows)
    # the film (its own points) marks every panel grey on every key frame, and the legend gives the floor
    frames = film_frames(_traj(still_run), OPTS)
    assert all(frames.overlay.status(k) == ["barely moved"] * 4 for k in range(len(frames.steps)))
    assert f"grey: barely moved (changed < {BARELY_MOVED:.0%} over the film)" in frames.renderer.legend.parts
    img = frames.draw(len(frames.steps) - 1, 0.0)
    bars = _bar_colours(img, frames.overlay)
    assert bars <= {tuple(BARELY.astype(np.uint8)), tuple(TRACK)} and tuple(BARELY.astype(np.uint8)) in bars
    # watch: nothing moving, and it says why
    lines, _ = _watch_lines(still_run)
    assert "0 of 4 blocks still moving, 4 barely moved so far" in lines[-1]


def _traj(folder):
    from layerfilm.study import Study
    return Study.open(folder, OPTS, progress=False).trajectories()


def _bar_colours(img: np.ndarray, overlay) -> set[tuple[int, ...]]:
    """The colours of every panel's bottom bar."""
    r, c = overlay.r, overlay.r.cell
    w, h = overlay.size
    return {tuple(px) for ox, oy in r.panels for px in img[oy * c + h - overlay.bar, ox * c : ox * c + w]}


def _watch_lines(folder, **live) -> tuple[list[str], Settling]:
    """watch's printed lines for ``folder``, one checkpoint per update (the live layout, as watch's
    default), and its final statuses."""
    from dataclasses import replace
    out = []
    with LiveFilm(folder, folder.parent / f"{folder.name}-{len(live)}.webm", replace(OPTS, film_layout="live"),
                  LiveOptions(**live)) as film:
        for c in film.new_checkpoints() or film.new_checkpoints():
            out += report_line(film.update([c]), 4)
        assert film.settling is not None
        return out, film.settling


def test_frozen_blocks_settle_where_they_stopped_and_the_others_move(frozen_run, frozen_stability, run_cli, tmp_path):
    """frozen_run: blocks 0 and 3 copied unchanged from step 20 to 40, blocks 1 and 2 training on. The same
    statuses from the whole blocks (stability), the film's points (its marks) and watch (its lines)."""
    st = frozen_stability
    status = dict(zip(st.blocks.tolist(), st.status))
    steps = dict(zip(st.blocks.tolist(), st.settle_steps))
    for b in status:
        assert (status[b], steps[b]) == (("settled", FROZEN_STEP) if b in FROZEN_BLOCKS else ("moving", None))
    code, out, err = run_cli("stability", frozen_run, "--json", *SMALL[2:])
    assert code == 0, err
    assert {r["block"]: r["status"] for r in json.loads(out)} == status
    # the film's marks: from its own points, the same statuses, "settled" drawn from step 20 on
    res = render(frozen_run, tmp_path / "f/", OPTS, progress=False)
    k = list(res.trajectories.steps).index(FROZEN_STEP)
    assert res.overlay.status(len(st.steps) - 1) == [status[b] for b in res.trajectories.blocks.tolist()]
    assert res.overlay.status(k - 1) == ["moving"] * 4
    import imageio.v3 as iio
    frames = sorted((tmp_path / "f").glob("*.png"))
    for key, img in ((k - 1, iio.imread(frames[k - 1])), (k, iio.imread(frames[k]))):
        colours = {tuple(SETTLED.astype(np.uint8)), tuple(MOVING.astype(np.uint8))} & _bar_colours(img, res.overlay)
        assert (tuple(SETTLED.astype(np.uint8)) in colours) == (key >= k)
    # watch: two blocks still moving at the end, from the bounds or from every distance (--json) alike
    for live in ({}, {"json": str(tmp_path / "s.json")}):
        lines, settling = _watch_lines(frozen_run, **live)
        assert "2 of 4 blocks still moving" in lines[-1] and settling.status() == res.overlay.status(k + 2)
    assert [r["status"] for r in json.loads((tmp_path / "s.json").read_text())] == res.overlay.status(k + 2)


def test_a_decaying_run_is_still_moving_at_its_end(tiny_run):
    """tiny_run's learning rate decays to 0 (cosine) for every block: near its end the blocks' distance to the
    final checkpoint is small (the old rule "settled" them all), but none stopped while the others went on."""
    from layerfilm.film_options import StabilityOptions
    from layerfilm.io.scan import scan
    from layerfilm.study import measure

    st = measure(scan(tiny_run), StabilityOptions(weights=WeightSpec(points=64)), progress=False)
    assert (near_index(st.distance_to_final, 0.1) >= 0).all()
    assert st.status == ["moving"] * 4
    lines, _ = _watch_lines(tiny_run)
    assert "4 of 4 blocks still moving" in lines[-1]


# ==== Finite but huge weights (issue 11)
SCALE = 1e38
RTOL = 1e-4


@pytest.fixture(scope="session")
def huge_run(tiny_run, tmp_path_factory):
    """`tiny_run` with every floating tensor multiplied by 1e38 (in float32: still finite)."""
    from safetensors.numpy import load_file, save_file

    out = tmp_path_factory.mktemp("huge_run")
    for f in sorted(tiny_run.glob("*.safetensors")):
        state = load_file(str(f))
        scaled = {k: v * v.dtype.type(SCALE) if v.dtype.kind == "f" else v for k, v in state.items()}
        assert all(np.isfinite(v).all() for v in scaled.values())
        assert max(float(np.abs(v).max()) for v in scaled.values()) > 1e37
        save_file(scaled, str(out / f.name))
    return out


@pytest.mark.parametrize("projection", ["pca", "procrustes"])
def test_render_of_huge_weights_is_a_film(run_cli, huge_run, tmp_path, projection):
    out = tmp_path / "x.webm"
    code, _, err = run_cli("render", huge_run, "--out", out, "--size", "320x180", "--fps", "2", "--jobs", "1", "--quiet",
                           "--no-cache", "--projection", projection, "--export-points", tmp_path / "p.npz")
    assert code == 0, err
    assert "Traceback" not in err and "warning" not in err
    assert out.stat().st_size > 0
    with np.load(tmp_path / "p.npz") as z:
        assert z["xy"].shape[:2] == (7, 4)
        for n in (n for n in z.files if z[n].dtype.kind != "U"):  # all but the method name; point_update is NaN at t = 0
            assert np.isfinite(z[n][1:] if n == "point_update" else z[n]).all(), n


def test_stability_of_huge_weights_is_finite_and_the_same(run_cli, huge_run, tiny_run):
    code, out, err = run_cli("stability", huge_run, "--json")
    assert code == 0, err
    assert "Traceback" not in err and "warning" not in err
    huge = json.loads(out)
    code, out, _ = run_cli("stability", tiny_run, "--json")
    ref = json.loads(out)
    assert [r["block"] for r in huge] == [r["block"] for r in ref]  # the same ranking
    for h, r in zip(huge, ref):
        assert h["settle_step"] == r["settle_step"]
        for key in ("relative_update", "distance_to_final", "cka_to_final", "motion"):
            assert [v is None for v in h[key]] == [v is None for v in r[key]], key
            got = [v for v in h[key] if v is not None]
            want = [v for v in r[key] if v is not None]
            assert all(math.isfinite(v) for v in got), key
            np.testing.assert_allclose(got, want, rtol=RTOL, atol=1e-9, err_msg=key)
        np.testing.assert_allclose(h["norm"], np.array(r["norm"]) * SCALE, rtol=RTOL)


@pytest.fixture(scope="module")
def both_features(tiny_run, huge_run):
    return [Study(scan(run), FilmOptions(cache=False), progress=False).points() for run in (tiny_run, huge_run)]


def test_point_measures_of_huge_weights_are_the_same(both_features):
    ref, huge = both_features
    for key in ("point_update", "point_distance"):
        a, b = ref.stats[key], huge.stats[key]
        assert np.array_equal(np.isnan(a), np.isnan(b))
        np.testing.assert_allclose(b[~np.isnan(b)], a[~np.isnan(a)], rtol=RTOL, atol=1e-12, err_msg=key)


@pytest.mark.parametrize("projection", ["pca", "procrustes"])
def test_projected_points_are_the_same_up_to_a_scale_per_block(both_features, projection):
    ref, huge = (project(f, projection, progress=False) for f in both_features)
    assert np.isfinite(huge.xy).all()
    for l in range(ref.xy.shape[1]):
        a, b = ref.xy[:, l].astype(np.float64), huge.xy[:, l].astype(np.float64)
        c = np.vdot(a, b) / np.vdot(a, a)  # the block's scale: 1e38 times a power of two
        assert c > 0
        np.testing.assert_allclose(b, c * a, atol=RTOL * np.abs(b).max())
    for key in ("explained_variance", "motion"):
        np.testing.assert_allclose(huge.stats[key], ref.stats[key], rtol=RTOL, atol=1e-6, err_msg=key)


def test_ordinary_blocks_are_used_bit_for_bit(tmp_path):
    """Only out-of-range blocks are rescaled, by powers of two; ordinary ones stay as they are."""
    store = FeatureStore(tmp_path)
    x = np.random.default_rng(0).standard_normal((3, 5, 4)).astype(np.float32)
    x[1] *= np.float32(3e37)
    x[2] *= np.float32(1e-30)
    store.append(x)
    scale = safe_scale(store.max_abs)
    assert scale[0] == 1 and np.log2(scale[1:]).tolist() == np.round(np.log2(scale[1:])).tolist()
    y = in_safe_range(store)[0]
    assert np.array_equal(y[0], x[0])
    top = np.abs(x[1:]).reshape(2, -1).max(1).astype(np.float64)
    assert scale[1:].tolist() == (2.0 ** -np.floor(np.log2(top))).tolist()  # each brought to [1, 2) by its exponent
    assert np.array_equal(y, x * scale[:, None, None])  # each block exactly times its power of two
    ordinary = FeatureStore(tmp_path / "ordinary")
    ordinary.append(x[:1])
    assert in_safe_range(ordinary) is ordinary


def test_sum_sq_survives_float32_overflow_and_underflow():
    x = np.random.default_rng(1).standard_normal((3, 8, 16)).astype(np.float32)
    x /= np.abs(x).max()  # |x| <= 1: x times 3e38 is finite
    want = np.einsum("lnd,lnd->l", x.astype(np.float64), x.astype(np.float64))
    np.testing.assert_allclose(sum_sq(x), want, rtol=1e-6)
    for s in (1e38, 1e-30):
        np.testing.assert_allclose(sum_sq(x * np.float32(s)) / s**2, want, rtol=1e-5)
    y = -x * np.float32(3e38)  # x - y overflows float32 where |x| > 0.57
    np.testing.assert_allclose(sum_sq(x * np.float32(3e38), y), want * (6e38) ** 2, rtol=1e-5)
