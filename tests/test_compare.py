"""layerfilm.compare: runs against a base run, on real training runs (tiny_run is the base)."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from layerfilm import compare, render_runs
from layerfilm.draw.raster import Style
from layerfilm.errors import OptionsError
from layerfilm.film_options import FilmOptions
from layerfilm.points.weights import WeightSpec

MODEL = str(Path(__file__).resolve().parents[1] / "examples" / "make_checkpoints.py") + ":make_model"
OPTS = FilmOptions(weights=WeightSpec(points=32), cache=False, fps=1.0, jobs=1)  # small films in this process
HOT = 2  # the block trained "at 10x" in `hot_block_run`


def _train(example, tmp_path_factory, name: str, **kw) -> Path:
    """Like tiny_run (same model, batches and seed unless ``kw`` says otherwise), 20 steps."""
    out = tmp_path_factory.mktemp(name)
    cfg = example.Config(n_layer=4, d_model=32, n_head=2, context=32)
    example.train(out, **{"steps": 20, "every": 10, "cfg": cfg, "batch": 16, "log": False, **kw})
    return out


@pytest.fixture(scope="session")
def high_lr_run(example, tmp_path_factory) -> Path:
    """tiny_run's initialisation, 20 steps at 10x its learning rate: steps 0, 10, 20."""
    return _train(example, tmp_path_factory, "high_lr", lr=3e-2)


@pytest.fixture(scope="session")
def same_lr_run(example, tmp_path_factory) -> Path:
    """tiny_run's initialisation and learning rate, a 20-step schedule: steps 0, 10, 20."""
    return _train(example, tmp_path_factory, "same_lr")


@pytest.fixture(scope="session")
def seed_run(example, tmp_path_factory) -> Path:
    """Another seed (another initialisation), saved every 20 steps: 0, 20."""
    return _train(example, tmp_path_factory, "seed1", seed=1, every=20)


@pytest.fixture(scope="session")
def hot_block_run(tiny_run, tmp_path_factory) -> Path:
    """tiny_run's steps 0..30 with block HOT moved 10x as far from its initialisation (W0 + 10 (W_t - W0)):
    by construction the block that differs most from tiny_run."""
    from safetensors.torch import load_file, save_file

    out = tmp_path_factory.mktemp("hot_block")
    first = load_file(str(tiny_run / "step_000000.safetensors"))
    for step in range(0, 31, 10):
        name = f"step_{step:06d}.safetensors"
        state = load_file(str(tiny_run / name))
        state.update({k: first[k] + 10 * (v - first[k]) for k, v in state.items() if k.startswith(f"transformer.h.{HOT}.")})
        save_file(state, str(out / name))
    return out


def test_a_run_against_itself_shares_the_initialisation_and_does_not_diverge(tiny_run):
    c = compare(tiny_run, [tiny_run], OPTS, names="a,b", progress=False)
    assert c.shared_init == {"b": True} and c.kind == {"b": "weights"}
    assert list(c.steps) == list(range(0, 61, 10))
    assert np.all(c.divergence == 0)


def test_the_high_learning_rate_run_diverges_more(tiny_run, high_lr_run, same_lr_run):
    c = compare(tiny_run, [high_lr_run, same_lr_run], OPTS, names="base,high,same", progress=False)
    assert c.shared_init == {"high": True, "same": True}
    assert list(c.steps) == [0, 10, 20]
    assert np.all(c.divergence[:, 0] == 0)  # the same weights at step 0
    final = c.final()
    assert np.all(final[1] > 0)
    assert np.all(final[0] > 2 * final[1]), final  # every block of the 10x run is further from the base


def test_the_block_trained_harder_ranks_first(tiny_run, hot_block_run):
    c = compare(tiny_run, [hot_block_run], OPTS, progress=False)
    assert c.blocks[c.order()[0]] == HOT
    ranked = json.loads(c.to_json())["blocks"]
    assert ranked[0]["block"] == HOT and ranked[0]["name"] == f"transformer.h.{HOT}"
    untouched = [b["final"][hot_block_run.name] for b in ranked[1:]]
    assert untouched == [0.0] * 3  # the other blocks are tiny_run's own


def test_another_seed_is_compared_by_cka_not_neuron_by_neuron(tiny_run, high_lr_run, seed_run):
    opts = FilmOptions(weights=WeightSpec(points=32), cache=False)
    c = compare(tiny_run, [high_lr_run, seed_run], opts, names="base,high,seed1", progress=False,
                probe=lambda: __import__("layerfilm.points.activations", fromlist=["x"]).ActivationSpec(
                    model=MODEL, points=32, seq_len=16, batch_size=2))
    assert c.shared_init == {"high": True, "seed1": False}
    assert c.kind == {"high": "weights", "seed1": "activations"}
    assert list(c.steps) == [0, 20]  # the steps all three saved (seed1: every 20)
    cka = c.divergence[1]
    assert np.all((cka > 0) & (cka <= 1)), cka  # 1 - CKA of different networks' outputs
    table = c.table()
    assert "seed1: another initialisation (neurons do not correspond): by representation, 1 - linear CKA" in table
    assert "high: same initialisation: neuron by neuron" in table


def test_json_has_the_issue_schema(run_cli, tiny_run, high_lr_run):
    code, out, err = run_cli("compare", tiny_run, high_lr_run, "--json", "--points", "16", "--quiet", "--no-cache",
                             "--names", "base,high")
    assert code == 0, err
    got = json.loads(out)
    assert list(got) == ["base", "runs", "shared_init", "steps", "blocks"]
    assert got["base"] == "base" and got["runs"] == ["high"] and got["shared_init"] == {"high": True}
    assert got["steps"] == [0, 10, 20]
    assert sorted(b["block"] for b in got["blocks"]) == [0, 1, 2, 3]
    for b in got["blocks"]:
        assert list(b) == ["block", "name", "divergence", "final"]
        assert len(b["divergence"]["high"]) == 3 and b["final"]["high"] == b["divergence"]["high"][-1]
    finals = [b["final"]["high"] for b in got["blocks"]]
    assert finals == sorted(finals, reverse=True)  # ranked: the block that differs most first


def test_a_broken_checkpoint_is_skipped_in_its_run_only(run_cli, tiny_run, high_lr_run, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(high_lr_run, broken)
    path = broken / "step_000010.safetensors"
    data = bytearray(path.read_bytes())
    data[len(data) // 2:] = b"\xff" * (len(data) - len(data) // 2)  # NaN-like garbage in the tensors
    path.write_bytes(bytes(data))
    code, out, err = run_cli("compare", tiny_run, broken, "--json", "--points", "16", "--quiet", "--no-cache")
    assert code == 0, err
    got = json.loads(out)
    assert "step_000010.safetensors" in err and "skipped" in err
    steps = got["steps"]
    for b in got["blocks"]:
        values = b["divergence"]["broken"]
        if 10 in steps:  # found when read: null in that run
            assert values[steps.index(10)] is None
        assert values[steps.index(20)] is not None and b["final"]["broken"] == values[-1]


def test_bad_names_are_one_line(run_cli, tiny_run):
    code, out, err = run_cli("compare", tiny_run, tiny_run, "--quiet")
    assert code == 2 and err.count("\n") == 1 and "--names" in err
    with pytest.raises(OptionsError, match=r"names=a: 1 name\(s\) for 2 runs"):
        compare(tiny_run, [tiny_run], OPTS, names=["a"], progress=False)


def test_film_of_two_runs_shares_a_basis_and_holds_key_frames(tiny_run, seed_run, tmp_path):
    opts = replace(OPTS, steps=(0, 20))
    res = render_runs([tiny_run, seed_run], tmp_path / "frames", opts, names="base,seed1", progress=False)
    traj = res.trajectories
    assert list(traj.steps) == [0, 10, 20] and res.frames == 3
    assert traj.xy.shape[1] == 8  # 4 blocks x 2 runs, a block's runs side by side
    assert list(traj.blocks) == [0, 0, 1, 1, 2, 2, 3, 3]
    np.testing.assert_array_equal(traj.xy[1, 1::2], traj.xy[0, 1::2])  # seed1 holds step 0 at step 10
    assert not np.array_equal(traj.xy[1, 0::2], traj.xy[0, 0::2])  # the base moves
    assert len(list((tmp_path / "frames").glob("*.png"))) == 3


def test_stability_of_several_runs_is_each_runs_own(run_cli, tiny_run, high_lr_run):
    code, out, err = run_cli("stability", tiny_run, high_lr_run, "--json", "--names", "base,high", "--points", "16",
                             "--quiet")
    assert code == 0, err
    got = json.loads(out)
    assert got["runs"] == ["base", "high"]
    code, alone, err = run_cli("stability", high_lr_run, "--json", "--points", "16", "--quiet")
    assert code == 0, err
    assert got["stability"]["high"] == json.loads(alone)
    code, table, _ = run_cli("stability", tiny_run, high_lr_run, "--points", "16", "--quiet")
    assert table.splitlines()[0].split()[:5] == ["block", f"{tiny_run.name}:", "settles", "at", f"{high_lr_run.name}:"]


# ------------------------------------------------------------------------------------------ stills of several runs


def _areas(res, opts) -> list[np.ndarray]:
    """The drawing area of each panel of ``res.image`` (as the still's renderer places them; no legend)."""
    from layerfilm.draw.raster import Renderer
    from layerfilm.film import still_caption

    R = len(res.labels) // len(res.keys) // len(set(res.panels.blocks))
    lay = Renderer.plan(opts.style, list(res.labels), None, group=R * len(res.keys), caption=still_caption(res.steps),
                        marks=())
    (bw, bh), c = lay.bins, lay.cell
    return [res.image[y * c:(y + bh) * c, x * c:(x + bw) * c] for x, y in lay.origin]


def test_stills_of_runs_share_each_blocks_basis_and_hold_key_frames(tiny_run, high_lr_run, tmp_path):
    """tiny_run (0..60) and high_lr_run (0..20, tiny_run's initialisation): at step 0 both runs' panels are the
    same picture (same neurons, one basis per block); at step 60 high holds its step 20."""
    from layerfilm.compare import stills_of_runs
    from layerfilm.draw.raster import Style

    opts = replace(OPTS, style=Style(1280, 720), legend=False)
    res = stills_of_runs([tiny_run, high_lr_run], None, opts, names="base,high", progress=False)
    assert res.steps == [0, 60] and res.image.shape == (720, 1280, 3) and res.frames.shape == (2, 720, 1280, 3)
    assert list(res.labels[:4]) == ["L0 base · 0", "L0 base · 60", "L0 high · 0", "L0 high · 20"]  # held: shows 20
    clock = list(res.panels.steps)
    xy = res.panels.xy
    np.testing.assert_allclose(xy[0, 0::2], xy[0, 1::2], atol=1e-7)  # one basis: equal initial weights, equal points
    np.testing.assert_array_equal(xy[clock.index(60), 1::2], xy[clock.index(20), 1::2])
    areas = _areas(res, opts)
    for l in range(4):
        base0, base60, high0, high20 = areas[4 * l:4 * l + 4]
        np.testing.assert_array_equal(base0, high0)
        assert not np.array_equal(base60, high20) and not np.array_equal(base0, base60)
        assert base60.any() and high20.any()


def test_stills_cli_of_three_runs(run_cli, tiny_run, high_lr_run, seed_run, tmp_path):
    out = tmp_path / "runs.png"
    code, _, err = run_cli("stills", tiny_run, high_lr_run, seed_run, "--out", out, "--names", "base,high,seed1",
                           "--steps", "0,20", "--points", "32", "--no-cache", "--quiet")
    assert code == 0, err
    assert err.splitlines() == [f"wrote {out} (steps 0, 20)"]
    assert iio.imread(out).shape[:2] == (720, 1280)
    code, _, err = run_cli("stills", tiny_run, "--out", out, "--names", "a")
    assert code == 2 and err.count("\n") == 1 and "--names a: for several runs only" in err
    code, _, err = run_cli("stills", tiny_run, high_lr_run, "--out", out, "--steps", "0,35", "--quiet")
    assert code == 2 and err.count("\n") == 1 and "35 not a key frame" in err  # no run saved step 35


def test_stills_of_runs_name_them_by_letter_where_names_do_not_fit(tiny_run, high_lr_run, seed_run):
    """Three runs of 4 blocks at 640x360: long names do not fit in the panels' labels, letters do, and the
    legend says which letter is which run; another initialisation is never called the same neurons."""
    from layerfilm.compare import stills_of_runs
    from layerfilm.draw.raster import Style

    opts = replace(OPTS, style=Style(640, 360))
    folders = [tiny_run, high_lr_run, seed_run]
    long = ["the_base_run_at_3e-3", "the_run_at_10x_the_lr", "another_seed_at_3e-3"]
    res = stills_of_runs(folders, None, opts, names=long, progress=False)
    assert list(res.labels[:6]) == ["L0 A · 0", "L0 A · 60", "L0 B · 0", "L0 B · 20", "L0 C · 0", "L0 C · 20"]
    assert res.words[:4] == (f"runs: A {long[0]}, B {long[1]}, C {long[2]}", f"base run: {long[0]}",
                             f"{long[1]}: same initialisation, the same neurons as {long[0]}",
                             f"{long[2]}: another initialisation; its neurons do not correspond to {long[0]}'s "
                             "(compare the clouds)")
    assert f"{long[1]} saved no step 60: shows step 20" in res.words
    short = stills_of_runs(folders, None, opts, names="a,b,c", progress=False)
    assert short.labels[:3] == ("L0 a · 0", "L0 a · 60", "L0 b · 0") and short.words[0] == "base run: a"
def test_a_film_of_several_runs_reads_their_tracked_rows_once(tiny_run, high_lr_run, tmp_path, bytes_read):
    """Bytes read stay at most 1.3x the tracked rows of all runs together (issue 27); the shared
    initialisation is decided from the rows the film reads anyway."""
    points = 16
    opts = replace(OPTS, weights=WeightSpec(points=points), style=Style(320, 180))
    res = render_runs([tiny_run, high_lr_run], tmp_path / "frames", opts, names="base,high", progress=False)
    tracked = (7 + 3) * 4 * points * 32 * 4  # key frames of both runs x blocks x points x width x float32
    assert res.keyframes == 7 and bytes_read["get"] == 0
    assert tracked <= bytes_read["rows"] <= 1.3 * tracked, bytes_read["rows"] / tracked


def test_report_of_several_runs_ranks_the_hot_block_and_claims_no_correspondence(tiny_run, hot_block_run, seed_run,
                                                                                tmp_path):
    from layerfilm.reports.runs import report_runs

    opts = replace(OPTS, weights=WeightSpec(points=16))
    res = report_runs([tiny_run, hot_block_run, seed_run], tmp_path / "cmp.md", opts, names="base,hot,seed1",
                      progress=False)
    assert res.comparison.kind == {"hot": "weights", "seed1": "distribution"}
    assert res.comparison.blocks[res.comparison.order()[0]] == HOT
    assert set(res.figures) == {"divergence_1", "settling", "norms"}  # no divergence claimed for another init
    rows = res.figures["divergence_1"].axes[0].get_yticklabels()
    assert [t.get_text() for t in rows][0] == f"1. L{HOT}"  # the heatmap's rows ranked
    assert list(res.stability) == ["base", "hot", "seed1"] and list(res.stability["seed1"].steps) == [0, 20]
    text = (tmp_path / "cmp.md").read_text()
    assert "seed1: another initialisation (neurons do not correspond): by distribution only" in text
    assert "hot: same initialisation: neuron by neuron" in text
    assert "seed1 against base" not in text and "## hot against base" in text
    assert all(p.exists() for p in res.files) and len(res.files) == 4  # the report and its three PNGs


def test_report_of_several_runs_in_html_by_the_cli(run_cli, tiny_run, high_lr_run, tmp_path):
    out = tmp_path / "cmp.html"
    code, _, err = run_cli("report", tiny_run, high_lr_run, "--out", out, "--names", "base,high", "--points", "16",
                           "--quiet", "--no-cache")
    assert code == 0, err
    page = out.read_text()
    assert page.count("<img") == 3 and "<h2>high against base</h2>" in page and "Settling side by side" in page
    code, _, err = run_cli("report", tiny_run, high_lr_run, "--out", tmp_path / "b.html", "--interactive", "--quiet")
    assert code == 2 and err.count("\n") == 1 and "--interactive" in err and not (tmp_path / "b.html").exists()


def test_watch_of_two_growing_runs_equals_their_render_and_keeps_each_runs_stability(tiny_run, seed_run, tmp_path):
    """Two folders filled while watched (the base every 10 steps, seed1 every 20): after each update the
    film of both and their JSON; at the end the film equals `render BASE OTHER` of the same folders."""
    import imageio.v3 as iio

    from layerfilm.live.film import LiveOptions
    from layerfilm.live.runs import RunsWatch

    base, seed = tmp_path / "base", tmp_path / "seed1"
    base.mkdir()
    seed.mkdir()
    opts = replace(OPTS, weights=WeightSpec(points=16), style=Style(320, 180))
    out, js = tmp_path / "live", tmp_path / "runs.json"
    with RunsWatch([base, seed], out, opts, LiveOptions(json=str(js))) as w:
        def add(*files: tuple[Path, Path, int]) -> list[str]:
            for folder, src, step in files:
                shutil.copy(src / f"step_{step:06d}.safetensors", folder)
            for r in w.runs:
                r.ready.poll()
            return w.update()

        lines = add((base, tiny_run, 0), (seed, seed_run, 0))
        assert lines == ["base: key frame: step 0, the first (the film starts at the second)",
                         "seed1: key frame: step 0, the first (the film starts at the second)"]
        assert not out.exists() and not js.exists()  # one step so far: no film
        assert add((base, tiny_run, 10))[0].startswith("base: key frame: step 10, ")
        got = json.loads(js.read_text())
        assert got["runs"] == ["base", "seed1"] and got["shared_init"] == {"seed1": False}
        assert [b["steps"] for b in got["stability"]["base"]] == [[0, 10]] * 4 and got["stability"]["seed1"] == []
        assert len(list(out.glob("*.png"))) == 2
        add((base, tiny_run, 20), (seed, seed_run, 20))
        got = json.loads(js.read_text())
        assert [b["steps"] for b in got["stability"]["seed1"]] == [[0, 20]] * 4 and w.keyframes == 3
    once = render_runs([base, seed], tmp_path / "once", opts, progress=False)
    assert once.keyframes == 3
    for f in sorted((tmp_path / "once").glob("*.png")):
        np.testing.assert_array_equal(iio.imread(out / f.name), iio.imread(f))


def test_watch_of_several_runs_refuses_one_runs_outputs_in_one_line(run_cli, tiny_run, high_lr_run, tmp_path):
    code, _, err = run_cli("watch", tiny_run, high_lr_run, "--out", tmp_path / "f.webm", "--stills", tmp_path / "s.png",
                           "--quiet")
    assert code == 2 and err.count("\n") == 1 and "--stills" in err and not list(tmp_path.iterdir())
    code, _, err = run_cli("watch", tiny_run, "--out", tmp_path / "f.webm", "--names", "a", "--quiet")
    assert code == 2 and err.count("\n") == 1 and "--names" in err and "several runs only" in err


def test_each_runs_heatmap_ranks_the_blocks_by_that_run():
    """Exact construction: run a differs most in block 0, run b only in block 2. The table's ranking
    ties them (each run scaled to its own largest block); run b's heatmap puts block 2 on top."""
    from layerfilm.compare import Comparison
    from layerfilm.reports.figures import divergence_figure

    div = np.zeros((2, 3, 4))
    div[0, 1:] = [0.9, 0.5, 0.3, 0.2]
    div[1, 1:, 2] = 3.0
    div[1, 1, 3] = np.nan  # not read at step 10
    c = Comparison("base", ("a", "b"), {"a": True, "b": True}, {"a": "weights", "b": "weights"}, np.array([0, 10, 20]),
                   np.arange(4), tuple(f"h.{i}" for i in range(4)), div)
    assert list(c.order()) == [0, 2, 1, 3] and list(c.order("b")) == [2, 0, 1, 3] and list(c.order("a")) == [0, 1, 2, 3]
    labels = [t.get_text() for t in divergence_figure(c, "b").axes[0].get_yticklabels()]
    assert labels == ["1. L2", "2. L0", "3. L1", "4. L3"]


def test_a_narrow_colour_scale_labels_its_ticks_apart():
    """1 - CKA of unrelated runs spans about 1% (0.2991 to 0.3030): the colour bar's labels must differ."""
    import io

    from layerfilm.compare import Comparison
    from layerfilm.reports.figures import divergence_figure, plain_text

    div = np.array([[[0.3010, 0.3015, 0.3030, 0.3000], [0.3025, 0.3020, 0.2991, 0.2997]]])
    c = Comparison("base", ("seed1",), {"seed1": False}, {"seed1": "activations"}, np.array([0, 20]), np.arange(4),
                   tuple(f"h.{i}" for i in range(4)), div)
    fig = divergence_figure(c, "seed1")
    with plain_text(fig):
        fig.savefig(io.BytesIO(), format="png")
    bar = fig.axes[1]
    shown = [t.get_text() for t in bar.get_yticklabels() + bar.get_yticklabels(minor=True) if t.get_text()]
    assert len(shown) >= 2 and len(set(shown)) == len(shown), shown
    assert all("$" not in t for t in shown)  # plain text, never math


# ------------------------------------------------------------------------------- real Trainer runs (issue 27)


def _trainer_run(example, out: Path, hot: int | None) -> Path:
    """transformers.Trainer on a tiny 4-block GPT-2 from seed 0 (the same initialisation either way), the
    initial model saved as checkpoint-0/ (the Trainer itself saves none at step 0), then checkpoint-4/ -8/
    -12/; ``hot``: that block's parameters train at 10x the learning rate (their own AdamW group)."""
    import torch
    import transformers as T

    from makers import CONTEXT, batches

    torch.manual_seed(0)
    model = T.GPT2LMHeadModel(T.GPT2Config(vocab_size=256, n_positions=CONTEXT, n_embd=32, n_layer=4, n_head=2))
    lr = 3e-3
    named = list(model.named_parameters())
    in_hot = [p for n, p in named if hot is not None and n.startswith(f"transformer.h.{hot}.")]
    rest = [p for n, p in named if not (hot is not None and n.startswith(f"transformer.h.{hot}."))]
    groups = [{"params": rest, "lr": lr}] + ([{"params": in_hot, "lr": 10 * lr}] if in_hot else [])
    opt = torch.optim.AdamW(groups, lr=lr)
    data = [{"input_ids": x[0], "labels": x[0]} for x in batches(example, 96, batch=1)]
    args = T.TrainingArguments(output_dir=str(out), max_steps=12, save_steps=4, per_device_train_batch_size=8,
                               report_to=[], use_cpu=True, disable_tqdm=True, save_strategy="steps", seed=0,
                               lr_scheduler_type="constant", save_only_model=True)
    trainer = T.Trainer(model=model, args=args, train_dataset=data, optimizers=(opt, None))
    trainer.save_model(str(out / "checkpoint-0"))
    trainer.train()
    return out


@pytest.fixture(scope="session")
def trainer_runs(example, tmp_path_factory) -> tuple[Path, Path]:
    """(base, hot): two real Trainer runs from one initialisation; in ``hot``, block HOT trains at 10x."""
    return (_trainer_run(example, tmp_path_factory.mktemp("trainer_base"), None),
            _trainer_run(example, tmp_path_factory.mktemp("trainer_hot"), HOT))


def test_a_block_trained_at_10x_by_a_real_trainer_ranks_first_and_separates_in_the_film(trainer_runs, tmp_path):
    base, hot = trainer_runs
    c = compare(base, [hot], OPTS, names="base,hot", progress=False)
    assert c.shared_init == {"hot": True} and list(c.steps) == [0, 4, 8, 12]
    assert c.blocks[c.order()[0]] == HOT  # ranked first at the last common step
    final = c.final()[0]
    assert final[list(c.blocks).index(HOT)] > 2 * np.delete(final, list(c.blocks).index(HOT)).max(), final

    res = render_runs([base, hot], tmp_path / "frames", OPTS, names="base,hot", progress=False)
    xy = res.trajectories.xy  # (U, 4 blocks x 2 runs, N, 2): panel 2b is block b of base, 2b + 1 of hot
    U, P, N, _ = xy.shape
    np.testing.assert_allclose(xy[0, 1::2], xy[0, 0::2], rtol=0, atol=1e-6)  # one basis per block: step 0 alike
    # how far the hot run's neurons sit from the same neurons of the base at the last key frame, in
    # units of the block's panel (its extent): the block trained at 10x is the one that visibly separates
    ext = np.ptp(xy[:, 0::2].reshape(U, P // 2, N, 2), axis=(0, 2)).max(axis=-1)  # (blocks,)
    apart = np.linalg.norm(xy[-1, 1::2] - xy[-1, 0::2], axis=-1).mean(axis=-1) / ext
    assert int(np.argmax(apart)) == HOT and apart[HOT] > 2 * np.delete(apart, HOT).max(), apart
