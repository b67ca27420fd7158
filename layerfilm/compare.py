"""Compare runs: a base run against changed runs (another learning rate, seed, initialisation), block by block.

Runs that start from the same weights (their first readable checkpoints hold equal tracked rows) are
compared neuron by neuron: per block, the divergence is ||W_run - W_base||_F / ||W_base||_F over every
matrix (tensor of two or more dimensions) of the block, at each step both runs saved. Runs that do not
share an initialisation have no neuron-to-neuron correspondence; they are compared by representation:
1 - linear CKA between the two runs' block outputs on the same probe tokens (CKA needs the samples to
correspond, and the tokens do; the hidden units need not). With ``features=activations`` every run is
compared that way.

Every checkpoint is read through :class:`layerfilm.study.Study` (its scan, storage, skip rule and
activation passes); a checkpoint that cannot be read is skipped in its run only (its values are null).

:func:`compare` gives the table (:class:`Comparison`, ``layerfilm compare``); :func:`render_runs` the
film of several runs (``layerfilm render BASE OTHER ...``): each block's panels side by side, one basis
per block fitted on all runs together, one clock by training step.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from layerfilm.draw.legend import Legend, scale_top, subject_text
from layerfilm.draw.raster import Renderer
from layerfilm.errors import OptionsError, ScanError
from layerfilm.film import (
    FilmFrames,
    FilmResult,
    check_film_size,
    draw_still,
    film_segments,
    film_timeline,
    key_indices,
    pick_preset,
    still_caption,
    time_words,
    widest_caption,
    write_film,
)
from layerfilm.film_options import FilmOptions, StillsOptions, StudyOptions, ViewOptions
from layerfilm.io.formats import check_finite
from layerfilm.io.scan import Checkpoint
from layerfilm.io.storage import local_inputs
from layerfilm.parallel.engines import session
from layerfilm.points import ArrayStore, Features
from layerfilm.points.weights import WeightPlan
from layerfilm.points.whole import linear_cka
from layerfilm.projection import Trajectories, project
from layerfilm.stability import Stability
from layerfilm.study import Study, weights_subject
from layerfilm.text import show, text_table
from layerfilm.video.encode import check_output

WEIGHTS, ACTIVATIONS, DISTRIBUTION = "weights", "activations", "distribution"


@dataclass(frozen=True)
class Comparison:
    """Divergence of each run from the base, per common step and block.

    base, runs: the names (folder names, or those given); runs excludes the base.
    shared_init: {run: its first checkpoint equals the base's (tracked rows)}.
    kind: {run: "weights" (||W_run - W_base|| / ||W_base||), "activations" (1 - CKA of block outputs) or
        "distribution" (another initialisation, not measured here: its divergence is NaN)}.
    steps: (S,) the steps every run (and the base) saved.
    blocks: (L,) block indices; names: (L,) their parameter prefixes, e.g. "transformer.h.3".
    divergence: (R, S, L) float64, NaN where a checkpoint of that run (or the base) could not be read.
    skipped: the checkpoints skipped, each with its problem.
    """

    base: str
    runs: tuple[str, ...]
    shared_init: dict[str, bool]
    kind: dict[str, str]
    steps: np.ndarray
    blocks: np.ndarray
    names: tuple[str, ...]
    divergence: np.ndarray
    skipped: tuple[Checkpoint, ...] = ()

    def final(self) -> np.ndarray:
        """(R, L) each run's divergence at the last common step where it (and the base) could be read."""
        out = np.full(self.divergence.shape[::2], np.nan)
        for r in range(len(self.runs)):
            for l in range(len(self.blocks)):
                ok = np.flatnonzero(np.isfinite(self.divergence[r, :, l]))
                if ok.size:
                    out[r, l] = self.divergence[r, ok[-1], l]
        return out

    def order(self, run: str | None = None) -> np.ndarray:
        """(L,) block positions, the block that differs most first: by its largest final divergence over
        the runs, each run's measured against its own largest block (weight divergence and 1 - CKA
        have different scales), blocks without a value last, then by index; ``run``: by that run's alone."""
        final = self.final()
        if run is not None:
            final = final[[self.runs.index(run)]]
        final = np.where(np.isfinite(final), final, -np.inf)
        peak = final.max(axis=1, keepdims=True)
        scaled = np.where(peak > 0, final / np.where(peak > 0, peak, 1), final)
        top = scaled.max(axis=0)
        return np.array(sorted(range(len(self.blocks)), key=lambda l: (-top[l], l)), np.int64)

    def to_json(self) -> str:
        """The issue's schema, blocks in rank order (null where a value is missing)."""
        final = self.final()
        blocks = [{"block": int(self.blocks[l]), "name": self.names[l],
                   "divergence": {n: [_num(v) for v in self.divergence[r, :, l]] for r, n in enumerate(self.runs)},
                   "final": {n: _num(final[r, l]) for r, n in enumerate(self.runs)}} for l in self.order()]
        return json.dumps({"base": self.base, "runs": list(self.runs), "shared_init": self.shared_init,
                           "steps": [int(s) for s in self.steps], "blocks": blocks}, indent=1)

    def rows(self) -> tuple[list[str], list[list[str]]]:
        """Header and rows of the ranked table: the blocks, the block that differs most first, and each
        run's divergence at the last common step ("-": not measured or not read)."""
        final = self.final()
        head = ["rank", "block", "name", *self.runs]
        return head, [[str(i + 1), str(self.blocks[l]), self.names[l],
                       *(_text(final[r, l]) for r in range(len(self.runs)))] for i, l in enumerate(self.order())]

    def notes(self) -> list[str]:
        """The base, the common steps, and one line per run saying how it is compared."""
        return ([f"base: {self.base}; {len(self.steps)} common step(s), last {int(self.steps[-1]):,}"]
                + [f"{n}: {describe_kind(self.kind[n], self.shared_init[n])}" for n in self.runs])

    def table(self) -> str:
        """Blocks ranked by how much they differ at the last common step, a column per run, and one line
        per run saying how it is compared."""
        return "\n".join([*self.notes(), "", text_table(*self.rows(), left=[2])])


def describe_kind(kind: str, shared: bool) -> str:
    """How a run is compared with the base, in words that claim no more than is true."""
    if kind == WEIGHTS:
        return "same initialisation: neuron by neuron, ||W - W_base|| / ||W_base|| over the block's matrices"
    init = "same initialisation" if shared else "another initialisation (neurons do not correspond)"
    if kind == DISTRIBUTION:
        return f"{init}: by distribution only (settling, norms); no divergence is measured"
    return f"{init}: by representation, 1 - linear CKA of the block outputs on the probe tokens"


def _num(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


def _text(v: float) -> str:
    return f"{v:.4g}" if math.isfinite(v) else "-"


def run_names(folders: Sequence[str | Path], names: Sequence[str] | str | None) -> tuple[str, ...]:
    """The runs' names: ``names`` (a list, or "a,b,c") or the folders' names; refused unless one per
    run and all different."""
    if isinstance(names, str):
        names = names.split(",")
    got = tuple(names) if names is not None else tuple(Path(str(f).rstrip("/")).name or str(f) for f in folders)
    if len(got) != len(folders):
        raise OptionsError(f"names={','.join(got)}: {len(got)} name(s) for {len(folders)} runs")
    if len(set(got)) != len(got) or not all(got):
        raise OptionsError(f"names={','.join(got)}: the runs need different, non-empty names (give names=a,b,...)")
    return got


def open_runs(folders: Sequence[str | Path], opts: StudyOptions, progress: bool = True) -> list[Study]:
    """One Study per folder, the first the base: every run tracks the base's matrix and neurons
    (the same indices), and is refused unless its blocks have the same shapes."""
    if len(folders) < 2:
        raise OptionsError(f"{len(folders)} run(s): a comparison needs a base and at least one other run")
    studies = [Study.open(f, opts, progress) for f in folders]
    for s in studies:
        if len(s.series) == 0:
            raise ScanError(f"{show(s.series.root)}: no usable checkpoint")
    wp = studies[0].weight_plan()
    for s in studies[1:]:
        s.use_plan(wp)
    return studies


def first_rows(study: Study) -> tuple[int | None, np.ndarray] | None:
    """(step, tracked rows) of the run's first readable checkpoint."""
    for ckpt in study.series.checkpoints:
        rows = study.rows(ckpt)
        if rows is not None:
            return ckpt.step, rows
    return None


def shared_inits(studies: Sequence[Study], points: Sequence[Features] | None = None) -> list[bool]:
    """For each run after the first (the base): it starts from the base's weights, i.e. their first
    readable checkpoints are equal (same step, equal tracked rows, bit for bit). ``points``: the runs'
    rows already read (``Study.points``), whose first key frames are those checkpoints: nothing is read
    again."""
    firsts = ([(int(f.steps[0]), f.store[0]) for f in points] if points is not None
              else [first_rows(s) for s in studies])
    a = firsts[0]
    return [a is not None and b is not None and a[0] == b[0] and np.array_equal(a[1], b[1]) for b in firsts[1:]]


def _matrices(wp: WeightPlan) -> Callable:
    """A reader of every matrix of every block (float32, checked finite): [block][name] -> array."""
    lm = wp.layer_map

    def read(reader, where) -> list[dict[str, np.ndarray]]:
        keys = set(reader.keys())
        out = []
        for b in lm.blocks:
            block = {}
            for name in lm.names[b].values():
                if name in keys and len(reader.shape(name)) >= 2:
                    w = np.asarray(reader.get(name), np.float32)
                    check_finite(w, where, name, b)
                    block[name] = w
            out.append(block)
        return out

    return read


def weight_divergence(base: list[dict[str, np.ndarray]], run: list[dict[str, np.ndarray]]) -> np.ndarray:
    """(L,) ||W_run - W_base||_F / ||W_base||_F per block over the base's matrices (NaN: a matrix
    missing from the run or of another shape)."""
    out = np.full(len(base), np.nan)
    for l, (a, b) in enumerate(zip(base, run)):
        if set(a) != set(b) or any(a[k].shape != b[k].shape for k in a):
            continue
        den = math.sqrt(sum(_sq(a[k]) for k in a))  # sums of squares in float64
        num = math.sqrt(sum(_sq(b[k] - a[k]) for k in a))
        out[l] = num / den if den > 0 else np.nan
    return out


def _sq(x: np.ndarray) -> float:
    x = x.astype(np.float64, copy=False).ravel()
    return float(x @ x)


def _weights(base: Study, runs: list[Study], steps: np.ndarray) -> np.ndarray:
    """(R, S, L) weight divergence at ``steps``; a checkpoint that cannot be read gives NaN in its run only."""
    wp = base.weight_plan()
    read = _matrices(wp)
    out = np.full((len(runs), len(steps), len(wp.tensor_names)), np.nan)
    at = [{c.step: c for c in s.series.checkpoints} for s in (base, *runs)]
    for i, step in enumerate(steps):
        b = base.read(at[0][step], read)
        if b is None:
            continue
        for r, run in enumerate(runs):
            w = run.read(at[r + 1][step], read)
            if w is not None:
                out[r, i] = weight_divergence(b, w)
    return out


def _activations(base: Study, runs: list[Study], steps: np.ndarray, blocks: np.ndarray) -> np.ndarray:
    """(R, S, L) 1 - linear CKA of each block's outputs on the probe tokens, run against base."""
    out = np.full((len(runs), len(steps), len(blocks)), np.nan)
    with base.outputs() as fb:
        bt = {int(s): t for t, s in enumerate(fb.steps)}
        for r, run in enumerate(runs):
            with run.outputs() as fr:
                if not np.array_equal(fr.blocks, fb.blocks) or not np.array_equal(fr.point_ids, fb.point_ids):
                    raise OptionsError(f"{show(run.series.root)}: its block outputs are not those of the base run "
                                       "(other blocks or probe tokens)")
                rt = {int(s): t for t, s in enumerate(fr.steps)}
                for i, step in enumerate(steps):
                    if int(step) in bt and int(step) in rt:
                        a, b = fb.store[bt[int(step)]], fr.store[rt[int(step)]]
                        out[r, i] = [1.0 - linear_cka(a[l].astype(np.float64), b[l].astype(np.float64))
                                     for l in range(a.shape[0])]
    return out


def common_steps(studies: Sequence[Study]) -> np.ndarray:
    """(S,) the steps every run saved (scanned), sorted; refused when there are none."""
    sets = [{int(c.step or 0) for c in s.series.checkpoints} for s in studies]  # a scanned checkpoint has a step
    steps = np.array(sorted(set.intersection(*sets)), np.int64)
    if not len(steps):
        raise ScanError("the runs share no step: " + "; ".join(
            f"{show(s.series.root)} {min(x):,}..{max(x):,}" for s, x in zip(studies, sets)))
    return steps


def compare(base: str | Path, others: Sequence[str | Path], opts: StudyOptions = StudyOptions(),
            names: Sequence[str] | str | None = None, probe=None, progress: bool = True,
            by_representation: bool = True) -> Comparison:
    """Each of ``others`` against ``base``, per block, at every step they all saved.

    Args:
        base, others: checkpoint folders (or URLs), as for render.
        opts: the options (which checkpoints, blocks, points; ``activations`` set: every run by CKA).
        names: the runs' names in order, base first (default: the folders' names).
        probe: the ActivationSpec (or a function returning one) for runs that do not share the base's
            initialisation, when ``opts.activations`` is None (default: the model from config.json and
            the bundled probe text).
        by_representation: False: runs without the base's initialisation are not measured (kind
            "distribution", NaN) unless ``opts.activations`` is set; no model is built for them.
    Returns:
        a :class:`Comparison` (``.table()``, ``.to_json()``).
    Example:
        >>> print(compare("base/", ["lr10x/"]).table())  # doctest: +SKIP
    """
    folders = [base, *others]
    labels = run_names(folders, names)
    studies = open_runs(folders, replace(opts, activations=None), progress)
    shared = dict(zip(labels[1:], shared_inits(studies)))
    kind = {n: WEIGHTS if shared[n] and opts.activations is None else
            ACTIVATIONS if opts.activations is not None or by_representation else DISTRIBUTION for n in labels[1:]}
    steps = common_steps(studies)
    wp = studies[0].weight_plan()
    blocks = np.asarray(wp.layer_map.blocks, np.int64)
    div = np.full((len(labels) - 1, len(steps), len(blocks)), np.nan)
    by_weights = [r for r, n in enumerate(labels[1:]) if kind[n] == WEIGHTS]
    if by_weights:
        div[by_weights] = _weights(studies[0], [studies[r + 1] for r in by_weights], steps)
    by_cka = [r for r, n in enumerate(labels[1:]) if kind[n] == ACTIVATIONS]
    if by_cka:
        spec = opts.activations or (probe() if callable(probe) else probe) or _default_probe(opts)
        keep = set(steps.tolist())  # the probe runs through the common steps only
        act = [Study(replace(s.series, checkpoints=tuple(c for c in s.series.checkpoints if c.step in keep)),
                     replace(s.opts, activations=spec), progress) for s in studies]
        div[by_cka] = _activations(act[0], [act[r + 1] for r in by_cka], steps, blocks)
        studies += act
    prefix = wp.layer_map.prefix
    skipped = {c.path: c for s in studies for c in s.skipped}
    return Comparison(labels[0], labels[1:], shared, kind, steps, blocks, tuple(f"{prefix}.{b}" for b in blocks),
                      div, tuple(skipped.values()))


def _default_probe(opts: StudyOptions):
    from layerfilm.points.activations import ActivationSpec

    w = opts.weights
    return ActivationSpec(points=w.points, seed=w.seed, blocks_regex=w.blocks_regex)


# ------------------------------------------------------------------------------------------ the film


def held(steps: np.ndarray, clock: np.ndarray) -> np.ndarray:
    """(U,) for each step of ``clock``, the index of the run's last key frame at or before it (its
    first before it starts): a run with another save schedule holds its key frame until its next one."""
    return np.clip(np.searchsorted(steps, clock, side="right") - 1, 0, len(steps) - 1)


def joint_trajectories(points: Sequence[Features], opts: StudyOptions) -> tuple[Trajectories, np.ndarray]:
    """Every run's points projected with one basis per block fitted on all runs together, on one clock
    (the union of the runs' steps). Returns the trajectories with (U, L, R x N, 2) points (run r's
    neurons at r*N .. r*N + N - 1) and (R, U) which key frame of each run each clock step shows."""
    clock = np.unique(np.concatenate([f.steps for f in points]))
    idx = np.stack([held(f.steps, clock) for f in points])  # (R, U)
    T, L, N, D = len(clock), points[0].store[0].shape[0], points[0].store[0].shape[1], points[0].store[0].shape[2]
    R = len(points)
    arr = np.empty((T, L, R * N, D), np.float32)
    for r, f in enumerate(points):
        for u in range(T):
            arr[u, :, r * N : (r + 1) * N] = f.store[int(idx[r, u])]
    ids = np.tile(points[0].point_ids, (1, R))
    joint = Features(clock, points[0].blocks, ids, points[0].name, ArrayStore(arr), positions=np.arange(L))
    traj = project(joint, opts.projection, progress=False, **opts.projection_kwargs())
    return traj, idx


def runs_panels(traj: Trajectories, runs: int, subject) -> Trajectories:
    """The joint trajectories (:func:`joint_trajectories`) as panels, block by block: block l's runs are
    panels l*R .. l*R + R - 1, which sit side by side in the block's cell of the grid."""
    U, L, RN, _ = traj.xy.shape
    N = RN // runs
    return Trajectories(traj.steps, np.repeat(traj.blocks, runs), traj.point_ids.reshape(L * runs, N),
                        traj.xy.reshape(U, L * runs, N, 2), traj.method, {}, subject)


def runs_film(traj: Trajectories, labels: Sequence[str], shared: Sequence[bool], run_steps: Sequence[np.ndarray],
              wp: WeightPlan, opts: ViewOptions) -> tuple[Trajectories, FilmFrames]:
    """The film of the joint trajectories ``traj`` of runs ``labels`` (``shared``: each shares the base's
    initialisation; ``run_steps``: each run's key frames' steps, ticked on its own timeline row): its
    panels and its frames."""
    R, U = len(labels), len(traj.steps)
    subject = weights_subject(wp, opts, U, "")
    panels = runs_panels(traj, R, subject)
    legend = None
    if opts.legend:
        places = [film_timeline(traj.steps, opts).position(k, 0.0) for k in range(U)]
        runs = tuple((n, tuple(p for p, s in zip(places, traj.steps) if s in set(np.asarray(steps).tolist())))
                     for n, steps in zip(labels, run_steps))
        legend = Legend(tuple(_legend_parts(labels, shared, [len(st) for st in run_steps], traj, subject, opts)),
                        tuple(places), runs=runs)
    renderer = Renderer(opts.style, [f"L{b} {n}" for b in traj.blocks for n in labels], np.repeat(traj.extent(), R, axis=0),
                        legend=legend, group=R, caption=widest_caption(traj.steps, opts.time), marks=())
    maxima = renderer.key_maxima(renderer.place(panels.xy, k, 0.0) for k in range(U))
    renderer.set_scale(*scale_top(maxima), U)
    return panels, FilmFrames.of(panels, opts, renderer)


def runs_frames(studies: Sequence[Study], labels: Sequence[str],
                opts: ViewOptions) -> tuple[Trajectories, FilmFrames]:
    """(its panels' trajectories, the film) of several opened runs (:func:`open_runs`, the first the base), as
    :func:`render_runs` draws it: panel ``l * R + r`` is block l of run r (R runs), on block l's one basis
    (fitted on all runs together) and axes; the clock is the union of the runs' steps (``renderer.group``: R)."""
    points = [s.points() for s in studies]
    return points_film(points, labels, [True, *shared_inits(studies, points)], studies[0].weight_plan(), opts)


def points_film(points: Sequence[Features], labels: Sequence[str], shared: Sequence[bool], wp: WeightPlan,
                opts: ViewOptions) -> tuple[Trajectories, FilmFrames]:
    """(its panels' trajectories, the film) of the runs' rows (``points``: each run's key frames, the base
    first), projected on one basis per block (:func:`joint_trajectories`, :func:`runs_film`)."""
    traj, _ = joint_trajectories(points, opts)
    check_film_size(len(traj.steps), opts)
    return runs_film(traj, labels, shared, [f.steps for f in points], wp, opts)


def render_runs(folders: Sequence[str | Path], out: str | Path, opts: FilmOptions = FilmOptions(),
                names: Sequence[str] | str | None = None, progress: bool = True) -> FilmResult:
    """One film of several runs (the first is the base): each block's cell holds a panel per run, side
    by side, on the block's one basis and axes (fitted on all runs together, so positions compare
    across runs); one clock by training step (the union of the runs' steps).

    Example:
        >>> render_runs(["base/", "lr10x/"], "cmp.webm", names="base,lr10x")  # doctest: +SKIP
    """
    check_runs_film(opts)
    labels = run_names(folders, names)
    inputs = tuple(p for f in folders for p in local_inputs(f))
    check_output(Path(out), opts.encode, inputs)
    with session():
        studies = open_runs(folders, opts, progress)
        points = [s.points() for s in studies]
        shared = [True, *shared_inits(studies, points)]
        panels, n, picked = write_runs_film(points, labels, shared, studies[0].weight_plan(), out, opts, progress)
    skipped = {c.path: c for s in studies for c in s.skipped}
    return FilmResult(Path(out), n, len(panels.steps), panels, tuple(skipped.values()), None, picked)


def write_runs_film(points: Sequence[Features], labels: Sequence[str], shared: Sequence[bool], wp: WeightPlan,
                    out: str | Path, opts: FilmOptions, progress: bool = False) -> tuple[Trajectories, int, str]:
    """Project the runs' rows (``points``: each run's key frames, the base first) on one basis per block
    and write their film to ``out``; ``shared``: each run shares the base's initialisation (the base:
    True). Returns the film's panels (a block's runs side by side), the frames written and the preset
    picked ("" if none)."""
    panels, frames = points_film(points, labels, shared, wp, opts)
    opts, picked = pick_preset(out, opts, frames.n_frames)
    n = write_film(panels, out, opts, progress, frames, film_segments(opts, frames.n_frames))
    return panels, n, picked


def check_runs_film(opts: StudyOptions) -> None:
    """A film or still of several runs shows weights (refused before any checkpoint is read otherwise)."""
    if opts.activations is not None:
        raise OptionsError("features=activations: a film or still of several runs shows weights for now; "
                           "`compare` gives the runs' activation CKA")


@dataclass(frozen=True)
class RunsStills:
    """Stills of several runs (:func:`stills_of_runs`) at ``steps`` (K,): the one picture (H, W, 3), the
    comparison film's own frames at those steps (K, H, W, 3), the panels' labels (L x R x K, block by
    block, run after run), the legend's phrases, the points drawn (the film's panels: (U, L x R, N, 2) on its
    clock) and ``keys`` (K,), the clock's indices shown; ``skipped``: the checkpoints left out."""

    steps: list[int]
    image: np.ndarray
    frames: np.ndarray
    labels: tuple[str, ...]
    words: tuple[str, ...]
    panels: Trajectories
    keys: list[int]
    skipped: tuple[Checkpoint, ...] = ()


def stills_of_runs(folders: Sequence[str | Path], steps: Sequence[int] | None = None,
                   opts: StillsOptions = StillsOptions(), names: Sequence[str] | str | None = None,
                   progress: bool = True) -> RunsStills:
    """Before and after of several runs (the first the base) in one picture: each block's cell holds every
    run's panels at ``steps`` (default: the first and last step of any run), run after run, on the block's
    one basis and axes fitted on all runs together (those of the comparison film, :func:`render_runs`).
    A run that saved no checkpoint at a step shows its last key frame before it (its first, before it
    starts); each panel's label names the run and the step it shows.

    Example:
        >>> stills_of_runs(["base/", "lr10x/"], names="base,lr10x").image.shape  # doctest: +SKIP
        (720, 1280, 3)
    """
    check_runs_film(opts)
    labels = run_names(folders, names)
    studies = open_runs(folders, opts, progress)
    key_indices(sorted({s for st in studies for s in st.series.steps}), list(steps) if steps is not None else None)
    points = [s.points() for s in studies]
    shared = [True, *shared_inits(studies, points)]
    traj, idx = joint_trajectories(points, opts)
    shown_steps, keys = key_indices([int(s) for s in traj.steps], list(steps) if steps is not None else None)
    R = len(labels)
    wp = studies[0].weight_plan()
    panels, film = runs_film(traj, labels, shared, [f.steps for f in points], wp, ViewOptions.of(opts))
    shown = [[int(f.steps[idx[r, k]]) for k in keys] for r, f in enumerate(points)]  # (R, K) the step each run shows
    parts = _still_parts(labels, shared, shown_steps, shown, panels)
    caption = still_caption(shown_steps)
    for runs in (labels, _letters(R)):  # the runs' names where they fit in the panels' labels, else letters
        key = [] if runs is labels else ["runs: " + ", ".join(f"{a} {n}" for a, n in zip(runs, labels))]
        legend = Legend(tuple(key + parts)) if opts.legend else None
        texts = [f"L{b} {n} · {s:,}" for b in traj.blocks for n, ss in zip(runs, shown) for s in ss]
        if legend is None or Renderer.plan(opts.style, texts, legend, group=R * len(keys), caption=caption, marks=()).labels:
            break
    image = draw_still(panels.xy, np.repeat(traj.extent(), R, axis=0), keys, texts, caption, opts, legend, group=R)
    skipped = {c.path: c for s in studies for c in s.skipped}
    return RunsStills(shown_steps, image, np.stack([film.draw(k, 0.0) for k in keys]), tuple(texts),
                      tuple(key + parts), panels, keys, tuple(skipped.values()))


def _letters(runs: int) -> tuple[str, ...]:
    """Short names of ``runs`` runs for panels too narrow for theirs: A, B, ... (R1, R2, ... past 26)."""
    return tuple(chr(65 + r) if runs <= 26 else f"R{r + 1}" for r in range(runs))


def _runs_parts(labels: Sequence[str], shared: Sequence[bool]) -> list[str]:
    """Which run is the base, which runs are compared neuron by neuron (same initialisation: the same
    tracked neurons) and which only by the clouds' distribution."""
    parts = [f"base run: {labels[0]}"]
    for n, same in zip(labels[1:], shared[1:]):
        parts.append(f"{n}: same initialisation, the same neurons as {labels[0]}" if same else
                     f"{n}: another initialisation; its neurons do not correspond to {labels[0]}'s (compare the clouds)")
    return parts


BASIS = "one basis and one set of axes per block, fitted on all runs together"


def _legend_parts(labels: Sequence[str], shared: Sequence[bool], keys: Sequence[int], traj: Trajectories, subject,
                  opts: ViewOptions) -> list[str]:
    """The film's words: the runs (:func:`_runs_parts`), the runs that saved at fewer of the clock's steps
    (``keys``: each run's key frames), what is filmed, the basis and the clock."""
    U = len(traj.steps)
    parts = _runs_parts(labels, shared)
    parts += [f"{n}: key frames at {k} of the {U} steps, held between" for n, k in zip(labels, keys) if k < U]
    parts += subject_text(subject, traj.method, traj.stats)
    parts.append(BASIS)
    parts.append("one clock by step: a run holds its last key frame until its next (timeline: a row of ticks per run, "
                 "at its key frames)")
    parts.append(time_words(traj.steps, opts)[0])
    return parts


def _still_parts(labels: Sequence[str], shared: Sequence[bool], steps: Sequence[int], shown: Sequence[Sequence[int]],
                 panels: Trajectories) -> list[str]:
    """The still's words: the runs, the steps a run shows in place of one it did not save, what is shown,
    the basis and the order of a block's panels."""
    parts = _runs_parts(labels, shared)
    parts += [f"{n} saved no step {s:,}: shows step {t:,}" for n, ts in zip(labels, shown)
              for s, t in zip(steps, ts) if s != t]
    parts += subject_text(panels.subject, panels.method, panels.stats)
    parts.append(BASIS)
    parts.append("a block's cell: each run's steps, run after run")
    return parts


# ------------------------------------------------------------------------------------------ settling side by side


def settling(folders: Sequence[str | Path], opts: StudyOptions = StudyOptions(), names: Sequence[str] | str | None = None,
             progress: bool = True) -> dict[str, Stability]:
    """Each run's :class:`layerfilm.stability.Stability` (its own Study, cache and skips), by run name:
    which blocks settle in which run, side by side (``layerfilm stability A B ...``)."""
    labels = run_names(folders, names)
    return {n: Study.open(f, opts, progress).stability() for n, f in zip(labels, folders)}


def settling_rows(runs: dict[str, Stability]) -> tuple[list[str], list[list[str]]]:
    """Header and rows (a row per block) of each run's settling side by side: the step it settles at
    (else its status: moving, barely moved) and its distance to the final checkpoint at the last-but-one
    key frame, relative to the first."""
    first = next(iter(runs.values()))
    head = ["block", *(f"{n}: settles at" for n in runs), *(f"{n}: distance near end" for n in runs)]
    rows = []
    for l, b in enumerate(first.blocks):
        settle = [_settles(st, l) for st in runs.values()]
        near = [_near_end(st, l) for st in runs.values()]
        rows.append([f"L{b}", *settle, *(_text(v) for v in near)])
    return head, rows


def settling_note(threshold: float) -> str:
    return (f"settled: distance to the final checkpoint stays below {threshold:g} of its value at the first key "
            "frame; distance near end: at the last-but-one key frame, relative to the first; each run against its "
            "own final checkpoint")


def settling_table(runs: dict[str, Stability]) -> str:
    """:func:`settling_rows` as aligned text, with what the columns mean."""
    return text_table(*settling_rows(runs), left=[0]) + f"\n({settling_note(next(iter(runs.values())).settle_threshold)})"


def _settles(st: Stability, l: int) -> str:
    if l >= len(st.blocks):
        return "-"
    step = st.settle_steps[l]
    return f"{step:,}" if step is not None else st.status[l].replace("moving", "never")


def _near_end(st: Stability, l: int) -> float:
    if l >= len(st.blocks):
        return math.nan
    d = st.distance_to_final[:, l]
    return float(d[max(len(d) - 2, 0)] / d[0]) if d[0] > 0 else math.nan


def settling_json(runs: dict[str, Stability]) -> str:
    """{"runs": [NAME, ...], "stability": {NAME: [each block's object, as `stability --json` gives it]}}."""
    return json.dumps({"runs": list(runs), "stability": {n: st.records() for n, st in runs.items()}}, indent=1)
