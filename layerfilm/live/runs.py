"""Watch several growing runs (``layerfilm watch BASE OTHER ...``): the film of several runs
(layerfilm.compare) and each run's stability, kept up to date as checkpoints appear.

Each run is followed by its own :class:`layerfilm.live.film.LiveFilm` (its readiness rule, skips and
measures, each checkpoint's tracked rows read once and kept on scratch disk) that writes nothing
itself. After an update that added a key frame to any run, the film of all runs is projected again
from the kept rows (one basis per block, fitted on all runs' key frames so far: ``--refit always``,
never from the checkpoints) and rewritten whole (``--film-layout fit``), and the JSON, when asked,
holds every run's stability as ``watch --json`` gives it for one run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from layerfilm.compare import run_names, write_runs_film
from layerfilm.errors import OptionsError
from layerfilm.film_options import FilmOptions
from layerfilm.io.outputs import atomic_output
from layerfilm.io.scan import Checkpoint
from layerfilm.live.film import LiveFilm, LiveOptions, check_outputs, report_line, stability_json
from layerfilm.points import Features
from layerfilm.projection import Trajectories
from layerfilm.text import printable, show
from layerfilm.video.encode import output_kind


class _Follower(LiveFilm):
    """One run's LiveFilm that writes no output (the film of all runs is written by :class:`RunsWatch`)
    and measures every key frame's distance exactly (for the JSON)."""

    def write(self, traj: Trajectories) -> int:
        return 0

    def _exact_distances(self) -> bool:
        return True


class RunsWatch:
    """Several runs followed together (see the module's doc); the first is the base.

    Example:
        >>> with RunsWatch(["base/", "lr10x/"], "cmp.webm", names="base,lr10x") as w:  # doctest: +SKIP
        ...     w.update()  # reads the checkpoints completed since the last call, in every run
    """

    def __init__(self, folders: Sequence[str | Path], out: str | Path, opts: FilmOptions = FilmOptions(),
                 live: LiveOptions = LiveOptions(), names: Sequence[str] | str | None = None,
                 progress: bool = False) -> None:
        if len(folders) < 2:
            raise OptionsError(f"{len(folders)} run(s): watching several runs needs a base and at least one other")
        for name in ("stills", "export"):
            if getattr(live, name) is not None:
                raise OptionsError(f"{name}={getattr(live, name)}: for watching one run only")
        if opts.projection != "pca" or live.refit not in ("doubling", "always"):
            raise OptionsError(f"refit={live.refit}: several runs are projected again on all key frames at each "
                               "update (refit=always, projection=pca)")
        self.labels = run_names(folders, names)
        self.out = Path(out)
        self.live = live
        self.opts = replace(opts, film_layout="fit", fit="all")  # the film is rewritten whole at each update
        if output_kind(self.out) == "webm" and not opts.encode.preset:  # an update's wait matters more (as watch)
            self.opts = replace(self.opts, encode=replace(opts.encode, preset="realtime"))
        for f in folders:
            check_outputs(f, self.out, self.opts, live)
        follow = replace(live, refit="always", json=None)
        self.runs = [_Follower(f, self.out, self.opts, follow) for f in folders]
        self.progress = progress
        self.keyframes = 0  # the film's key frames (its clock's steps) at the last write

    def __enter__(self) -> RunsWatch:
        return self

    def __exit__(self, *exc) -> None:
        for r in self.runs:
            r.close()

    @property
    def skipped(self) -> list[Checkpoint]:
        return [c for r in self.runs for c in r.skipped]

    def _points(self) -> list[Features]:
        points = [r._features(r.store) for r in self.runs if r.store is not None]
        wp = self.runs[0].wp
        for name, r in zip(self.labels[1:], self.runs[1:]):
            if r.wp is not None and wp is not None and (r.wp.tensor_names != wp.tensor_names or
                                                        not np.array_equal(r.wp.point_ids, wp.point_ids)):
                raise OptionsError(f"{name}: its blocks or tracked neurons are not the base run's (other shapes)")
        return points

    def shared(self) -> list[bool]:
        """Each run shares the base's initialisation: equal first key frames (step and tracked rows)."""
        first = [(r.steps[0], r.store.rows(0)) for r in self.runs if r.store is not None and r.steps]
        return [True] + [b[0] == first[0][0] and np.array_equal(b[1], first[0][1]) for b in first[1:]]

    def update(self) -> list[str]:
        """Add every run's new complete checkpoints, then rewrite the film (once every run has a key
        frame and the runs together have two steps) and the JSON; the lines to print, a run's name first."""
        lines = []
        added = False
        for name, r in zip(self.labels, self.runs):
            up = r.update()
            added |= bool(up.steps)
            lines += [f"{name}: {line}" for line in report_line(up, len(r.wp.tensor_names) if r.wp is not None else 0)]
            lines += [f"{name}: skipped {show(c.path)}: {printable(c.problem or '')}" for c in up.skipped]
        ready = all(r.steps for r in self.runs) and len({s for r in self.runs for s in r.steps}) >= 2
        if added and ready:
            points = self._points()
            assert self.runs[0].wp is not None  # every run has a key frame
            panels, _, _ = write_runs_film(points, self.labels, self.shared(), self.runs[0].wp, self.out, self.opts,
                                           self.progress)
            self.keyframes = len(panels.steps)
            if self.live.json is not None:
                with atomic_output(self.live.json, suffix=".json") as tmp:
                    tmp.write_text(self.to_json())
        return lines

    def to_json(self) -> str:
        """{"runs": [NAME, ...], "shared_init": {NAME: bool}, "stability": {NAME: [each block, as `watch --json`
        gives it for one run; [] before the run's second key frame]}}."""
        stab = {n: json.loads(stability_json(r.traj, self.opts.settle_threshold, r.newest_explained()))
                if r.traj is not None else [] for n, r in zip(self.labels, self.runs)}
        return json.dumps({"runs": list(self.labels), "shared_init": dict(zip(self.labels[1:], self.shared()[1:])),
                           "stability": stab}) + "\n"


def watch_runs(folders: Sequence[str | Path], out: str | Path, opts: FilmOptions = FilmOptions(),
               live: LiveOptions = LiveOptions(), names: Sequence[str] | str | None = None,
               stop: Callable[[], bool] = lambda: False, progress: bool = False,
               echo: Callable[[str], None] = print) -> RunsWatch:
    """Follow ``folders`` (the first the base) until ``stop()`` is True, as :func:`layerfilm.live.film.watch`
    follows one. Returns the RunsWatch."""
    with RunsWatch(folders, out, opts, live, names, progress) as w:
        while not stop():
            for line in w.update():
                echo(line)
            deadline = time.monotonic() + live.interval
            while not stop() and time.monotonic() < deadline:
                time.sleep(min(0.05, live.interval))
        return w
