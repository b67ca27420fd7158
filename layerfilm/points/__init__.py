"""Point clouds per checkpoint: every block's points as an (N x D) array.

``Features`` is what the projection stage consumes: the steps, the block indices, which points
(neurons, tokens) are tracked, and a ``FeatureStore`` that hands out one checkpoint's
(L, N, D) array at a time, so memory stays flat however many checkpoints there are.

Finite but huge (or tiny) values, such as weights multiplied by 1e38, would overflow (or underflow) the
float32 products of a projection; ``in_safe_range`` hands out the same frames with each such block
multiplied by a power of two (exact: only exponents change), ordinary blocks untouched.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from layerfilm.errors import OutputError
from layerfilm.io.formats import widen


class FeatureStore:
    """One ``.npy`` file per key frame, each (L, N, D) float32, read back one at a time.

    A frame whose values are all bfloat16 numbers (a bf16 checkpoint's weights, bf16 activations: the
    low 16 bits of every float32 are zero) is kept as its high 16 bits, half the bytes to write and
    read back, and widened exactly when read."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._paths: list[Path] = []
        self.tops: list[np.ndarray] = []  # (L,) largest |value| of each block, per key frame
        self.max_abs: np.ndarray | None = None  # (L,) largest |value| of each block over the key frames

    def append(self, arr: np.ndarray) -> None:
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        halves = arr.reshape(-1).view(np.uint16)  # little-endian: low, high, low, high, ...
        half = sys.byteorder == "little" and not halves[0::2].any()
        path = self.folder / f"frame_{len(self._paths):06d}{'.bf16' if half else ''}.npy"
        try:
            np.save(path, np.ascontiguousarray(halves[1::2]).reshape(arr.shape) if half else arr)
        except OSError as e:
            path.unlink(missing_ok=True)
            raise OutputError(f"scratch folder {self.folder.parent}: cannot write key frames ({e.strerror or e}); "
                              "set TMPDIR to a folder with room") from None
        flat = arr.reshape(arr.shape[0], -1)
        self.add(path, np.maximum(flat.max(axis=1, initial=0), -flat.min(axis=1, initial=0)))

    def add(self, path: Path, top: np.ndarray) -> None:
        """Take a frame file another store wrote (a device worker's, layerfilm.points.activations.devices)
        as this store's next key frame, with its (L,) largest |value| per block: frames come back from
        the workers by name, never copied."""
        self._paths.append(Path(path))
        self.tops.append(top)
        self.max_abs = top if self.max_abs is None else np.fmax(self.max_abs, top)

    def frame(self, t: int) -> tuple[Path, np.ndarray]:
        """Key frame t's file and (L,) largest |value| per block (what :meth:`add` takes)."""
        return self._paths[t], self.tops[t]

    def __len__(self) -> int:
        return len(self._paths)

    def rows(self, t: int, l: int | None = None) -> np.ndarray:
        """Key frame t's (L, N, D) rows, or only block l's (N, D), read by memory map (its bytes only)."""
        path = self._paths[t]
        arr = np.load(path) if l is None else np.load(path, mmap_mode="r")[l]
        return widen(arr)  # bfloat16 bits (uint16) widened exactly

    def __getitem__(self, t: int) -> np.ndarray:
        return self.rows(t)

    def block(self, l: int) -> np.ndarray:
        """(T, N, D) one block's points at every key frame, read by memory map (only that block's bytes)."""
        return np.stack([self.rows(t, l) for t in range(len(self._paths))])


class ArrayStore:
    """Key frames held in memory, (T, L, N, D): a block chunk's points while it is projected
    (layerfilm.study); the same interface as :class:`FeatureStore`. Float32, or as the checkpoints
    store them where that is exact (bf16 bits as uint16, float16: ``layerfilm.io.formats.COMPACT``), half
    the memory (a 70B-shaped block's 512 rows over 179 key frames: 1.5 GB, not 3), each key frame
    widened to float32 when handed out, so what is computed from it is the same bytes."""

    def __init__(self, arr: np.ndarray) -> None:
        self.arr = arr
        self.max_abs = np.array([_max_abs(arr[:, l]) for l in range(arr.shape[1])], np.float32)

    def __len__(self) -> int:
        return len(self.arr)

    def __getitem__(self, t: int) -> np.ndarray:
        return widen(self.arr[t])

    def block(self, l: int) -> np.ndarray:
        return widen(self.arr[:, l])


def _max_abs(x: np.ndarray) -> np.float32:
    """The largest |value| of ``x`` (T, ...): float, or bf16 bits (uint16; |v| orders as bits & 0x7FFF),
    one key frame at a time (no copy of them all)."""
    if x.dtype != np.uint16:
        return np.float32(max(x.max(initial=0), -x.min(initial=0)))
    top = max((int((f & 0x7FFF).max(initial=0)) for f in x), default=0)
    return np.float32(widen(np.array(top, np.uint16))[()])


SAFE_EXPONENT = 32  # blocks whose largest |value| lies within 2^-32 .. 2^32 are used as they are


def safe_scale(max_abs: np.ndarray) -> np.ndarray:
    """(L,) float32 powers of two: 1 where a block's largest |value| lies within 2^-SAFE_EXPONENT ..
    2^SAFE_EXPONENT (ordinary weights and activations, kept bit for bit), else the one that brings it
    into [1, 2), as far as float32 can: float32 sums of squares and products of N x D such values
    neither overflow nor underflow. 1 for an all-zero or non-finite block."""
    m = np.asarray(max_abs, np.float64)
    ok = ~np.isfinite(m) | (m == 0) | ((m >= 2.0 ** -SAFE_EXPONENT) & (m <= 2.0 ** SAFE_EXPONENT))
    e = np.frexp(np.where(ok, 1.0, m))[1]  # m = f 2^e, 1/2 <= f < 1
    return np.where(ok, 1.0, np.ldexp(1.0, np.clip(1 - e, -126, 127))).astype(np.float32)


class ScaledStore:
    """A store's frames with block l multiplied by ``scale[l]`` (a power of two): store[t], block(l), len."""

    def __init__(self, store, scale: np.ndarray) -> None:
        self.store, self.scale = store, np.asarray(scale, np.float32)

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, t: int) -> np.ndarray:
        return self.store[t] * self.scale[:, None, None]

    def block(self, l: int) -> np.ndarray:
        return self.store.block(l) * self.scale[l]


def in_safe_range(store):
    """``store``, or a ``ScaledStore`` of it where a block's values are out of float32's safe range
    (``safe_scale`` of the store's ``max_abs``; a store that does not track it is used as it is). Points
    and projections of a rescaled block are in its scaled units: a film shows each block on its own axes."""
    max_abs = getattr(store, "max_abs", None)
    if max_abs is None:
        return store
    scale = safe_scale(max_abs)
    return store if (scale == 1).all() else ScaledStore(store, scale)


@dataclass(frozen=True)
class Subject:
    """What a film shows, in words and counts, for its legend (the frame explains itself): set by the
    Run from the plan of what was read, kept in the cache and ``--export-points`` (``subject_*``).

    what: the filmed matrix ("mlp.c_fc.weight") or "block outputs"; kind: "weights" or "activations";
    points: tracked per block (N); of: how many there were to choose from (output neurons, probe
    tokens); unit: what one point is; projection: how the 2-D axes were made, in words; run: the
    checkpoint folder's name.
    """

    what: str
    kind: str
    points: int
    of: int
    unit: str
    projection: str = ""
    run: str = ""

    PREFIX = "subject_"

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {self.PREFIX + f.name: np.asarray(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> Subject | None:
        """The subject stored by :meth:`to_arrays`, or None where ``arrays`` hold none (an export of an
        older layerfilm)."""
        names = [f.name for f in fields(cls)]
        if not all(cls.PREFIX + n in arrays for n in names):
            return None
        def get(name: str):
            return arrays[cls.PREFIX + name].item()

        return cls(str(get("what")), str(get("kind")), int(get("points")), int(get("of")), str(get("unit")),
                   str(get("projection")), str(get("run")))

    def sampled(self) -> bool:
        """Fewer points than the block has (``--points`` below the neurons): the frame must say so."""
        return self.points < self.of


@dataclass(frozen=True)
class Features:
    steps: np.ndarray  # (T,) int64
    blocks: np.ndarray  # (L,) int64
    point_ids: np.ndarray  # (L, N) int64: which neuron/token each point is
    name: str  # what the points are, e.g. "mlp.c_fc.weight rows"
    store: FeatureStore | ArrayStore  # store[t] -> (L, N, D) float32
    skipped: tuple = ()  # Checkpoints that could not be read, with their problem
    stats: dict[str, np.ndarray] = field(default_factory=dict)  # measured while extracting, e.g. act_norm (T, L)
    # (L,) each block's place among all the blocks of its run (a block chunk holds a slice of them):
    # seeded per-block choices (the projection's start directions) depend on it, not on the chunk
    positions: np.ndarray | None = None
    subject: Subject | None = None  # what the points are, in words and counts (the film's legend)
