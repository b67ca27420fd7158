"""Scanning a checkpoint folder (layerfilm.io.scan): steps read from file and folder names, sorted numerically;
--every and --steps; files without a step are not key frames; empty and missing folders."""

import shutil

import pytest

from layerfilm.errors import OptionsError, ScanError
from layerfilm.io.scan import parse_steps, scan, step_from_name


@pytest.mark.parametrize(
    "name, step",
    [
        ("step_000100.safetensors", 100),
        ("step-100.safetensors", 100),
        ("checkpoint-2000", 2000),
        ("epoch=0-step=150.ckpt", 150),
        ("ckpt_7.pt", 7),
        ("300.safetensors", 300),
        ("model.safetensors", None),
        ("run3_v2.safetensors", None),  # two bare numbers: ambiguous
    ],
)
def test_step_from_name(name, step):
    assert step_from_name(name) == step


def test_hf_trainer_folders_sort_numerically(tiny_run, tmp_path):
    steps = [5, 20, 100, 150, 1000, 2000, 10000]  # lexical order would be 10000, 1000, 100, 150, 2000, 20, 5
    for step, f in zip(steps, sorted(tiny_run.glob("*.safetensors"))):
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        shutil.copy(f, d / "model.safetensors")
    series = scan(tmp_path)
    assert series.steps == steps
    assert [c.path.name for c in series.checkpoints] == [f"checkpoint-{s}" for s in steps]
    assert all(c.format == "safetensors" for c in series.checkpoints)


def test_every_and_steps(tiny_run):
    assert scan(tiny_run, every=2).steps == [0, 20, 40, 60]
    assert scan(tiny_run, steps=(20, 50)).steps == [20, 30, 40, 50]
    assert scan(tiny_run, steps=(30, None), every=2).steps == [30, 50]
    assert parse_steps("100:") == (100, None)
    with pytest.raises(OptionsError):
        parse_steps("5-9")


def test_file_without_step_is_not_a_keyframe(tiny_run, tmp_path):
    for f in tiny_run.glob("*.safetensors"):
        shutil.copy(f, tmp_path / f.name)
    shutil.copy(tiny_run / "step_000060.safetensors", tmp_path / "model.safetensors")
    with pytest.warns(UserWarning, match="model.safetensors: no training step"):
        series = scan(tmp_path)
    assert "model.safetensors" not in [c.path.name for c in series.checkpoints]
    assert len(series) == 7


def test_empty_and_missing(tmp_path):
    with pytest.raises(ScanError, match="no such folder"):
        scan(tmp_path / "nope")
    with pytest.raises(ScanError, match="empty"):
        scan(tmp_path)
    (tmp_path / "README.md").write_text("hi")
    with pytest.raises(ScanError, match="no checkpoints found"):
        scan(tmp_path)
