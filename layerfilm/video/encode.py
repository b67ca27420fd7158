"""Encoding frames by streaming raw RGB into the ffmpeg binary that imageio-ffmpeg ships.

The output format follows the file's extension (the ``ENCODERS`` registry):
  .webm  VP9 lossless, pixel format gbrp: decoding gives back the exact RGB frames
        (``quality="share"``: VP9 profile 0, yuv420p, constant quality: small, plays in every browser)
  .gif   palette (256 colours, from sample frames), lossy in colour only
  .mp4   H.264 yuv420p (lossy, plays everywhere)
  no extension (or a trailing /)  a folder of PNG frames (lossless)
Frames are never all held in memory; the output appears only when complete (temporary name, then
rename), and a failure or interrupt removes the partial file.

A film may also be encoded as contiguous segments by several encoders at once (layerfilm.video.segments)
and the segment files joined with :func:`join`: the packets are copied, not re-encoded (WebM by
layerfilm.video.webm, MP4 and GIF by ffmpeg's concat demuxer), so a joined lossless film decodes to the
same frames as one encoded in a single stream.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from layerfilm.errors import EncodeError, OptionsError
from layerfilm.io.outputs import atomic_output, check_output_path, scratch_folder
from layerfilm.registry import Registry
from layerfilm.text import show
from layerfilm.video.webm import join_webm

ENCODERS: Registry[Callable[..., list[str]]] = Registry("output format")


@dataclass(frozen=True)
class EncodeOptions:
    """crf: quality for lossy .mp4 (lower is better, 0-51); threads: encoder threads (0 = ffmpeg decides);
    preset: encoder speed against file size, "" for the format's default: .webm ``good`` (default) or
    ``realtime`` (still lossless; less encoder CPU for larger files: benchmarks/RESULTS.md),
    .mp4 an x264 preset (``ultrafast`` ... ``veryslow``, default ``medium``);
    segment_seconds: the shortest film segment encoded on its own when several encoders run at once
    (layerfilm.video.segments): every segment starts with a key frame, which costs bytes, so a short film
    stays one stream; quality: lossless (.webm's default) or share (a small lossy .webm or .mp4 in
    yuv420p that every player plays; layerfilm.video.fidelity measures how far it is from lossless)."""

    crf: int = 18
    threads: int = 0
    preset: str = ""
    segment_seconds: float = 1.0
    quality: str = "lossless"

    def __post_init__(self) -> None:
        if not 0 <= self.crf <= 51:
            raise OptionsError(f"crf={self.crf}: must be 0..51")
        if self.threads < 0:
            raise OptionsError(f"encoder_threads={self.threads}: must be 0 (ffmpeg decides) or more")
        if not self.segment_seconds > 0:  # nan too
            raise OptionsError(f"segment_seconds {self.segment_seconds}: must be above 0")
        if self.quality not in QUALITIES:
            raise OptionsError(f"quality={self.quality!r}: choose one of {', '.join(QUALITIES)}")


QUALITIES = ("lossless", "share")
SHARE_VP9_CRF = 30  # VP9 constant quality of a shared .webm (0-63, lower is better)


def ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def output_kind(out: Path) -> str:
    """The encoder name for an output path, from its name alone: its extension, or 'png' for a name
    without one (or ending in a slash), a folder of PNG frames."""
    text = str(out)
    if text.endswith(("/", os.sep)) or out.suffix == "":
        return "png"
    kind = out.suffix.lower().lstrip(".")
    if kind not in ENCODERS or kind == "png":
        raise OptionsError(f"{show(out)}: unknown output extension {show(out.suffix)!r}; "
                           "use .webm (lossless), .gif, .mp4 or a folder for PNG frames")
    return kind


VP9_DEADLINES = ("good", "realtime")
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")


# The default .webm preset (the CLI's, when --preset is left out): ``good`` makes the smallest lossless
# files but costs ~5x the encoder CPU of ``realtime``; on 2 cores the example film (241 frames at
# 1280x720) took 56-74 s with good against 10 s with realtime. So good only while its estimate is short.
GOOD_CORE_SECONDS_PER_MPIXEL = 0.6  # encoder CPU of ``good`` per megapixel of frame, from the figures above
GOOD_BUDGET_S = 20.0  # longest estimated good encode before realtime is picked instead


def webm_preset(frames: int, size: tuple[int, int], cores: int) -> str:
    """``good`` when encoding ``frames`` frames of ``size`` (width, height) with it on ``cores`` cores is
    estimated to take at most GOOD_BUDGET_S seconds, else ``realtime`` (still lossless, ~20% larger)."""
    w, h = size
    seconds = frames * w * h / 1e6 * GOOD_CORE_SECONDS_PER_MPIXEL / max(1, cores)
    return "good" if seconds <= GOOD_BUDGET_S else "realtime"


def _preset(opts: EncodeOptions, kind: str, choices: tuple[str, ...], default: str) -> str:
    if opts.preset and opts.preset not in choices:
        raise OptionsError(f"preset={opts.preset!r} for .{kind}: choose one of {', '.join(choices)}")
    return opts.preset or default


def check_output(out: Path, opts: EncodeOptions | None = None, inputs: tuple[Path, ...] = ()) -> str:
    """Validate an output path before any work: its kind, that its folder exists, that it replaces
    nothing but a film of the same kind (see layerfilm.io.outputs) and is none of ``inputs``, and the
    encoder options for that kind (``opts``, e.g. a --preset the format lacks)."""
    kind = output_kind(out)
    check_output_path(out, (f".{kind}",), inputs, folder=kind == "png")
    if opts is not None and opts.quality == "share" and kind not in ("webm", "mp4"):
        raise OptionsError(f"quality=share: writes .webm or .mp4, not {'PNG frames' if kind == 'png' else '.' + kind}")
    if opts is not None:
        ENCODERS.get(kind)(opts, palette=Path("palette.png"))
    return kind


@ENCODERS.register("webm")
def _webm(opts: EncodeOptions, **_) -> list[str]:
    if opts.quality == "share":  # profile 0 (8-bit 4:2:0): hardware decoders and every browser play it
        return ["-c:v", "libvpx-vp9", "-pix_fmt", "yuv420p", "-crf", str(SHARE_VP9_CRF), "-b:v", "0", "-row-mt", "1",
                "-deadline", _preset(opts, "webm", VP9_DEADLINES, "good"), "-cpu-used", "8",
                "-threads", str(opts.threads), "-f", "webm"]
    return ["-c:v", "libvpx-vp9", "-lossless", "1", "-pix_fmt", "gbrp", "-row-mt", "1",
            "-deadline", _preset(opts, "webm", VP9_DEADLINES, "good"), "-cpu-used", "8",
            "-threads", str(opts.threads), "-f", "webm"]


@ENCODERS.register("mp4")
def _mp4(opts: EncodeOptions, **_) -> list[str]:
    return ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", str(opts.crf),
            "-preset", _preset(opts, "mp4", X264_PRESETS, "medium"),
            "-threads", str(opts.threads), "-movflags", "+faststart", "-f", "mp4"]


@ENCODERS.register("gif")
def _gif(opts: EncodeOptions, palette: Path, **_) -> list[str]:
    return ["-i", str(palette), "-lavfi", "[0:v][1:v]paletteuse=dither=none", "-loop", "0", "-f", "gif"]


@ENCODERS.register("png")
def _png(opts: EncodeOptions, first: int = 0, **_) -> list[str]:
    return ["-c:v", "png", "-f", "image2", "-start_number", str(first + 1)]  # frame_000001.png is the film's first


# how the joined file is written (the packets are copied: only the container's own options)
JOINED = {"mp4": ["-movflags", "+faststart", "-f", "mp4"], "gif": ["-loop", "0", "-f", "gif"]}


class FrameWriter:
    """Feeds (H, W, 3) uint8 frames to a running ffmpeg process."""

    def __init__(self, cmd: list[str], size: tuple[int, int]) -> None:
        self.size = size
        self.count = 0
        self._log: IO[bytes] | None
        try:
            self._log = tempfile.TemporaryFile()
        except OSError:  # no room in $TMPDIR: ffmpeg's message is lost, the film is not
            self._log = None
        # its own session: a Ctrl-C in the terminal reaches layerfilm, which stops ffmpeg itself
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                      stderr=self._log or subprocess.DEVNULL, start_new_session=True)

    def write(self, frame: np.ndarray) -> None:
        w, h = self.size
        if frame.shape != (h, w, 3) or frame.dtype != np.uint8:
            raise ValueError(f"frame {frame.shape} {frame.dtype}, expected ({h}, {w}, 3) uint8")
        assert self._proc.stdin is not None  # Popen(stdin=PIPE)
        try:
            self._proc.stdin.write(np.ascontiguousarray(frame).data)
        except BrokenPipeError:
            self._fail()
        self.count += 1

    def close(self) -> None:
        assert self._proc.stdin is not None  # Popen(stdin=PIPE)
        self._proc.stdin.close()
        if self._proc.wait() != 0:
            self._fail()

    def kill(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()

    def _fail(self) -> None:
        self.kill()
        lines = []
        if self._log is not None:
            self._log.seek(0)
            lines = [ln for ln in self._log.read().decode(errors="replace").splitlines() if ln.strip()]
        raise EncodeError(f"ffmpeg failed: {lines[-1] if lines else 'no message'}")


def _raw_input(size: tuple[int, int], fps: float) -> list[str]:
    w, h = size
    return ["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", f"{fps}", "-i", "-"]


def encoder_command(kind: str, size: tuple[int, int], opts: EncodeOptions, fps: float, target: Path,
                    palette: Path | None = None, first: int = 0) -> list[str]:
    """The ffmpeg command that encodes raw frames from its stdin into ``target`` (a folder for PNG
    frames, numbered from ``first`` + 1 so that segments written by several encoders fit together)."""
    extras: dict = {"palette": palette} if palette is not None else {}
    dest = target / "frame_%06d.png" if kind == "png" else target
    return [ffmpeg_exe(), "-v", "error", "-y", *_raw_input(size, fps), *ENCODERS.get(kind)(opts, first=first, **extras),
            str(dest)]


@contextmanager
def encoder(cmd: list[str], size: tuple[int, int]) -> Iterator[FrameWriter]:
    """A running ffmpeg fed through the yielded writer; waited for on a clean exit, killed otherwise."""
    writer = FrameWriter(cmd, size)
    try:
        yield writer
        writer.close()
    finally:
        writer.kill()


def make_palette(samples: list[np.ndarray], dest: Path) -> Path:
    """A 256-colour palette PNG computed by ffmpeg's palettegen from a few sample frames."""
    h, w, _ = samples[0].shape
    cmd = [ffmpeg_exe(), "-v", "error", "-y", *_raw_input((w, h), 1), "-vf", "palettegen=stats_mode=full", str(dest)]
    with encoder(cmd, (w, h)) as writer:
        for s in samples:
            writer.write(s)
    return dest


def join(parts: list[Path], frames: list[int], fps: float, kind: str, dest: Path) -> None:
    """Concatenate segment files in order into ``dest`` without re-encoding. WebM parts are joined
    by layerfilm.video.webm (their clusters copied, timestamps rewritten: ffmpeg's concat demuxer decodes
    the first frame of every part, ~15x the time). MP4 and GIF go through ffmpeg's concat demuxer
    (``-c copy``): one command line made every segment, so they share every codec parameter, as the
    demuxer requires. Each segment's duration is given as its frame count over ``fps``, so its
    timestamps continue exactly where the previous segment's stopped, whatever the container rounds
    a file's own duration to. The list names the parts relative to its own folder (theirs)."""
    if kind == "webm":
        join_webm(parts, frames, fps, dest)
        return
    listing = parts[0].parent / "parts.txt"
    listing.write_text("".join(f"file '{p.name}'\nduration {n / fps:.6f}\n" for p, n in zip(parts, frames)))
    cmd = [ffmpeg_exe(), "-v", "error", "-y", "-f", "concat", "-safe", "0", "-i", str(listing), "-c", "copy",
           *JOINED[kind], str(dest)]
    with encoder(cmd, (0, 0)):  # no frames to feed: ffmpeg reads the parts itself
        pass


@contextmanager
def open_film(
    out: str | Path, size: tuple[int, int], opts: EncodeOptions = EncodeOptions(), fps: float = 15.0,
    samples: Callable[[], list[np.ndarray]] | None = None,
) -> Iterator[FrameWriter]:
    """Context manager yielding a writer; on clean exit the film is renamed into place
    (layerfilm.io.outputs.atomic_output: nothing half-written is ever left, nothing of the user's replaced).

    Args:
        out: the output path; its extension picks the format (see module doc).
        size: (width, height).
        fps: frames per second.
        samples: for GIF, a function returning a few representative frames for the palette.
    """
    out = Path(out)
    kind = check_output(out)
    with atomic_output(out, folder=kind == "png") as tmp, ExitStack() as stack:
        palette = None
        if kind == "gif":
            palette = make_palette((samples or (lambda: []))() or [], stack.enter_context(scratch_folder(out)) / "palette.png")
        with encoder(encoder_command(kind, size, opts, fps, tmp, palette), size) as writer:
            yield writer
