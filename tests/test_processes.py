"""Worker processes never run the user's script again (layerfilm.parallel.processes): an unguarded script, a
notebook-like session fed on stdin, and a training script with the Trainer callback, each a real
Python process whose top level prints a line that must appear exactly once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
TOP = "THE SCRIPT'S TOP LEVEL RAN"


def python(script: str, cwd: Path, stdin: bool = False) -> subprocess.CompletedProcess:
    """``script`` run as users run it: a file ``python script.py``, or fed to ``python -`` on stdin."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LAYERFILM_CACHE": str(cwd / "cache")}
    if stdin:
        return subprocess.run([sys.executable, "-"], input=script, cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=600)
    (cwd / "script.py").write_text(script)
    return subprocess.run([sys.executable, "script.py"], cwd=cwd, env=env, capture_output=True, text=True, timeout=600,
                          stdin=subprocess.DEVNULL)


RENDER = f"""
import layerfilm
print({TOP!r}, flush=True)
result = layerfilm.render({{run!r}}, "film.webm", layerfilm.FilmOptions(
    jobs=2, fps=4, weights=layerfilm.WeightSpec(points=16), style=layerfilm.Style(width=320, height=180)))
print("frames", result.frames)
"""


def test_an_unguarded_script_renders_with_worker_processes(tiny_run, tmp_path):
    done = python(RENDER.format(run=str(tiny_run)), tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count(TOP) == 1
    assert "frames 25" in done.stdout and (tmp_path / "film.webm").stat().st_size > 0


def test_a_session_fed_on_stdin_renders_with_worker_processes(tiny_run, tmp_path):
    done = python(RENDER.format(run=str(tiny_run)), tmp_path, stdin=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count(TOP) == 1 and "frames 25" in done.stdout


TRAIN = f"""
import torch
import transformers as T
from layerfilm.callbacks import LayerfilmCallback

print({TOP!r}, flush=True)
torch.manual_seed(0)
model = T.GPT2LMHeadModel(T.GPT2Config(vocab_size=256, n_positions=16, n_embd=16, n_layer=2, n_head=2))
data = [{{"input_ids": torch.randint(0, 256, (16,)), "labels": torch.randint(0, 256, (16,))}} for _ in range(96)]
args = T.TrainingArguments(output_dir="run", max_steps=8, save_steps=4, per_device_train_batch_size=8, report_to=[],
                           use_cpu=True, disable_tqdm=True, save_strategy="steps", seed=0)
callback = LayerfilmCallback(out="film.webm", points=16, size=(320, 180), fps=2, export_points="points.npz", wait=True)
T.Trainer(model=model, args=args, train_dataset=data, callbacks=[callback]).train()
"""


@pytest.mark.slow
def test_a_training_script_without_a_main_guard_gets_its_film(tmp_path):
    done = python(TRAIN, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count(TOP) == 1
    assert list(np.load(tmp_path / "points.npz")["steps"]) == [4, 8]
    assert "exit code" not in done.stderr
