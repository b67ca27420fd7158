"""layerfilm.study: one Run per study. Every command scans alike (--blocks, --final-step, --strict), the
film's fps is the film's, a second command on the same folder and options reads no checkpoint, each
tensor is read at most once per pass, and block chunks do not change any result (issue 12)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import layerfilm
from layerfilm.draw.raster import Style
from layerfilm.film_options import FilmOptions
from layerfilm.points.whole import BlockStats
from layerfilm.study import Study

STEPS = ("step_000000", "step_000020", "step_000040", "step_000060")
SMALL = ("--size", "320x180", "--points", "16", "--quiet")


@pytest.fixture
def stage_run(tiny_run, tmp_path) -> Path:
    """The tiny run with its blocks renamed ``net.stageN.``, which no built-in convention knows, and its
    last checkpoint also saved at the root as a final model without a step in its name."""
    from safetensors.numpy import load_file, save_file

    out = tmp_path / "stages"
    out.mkdir()
    for name in STEPS:
        tensors = load_file(tiny_run / f"{name}.safetensors")
        renamed = {k.replace("transformer.h.", "net.stage"): v for k, v in tensors.items()}
        save_file(renamed, out / f"{name}.safetensors")
    save_file(renamed, out / "model.safetensors")
    return out


BLOCKS = ("--blocks", r"net\.stage(\d+)\.")


@pytest.mark.parametrize("command", ["stability", "stills", "report"])
def test_every_command_takes_blocks_final_step_and_strict_like_render(stage_run, tmp_path, run_cli, command):
    out = {"stability": (), "stills": ("--out", tmp_path / "s.png"), "report": ("--out", tmp_path / "r.html")}[command]
    code, _, err = run_cli(command, stage_run, *out, "--points", "16", "--quiet")
    assert code == 2 and "no decoder blocks found" in err
    code, stdout, err = run_cli(command, stage_run, *out, *BLOCKS, "--final-step", "80", "--points", "16", "--quiet",
                                *(("--json",) if command == "stability" else ()))
    assert code == 0, err
    if command == "stability":
        rows = json.loads(stdout)
        assert len(rows) == 4 and rows[0]["steps"] == [0, 20, 40, 60, 80]
    (stage_run / "step_000010.safetensors").write_bytes(b"\x08" + b"\0" * 7 + b"{broken")
    code, _, err = run_cli(command, stage_run, *out, *BLOCKS, "--strict", "--points", "16", "--quiet")
    assert code == 2 and "step_000010.safetensors" in err and "--strict" in err


def test_the_films_fps_is_the_one_in_film_options(tiny_run, tmp_path):
    import imageio_ffmpeg

    out = tmp_path / "f.webm"
    opts = FilmOptions(fps=4, style=Style(320, 180), steps=(0, 40), cache=False)
    res = layerfilm.render(tiny_run, out, opts, progress=False)
    assert res.keyframes == 5 and res.frames == (5 - 1) * 4 + 1
    frames, seconds = imageio_ffmpeg.count_frames_and_secs(str(out))
    assert frames == 17 and seconds == pytest.approx(17 / 4, abs=0.01)


def block_tensor_bytes(folder: Path) -> int:
    from safetensors import safe_open

    total = 0
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(f, "np") as st:
            total += sum(st.get_slice(k).get_shape() and np.prod(st.get_slice(k).get_shape()) * 4
                         for k in st.keys() if k.startswith("transformer.h."))
    return int(total)


def test_render_stills_report_stability_read_each_tensor_once(tiny_run, tmp_path, run_cli, bytes_read):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    cache = ("--cache", tmp_path / "cache")
    assert run_cli("render", run, "--out", tmp_path / "f.webm", *cache, *SMALL)[0] == 0
    rows = bytes_read["rows"]
    assert bytes_read["get"] == 0 and rows == 7 * 4 * 16 * 32 * 4  # checkpoints x blocks x points x width x f32
    assert run_cli("stills", run, "--out", tmp_path / "s.png", *cache, *SMALL)[0] == 0
    assert bytes_read == {"get": 0, "rows": rows}  # from the cache
    assert run_cli("report", run, "--out", tmp_path / "r.html", *cache, *SMALL)[0] == 0
    assert bytes_read["get"] == block_tensor_bytes(run)  # every block tensor, once
    code, stdout, _ = run_cli("stability", run, "--json", *cache, "--points", "16", "--quiet")
    assert code == 0 and len(json.loads(stdout)) == 4
    assert bytes_read["get"] == block_tensor_bytes(run) and bytes_read["rows"] == rows


def test_block_chunks_change_no_result(frozen_run, tmp_path, monkeypatch):
    """One block per chunk (a tiny memory budget) against all blocks in one chunk: the same bytes."""
    results = {}
    for budget in ("0.0001", "512"):
        monkeypatch.setenv("LAYERFILM_CHUNK_MB", budget)
        for projection in ("pca", "procrustes"):
            run = Study.open(frozen_run, FilmOptions(projection=projection, cache=False), progress=False)
            results[budget, projection] = run.stability()
    for projection in ("pca", "procrustes"):
        a, b = results["0.0001", projection], results["512", projection]
        np.testing.assert_array_equal(a.trajectories.xy, b.trajectories.xy)
        for name in ("relative_update", "distance_to_final", "norm", "param_norm", "cka_to_final", "hist",
                     "hist_edges", "motion", "settle_index"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
        for name in a.trajectories.stats:
            np.testing.assert_array_equal(a.trajectories.stats[name], b.trajectories.stats[name], err_msg=name)


def test_chunks_are_sized_to_the_budget(frozen_run, monkeypatch):
    from layerfilm.io.scan import scan
    from layerfilm.points.weights import WeightSpec, plan
    from layerfilm.study import block_chunks

    wp = plan(scan(frozen_run), WeightSpec(points=64))
    per_block = 7 * 64 * wp.shape[1] * 4
    assert block_chunks(wp, 7, budget_mb=per_block * 2 / 2**20) == [(0, 1), (2, 3)]
    assert block_chunks(wp, 7, budget_mb=1e-9) == [(0,), (1,), (2,), (3,)]
    whole = per_block + BlockStats.COPIES * wp.block_bytes
    assert block_chunks(wp, 7, whole_bytes=wp.block_bytes, budget_mb=whole * 3 / 2**20) == [(0, 1, 2), (3,)]
