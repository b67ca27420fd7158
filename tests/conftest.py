"""Session fixtures: small real training runs, made once per test session (seconds each)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_example(name: str):
    """Import a script from examples/ as a module (examples are not part of the package)."""
    spec = importlib.util.spec_from_file_location(f"examples_{name}", ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The modules holding tests marked slow first (each kept whole, in its order): their long tests start
    early instead of keeping one pytest-xdist worker busy while the other has nothing left to run."""
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)  # stable: every other order is kept


@pytest.fixture(autouse=True, scope="session")
def _one_thread_each():
    """One CPU thread for torch in each test process, and OMP_NUM_THREADS=1 for every process a test starts
    (the CLI, training scripts, layerfilm's own workers), as examples/make_checkpoints.py trains from its
    command line. pytest-xdist runs one worker per core, the models are tiny and gain nothing from
    threads, and two threads each wait on each other: tiny_run trained in 83 s with 2 threads on a busy
    2-core machine, in 1.4 s with 1. NumPy's BLAS in this process keeps its threads (loaded before)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def example():
    """examples/make_checkpoints.py as a module: GPT, Config, train(), corpus()."""
    return load_example("make_checkpoints")


@pytest.fixture(scope="session")
def tiny_run(example, tmp_path_factory) -> Path:
    """A real training run: 4 blocks, width 32, 60 steps of AdamW on stdlib source, a checkpoint
    every 10 steps (step 0 included): step_000000.safetensors ... step_000060.safetensors."""
    out = tmp_path_factory.mktemp("tiny_run")
    example.train(out, steps=60, every=10, cfg=example.Config(n_layer=4, d_model=32, n_head=2, context=32),
                  batch=16, log=False)
    return out


STILL_LR = 1e-7  # `still_run`'s learning rate: the weights barely move


@pytest.fixture(scope="session")
def still_run(example, tmp_path_factory) -> Path:
    """A real training run that learns (almost) nothing: `tiny_run`'s model at lr 1e-7 (warmup and cosine
    decay as the example has them), 12 steps of batch 4, a checkpoint every 3 (step 0 included): every
    block changes by about 1e-6 of its norm, far below layerfilm.stability.BARELY_MOVED."""
    out = tmp_path_factory.mktemp("still_run")
    example.train(out, steps=12, every=3, cfg=example.Config(n_layer=4, d_model=32, n_head=2, context=32),
                  batch=4, lr=STILL_LR, log=False)
    return out


@pytest.fixture
def run_cli(capsys):
    """Run the CLI in-process: returns (exit code, stdout, stderr)."""
    from layerfilm.cli.commands import main

    def run(*argv: str):
        capsys.readouterr()  # what came before (a session fixture made in this test's setup) is not the command's
        code = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run


# Series written by the real tools for the format tests (builders in tests/makers.py; seconds each).
@pytest.fixture(scope="session")
def makers():
    sys.path.insert(0, str(ROOT / "tests"))
    import makers

    return makers


def _series(builder: str):
    """A session fixture: the folder that ``makers.<builder>`` writes."""

    @pytest.fixture(scope="session")
    def fixture(makers, example, tmp_path_factory) -> Path:
        return getattr(makers, builder)(example, tmp_path_factory.mktemp(builder))

    return fixture


hf_run = _series("hf_trainer_run")  # Trainer: checkpoint-4/ -8/ -12/ + final model at the root
pythia_run = _series("pythia_sharded_run")  # step0/ step3/ step6/: sharded bf16 GPT-NeoX
bin_run = _series("bin_folders_run")  # checkpoint-N/pytorch_model.bin, fp16 Llama
lightning_ckpts = _series("lightning_run")  # epoch=E-step=N.ckpt
lightning_logged = _series("lightning_logged_run")  # the same with a CSVLogger: lightning_logs/version_0/metrics.csv
lightning_encoder = _series("lightning_encoder_run")  # epoch=0-step=N.ckpt of an nn.TransformerEncoder model

@pytest.fixture(autouse=True, scope="session")
def _cache_in_tmp(tmp_path_factory):
    """The key-frame cache (layerfilm.io.cache) of the whole session lives in a temporary folder, never ~/.cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LAYERFILM_CACHE", str(tmp_path_factory.mktemp("layerfilm-cache")))
        yield


FROZEN_STEP = 20  # in `frozen_run`, blocks FROZEN_BLOCKS stop changing from this step on
FROZEN_BLOCKS = (0, 3)


@pytest.fixture(scope="session")
def frozen_run(tiny_run, tmp_path_factory) -> Path:
    """`tiny_run`'s steps 0..40 with blocks 0 and 3 copied unchanged from step 20 on (their tensors
    overwritten by step 20's): those blocks settle at step 20 by construction, blocks 1 and 2 keep moving."""
    from safetensors.torch import load_file, save_file

    out = tmp_path_factory.mktemp("frozen_run")
    base = load_file(str(tiny_run / f"step_{FROZEN_STEP:06d}.safetensors"))
    frozen = tuple(f"transformer.h.{b}." for b in FROZEN_BLOCKS)
    for step in range(0, 41, 10):
        name = f"step_{step:06d}.safetensors"
        state = load_file(str(tiny_run / name))
        if step >= FROZEN_STEP:
            state.update({k: base[k] for k in state if k.startswith(frozen)})
        save_file(state, str(out / name))
    return out


@pytest.fixture(scope="session")
def frozen_stability(frozen_run):
    """`layerfilm.stability.measure` of `frozen_run` (64 points per block)."""
    from layerfilm.film_options import StabilityOptions
    from layerfilm.io.scan import scan
    from layerfilm.points.weights import WeightSpec
    from layerfilm.study import measure

    return measure(scan(frozen_run), StabilityOptions(weights=WeightSpec(points=64)), progress=False)


@pytest.fixture
def run_copy(tiny_run, tmp_path):
    """A private copy of the tiny run (tests that rewrite files or their mtimes)."""
    import shutil

    dest = tmp_path / "run"
    shutil.copytree(tiny_run, dest)
    return dest


@pytest.fixture
def reads(monkeypatch):
    """Counts the passes that read the checkpoints' weights (layerfilm.study.Study._weights_pass)."""
    from layerfilm.study import Study

    calls = []
    real = Study._weights_pass
    monkeypatch.setattr(Study, "_weights_pass", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


@pytest.fixture
def bytes_read(monkeypatch):
    """Bytes of tensor data the safetensors reader returns (stored bytes: whole tensors and rows), counted
    while the test runs."""
    total = {"get": 0, "rows": 0}
    import numpy as np

    from layerfilm.io.formats import safetensors_format

    reader = safetensors_format.SafetensorsReader

    def counted(kind, real):
        def read(self, name, *args, **kwargs):
            arr = real(self, name, *args, **kwargs)
            size = np.dtype(safetensors_format.NUMPY_DTYPES[self.dtype(name)]).itemsize
            total[kind] += arr.size * size
            return arr
        return read

    monkeypatch.setattr(reader, "get", counted("get", reader.get))
    monkeypatch.setattr(reader, "rows", counted("rows", reader.rows))
    return total
