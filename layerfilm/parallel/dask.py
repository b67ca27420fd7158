"""Tasks on a Dask cluster (``pip install 'layerfilm[dask]'``): ``engine=dask [address=tcp://HOST:8786]``.

The tasks are the same plain functions the local engine runs (layerfilm.parallel.engines); Dask only places
them. What travels is small: a task's arguments (the scanned Series and the plan, tens of KB) go out,
its small arrays come back, and every worker reads its own byte ranges of the checkpoints, so the
folder must be visible to the workers under the same path (a shared filesystem, or a URL).

Progress: a task's ``progress(n)`` counts are sent from the worker as Dask events (``log_event`` on a
topic of this map, at most one every ``FLUSH_S`` seconds) and reach the bar as they come; when a task
finishes, it returns its total count, and the bar is topped up with whatever of it had not arrived
yet. So the bar moves while tasks run and always ends exactly at the sum of the counts.

With no address, layerfilm starts a ``LocalCluster`` of ``jobs`` worker processes with one thread
each; it and any client are kept for the life of the process (the passes of one run share them) and
closed at exit, or by :func:`close`. :meth:`DaskEngine.start` reaches the cluster (starts the
LocalCluster, its workers importing the modules named) in a background thread, so that this costs no
wall time while the caller scans the checkpoints; the first map waits for it.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

from layerfilm.errors import EngineError, OptionsError
from layerfilm.parallel.base import DASK_MISSING, Progress, check_jobs, cores, worker_init

CONNECT_TIMEOUT_S = 10.0  # a scheduler that does not answer in this time is an error, not a hang
CLOSE_TIMEOUT_S = 10.0  # closing waits at most this long per client or cluster (and for one still starting)
FLUSH_S = 0.2  # a worker sends its progress counts at most this often

Key = tuple[str | None, int]  # (address, workers of a LocalCluster: 0 with an address)
_clients: dict[Key, tuple[Any, Any]] = {}  # -> (client, own LocalCluster or None)
_starting: dict[Key, Future] = {}  # clients being reached in the background (DaskEngine.start)
_lock = threading.Lock()


def _distributed() -> Any:
    try:
        import distributed
    except ImportError:
        raise OptionsError(DASK_MISSING) from None
    return distributed


class DaskEngine:
    """``map`` over the workers of a Dask cluster: the scheduler at ``address``, or a LocalCluster of
    ``jobs`` processes (0: one per core). ``jobs`` is how many tasks run at once, which sizes the
    work (at least one block chunk per worker); with an address and jobs 0 it is the cluster's
    threads, counted when first asked."""

    def __init__(self, jobs: int = 0, address: str | None = None, **_: Any) -> None:
        check_jobs(jobs)
        _distributed()
        self._jobs = jobs
        self.address = address

    @property
    def jobs(self) -> int:
        if self._jobs:
            return self._jobs
        if self.address is None:
            return cores()
        return max(1, sum(self.client().nthreads().values()))

    @property
    def sharing(self) -> int:
        return self.jobs if self.address is None else 1  # a LocalCluster's workers share this machine

    def _key(self) -> Key:
        return (self.address, 0 if self.address else self._jobs or cores())

    def client(self) -> Any:
        """This process's client of the cluster (connected, or its LocalCluster started, on first use,
        or waited for if :meth:`start` began that)."""
        key = self._key()
        with _lock:
            pending = _starting.get(key)
        if pending is not None:
            pending.exception()  # wait; a failure is raised below, by the one who waits first
            with _lock:
                if _starting.get(key) is pending:
                    del _starting[key]
                    _clients[key] = pending.result()  # raises the background start's error, if any
        with _lock:
            if key not in _clients:
                _clients[key] = _connect(*key)
            return _clients[key][0]

    def start(self, modules: tuple[str, ...] = ()) -> None:
        """Reach the cluster, or start the LocalCluster with its workers importing ``modules``, in a
        background thread; returns at once (the first map waits for it)."""
        key = self._key()
        with _lock:
            if key in _clients or key in _starting:
                return
            pending: Future = Future()
            _starting[key] = pending

        def reach() -> None:
            try:
                pending.set_result(_connect(*key, modules))
            except BaseException as e:  # kept for the first map, which raises it
                pending.set_exception(e)

        threading.Thread(target=reach, name="layerfilm-dask-start", daemon=True).start()

    def map(self, fn: Callable[..., Any], args: Sequence[tuple], progress: Progress | None = None,
            resources: dict[str, float] | None = None) -> list[Any]:
        if not args:
            return []
        distributed = _distributed()
        client = self.client()
        topic = f"layerfilm-progress-{uuid.uuid4().hex}"
        ticks = _Ticks(len(args), progress)
        client.subscribe_topic(topic, ticks.event)
        if resources:
            _check_resources(client, resources, self.address)
        futures = [client.submit(_run_task, fn, a, i, topic, os.getpid(), pure=False, resources=resources)
                   for i, a in enumerate(args)]
        index = {f.key: i for i, f in enumerate(futures)}
        results: list[Any] = [None] * len(args)
        try:
            for future, (count, result) in distributed.as_completed(futures, with_results=True, loop=client.loop):
                i = index[future.key]
                ticks.finished(i, count)
                results[i] = result
        except distributed.KilledWorker as e:
            raise EngineError(f"a Dask worker died running a task ({e.args[0] if e.args else e}); workers may need "
                              "more memory, or a smaller $LAYERFILM_CHUNK_MB") from None
        finally:
            client.unsubscribe_topic(topic)
            client.cancel([f for f in futures if not f.done()])
        return results


class _Ticks:
    """The counts of one map's tasks: live events while they run, the rest when each finishes."""

    def __init__(self, n: int, progress: Progress | None) -> None:
        self.progress = progress
        self.live = [0] * n
        self.done = [False] * n
        self.lock = threading.Lock()

    def event(self, event: tuple[float, Any]) -> None:  # on the client's event loop
        i, n = event[1]
        with self.lock:
            if not self.done[i]:
                self.live[i] += n
                if self.progress is not None:
                    self.progress(n)

    def finished(self, i: int, count: int) -> None:
        with self.lock:
            self.done[i] = True
            rest = count - self.live[i]
            if rest > 0 and self.progress is not None:  # < 0 only if a task ran twice (a worker lost mid-task)
                self.progress(rest)


_initialised = False  # in a worker process: worker_init has run


def _run_task(fn: Callable[..., Any], a: tuple, i: int, topic: str, client_pid: int) -> tuple[int, Any]:
    """On a worker: ``fn(*a, progress=...)``, its progress sent as events; returns (count, result).
    A worker in its own process gets worker_init's one-thread settings once; one inside the client's
    process (``processes=False``) leaves that process's settings alone."""
    global _initialised
    from distributed import get_worker

    if os.getpid() != client_pid and not _initialised:
        worker_init()
        _initialised = True
    worker = get_worker()
    count = pending = 0
    last = time.monotonic()

    def tick(n: int = 1) -> None:
        nonlocal count, pending, last
        count += n
        pending += n
        now = time.monotonic()
        if now - last >= FLUSH_S:
            worker.log_event(topic, (i, pending))
            pending, last = 0, now

    result = fn(*a, progress=tick)
    return count, result


def _check_resources(client: Any, resources: dict[str, float], address: str | None) -> None:
    """Refuse in one line, instead of waiting forever, tasks that no worker of the cluster can hold."""
    workers = client.scheduler_info().get("workers", {}).values()
    if not any(all(w.get("resources", {}).get(k, 0) >= v for k, v in resources.items()) for w in workers):
        need = " ".join(f"{k}={v:g}" for k, v in resources.items())
        raise EngineError(f"no worker of the Dask cluster at {address or 'this machine'} offers {need} (start one per "
                          f"GPU with `dask worker ADDRESS --resources {need}`, e.g. under dask-cuda)")


def _connect(address: str | None, workers: int, modules: tuple[str, ...] = ()) -> tuple[Any, Any]:
    """A client of the scheduler at ``address``, or of a new LocalCluster of ``workers`` processes
    (each importing ``modules`` as it starts)."""
    distributed = _distributed()
    if address is None:
        # each worker holds one GPU slot: a device task (layerfilm.points.activations.devices) at a time
        cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                           dashboard_address=None, silence_logs=logging.ERROR, resources={"GPU": 1},
                                           preload=list(modules))
        return distributed.Client(cluster, set_as_default=False), cluster
    try:
        _handshake(distributed, address)
        return distributed.Client(address, timeout=CONNECT_TIMEOUT_S, set_as_default=False), None
    except (OSError, TimeoutError):
        raise EngineError(f"address={address}: no Dask scheduler answered within {CONNECT_TIMEOUT_S:g} s") from None


def _handshake(distributed: Any, address: str) -> None:
    """Open one connection to ``address`` and wait at most ``CONNECT_TIMEOUT_S`` for a Dask handshake.

    Why: ``distributed`` bounds the TCP connect but then waits without limit for the scheduler's first
    message, so a server that accepts and says nothing (another service on the port) held a Client
    forever, and a Client interrupted there left its ``__del__`` to fail at exit. Asked on a private
    event loop, cancelled at the deadline: nothing outlives the wait."""
    import asyncio

    args = distributed.security.Security().get_connection_args("client")

    async def probe() -> None:
        comm = await asyncio.wait_for(distributed.comm.connect(address, timeout=CONNECT_TIMEOUT_S, **args),
                                      CONNECT_TIMEOUT_S)
        comm.abort()

    asyncio.run(probe())


def close() -> None:
    """Close this process's clients and the LocalClusters layerfilm started (those still starting
    once they have)."""
    with _lock:
        pending = list(_starting.items())
        _starting.clear()
    for key, started in pending:
        try:
            if started.exception(timeout=CLOSE_TIMEOUT_S) is None:
                with _lock:
                    _clients.setdefault(key, started.result())
        except TimeoutError:  # still starting: its daemon thread ends with the process
            pass
    with _lock:
        closing = list(_clients.values())
        _clients.clear()
    for client, cluster in closing:
        for what in (client, cluster):
            if what is not None:
                try:
                    what.close(timeout=CLOSE_TIMEOUT_S)
                except (OSError, TimeoutError):  # a scheduler gone quiet: nothing more to tidy
                    pass


atexit.register(close)
