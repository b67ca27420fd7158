"""The whole film: scan -> extract -> project -> interpolate -> render -> encode."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from .animate import Timeline, lerp
from .encode import EncodeOptions, check_output, open_film
from .errors import OptionsError, ScanError
from .features import Features
from .features.weights import WeightSpec, extract
from .project import Trajectories, project
from .render import Renderer, Style
from .scan import Series, scan

if TYPE_CHECKING:  # the activations module imports torch; only activation films need it
    from .features.activations import ActivationSpec


@dataclass(frozen=True)
class FilmOptions:
    """Everything ``render`` needs besides the folder and the output path."""

    weights: WeightSpec = field(default_factory=WeightSpec)
    activations: ActivationSpec | None = None  # set: film block outputs on a probe batch instead of weights
    projection: str = "pca"
    fps: float = 15.0
    seconds_per_keyframe: float = 1.0
    style: Style = field(default_factory=Style)
    encode: EncodeOptions = field(default_factory=EncodeOptions)
    every: int = 1
    steps: tuple[int | None, int | None] = (None, None)


@dataclass(frozen=True)
class FilmResult:
    out: Path
    frames: int
    keyframes: int
    trajectories: Trajectories


def check_export_path(path: str | Path) -> Path:
    path = Path(path)
    if path.suffix != ".npz":
        raise OptionsError(f"--export-points {path}: must end in .npz")
    if not path.parent.is_dir():
        raise OptionsError(f"--export-points {path}: folder {path.parent} does not exist")
    return path


def export_points(traj: Trajectories, path: str | Path) -> Path:
    """Write key-frame coordinates: steps (T), blocks (L), point_ids (L, N), xy (T, L, N, 2) float32."""
    path = check_export_path(path)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}.npz")
    try:
        np.savez(tmp, steps=traj.steps, blocks=traj.blocks, point_ids=traj.point_ids,
                 xy=traj.xy.astype(np.float32), **{k: v for k, v in traj.stats.items()})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_features(series: Series, opts: FilmOptions, workdir: Path, progress: bool = True) -> Features:
    """Weight rows (default) or, with ``opts.activations``, block outputs on the probe batch."""
    if opts.activations is not None:
        from .features.activations import extract as extract_activations

        return extract_activations(series, opts.activations, workdir, progress)
    return extract(series, opts.weights, workdir, progress)


def load_trajectories(series: Series, opts: FilmOptions, workdir: Path, progress: bool = True) -> Trajectories:
    features = load_features(series, opts, workdir, progress)
    traj = project(features, opts.projection, progress=progress)
    return replace(traj, stats={**traj.stats, **features.stats}) if features.stats else traj


def caption(steps: np.ndarray, k: int, a: float) -> str:
    step = steps[k] if a == 0 else steps[k] + a * (steps[k + 1] - steps[k])
    return f"step {int(round(step)):,}   key {k + 1}/{len(steps)}"


def write_film(traj: Trajectories, out: str | Path, opts: FilmOptions, progress: bool = True) -> int:
    """Interpolate, render and encode the film of ``traj``; returns the number of frames written."""
    tl = Timeline(len(traj.steps), opts.fps, opts.seconds_per_keyframe)
    labels = [f"L{b}" for b in traj.blocks]
    renderer = Renderer(opts.style, labels, traj.extent())
    renderer.vmax = renderer.auto_vmax(traj.xy)
    size = (opts.style.width, opts.style.height)

    def samples() -> list[np.ndarray]:
        picks = sorted({0, len(traj.steps) // 2, len(traj.steps) - 1})
        return [renderer.frame(traj.xy[k], caption(traj.steps, k, 0.0)) for k in picks]

    with open_film(out, size, opts.encode, samples) as writer:
        for f in tqdm(range(tl.n_frames), desc="rendering", unit="frame", disable=not progress):
            k, a = tl.locate(f)
            writer.write(renderer.frame(lerp(traj.xy, k, a), caption(traj.steps, k, a)))
    return tl.n_frames


def render(
    folder: str | Path, out: str | Path, opts: FilmOptions = FilmOptions(),
    export: str | Path | None = None, progress: bool = True,
) -> FilmResult:
    """Render the film of the checkpoints in ``folder`` to ``out``.

    Example:
        >>> render("ckpts/", "film.webm")  # doctest: +SKIP
    """
    check_output(Path(out))  # bad output paths fail before any work
    if export is not None:
        check_export_path(export)
    series = scan(folder, opts.every, opts.steps)
    if len(series) < 2:
        raise ScanError(f"{folder}: found {len(series)} checkpoint; a film needs at least two key frames")
    with tempfile.TemporaryDirectory(prefix="layerfilm-") as work:
        traj = load_trajectories(series, opts, Path(work), progress)
    n = write_film(traj, out, opts, progress)
    if export is not None:
        export_points(traj, export)
    return FilmResult(Path(out), n, len(series), traj)
