"""A lean install: without torch and umap-learn (blocked in a real process, as if not installed), a
safetensors series is filmed with pca, and what needs an extra is one line naming its pip command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LEAN = ("import sys\n"
        "for name in ('torch', 'umap', 'transformers', 'safetensors', 'sklearn'): sys.modules[name] = None\n"
        "from layerfilm.cli import main\n"
        "code = main(sys.argv[1:])\n"
        "assert not [m for m in sys.modules if m.split('.')[0] in ('torch', 'umap') and sys.modules[m] is not None]\n"
        "sys.exit(code)\n")


def lean(*argv: object, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LAYERFILM_CACHE": str(cwd / "cache")}
    return subprocess.run([sys.executable, "-c", LEAN, *map(str, argv)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_safetensors_weights_are_filmed_without_torch_or_umap(tiny_run, tmp_path):
    done = lean("render", tiny_run, "--out", tmp_path / "f.webm", "--points", "16", "--size", "320x180", "--fps", "2",
                "--quiet", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "f.webm").stat().st_size > 0


@pytest.mark.parametrize("argv, line", [
    (("--projection", "umap"), "layerfilm: error: --projection umap needs umap: pip install 'layerfilm[umap]'"),
    (("--features", "activations"), "layerfilm: error: --features activations needs torch: pip install 'layerfilm[torch]'"),
])
def test_what_needs_an_extra_is_one_line_naming_it(tiny_run, tmp_path, argv, line):
    done = lean("render", tiny_run, "--out", tmp_path / "f.webm", *argv, cwd=tmp_path)
    assert (done.returncode, done.stderr.strip().splitlines()) == (2, [line])
    assert not (tmp_path / "f.webm").exists()


def test_a_pytorch_pickle_without_torch_is_a_skipped_checkpoint(makers, example, tmp_path):
    run = makers.nanogpt_run(example, tmp_path / "nano")
    done = lean("scan", run, cwd=tmp_path)
    assert done.returncode == 2
    assert "a PyTorch pickle needs torch: pip install 'layerfilm[torch]'" in done.stdout
