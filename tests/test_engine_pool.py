"""The local engine's worker pool (layerfilm.parallel.engines, issue 13): inside ``session()`` one pool serves every
map (the same worker processes, started ahead by ``start``), each map's bar gets exactly its own tasks'
counts, a failed map's pool is closed and the next map gets a fresh one, and no worker outlives the
session. Also: a Dask-style MALLOC_TRIM_THRESHOLD_ no longer makes freed arrays page-fault anew."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from layerfilm.parallel import local as engine_module
from layerfilm.parallel.engines import LocalEngine, session


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
