"""The optimizer state beside the weights (layerfilm.points.optimizer): read without running code, mapped to
parameter names only when shapes prove it, and the update ratio checked against torch's own optimizer and
against the updates AdamW really made."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from layerfilm.points.optimizer import OptimizerStateError, map_params, pickle_params
from test_scan import Payload


def records(run_cli, folder, *extra) -> tuple[dict[int, dict], str]:
    code, out, err = run_cli("stability", folder, "--json", "--no-cache", "--quiet", *extra)
    assert code == 0, err
    return {r["block"]: r for r in json.loads(out)}, err


def torch_ratios(model: torch.nn.Module, opt: torch.optim.Optimizer, prefix: str, blocks: int) -> dict[str, list[float]]:
    """Each block's update ratio, RMS gradient and first-moment norm over its matrices, computed by torch
    from ``opt`` (its state mapped to ``model``'s parameters by torch's own load_state_dict)."""
    out: dict[str, list[float]] = {"update_ratio": [], "grad_rms": [], "m_norm": []}
    group_of = {p: g for g in opt.param_groups for p in g["params"]}
    for b in range(blocks):
        upd = w = v_sum = m_sq = n = 0.0
        for name, p in model.named_parameters():
            if not name.startswith(f"{prefix}{b}.") or p.ndim != 2:
                continue
            s, g = opt.state[p], group_of[p]
            (b1, b2), step = g["betas"], float(s["step"])
            m = s["exp_avg"].double() / (1 - b1 ** step)
            v = s["exp_avg_sq"].double() / (1 - b2 ** step)
            upd += float((g["lr"] * m / (v.sqrt() + g["eps"])).norm()) ** 2
            w += float(p.double().norm()) ** 2
            v_sum, m_sq, n = v_sum + float(v.sum()), m_sq + float(m.norm()) ** 2, n + p.numel()
        out["update_ratio"].append(math.sqrt(upd / w))
        out["grad_rms"].append(math.sqrt(v_sum / n))
        out["m_norm"].append(math.sqrt(m_sq))
    return out


def close(got: list, want: list, rel: float = 1e-6) -> bool:
    return all(g is not None and math.isclose(g, x, rel_tol=rel, abs_tol=1e-12) for g, x in zip(got, want))


@pytest.mark.slow
def test_trainer_update_ratio_equals_torch_from_the_state(hf_run, run_cli, tmp_path):
    import transformers as T

    blocks, err = records(run_cli, hf_run)
    for ckpt in sorted(hf_run.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1])):
        model = T.AutoModelForCausalLM.from_pretrained(ckpt)
        trainer = T.Trainer(model=model, args=T.TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True))
        opt = trainer.create_optimizer()
        opt.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True))
        want = torch_ratios(model, opt, "transformer.h.", len(blocks))
        t = blocks[0]["steps"].index(int(ckpt.name.split("-")[1]))
        for key, values in want.items():
            assert close([blocks[b][key][t] for b in range(len(blocks))], values), (ckpt.name, key)
    assert all(r["update_ratio"][0] > 0 for r in blocks.values())


def test_update_ratio_is_the_update_adamw_made(example, tmp_path, run_cli):
    """Trained in float64 with AdamW at a constant lr and no weight decay: the measured ratio of step k is
    ||W_k - W_(k-1)|| / ||W_k|| over each block's matrices, as the training recorded it."""
    torch.manual_seed(0)
    cfg = example.Config(n_layer=2, d_model=16, n_head=2, context=16)
    model = example.GPT(cfg).double()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    data = example.corpus(20_000)
    matrices = [[p for n, p in model.named_parameters() if n.startswith(f"transformer.h.{b}.") and p.ndim == 2]
                for b in range(2)]
    recorded = []
    for step in range(1, 5):
        before = [[p.detach().clone() for p in ps] for ps in matrices]
        ix = torch.randint(len(data) - 17, (4,))
        x, y = torch.stack([data[i:i + 16] for i in ix]), torch.stack([data[i + 1:i + 17] for i in ix])
        F.cross_entropy(model(x).view(-1, cfg.vocab), y.view(-1)).backward()
        opt.step()
        opt.zero_grad()
        recorded.append([math.sqrt(sum(float((p.detach() - q).norm()) ** 2 for p, q in zip(ps, qs))
                                   / sum(float(p.detach().norm()) ** 2 for p in ps)) for ps, qs in zip(matrices, before)])
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "iter_num": step},
                   tmp_path / f"ckpt_{step}.pt")
    blocks, _ = records(run_cli, tmp_path)
    for b in range(2):
        assert close(blocks[b]["update_ratio"], [r[b] for r in recorded]), b
        assert all(1e-4 < r < 1 for r in blocks[b]["update_ratio"])


def test_nanogpt_and_lightning_files(makers, example, lightning_ckpts, tmp_path, run_cli):
    nano = makers.nanogpt_run(example, tmp_path / "nano", wrap="compile")
    blocks, err = records(run_cli, nano)
    assert [blocks[0]["update_ratio"][0]] == [None] and all(v > 0 for v in blocks[0]["update_ratio"][1:])
    assert err.count("no step taken yet") == 1  # step 0: an empty state, one line
    model = example.GPT(makers.nano_config(example))
    state = torch.load(nano / "ckpt_10.pt", weights_only=True)
    model.load_state_dict({k.removeprefix("_orig_mod."): v for k, v in state["model"].items()})
    opt = torch.optim.AdamW(model.parameters())
    opt.load_state_dict(state["optimizer"])
    want = torch_ratios(model, opt, "transformer.h.", 2)
    for key, values in want.items():
        assert close([blocks[b][key][-1] for b in range(2)], values), key

    blocks, err = records(run_cli, lightning_ckpts)
    assert "optimizer" not in err
    last = torch.load(sorted(lightning_ckpts.glob("*step=15.ckpt"))[0], weights_only=True)
    model = example.GPT(makers.nano_config(example))
    model.load_state_dict({k.removeprefix("model."): v for k, v in last["state_dict"].items()})
    opt = torch.optim.AdamW(model.parameters())
    opt.load_state_dict(last["optimizer_states"][0])
    want = torch_ratios(model, opt, "transformer.h.", 2)
    for key, values in want.items():
        assert close([blocks[b][key][-1] for b in range(2)], values), key


@pytest.fixture
def hf_copy(hf_run, tmp_path):
    dest = tmp_path / "run"
    shutil.copytree(hf_run, dest)
    return dest


def test_save_only_model_hostile_and_mismatched_states(hf_copy, run_cli, tmp_path):
    ckpts = sorted(hf_copy.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))  # 4, 8, 12
    marker = tmp_path / "payload-ran"
    torch.save({"state": {}, "param_groups": [], "hook": Payload(marker)}, ckpts[0] / "optimizer.pt")
    state = torch.load(ckpts[1] / "optimizer.pt", weights_only=True)
    state["state"][3]["exp_avg"] = torch.zeros(7, 5)
    torch.save(state, ckpts[1] / "optimizer.pt")
    blocks, err = records(run_cli, hf_copy)
    assert not marker.exists()
    lines = [line for line in err.splitlines() if "checkpoint-" in line and "of 3 checkpoints" in line]
    assert len(lines) == 2, err
    assert "unsafe pickle, refused without running it" in lines[0]
    assert "does not match the model's" in lines[1] and "by shape" in lines[1]
    assert all(r["update_ratio"][:2] == [None, None] and r["update_ratio"][2] is not None for r in blocks.values())

    for ckpt in ckpts:  # what save_only_model writes: the weights, no optimizer, scheduler or RNG state
        for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
            (ckpt / name).unlink()
    blocks, err = records(run_cli, hf_copy)
    assert all(set(r["update_ratio"] + r["grad_rms"] + r["m_norm"]) == {None} for r in blocks.values())
    assert err.count("no optimizer.pt: saved with save_only_model?") == 1


def test_sharded_state_is_one_line(makers, example, tmp_path, run_cli):
    run = makers.bin_folders_run(example, tmp_path / "bins")
    for ckpt in run.glob("checkpoint-*"):
        (ckpt / "global_step2").mkdir()
        (ckpt / "global_step2" / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"")
    blocks, err = records(run_cli, run)
    assert err.count("sharded optimizer state (DeepSpeed ZeRO or torch DCP) is not supported") == 1
    assert "every checkpoint" in err and all(set(r["update_ratio"]) == {None} for r in blocks.values())


def test_rules_that_fit_and_disagree_are_ambiguous(tmp_path):
    """Three same-shaped parameters in groups of 2 and 1: 'in order' and the Trainer's decay rule (a bias
    last) both fit by shape and name different parameters, so nothing is mapped."""
    net = torch.nn.Module()
    net.a, net.b, net.c = (torch.nn.Parameter(torch.randn(3)) for _ in range(3))
    params = dict(net.named_parameters())
    opt = torch.optim.AdamW([{"params": [params["b"], params["c"]]}, {"params": [params["a"]]}])
    sum(p.sum() for p in params.values()).backward()
    opt.step()
    torch.save({"model": {"x.bias": net.a.data, "y.w": net.b.data, "z.w": net.c.data}, "optimizer": opt.state_dict()},
               tmp_path / "ckpt_1.pt")
    obj = torch.load(tmp_path / "ckpt_1.pt", weights_only=True)
    with pytest.raises(OptimizerStateError, match="ambiguous"):
        map_params(pickle_params(obj, tmp_path), obj["optimizer"], tmp_path)
    # one rule fits (one group, in order): mapped, and every name proved by shape
    opt1 = torch.optim.AdamW(list(params.values())[:3])
    opt1.step()
    assert list(map_params(pickle_params(obj, tmp_path), opt1.state_dict() | {"state": {}}, tmp_path)) == ["x.bias", "y.w", "z.w"]



@pytest.mark.slow
def test_bar_and_report_show_the_update_ratio(makers, example, tmp_path, run_cli):
    from layerfilm.draw.overlay import FLAGGED, RATIO_SCALE
    from layerfilm.draw.raster import TRACK
    from layerfilm.film import film_frames, with_update_ratio
    from layerfilm.film_options import FilmOptions
    from layerfilm.study import Study

    nano = makers.nanogpt_run(example, tmp_path / "nano")
    opts = FilmOptions(bar="update-ratio", cache=False)
    traj = with_update_ratio(Study.open(nano, opts, progress=False))
    ratio = traj.stats["update_ratio"]  # (T, L): step 0 has no state
    frames = film_frames(traj, opts)
    o = frames.overlay
    (w, h), c = o.size, o.r.cell
    for k in range(len(traj.steps)):
        img = frames.draw(k, 0.0)
        for l, (ox, oy) in enumerate(o.r.panels):
            row = img[oy * c + h - o.bar, ox * c: ox * c + w]
            lit = int(np.sum(np.any(row != TRACK.astype(np.uint8), axis=1)))
            if not np.isfinite(ratio[k, l]):
                assert lit == 0
                continue
            level = math.log10(ratio[k, l] / RATIO_SCALE[0]) / math.log10(RATIO_SCALE[1] / RATIO_SCALE[0])
            assert lit == round(level * w) and ratio[k, l] > 1e-2  # this run's ratios are high: orange
            assert (row[0] == FLAGGED.astype(np.uint8)).all()

    code, _, err = run_cli("report", nano, "--out", tmp_path / "r.md", "--quiet")
    text = (tmp_path / "r.md").read_text()
    assert code == 0 and "## What the optimizer saw" in text and (tmp_path / "r_update_ratio.png").is_file()
    assert "Update ratio outside 1e-4..1e-2: L0 (high), L1 (high)." in text

    bare = tmp_path / "bare"  # the same run saved without the optimizer
    bare.mkdir()
    for f in nano.glob("*.pt"):
        state = torch.load(f, weights_only=True)
        del state["optimizer"]
        torch.save(state, bare / f.name)
    code, _, err = run_cli("report", bare, "--out", tmp_path / "b.md", "--quiet")
    text = (tmp_path / "b.md").read_text()
    assert code == 0 and "optimizer saw" not in text and not (tmp_path / "b_update_ratio.png").exists()
    assert "No optimizer section: " in text and ": every checkpoint: no optimizer state in it." in text
    assert err.count("no optimizer state in it") == 1


def test_spikes_and_flags_by_their_definition():
    from layerfilm.points.optimizer import OptimizerMeasures

    r = np.array([[np.nan, 1e-3, 2e-5], [1e-3, 2e-3, 3e-5], [2e-2, 1e-3, 2e-5], [1e-3, 9e-3, 1e-5]])
    m = OptimizerMeasures(r, r, r)
    # block 0: 2e-2 >= 10 x median(1e-3); block 1: 9e-3 < 10 x median(1e-3, 2e-3, 1e-3) = 1e-2
    assert m.spikes().tolist() == [[False] * 3, [False] * 3, [True, False, False], [False] * 3]
    assert m.flags() == [None, None, "low"]
    assert [rec["update_spikes"] for rec in m.records(np.array([0, 10, 20, 30]))] == [[20], [], []]


def test_an_lr_spike_is_marked_on_the_timeline(makers, example, tmp_path, run_cli):
    """A real run whose step 6 alone takes a 100x learning rate: that step is the spike of every block, in
    the JSON and as the film timeline's red mark."""
    from layerfilm.draw.raster import MARK
    from layerfilm.film import film_frames, film_legend, film_timeline, with_update_ratio
    from layerfilm.film_options import FilmOptions
    from layerfilm.study import Study

    torch.manual_seed(0)
    cfg = makers.nano_config(example, width=16)
    model = example.GPT(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4)
    for it, (x, y) in enumerate(makers.batches(example, 8, batch=2), 1):
        for g in opt.param_groups:
            g["lr"] = 3e-2 if it == 6 else 3e-4
        F.cross_entropy(model(x).view(-1, cfg.vocab), y.view(-1)).backward()
        opt.step()
        opt.zero_grad()
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "iter_num": it}, tmp_path / f"ckpt_{it}.pt")
    blocks, _ = records(run_cli, tmp_path)
    assert [r["update_spikes"] for r in blocks.values()] == [[6], [6]]
    opts = FilmOptions(bar="update-ratio", cache=False)
    traj = with_update_ratio(Study.open(tmp_path, opts, progress=False))
    legend = film_legend(traj, opts, bar=True)
    assert legend.marks == (film_timeline(traj.steps, opts).position(5, 0.0),)
    frames = film_frames(traj, opts)
    img = frames.draw(7, 0.0)
    x0, x1, y = frames.renderer._timeline
    x = x0 + int(round(legend.marks[0] * (x1 - x0 - 1)))
    assert (img[y, x] == MARK).all() and not (img[y, x0:x1] == MARK).all(axis=1).sum() > 3


def test_features_updates_are_the_rows_of_adams_direction(makers, example, tmp_path, run_cli):
    from layerfilm.film_options import FilmOptions
    from layerfilm.points.weights import WeightSpec
    from layerfilm.study import Study

    nano = makers.nanogpt_run(example, tmp_path / "nano", steps=(0, 2, 4))
    with pytest.warns(UserWarning, match="ckpt_0.pt: the optimizer state is empty"):  # step 0: skipped, one line
        f = Study.open(nano, FilmOptions(weights=WeightSpec(points=16, source="updates"), cache=False),
                       progress=False).points()
    assert f.steps.tolist() == [2, 4]
    for t, step in enumerate(f.steps):
        state = torch.load(nano / f"ckpt_{step}.pt", weights_only=True)["optimizer"]
        group = state["param_groups"][0]
        (b1, b2), names = group["betas"], [n for n, _ in example.GPT(makers.nano_config(example)).named_parameters()]
        for l in range(2):
            s = state["state"][names.index(f"transformer.h.{l}.mlp.c_fc.weight")]
            m = s["exp_avg"].double() / (1 - b1 ** float(s["step"]))
            v = s["exp_avg_sq"].double() / (1 - b2 ** float(s["step"]))
            want = (m / (v.sqrt() + group["eps"]))[torch.from_numpy(f.point_ids[l])].float().numpy()
            np.testing.assert_allclose(f.store[t][l], want, rtol=1e-5, atol=1e-7)
    code, _, err = run_cli("stability", nano, "--features", "updates")
    assert code == 2 and "--features updates: films the optimizer's updates (render); stability measures" in err


def test_stills_write_the_update_ratio_heatmap_beside_them(makers, example, tmp_path, run_cli):
    """A nanoGPT run (AdamW state in each ckpt_N.pt): `stills` writes the heatmap beside the still, and its
    cells are the update ratios `stability --json` reports (grey at step 0: no step taken yet)."""
    import imageio.v3 as iio

    from layerfilm import FilmOptions, Style, WeightSpec, stills

    nano = makers.nanogpt_run(example, tmp_path / "nano")
    out = tmp_path / "out" / "s.png"
    out.parent.mkdir()
    code, _, err = run_cli("stills", nano, "--out", out, "--size", "320x180", "--points", "16", "--quiet")
    assert code == 0, err
    heat = out.with_name("s_update_ratio.png")
    assert f"wrote {heat} (update ratio per block and step, from the optimizer state)" in err.splitlines()
    assert sorted(p.name for p in out.parent.iterdir()) == ["s.png", "s_update_ratio.png"]
    assert iio.imread(heat).shape[0] > 300
    blocks, _ = records(run_cli, nano)
    want = np.array([[math.nan if v is None else v for v in blocks[b]["update_ratio"]] for b in sorted(blocks)])
    res = stills(nano, opts=FilmOptions(weights=WeightSpec(points=16), style=Style(320, 180)), progress=False)
    assert res.files == () and res.notes == ()
    cells = res.update_ratio.axes[0].collections[0].get_array()
    np.testing.assert_allclose(np.ma.filled(cells.astype(float), np.nan).reshape(want.shape), want, rtol=1e-9)
    assert np.isnan(want[:, 0]).all() and (want[:, 1:] > 0).all()


def test_stills_without_optimizer_state_say_why_and_measure_nothing(makers, example, frozen_run, tmp_path, run_cli,
                                                                    monkeypatch):
    """Safetensors files, and training dicts saved without their optimizer: no heatmap, one line why, and
    the run is not measured (the look for a state reads no tensor)."""
    from layerfilm.study import Study

    def measured(*args, **kwargs):
        raise AssertionError("the run was measured")

    monkeypatch.setattr(Study, "block_measures", measured)
    weights_only = tmp_path / "weights_only"
    weights_only.mkdir()
    for f in makers.nanogpt_run(example, tmp_path / "nano").glob("*.pt"):
        state = torch.load(f, weights_only=True)
        del state["optimizer"]
        torch.save(state, weights_only / f.name)
    small = ("--size", "320x180", "--points", "16", "--quiet")
    for run, why in ((frozen_run, "no optimizer state (a safetensors file holds weights only)"),
                     (weights_only, "no optimizer state in it")):
        out = tmp_path / f"{run.name}.png"
        code, _, err = run_cli("stills", run, "--out", out, *small)
        assert code == 0, err
        assert err.splitlines() == [f"wrote {out} (steps 0, {40 if run is frozen_run else 10})",
                                    f"note: no update-ratio heatmap: {run}: every checkpoint: {why}"]
        assert not out.with_name(f"{out.stem}_update_ratio.png").exists()
