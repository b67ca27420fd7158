"""A film drawn and encoded as contiguous segments, one worker task each, joined losslessly in order.

One VP9 stream does not go faster with more cores (row-mt stops at the tile columns) and drawing is
one thread, so a long film is cut into ``jobs`` segments of at least ``EncodeOptions.segment_seconds``,
and a film long enough into up to SEGMENTS_PER_JOB x ``jobs`` of at least BALANCE_SECONDS, which the
workers take as they come free (frames are not equally costly: a film's dense early frames take the
encoder longer than its settled late ones, and the last segment to finish sets the wall time).
Each task draws its frames (they depend only on the small
key-frame points, the renderer's fixed axes and colour scale, and the overlay's arrays: a
:class:`Frames`) and encodes them into a file of its own; the files are then joined without
re-encoding (layerfilm.video.encode.join): WebM clusters copied by layerfilm.video.webm (a 60-part 720p join:
~0.3 s, against 5.4 s for ffmpeg's concat demuxer, which decodes every part's first frame), MP4 and
GIF by ffmpeg's concat demuxer.

What the joined film holds:
  .webm  exactly the frames of a one-segment film (lossless; each segment starts with a key frame,
         which costs some bytes, not pixels)
  .gif   exactly the one-segment GIF's frames: one palette, computed once from the sample frames,
         is used by every segment
  .mp4   the same number of frames, close but not bitwise equal: each segment starts a new group of
         pictures, so the lossy H.264 encoder predicts the frames near a cut from other references
  PNG folder  every worker writes its frames straight into the output folder, numbered globally
Everything is written under a temporary beside the output (layerfilm.io.outputs): a failed segment
cancels the others, and nothing is left behind however the run ends.

A live film (layerfilm.live.film) keeps its segments between updates in a :class:`SegmentStore`: a segment
whose frames' digest (``fingerprint``) is unchanged is joined again as it is, so an update under a live
layout (layerfilm.draw.film_layout) encodes only the new key frames' segments. WebM and MP4 segments are joined
as above, a PNG film's frames are hard links to the stored ones; a GIF needs one palette for the
whole film, so a live GIF is re-encoded whole at every update (layerfilm.live.film does that).
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Callable
from contextlib import ExitStack, closing
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from layerfilm.errors import OutputError
from layerfilm.io.outputs import atomic_output, discard, scratch_folder, temporary
from layerfilm.parallel.engines import Engine, cores
from layerfilm.parallel.signals import deferred_signals
from layerfilm.parallel.threads import prefetch
from layerfilm.text import show
from layerfilm.video.encode import EncodeOptions, check_output, encoder, encoder_command, join, make_palette


class Frames(Protocol):
    """What a film shows, frame by frame; small and picklable, so that workers draw its segments."""

    @property
    def n_frames(self) -> int: ...

    def frame(self, f: int) -> np.ndarray:
        """Frame ``f`` as (H, W, 3) uint8."""
        ...

    def keys(self, start: int, stop: int) -> Frames:
        """The same film holding only what frames ``start`` .. ``stop - 1`` need (to send to a worker)."""
        ...

    def samples(self) -> list[np.ndarray]:
        """A few representative frames (for a GIF's palette)."""
        ...


# A long film's segments: up to this many per job, each at least this long. Measured on the reference
# film (2,671 frames, benchmarks/RESULTS.md), the frames' encoded sizes per sixteenth of the film vary
# from 0.6x to 1.4x their mean: 16 segments on 16 workers finish at ~1.38x the ideal time, 48 taken as
# workers come free at ~1.04x. Every segment costs a key frame and an encoder's start (~0.3 s).
SEGMENTS_PER_JOB = 3
BALANCE_SECONDS = 4.0


def spans(n_frames: int, jobs: int, min_frames: int, balance_frames: int = 0) -> list[tuple[int, int]]:
    """Contiguous [start, stop) frame ranges, as equal as can be: ``jobs`` of them, each at least
    ``min_frames`` long (one range if the film is shorter than two), or more, up to SEGMENTS_PER_JOB x
    ``jobs`` of at least ``balance_frames`` (if given), where the film is long enough."""
    parts = min(jobs, n_frames // max(1, min_frames))
    if jobs > 1 and balance_frames > 0:
        parts = max(parts, min(jobs * SEGMENTS_PER_JOB, n_frames // max(balance_frames, min_frames)))
    parts = max(1, parts)
    edges = [i * n_frames // parts for i in range(parts + 1)]
    return list(zip(edges, edges[1:]))


def sharing_cores(opts: EncodeOptions, encoders: int) -> EncodeOptions:
    """``opts`` for one of ``encoders`` encoders running at once: with ``threads`` 0 (ffmpeg decides),
    the cores shared among them, rounded up, so that fewer segments than cores leave none idle."""
    if encoders > 1 and opts.threads == 0:
        return replace(opts, threads=-(-cores() // encoders))
    return opts


def plan(n_frames: int, jobs: int, fps: float, opts: EncodeOptions) -> list[tuple[int, int]]:
    """The segments of a film of ``n_frames`` at ``fps`` encoded ``jobs`` at a time."""
    least = math.ceil(opts.segment_seconds * fps)
    return spans(n_frames, jobs, least, math.ceil(BALANCE_SECONDS * fps))


def encode_segment(frames: Frames, start: int, stop: int, kind: str, size: tuple[int, int], opts: EncodeOptions,
                   fps: float, target: Path, palette: Path | None, *, progress: Callable[..., Any]) -> int:
    """Draw frames ``start`` .. ``stop - 1`` and encode them into ``target``; the task of one worker,
    and the whole film when it is one segment. Frames are drawn in a thread ahead of the encoder."""
    with encoder(encoder_command(kind, size, opts, fps, target, palette, first=start), size) as writer, \
            closing(prefetch(frames.frame(f) for f in range(start, stop))) as drawn:
        for img in drawn:
            writer.write(img)
            progress(1)
    return stop - start


def encode_film(frames: Frames, out: str | Path, size: tuple[int, int], opts: EncodeOptions = EncodeOptions(),
                fps: float = 15.0, engine: Engine | None = None, progress: Callable[..., Any] | None = None,
                parts: list[tuple[int, int]] | None = None) -> int:
    """Write the film ``frames`` to ``out`` (its extension picks the format, see layerfilm.video.encode).

    Args:
        frames: what the film shows (e.g. layerfilm.film.FilmFrames).
        size: (width, height).
        engine: where the segments run, ``engine.jobs`` at a time; None: one stream in this process.
        progress: called with a count of frames as they are encoded, in any worker.
        parts: the segments, when the caller planned them (``plan`` with ``engine.jobs``, or one
            segment without an engine); None: planned here.
    Returns:
        the number of segments (1: one stream, encoded in this process).
    """
    out = Path(out)
    kind = check_output(out)
    jobs = engine.jobs if engine is not None else 1
    if parts is None:
        parts = plan(frames.n_frames, jobs, fps, opts)
    opts = sharing_cores(opts, min(len(parts), jobs))  # the encoders running at once
    joined = len(parts) > 1 and kind != "png"
    with atomic_output(out, folder=kind == "png") as tmp, ExitStack() as stack:
        scratch = stack.enter_context(scratch_folder(out)) if joined or kind == "gif" else None
        palette = make_palette(frames.samples(), scratch / "palette.png") if scratch and kind == "gif" else None
        if joined:
            assert scratch is not None
            targets = [scratch / f"part_{i:04d}.{kind}" for i in range(len(parts))]
        else:  # one file, or PNG frames numbered globally in the output's own folder
            targets = [tmp] * len(parts)
        tasks = [(frames.keys(a, b), a, b, kind, size, opts, fps, t, palette) for (a, b), t in zip(parts, targets)]
        if engine is None or len(tasks) == 1:  # one stream, in this process
            encode_segment(*tasks[0], progress=progress or (lambda n=1: None))
        else:
            engine.map(encode_segment, tasks, progress)
        if joined:
            join(targets, [b - a for a, b in parts], fps, kind, tmp)
    return len(parts)


class StoredFrames(Frames, Protocol):
    def fingerprint(self, start: int, stop: int) -> bytes:
        """A digest of what frames ``start`` .. ``stop - 1`` are drawn from (equal digests: equal frames)."""
        ...


def encode_segments(frames: Frames, parts: list[tuple[int, int]], kind: str, size: tuple[int, int], opts: EncodeOptions,
                    fps: float, targets: list[Path], *, progress: Callable[..., Any]) -> int:
    """Several segments, in order, each into its own target: one worker's share of a store's update."""
    for (a, b), target in zip(parts, targets):
        encode_segment(frames, a, b, kind, size, opts, fps, target, None, progress=progress)
    return sum(b - a for a, b in parts)


class SegmentStore:
    """The encoded segments of a film that grows (layerfilm.live.film), in a scratch folder beside ``out``
    (``.NAME.partial-PID.live``: a partial of the output's, so one left by a killed process is removed by
    the next writer of ``out``), removed by :meth:`close`. Not for .gif (one palette for the whole film)."""

    def __init__(self, out: str | Path) -> None:
        self.out = Path(out)
        self.kind = check_output(self.out)
        assert self.kind != "gif", "a GIF's palette is the whole film's"
        self.folder = temporary(self.out, suffix=".live")
        self.parts: dict[tuple[int, int, bytes], Path] = {}  # (start, stop, fingerprint) -> its file or folder
        self.seconds: dict[str, float] = {}  # the last update's: fingerprint, encode, join (benchmarks/bench_live.py)
        self._made = 0

    def close(self) -> None:
        with deferred_signals():
            discard(self.folder)
        self.parts = {}

    def update(self, frames: StoredFrames, ranges: list[tuple[int, int]], size: tuple[int, int], opts: EncodeOptions,
               fps: float, engine: Callable[[int], Engine | None] = lambda n: None) -> int:
        """Write the film ``frames``, cut at ``ranges`` (contiguous, from 0 to ``frames.n_frames``), to
        ``out`` atomically, encoding only the segments not stored yet; ``engine(n)`` gives where ``n``
        frames to encode run (None: in this process). Returns the number of frames encoded."""
        if not self.folder.is_dir():
            try:
                self.folder.mkdir()
            except OSError as e:
                raise OutputError(f"{show(self.out)}: cannot write ({e.strerror or e})") from None
        t0 = time.perf_counter()
        keys = [(a, b, frames.fingerprint(a, b)) for a, b in ranges]
        t1 = time.perf_counter()
        todo = [k for k in dict.fromkeys(keys) if k not in self.parts]
        made = {}
        for k in todo:
            self._made += 1
            made[k] = self.folder / f"seg_{self._made:06d}{'' if self.kind == 'png' else '.' + self.kind}"
            if self.kind == "png":  # a folder of the segment's frames, numbered globally
                made[k].mkdir()
        count = sum(b - a for a, b, _ in todo)
        runner = engine(count) if todo else None
        n = 1 if runner is None else max(1, min(runner.jobs, len(todo)))  # contiguous: a worker gets few key frames
        groups = [todo[i * len(todo) // n : (i + 1) * len(todo) // n] for i in range(n)]
        groups = [g for g in groups if g]
        opts = sharing_cores(opts, len(groups))
        tasks = [(frames.keys(min(a for a, _, _ in g), max(b for _, b, _ in g)), [(a, b) for a, b, _ in g], self.kind,
                  size, opts, fps, [made[k] for k in g]) for g in groups]
        try:
            if runner is None or len(tasks) <= 1:
                for t in tasks:
                    encode_segments(*t, progress=lambda _=1: None)
            else:
                runner.map(encode_segments, tasks)
            t2 = time.perf_counter()
            self._join([{**self.parts, **made}[k] for k in keys], [b - a for a, b, _ in keys], fps)
            self.seconds = {"fingerprint": t1 - t0, "encode": t2 - t1, "join": time.perf_counter() - t2}
        except BaseException:
            for path in made.values():  # the film and the stored segments stay those of the last update
                discard(path)
            raise
        self.parts.update(made)
        held = set(keys)
        for k in [k for k in self.parts if k not in held]:  # segments the film no longer holds
            discard(self.parts.pop(k))
        return count

    def _join(self, parts: list[Path], counts: list[int], fps: float) -> None:
        with atomic_output(self.out, folder=self.kind == "png") as tmp:
            if self.kind != "png":
                join(parts, counts, fps, self.kind, tmp)
                return
            for part in parts:  # frames numbered globally by their encoders: linked, not copied
                for name in os.listdir(part):
                    try:
                        os.link(part / name, tmp / name)
                    except OSError:  # a file system without hard links
                        shutil.copyfile(part / name, tmp / name)
