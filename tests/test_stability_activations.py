"""`layerfilm stability` / `report` with --features activations: activation statistics beside the weight measures.

Two fixtures: an exact construction (blocks that multiply their input by g * an orthogonal matrix, so
the norm grows by exactly g per block) and the tiny real training run, whose statistics are recomputed
here independently with plain torch forward hooks on the bundled probe.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
import torch.nn as nn
from safetensors.torch import save_file

from conftest import ROOT
from layerfilm.io.scan import scan
from layerfilm.points.act_stats import HIST_EDGES, N_BINS, ActivationStats
from layerfilm.points.activations import DEFAULT_PROBE, ActivationSpec
from layerfilm.reports.figures import activation_hot_figure, activation_near_zero_figure, activation_norm_figure, save_figure
from layerfilm.study import measure_activations

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


class ScaleNet(nn.Module):
    """Embedding, then 4 blocks with no residual: x -> x @ (g Q)^T, Q orthogonal, so ||out|| = g ||in||."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, DIM)
        self.blocks = nn.ModuleList(Scale() for _ in range(4))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        for block in self.blocks:
            x = block(x)
        return x


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
