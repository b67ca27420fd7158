"""Activation films over several devices (layerfilm.points.activations.devices; issue 17): CPU workers
standing in for GPUs give exactly the one-worker result (points and statistics, through the API, the
CLI and a Dask cluster), a bad checkpoint is skipped (or, with --strict, refused) as on one device,
and --devices is checked in one line before anything is read."""

from __future__ import annotations

import shutil
from pathlib import Path

import distributed
import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from layerfilm.errors import CheckpointError, EngineError, OptionsError
from layerfilm.io.scan import scan
from layerfilm.parallel import dask as engine_dask
from layerfilm.parallel.engines import get_engine
from layerfilm.points.activations import ActivationSpec, extract, worker_devices
from layerfilm.points.activations.devices import shares

ROOT = Path(__file__).resolve().parents[1]
FACTORY = str(ROOT / "examples" / "make_checkpoints.py") + ":make_model"
BAD = "step_000030.safetensors"
# one batch of the whole probe (44 x 32 tokens x width 32): large enough that torch splits its reductions by
# thread count, so a worker using other threads than the one-device run would change the statistics' bits
BATCH = 64
PROBLEM = rf"{BAD}: transformer.ln_f.weight has shape \(16,\), the model expects \(32,\)"


@pytest.fixture(scope="module")
def damaged_run(tiny_run, tmp_path_factory) -> Path:
    """The tiny run (7 checkpoints) with one whose final norm has another shape: a tensor outside the blocks,
    so the scan passes it and the worker that loads it skips it."""
    copy = tmp_path_factory.mktemp("devices") / "run"
    shutil.copytree(tiny_run, copy)
    with safe_open(copy / BAD, "pt") as r:
        state, meta = {k: r.get_tensor(k) for k in r.keys()}, r.metadata()
    state["transformer.ln_f.weight"] = torch.ones(16)
    save_file(state, str(copy / BAD), metadata=meta)
    return copy


@pytest.fixture(scope="module")
def damaged_series(damaged_run):
    return scan(damaged_run)


def spec(**kw) -> ActivationSpec:
    return ActivationSpec(**{"model": FACTORY, "points": 16, "device": "cpu", "batch_size": BATCH, **kw})


def run(series, tmp_path: Path, name: str, **kw):
    with pytest.warns(UserWarning, match=rf"{PROBLEM}; skipped$") as caught:
        f = extract(series, spec(**kw.pop("spec", {})), tmp_path / name, progress=False, **kw)
    assert len([w for w in caught if "skipped" in str(w.message)]) == 1
    return f


def assert_same(a, b) -> None:
    """Bit for bit: steps, blocks, tracked tokens, every key frame's points and every statistic."""
    assert np.array_equal(a.steps, b.steps) and np.array_equal(a.blocks, b.blocks)
    assert np.array_equal(a.point_ids, b.point_ids) and a.name == b.name and a.subject == b.subject
    assert len(a.store) == len(b.store)
    for t in range(len(a.store)):
        assert np.array_equal(a.store[t], b.store[t]), t
    assert np.array_equal(a.store.max_abs, b.store.max_abs)
    assert a.stats.keys() == b.stats.keys()
    for k in a.stats:
        assert np.array_equal(a.stats[k], b.stats[k], equal_nan=True), k
    assert [(c.path, c.problem) for c in a.skipped] == [(c.path, c.problem) for c in b.skipped]


@pytest.fixture(scope="module")
def one_worker(damaged_series, tmp_path_factory):
    return run(damaged_series, tmp_path_factory.mktemp("one"), "store")


def test_two_cpu_workers_give_the_one_worker_result(damaged_series, one_worker, tmp_path):
    two = run(damaged_series, tmp_path, "two", spec={"devices": "cpu,cpu"})
    assert_same(one_worker, two)
    assert list(two.steps) == [0, 10, 20, 40, 50, 60] and [c.path.name for c in two.skipped] == [BAD]
    # the frames came back from two workers' folders, by name
    assert {p.parent.name for p in (two.store.frame(t)[0] for t in range(len(two.store)))} == {"device-0", "device-1"}


@pytest.fixture(scope="module")
def cluster():
    """A Dask LocalCluster of 2 workers inside this process (no worker processes to start: seconds)."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as c:
        yield c.scheduler_address
        engine_dask.close()  # layerfilm's client of it, before the cluster stops


def test_strict_refuses_the_first_bad_checkpoint_as_on_one_device(damaged_series, cluster, tmp_path):
    messages = []
    for name, kw in (("one", {}), ("two", {"engine": "dask", "address": cluster})):
        with pytest.raises(CheckpointError, match=rf"{PROBLEM} \(strict: nothing is skipped\)$") as e:
            extract(damaged_series, spec(devices=() if name == "one" else "cpu,cpu"), tmp_path / name, progress=False,
                    strict=True, **kw)
        messages.append(str(e.value))
    assert messages[0] == messages[1]


def test_a_dask_cluster_of_cpu_workers_gives_the_one_worker_result(damaged_series, one_worker, cluster, tmp_path):
    """Workers at an address send their frames back (they share no folder with the caller)."""
    two = run(damaged_series, tmp_path, "dask", spec={"devices": ("cpu", "cpu")}, engine="dask", address=cluster)
    assert_same(one_worker, two)
    assert all(two.store.frame(t)[0].parent == tmp_path / "dask" / "frames" for t in range(len(two.store)))
    with pytest.raises(EngineError, match=r"^no worker of the Dask cluster at .* offers GPU=1 \(start one per GPU"):
        get_engine("dask", 2, address=cluster).map(len, [("a",), ("b",)], resources={"GPU": 1})


def test_cli_two_workers_export_the_same_points(damaged_run, damaged_series, run_cli, tmp_path):
    exported = []
    for name, extra in (("one", ()), ("two", ("--devices", "cpu,cpu"))):
        pts = tmp_path / f"{name}.npz"
        code, _, err = run_cli("render", damaged_run, "--features", "activations", "--model", FACTORY, "--device", "cpu",
                               "--points", "16", "--batch-size", str(BATCH), "--size", "320x192", "--fps", "1", "--no-cache",
                               "--quiet", "--jobs", "1",
                               "--out", tmp_path / f"{name}.webm", "--export-points", pts, *extra)
        assert code == 0, err
        assert err.split("skipped 1 checkpoint(s):\n")[1].startswith(f"  {damaged_run / BAD}: ")
        exported.append(dict(np.load(pts)))
    one, two = exported
    assert one.keys() == two.keys() and "act_norm" in one
    for k in one:
        assert np.array_equal(one[k], two[k], equal_nan=one[k].dtype.kind == "f"), k


@pytest.mark.parametrize("args, message", [
    (("--devices", "0,cpu"), "--devices '0,cpu': all GPUs or all cpu, not both"),
    (("--device", "cpu", "--devices", "0,1"), "--devices '0,1': not cpu devices (--device cpu)"),
    (("--device", "cuda", "--devices", "cpu,cpu"), "--devices 'cpu,cpu': not cuda devices (--device cuda)"),
    (("--devices", "1,cuda:1"), "--devices '1,cuda:1': each GPU at most once"),
    (("--devices", "gpu0"), "--devices 'gpu0': expected GPU indices such as 0,1 (or cuda:0,cuda:1), or cpu,cpu"),
    (("--devices", "0,"), "--devices '0,': expected GPU indices"),
    (("--devices", "\u00b2"), "--devices '\u00b2': expected GPU indices"),
    (("--devices", "0,1"), "--devices cuda:0,cuda:1: no CUDA device is available to torch (CPU workers: --device cpu "
                           "--devices cpu,cpu)"),
])
def test_cli_bad_devices_fail_in_one_line(tiny_run, run_cli, tmp_path, monkeypatch, args, message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "act.webm"
    code, _, err = run_cli("render", tiny_run, "--features", "activations", "--model", FACTORY, "--out", out,
                           "--quiet", "--no-cache", *args)
    assert code == 2 and err.strip().count("\n") == 0, err
    assert err.startswith("layerfilm: error: ") and message in err
    assert not out.exists()


def test_which_devices_run(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    cuda = [torch.device("cuda", i) for i in range(3)]
    assert worker_devices(ActivationSpec(device="cuda")) == cuda  # every visible GPU by default
    assert worker_devices(ActivationSpec()) == cuda  # auto: cuda when available
    assert worker_devices(ActivationSpec(devices="2,0")) == [cuda[2], cuda[0]]
    assert worker_devices(ActivationSpec(devices="1,2"), remote=True) == [torch.device("cuda")] * 2  # the workers' own
    assert worker_devices(ActivationSpec(device="cpu")) == [torch.device("cpu")]
    assert worker_devices(ActivationSpec(device="cpu", devices=("cpu",) * 4)) == [torch.device("cpu")] * 4
    with pytest.raises(OptionsError, match=r"^devices=cuda:1,cuda:3: cuda:3 is not visible \(3 CUDA device\(s\)\)$"):
        worker_devices(ActivationSpec(devices="1,3"))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert worker_devices(ActivationSpec(device="cuda")) == [torch.device("cuda")]


def test_checkpoints_are_shared_round_robin():
    assert shares(7, 2) == [(0, 2, 4, 6), (1, 3, 5)]
    assert shares(2, 4) == [(0,), (1,)]  # no worker without a checkpoint
    assert sorted(t for s in shares(179, 8) for t in s) == list(range(179))


def test_devices_do_not_change_the_cache_key():
    from layerfilm.film_options import FilmOptions

    one, two = (FilmOptions(activations=spec(devices=d)) for d in ((), "cpu,cpu"))
    assert one.points_options() == two.points_options()
    assert one.points_options() != FilmOptions(activations=spec(points=17)).points_options()
