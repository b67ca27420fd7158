"""Where tasks run: this process, a local pool of worker processes, or (layerfilm[dask]) a Dask cluster.

A task is a plain function of small, picklable arguments returning small arrays (a block chunk's
points and measures, a film segment's file name, an activation checkpoint's statistics). It takes a
keyword ``progress``: a callable it may call with a count (default 1) as it goes, e.g. once per
checkpoint read or frame drawn. Every engine sums those counts into one progress bar, whichever
worker sends them, and returns the results in the order of the arguments.

    engine = get_engine("local", jobs=4)
    results = engine.map(block_task, [(series, wp, chunk, ...) for chunk in chunks], bar.update)

Engines: ``local`` (this module) and ``dask`` (layerfilm.engine_dask, imported only when chosen).
"""

from __future__ import annotations

import importlib.util
import multiprocessing
import os
import queue
import re
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Protocol

from .errors import OptionsError
from .registry import Registry

Progress = Callable[..., Any]  # progress(n=1)


class Engine(Protocol):
    @property
    def jobs(self) -> int:
        """How many tasks run at once."""
        ...

    @property
    def sharing(self) -> int:
        """How many of those tasks share this machine's memory (the block chunks' memory budget,
        $LAYERFILM_CHUNK_MB, is divided among them): ``jobs`` for local processes, 1 on a remote cluster."""
        ...

    def map(self, fn: Callable[..., Any], args: Sequence[tuple], progress: Progress | None = None) -> list[Any]:
        """``[fn(*a, progress=...) for a in args]``, run where the engine runs tasks."""
        ...


ENGINES: Registry[Callable[..., Engine]] = Registry("engine")


def cores() -> int:
    """The cores this process may use (its CPU affinity, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def check_jobs(jobs: int) -> int:
    """--jobs: 0 means one per core."""
    if jobs < 0:
        raise OptionsError(f"--jobs {jobs}: must be 0 (one per core) or more")
    return jobs or cores()


def worker_init() -> None:
    """One thread each for numba and BLAS in a worker process: the workers already fill the cores, and
    a threaded numba or OpenBLAS spin-waits on busy cores (measured several times slower). numba is
    not imported for this (about a second per worker, for films that never use it): if it is not
    loaded yet, NUMBA_NUM_THREADS holds it to one thread when a task loads it (umap)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    if "numba" in sys.modules:
        sys.modules["numba"].set_num_threads(1)
    else:
        os.environ["NUMBA_NUM_THREADS"] = "1"


_ticks: Any = None  # in a pool worker: the queue its progress counts go to


def _pool_init(ticks: Any) -> None:
    global _ticks
    _ticks = ticks
    worker_init()


def _tick(n: int = 1) -> None:
    _ticks.put(n)


def _call(fn: Callable[..., Any], a: tuple) -> Any:
    return fn(*a, progress=_tick)


def _nothing(n: int = 1) -> None:
    pass


@ENGINES.register("local")
class LocalEngine:
    """Tasks in this process (jobs 1, or a single task) or over ``jobs`` spawned worker processes.

    Progress counts from workers come back through one queue, drained by a thread into ``progress``."""

    def __init__(self, jobs: int = 0, **_: Any) -> None:
        self.jobs = check_jobs(jobs)

    @property
    def sharing(self) -> int:
        return self.jobs

    def map(self, fn: Callable[..., Any], args: Sequence[tuple], progress: Progress | None = None) -> list[Any]:
        progress = progress or _nothing
        if self.jobs <= 1 or len(args) <= 1:
            return [fn(*a, progress=progress) for a in args]
        ctx = multiprocessing.get_context("spawn")
        with ctx.Manager() as manager:
            ticks = manager.Queue()
            stop = threading.Event()
            drain = threading.Thread(target=_drain, args=(ticks, progress, stop), daemon=True)
            drain.start()
            try:
                with ProcessPoolExecutor(min(self.jobs, len(args)), ctx, initializer=_pool_init,
                                         initargs=(ticks,)) as pool:
                    futures = [pool.submit(_call, fn, a) for a in args]
                    return [f.result() for f in futures]
            finally:
                stop.set()
                drain.join()


def _drain(ticks: Any, progress: Progress, stop: threading.Event) -> None:
    while True:
        try:
            progress(ticks.get(timeout=0.1))
        except queue.Empty:
            if stop.is_set():
                return
        except (EOFError, OSError):  # the manager went away
            return


@ENGINES.register("dask")
def _dask(jobs: int = 0, address: str | None = None, **_: Any) -> Engine:
    """A Dask cluster at ``address``, or a LocalCluster of ``jobs`` processes (layerfilm.engine_dask)."""
    from .engine_dask import DaskEngine

    return DaskEngine(jobs, address)


DASK_MISSING = "--engine dask needs dask.distributed: pip install 'layerfilm[dask]'"
# dask's address schemes; tcp/tls/ws/wss need HOST:PORT, others (inproc://, ucx://) are taken as given
_ADDRESS = re.compile(r"(?:(tcp|tls|ws|wss)://)?(\[[0-9a-fA-F:.]+\]|[^\s:/\[\]]+):(\d{1,5})/?|(inproc|ucx)://\S+")


def check_engine(name: str, address: str | None) -> None:
    """--engine and --address, checked before any checkpoint is read (the cluster is reached later,
    when its first task is sent): a known engine, an address for dask only and shaped like one, and
    dask installed when it is chosen."""
    ENGINES.get(name)
    if address is not None:
        if name != "dask":
            raise OptionsError(f"--address applies to --engine dask only, not {name}")
        m = _ADDRESS.fullmatch(address)
        if m is None or (m.group(3) is not None and not 0 < int(m.group(3)) < 65536):
            raise OptionsError(f"--address {address!r}: expected a Dask scheduler address such as tcp://HOST:8786")
    if name == "dask" and importlib.util.find_spec("distributed") is None:
        raise OptionsError(DASK_MISSING)


def get_engine(name: str = "local", jobs: int = 0, **options: Any) -> Engine:
    """The engine called ``name`` (local, or dask with layerfilm[dask]) running ``jobs`` tasks at once."""
    return ENGINES.get(name)(jobs=jobs, **options)
