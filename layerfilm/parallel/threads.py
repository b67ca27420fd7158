"""Running stages side by side: frames drawn ahead in a thread while ffmpeg encodes, and numeric
libraries kept from fighting over a few cores.

Drawing a frame is NumPy work that mostly releases the GIL, and writing it to ffmpeg's pipe blocks
without the GIL, so one drawing thread ahead of the writer keeps both busy: the film takes as long
as the slower of the two rather than their sum.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

from layerfilm.parallel.signals import deferred_signals

T = TypeVar("T")
A = TypeVar("A")
_DONE = object()


def map_ahead(fn: Callable[[A], T], items: Iterable[A], workers: int) -> Generator[T, None, None]:
    """``fn(item)`` of each item, in order, computed by ``workers`` threads at once (at most ``workers``
    results waiting): several slow reads in flight (a remote checkpoint's ranged GETs wait on the
    network, not on a core). One worker: plain ``map``."""
    if workers <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="layerfilm-read") as pool:
        window: deque[Future] = deque()
        try:
            for item in items:
                window.append(pool.submit(fn, item))
                if len(window) >= workers:
                    yield window.popleft().result()
            while window:
                yield window.popleft().result()
        finally:
            for f in window:
                f.cancel()


def prefetch(items: Iterable[T], depth: int = 3) -> Generator[T, None, None]:
    """Yield the items of ``items``, computed ahead by a background thread, at most ``depth`` waiting.

    An exception raised while computing an item is raised here, at that item. Closing the generator
    early (an encoder failure, Ctrl-C) stops the thread after the item it is computing.
    """
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def work() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put((_DONE, None))
        except BaseException as e:  # handed to the consumer, which re-raises it
            q.put((_DONE, e))

    thread = threading.Thread(target=work, name="layerfilm-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, error = q.get()
            if error is not None:
                raise error
            if item is _DONE:
                return
            yield item
    finally:
        with deferred_signals():  # a second Ctrl-C must not leave the thread running
            _stop(thread, stop, q)


def _stop(thread: threading.Thread, stop: threading.Event, q: queue.Queue) -> None:
    stop.set()
    while thread.is_alive():  # unblock a put, then let the thread see the stop
        try:
            q.get(timeout=0.05)
        except queue.Empty:
            pass
    thread.join()


@contextmanager
def one_blas_thread() -> Iterator[None]:
    """Hold BLAS (OpenBLAS/MKL) to one thread inside the block.

    layerfilm's matrix work is many small products (one per block); split over threads they gain
    little, and on a machine whose cores are busy (ffmpeg, other jobs) the pool's spinning threads
    make them many times slower (benchmarks/bench_projection.py)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield
