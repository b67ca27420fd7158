"""Which blocks have settled and which still move: per block, per key frame, from the weights.

For every block (all tensors whose names sit inside it, concatenated into one vector W):

  relative_update     ||W_t - W_{t-1}|| / ||W_t||, scaled to the median step gap between key frames
                      (so unevenly spaced checkpoints compare: a gap twice the median counts half)
  distance_to_final   ||W_t - W_T|| / ||W_T||
  norm, param_norm    ||W_t|| and the norm of each tensor of the block (one curve per parameter)
  cka_to_final        linear CKA between the block's points (the film's neurons) at t and at T
  motion              mean on-screen move of the points since the previous key frame, as a fraction
                      of the panel width (from the aligned projection the film shows)
  hist                histogram of the block's matrix entries per key frame (the "HOT" chart)

With ``StabilityOptions.activations``, the probe batch is also run through every checkpoint and the
statistics of each block's output (``layerfilm.points.act_stats.ActivationStats``: mean token norm,
mean, std, fraction near zero, histograms, growth of the norm with depth) come alongside.

Each block is, at the end, one of three (:class:`Settling`, the one definition that the film's marks,
``layerfilm stability``, the report and ``watch`` share):

  barely moved  its total relative change ``distance_to_final`` at the first key frame,
                ||W_first - W_last|| / ||W_last||, is below ``BARELY_MOVED`` (1%): it learned (almost) nothing
  settled       from some key frame k on (k before the last), (a) its distance to the final checkpoint stays
                below ``settle_threshold`` F times its distance at the first key frame, and (b) every later
                update is below F times the median block's update into the same key frame:
                relative_update[t, l] < F * median_j relative_update[t, j] for all t > k
                (the mean block's where over half the blocks did not move at all; where none moved, no
                block is calm: a learning rate of exactly 0 says nothing about any block)
  moving        neither

Why (b): a learning-rate schedule that decays to zero makes every block's updates shrink together, so
(a) alone "settles" every block near the end of a cosine schedule. Measured against the median block
at the same step, a decay that all blocks share cancels, and only a block that stops while the others
go on (a frozen one, or one that has found its place) settles. With one block there is no other to
compare with: it settles only if it stops exactly.

Memory stays flat: checkpoints are read one tensor at a time from three open readers (this step,
the previous one and the final one); only per-block scalars and the film's points are kept.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from layerfilm.errors import OptionsError
from layerfilm.io.scan import Checkpoint
from layerfilm.io.storage import AnyPath
from layerfilm.points.act_stats import ActivationStats, json_series
from layerfilm.points.optimizer import OptimizerMeasures
from layerfilm.points.weights import WeightPlan
from layerfilm.points.whole import BlockStats
from layerfilm.projection import Trajectories
from layerfilm.text import text_table

if TYPE_CHECKING:  # the activations module imports torch; only activation statistics need it
    pass

BARELY_MOVED = 0.01  # a block whose total relative change is below this barely moved (the module's docstring)


def check_settle_threshold(value: float) -> None:
    """The one rule for settle_threshold (render's overlay and stability alike): 0 < F < 1."""
    if not 0 < value < 1:
        raise OptionsError(f"settle_threshold={value}: must be between 0 and 1 "
                           "(a fraction of the distance to the final checkpoint at the first key frame)")


@dataclass(frozen=True)
class Stability:
    """Per-block, per-key-frame measures. Shapes: T key frames, L blocks, C tensors per block, B bins."""

    steps: np.ndarray  # (T,) int64
    blocks: np.ndarray  # (L,) int64
    components: tuple[str, ...]  # (C,) tensor names inside a block, e.g. "mlp.c_fc.weight"
    relative_update: np.ndarray  # (T, L); NaN at t = 0
    distance_to_final: np.ndarray  # (T, L); 0 at t = T-1
    norm: np.ndarray  # (T, L)
    param_norm: np.ndarray  # (T, L, C); NaN where a block lacks the tensor
    cka_to_final: np.ndarray  # (T, L); 1 at t = T-1
    motion: np.ndarray  # (T, L); NaN at t = 0
    hist: np.ndarray  # (T, L, B) counts of matrix entries per value bin
    hist_edges: np.ndarray  # (L, B + 1)
    settle_threshold: float
    settle_index: np.ndarray  # (L,) key frame where each block settles; -1: never
    points: str = ""  # what the CKA/motion points are
    trajectories: Trajectories | None = None  # the projection the motion was measured in
    activations: ActivationStats | None = None  # block outputs on the probe batch, when asked for
    skipped: tuple[Checkpoint, ...] = ()  # checkpoints not measured (the scan's and the unreadable), with their problem
    optimizer: OptimizerMeasures | None = None  # what the optimizer saw (layerfilm.points.optimizer), when measured

    @property
    def settle_steps(self) -> list[int | None]:
        """The training step each block settles at, None if it never does (or it barely moved)."""
        settled = self.settling.settled(len(self.steps))
        return [int(self.steps[k]) if s else None for k, s in zip(self.settle_index, settled)]

    @property
    def settling(self) -> Settling:
        """Settled, moving or barely moved (the module's docstring), per block."""
        return Settling(self.settle_index, self.distance_to_final[0])

    @property
    def status(self) -> list[str]:
        """Each block's status at the end: "settled", "moving" or "barely moved"."""
        return self.settling.status()

    def ranking(self) -> list[int]:
        """Block positions (into ``blocks``), settled first by settling step, then the others from the
        calmest to the most moving (distance to the final checkpoint at the last-but-one key frame)."""
        never = len(self.steps)
        settle = np.where(self.settling.settled(never), self.settle_index, -1)
        near_end = self.distance_to_final[max(len(self.steps) - 2, 0)] / np.maximum(self.distance_to_final[0], 1e-300)
        return sorted(range(len(self.blocks)), key=lambda l: (
            settle[l] if settle[l] >= 0 else never, float(near_end[l]), int(self.blocks[l])))

    def records(self) -> list[dict]:
        """One JSON-ready dict per block in ranking order (NaN written as null): the weights' measures, the
        optimizer's (``OptimizerMeasures.records``), and with activations the block's ``act_*`` series
        (``ActivationStats.records``)."""
        act = self.activations.records() if self.activations is not None else [{}] * len(self.blocks)
        opt = self.optimizer.records(self.steps) if self.optimizer is not None else [{}] * len(self.blocks)
        out = []
        status = self.status
        for rank, l in enumerate(self.ranking(), 1):
            out.append({
                "block": int(self.blocks[l]),
                "rank": rank,
                "settle_step": self.settle_steps[l],
                "settle_threshold": self.settle_threshold,
                "steps": [int(s) for s in self.steps],
                "relative_update": json_series(self.relative_update[:, l]),
                "distance_to_final": json_series(self.distance_to_final[:, l]),
                "norm": json_series(self.norm[:, l]),
                "param_norm": {c: json_series(self.param_norm[:, l, i]) for i, c in enumerate(self.components)},
                "cka_to_final": json_series(self.cka_to_final[:, l]),
                "motion": json_series(self.motion[:, l]),
                "status": status[l],
                **opt[l],
                **act[l],
            })
        return out

    def to_json(self) -> str:
        """``records()`` as a JSON list, one block per line."""
        return "[\n" + ",\n".join(json.dumps(r) for r in self.records()) + "\n]"

    def table_rows(self) -> tuple[list[str], list[list[str]]]:
        """Header and rows of the settling table (ranking order), as text."""
        head = ["rank", "block", "status", "settles at step", "distance to final at first key",
                "relative update at last key", "CKA first->final", "on-screen motion at last key"]
        rows = []
        status = self.status
        for rank, l in enumerate(self.ranking(), 1):
            s = self.settle_steps[l]
            rows.append([str(rank), f"L{self.blocks[l]}", status[l], "-" if s is None else f"{s:,}",
                         _num(self.distance_to_final[0, l]), _num(self.relative_update[-1, l]),
                         _num(self.cka_to_final[0, l], ".3f"), _num(self.motion[-1, l])])
        return head, rows

    def table(self) -> str:
        """The settling table as aligned plain text."""
        return text_table(*self.table_rows(), left=[1, 2]) + f"\n({settling_text(self.settle_threshold)}; the last " \
            "key frame does not count)" + ("" if self.activations is None else "\n\n" + self.activations.over_time())


def _num(v: float, fmt: str = ".3g") -> str:
    return "-" if not math.isfinite(v) else format(v, fmt)


def near_index(distance: np.ndarray, threshold: float) -> np.ndarray:
    """(L,) rule (a) of the module's docstring: the first key frame k such that ``distance[t] < threshold *
    distance[0]`` for every t >= k, for ``distance`` (T, L); -1 where only the last key frame qualifies. A
    block that never moved qualifies at 0."""
    T, L = distance.shape
    out = np.full(L, -1, np.int64)
    for l in range(L):
        d = distance[:, l]
        if d[0] == 0:
            out[l] = 0
            continue
        above = np.flatnonzero(~(d < threshold * d[0]))
        k = int(above[-1]) + 1 if len(above) else 0
        if k <= T - 2:
            out[l] = k
    return out


def relative_motion(update: np.ndarray) -> np.ndarray:
    """(T, L) each block's update relative to the median block's update into the same key frame
    (``update``: (T, L) relative updates, NaN at the first key frame): a decay that every block shares
    cancels. Where more than half the blocks did not move at all (median 0), relative to the mean block's
    update instead; where no block moved, NaN (nothing to compare with: no block counts as calm)."""
    u = np.asarray(update, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a key frame of NaN only (the first): NaN
        median = np.nanmedian(u, axis=1, keepdims=True)
        typical = np.where(median > 0, median, np.nanmean(u, axis=1, keepdims=True))
        return u / typical


def calm_index(update: np.ndarray, threshold: float) -> np.ndarray:
    """(L,) rule (b) of the module's docstring: the first key frame k such that each block's update into
    every later key frame is below ``threshold`` times the median block's (:func:`relative_motion`)."""
    quiet = relative_motion(update)[1:] < threshold  # (T - 1, L): row t - 1 is the update into key frame t
    out = np.zeros(quiet.shape[1], np.int64)
    for l in range(quiet.shape[1]):
        loud = np.flatnonzero(~quiet[:, l])
        out[l] = int(loud[-1]) + 1 if len(loud) else 0
    return out


def settle_index(near: np.ndarray, update: np.ndarray, threshold: float) -> np.ndarray:
    """(L,) the key frame each block settles at, -1 never: the first from which both rules of the module's
    docstring hold, before the last key frame. ``near`` (L,): rule (a)'s :func:`near_index` (a live film
    gets it from its distance bounds); ``update`` (T, L): the relative updates, for rule (b)."""
    T = len(update)
    k = np.maximum(np.asarray(near, np.int64), calm_index(update, threshold))
    return np.where((np.asarray(near) >= 0) & (k <= T - 2), k, -1)


@dataclass(frozen=True)
class Settling:
    """Settled, moving or barely moved, per block (the module's docstring): the one definition that the
    film's marks (layerfilm.draw.overlay), ``layerfilm stability``, the report and ``watch`` use."""

    index: np.ndarray  # (L,) key frame each block settles at (settle_index), -1: never
    change: np.ndarray  # (L,) total relative change over the key frames, ||W_first - W_last|| / ||W_last||
    floor: float = BARELY_MOVED

    @classmethod
    def of(cls, distance: np.ndarray, update: np.ndarray, threshold: float) -> Settling:
        """From (T, L) distances to the last key frame and relative updates (the whole-block measures or the
        film's points' ``point_distance`` and ``point_update``)."""
        return cls(settle_index(near_index(distance, threshold), update, threshold), np.asarray(distance[0], np.float64))

    @property
    def barely(self) -> np.ndarray:
        """(L,) bool: the blocks that barely moved (NaN counts as moved: never hidden)."""
        return np.asarray(self.change) < self.floor

    def settled(self, k: int) -> np.ndarray:
        """(L,) bool: the blocks settled at key frame ``k`` (and not barely moved)."""
        return ~self.barely & (self.index >= 0) & (self.index <= k)

    def status(self, k: int | None = None) -> list[str]:
        """Each block's status at key frame ``k`` (None: the end): "barely moved" (over the whole series),
        "settled" (from its settling key frame on) or "moving"."""
        settled = self.settled(np.iinfo(np.int64).max if k is None else k)
        return ["barely moved" if b else "settled" if s else "moving" for b, s in zip(self.barely, settled)]

    def moving(self, k: int | None = None) -> int:
        """How many blocks are moving at key frame ``k`` (None: the end)."""
        return self.status(k).count("moving")


def settling_text(threshold: float) -> str:
    """The definition in one sentence (the table's note, the report)."""
    return (f"settled: from that step on, its distance to the final checkpoint stays below {threshold:g} of its "
            f"distance at the first key frame and each update is below {threshold:g} of the median block's update at "
            f"the same step; barely moved: it changed less than {BARELY_MOVED:.0%} over the run "
            "(||W_first - W_last|| / ||W_last||)")


POINT_COPIES = 2  # a block's points and the projection's working copy (a render's peak measured at 2x its points)


def physical_memory() -> int:
    """Bytes of memory this process may use: the machine's, or its cgroup's limit where that is lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        limit = open("/sys/fs/cgroup/memory.max").read().strip()
    except OSError:
        return total
    return min(total, int(limit)) if limit.isdigit() else total


def check_fits(wp: WeightPlan, keyframes: int, whole: bool, where: AnyPath, at_once: int = 1) -> None:
    """Refuse, from the headers, a pass whose blocks cannot fit in memory ``at_once`` at a time (one per
    worker on this machine): each holds its points at every key frame (float32) and a working copy of
    them (the projection's), and for the whole-block measures ``BlockStats.COPIES`` float32 copies of its
    tensors. Why: widths of 10^6 and more (sparse files of terabytes) otherwise ended in a MemoryError
    traceback, or grew until the machine swapped. Zero-size blocks ([0, 8], [10^12, 0]) get the projection's
    own line here, before the whole-block measures meet them."""
    T, N, D = keyframes, wp.point_ids.shape[1], wp.shape[1]
    if N < 2 or D < 2:  # the rule of layerfilm.projection.linear, in its words
        raise OptionsError(f"features of shape {(N, D)} per block: a 2-D projection needs at least 2 points and 2 dimensions")
    need = at_once * (POINT_COPIES * T * N * D * 4 + (BlockStats.COPIES * wp.block_bytes if whole else 0))
    memory = physical_memory()
    if need <= memory:
        return
    each = f"{POINT_COPIES} copies of {T} key frames x {N} points x width {D:,} as float32" + (
        f", and {BlockStats.COPIES} copies of its tensors for the whole-block measures" if whole else "")
    workers = f"{at_once} blocks at a time, one per worker; each" if at_once > 1 else "one block"
    raise OptionsError(f"{where}: needs {need / 1e9:,.1f} GB of memory at once ({workers}: {each}), more than the "
                       f"{memory / 1e9:,.1f} GB here; film fewer points or key frames (every=K, steps=A:B)"
                       + (" or use fewer --jobs" if at_once > 1 else ""))


def screen_motion(traj: Trajectories) -> np.ndarray:
    """(T, L) mean distance the points moved since the previous key frame, as a fraction of the
    panel's width (the film's fixed axes); NaN at the first key frame."""
    ext = traj.extent()
    width = ext[:, 1] - ext[:, 0]  # panels are square in projection units
    out = np.full(traj.xy.shape[:2], np.nan)
    out[1:] = np.linalg.norm(np.diff(traj.xy.astype(np.float64), axis=0), axis=-1).mean(axis=-1) / width
    return out
