"""The whole film: scan -> read and project (layerfilm.study.Study) -> interpolate -> draw -> encode."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from layerfilm.draw.curves import Strip
from layerfilm.draw.film_layout import horizon, live_extent, live_scale, live_timeline, live_top
from layerfilm.draw.legend import Legend, scale_top, subject_text, time_text, zoom_text, zooms
from layerfilm.draw.overlay import MARKS, Overlay, bar_text, marks_text, ratio_overlay, ratio_text, updates
from layerfilm.draw.raster import Renderer, Style
from layerfilm.draw.timeline import MAX_FRAMES, Timeline, resolve_time, skips
from layerfilm.errors import OptionsError, ScanError
from layerfilm.film_options import FilmOptions, StillsOptions, ViewOptions
from layerfilm.io.logs import RunLogs
from layerfilm.io.outputs import atomic_output, check_output_path
from layerfilm.io.scan import Checkpoint
from layerfilm.io.storage import local_inputs
from layerfilm.parallel.engines import Engine, check_jobs, cores, get_engine, session
from layerfilm.points.optimizer import HEALTHY, spikes
from layerfilm.projection import Trajectories
from layerfilm.study import Study
from layerfilm.text import show
from layerfilm.video.encode import check_output, webm_preset
from layerfilm.video.fidelity import Fidelity, estimate, measure, share_legend
from layerfilm.video.segments import encode_film, plan

# what a worker started ahead imports: the block tasks', the segments' and the caption's font (matplotlib)
WORKER_MODULES = ("layerfilm.study", "layerfilm.video.segments", "layerfilm.film", "matplotlib.font_manager",
                  "matplotlib.ft2font")


@dataclass(frozen=True)
class FilmResult:
    out: Path
    frames: int
    keyframes: int
    trajectories: Trajectories
    skipped: tuple[Checkpoint, ...] = ()  # unusable checkpoints, each with its problem
    overlay: Overlay | None = None  # the per-panel bars and settled marks drawn (None: --no-overlay)
    preset: str = ""  # the .webm preset picked without --preset, and why (for the output line)
    fidelity: Fidelity | None = None  # quality=share: how far the written film is from the lossless frames


def check_export_path(path: str | Path, inputs: tuple[Path, ...] = ()) -> Path:
    path = Path(path)
    if path.suffix != ".npz":
        raise OptionsError(f"export_points={show(path)}: must end in .npz")
    return check_output_path(path, (".npz",), inputs, option="--export-points")


def export_points(traj: Trajectories, path: str | Path, inputs: tuple[Path, ...] = ()) -> Path:
    """Write key-frame coordinates: steps (T), blocks (L), point_ids (L, N), xy (T, L, N, 2) float32."""
    path = check_export_path(path, inputs)
    with atomic_output(path, suffix=".npz") as tmp:
        np.savez(tmp, **traj.to_arrays())  # type: ignore[arg-type]  # numpy types **kwds beside allow_pickle: bool
    return path


def check_film_size(keyframes: int, opts: ViewOptions) -> None:
    """Refuse, before any tensor is read, a film too long to be of use (e.g. fps=1e6)."""
    n = Timeline(keyframes, opts.fps, opts.seconds_per_keyframe).n_frames
    if n > MAX_FRAMES:
        w, h = opts.style.width, opts.style.height
        raise OptionsError(f"{keyframes} key frames at fps={opts.fps:g} and seconds_per_keyframe="
                           f"{opts.seconds_per_keyframe:g} make {n:,} frames ({n * w * h * 3 / 2**40:.1f} TiB of pixels "
                           f"at {w}x{h}); at most {MAX_FRAMES:,}: lower fps or seconds_per_keyframe, or use every=K")


def caption(steps: np.ndarray, k: int, a: float, time: str = "auto", of: bool = True) -> str:
    """The step shown at key k plus a fraction a: between key frames it runs as film time does (linear
    in the step, or in log(1 + step) with ``--time log-steps``); ``of``: "key k/T" (else "key k": a live
    layout's frames do not change with T)."""
    if a == 0:
        step = float(steps[k])
    elif time == "log-steps":
        s0 = float(steps[0])
        step = s0 + float(np.expm1((1 - a) * np.log1p(steps[k] - s0) + a * np.log1p(steps[k + 1] - s0)))
    else:
        step = steps[k] + a * (steps[k + 1] - steps[k])
    return f"step {int(round(step)):,}   key {k + 1}" + (f"/{len(steps)}" if of else "")


def widest_caption(steps: np.ndarray, time: str = "keys", of: bool = True) -> str:
    """The longest caption a film of key frames at ``steps`` shows (the header keeps room for it; digits are
    equally wide). A live film's (``of`` False) is of 8s as long as its last step and its horizon of key
    frames, so that it changes only when those grow a digit (each change redraws every frame)."""
    if of:
        return max((caption(steps, k, 0.0, time) for k in range(len(steps))), key=len)
    eights = np.array([int("8" * len(str(int(max(steps[-1], 0)))))])
    return caption(eights, 0, 0.0, time, False).replace("key 1", "key " + "8" * len(str(horizon(len(steps)))))


def zoomed(traj: Trajectories) -> bool:
    """Activation films zoom each key frame to its own spread: block outputs at random init are orders
    of magnitude smaller than after training, and one extent for the film would show them as a dot.
    Weight films keep one extent (their spread is part of what they show)."""
    return (traj.subject is not None and traj.subject.kind == "activations") or "act_norm" in traj.stats


def film_timeline(steps: np.ndarray, opts: ViewOptions) -> Timeline:
    """Where the key frames at ``steps`` fall in the film, under ``opts.film_layout`` (layerfilm.draw.film_layout)."""
    make = live_timeline if opts.film_layout == "live" else Timeline.of
    return make(steps, opts.fps, opts.seconds_per_keyframe, opts.time)


def bar_top(traj: Trajectories, opts: ViewOptions) -> float | None:
    """The overlay's full bar: the film's largest update (None), or the live layout's rounded one."""
    return live_top(updates(traj.stats["point_update"])) if opts.film_layout == "live" else None


def time_words(steps: np.ndarray, opts: ViewOptions) -> tuple[str, tuple[int, ...]]:
    """(the legend's words for the film's time, the key frames followed by skipped checkpoints)."""
    gaps = skips(steps)
    return time_text(resolve_time(opts.time, steps), opts.seconds_per_keyframe, opts.time == "auto", len(gaps)), gaps


def film_legend(traj: Trajectories, opts: ViewOptions, bar: bool, zoom: np.ndarray | None = None,
                note: str = "", still: bool = False) -> Legend:
    """The legend's words: the run's folder, what is filmed and how (``traj.subject``), the per-key-frame
    axes ``zoom`` of activation films, the bottom bar (``bar``: the overlay is drawn), the time (not in a
    ``still``: it has neither time nor a timeline), and a ``note`` (a shareable film's distance from lossless)."""
    parts = [f"run: {traj.subject.run}"] if traj.subject is not None and traj.subject.run else []
    parts += subject_text(traj.subject, traj.method, traj.stats)
    if zoom is not None:  # a live layout's words may not depend on later key frames
        parts.append(zoom_text(zoom) if opts.film_layout == "fit" and not still else "axes zoom to each key frame's spread")
    if still:
        return Legend(tuple(parts))
    ratio_bar = bar and opts.bar == "update-ratio"
    spiked = np.flatnonzero(spikes(traj.stats["update_ratio"]).any(axis=1)) if ratio_bar else np.zeros(0, int)
    if ratio_bar:
        parts.append(ratio_text())
        if len(spiked):
            parts.append("red on the timeline: a block's update ratio at 10x its running median")
    elif bar and "point_update" in traj.stats:
        parts.append(bar_text(traj.stats["point_update"], bar_top(traj, opts)))
        parts += marks_text(opts.settle_threshold) if opts.film_layout == "fit" else []
    tl = film_timeline(traj.steps, opts)
    words, gaps = time_words(traj.steps, opts)
    parts.append(words)
    parts += [note] if note else []
    return Legend(tuple(parts), tuple(tl.position(k, 0.0) for k in range(len(traj.steps))), skips=gaps,
                  marks=tuple(tl.position(int(k), 0.0) for k in spiked))


def film_axes(traj: Trajectories, opts: ViewOptions) -> tuple[np.ndarray, np.ndarray | None]:
    """(extent (L, 4), zoom (T, L, 4) or None): each panel's fixed axes, or for activation films the unit
    box and each key frame's own axes (``zoomed``)."""
    zoom = zooms(traj.xy) if zoomed(traj) else None
    if zoom is not None:
        return np.tile([-1.0, 1.0, -1.0, 1.0], (len(traj.blocks), 1)), zoom
    return (live_extent(traj.xy) if opts.film_layout == "live" else traj.extent()), None


def film_strip(traj: Trajectories, opts: ViewOptions, logs: RunLogs | None) -> Strip | None:
    """The strip of the run's loss and learning rate under the timeline, placed as the timeline places
    the key frames; None without logs, with ``opts.curves`` off, or in a live layout (its static frame
    would change with every new key frame's logs, and the live film re-encodes only what changed)."""
    if not opts.curves or opts.film_layout == "live":
        return None
    tl = film_timeline(traj.steps, opts)
    return Strip.of(logs, traj.steps, np.array([tl.position(k, 0.0) for k in range(len(traj.steps))]))


def film_renderer(traj: Trajectories, style: Style, opts: ViewOptions | None = None, bar: bool = False,
                  logs: RunLogs | None = None, note: str = "") -> Renderer:
    """The film's renderer: one panel per block, its axes (fixed, or zoomed per key frame for
    activations) and the colour scale fixed over all key frames by the rule of
    ``layerfilm.draw.legend.scale_top``; with ``opts.legend`` (default) the legend, which mentions the
    bottom bar when ``bar`` (the overlay is drawn); with ``logs`` and ``opts.curves`` the strip of curves."""
    opts = opts or ViewOptions(style=style)
    live = opts.film_layout == "live"
    extent, zoom = film_axes(traj, opts)
    legend = film_legend(traj, opts, bar, zoom, note) if opts.legend else None
    renderer = Renderer(style, [f"L{b}" for b in traj.blocks], extent, legend=legend, zoom=zoom, passed_ticks=live,
                        strip=film_strip(traj, opts, logs), caption=widest_caption(traj.steps, opts.time, not live),
                        marks=MARKS)
    maxima = renderer.key_maxima(renderer.place(traj.xy, k, 0.0) for k in range(len(traj.steps)))
    if live:
        vmax, clipped = live_scale(maxima)
        renderer.set_scale(vmax, int(clipped), None)
    else:
        renderer.set_scale(*scale_top(maxima), len(traj.steps))
    return renderer


def film_overlay(renderer: Renderer, traj: Trajectories, opts: ViewOptions) -> Overlay | None:
    """The per-panel bars and status marks of the film's own points (None: overlay=False). A live layout
    draws the bars only: a block's status is decided by the newest key frame (its distance to each
    earlier one), so a mark could change on any earlier frame when a key frame is added."""
    if not opts.overlay:
        return None
    if opts.bar == "update-ratio":
        return ratio_overlay(renderer, traj.stats["update_ratio"], HEALTHY)
    if opts.film_layout == "live":
        return Overlay(renderer, traj.stats["point_update"], None, bar_top(traj, opts))
    return Overlay.of_points(renderer, traj.stats, opts.settle_threshold)


@dataclass(frozen=True, eq=False)
class FilmFrames:
    """What the film shows at each frame: the one drawing path of the film, in this process or in the
    workers that draw its segments (layerfilm.video.segments), so it is picklable and small: the key-frame
    points (cut by ``keys`` to those a segment needs: all of them are 94 MB at the reference's size),
    the renderer with its fixed axes and colour scale, and the overlay's arrays."""

    timeline: Timeline
    xy: np.ndarray  # (K, L, N, 2): key frames first_key .. first_key + K - 1
    steps: np.ndarray  # (T,) every key frame's step, for captions
    renderer: Renderer
    overlay: Overlay | None = None  # draws over each frame (layerfilm.draw.overlay)
    first_key: int = 0
    time: str = "keys"  # --time as used (auto resolved): how the caption's step runs between key frames
    key_of: bool = True  # the caption says "key k/T" (a live layout's says "key k")

    @classmethod
    def of(cls, traj: Trajectories, opts: ViewOptions, renderer: Renderer | None = None,
           overlay: Overlay | None = None) -> FilmFrames:
        return cls(film_timeline(traj.steps, opts), traj.xy, traj.steps,
                   renderer or film_renderer(traj, opts.style, opts, bar=overlay is not None), overlay,
                   time=resolve_time(opts.time, traj.steps), key_of=opts.film_layout == "fit")

    @property
    def n_frames(self) -> int:
        return self.timeline.n_frames

    def draw(self, k: int, a: float) -> np.ndarray:
        """(H, W, 3) uint8: the film a fraction ``a`` of the way from key frame ``k`` to the next (points
        on straight lines, the step in the caption, the timeline's cursor, the overlay if any). Stills
        are ``draw(k, 0.0)``, so they equal the film's key frames."""
        img = self.renderer.frame(self.renderer.place(self.xy, k, a, self.first_key),
                                  caption(self.steps, k, a, self.time, self.key_of), self.timeline.position(k, a))
        if self.overlay is not None:
            self.overlay(img, k, a)
        return img

    def frame(self, f: int) -> np.ndarray:
        return self.draw(*self.timeline.locate(f))

    def keys(self, start: int, stop: int) -> FilmFrames:
        """The film holding only the key frames that frames ``start`` .. ``stop - 1`` lie between."""
        k0 = self.timeline.locate(start)[0]
        k1 = self.timeline.locate(stop - 1)[0] + 1
        return replace(self, xy=self.xy[k0 - self.first_key : k1 + 1 - self.first_key], first_key=k0)

    def samples(self) -> list[np.ndarray]:
        """The first, middle and last key frames (a GIF's palette is computed from them)."""
        T = len(self.steps)
        return [self.draw(k, 0.0) for k in sorted({0, T // 2, T - 1})]

    @cached_property
    def _drawing(self) -> bytes:
        """The renderer's digest of what it draws the same on every frame (computed once per film)."""
        return self.renderer.digest()

    def fingerprint(self, start: int, stop: int) -> bytes:
        """A digest of everything frames ``start`` .. ``stop - 1`` are drawn from: equal digests, equal
        frames. A live film (layerfilm.video.segments.SegmentStore) re-encodes a segment only when its digest
        changed, e.g. not the frames before a new key frame under a live layout (layerfilm.draw.film_layout)."""
        where = [self.timeline.locate(f) for f in range(start, stop)]
        k0, k1 = where[0][0], min(where[-1][0] + 1, len(self.steps) - 1)
        h = hashlib.sha256(self._drawing)
        for k, a in where:
            h.update(repr((k, a, self.timeline.position(k, a), caption(self.steps, k, a, self.time, self.key_of))).encode())
        h.update(np.ascontiguousarray(self.xy[k0 - self.first_key : k1 + 1 - self.first_key]).tobytes())
        r = self.renderer
        if r.zoom is not None:
            h.update(np.ascontiguousarray(r.zoom[k0 : k1 + 1]).tobytes())
        h.update(repr(r.passed(max(self.timeline.position(k, a) for k, a in where))).encode())
        if self.overlay is not None:
            o = self.overlay
            h.update(np.ascontiguousarray(o.level[k0 : k1 + 1]).tobytes())
            h.update(repr([o.status(k) for k in range(k0, k1 + 1)]).encode())
        return h.digest()


def pick_preset(out: str | Path, opts: FilmOptions, frames: int) -> tuple[FilmOptions, str]:
    """A .webm without a preset gets ``good`` or ``realtime`` by its frame count, frame size and the cores
    its encoders share (layerfilm.video.encode.webm_preset); returns the options and the words that say so."""
    if opts.encode.preset or check_output(Path(out)) != "webm":
        return opts, ""
    threads = min(opts.encode.threads or cores(), cores())
    preset = webm_preset(frames, (opts.style.width, opts.style.height), threads)
    other = "realtime: ~5x faster, ~20% larger" if preset == "good" else "good: ~20% smaller, ~5x slower"
    return (replace(opts, encode=replace(opts.encode, preset=preset)),
            f"VP9 preset {preset}, picked for {frames} frames on {threads} core{'s' * (threads > 1)} (preset={other})")


def with_update_ratio(run: Study) -> Trajectories:
    """The film's points with each block's update ratio at each key frame in ``stats["update_ratio"]``
    (T, L; NaN without optimizer state): one pass reads the whole blocks (whose norms the ratio needs)
    and the film's rows together, then each checkpoint's optimizer moments once."""
    measures = run.optimizer_measures()
    steps = run.block_measures().steps
    traj = run.trajectories()
    at = {int(s): i for i, s in enumerate(steps)}
    idx = np.array([at.get(int(s), -1) for s in traj.steps])
    ratio = np.where((idx >= 0)[:, None], measures.update_ratio[np.maximum(idx, 0)], np.nan)
    return replace(traj, stats={**traj.stats, "update_ratio": ratio})


def film_frames(traj: Trajectories, opts: ViewOptions, logs: RunLogs | None = None, note: str = "") -> FilmFrames:
    """The film of ``traj`` as ``opts`` draws it: its renderer (layout, legend with ``note`` last, the strip
    of ``logs``) and overlay, if any."""
    renderer = film_renderer(traj, opts.style, opts, bar=opts.overlay, logs=logs, note=note)
    return FilmFrames.of(traj, opts, renderer, film_overlay(renderer, traj, opts))


@dataclass(frozen=True)
class Segments:
    """How a film of ``n_frames`` is cut to be drawn and encoded, planned once (layerfilm.video.segments.plan):
    its ``parts``, and the engine whose workers take them (None: one stream in this process, where
    starting workers would cost more than they save)."""

    n_frames: int
    parts: list[tuple[int, int]]
    engine: Engine | None = None


def film_segments(opts: FilmOptions, n_frames: int) -> Segments:
    """The segments of a film of ``n_frames`` under ``opts`` (jobs, engine, fps, segment length)."""
    jobs = check_jobs(opts.jobs)
    parts = plan(n_frames, jobs, opts.fps, opts.encode)
    return Segments(n_frames, parts, get_engine(opts.engine, jobs, **opts.engine_options()) if len(parts) > 1 else None)


def segment_engine(opts: FilmOptions, n_frames: int) -> Engine | None:
    """Where ``n_frames`` frames are drawn and encoded (:func:`film_segments`' engine)."""
    return film_segments(opts, n_frames).engine


def write_film(traj: Trajectories, out: str | Path, opts: FilmOptions, progress: bool = True,
               frames: FilmFrames | None = None, segments: Segments | None = None) -> int:
    """Interpolate, draw and encode the film of ``traj``; returns the number of frames written.

    Args:
        frames: the film as drawn (:func:`film_frames`: with the overlay ``opts`` asks for); None: the
            points alone, without the overlay.
        segments: the film's segments, when planned already (:func:`render` plans them before reading,
            to start the workers); planned here if None or made for another number of frames.
    A long film is drawn and encoded in segments by ``opts.jobs`` workers (layerfilm.video.segments)."""
    if frames is None:
        frames = FilmFrames.of(traj, opts)
    if segments is None or segments.n_frames != frames.n_frames:  # e.g. checkpoints found unreadable
        segments = film_segments(opts, frames.n_frames)
    with tqdm(total=frames.n_frames, desc="rendering", unit="frame", disable=not progress) as bar:
        encode_film(frames, out, (opts.style.width, opts.style.height), opts.encode, opts.fps, segments.engine,
                    bar.update, segments.parts)
    return frames.n_frames


def render(
    folder: str | Path, out: str | Path, opts: FilmOptions = FilmOptions(),
    export: str | Path | None = None, progress: bool = True,
) -> FilmResult:
    """Render the film of the checkpoints in ``folder`` to ``out``.

    Example:
        >>> render("ckpts/", "film.webm")  # doctest: +SKIP
    """
    inputs = local_inputs(folder)
    check_output(Path(out), opts.encode, inputs)  # bad output paths or encoder options fail before any work
    if export is not None:
        check_export_path(export, inputs)
    with session():  # the reading's workers draw the film's segments too
        if opts.engine != "local":  # a cluster runs every pass: reach it (start a LocalCluster) while scanning
            get_engine(opts.engine, opts.jobs, **opts.engine_options()).start(WORKER_MODULES)
        run = Study.open(folder, opts, progress, scan_progress=progress)
        if len(run.series) < 2:
            raise ScanError(f"{show(run.series.root)}: found {len(run.series)} usable checkpoint; "
                            "a film needs at least two key frames")
        check_film_size(len(run.series), opts)  # before any tensor is read
        n_frames = Timeline(len(run.series), opts.fps, opts.seconds_per_keyframe).n_frames
        opts, picked = pick_preset(out, opts, n_frames)
        segments = film_segments(opts, n_frames)
        if segments.engine is not None and opts.engine == "local":  # workers will draw: start them while this
            segments.engine.start(WORKER_MODULES)  # one reads (a cluster's started above)
        traj = with_update_ratio(run) if opts.bar == "update-ratio" else run.trajectories()
        logs = run.logs() if opts.curves else None
        frames = film_frames(traj, opts, logs)
        if opts.encode.quality == "share":  # the legend states how far the film is from lossless
            kind = check_output(Path(out))
            frames = film_frames(traj, opts, logs,
                                 share_legend(estimate(frames.samples(), kind, opts.encode, opts.fps), kind))
        n = write_film(traj, out, opts, progress, frames, segments)
        size = (opts.style.width, opts.style.height)
        fidelity = measure(Path(out), n, frames.frame, size) if opts.encode.quality == "share" else None
    if export is not None:
        export_points(traj, export, inputs)
    return FilmResult(Path(out), n, len(traj.steps), traj, tuple(run.skipped), frames.overlay, picked, fidelity)


def key_indices(have: list[int], steps: list[int] | None) -> tuple[list[int], list[int]]:
    """(steps, their key-frame indices) for the wanted ``steps`` among the key frames' steps ``have``
    (default: the first and the last)."""
    steps = steps if steps is not None else sorted({have[0], have[-1]})
    missing = [s for s in steps if s not in have]
    if missing:
        shown = ", ".join(map(str, have)) if len(have) <= 12 else \
            ", ".join([*map(str, have[:6]), "...", *map(str, have[-3:])])
        raise OptionsError(f"keyframes: {', '.join(map(str, missing))} not a key frame; key frames are at steps {shown}")
    return steps, [have.index(s) for s in steps]


def still_frame(traj: Trajectories, keys: list[int], opts: StillsOptions, logs: RunLogs | None = None) -> np.ndarray:
    """(H, W, 3) uint8: one picture of key frames ``keys`` (indices into ``traj.steps``), drawn as a still,
    not as film frames side by side: each block's panels at those key frames next to each other (on the
    film's axes, labelled with the block and the step), one header and one colour bar (the film's rule
    for its top, over all key frames), the legend without the film's time, and the strip of ``logs``
    (when ``opts.curves``) marking the key frames shown. Axes and words are the film's (``ViewOptions.of``)."""
    look = ViewOptions.of(opts)
    extent, zoom = film_axes(traj, look)
    xy = traj.xy if zoom is None else unit_axes(traj.xy, zoom)
    K = len(keys)
    steps = [int(traj.steps[k]) for k in keys]
    labels = [f"L{b} · step {s:,}" if K > 1 else f"L{b}" for b in traj.blocks for s in steps]
    legend = film_legend(traj, look, False, zoom, still=True) if opts.legend else None
    s = np.asarray(traj.steps, np.float64)
    marks = tuple(float((s[k] - s[0]) / max(s[-1] - s[0], 1e-300)) for k in keys)
    strip = Strip.of(logs, traj.steps, marks=marks) if opts.curves else None
    return draw_still(xy, extent, keys, labels, still_caption(steps), opts, legend, strip)


def still_caption(steps: list[int]) -> str:
    """A still's caption: "step 0 → 2,000" (the steps shown, in order)."""
    return "step " + " → ".join(f"{s:,}" for s in steps) if len(steps) > 1 else f"step {steps[0]:,}"


def draw_still(xy: np.ndarray, extent: np.ndarray, keys: list[int], labels: list[str], caption: str,
               opts: StillsOptions, legend: Legend | None = None, strip: Strip | None = None, group: int = 1) -> np.ndarray:
    """(H, W, 3) uint8: the panels of key frames ``xy`` (T, P, N, 2) at key frames ``keys`` as one picture.

    Each panel's K key frames sit side by side (``labels``: P x K, panel by panel), on the panel's axes
    ``extent`` (P, 4); ``group`` panels share a cell of the grid (a block's runs, layerfilm.compare).
    One colour bar: its top is the film's rule over all T key frames, so a still and its film agree."""
    K, P = len(keys), xy.shape[1]
    renderer = Renderer(opts.style, labels, np.repeat(extent, K, axis=0), legend=legend, group=group * K, strip=strip,
                        caption=caption, marks=())
    maxima = renderer.key_maxima(np.repeat(xy[k], K, axis=0) for k in range(len(xy)))
    vmax, _ = scale_top(maxima)
    renderer.set_scale(vmax, int((maxima[keys] > vmax * (1 + 1e-9)).sum()), K)
    pts = xy[keys].transpose(1, 0, 2, 3).reshape(P * K, *xy.shape[2:])  # panel p * K + j: panel p at keys[j]
    return renderer.frame(pts, caption)


def unit_axes(xy: np.ndarray, zoom: np.ndarray) -> np.ndarray:
    """(T, L, N, 2) key frames ``xy`` each in its own axes ``zoom`` (T, L, 4), mapped to the unit box."""
    centre = np.stack([zoom[..., 0] + zoom[..., 1], zoom[..., 2] + zoom[..., 3]], -1)[:, :, None, :] / 2
    half = (zoom[..., 1] - zoom[..., 0])[:, :, None, None] / 2
    return ((xy - centre) / half).astype(np.float32)
