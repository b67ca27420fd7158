"""What every engine shares: the Engine protocol, progress counts, the cores this process may use,
--jobs, and how a worker process sets itself up (layerfilm.parallel.engines)."""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from layerfilm.errors import OptionsError

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

    def start(self, modules: tuple[str, ...] = ()) -> None:
        """Get the workers ready for maps to come (each importing ``modules``), where that can be
        done ahead; returns at once."""
        ...


def cores() -> int:
    """The cores this process may use (its CPU affinity, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def check_jobs(jobs: int) -> int:
    """--jobs: 0 means one per core."""
    if jobs < 0:
        raise OptionsError(f"jobs={jobs}: must be 0 (one per core) or more")
    return jobs or cores()


def worker_init() -> None:
    """One thread each for numba and BLAS in a worker: the workers already fill the cores, and a
    threaded numba or OpenBLAS spin-waits on busy cores. numba reads its thread count when first
    imported, so it is set only where numba is already imported: a worker that never needs it (a film
    segment's) never pays for importing it."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    os.environ["NUMBA_NUM_THREADS"] = "1"
    numba = sys.modules.get("numba")
    if numba is not None:
        numba.set_num_threads(1)
    if "MALLOC_TRIM_THRESHOLD_" in os.environ:  # a Dask worker (its nanny sets it)
        reuse_freed_memory()


# glibc's mallopt parameters (malloc.h), and where its own sliding thresholds stop
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_MAX = 32 * 2**20


def reuse_freed_memory() -> None:
    """Let freed arrays be reused instead of unmapped. Dask's nanny starts its workers with
    MALLOC_TRIM_THRESHOLD_=65536 (to hand memory back to the OS), and setting any threshold turns off
    glibc's sliding mmap threshold: it stays at 128 KiB, so every block tensor, its float32 copy and
    every temporary of the measures is a fresh mmap, page-faulted and zeroed by the kernel, then
    unmapped, which multiplies the system CPU of a measure (benchmarks/RESULTS.md). The thresholds are
    set where glibc's sliding ones end up (mmap above 32 MiB, trim above twice that)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return
    mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)
    mallopt(M_TRIM_THRESHOLD, 2 * MMAP_THRESHOLD_MAX)


DASK_MISSING = "--engine dask needs dask.distributed: pip install 'layerfilm[dask]'"
