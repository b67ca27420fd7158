"""Live films: a film of a training run kept up to date while it trains (``layerfilm watch``, and the
background process of layerfilm.callbacks).

A :class:`LiveFilm` is fed the folder's checkpoints as they become complete (:class:`Readiness`: every
file keeps its size and modification time across two polls, or the trainer's own marker is there, or a
training callback says so) and adds each one to its :class:`layerfilm.study.Study` (``Study.add``: only
its tracked rows, read once by the reader a render's block tasks use, and measured on the way). After
each batch of new key frames it rewrites the film, and the stills, stability JSON and exported points
when asked, each atomically (layerfilm.io.outputs), so a browser or another program always finds a
complete file.

Projection policy (``--refit``), pca:
  doubling (the default) the basis is refitted on all key frames so far (``render --fit all``) when
           their intervals double: at 2, 3, 5, 9, 17, 33, ... key frames (``refit_due``), and each new
           key frame in between is projected on it. A refit reads the kept rows of every key frame once
           (amortised O(1) a key frame) and re-projects them all; it comes with the live timeline's own
           doubling, which redraws every frame anyway. The new basis is turned in its plane onto the
           film's previous points (orthogonal Procrustes, ``PcaBasis.aligned``), so clouds keep their
           orientation; the legend and the printed line say "new basis at step N" and what it pooled.
           Unlike a basis fitted on the random initialisation (never), it shows the structure the
           weights grow: the newest key frame keeps most of the variance render --fit all shows.
  never    the basis is fitted on the first key frame and fixed (exactly ``render --fit first``): a new
           key frame costs one projection, old frames never move; the final live film equals a one-shot
           ``render --fit first`` of the same folder (same key frames, same points, same pixels).
  always   the basis is refitted on all key frames at every update (exactly ``render --fit all``, not
           turned), from the tracked rows kept on scratch disk, never from the old checkpoints.
  every=K  refitted (and turned, as doubling) every K new key frames; the frames between use the last basis.
Other projections (procrustes, umap) re-project every key frame from the kept rows at each update
(``--refit always`` only).

What is kept: the 2-D points of every key frame (T x L x N x 2 float32), per key frame and block the
squared norm and the squared distance to the previous key frame (the overlay's "still moving" bar),
and, unless nothing needs them, every key frame's tracked rows on scratch disk (T x L x N x D float32,
bf16 halved, layerfilm.points.FeatureStore). Each key frame's distance to the newest one decides,
with the updates against the median block's, which blocks have settled (layerfilm.stability.Settling:
the printed "blocks still moving"); it is kept as an interval that the triangle inequality carries from
one newest key frame to the next (DistanceBounds), so an update reads back only the few blocks' rows
whose interval straddles the threshold, and the first key frame's (the total change: "barely moved").
The stability JSON, the exported
``point_distance`` and a ``fit`` layout's settled marks print every distance: with those, an update
reads back the rows of every key frame whose distance is not known exactly (T x the new checkpoint's
tracked bytes at worst, from scratch, never from the checkpoints), as does a refit. ``--refit never
--no-overlay`` without --json or --export-points keeps no rows: an update reads the new checkpoint's
tracked rows only.

Film layout (layerfilm.draw.film_layout): ``live`` (watch's default) changes rarely as key frames arrive, and the
film's segments are kept beside it (layerfilm.video.segments.SegmentStore): an update encodes only those whose
frames changed (the new key frames', those whose settled marks moved; all after a layout change or a
refit) and joins them. A .gif, or ``--film-layout fit`` (fitted to the whole film), is re-encoded whole.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from layerfilm.draw.film_layout import live_segments
from layerfilm.errors import CheckpointError, OptionsError, ScanError
from layerfilm.film import check_export_path, export_points, film_frames, segment_engine, write_film
from layerfilm.film_options import FilmOptions
from layerfilm.io.formats import HF_WEIGHT_FILE
from layerfilm.io.outputs import atomic_output, check_output_path, new_scratch
from layerfilm.io.scan import TRAINER_STATE, Checkpoint, Series, scan
from layerfilm.io.storage import AnyPath, local_path
from layerfilm.live.dashboards import Measured
from layerfilm.parallel.engines import worker_init
from layerfilm.parallel.threads import one_blas_thread
from layerfilm.points import ArrayStore, Features, FeatureStore, safe_scale
from layerfilm.points.act_stats import json_series
from layerfilm.points.measures import DistanceBounds, PointMeasures, measures_of, relative_update, sum_sq
from layerfilm.points.weights import WeightPlan
from layerfilm.projection import Trajectories, coherence, project
from layerfilm.projection.linear import PcaBasis, fit_pca
from layerfilm.stability import Settling, settle_index
from layerfilm.study import Study, weights_subject
from layerfilm.text import printable, show
from layerfilm.video.encode import check_output, output_kind
from layerfilm.video.segments import SegmentStore

_REFIT = re.compile(r"never|always|doubling|every=([1-9]\d*)")
DOUBLING = -1  # parse_refit's value for refit=doubling
TEMPORARY = re.compile(r"^(?:tmp-checkpoint-|\.)")  # HF Trainer's folders being written, hidden temporaries


def parse_refit(text: str) -> int:
    """``--refit``: never -> 0, always -> 1, every=K -> K, doubling -> ``DOUBLING``."""
    m = _REFIT.fullmatch(text)
    if m is None:
        raise OptionsError(f"refit={text!r}: choose doubling, never, always or every=K (K >= 1)")
    return {"never": 0, "always": 1, "doubling": DOUBLING}[text] if m.group(1) is None else int(m.group(1))


def refit_due(every: int, keyframes: int, fitted: int) -> bool:
    """Whether a film of ``keyframes`` key frames fits its pca basis again, on all of them, when it was
    last fitted on the first ``fitted`` (0: not yet) under the policy ``every`` (``parse_refit``).
    doubling: when the intervals between key frames have doubled since the last fit (keyframes - 1 >=
    2 (fitted - 1)), i.e. at 1, 2, 3, 5, 9, 17, 33, ... key frames: a refit reads T key frames' rows at
    most twice as often as T doubles (amortised O(1) a key frame), and comes with the live timeline's
    own doubling (layerfilm.draw.film_layout.horizon), which redraws every frame anyway."""
    if fitted == 0:
        return True
    if every == DOUBLING:
        return keyframes > fitted and keyframes - 1 >= 2 * (fitted - 1)
    return every != 0 and keyframes - fitted >= every


@dataclass(frozen=True)
class LiveOptions:
    """How a live film follows its folder (beside the film's own options, ``FilmOptions``)."""

    refit: str = "doubling"  # doubling | never | always | every=K (see the module's doc)
    interval: float = 10.0  # seconds between polls of the folder (watch)
    stills: str | None = None  # also keep the first and last key frames side by side here (.png/.svg/.pdf)
    json: str | None = None  # also keep the film's per-block stability here (.json)
    export: str | None = None  # also keep the key frames' points here (.npz, as --export-points)

    def __post_init__(self) -> None:
        parse_refit(self.refit)
        if not (0 < self.interval < 1e6):  # also refuses NaN
            raise OptionsError(f"interval={self.interval:g}: must be a positive number of seconds")

    @property
    def every(self) -> int:
        return parse_refit(self.refit)


def check_live(opts: FilmOptions, live: LiveOptions) -> FilmOptions:
    """The film options a live film uses: the pca fit follows refit (never: the first key frame; always,
    every=K: all); other projections re-project every key frame (--refit always only)."""
    if opts.activations is not None:
        raise OptionsError("features=activations: a live film films weights (render the activations afterwards)")
    if opts.final_step is not None:
        raise OptionsError(f"final_step={opts.final_step}: a live film takes the checkpoints of a running training, "
                           "not its final model")
    if opts.projection != "pca":
        if live.every != 1:
            raise OptionsError(f"refit={live.refit}: a fixed basis is pca's; projection={opts.projection} re-projects "
                               "every key frame at each update: use refit=always")
        return opts
    fit = "first" if live.every == 0 else "all"
    if opts.fit not in ("all", fit):  # all: the default, taken to mean "as --refit says"
        raise OptionsError(f"fit={opts.fit}: with refit={live.refit} the pca basis is fitted on the "
                           f"{'first key frame' if fit == 'first' else 'key frames so far'} (fit={fit})")
    return replace(opts, fit=fit)


def check_outputs(folder: str | Path | None, out: str | Path, opts: FilmOptions, live: LiveOptions) -> None:
    """Every output path and the encoder options, checked before any work (``folder``: the input, when known)."""
    inputs = (Path(folder),) if folder is not None else ()
    check_output(Path(out), opts.encode, inputs)
    if live.stills is not None:
        from layerfilm.reports.figures import figure_format

        check_output_path(live.stills, (f".{figure_format(live.stills)}",), inputs, option="--stills")
    if live.json is not None:
        if Path(live.json).suffix != ".json":
            raise OptionsError(f"json={show(live.json)}: must end in .json")
        check_output_path(live.json, (".json",), inputs, option="--json")
    if live.export is not None:
        check_export_path(live.export, inputs)


def _signature(path: Path) -> tuple | None:
    """(name, size, mtime) of every file of an entry (a file, or a folder's files at any depth); None if
    it cannot be looked at (gone, no permission)."""
    try:
        if not path.is_dir():
            st = path.stat()
            return ((path.name, st.st_size, st.st_mtime_ns),)
        out = []
        for top, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                st = os.stat(os.path.join(top, name))
                out.append((os.path.relpath(os.path.join(top, name), path), st.st_size, st.st_mtime_ns))
        return tuple(out)
    except OSError:
        return None


class Readiness:
    """Which entries of a training folder hold complete checkpoints, found by polling (no inotify:
    cluster file systems and object stores send no events).

    An entry is complete once every file of it kept its size and modification time across two polls,
    or its trainer's completion marker exists (a Trainer ``checkpoint-N/`` holds trainer_state.json,
    written after the weights), or :meth:`declare` was told so (a training callback, after the save).
    HF Trainer's temporary ``tmp-checkpoint-*`` folders and hidden files are never complete; a model at
    the folder's root (the final save) is not a key frame of a live film."""

    def __init__(self, root: Path, polled: bool = True) -> None:
        self.root = Path(root)
        self.polled = polled  # False: only what was declared (a callback knows when a save is done)
        self._seen: dict[Path, tuple | None] = {}
        self._ready: dict[Path, tuple | None] = {}
        self._declared: set[Path] = set()

    def declare(self, paths: Iterable[str | Path]) -> None:
        self._declared.update(Path(p) for p in paths)

    def poll(self) -> None:
        seen: dict[Path, tuple | None] = {}
        ready: dict[Path, tuple | None] = {}
        try:
            entries = sorted(Path(e.path) for e in os.scandir(self.root))
        except OSError:
            entries = []
        for entry in entries:
            if TEMPORARY.match(entry.name) or HF_WEIGHT_FILE.match(entry.name):
                continue
            sig = _signature(entry)
            seen[entry] = sig
            if entry in self._declared:
                ready[entry] = sig
            elif self.polled and sig and (sig == self._seen.get(entry) or
                                          (entry.is_dir() and (entry / TRAINER_STATE).is_file())):
                ready[entry] = sig
        self._seen, self._ready = seen, ready

    def __call__(self, path: Path) -> bool:
        return path in self._ready

    def signature(self, path: Path) -> tuple | None:
        return self._ready.get(path)


@dataclass
class Update:
    """What one update added: the new key frames' steps, and per new key frame the blocks still moving."""

    steps: list[int] = field(default_factory=list)
    moving: list[int] = field(default_factory=list)  # -1: the first key frame (no film yet)
    barely: list[int] = field(default_factory=list)  # blocks that barely moved so far, per new key frame
    skipped: list[Checkpoint] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # read (find, read, project), measure, write (outputs)
    encoded: int = 0  # frames encoded (a live layout: only the segments that changed; else the whole film)
    basis: str = ""  # a new basis replaced the film's: its words (LiveFilm.basis_words), else ""


class LiveFilm:
    """A film of ``folder`` kept up to date one checkpoint at a time (see the module's doc).

    Example:
        >>> live = LiveFilm("run/", "film.webm", FilmOptions(), LiveOptions(refit="doubling"))  # doctest: +SKIP
        >>> live.update()  # doctest: +SKIP  (reads the checkpoints completed since the last call)
    """

    def __init__(self, folder: str | Path, out: str | Path, opts: FilmOptions = FilmOptions(),
                 live: LiveOptions = LiveOptions(), progress: bool = False, polled: bool = True,
                 scratch: str | Path | None = None, stability: bool = False) -> None:
        """``stability``: every update's measures are asked for (a training's dashboards): the rows are kept."""
        self.root = Path(folder)
        self.out = Path(out)
        self.opts = check_live(opts, live)
        if output_kind(self.out) == "webm" and not opts.encode.preset:  # an update's wait matters more than
            self.opts = replace(self.opts, encode=replace(opts.encode, preset="realtime"))  # ~20% of the bytes
        self.live = live
        self.progress = progress
        check_outputs(self.root, self.out, self.opts, live)
        self.study = Study(Series(self.root, ()), self.opts, progress=False)  # reads the key frames, keeps the cache
        self.ready = Readiness(self.root, polled)
        self.done: dict[Path, tuple | None] = {}  # entries found bad, retried once they change
        self.used: set[Path] = set()  # entries filmed (or passed over by --every), never looked at again
        self.skipped: list[Checkpoint] = self.study.skipped  # one list: the scan's, and those found when read
        self.kept = 0  # usable checkpoints seen, for --every
        self.xy: list[np.ndarray] = []  # per key frame (L, N, 2) float32
        self.basis: PcaBasis | None = None
        self.fitted = 0  # the basis was fitted on the first `fitted` key frames (0: none yet)
        self.refits: list[int] = []  # the step of the newest key frame at each fit of the basis
        self.stats: dict[str, np.ndarray] = {}
        self.traj: Trajectories | None = None  # what the outputs show now
        keep_rows = (live.every != 0 or self.opts.overlay or live.json is not None or live.export is not None
                     or stability)
        self._scratch = new_scratch("live", scratch) if keep_rows else None  # stale ones of killed watches go
        self.store = FeatureStore(Path(self._scratch.name) / "rows") if self._scratch is not None else None
        self.bounds: DistanceBounds | None = None  # every key frame's distance to the newest, when rows are kept
        self.settling: Settling | None = None  # the newest update's block statuses (the printed lines)
        incremental = self.opts.film_layout == "live" and output_kind(self.out) != "gif"
        self.segments = SegmentStore(self.out) if incremental else None

    def close(self) -> None:
        """Remove the scratch rows and segments (the outputs stay)."""
        if self._scratch is not None:
            self._scratch.cleanup()
        if self.segments is not None:
            self.segments.close()

    @property
    def wp(self) -> WeightPlan | None:
        """The weight plan (decided by the first checkpoint added), None before it."""
        return self.study._plan

    @property
    def steps(self) -> list[int]:
        """The key frames' steps so far."""
        return self.study.series.steps

    @property
    def ckpts(self) -> tuple[Checkpoint, ...]:
        """The key frames' checkpoints so far."""
        return self.study.series.checkpoints

    @property
    def measured(self) -> PointMeasures:
        """Every key frame's squared norm and squared distance to the previous one, and the newest's rows."""
        assert self.study.added is not None  # a key frame was added
        return self.study.added

    def __enter__(self) -> LiveFilm:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---------------------------------------------------------------- finding new checkpoints

    def _new(self, entry: AnyPath) -> bool:
        path = local_path(entry)  # a live film watches a local folder
        return (self.ready(path) and path not in self.used
                and (path not in self.done or self.done[path] != self.ready.signature(path)))

    def new_checkpoints(self) -> list[Checkpoint]:
        """The complete checkpoints not looked at yet, by step (headers only; nothing else is opened)."""
        self.ready.poll()
        try:
            series = scan(self.root, steps=self.opts.steps, strict=self.opts.strict,
                          blocks_regex=self.opts.weights.blocks_regex, warn=False, only=self._new, empty_ok=True)
        except ScanError:  # nothing complete and new yet (an empty folder, only half-written files)
            return []
        for c in series.skipped:
            self.done[local_path(c.path)] = self.ready.signature(local_path(c.path))
            self._skip(c)
        found = []
        for c in series.checkpoints:
            self.used.add(local_path(c.path))
            if self.steps and c.step is not None and c.step <= self.steps[-1]:
                self._skip(replace(c, problem=f"step {c.step} arrived after step {self.steps[-1]}: a live film only "
                                   "adds later steps (a render of the folder includes it)"))
                continue
            if self.kept % self.opts.every == 0:
                found.append(c)
            self.kept += 1
        return found

    def _skip(self, c: Checkpoint) -> None:
        if self.opts.strict:
            raise CheckpointError(f"{c.path}: {c.problem} (strict: nothing is skipped)")
        warnings.warn(f"{c.path}: {c.problem}; skipped", stacklevel=2)
        self.skipped.append(c)

    # ---------------------------------------------------------------- adding key frames

    def add(self, ckpt: Checkpoint) -> bool:
        """Add ``ckpt`` as the next key frame (the Study reads its tracked rows, once) and project it by
        the refit policy; False if it cannot be read."""
        x = self.study.add(ckpt)
        if x is None:
            return False
        if self.store is not None:
            self.store.append(x)
            if self.bounds is None:
                self.bounds = DistanceBounds(x.shape[0])
            self.bounds.add(self.measured.sq[-1][1])
        T = len(self.steps)
        if self.opts.projection != "pca":
            return True  # re-projected from the kept rows in read_new(), once for the whole batch
        if self.basis is not None and len(self.xy) == T - 1 and not refit_due(self.live.every, T, self.fitted):
            self.xy.append(self.basis.apply(x))  # the basis kept: old frames do not move
        elif self.live.every == 0:  # never: fitted on the first key frame alone, no rows kept
            self.basis = self._fit(ArrayStore(x[None]), "first")
            self.fitted, self.refits = 1, [self.steps[-1]]
            self.xy.append(self.basis.apply(x))
        return True  # else refitted from the kept rows in read_new(), once for the whole batch

    def _features(self, store) -> Features:
        assert self.wp is not None
        return Features(np.asarray(self.steps[-len(store):], np.int64), np.asarray(self.wp.layer_map.blocks, np.int64),
                        self.wp.point_ids.astype(np.int64), "", store, positions=np.arange(len(self.wp.tensor_names)))

    def _fit(self, store, fit: str) -> PcaBasis:
        basis, _ = fit_pca(self._features(store), fit, progress=False)
        return basis

    def _refit(self) -> None:
        """Every key frame re-projected from the kept rows (never from the checkpoints). A pca basis is
        fitted on all key frames (render --fit all) and, but for refit=always (which equals that render),
        turned in its plane onto the film's previous points (``PcaBasis.aligned``): no axis flips."""
        assert self.store is not None  # kept whenever --refit is not never
        features = self._features(self.store)
        if self.opts.projection == "pca":
            basis, coords = fit_pca(features, "all", progress=False)
            if self.live.every != 1 and self.xy:
                basis = basis.aligned(coords[: len(self.xy)], np.stack(self.xy))
            self.basis, xy = basis, basis.rotate(coords)
            self.fitted = len(self.steps)
            self.refits.append(self.steps[-1])
        else:
            traj = project(features, self.opts.projection, progress=False, **self.opts.projection_kwargs())
            xy, self.stats = traj.xy, {k: v for k, v in traj.stats.items() if k == "explained_variance"}
        self.xy = list(xy)

    def trajectories(self) -> Trajectories:
        """The key frames so far, with the measures a render computes for them."""
        assert self.wp is not None
        xy = np.stack(self.xy)
        steps = np.asarray(self.steps, np.int64)
        stats = dict(self.stats)
        if self.basis is not None:
            stats["explained_variance"] = self.basis.explained_variance
        if self.bounds is not None:
            stats.update(self._distances(steps, exact=self._exact_distances()))
        stats.update(coherence(xy))
        subject = weights_subject(self.wp, self.opts, len(steps), self.root.name)
        if self.opts.projection == "pca" and self.live.every not in (0, 1):
            subject = replace(subject, projection=self.basis_words())
        return Trajectories(steps, np.asarray(self.wp.layer_map.blocks, np.int64), self.wp.point_ids.astype(np.int64),
                            xy, self.opts.projection, stats, subject)

    def basis_words(self) -> str:
        """The legend's words for a basis refitted now and then (doubling, every=K): when it came and how
        many key frames it pooled (all those to that step); they change only at a refit, which redraws
        every frame anyway."""
        return f"new basis at step {self.refits[-1]:,}: PCA of {self.fitted} key frames"

    def newest_explained(self) -> np.ndarray:
        """(L,) the share of the newest key frame's variance that the film shows: the variance of its 2-D
        points over that of its tracked rows (each about its own mean), in the film's basis (pca) or its
        own (procrustes); NaN for umap (not a linear map)."""
        x, xy = self.measured.prev, self.xy[-1]
        assert x is not None
        if self.opts.projection == "umap":
            return np.full(len(x), np.nan)
        if self.basis is not None:
            scale = self.basis.scale
        else:
            assert self.store is not None and self.store.max_abs is not None
            scale = safe_scale(self.store.max_abs)
        total = sum_sq(x - x.mean(axis=1, keepdims=True)) * scale.astype(np.float64) ** 2
        shown = sum_sq(xy - xy.mean(axis=1, keepdims=True))
        return shown / np.maximum(total, np.finfo(np.float64).tiny)

    def _exact_distances(self) -> bool:
        """Whether the outputs print every key frame's distance to the newest (the stability JSON, the
        exported points, a fitted layout's settled marks) rather than only which blocks settled."""
        return (self.live.json is not None or self.live.export is not None or
                (self.opts.overlay and self.opts.film_layout == "fit"))

    def _distances(self, steps: np.ndarray, exact: bool) -> dict[str, np.ndarray]:
        """The measures of the key frames' distances: ``point_update`` and, with ``exact``, every
        ``point_distance`` (the rows read back where the bounds are not exact: T x the tracked bytes at
        worst); without it, only the blocks' statuses (``self.settling``), from the bounds and the few rows
        they leave undecided, and the first key frame's distance (layerfilm.points.measures.DistanceBounds)."""
        m = self.measured
        assert self.bounds is not None and self.store is not None and m.prev is not None
        norm_sq, prev_sq, newest = m.norm_sq, m.prev_sq, m.prev
        read = self.store.rows
        th = self.opts.settle_threshold
        with one_blas_thread():
            if exact:
                measures = measures_of(norm_sq, prev_sq, self.bounds.exact(newest, read), steps)
                self.settling = Settling.of(measures["point_distance"], measures["point_update"], th)
                return measures
            update = relative_update(prev_sq, np.sqrt(norm_sq), steps)
            near = self.bounds.settle(th, norm_sq[-1], newest, read)
            change = np.sqrt(self.bounds.first(newest, read)) / np.maximum(np.sqrt(norm_sq[-1]), 1e-300)
            self.settling = Settling(settle_index(near, update, th), change)
        return {"point_update": update}

    # ---------------------------------------------------------------- one update

    def read_new(self, checkpoints: list[Checkpoint] | None = None) -> list[Checkpoint]:
        """Add the checkpoints completed since the last call (or ``checkpoints``), each read once, and
        project them (a refit: every key frame, from the kept rows); the checkpoints added."""
        with one_blas_thread():  # once per update: threadpoolctl's look at the loaded libraries reads ~50 KB
            added = [c for c in (self.new_checkpoints() if checkpoints is None else checkpoints) if self.add(c)]
            if added and (not self.xy or len(self.xy) != len(self.steps)):
                self._refit()
        return added

    def update(self, checkpoints: list[Checkpoint] | None = None) -> Update:
        """Add the checkpoints completed since the last call (or ``checkpoints``), then rewrite the outputs
        once (when there are two key frames or more)."""
        up = Update()
        t0 = time.perf_counter()
        before, fits = len(self.skipped), len(self.refits)
        added = self.read_new(checkpoints)
        up.skipped = self.skipped[before:]
        if not added:
            return up
        t1 = time.perf_counter()
        up.seconds["read"] = t1 - t0
        up.steps = [c.step for c in added if c.step is not None]
        if len(self.steps) < 2:  # a film starts at its second key frame
            up.moving = [-1] * len(up.steps)
            return up
        traj = self.traj = self.trajectories()
        t2 = time.perf_counter()
        up.encoded = self.write(traj)
        up.seconds["measure"], up.seconds["write"] = t2 - t1, time.perf_counter() - t2
        keys = [self.steps.index(s) for s in up.steps]
        up.moving = [self.moving(traj, k) for k in keys]
        up.barely = [0 if self.settling is None else int(self.settling.barely.sum()) for _ in keys]
        if len(self.refits) > fits and len(self.steps) - len(added) >= 2 and self.live.every not in (0, 1):
            # it replaced a basis already filmed (refit=always: at every update, as the legend says)
            up.basis = traj.subject.projection if traj.subject is not None else "new basis"
        return up

    def remember(self) -> None:
        """Keep the key frames in the render cache (layerfilm.io.cache) under the key a render of the same
        checkpoints and options looks up, so that a render afterwards reads no checkpoint. Only when they
        are a render's: --refit never (render --fit first) or always (--fit all), with every measure."""
        if self.traj is None or not self.opts.cache or self.live.every not in (0, 1) or self.bounds is None:
            return
        self.study.remember(self.exact())

    def exact(self) -> Trajectories:
        """The film's key frames with every distance measured (``point_distance``; the rows read back once)."""
        assert self.traj is not None and self.bounds is not None
        if "point_distance" not in self.traj.stats:
            stats = {**self.traj.stats, **self._distances(self.traj.steps, exact=True)}
            self.traj = replace(self.traj, stats=stats)
        return self.traj

    def moving(self, traj: Trajectories, k: int) -> int:
        """How many blocks are moving at key frame k (layerfilm.stability.Settling, the overlay's rule;
        every block without the rows)."""
        return len(traj.blocks) if self.settling is None else self.settling.moving(k)

    def write(self, traj: Trajectories) -> int:
        """The film, then the stills, stability JSON and points asked for, each renamed into place whole;
        returns the number of frames encoded."""
        opts = self.opts
        frames = film_frames(traj, opts)
        if self.segments is None:
            encoded = write_film(traj, self.out, opts, self.progress, frames)
        else:
            ranges = live_segments(frames.timeline, math.ceil(opts.encode.segment_seconds * opts.fps))
            encoded = self.segments.update(frames, ranges, (opts.style.width, opts.style.height), opts.encode, opts.fps,
                                           lambda n: segment_engine(opts, n))  # workers for a new layout's frames
        inputs = (self.root,)
        if self.live.stills is not None:
            from layerfilm.reports.document import keyframe_stills
            from layerfilm.reports.figures import save_figure

            logs = self.study.logs() if self.opts.curves else None
            save_figure(keyframe_stills(traj, self.opts.style, opts=self.opts, logs=logs).figure, self.live.stills, inputs)
        if self.live.json is not None:
            with atomic_output(self.live.json, suffix=".json") as tmp:
                tmp.write_text(stability_json(traj, self.opts.settle_threshold, self.newest_explained()))
        if self.live.export is not None:
            export_points(traj, self.live.export, inputs)
        return encoded


def stability_json(traj: Trajectories, threshold: float, explained: np.ndarray | None = None) -> str:
    """The film's per-block stability (``stability_rows``), one block a line."""
    return "[\n" + ",\n".join(json.dumps(r) for r in stability_rows(traj, threshold, explained)) + "\n]\n"


def stability_rows(traj: Trajectories, threshold: float, explained: np.ndarray | None = None) -> list[dict]:
    """The film's per-block stability from its own points, a dict per block: block, status (settled,
    moving or barely moved: layerfilm.stability.Settling), settle_step (null: not settled), settle_threshold,
    steps, point_update, point_distance (to the newest key frame), motion (between key frames, relative to
    the cloud's spread; null at the first), and with ``explained`` (L,) explained_variance: the share of the
    newest key frame's variance its 2-D points show (``LiveFilm.newest_explained``; null where unknown)."""
    settling = Settling.of(traj.stats["point_distance"], traj.stats["point_update"], threshold)
    status, settle = settling.status(), settling.index
    motion = np.concatenate([np.full((len(traj.blocks), 1), np.nan), traj.stats["motion"]], axis=1)
    rows = [{"block": int(b), "status": status[l],
             "settle_step": int(traj.steps[settle[l]]) if status[l] == "settled" else None,
             "settle_threshold": threshold, "steps": [int(s) for s in traj.steps],
             "point_update": json_series(traj.stats["point_update"][:, l]),
             "point_distance": json_series(traj.stats["point_distance"][:, l]),
             "motion": json_series(motion[l])} for l, b in enumerate(traj.blocks)]
    if explained is not None:
        for row, ev in zip(rows, explained):
            row["explained_variance"] = float(ev) if np.isfinite(ev) else None
    return rows


def report_line(up: Update, blocks: int) -> list[str]:
    """One line per new key frame: its step, how many blocks still move, and how many barely moved so far
    (the last: and a new basis)."""
    barely = up.barely or [0] * len(up.steps)
    lines = [f"key frame: step {s:,}, " + (f"{m} of {blocks} blocks still moving" + (f", {b} barely moved so far"
                                                                                    if b else "") if m >= 0 else
                                          "the first (the film starts at the second)")
             for s, m, b in zip(up.steps, up.moving, barely)]
    if up.basis and lines:
        lines[-1] += f"; {up.basis}"
    return lines


def watch(folder: str | Path, out: str | Path, opts: FilmOptions = FilmOptions(), live: LiveOptions = LiveOptions(),
          stop: Callable[[], bool] = lambda: False, progress: bool = False, echo: Callable[[str], None] = print) -> LiveFilm:
    """Follow ``folder`` until ``stop()`` is True (checked between polls and between updates, never during
    one), updating the film after each batch of new complete checkpoints. Returns the LiveFilm."""
    with LiveFilm(folder, out, opts, live, progress) as film:
        while not stop():
            up = film.update()
            for line in report_line(up, len(film.wp.tensor_names) if film.wp is not None else 0):
                echo(line)
            for c in up.skipped:
                echo(f"skipped {show(c.path)}: {printable(c.problem or '')}")
            deadline = time.monotonic() + live.interval
            while not stop() and time.monotonic() < deadline:
                time.sleep(min(0.05, live.interval))
        film.remember()
        sys.stdout.flush()
        return film


def measured(film: LiveFilm, up: Update, last: bool) -> Measured | None:
    """What the training's dashboards get after update ``up`` (``last``: and the film's stability)."""
    traj = film.traj
    if traj is None:  # no film yet (one key frame)
        return None
    keys = [int(np.searchsorted(traj.steps, s)) for s in up.steps]
    rows = stability_rows(film.exact(), film.opts.settle_threshold, film.newest_explained()) if last else None
    return Measured([int(b) for b in traj.blocks], list(up.steps), traj.stats["point_update"][keys].tolist(), rows,
                    str(film.out) if last and film.out.exists() else None)


def follow(folder: str, out: str, opts: FilmOptions, live: LiveOptions, queue, results=None) -> None:
    """The background process of layerfilm.callbacks: ``queue`` brings lists of complete checkpoint paths
    (then None: the training ended); after each batch of them, the film is updated. Lines go to stderr;
    each update's measures go to ``results`` (when given: layerfilm.live.dashboards.Measured).
    It runs at low priority, its numerical libraries on one thread each: training comes first."""
    os.nice(10)
    worker_init()
    with LiveFilm(folder, out, opts, live, polled=False, stability=results is not None) as film:
        while True:
            got = [queue.get()]
            while got[-1] is not None and not queue.empty():  # saves that came during the last update: one update
                got.append(queue.get())
            for paths in got:
                if paths is not None:
                    film.ready.declare(paths)
            up = film.update()
            for line in report_line(up, len(film.wp.tensor_names) if film.wp is not None else 0):
                print(f"layerfilm: {line}", file=sys.stderr, flush=True)
            last = got[-1] is None
            if results is not None and (up.steps or last) and (m := measured(film, up, last)) is not None:
                results.put(m)
            if last:
                film.remember()
                return
