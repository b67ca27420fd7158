"""A bounded ring of host chunks through which a checkpoint's bytes stream to the device.

Why a ring and not a buffer of the whole checkpoint: host memory stays bounded (``count`` x ``size``
bytes, e.g. 256 MiB, whatever the model), and pinned memory is allocated once per loader in pieces
small enough that its first allocation costs nothing noticeable (a whole-checkpoint pinned buffer is
rounded up to a power of two by torch's caching host allocator and cost seconds to pin on first use).

Pieces of data are numbered in one sequence across checkpoints (:meth:`ChunkRing.reserve`); piece
``seq`` goes through chunk ``seq % count`` and may fill it only once piece ``seq - count`` has been
released, i.e. once the copies out of the chunk have been enqueued and have finished (its event).
Because a piece only ever waits for lower numbers, a checkpoint's first pieces can be read ahead (while
the previous checkpoint runs its probe) without any risk of a deadlock. Nothing is global: a ring
belongs to one loader, one device.
"""

from __future__ import annotations

import threading

import torch


class RingClosed(RuntimeError):
    """The loader was closed while a read waited for a chunk (the pass is ending early)."""


class ChunkRing:
    """``count`` host chunks of ``size`` bytes (pinned when ``pin``), each allocated on first use and
    reused for every later checkpoint.

    Example:
        >>> ring = ChunkRing(2, 1024, pin=False)
        >>> first = ring.reserve(3)
        >>> chunk = ring.acquire(first)      # chunk 0, free at once
        >>> ring.release(first, None)        # its copies are done (on a GPU: an event)
    """

    def __init__(self, count: int, size: int, pin: bool) -> None:
        if count < 1 or size < 1:
            raise ValueError(f"a ring needs at least one chunk of one byte, not {count} x {size}")
        self.count, self.size, self.pin = count, size, pin
        self._chunks: list[torch.Tensor | None] = [None] * count
        self._released = [i - count for i in range(count)]  # per chunk: the last piece that released it
        self._events: list[torch.cuda.Event | None] = [None] * count
        self._next = 0
        self._closed = False
        self._cond = threading.Condition()

    def reserve(self, n: int) -> int:
        """Number ``n`` pieces (one checkpoint's) after every piece reserved before; returns the first number."""
        with self._cond:
            first, self._next = self._next, self._next + n
            return first

    def acquire(self, seq: int) -> torch.Tensor:
        """Chunk for piece ``seq``, once piece ``seq - count`` has released it and its copies are done.
        Raises RingClosed if the ring is closed meanwhile."""
        slot = self._wait(seq)
        chunk = self._chunks[slot]
        if chunk is None:  # only the holder of a slot touches it, so no lock is needed here
            try:
                chunk = torch.empty(self.size, dtype=torch.uint8, pin_memory=self.pin)
            except RuntimeError:  # pinning refused (memory lock limits): pageable memory still works, slower
                chunk = torch.empty(self.size, dtype=torch.uint8)
            self._chunks[slot] = chunk
        return chunk

    def _wait(self, seq: int) -> int:
        slot = seq % self.count
        with self._cond:
            while self._released[slot] != seq - self.count:
                if self._closed:
                    raise RingClosed("the weight loader was closed")
                self._cond.wait()
            event, self._events[slot] = self._events[slot], None
        if event is not None:
            event.synchronize()
        return slot

    def release(self, seq: int, done: torch.cuda.Event | None) -> None:
        """Piece ``seq`` is done with its chunk; ``done`` (a GPU) is recorded after the copies out of it."""
        slot = seq % self.count
        with self._cond:
            self._events[slot] = done
            self._released[slot] = seq
            self._cond.notify_all()

    def skip(self, seq: int) -> None:
        """Give up piece ``seq`` (its checkpoint failed): wait for its turn, then release it unused."""
        self._wait(seq)
        self.release(seq, None)

    def close(self) -> None:
        """Wake every waiting ``acquire`` with RingClosed (the consumer is gone)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def allocated(self) -> int:
        """Bytes of host chunks allocated so far."""
        return sum(c.numel() for c in self._chunks if c is not None)
