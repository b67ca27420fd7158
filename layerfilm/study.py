"""The Study: one study of one folder with one set of options, and the only orchestration.

A :class:`Study` holds the scanned series and the options, and computes lazily, each at most once and
kept in the on-disk cache (layerfilm.io.cache) under a key of the checkpoints' stamps and the options that
change it:

  trajectories()    the film's aligned 2-D key-frame points (T x L x N x 2) with their measures
  block_measures()  the whole-block measures of layerfilm.stability (norms, updates, histograms, CKA)
  stability()       both together, with settling steps (what `stability` and `report` show)

``render``, ``stills``, ``stability`` and ``report`` are thin consumers; the CLI builds one Study, so a
second command on the same folder and options reads no checkpoint (only the scan's headers).

Work is decomposed by block: a block's points and measures depend only on that block's tensors, so a
task is (a chunk of blocks) x (all key frames), a plain function (:func:`block_task`) of small
arguments returning small arrays. A task reads only the bytes it needs: the tracked rows of the filmed
matrix (coalesced into ranges) for a film, or each block tensor once for the whole-block measures,
and keeps its chunk's key frames in memory while they are projected; no feature store on disk.
Chunks are sized to a memory budget (``LAYERFILM_CHUNK_MB``, default 512), shared by the workers on
this machine (each holds one chunk), whole on each worker of a remote cluster. Activation films stay
checkpoint-major (a forward pass needs the whole model): with several devices, one long-lived
worker per device takes its share of the checkpoints (layerfilm.points.activations.devices).
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np
from tqdm.auto import tqdm

from layerfilm.errors import CheckpointError, OptionsError, ScanError
from layerfilm.film_options import StabilityOptions, StudyOptions
from layerfilm.io import cache
from layerfilm.io.formats import NotExact, narrow, open_checkpoint
from layerfilm.io.formats.base import Reader as CheckpointReader
from layerfilm.io.logs import RunLogs, read_logs
from layerfilm.io.outputs import new_scratch
from layerfilm.io.scan import Checkpoint, Series, scan
from layerfilm.io.storage import AnyPath, is_remote, location
from layerfilm.parallel.engines import get_engine
from layerfilm.parallel.threads import map_ahead, one_blas_thread, prefetch
from layerfilm.points import ArrayStore, Features, Subject
from layerfilm.points.act_stats import ActivationStats
from layerfilm.points.measures import PointMeasures, point_measures
from layerfilm.points.optimizer import OptimizerMeasures, OptimizerSums, matrices, matrix_norm, optimizer_sums, read_updates
from layerfilm.points.weights import WeightPlan, plan, read_points, skip
from layerfilm.points.whole import HIST_BINS, BlockMeasures, BlockStats, DeviceBlockStats, check_device
from layerfilm.projection import Trajectories, describe, project
from layerfilm.stability import Settling, Stability, check_fits, screen_motion
from layerfilm.text import show

if TYPE_CHECKING:  # the activations module imports torch
    from layerfilm.points.activations import ActivationSpec

DEFAULT_CHUNK_MB = 512
# a local pass that reads less than this runs in this process: starting worker processes (each imports
# NumPy, torch and layerfilm, about a second) would cost more than the work
IN_PROCESS_BYTES = 64 * 2**20
REMOTE_READS = 4  # key frames of a block chunk read at once from a URL (each: up to HTTP_REQUESTS ranged GETs)
T = TypeVar("T")


def scan_for(folder: str | Path, opts: StudyOptions, progress: bool = False) -> Series:
    """The checkpoints of ``folder`` selected by ``opts`` (every, steps, final step, strict, blocks): the
    one scan every command (render, stills, stability, report) makes. ``folder`` may be a URL (with
    ``opts.storage_options``); activation films need a local one (the model is built from its files)."""
    root = location(folder, opts.storage_options)
    if opts.activations is not None and is_remote(root):
        raise OptionsError(f"{show(root)}: --features activations builds the model from a local folder (config, "
                           "tokenizer and whole checkpoints); copy the checkpoints to a local disk")
    return scan(root, opts.every, opts.steps, final_step=opts.final_step, strict=opts.strict,
                blocks_regex=opts.weights.blocks_regex, progress=progress)


@dataclass(frozen=True)
class ChunkResult:
    """What one block task returns: small arrays for its blocks, or the checkpoints it could not read."""

    blocks: tuple[int, ...]  # indices into the plan's blocks
    bad: dict[int, str] = field(default_factory=dict)  # checkpoint index -> problem (then nothing else)
    xy: np.ndarray | None = None  # (T, Lc, N, 2)
    stats: dict[str, np.ndarray] = field(default_factory=dict)  # per-block stats of the points and projection
    measures: dict[str, np.ndarray] | None = None  # whole-block measures (layerfilm.points.whole.BlockStats)


def chunk_mb() -> float:
    try:
        mb = float(os.environ.get("LAYERFILM_CHUNK_MB", DEFAULT_CHUNK_MB))
    except ValueError:
        mb = DEFAULT_CHUNK_MB
    return mb if math.isfinite(mb) and mb > 0 else DEFAULT_CHUNK_MB


def read_checkpoint(ckpt: Checkpoint, read: Callable[[CheckpointReader, AnyPath], T]) -> T | CheckpointError:
    """``read(reader, path)`` of the open checkpoint ``ckpt``, or the error that makes it unreadable
    (damaged, a tensor missing, another shape: the caller skips it by layerfilm.points.weights.skip)."""
    try:
        with open_checkpoint(ckpt.path, ckpt.format) as reader:
            return read(reader, ckpt.path)
    except CheckpointError as e:
        return e


def read_rows(ckpt: Checkpoint, wp: WeightPlan, blocks: Sequence[int] | None = None,
              out: np.ndarray | None = None) -> np.ndarray | CheckpointError:
    """(Lc, N, D) float32: the tracked rows of ``blocks`` (default all) in ``ckpt`` (into ``out`` if given),
    or why it cannot be read: what a block task reads of each key frame, and :meth:`Study.add` of a live
    film's new one. With ``wp.source == "updates"``: the rows of Adam's update direction
    (layerfilm.points.optimizer)."""
    if wp.source == "updates":
        rows = read_updates(ckpt, wp, blocks)
        if out is not None and not isinstance(rows, CheckpointError):
            return narrow(rows, out)
        return rows
    return read_checkpoint(ckpt, lambda reader, where: read_points(reader, wp, where, blocks, out))


def block_chunks(wp: WeightPlan, keyframes: int, whole_bytes: int = 0, budget_mb: float | None = None,
                 most: int | None = None) -> list[tuple[int, ...]]:
    """Consecutive chunks of the plan's blocks whose key frames fit the memory budget: the points
    (T x N x D per block, as held: ``WeightPlan.held``) and, for the whole-block measures, the copies of
    a block's tensors held at once (float32, ``BlockStats.COPIES``: the final, the previous and the
    current checkpoint's, and the one read ahead)."""
    per_block = keyframes * wp.point_ids.shape[1] * wp.shape[1] * wp.held.itemsize + BlockStats.COPIES * whole_bytes
    size = max(1, int((budget_mb or chunk_mb()) * 2**20 // max(per_block, 1)))
    if most is not None:
        size = min(size, most)
    L = len(wp.tensor_names)
    return [tuple(range(i, min(i + size, L))) for i in range(0, L, size)]


def block_task(series: Series, wp: WeightPlan, blocks: tuple[int, ...], active: tuple[int, ...],
               projection: str, projection_kwargs: dict, whole: bool = False,
               bins: int = HIST_BINS, device: str | None = None, progress: Callable[[], None] | None = None,
               held: np.dtype | None = None) -> ChunkResult:
    """Points (and, with ``whole``, whole-block measures) of ``blocks`` at the checkpoints ``active``
    (indices into ``series``), projected to 2-D. Each checkpoint is opened once; with ``whole`` the
    final one is read first and kept while the others stream by, so every byte is read once.

    The key frames are held as the checkpoints store them where widening is exact (``WeightPlan.held``:
    bf16, float16; half float32's memory) and widened one at a time by the projection and the point
    measures (``ArrayStore``): the same film. A checkpoint whose rows that dtype cannot hold exactly
    (float32 ones in a bf16 series) makes the task start again holding float32 (``held``). ``device``: a
    torch device where the whole-block measures run (layerfilm.points.whole.DeviceBlockStats)."""
    ckpts = [series.checkpoints[t] for t in active]
    T, N, D = len(active), wp.point_ids.shape[1], wp.shape[1]
    held = wp.held if held is None else held
    points = np.empty((T, len(blocks), N, D), held)
    bad: dict[int, str] = {}
    stats = None if not whole else BlockStats(wp, blocks, T, bins) if device is None else \
        DeviceBlockStats(wp, blocks, T, bins, device)
    order = [T - 1, *range(T - 1)] if whole else list(range(T))  # whole: the final first

    def read(i: int) -> tuple[int, np.ndarray | list[dict[str, np.ndarray]] | CheckpointError | None]:
        try:
            if stats is None:  # straight into the key frame's place
                return i, read_rows(ckpts[i], wp, blocks, points[i])
            return i, read_checkpoint(ckpts[i], stats.read)
        except NotExact:
            return i, None

    # whole blocks are large: one read ahead; rows are small: three, and from a URL several in flight at
    # once (each waits on the network's round trips, not on a core)
    readers = REMOTE_READS if is_remote(series.root) and not whole else 1
    wider = False  # a key frame the dtype held cannot hold exactly
    # BLAS on one thread: its pool's threads spin against busy cores (the whole-block sums: 60 ns an entry, not 3)
    with one_blas_thread(), closing(prefetch(map_ahead(read, order, readers), depth=1 if whole else 3)) as ahead:
        for i, got in ahead:
            if progress is not None:
                progress()
            if isinstance(got, CheckpointError):
                bad[active[i]] = str(got)
                continue
            if bad:
                continue
            if stats is None:
                assert got is None or isinstance(got, np.ndarray)  # read_points, into points[i]
            elif got is not None:
                assert isinstance(got, list)  # BlockStats.read
                try:
                    narrow(stats.add(i, got), points[i])
                except NotExact:
                    got = None
            if got is None:
                wider = True
                break
    if bad:
        return ChunkResult(blocks, bad)
    if wider:  # start again holding float32
        del points, stats, read
        return block_task(series, wp, blocks, active, projection, projection_kwargs, whole, bins, device,
                          held=np.dtype(np.float32))
    ids, store = wp.point_ids[list(blocks)], ArrayStore(points)
    features = Features(np.asarray([c.step for c in ckpts], np.int64), np.asarray(wp.layer_map.blocks)[list(blocks)],
                        ids, "", store, positions=np.asarray(blocks))
    with one_blas_thread():
        traj = project(features, projection, progress=False, **projection_kwargs)
        measured = point_measures(features.store, features.steps)
        measures = stats.result(store) if stats is not None else None
    return ChunkResult(blocks, {}, traj.xy, {**traj.stats, **measured}, measures)


# stats whose block axis is not the first: (T, L) series
_BLOCK_AXIS = {"point_update": 1, "point_distance": 1}


def _join(results: list[ChunkResult]) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray] | None]:
    """The chunks' arrays joined along the block axis."""
    xy = np.concatenate([r.xy for r in results], axis=1)
    stats = {k: np.concatenate([r.stats[k] for r in results], axis=_BLOCK_AXIS.get(k, 0)) for k in results[0].stats}
    measures = None
    if results[0].measures is not None:
        chunks = [r.measures for r in results if r.measures is not None]
        assert len(chunks) == len(results)  # every chunk measured its blocks, or none did
        measures = {k: np.concatenate([m[k] for m in chunks], axis=BlockStats.BLOCK_AXIS[k]) for k in chunks[0]}
    return xy, stats, measures


def weights_subject(wp: WeightPlan, opts: StudyOptions, keyframes: int, run: str) -> Subject:
    """What a weights film shows (its legend's words): the matrix, how many of its neurons, the projection."""
    kind = "Adam update direction m/(sqrt(v)+eps)" if wp.source == "updates" else "weights"
    return Subject(wp.component, kind, wp.point_ids.shape[1], wp.shape[0], "output neurons",
                   describe(opts.projection, keyframes, opts.fit), run)


class Study:
    """One study of one series with one set of options (``layerfilm.film_options.StudyOptions``, or any
    wider class: a film's options go as they are).

    Example:
        >>> run = Study.open("ckpts/", StudyOptions())  # doctest: +SKIP
        >>> run.trajectories().xy.shape, run.stability().settle_steps  # doctest: +SKIP
    """

    def __init__(self, series: Series, opts: StudyOptions, progress: bool = True) -> None:
        self.series = series
        self.opts = opts
        self.progress = progress
        self.skipped: list[Checkpoint] = list(series.skipped)  # the scan's, then those found when read
        self._traj: Trajectories | None = None
        self._measures: BlockMeasures | None = None
        self._stability: Stability | None = None
        self._weights_run: Study | None = None  # an activation study's run of the weights (stability's motion)
        self._plan: WeightPlan | None = None
        self.added: PointMeasures | None = None  # the measures of the key frames added one at a time (add)
        self._cache = cache.cache_dir(opts.cache_dir, (series.root,)) if opts.cache else None

    @classmethod
    def open(cls, folder: str | Path, opts: StudyOptions, progress: bool = True, scan_progress: bool = False) -> Study:
        """Scan ``folder`` as ``opts`` select (reads headers only) and start a Run on it."""
        return cls(scan_for(folder, opts, scan_progress), opts, progress)

    def logs(self) -> RunLogs | None:
        """The loss and learning rate the run logged beside its checkpoints (layerfilm.io.logs), or None."""
        return read_logs(self.series.root, [c.path for c in self.skipped])

    def weight_plan(self) -> WeightPlan:
        """Which matrix of each block is filmed and which of its rows (read once, from the first
        checkpoint's header)."""
        if self._plan is None:
            self._plan = plan(self.series, self.opts.weights)
        return self._plan

    def use_plan(self, wp: WeightPlan) -> None:
        """Track the same matrix and neurons as another study's plan ``wp`` (runs compared with each other,
        layerfilm.compare): refused unless this run's first checkpoint has the same blocks and shapes."""
        own = plan(self.series, self.opts.weights)
        if (own.tensor_names, own.shape, own.transpose) != (wp.tensor_names, wp.shape, wp.transpose):
            raise OptionsError(f"{show(self.series.root)}: its blocks ({len(own.tensor_names)} x {own.component} "
                               f"{own.shape}) differ from the base run's ({len(wp.tensor_names)} x {wp.component} "
                               f"{wp.shape}); runs compared must share the architecture")
        self._plan = wp
        self._traj = self._measures = self._stability = None

    def read(self, ckpt: Checkpoint, fn: Callable[[CheckpointReader, AnyPath], T]) -> T | None:
        """``fn(reader, path)`` of the open checkpoint ``ckpt``, or None when it cannot be read (then it
        is in ``skipped``, by the one rule, layerfilm.points.weights.skip)."""
        got = read_checkpoint(ckpt, fn)
        if isinstance(got, CheckpointError):
            self.skipped.append(skip(ckpt, got, self.opts.strict))
            return None
        return got

    def rows(self, ckpt: Checkpoint) -> np.ndarray | None:
        """(L, N, D) float32: the tracked rows of ``ckpt`` (:func:`read_rows`), or None when unreadable."""
        return self.read(ckpt, lambda reader, where: read_points(reader, self.weight_plan(), where))

    @contextmanager
    def outputs(self) -> Iterator[Features]:
        """The raw block outputs on the probe batch (``opts.activations``) at every readable checkpoint:
        Features whose store holds (L, N tokens, D) per key frame, on scratch disk for the ``with``."""
        from layerfilm.points.activations import extract

        if self.opts.activations is None:
            raise OptionsError("features=weights: outputs() runs the probe batch; set features=activations")
        with new_scratch("act") as work, one_blas_thread():
            features = extract(self.series, self.opts.activations, Path(work), self.progress, self.opts.strict,
                               engine=self.opts.engine, address=self.opts.address)
            self.skipped.extend(features.skipped)
            yield features

    # ---------------------------------------------------------------- a study that grows (live films)

    def add(self, ckpt: Checkpoint) -> np.ndarray | None:
        """Add ``ckpt`` as the next key frame of a study started on no checkpoint (a live film,
        layerfilm.live.film): its tracked rows read once, by the block tasks' reader (:func:`read_rows`),
        and measured on the way (``self.added``: squared norms, squared distances to the previous key
        frame). The cached products are computed again when next asked for.

        Args:
            ckpt: a checkpoint of a later step than the last one added.
        Returns:
            its (L, N, D) float32 tracked rows, or None when it cannot be read (then it is in
            ``skipped``, by the one rule, layerfilm.points.weights.skip).
        """
        if self._plan is None:  # the first checkpoint decides the plan, as a render's does
            first = self.series if self.series.checkpoints else Series(self.series.root, (ckpt,))
            self._plan = plan(first, self.opts.weights)
        x = read_rows(ckpt, self._plan)
        if isinstance(x, CheckpointError):
            self.skipped.append(skip(ckpt, x, self.opts.strict))
            return None
        if self.added is None:
            self.added = PointMeasures()
        self.added.add(x)
        self.series = replace(self.series, checkpoints=(*self.series.checkpoints, ckpt))
        self._traj = self._measures = self._stability = None
        return x

    def remember(self, traj: Trajectories) -> None:
        """Take ``traj`` as this study's key-frame points (a live film's, made a key frame at a time) and
        keep it in the cache under the key a render of the same checkpoints and options looks up."""
        self._traj = traj
        self._store(self._key("points", self._points_options()), traj.to_arrays())

    def points(self) -> Features:
        """Every key frame's tracked rows of a weights study, (T, L, N, D) float32 in memory, as the block
        tasks read them, with the film's point measures: the raw points before any projection (e.g. for
        layerfilm.AlignedProjection). Unreadable checkpoints are skipped by the one rule."""
        if self.opts.activations is not None:
            raise OptionsError("features=activations: points() gives the weights' rows; a Study of weights has them")
        wp = self.weight_plan()
        rows, steps = [], []
        for ckpt in self.series.checkpoints:
            x = read_rows(ckpt, wp)
            if isinstance(x, CheckpointError):
                self.skipped.append(skip(ckpt, x, self.opts.strict))
                continue
            rows.append(x)
            steps.append(ckpt.step)
        if len(steps) < 2:
            raise ScanError(f"{self.series.root}: {len(steps)} readable checkpoint(s); at least two key frames are needed")
        store = ArrayStore(np.stack(rows))
        t = np.asarray(steps, np.int64)
        return Features(t, np.asarray(wp.layer_map.blocks, np.int64), wp.point_ids.astype(np.int64), wp.name, store,
                        tuple(self.skipped), point_measures(store, t), np.arange(len(wp.tensor_names)))

    # ---------------------------------------------------------------- cached products

    def trajectories(self) -> Trajectories:
        """The film's aligned key-frame points (computed once, from the cache when it has them)."""
        if self._traj is None:
            key = self._key("points", self._points_options())
            self._traj = self._cached_trajectories(key)
            if self._traj is None:
                if self.opts.activations is not None:
                    self._traj = self._activation_trajectories()
                else:
                    self._traj, _ = self._weights_pass(whole=False)
                self._store(key, self._traj.to_arrays())
        return self._traj

    def block_measures(self, bins: int = HIST_BINS) -> BlockMeasures:
        """Whole-block measures (each byte of the series read once; from the cache when it has them)."""
        if self._measures is None:
            if len(self.series) < 2:
                raise ScanError(f"{show(self.series.root)}: found {len(self.series)} checkpoint; "
                                "measuring movement needs at least two")
            key = self._key("blocks", {"weights": self.opts.weights, "bins": bins})
            self._measures = self._load(key, BlockMeasures.from_arrays)
            if self._measures is not None:
                self._note_cached_skips(self._measures.steps)
            else:
                traj, measures = self._weights_pass(whole=True, bins=bins)
                assert measures is not None  # whole=True measures the blocks
                self._measures = measures
                self._store(key, measures.to_arrays())
                weights = self._weights_film()
                if weights._traj is None:  # the same pass filmed the weights' points
                    weights._traj = traj
                    weights._store(weights._key("points", weights._points_options()), traj.to_arrays())
        return self._measures

    def stability(self, bins: int = HIST_BINS) -> Stability:
        """Which blocks settle: the whole-block measures, the film's motion, and with activations their
        statistics (layerfilm.stability.Stability). ``bins``: value bins of the histograms over time."""
        if self._stability is None:
            m = self.block_measures(bins)
            traj = self.trajectories()
            act = None
            if self.opts.activations is not None:
                from layerfilm.points.act_stats import ActivationStats

                act = ActivationStats.from_arrays(traj.steps, traj.blocks, traj.stats)
                traj = self._weights_film().trajectories()
            keep = np.isin(traj.steps, m.steps)  # a checkpoint unreadable in one pass is left out of both
            traj = traj.take(keep)
            th = self.opts.settle_threshold
            self._stability = Stability(
                steps=m.steps, blocks=m.blocks, components=m.components, relative_update=m.relative_update,
                distance_to_final=m.distance_to_final, norm=m.norm, param_norm=m.param_norm,
                cka_to_final=m.cka_to_final, motion=screen_motion(traj), hist=m.hist, hist_edges=m.hist_edges,
                settle_threshold=th, settle_index=Settling.of(m.distance_to_final, m.relative_update, th).index,
                points=m.points, trajectories=traj, activations=act, skipped=tuple(self.skipped),
                optimizer=self.optimizer_measures())
        return self._stability

    def optimizer_measures(self, bins: int = HIST_BINS) -> OptimizerMeasures:
        """Update ratio, RMS gradient and first-moment norm per block and key frame, from the optimizer
        state saved beside each checkpoint (layerfilm.points.optimizer; NaN where there is none). Each
        moment is read once; the weights' norms come from the whole-block measures."""
        m = self.block_measures(bins)
        lm = self.weight_plan().layer_map
        key = self._key("optimizer", {"weights": self.opts.weights})
        sums = self._load(key, OptimizerSums.from_arrays)
        if sums is None:
            sums = optimizer_sums(self.series, lm.blocks, lm.names)
            self._store(key, sums.to_arrays())
        norms = matrix_norm(m.param_norm, m.components, matrices(self.series, lm.blocks, lm.names), lm.names, lm.blocks)
        return OptimizerMeasures.of(sums, m.steps, norms)

    # ---------------------------------------------------------------- computing

    def _weights_pass(self, whole: bool, bins: int = HIST_BINS) -> tuple[Trajectories, BlockMeasures | None]:
        """One pass over the checkpoints by block chunks; checkpoints found unreadable are skipped by
        the one rule (layerfilm.points.weights.skip) and the pass is redone without them."""
        series, opts = self.series, self.opts
        wp = self.weight_plan()
        active = tuple(range(len(series)))
        umap = opts.projection == "umap"
        device = opts.device if whole and opts.device.startswith("cuda") else None  # whole-block measures on a GPU
        if device:
            check_device(device)
        # a GPU's measures run in this process (one CUDA context), its tensors read one checkpoint ahead
        engine = get_engine("local", 1) if device else get_engine(opts.engine, opts.jobs, **opts.engine_options())
        check_fits(wp, len(active), whole, series.root, min(engine.sharing, len(wp.tensor_names)))
        while True:
            whole_bytes = wp.block_bytes if whole else 0
            work = len(active) * len(wp.tensor_names) * (wp.point_ids.shape[1] * wp.shape[1] * 4 + whole_bytes)
            if opts.engine == "local" and not umap and work < IN_PROCESS_BYTES:
                engine = get_engine("local", 1)
            most = 1 if umap else -(-len(wp.tensor_names) // engine.jobs)  # at least one chunk per worker
            # the workers on this machine hold a chunk each: they share the budget
            chunks = block_chunks(wp, len(active), whole_bytes, chunk_mb() / engine.sharing, most=most)
            kwargs = opts.projection_kwargs()
            if umap:  # parallel over blocks here, one process per task: none inside
                kwargs = {**kwargs, "options": replace(kwargs["options"], jobs=1)}
            args = [(series, wp, c, active, opts.projection, kwargs, whole, bins, device) for c in chunks]
            what = "measuring" if whole else "reading"
            with tqdm(total=len(chunks) * len(active), desc=f"{what} {len(chunks)} block chunk(s)", unit="ckpt",
                      disable=not self.progress) as bar:
                results = engine.map(block_task, args, bar.update)
            bad = {t: why for r in results for t, why in r.bad.items()}
            if not bad:
                break
            for t in sorted(bad):
                ckpt = series.checkpoints[t]
                self.skipped.append(skip(ckpt, CheckpointError(bad[t]), opts.strict))
            active = tuple(t for t in active if t not in bad)
            if len(active) < 2:
                raise ScanError(f"{series.root}: {len(active)} readable checkpoint(s); at least two key frames are needed")
        xy, stats, measures = _join(results)
        steps = np.asarray([series.checkpoints[t].step for t in active], np.int64)
        blocks = np.asarray(wp.layer_map.blocks, np.int64)
        subject = weights_subject(wp, opts, len(steps), series.root.name)
        traj = Trajectories(steps, blocks, wp.point_ids.astype(np.int64), xy, opts.projection, stats, subject)
        bm = BlockMeasures.assemble(steps, blocks, wp, measures) if measures is not None else None
        return traj, bm

    def _activation_trajectories(self) -> Trajectories:
        """Block outputs on the probe batch, checkpoint-major (a forward pass needs the whole model)."""
        from layerfilm.points.activations import extract

        spec = self.opts.activations
        assert spec is not None  # trajectories() comes here for a study of activations only
        with new_scratch("act") as work, one_blas_thread():  # stale ones of killed runs go
            features = extract(self.series, spec, Path(work), self.progress, self.opts.strict,
                               engine=self.opts.engine, address=self.opts.address)
            self.skipped.extend(features.skipped)
            traj = project(features, self.opts.projection, progress=self.progress, **self.opts.projection_kwargs())
            measured = {} if "point_update" in features.stats else point_measures(features.store, features.steps)
        subject = features.subject and replace(features.subject, run=self.series.root.name,
                                               projection=describe(traj.method, len(traj.steps), self.opts.fit))
        return replace(traj, stats={**traj.stats, **features.stats, **measured}, subject=subject)

    def _weights_film(self) -> Study:
        """The Run of the weights' film: this one, or for an activation film the same run of weights
        (`stability` shows the weights' on-screen motion beside the activation statistics)."""
        if self.opts.activations is None:
            return self
        if self._weights_run is None:
            self._weights_run = Study(self.series, replace(self.opts, activations=None), self.progress)
            self._weights_run.skipped = self.skipped  # one list of what was skipped
        return self._weights_run

    # ---------------------------------------------------------------- the cache

    def _points_options(self) -> dict:
        """What changes the points: the options, and for activations the probe, model and tokenizer files."""
        options = self.opts.points_options()
        if self.opts.activations is not None:
            from layerfilm.points.activations import input_files

            options["inputs"] = [cache.checkpoint_stamp(f) for f in input_files(self.opts.activations, self.series)]
        return options

    def _key(self, kind: str, options: dict) -> str:
        return cache.key(self.series, {"kind": kind, **options}) if self._cache is not None else ""

    def _load(self, key: str, parse: Callable[[dict[str, np.ndarray]], T]) -> T | None:
        if self._cache is None:
            return None
        value = cache.load(self._cache, key, parse)
        if value is not None and self.progress:
            print(f"read from the cache ({self._cache / key}.npz), not from the checkpoints", file=sys.stderr)
        return value

    def _store(self, key: str, arrays: dict[str, np.ndarray]) -> None:
        if self._cache is not None:
            cache.store(self._cache, key, arrays)

    def _cached_trajectories(self, key: str) -> Trajectories | None:
        traj = self._load(key, Trajectories.from_arrays)
        if traj is not None:
            self._note_cached_skips(traj.steps)
        return traj

    def _note_cached_skips(self, kept: Iterable[int]) -> None:
        """Checkpoints of the series missing from a cached result could not be read when it was made."""
        have = set(int(s) for s in kept)
        known = {c.path for c in self.skipped}
        self.skipped.extend(replace(c, problem="could not be read (found when first read; cached)")
                            for c in self.series.checkpoints if c.step not in have and c.path not in known)


Run = Study  # the name of earlier versions


def measure(series: Series, opts: StabilityOptions = StabilityOptions(), workdir: Path | None = None,
            progress: bool = True) -> Stability:
    """Measure how much every block still moves at every key frame, and when it settles.

    Args:
        series: the checkpoints (from :func:`layerfilm.io.scan`), at least two.
        opts: settling threshold, the points for CKA and motion, the projection, the histograms' bins.
        workdir: unused (kept for callers of earlier versions: nothing is written to disk).
    Returns:
        a :class:`Stability`, whose ``trajectories`` are the film's projection (reusable for a film).
    Example:
        >>> st = measure(scan("ckpts/"))  # doctest: +SKIP
        >>> print(st.table())  # doctest: +SKIP
    """
    if len(series) < 2:
        raise OptionsError(f"{series.root}: found {len(series)} checkpoint; measuring movement needs at least two")

    return Study(series, opts, progress).stability(opts.bins)


def measure_activations(series: Series, spec: ActivationSpec, workdir: Path, progress: bool = True) -> ActivationStats:
    """Statistics of every block's output on the probe batch at every checkpoint of ``series``."""
    from layerfilm.points.activations import extract

    f = extract(series, spec, workdir, progress)
    return ActivationStats.from_arrays(f.steps, f.blocks, f.stats)
