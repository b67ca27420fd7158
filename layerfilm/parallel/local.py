"""The local engine: tasks in this process, or over a pool of spawned worker processes kept for a whole
run inside :func:`session` (layerfilm.parallel.engines)."""

from __future__ import annotations

import importlib.util
import queue
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from contextlib import contextmanager
from typing import Any

from layerfilm.parallel.base import Progress, check_jobs, worker_init
from layerfilm.parallel.processes import context
from layerfilm.parallel.signals import deferred_signals


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


def _call(fn: Callable[..., Any], a: tuple) -> tuple[int, Any]:
    """``fn(*a)`` in a worker; returns (its progress count, its result): the count tells the map how
    many ticks to wait for, so that none of this map's is left in the queue to reach the next map's bar."""
    count = 0

    def tick(n: int = 1) -> None:
        nonlocal count
        _tick(n)
        count += n

    return count, fn(*a, progress=tick)


def _import(modules: tuple[str, ...]) -> None:
    """A worker's first task when the pool is started ahead (:meth:`LocalEngine.start`)."""
    for name in modules:
        importlib.import_module(name)


def _nothing(n: int = 1) -> None:
    pass


class _Pool:
    """``jobs`` spawned worker processes (started as tasks arrive, at most one per task), the queue of
    their progress counts and the event that cancels their tasks. A pool whose map failed or was
    interrupted is closed, never reused: its cancel event stays set and ticks may be left in its queue."""

    def __init__(self, jobs: int) -> None:
        ctx = context()  # spawned workers that never import the user's __main__
        with deferred_signals():
            self.ticks, self.cancel = ctx.Queue(), ctx.Event()
            self.executor = ProcessPoolExecutor(jobs, ctx, initializer=_pool_init, initargs=(self.ticks, self.cancel))

    def start(self, jobs: int, modules: tuple[str, ...]) -> None:
        with deferred_signals():  # the workers start here
            for _ in range(jobs):
                self.executor.submit(_import, modules)

    def map(self, fn: Callable[..., Any], args: Sequence[tuple], progress: Progress) -> list[Any]:
        counted = _Counted(self.ticks, progress)
        try:
            with deferred_signals():  # the workers start here
                futures = [self.executor.submit(_call, fn, a) for a in args]
            wait(futures, return_when=FIRST_EXCEPTION)  # a late task's failure stops the early ones too
            for f in futures:
                if f.done() and not f.cancelled() and f.exception() is not None:
                    f.result()
            results = [f.result() for f in futures]
            counted.finish(sum(count for count, _ in results))
            return [result for _, result in results]
        except BaseException:
            self.cancel.set()
            raise
        finally:
            counted.finish()

    def close(self) -> None:
        with deferred_signals():  # a second Ctrl-C must not leave workers behind
            self.executor.shutdown(wait=True, cancel_futures=True)
            self.ticks.close()


class _Counted:
    """A thread handing the workers' counts to ``progress`` until :meth:`finish` says how many to expect
    (all of this map's, once its tasks have returned; none after a failure) and that many arrived."""

    def __init__(self, ticks: Any, progress: Progress) -> None:
        self.ticks, self.progress = ticks, progress
        self.expected: int | None = None
        self.thread = threading.Thread(target=self._drain, daemon=True)
        self.thread.start()

    def finish(self, expected: int = 0) -> None:
        if self.expected is None:
            self.expected = expected
        self.thread.join()

    def _drain(self) -> None:
        got = 0
        while True:
            try:
                n = self.ticks.get(timeout=0.1)
            except queue.Empty:
                if self.expected is not None and (got >= self.expected or self.expected == 0):
                    return
                continue
            except (EOFError, OSError, ValueError):  # the queue was closed
                return
            got += n
            self.progress(n)
            if self.expected is not None and self.expected and got >= self.expected:
                return


_pools: dict[int, _Pool] = {}  # jobs -> the pool kept by session() for the maps inside it
_held = 0  # how many session() blocks are open
_lock = threading.Lock()


@contextmanager
def session() -> Iterator[None]:
    """Keep the local engine's worker processes from one map to the next inside the block: one pool
    for a whole run (reading, measuring, film segments), started once: starting a pool costs each
    worker a Python and its imports, and closing it waits for every worker to exit. The pools are
    closed when the outermost block ends. Outside any block each map has its own pool."""
    global _held
    with _lock:
        _held += 1
    try:
        yield
    finally:
        with _lock:
            _held -= 1
            closing = list(_pools.values()) if _held == 0 else []
            if closing:
                _pools.clear()
        for pool in closing:
            pool.close()


class LocalEngine:
    """Tasks in this process (jobs 1, or a single task) or over ``jobs`` spawned worker processes.

    Progress counts from workers come back through one queue, drained by a thread into ``progress``.
    The first task to fail (or an interrupt) cancels the others before its error is raised. The
    workers are started with interrupts held, so that a Ctrl-C or SIGTERM never catches one half
    started (it then prints a traceback of its own): the interrupt is raised once they all run.
    Inside :func:`session` the workers stay for the next map (and :meth:`start` starts them ahead)."""

    def __init__(self, jobs: int = 0, **_: Any) -> None:
        self.jobs = check_jobs(jobs)

    @property
    def sharing(self) -> int:
        return self.jobs

    def start(self, modules: tuple[str, ...] = ()) -> None:
        """Start the workers now, each importing ``modules``, so that they are ready (their imports
        done while this process works on) when the first map comes; only inside :func:`session`."""
        if self.jobs > 1 and _held:
            self._pool().start(self.jobs, modules)

    def map(self, fn: Callable[..., Any], args: Sequence[tuple], progress: Progress | None = None,
            resources: dict[str, float] | None = None) -> list[Any]:
        progress = progress or _nothing
        if self.jobs <= 1 or len(args) <= 1:
            return [fn(*a, progress=progress) for a in args]
        pool = self._pool() if _held else _Pool(min(self.jobs, len(args)))
        kept = False
        try:
            results = pool.map(fn, args, progress)
            kept = _held > 0
            return results
        finally:
            if not kept:
                with _lock:
                    if _pools.get(self.jobs) is pool:
                        del _pools[self.jobs]
                pool.close()

    def _pool(self) -> _Pool:
        with _lock:
            if self.jobs not in _pools:
                _pools[self.jobs] = _Pool(self.jobs)
            return _pools[self.jobs]
