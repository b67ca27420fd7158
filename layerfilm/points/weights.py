"""Weight rows as points: each block's chosen matrix, one point per output neuron."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from layerfilm.errors import CheckpointError, OptionsError
from layerfilm.io.blocks import BlockMap, is_conv1d_layout, map_blocks, resolve_param
from layerfilm.io.formats import COMPACT, check_finite, narrow, open_checkpoint
from layerfilm.io.scan import Checkpoint, Series, problem_of
from layerfilm.io.storage import AnyPath
from layerfilm.options import check_seed

LAYOUTS = ("auto", "out-in", "in-out")
SOURCES = ("weights", "updates")


@dataclass(frozen=True)
class WeightSpec:
    """What to film from the weights.

    param:  matrix inside each block (None: the MLP's input projection).
    points: at most this many output neurons per block, chosen once (seeded) and tracked throughout.
    seed:   seed of that choice.
    blocks_regex: override block detection (a regex whose first group is the block index).
    layout: "out-in" (nn.Linear), "in-out" (GPT-2 Conv1D) or "auto" (Conv1D when c_attn is [d, 3d]).
    source: "weights", or "updates": the rows of Adam's update direction m̂/(√v̂+ε) of the same matrix, from
            the optimizer state beside each checkpoint (layerfilm.points.optimizer).
    """

    param: str | None = None
    points: int = 512
    seed: int = 0
    blocks_regex: str | None = None
    layout: str = "auto"
    source: str = "weights"

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise OptionsError(f"source={self.source!r}: choose one of {', '.join(SOURCES)}")
        if self.points < 2:
            raise OptionsError(f"points={self.points}: need at least 2 points per block")
        check_seed(self.seed)
        if self.layout not in LAYOUTS:
            raise OptionsError(f"layout={self.layout!r}: choose one of {', '.join(LAYOUTS)}")


@dataclass(frozen=True)
class WeightPlan:
    """Decided once, from the first checkpoint: which tensor per block, its orientation, which rows."""

    layer_map: BlockMap
    component: str
    tensor_names: tuple[str, ...]  # (L,)
    transpose: bool  # True: stored [in, out], points are columns
    shape: tuple[int, int]  # (out, in) after orientation
    point_ids: np.ndarray  # (L, N)
    block_bytes: int = 0  # the largest block's tensors in float32: what a whole-block measure holds per copy
    source: str = "weights"  # the rows of the weights, or of Adam's update direction (WeightSpec.source)
    dtype: str = "F32"  # the filmed tensors' stored dtype in the first checkpoint (safetensors' names)

    @property
    def held(self) -> np.dtype:
        """The dtype a block task holds the key frames in: as stored where widening is exact (bf16 bits,
        float16: half float32's memory), else float32."""
        return COMPACT.get(self.dtype, np.dtype(np.float32)) if self.source == "weights" else np.dtype(np.float32)

    @property
    def name(self) -> str:
        """What the points are, e.g. "mlp.c_fc.weight (rows: output neurons)"."""
        return f"{self.component} ({'columns' if self.transpose else 'rows'}: output neurons)"


def plan(series: Series, spec: WeightSpec) -> WeightPlan:
    first = series.checkpoints[0]
    with open_checkpoint(first.path, first.format) as reader:
        keys = reader.keys()
        shapes = {k: reader.shape(k) for k in keys}
        layer_map = map_blocks(keys, spec.blocks_regex)
        component = resolve_param(layer_map, spec.param, shapes)
        names = tuple(layer_map.param_names(component))
        dtypes = {reader.dtype(n) for n in names}
    transpose = spec.layout == "in-out" or (spec.layout == "auto" and is_conv1d_layout(keys, shapes))
    oriented = {n: shapes[n][::-1] if transpose else shapes[n] for n in names}
    if len(set(oriented.values())) != 1:
        raise CheckpointError(f"{first.path}: {component} differs in shape across blocks ({set(oriented.values())})")
    out_dim, in_dim = oriented[names[0]]
    n = min(spec.points, out_dim)
    rng = np.random.default_rng(spec.seed)
    ids = np.stack([np.sort(rng.choice(out_dim, n, replace=False)) for _ in names])
    block_bytes = max(sum(int(np.prod(shapes[k])) for k in layer_map.names[b].values()) for b in layer_map.blocks) * 4
    return WeightPlan(layer_map, component, names, transpose, (out_dim, in_dim), ids, block_bytes, spec.source,
                      dtypes.pop() if len(dtypes) == 1 else "F32")


def tracked(w: np.ndarray, wp: WeightPlan, i: int) -> np.ndarray:
    """(N, D) the tracked points of block ``i`` from its whole matrix ``w`` as stored."""
    return (w.T if wp.transpose else w)[wp.point_ids[i]]


def read_points(reader, wp: WeightPlan, where: AnyPath, blocks: Sequence[int] | None = None,
                out: np.ndarray | None = None) -> np.ndarray:
    """(Lc, N, D) float32 tracked points of ``blocks`` (indices into the plan; default all) in one open
    checkpoint, reading only their rows for an [out, in] matrix (a Conv1D [in, out] one whole); written
    into ``out`` if given (a block task's array of every key frame: no copy). An ``out`` of a compact
    dtype (``WeightPlan.held``) takes the values as stored (bytes straight in where the tensor has that
    dtype; otherwise narrowed, or ``NotExact``)."""
    blocks = range(len(wp.tensor_names)) if blocks is None else blocks
    if out is None:
        out = np.empty((len(blocks), wp.point_ids.shape[1], wp.shape[1]), np.float32)
    keys = set(reader.keys())
    for j, i in enumerate(blocks):
        name = wp.tensor_names[i]
        if name not in keys:
            raise CheckpointError(f"{where}: tensor {name} is missing")
        shape = tuple(reader.shape(name))
        if (shape[::-1] if wp.transpose else shape) != wp.shape:
            raise CheckpointError(f"{where}: {name} has shape {shape}, expected {wp.shape[::-1] if wp.transpose else wp.shape}")
        if wp.transpose:
            narrow(tracked(reader.get(name), wp, i), out[j])
        elif out.dtype == np.float32 or COMPACT.get(reader.dtype(name)) == out.dtype:
            reader.rows(name, wp.point_ids[i], out=out[j])
        else:  # stored otherwise than the key frames are held (a float32 checkpoint in a bf16 series)
            narrow(reader.rows(name, wp.point_ids[i]), out[j])
        check_finite(out[j], where, name, wp.layer_map.blocks[i])  # NaN/Inf would poison the projection
    return out


def skip(ckpt: Checkpoint, error: CheckpointError, strict: bool = False) -> Checkpoint:
    """The one rule for a checkpoint found bad only when its tensors are read (render, stills,
    stability, report): under ``strict`` an error; otherwise one warning line naming the file, and the
    checkpoint with its problem, for the list of skipped ones at the end."""
    if strict:
        raise CheckpointError(f"{error} (strict: nothing is skipped)") from None
    warnings.warn(f"{error}; skipped", stacklevel=3)
    return replace(ckpt, problem=problem_of(error, ckpt.path))
