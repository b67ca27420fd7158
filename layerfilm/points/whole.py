"""Whole-block measures: per block and key frame, the sums over every entry of the block's tensors that
:class:`layerfilm.stability.Stability` is made of (norms, distances to the previous and the final
checkpoint, value histograms) and the CKA of its points, fed one checkpoint at a time (:class:`BlockStats`).

The sums run a cache-sized chunk at a time in float64, the differences exact; a bf16 tensor's histogram
and value range are counted by value (65,536 at most) and binned by numpy itself, so the counts are
``np.histogram``'s and the range ``np.percentile``'s exactly (benchmarks/RESULTS.md, issue 30).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from layerfilm.errors import CheckpointError, OptionsError, need
from layerfilm.io.formats import COMPACT, Reader, check_finite, not_finite
from layerfilm.io.storage import AnyPath
from layerfilm.points import ArrayStore
from layerfilm.points.measures import relative_update
from layerfilm.points.weights import WeightPlan, tracked

HIST_BINS = 60  # value bins of the HOT chart, as in fastai's colorful dimension
HIST_PERCENTILE = 99.9  # the HOT chart's value range: this percentile of |w| at the first and last key frame


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA (Kornblith et al. 2019) between point sets x (N, D) and y (N, D'): 1 for the same
    cloud up to rotation and scale, near 0 for unrelated ones."""
    return _Cka(y).to(x)


class _Cka:
    """Linear CKA to one point set ``y`` (N, D), its own terms computed once: the final key frame's,
    against every key frame. ||x'y||² = <xx', yy'> and ||x'x|| = ||xx'||: the N x N Gram matrices where
    N < D (the film's points: 512 rows of width 1,024 and more), else the D x D ones."""

    def __init__(self, y: np.ndarray) -> None:
        self.y = y - y.mean(axis=0)
        self.ky = self.y @ self.y.T if y.shape[0] < y.shape[1] else None
        self.norm_y = np.linalg.norm(self.ky if self.ky is not None else self.y.T @ self.y)

    def to(self, x: np.ndarray) -> float:
        x = x - x.mean(axis=0)
        if self.ky is not None and x.shape[0] < x.shape[1]:
            kx = x @ x.T
            cross, norm_x = float(np.vdot(kx, self.ky)), np.linalg.norm(kx)
        else:
            cross, norm_x = np.linalg.norm(x.T @ self.y) ** 2, np.linalg.norm(x.T @ x)
        den = norm_x * self.norm_y
        return float(cross / den) if den > 0 else float("nan")


def _present(reader: Reader, name: str, where: AnyPath) -> str:
    """``name``, or the error of a checkpoint that lacks it."""
    if name not in reader.keys():
        raise CheckpointError(f"{where}: tensor {name} is missing")
    return name


@dataclass(frozen=True)
class BlockMeasures:
    """The whole-block measures of a series (what the Run caches; :class:`Stability` adds the film's
    motion and the settling). Shapes as in :class:`Stability`."""

    steps: np.ndarray  # (T,)
    blocks: np.ndarray  # (L,)
    components: tuple[str, ...]  # (C,)
    relative_update: np.ndarray  # (T, L)
    distance_to_final: np.ndarray  # (T, L)
    norm: np.ndarray  # (T, L)
    param_norm: np.ndarray  # (T, L, C)
    cka_to_final: np.ndarray  # (T, L)
    hist: np.ndarray  # (T, L, B)
    hist_edges: np.ndarray  # (L, B + 1)
    points: str = ""

    def to_arrays(self) -> dict[str, np.ndarray]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        return d | {"components": np.asarray(self.components, dtype=str), "points": np.str_(self.points)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> BlockMeasures:
        d: dict[str, Any] = {k: np.asarray(arrays[k]) for k in cls.__dataclass_fields__}
        T, L = len(d["steps"]), len(d["blocks"])
        if d["norm"].shape != (T, L) or d["hist"].shape[:2] != (T, L) or d["param_norm"].shape[:2] != (T, L):
            raise ValueError("measures of the wrong shape")
        return cls(**d | {"components": tuple(str(c) for c in d["components"]), "points": str(d["points"])})

    @classmethod
    def assemble(cls, steps: np.ndarray, blocks: np.ndarray, wp: WeightPlan, m: dict[str, np.ndarray]) -> BlockMeasures:
        """From the sums of squares and counts of :class:`BlockStats` (joined over block chunks)."""
        norm = np.sqrt(m["norm_sq"])
        return cls(steps, blocks, component_names(wp), relative_update(m["prev_sq"], norm, steps),
                   np.sqrt(m["final_sq"]) / np.maximum(norm[-1], 1e-300), norm, m["param_norm"], m["cka"],
                   m["hist"], m["hist_edges"], wp.name)


def component_names(wp: WeightPlan) -> tuple[str, ...]:
    lm = wp.layer_map
    return tuple(sorted({c for b in lm.blocks for c in lm.names[b]}))


CHUNK = 1 << 16  # elements of a tensor measured at once: the work arrays stay in the CPU's cache
COUNT_CHUNK = 1 << 20  # elements counted at once (np.bincount's 65,536 totals are added once per chunk)
BF16_VALUES = (np.arange(1 << 16, dtype=np.uint32) << 16).view(np.float32)  # every bf16 value, by its bits


class Work:
    """Work arrays reused across tensors and key frames (a fresh temporary of a large tensor costs its
    page faults every time: system time as large as the arithmetic's)."""

    def __init__(self) -> None:
        self.x, self.y = np.empty(CHUNK), np.empty(CHUNK)  # float64
        self.low = np.empty(COUNT_CHUNK, np.uint32)
        self.bits = np.empty(COUNT_CHUNK, np.intp)


def sums_of_squares(w: np.ndarray, others: list[np.ndarray], work: Work) -> tuple[float, list[float]]:
    """sum(w²) and sum((w - o)²) for each ``o`` of ``others`` (float32 arrays of w's shape), in float64:
    the differences exact, one cache-sized chunk at a time."""
    flat, rest = w.reshape(-1), [o.reshape(-1) for o in others]
    n2, sq = 0.0, [0.0] * len(others)
    for s in range(0, flat.size, CHUNK):
        x = work.x[:min(CHUNK, flat.size - s)]
        np.copyto(x, flat[s:s + CHUNK])
        n2 += float(np.dot(x, x))
        for i, o in enumerate(rest):
            y = work.y[:len(x)]
            np.copyto(y, o[s:s + CHUNK])
            np.subtract(x, y, out=y)
            sq[i] += float(np.dot(y, y))
    return n2, sq


def bf16_counts(w: np.ndarray, work: Work) -> np.ndarray | None:
    """(65,536,) how many entries of the float32 array ``w`` hold each bf16 value (indexed by its bits),
    or None if some entry is not a bf16 value (a float32 or float16 checkpoint's)."""
    bits = w.reshape(-1).view(np.uint32)
    counts = np.zeros(1 << 16, np.int64)
    for s in range(0, bits.size, COUNT_CHUNK):
        k = min(COUNT_CHUNK, bits.size - s)
        if np.bitwise_and(bits[s:s + k], 0xFFFF, out=work.low[:k]).any():
            return None
        np.right_shift(bits[s:s + k], 16, out=work.bits[:k], casting="unsafe")
        counts += np.bincount(work.bits[:k], minlength=1 << 16)
    return counts


def histogram(w: np.ndarray | None, edges: np.ndarray, counts: np.ndarray | None) -> np.ndarray:
    """(bins,) counts of ``w``'s entries in the equal-width bins ``edges``, values outside clipped into
    the end bins: the counts of ``np.histogram`` of the clipped values. A bf16 tensor's (``counts``: its
    :func:`bf16_counts`) are binned by value, 65,536 at most, by ``np.histogram`` itself."""
    if counts is None:
        assert w is not None  # a tensor that is not bf16 is binned entry by entry
        values, weights = w.reshape(-1), None
    else:
        values, weights = BF16_VALUES[counts > 0], counts[counts > 0]
    clipped = np.clip(values.astype(np.float64), edges[0], edges[-1])
    hist = np.histogram(clipped, bins=len(edges) - 1, range=(edges[0], edges[-1]), weights=weights)[0]
    return hist.astype(np.int64)


def abs_percentile(counts: np.ndarray, q: float) -> float:
    """``np.percentile(np.abs(w), q)`` (its "linear" method) from ``w``'s bf16 value counts
    (:func:`bf16_counts`): the two order statistics around the virtual index, interpolated as numpy does."""
    mags = counts[:1 << 15] + counts[1 << 15:]  # |w| by its bits: +x and -x differ by the sign bit alone
    order = np.cumsum(mags)
    n = int(order[-1])
    index = (n - 1) * (q / 100)
    below = min(int(math.floor(index)), n - 1)
    a, b = (float(BF16_VALUES[np.searchsorted(order, k, side="right")]) for k in (below, min(below + 1, n - 1)))
    t = index - below
    return b - (b - a) * (1 - t) if t >= 0.5 else a + (b - a) * t


class BlockStats:
    """Whole-block measures of a chunk of blocks, fed one checkpoint at a time: the final checkpoint's
    tensors first (kept), then the others in order (the previous one kept), so that each tensor of the
    series is read exactly once. ``read`` gets a checkpoint's tensors of the chunk; ``add`` takes them
    and returns the chunk's tracked points (the film's, taken from the same tensors)."""

    COPIES = 5  # chunks of a block's tensors held at once: final, previous, current, one read ahead, one being read
    BLOCK_AXIS = {"norm_sq": 1, "prev_sq": 1, "final_sq": 1, "param_norm": 1, "cka": 1, "hist": 1, "hist_edges": 0}

    def __init__(self, wp: WeightPlan, blocks: tuple[int, ...], keyframes: int, bins: int = HIST_BINS) -> None:
        self.wp, self.blocks, self.T, self.bins = wp, blocks, keyframes, bins
        lm = wp.layer_map
        comps = component_names(wp)
        # (c, name) of every tensor of each block, in the order of ``comps``
        self.names = [[(c, lm.names[lm.blocks[i]][comp]) for c, comp in enumerate(comps) if comp in lm.names[lm.blocks[i]]]
                      for i in blocks]
        Lc = len(blocks)
        self.sq = {k: np.zeros((keyframes, Lc)) for k in ("norm_sq", "prev_sq", "final_sq")}
        self.param_norm = np.full((keyframes, Lc, len(comps)), np.nan)
        self.hist = np.zeros((keyframes, Lc, bins), np.int64)
        self.edges: np.ndarray | None = None
        self.final: list[dict[str, np.ndarray]] | None = None
        self.prev: list[dict[str, np.ndarray]] | None = None
        self._work = Work()
        self._counted: dict[int, np.ndarray | None] = {}  # bf16_counts of the first and final tensors, by id

    def read(self, reader: Reader, where: AnyPath) -> list[dict[str, np.ndarray]]:
        """Every tensor of the chunk's blocks in one open checkpoint, float32, checked finite."""
        out = []
        for i, names in zip(self.blocks, self.names):
            block = {}
            for _, name in names:
                w = reader.get(_present(reader, name, where))  # float32 (bf16/fp16 widened)
                check_finite(w, where, name, self.wp.layer_map.blocks[i])
                block[name] = w
            out.append(block)
        return out

    def add(self, t: int, tensors: list[dict[str, np.ndarray]]) -> np.ndarray:
        """Measure key frame ``t`` (the final one, T - 1, comes first); returns its (Lc, N, D) points."""
        if self.final is None:  # the final checkpoint: kept while the others stream by
            self.final = tensors
        elif self.edges is None:  # the first: with the final, it fixes the histograms' range
            self.edges = self._edges(tensors, self.final)
        if t != self.T - 1:
            self._measure(t, tensors)
        if t == self.T - 2:
            self._measure(self.T - 1, self.final)  # the final one last, its previous now known
        return self._points(tensors)

    # the numbers of one tensor (a device's BlockStats computes them there: DeviceBlockStats)

    def _points(self, tensors: list[dict[str, Any]]) -> np.ndarray:
        """(Lc, N, D) float32: the tracked points of the chunk's blocks."""
        pts = np.stack([tracked(blk[self.wp.tensor_names[i]], self.wp, i) for i, blk in zip(self.blocks, tensors)])
        return pts.astype(np.float32)

    def _sums(self, w: Any, others: list[Any]) -> tuple[float, list[float]]:
        """sum(w²) and sum((w - o)²) for each of ``others``, in float64."""
        return sums_of_squares(w, others, self._work)

    def _counts(self, w: Any) -> np.ndarray | None:
        """(65,536,) count of each bf16 value in ``w``, or None where ``w`` is not bf16."""
        return bf16_counts(w, self._work)

    def _top(self, w: Any, counts: np.ndarray | None) -> float:
        """The HIST_PERCENTILE-th percentile of |w| (``counts``: its bf16 value counts, or None)."""
        if counts is not None:
            return abs_percentile(counts, HIST_PERCENTILE)
        return float(np.percentile(np.abs(w.astype(np.float64)), HIST_PERCENTILE))

    def _hist(self, w: Any, edges: np.ndarray, counts: np.ndarray | None) -> np.ndarray:
        """(bins,) counts of ``w``'s entries in ``edges``, clipped into the end bins."""
        return histogram(w, edges, counts)

    def _edges(self, first: list[dict], final: list[dict]) -> np.ndarray:
        """(Lc, bins + 1) symmetric value range per block from its matrices at the first and last key frame."""
        top = np.zeros(len(self.blocks))
        for l, (a, b) in enumerate(zip(first, final)):
            for name in a:
                if a[name].ndim >= 2:
                    for w in (a[name], b[name]):
                        counts = self._counted[id(w)] = self._counts(w)  # their histograms use them
                        top[l] = max(top[l], self._top(w, counts))
        top = np.where(top > 0, top, 1.0)
        return np.stack([np.linspace(-t, t, self.bins + 1) for t in top])

    def _measure(self, t: int, tensors: list[dict[str, np.ndarray]]) -> None:
        assert self.final is not None and self.edges is not None  # add() keeps them before any measuring
        for l, (names, blk) in enumerate(zip(self.names, tensors)):
            for c, name in names:
                w = blk[name]
                others = [self.final[l][name]] + ([self.prev[l][name]] if self.prev is not None else [])
                n2, (final_sq, *prev_sq) = self._sums(w, others)
                self.param_norm[t, l, c] = math.sqrt(n2)
                self.sq["norm_sq"][t, l] += n2
                self.sq["final_sq"][t, l] += final_sq
                if prev_sq:
                    self.sq["prev_sq"][t, l] += prev_sq[0]
                if w.ndim >= 2:
                    counts = self._counted.pop(id(w)) if id(w) in self._counted else self._counts(w)
                    self.hist[t, l] += self._hist(w, self.edges[l], counts)
        self.prev = tensors

    def result(self, points: ArrayStore) -> dict[str, np.ndarray]:
        """The chunk's sums (see :meth:`BlockMeasures.assemble`); ``points`` (T key frames of (Lc, N, D))
        for the CKA."""
        final = [_Cka(x) for x in points[len(points) - 1].astype(np.float64)]
        cka = np.array([[final[l].to(x[l].astype(np.float64)) for l in range(len(x))]
                        for x in (points[t] for t in range(len(points)))])
        assert self.edges is not None  # at least two key frames were added
        return {**self.sq, "param_norm": self.param_norm, "cka": cka, "hist": self.hist, "hist_edges": self.edges}


def check_device(device: str) -> None:
    """A torch device that can take the whole-block measures, or one line why not."""
    need("torch", "torch", f"device={device}")
    import torch

    try:
        dev = torch.device(device)
        usable = dev.type != "cuda" or (torch.cuda.is_available() and (dev.index or 0) < torch.cuda.device_count())
    except (RuntimeError, AssertionError) as e:
        raise OptionsError(f"device={device}: {e}") from None
    if not usable:
        raise OptionsError(f"device={device}: no such CUDA device here (torch sees {torch.cuda.device_count()})")


DEVICE_CHUNK = 1 << 24  # entries summed at once on a device (float64 work: 128 MiB)


class DeviceBlockStats(BlockStats):
    """:class:`BlockStats` on a torch device (``stability --device cuda``): each tensor goes there as the
    file stores it (bf16 as its two bytes, read straight from the file) and its sums, value counts and
    histogram are computed there, to the same numbers (float64 sums; counts binned as numpy bins them)."""

    def __init__(self, wp: WeightPlan, blocks: tuple[int, ...], keyframes: int, bins: int = HIST_BINS,
                 device: str = "cuda") -> None:
        import torch

        super().__init__(wp, blocks, keyframes, bins)
        self.torch, self.device = torch, torch.device(device)

    def read(self, reader: Reader, where: AnyPath) -> list[dict[str, Any]]:
        """Every tensor of the chunk's blocks in one open checkpoint, on the device as stored, checked finite."""
        torch, out = self.torch, []
        for i, names in zip(self.blocks, self.names):
            block = {}
            for _, name in names:
                w = self._stored(reader, name, where).to(self.device)
                if not bool(torch.isfinite(w).all()):
                    raise not_finite(where, name, self.wp.layer_map.blocks[i])
                block[name] = w
            out.append(block)
        return out

    def _stored(self, reader: Reader, name: str, where: AnyPath) -> Any:
        """Tensor ``name`` as a CPU torch tensor in its stored dtype where that is bf16 or float16 (the
        bytes read straight in), else float32."""
        torch = self.torch
        _present(reader, name, where)
        kept = getattr(reader, "tensor", lambda _: None)(name)  # a torch pickle's own tensor
        if kept is not None and kept.dtype in (torch.bfloat16, torch.float16):
            return kept
        dtype, rows = reader.dtype(name), getattr(reader, "rows", None)
        if dtype in COMPACT and rows is not None and kept is None:
            shape = reader.shape(name)
            raw = rows(name, np.arange(shape[0]), out=np.empty(shape, COMPACT[dtype]))
            return torch.from_numpy(raw.view(np.int16)).view(torch.bfloat16) if dtype == "BF16" else torch.from_numpy(raw)
        return torch.from_numpy(np.ascontiguousarray(reader.get(name), np.float32))

    def _points(self, tensors: list[dict[str, Any]]) -> np.ndarray:
        torch = self.torch
        rows = [blk[self.wp.tensor_names[i]] for i, blk in zip(self.blocks, tensors)]
        pts = [(w.T if self.wp.transpose else w)[torch.as_tensor(self.wp.point_ids[i], device=self.device)]
               for i, w in zip(self.blocks, rows)]
        return torch.stack(pts).float().cpu().numpy()

    def _sums(self, w: Any, others: list[Any]) -> tuple[float, list[float]]:
        torch = self.torch
        flat, rest = w.reshape(-1), [o.reshape(-1) for o in others]
        n2 = torch.zeros((), dtype=torch.float64, device=self.device)
        sq = [torch.zeros_like(n2) for _ in others]
        for s in range(0, flat.numel(), DEVICE_CHUNK):
            x = flat[s:s + DEVICE_CHUNK].double()
            n2 += torch.dot(x, x)
            for i, o in enumerate(rest):
                d = x - o[s:s + DEVICE_CHUNK].double()
                sq[i] += torch.dot(d, d)
        return float(n2), [float(v) for v in sq]

    def _counts(self, w: Any) -> np.ndarray | None:
        torch = self.torch
        if w.dtype != torch.bfloat16:
            return None
        bits = w.reshape(-1).view(torch.int16).to(torch.int32) & 0xFFFF
        return torch.bincount(bits, minlength=1 << 16).cpu().numpy().astype(np.int64)

    def _top(self, w: Any, counts: np.ndarray | None) -> float:
        return super()._top(w.double().cpu().numpy() if counts is None else None, counts)

    def _hist(self, w: Any, edges: np.ndarray, counts: np.ndarray | None) -> np.ndarray:
        """As numpy bins: edges[i] <= x < edges[i + 1], the last bin closed, values outside clipped in."""
        if counts is not None:
            return histogram(None, edges, counts)
        torch = self.torch
        e = torch.as_tensor(edges, dtype=torch.float64, device=self.device)
        bins = torch.bucketize(w.reshape(-1).double().clamp(e[0], e[-1]), e, right=True) - 1
        return torch.bincount(bins.clamp(0, len(edges) - 2), minlength=len(edges) - 1).cpu().numpy().astype(np.int64)
