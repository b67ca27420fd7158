"""Each on-disk format, read from a series written by the tool that writes it (tests/makers.py)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from layerfilm.io.formats import open_checkpoint
from layerfilm.io.scan import NO_FINAL_STEP, scan


def read_all(path, fmt) -> dict[str, np.ndarray]:
    with open_checkpoint(path, fmt) as reader:
        return {k: reader.get(k) for k in reader.keys()}


def same(a: dict[str, np.ndarray], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == np.float32
        np.testing.assert_array_equal(a[k], b[k].float().numpy(), err_msg=k)


def test_hf_trainer_folders_and_final_model(hf_run):
    series = scan(hf_run, warn=False)
    assert series.steps == [4, 8, 12]
    assert [c.path.name for c in series.checkpoints] == ["checkpoint-4", "checkpoint-8", "checkpoint-12"]
    assert {c.format for c in series.checkpoints} == {"safetensors"}
    # the final model at the root is not a key frame without --final-step; training_args.bin is ignored
    assert [(c.path, c.problem) for c in series.skipped] == [(hf_run / "model.safetensors", NO_FINAL_STEP)]

    final = scan(hf_run, final_step=100, warn=False)
    assert final.steps == [4, 8, 12, 100] and final.checkpoints[-1].path == hf_run / "model.safetensors"
    # the final model saved at the root is the last checkpoint's weights
    assert all(np.array_equal(a, b) for a, b in zip(read_all(hf_run / "model.safetensors", "safetensors").values(),
                                                   read_all(hf_run / "checkpoint-12", "safetensors").values()))


def test_trainer_state_step_must_match_the_folder_name(hf_run, tmp_path):
    for name in ("checkpoint-4", "checkpoint-8"):
        shutil.copytree(hf_run / name, tmp_path / name)
    shutil.copytree(hf_run / "checkpoint-12", tmp_path / "checkpoint-13")  # trainer_state.json says 12
    series = scan(tmp_path, warn=False)
    assert series.steps == [4, 8]
    assert [(c.path.name, c.problem) for c in series.skipped] == [
        ("checkpoint-13", "its name says step 13 but it records step 12")]


def test_pythia_revisions_sharded_bf16(pythia_run):
    from safetensors.torch import load_file

    series = scan(pythia_run, warn=False)
    assert series.steps == [0, 3, 6]
    assert {(c.format, c.dtype, c.blocks) for c in series.checkpoints} == {("sharded", "BF16", 2)}
    for c in series.checkpoints:
        shards = sorted(c.path.glob("model-*-of-*.safetensors"))
        assert len(shards) >= 2
        same(read_all(c.path, c.format), {k: v for f in shards for k, v in load_file(f).items()})


def test_pytorch_model_bin_fp16(bin_run):
    series = scan(bin_run, warn=False)
    assert series.steps == [2, 4, 6]
    assert {(c.format, c.dtype) for c in series.checkpoints} == {("torch", "F16")}
    for c in series.checkpoints:
        same(read_all(c.path, c.format), torch.load(c.path / "pytorch_model.bin", weights_only=True))


@pytest.mark.parametrize("wrap", ["", "compile", "dp"])
def test_nanogpt_training_dicts_with_wrapper_prefixes(makers, example, tmp_path, wrap):
    """Steps from the names (ckpt_5.pt) or, when names hold none (run_a.pt), from iter_num inside;
    ``_orig_mod.`` (torch.compile) and ``module.`` (DataParallel) are stripped."""
    named = makers.nanogpt_run(example, tmp_path / "named", wrap=wrap)
    unnamed = makers.nanogpt_run(example, tmp_path / "unnamed", wrap=wrap, names="run_", steps=(0, 3, 7))
    assert scan(named, warn=False).steps == [0, 5, 10]
    series = scan(unnamed, warn=False)
    assert series.steps == [0, 3, 7] and [c.path.name for c in series.checkpoints] == ["run_a.pt", "run_b.pt", "run_c.pt"]
    plain = example.GPT(makers.nano_config(example)).state_dict()
    prefix = {"compile": "_orig_mod.", "dp": "module.", "": ""}[wrap]
    for c in series.checkpoints:
        stored = torch.load(c.path, weights_only=True)["model"]
        assert list(stored) == [prefix + k for k in plain]  # as the wrapper wrote them
        got = read_all(c.path, c.format)
        assert sorted(got) == sorted(plain)
        same(got, dict(zip(plain, stored.values())))


def test_lightning_ckpt(lightning_ckpts):
    series = scan(lightning_ckpts, warn=False)
    assert series.steps == [5, 10, 15]
    assert all(c.path.name.startswith("epoch=") and c.format == "lightning" for c in series.checkpoints)
    for c in series.checkpoints:
        stored = torch.load(c.path, weights_only=True)
        assert stored["global_step"] == c.step
        assert all(k.startswith("model.") for k in stored["state_dict"])
        same(read_all(c.path, c.format), {k.removeprefix("model."): v for k, v in stored["state_dict"].items()})


@pytest.mark.parametrize("series", ["pythia_run", "lightning_ckpts", "bin_run"])
def test_render_each_format(request, run_cli, tmp_path, series):
    folder = request.getfixturevalue(series)
    out = tmp_path / "film.webm"
    code, _, err = run_cli("render", folder, "--out", out, "--size", "320x180", "--fps", "2", "--jobs", "1", "--quiet",
                           "--export-points", tmp_path / "pts.npz")
    assert code == 0, err
    assert out.stat().st_size > 0 and "Traceback" not in err
    assert np.load(tmp_path / "pts.npz")["steps"].tolist() == scan(folder, warn=False).steps


def test_scan_reads_no_tensor_data(monkeypatch, pythia_run, lightning_ckpts, run_cli):
    """`scan` works from headers and pickles only: any tensor read would raise here."""
    from layerfilm.io.formats import safetensors_format, torch_format

    def refuse(self, name):
        raise AssertionError(f"scan read tensor {name}")

    monkeypatch.setattr(safetensors_format.SafetensorsReader, "get", refuse)
    monkeypatch.setattr(torch_format.TorchReader, "get", refuse)
    for folder in (pythia_run, lightning_ckpts):
        code, out, err = run_cli("scan", folder)
        assert code == 0, err
        assert out.splitlines()[0].split() == ["step", "format", "path", "blocks", "dtype", "size", "problem"]
        assert len(out.splitlines()) == 4
