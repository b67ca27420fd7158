"""The whole film: scan -> extract -> project -> interpolate -> render -> encode."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .animate import Timeline, lerp
from .encode import EncodeOptions, check_output, open_film
from .errors import OptionsError, ScanError
from .features import Features
from .features.weights import WeightSpec, extract
from .overlay import Overlay
from .project import Trajectories, project
from .render import Renderer, Style
from .scan import Series, scan
from .stability import Stability, StabilityOptions, measure


@dataclass(frozen=True)
class FilmOptions:
    """Everything ``render`` needs besides the folder and the output path."""

    weights: WeightSpec = field(default_factory=WeightSpec)
    projection: str = "pca"
    fps: float = 15.0
    seconds_per_keyframe: float = 1.0
    style: Style = field(default_factory=Style)
    encode: EncodeOptions = field(default_factory=EncodeOptions)
    every: int = 1
    steps: tuple[int | None, int | None] = (None, None)
    overlay: bool = True  # per-panel "still moving" bar and "settled" mark (layerfilm.overlay)
    settle_threshold: float = 0.1  # see layerfilm.stability

    def stability_options(self) -> StabilityOptions:
        return StabilityOptions(self.settle_threshold, self.weights, self.projection)


@dataclass(frozen=True)
class FilmResult:
    out: Path
    frames: int
    keyframes: int
    trajectories: Trajectories
    stability: Stability | None = None


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


def load_trajectories(series: Series, opts: FilmOptions, workdir: Path, progress: bool = True) -> Trajectories:
    features: Features = extract(series, opts.weights, workdir, progress)
    return project(features, opts.projection, progress=progress)


def caption(steps: np.ndarray, k: int, a: float) -> str:
    step = steps[k] if a == 0 else steps[k] + a * (steps[k + 1] - steps[k])
    return f"step {int(round(step)):,}   key {k + 1}/{len(steps)}"


def film_renderer(traj: Trajectories, style: Style) -> Renderer:
    """The film's renderer: one panel per block, fixed axes and colour scale over all key frames."""
    renderer = Renderer(style, [f"L{b}" for b in traj.blocks], traj.extent())
    renderer.vmax = renderer.auto_vmax(traj.xy)
    return renderer


def write_film(traj: Trajectories, out: str | Path, opts: FilmOptions, progress: bool = True,
               stability: Stability | None = None) -> int:
    """Interpolate, render and encode the film of ``traj``; returns the number of frames written.
    With ``stability``, each panel also shows how much its block still moves (layerfilm.overlay)."""
    tl = Timeline(len(traj.steps), opts.fps, opts.seconds_per_keyframe)
    renderer = film_renderer(traj, opts.style)
    overlay = Overlay(renderer, stability) if stability is not None else None
    size = (opts.style.width, opts.style.height)

    def frame(k: int, a: float) -> np.ndarray:
        img = renderer.frame(lerp(traj.xy, k, a), caption(traj.steps, k, a))
        if overlay is not None:
            overlay(img, k, a)
        return img

    def samples() -> list[np.ndarray]:
        return [frame(k, 0.0) for k in sorted({0, len(traj.steps) // 2, len(traj.steps) - 1})]

    with open_film(out, size, opts.encode, samples) as writer:
        for f in tqdm(range(tl.n_frames), desc="rendering", unit="frame", disable=not progress):
            writer.write(frame(*tl.locate(f)))
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
    stab = None
    with tempfile.TemporaryDirectory(prefix="layerfilm-") as work:
        if opts.overlay:  # one pass over the checkpoints gives both the points and the measures
            stab = measure(series, opts.stability_options(), Path(work), progress)
            traj = stab.trajectories
        else:
            traj = load_trajectories(series, opts, Path(work), progress)
    n = write_film(traj, out, opts, progress, stab)
    if export is not None:
        export_points(traj, export)
    return FilmResult(Path(out), n, len(series), traj, stab)
