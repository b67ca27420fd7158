"""How much a block's points move: the film's own measures, from its points instead of whole blocks.

``point_update`` and ``point_distance`` (T, L) are ``layerfilm.stability``'s relative update and
distance to the final key frame, computed on the points the film shows (the tracked rows, or the
activations). They come for free while the points are read (``PointMeasures.add`` per key frame,
given the final one first), or from one pass over a feature store (``point_measures``); the film's
overlay uses them, so it never reads the checkpoints a second time.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from layerfilm.points import ArrayStore, FeatureStore

Reader = Callable[..., np.ndarray]  # read(t) -> key frame t's (L, N, D) rows; read(t, l) -> block l's (N, D)


def relative_update(prev_sq: np.ndarray, norm: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """(T, L) ||W_t - W_{t-1}|| / ||W_t|| scaled to the median step gap (a gap twice the median counts
    half); NaN at t = 0. prev_sq (T, L): squared distances to the previous key frame; norm (T, L)."""
    gaps = np.diff(np.asarray(steps, np.float64))
    rel = np.full(prev_sq.shape, np.nan)
    rel[1:] = np.sqrt(prev_sq[1:]) / np.maximum(norm[1:], 1e-300) * (np.median(gaps) / gaps)[:, None]
    return rel


SMALLEST_SQ = 2.0 ** -64  # a float32 sum of squares below this may have lost bits to underflow


def sum_sq(x: np.ndarray, y: np.ndarray | None = None, buf: np.ndarray | None = None) -> np.ndarray:
    """(L,) sum of squares of each block's array in x (L, N, ...), or of x - y (through ``buf``, x's shape,
    if given): float32 per row (no float64 copy of x), float64 over rows. A block whose float32 sums
    overflowed or may have underflowed (finite weights times 1e38, or 1e-38) is summed again in float64."""
    with np.errstate(over="ignore", under="ignore"):  # found below
        d = x if y is None else np.subtract(x, y, out=buf)
        flat = d.reshape(d.shape[0], d.shape[1], -1)
        out = np.einsum("lnd,lnd->ln", flat, flat).sum(axis=1, dtype=np.float64)
    for l in np.flatnonzero(~(out >= SMALLEST_SQ) | ~np.isfinite(out)):  # 0 included: it may be underflow
        d64 = x[l].astype(np.float64)
        if y is not None:
            d64 -= y[l]
        out[l] = np.vdot(d64, d64)
    return out


def sum_sq_diff(x: np.ndarray, y: np.ndarray, buf: np.ndarray) -> np.ndarray:
    """(L,) ``sum_sq(x, y)``, one block at a time through ``buf`` so the difference stays in the CPU's cache."""
    return np.concatenate([sum_sq(x[l:l + 1], y[l:l + 1], buf[None]) for l in range(x.shape[0])])


class PointMeasures:
    """Feed every key frame's (L, N, D) points in order with ``add``; ``result`` gives the measures.

    ``final``: the final key frame's points, for the distance to it (a film made at once reads it
    first); None for a film that grows a key frame at a time (layerfilm.study.Study.add), whose
    distances to the newest key frame are kept apart (``DistanceBounds``)."""

    def __init__(self, final: np.ndarray | None = None) -> None:
        self.final = final
        self.prev: np.ndarray | None = None  # the last key frame added
        self.buf = np.empty(final.shape[1:], final.dtype) if final is not None else None
        self.sq: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]] = []  # (norm², to previous², to final²)

    def add(self, x: np.ndarray) -> None:
        if self.buf is None:
            self.buf = np.empty(x.shape[1:], x.dtype)
        to_prev = sum_sq_diff(x, self.prev, self.buf) if self.prev is not None else np.zeros(x.shape[0])
        to_final = sum_sq_diff(x, self.final, self.buf) if self.final is not None else None
        self.sq.append((sum_sq(x), to_prev, to_final))
        self.prev = x

    @property
    def norm_sq(self) -> np.ndarray:
        """(T, L) each key frame's squared norm per block."""
        return np.stack([s[0] for s in self.sq])

    @property
    def prev_sq(self) -> np.ndarray:
        """(T, L) each key frame's squared distance to the previous one per block (zeros at the first)."""
        return np.stack([s[1] for s in self.sq])

    def result(self, steps: np.ndarray) -> dict[str, np.ndarray]:
        assert self.final is not None  # the distance to the final key frame needs it
        final = np.stack([s[2] for s in self.sq if s[2] is not None])
        return measures_of(self.norm_sq, self.prev_sq, final, steps)


def measures_of(norm_sq: np.ndarray, prev_sq: np.ndarray, final_sq: np.ndarray, steps: np.ndarray) -> dict[str, np.ndarray]:
    """``point_update`` and ``point_distance`` (T, L) from each key frame's squared norm, squared distance
    to the previous key frame and to the final one (T, L each): one formula for a film made at once
    (``PointMeasures``) and one made a key frame at a time (layerfilm.live.film)."""
    norm = np.sqrt(norm_sq)
    return {"point_update": relative_update(prev_sq, norm, steps),
            "point_distance": np.sqrt(final_sq) / np.maximum(norm[-1], 1e-300)}


def point_measures(store: FeatureStore | ArrayStore, steps: np.ndarray) -> dict[str, np.ndarray]:
    """``PointMeasures`` over every key frame of ``store``: one pass, no checkpoint read."""
    acc = PointMeasures(store[len(store) - 1])
    for t in range(len(store)):
        acc.add(store[t])
    return acc.result(steps)


class DistanceBounds:
    """Every key frame's distance to the newest one, per block, for a film that grows a key frame at a
    time (layerfilm.live.film): the exact squared distance where it was computed, else an interval.

    When key frame T arrives, each earlier key frame's distance to it is bounded by the triangle
    inequality from its distance to T-1 and the exact step delta = ||x_T - x_{T-1}||:
    |d(t, T-1) - delta| <= d(t, T) <= d(t, T-1) + delta. A block whose rows did not change (delta = 0)
    keeps its exact values. Which blocks have settled (``settle``, ``layerfilm.stability.near_index``'s
    rule) is mostly decided by the intervals; only a (key frame, block) whose interval straddles the
    threshold is read back (``read(t, l)`` -> that block's rows) and computed exactly, by the same
    arithmetic as a render's measures. So an update of a watched film reads back a few blocks' rows, not
    every key frame's; ``exact`` computes every distance (the stability JSON and the exported points
    print them)."""

    MARGIN = 1e-4  # relative; far above float32 sums' rounding (~1e-5 at worst), so bounds never mislead

    def __init__(self, blocks: int) -> None:
        self.sq = np.zeros((0, blocks))  # exact squared distances, where self.known
        self.lo = np.zeros((0, blocks))  # bounds on the distance (not squared)
        self.hi = np.zeros((0, blocks))
        self.known = np.zeros((0, blocks), bool)
        self.read_back = 0  # (key frame, block) pairs read back and computed exactly

    def __len__(self) -> int:
        return len(self.sq)

    def add(self, prev_sq: np.ndarray) -> None:
        """The next key frame, with its exact squared distance to the previous one (L,; zeros at the first)."""
        if len(self):
            delta = np.sqrt(prev_sq)
            moved = delta != 0
            with np.errstate(invalid="ignore"):  # a non-finite delta leaves NaN bounds: read back when asked
                lo = np.maximum(np.maximum(self.lo - delta, delta - self.hi), 0)
            self.lo = np.where(moved, lo, self.lo)
            self.hi = np.where(moved, self.hi + delta, self.hi)
            self.known &= ~moved
            self.sq[-1], self.lo[-1], self.hi[-1], self.known[-1] = prev_sq, delta, delta, True
        zero = np.zeros((1, self.sq.shape[1]))
        self.sq, self.lo, self.hi = (np.concatenate([a, zero]) for a in (self.sq, self.lo, self.hi))
        self.known = np.concatenate([self.known, np.ones((1, self.sq.shape[1]), bool)])

    def _resolve(self, t: int, blocks: np.ndarray, newest: np.ndarray, read: Reader) -> None:
        """Exact squared distances of key frame t's ``blocks`` to the newest key frame: the whole row read
        once when it has several, else the one block's rows."""
        if len(blocks) == 1:
            rows = [(int(blocks[0]), read(t, int(blocks[0]))[None])]
        else:
            x = read(t)
            rows = [(int(l), x[l:l + 1]) for l in blocks]
        buf = np.empty(newest.shape[1:], np.float32)
        for l, x_l in rows:
            sq = sum_sq_diff(x_l, newest[l:l + 1], buf)[0]
            self.sq[t, l], self.known[t, l] = sq, True
            self.lo[t, l] = self.hi[t, l] = np.sqrt(sq)
        self.read_back += len(rows)

    def exact(self, newest: np.ndarray, read: Reader) -> np.ndarray:
        """(T, L) every squared distance to the newest key frame (``newest``: its (L, N, D) rows)."""
        for t in np.flatnonzero(~self.known.all(axis=1)):
            self._resolve(int(t), np.flatnonzero(~self.known[t]), newest, read)
        return self.sq.copy()

    def first(self, newest: np.ndarray, read: Reader) -> np.ndarray:
        """(L,) the first key frame's squared distance to the newest per block (the total change, which
        decides "barely moved"), its rows read back where it is not known exactly (one key frame's at most)."""
        unknown = np.flatnonzero(~self.known[0])
        if len(unknown):
            self._resolve(0, unknown, newest, read)
        return self.sq[0].copy()

    def settle(self, threshold: float, norm_sq: np.ndarray, newest: np.ndarray,
               read: Reader) -> np.ndarray:
        """(L,) ``near_index`` (rule (a) of layerfilm.stability) of the point distances (``norm_sq``: the
        newest key frame's (L,) squared norms), reading back only what the bounds leave undecided."""
        scale = np.maximum(np.sqrt(norm_sq), 1e-300)
        return np.array([self._settle_block(l, threshold, scale[l], newest, read) for l in range(self.sq.shape[1])],
                        np.int64)

    def _settle_block(self, l: int, threshold: float, scale: float, newest: np.ndarray, read: Reader) -> int:
        """Block l's settling key frame (near_index's rule: 0 if it never moved, -1 if only the newest
        key frame qualifies), each undecided comparison settled by reading back one key frame's rows."""
        T, m = len(self), self.MARGIN
        while True:
            d = np.sqrt(self.sq[:, l]) / scale  # the render's point_distance, where known
            if self.known[0, l] and d[0] == 0:  # never moved: settled from the start
                return 0
            lo, hi, lo0, hi0 = self.lo[:, l], self.hi[:, l], self.lo[0, l], self.hi[0, l]
            with np.errstate(invalid="ignore"):
                exact = self.known[:, l] & self.known[0, l]
                below = np.where(exact, d < threshold * d[0], hi * (1 + m) < threshold * lo0 - m * hi0)
                above = np.where(exact, ~(d < threshold * d[0]), lo - m * hi >= threshold * hi0 * (1 + m))
            rest = np.flatnonzero(~below)
            if not len(rest):
                k = 0
            elif above[rest[-1]]:
                k = int(rest[-1]) + 1
            else:  # undecided: the first key frame's distance, then this one's, computed exactly
                self._resolve(0 if not self.known[0, l] else int(rest[-1]), np.array([l]), newest, read)
                continue
            return k if k <= T - 2 else -1
