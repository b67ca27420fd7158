"""Where tasks run: this process, a local pool of worker processes, or (layerfilm[dask]) a Dask cluster.

A task is a plain function of small, picklable arguments returning small arrays (a block chunk's
points and measures, a film segment's file name, an activation checkpoint's statistics). It takes a
keyword ``progress``: a callable it may call with a count (default 1) as it goes, e.g. once per
checkpoint read or frame drawn. Every engine sums those counts into one progress bar, whichever
worker sends them, and returns the results in the order of the arguments. Once a task has failed or
the caller is interrupted, ``progress`` raises :class:`Cancelled` in the tasks still running, so they
stop at their next count (running their own cleanup, e.g. stopping an encoder) instead of finishing
work nobody will use.

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
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from typing import Any, Protocol

from .errors import OptionsError
from .outputs import deferred_signals
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

    def map(self, fn: Callable[..., Any], args: Sequence[tuple], progress: Progress | None = None,
            resources: dict[str, float] | None = None) -> list[Any]:
        """``[fn(*a, progress=...) for a in args]``, run where the engine runs tasks. ``resources``: what
        each task holds of a worker while it runs (Dask worker resources, e.g. ``{"GPU": 1}``: one
        device worker per GPU); local processes each hold the device their task names, so need none."""
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
    """One thread each for numba and BLAS in a worker: the workers already fill the cores, and a
    threaded numba or OpenBLAS spin-waits on busy cores (measured several times slower). numba reads
    its thread count when first imported: only a worker that needs it (umap) pays for importing it
    (0.45 s of CPU, measured: a film segment's worker has no use for it)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    os.environ["NUMBA_NUM_THREADS"] = "1"
    numba = sys.modules.get("numba")
    if numba is not None:
        numba.set_num_threads(1)


class Cancelled(Exception):
    """Raised by ``progress`` inside a task whose map has already failed or been interrupted."""


_ticks: Any = None  # in a pool worker: the queue its progress counts go to
_cancel: Any = None  # in a pool worker: set once its map is cancelled


def _pool_init(ticks: Any, cancel: Any) -> None:
    global _ticks, _cancel
    _ticks, _cancel = ticks, cancel
    # A Ctrl-C in the terminal reaches every process of the group: the main process alone handles it
    # and cancels the tasks, which then stop cleanly at a progress call (no half-killed encoders).
    # Workers start with SIGINT and SIGTERM blocked (spawned while the main process held them): from
    # here on SIGINT is ignored and SIGTERM is the default again.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    worker_init()


def _tick(n: int = 1) -> None:
    if _cancel.is_set():
        raise Cancelled("cancelled: another task failed or the run was interrupted")
    _ticks.put(n)


def _call(fn: Callable[..., Any], a: tuple) -> Any:
    return fn(*a, progress=_tick)


def _nothing(n: int = 1) -> None:
    pass


@ENGINES.register("local")
class LocalEngine:
    """Tasks in this process (jobs 1, or a single task) or over ``jobs`` spawned worker processes.

    Progress counts from workers come back through one queue, drained by a thread into ``progress``.
    The first task to fail (or an interrupt) cancels the others before its error is raised. The
    workers are started with interrupts held, so that a Ctrl-C or SIGTERM never catches one half
    started (it then prints a traceback of its own): the interrupt is raised once they all run."""

    def __init__(self, jobs: int = 0, **_: Any) -> None:
        self.jobs = check_jobs(jobs)

    @property
    def sharing(self) -> int:
        return self.jobs

    def map(self, fn: Callable[..., Any], args: Sequence[tuple], progress: Progress | None = None,
            resources: dict[str, float] | None = None) -> list[Any]:
        progress = progress or _nothing
        if self.jobs <= 1 or len(args) <= 1:
            return [fn(*a, progress=progress) for a in args]
        ctx = multiprocessing.get_context("spawn")
        with deferred_signals():
            ticks, cancel = ctx.Queue(), ctx.Event()
            pool = ProcessPoolExecutor(min(self.jobs, len(args)), ctx, initializer=_pool_init, initargs=(ticks, cancel))
        stop = threading.Event()
        drain = threading.Thread(target=_drain, args=(ticks, progress, stop), daemon=True)
        drain.start()
        try:
            with deferred_signals():  # the workers start here
                futures = [pool.submit(_call, fn, a) for a in args]
            wait(futures, return_when=FIRST_EXCEPTION)  # a late task's failure stops the early ones too
            for f in futures:
                if f.done() and not f.cancelled() and f.exception() is not None:
                    f.result()
            return [f.result() for f in futures]
        except BaseException:
            cancel.set()
            raise
        finally:
            with deferred_signals():  # a second Ctrl-C must not leave workers behind
                pool.shutdown(wait=True, cancel_futures=True)
                stop.set()
                drain.join()
                ticks.close()


def _drain(ticks: Any, progress: Progress, stop: threading.Event) -> None:
    """Hand the workers' counts to ``progress`` until ``stop`` is set and none is left."""
    while True:
        try:
            progress(ticks.get(timeout=0.1))
        except queue.Empty:
            if stop.is_set():
                return
        except (EOFError, OSError):  # the queue was closed
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
