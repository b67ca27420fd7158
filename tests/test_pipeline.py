"""layerfilm.parallel.threads: frames computed ahead in a thread; BLAS held to one thread."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from layerfilm.parallel.threads import one_blas_thread, prefetch


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
