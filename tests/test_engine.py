"""Engines, worker processes and threads (layerfilm.parallel).

Where tasks run (layerfilm.parallel.engines, layerfilm.parallel.dask; issue 13): this process, a local pool, or a real
Dask cluster give the same bytes; progress counts from every worker reach the bar's total; engine options
are checked before any checkpoint is read, and a scheduler that does not answer is one line, not a hang.

The local engine's worker pool (layerfilm.parallel.engines, issue 13): inside ``session()`` one pool serves every
map (the same worker processes, started ahead by ``start``), each map's bar gets exactly its own tasks'
counts, a failed map's pool is closed and the next map gets a fresh one, and no worker outlives the
session. Also: a Dask-style MALLOC_TRIM_THRESHOLD_ no longer makes freed arrays page-fault anew.

Worker processes never run the user's script again (layerfilm.parallel.processes): an unguarded script, a
notebook-like session fed on stdin, and a training script with the Trainer callback, each a real
Python process whose top level prints a line that must appear exactly once.

layerfilm.parallel.threads: frames computed ahead in a thread; BLAS held to one thread."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import distributed
import numpy as np
import pytest

from layerfilm import study as run_module
from layerfilm.film_options import FilmOptions
from layerfilm.io.scan import scan
from layerfilm.parallel import dask as engine_dask
from layerfilm.parallel import local as engine_module
from layerfilm.parallel.engines import LocalEngine, get_engine, session
from layerfilm.parallel.threads import one_blas_thread, prefetch
from layerfilm.points.weights import WeightSpec, plan
from layerfilm.study import Study
from processes import layerfilm_process

# ==== Where tasks run (layerfilm.parallel.engines, layerfilm.parallel.dask; issue 13)
POINTS = 16
SMALL = ("--size", "320x180", "--fps", "2", "--points", str(POINTS), "--no-cache", "--quiet")


@pytest.fixture(scope="module")
def cluster():
    """A real Dask LocalCluster of 2 workers, one thread each, inside this process (processes=False: worker
    processes importing layerfilm take ~10 s to start on a busy 2-core machine; the default LocalCluster,
    with processes, is tested once below). Yields the scheduler's address."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as c:
        yield c.scheduler_address


@pytest.fixture(autouse=True)
def _close_clients():
    """Each test connects afresh (and stops a LocalCluster layerfilm started)."""
    yield
    engine_dask.close()


class Bar:
    """Stands in for tqdm in layerfilm.study: records the description, the total and every update."""

    made: list[Bar] = []

    def __init__(self, total=None, desc="", **_):
        self.total, self.desc, self.updates = total, desc, []
        Bar.made.append(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n=1):
        self.updates.append(n)


@pytest.fixture
def bars(monkeypatch):
    Bar.made = []
    monkeypatch.setattr(run_module, "tqdm", Bar)
    return Bar.made


def exported(run_cli, folder, out, *opts) -> dict[str, np.ndarray]:
    out.mkdir()
    code, _, err = run_cli("render", folder, "--out", out / "f.gif", "--export-points", out / "p.npz", *SMALL, *opts)
    assert code == 0, err
    with np.load(out / "p.npz") as z:
        return dict(z)


def assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)  # NaN (the first key frame's update) equals NaN


RAN_ON: list[tuple[str, str]] = []  # (task, worker) of each task (a global: tasks are pickled, even to workers in this process)
_run_task = engine_dask._run_task


def recorded(*args):
    RAN_ON.append((args[0].__name__, distributed.get_worker().address))  # (task, worker); raises outside a worker
    return _run_task(*args)


def test_dask_cluster_exports_the_points_of_the_local_engine(tiny_run, tmp_path, run_cli, cluster, bars, monkeypatch):
    """--engine dask --address (2 workers) against --jobs 1 (in this process) and --jobs 2 (a pool of 2 processes),
    with a chunk budget of two blocks: 2, 4 (the budget shared by the 2 workers here) and 2 block chunks."""
    monkeypatch.setattr(run_module, "IN_PROCESS_BYTES", 0)
    series = scan(tiny_run)
    wp = plan(series, WeightSpec(points=POINTS))
    per_block = len(series) * POINTS * wp.shape[1] * 4
    monkeypatch.setenv("LAYERFILM_CHUNK_MB", str(per_block * 2 / 2**20))
    local1 = exported(run_cli, tiny_run, tmp_path / "l1", "--jobs", "1")
    local2 = exported(run_cli, tiny_run, tmp_path / "l2", "--jobs", "2")
    RAN_ON.clear()
    monkeypatch.setattr(engine_dask, "_run_task", recorded)  # the workers are in this process
    on_dask = exported(run_cli, tiny_run, tmp_path / "d", "--engine", "dask", "--address", cluster)
    chunks = [where for task, where in RAN_ON if task == "block_task"]
    assert len(chunks) == 2  # the chunks ran on the cluster's workers (and the film's segments, if the film has several)
    assert [b.desc for b in bars] == [f"reading {n} block chunk(s)" for n in (2, 4, 2)]
    assert local1["xy"].shape == (len(series), 4, POINTS, 2)
    assert_same(local1, local2)
    assert_same(local1, on_dask)


def test_dask_stability_json_equals_local(tiny_run, run_cli, cluster):
    out = {}
    for name, opts in {"local": ("--jobs", "1"), "dask": ("--engine", "dask", "--address", cluster)}.items():
        code, out[name], err = run_cli("stability", tiny_run, "--json", "--no-cache", "--quiet", "--points", str(POINTS), *opts)
        assert code == 0, err
    assert out["dask"] == out["local"] and out["local"].startswith("[")


def test_progress_of_dask_workers_reaches_the_bar(tiny_run, cluster, bars):
    run = Study.open(tiny_run, FilmOptions(weights=WeightSpec(points=POINTS), engine="dask", address=cluster, cache=False))
    run.stability()
    (bar,) = bars  # one pass: points and whole-block measures together
    assert bar.total == 2 * len(run.series)  # 2 chunks (one per worker) x every key frame
    assert sum(bar.updates) == bar.total


def ticking(k: int, wait: float, progress) -> int:
    """A task that reports 2 per step, ``k`` steps ``wait`` seconds apart."""
    for _ in range(k):
        progress(2)
        time.sleep(wait)
    return k


def test_dask_progress_arrives_while_tasks_run(cluster):
    """Counts come as worker events while the tasks run (more updates than tasks), and sum to the total."""
    updates: list[int] = []
    engine = get_engine("dask", address=cluster)
    assert engine.jobs == 2  # the cluster's threads
    assert engine.map(ticking, [(3, 3 * engine_dask.FLUSH_S), (4, 3 * engine_dask.FLUSH_S)], updates.append) == [3, 4]
    assert sum(updates) == 2 * (3 + 4)
    assert len(updates) > 2


def test_dask_local_cluster_without_address(tiny_run, tmp_path, run_cli):
    """No --address: a LocalCluster of --jobs worker processes (spawned; tasks and results pickled)."""
    local = exported(run_cli, tiny_run, tmp_path / "l", "--jobs", "1")
    on_dask = exported(run_cli, tiny_run, tmp_path / "d", "--engine", "dask", "--jobs", "2")
    ((client, cluster),) = engine_dask._clients.values()
    assert len(cluster.workers) == 2 and set(client.nthreads().values()) == {1}
    assert_same(local, on_dask)


def test_start_brings_the_local_cluster_up_in_the_background_with_its_imports_done():
    """DaskEngine.start returns at once; the first use of the client waits for the LocalCluster, whose
    workers imported the modules named while they started (no task has run on them)."""
    engine = get_engine("dask", jobs=2)
    engine.start(("layerfilm.video.segments",))
    client = engine.client()
    imported = client.run(lambda: "layerfilm.video.segments" in sys.modules)  # {worker: bool}
    assert len(imported) == 2 and all(imported.values())
    assert not engine_dask._starting


def test_unanswered_address_is_one_line(tiny_run, tmp_path, run_cli, monkeypatch):
    monkeypatch.setattr(engine_dask, "CONNECT_TIMEOUT_S", 1.0)
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    code, _, err = run_cli("render", tiny_run, "--out", tmp_path / "f.gif", *SMALL, "--engine", "dask", "--address", address)
    assert code == 2
    assert err.splitlines() == [f"layerfilm: error: --address {address}: no Dask scheduler answered within 1 s"]
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def silent_server():
    """A TCP server on 127.0.0.1 that accepts connections and never says a word (another service on the
    port, not Dask). Yields its tcp:// address; its loop ends within a second of the test's end."""
    stop = threading.Event()
    conns = []
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        s.settimeout(0.2)

        def serve() -> None:
            while not stop.is_set():
                try:
                    conns.append(s.accept()[0])
                except TimeoutError:
                    pass

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            yield f"tcp://127.0.0.1:{s.getsockname()[1]}"
        finally:
            stop.set()
            thread.join(5)
            for c in conns:
                c.close()


@pytest.mark.parametrize("command", ["stability", "render"])
def test_a_server_that_is_not_dask_is_one_line_in_bounded_time(command, tiny_run, tmp_path, silent_server):
    """It accepts TCP and says nothing: the handshake is waited for CONNECT_TIMEOUT_S (10 s; 2 s in this
    process), then one line and exit 2 (it was a hang of minutes, and noise from Client.__del__ at exit)."""
    out = ("--out", tmp_path / "f.gif", *SMALL) if command == "render" else ()
    t0 = time.monotonic()
    proc = layerfilm_process(command, tiny_run, *out, "--engine", "dask", "--address", silent_server, cwd=tmp_path,
                             prelude="import layerfilm.parallel.dask as d; d.CONNECT_TIMEOUT_S = 2.0")
    _, err = proc.communicate(timeout=60)
    assert time.monotonic() - t0 < 45
    assert proc.returncode == 2
    assert err.splitlines()[-1:] == [f"layerfilm: error: --address {silent_server}: no Dask scheduler answered within 2 s"]
    assert [line for line in err.splitlines() if not line.startswith("scanning")] == err.splitlines()[-1:]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_sigterm_while_waiting_for_a_silent_server_ends_promptly_and_quietly(tiny_run, tmp_path, silent_server):
    """SIGTERM while the background start waits for the handshake: exit 143 within a bound, one line, no
    "Exception ignored" at exit (close() once waited without limit, and a half-made Client failed in __del__)."""
    proc = layerfilm_process("render", tiny_run, "--out", tmp_path / "f.gif", *SMALL, "--engine", "dask",
                             "--address", silent_server, cwd=tmp_path)
    time.sleep(4)  # past the import, inside the wait for the handshake
    proc.send_signal(signal.SIGTERM)
    t0 = time.monotonic()
    _, err = proc.communicate(timeout=60)
    assert time.monotonic() - t0 < 30
    assert proc.returncode == 143
    assert err.splitlines() == ["layerfilm: terminated; nothing half-written was left"]
    assert list(tmp_path.iterdir()) == []


COMMANDS = {"render": ("--out", "f.webm"), "stability": (), "stills": ("--out", "s.png"), "report": ("--out", "r.html")}
BAD = [
    (("--address", "tcp://127.0.0.1:8786"), "--address tcp://127.0.0.1:8786: applies to --engine dask only, not local"),
    (("--engine", "dask", "--address", "8786"), "--address '8786': expected a Dask scheduler address such as tcp://HOST:8786"),
    (("--engine", "dask", "--address", "tcp://h:70000"),
     "--address 'tcp://h:70000': expected a Dask scheduler address such as tcp://HOST:8786"),
    (("--jobs", "-1"), "--jobs -1: must be 0 (one per core) or more"),
]


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("argv, message", BAD)
def test_bad_engine_options_are_one_line_before_any_checkpoint(command, argv, message, tmp_path, run_cli):
    """The folder does not exist: the option's error comes first, so nothing was scanned or read."""
    out = [tmp_path / a if a.startswith(("f.", "s.", "r.")) else a for a in COMMANDS[command]]
    code, _, err = run_cli(command, tmp_path / "missing", *out, *argv)
    assert (code, err) == (2, f"layerfilm: error: {message}\n")


def test_dask_missing_is_one_line(tmp_path, run_cli, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed fails; find_spec finds nothing
    code, _, err = run_cli("stability", tmp_path / "missing", "--engine", "dask")
    assert (code, err) == (2, "layerfilm: error: --engine dask needs dask.distributed: pip install 'layerfilm[dask]'\n")
    with pytest.raises(Exception, match=r"pip install 'layerfilm\[dask\]'"):
        get_engine("dask")


# ==== The local engine's worker pool (layerfilm.parallel.engines, issue 13)
def whoami(k: int, progress) -> tuple[int, int]:
    """(k, this worker's pid), after reporting k steps of 1."""
    for _ in range(k):
        progress()
    return k, os.getpid()


def fails(k: int, progress) -> int:
    if k == 1:
        raise ValueError("task 1 failed")
    return k


def workers() -> set[int]:
    """The pids of this process's live worker children."""
    import multiprocessing

    return {p.pid for p in multiprocessing.active_children() if p.pid is not None}


def test_one_pool_serves_every_map_of_a_session_and_each_bar_gets_its_own_counts():
    engine = LocalEngine(2)
    with session():
        engine.start(("layerfilm.study",))
        started = workers()
        assert len(started) == 2  # started ahead, before any map
        first: list[int] = []
        a = engine.map(whoami, [(3,), (4,), (5,)], first.append)
        second: list[int] = []
        b = engine.map(whoami, [(1,), (2,)], second.append)
        assert [k for k, _ in a] == [3, 4, 5] and [k for k, _ in b] == [1, 2]  # in the order of the arguments
        assert {pid for _, pid in a + b} <= started  # no new worker: the pool started ahead ran both maps
        assert (sum(first), sum(second)) == (12, 3)  # every count of a map reached its bar, none of it the next's
        with pytest.raises(ValueError, match="task 1 failed"):
            engine.map(fails, [(0,), (1,), (2,)])
        assert not workers() & started  # the failed map's pool was closed...
        c = engine.map(whoami, [(2,), (2,)])
        assert [k for k, _ in c] == [2, 2] and not {pid for _, pid in c} & started  # ...and a new one made
    assert workers() == set()  # the session closed its pool


def test_outside_a_session_each_map_has_its_own_pool_and_start_does_nothing():
    engine = LocalEngine(2)
    engine.start(("layerfilm.study",))
    assert workers() == set()
    counts: list[int] = []
    assert [k for k, _ in engine.map(whoami, [(2,), (3,)], counts.append)] == [2, 3]
    assert sum(counts) == 5
    assert workers() == set() and engine_module._pools == {}


MAPPED = textwrap.dedent("""
    import ctypes
    import numpy as np
    from layerfilm.parallel.engines import worker_init

    class Mallinfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in
                    "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

    mallinfo2 = ctypes.CDLL(None).mallinfo2
    mallinfo2.restype = Mallinfo2

    def mapped():
        \"\"\"How many of 3 arrays of 16 MB, each made and freed as block tasks do with every tensor, were mmapped.\"\"\"
        n = 0
        for _ in range(3):
            before = mallinfo2().hblks
            a = np.ones(4 * 2**20, np.float32)
            n += mallinfo2().hblks - before
            del a
        return n

    pinned = mapped()
    worker_init()
    print(pinned, mapped())
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_a_dask_workers_malloc_setting_no_longer_maps_every_array_anew():
    """Dask's nanny sets MALLOC_TRIM_THRESHOLD_, which pins glibc's mmap threshold at 128 KiB: every 16 MB
    array is then a fresh mmap, faulted in and zeroed by the kernel. After worker_init freed memory is reused."""
    env = {**os.environ, "MALLOC_TRIM_THRESHOLD_": "65536", "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", MAPPED], env=env, capture_output=True, text=True, check=True).stdout
    pinned, reused = (int(v) for v in out.split())
    assert pinned == 3  # the setting's cost, seen: each array mapped anew
    assert reused <= 1  # after worker_init: at most the first, then its memory is reused


# ==== Worker processes never run the user's script again (layerfilm.parallel.processes)
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


# ==== layerfilm.parallel.threads
def _prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "layerfilm-prefetch"]


def test_prefetch_yields_every_item_in_order():
    assert list(prefetch(range(100), depth=3)) == list(range(100))
    assert list(prefetch([], depth=3)) == []
    assert not _prefetch_threads()


def test_prefetch_works_ahead_but_no_more_than_depth():
    made = []

    def items():
        for i in range(20):
            made.append(i)
            yield i

    gen = prefetch(items(), depth=2)
    assert next(gen) == 0
    deadline = time.monotonic() + 5
    while len(made) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)
    # one handed out, two waiting in the queue, one made and blocked on the full queue
    assert len(made) == 4
    gen.close()


def test_prefetch_raises_the_producers_error_at_its_place():
    def items():
        yield 1
        yield 2
        raise ValueError("frame 3 failed")

    got = []
    with pytest.raises(ValueError, match="frame 3 failed"):
        for x in prefetch(items()):
            got.append(x)
    assert got == [1, 2]
    assert not _prefetch_threads()


def test_closing_early_stops_the_thread():
    def endless():
        i = 0
        while True:
            yield np.full(1000, i)
            i += 1

    gen = prefetch(endless(), depth=2)
    assert next(gen)[0] == 0 and next(gen)[0] == 1
    gen.close()
    assert not _prefetch_threads()


def test_one_blas_thread_limits_blas_inside_the_block_only():
    from threadpoolctl import threadpool_info

    def blas_threads():
        return [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]

    np.ones((4, 4)) @ np.ones((4, 4))  # BLAS loaded
    before = blas_threads()
    assert before, "NumPy's BLAS was not found by threadpoolctl"
    with one_blas_thread():
        assert blas_threads() == [1] * len(before)
    assert blas_threads() == before
