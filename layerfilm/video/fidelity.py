"""How far a lossy film (``quality="share"``) is from the lossless frames: measured by decoding it with
ffmpeg and comparing frames with the ones drawn, as PSNR and mean absolute difference per frame.

Twice per film: before encoding, on the film's first, middle and last key frames encoded alone with the
same settings (the legend, drawn into every frame, states that figure), and after, on frames of the
written film itself (the output line states it)."""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from layerfilm.errors import EncodeError
from layerfilm.video.encode import EncodeOptions, encoder, encoder_command, ffmpeg_exe

MEASURED_FRAMES = 8  # frames of the written film decoded and compared


@dataclass(frozen=True)
class Fidelity:
    """Per compared frame: PSNR in dB (inf where equal) and mean |difference| (of 255) per channel value."""

    frames: tuple[int, ...]
    psnr: tuple[float, ...]
    mad: tuple[float, ...]

    def text(self) -> str:
        lo, mean = min(self.psnr), float(np.mean(self.psnr))
        return (f"PSNR {mean:.1f} dB against the lossless frames (lowest {lo:.1f}), mean |difference| "
                f"{np.mean(self.mad):.2f} of 255, over {len(self.frames)} decoded frames")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def decode(path: Path, size: tuple[int, int], wanted: set[int]) -> dict[int, np.ndarray]:
    """The frames ``wanted`` (by index) of the film at ``path``, decoded to RGB by ffmpeg."""
    w, h = size
    cmd = [ffmpeg_exe(), "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    out: dict[int, np.ndarray] = {}
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) as proc:
        assert proc.stdout is not None
        i = 0
        while len(out) < len(wanted):
            buf = proc.stdout.read(w * h * 3)
            if len(buf) < w * h * 3:
                break
            if i in wanted:
                out[i] = np.frombuffer(buf, np.uint8).reshape(h, w, 3)
            i += 1
        proc.kill()
    if len(out) < len(wanted):
        raise EncodeError(f"{path}: decoded {len(out)} of the {len(wanted)} frames measured")
    return out


def compare(decoded: dict[int, np.ndarray], drawn: Callable[[int], np.ndarray]) -> Fidelity:
    idx = tuple(sorted(decoded))
    pairs = [(decoded[i], drawn(i)) for i in idx]
    return Fidelity(idx, tuple(psnr(a, b) for a, b in pairs),
                    tuple(float(np.mean(np.abs(a.astype(np.int16) - b.astype(np.int16)))) for a, b in pairs))


def measure(path: Path, n_frames: int, drawn: Callable[[int], np.ndarray], size: tuple[int, int],
            count: int = MEASURED_FRAMES) -> Fidelity:
    """The written film at ``path`` against ``drawn(f)``, the lossless frame f, on ``count`` frames evenly spread."""
    wanted = {int(round(x)) for x in np.linspace(0, n_frames - 1, min(count, n_frames))}
    return compare(decode(path, size, wanted), drawn)


def estimate(samples: list[np.ndarray], kind: str, opts: EncodeOptions, fps: float) -> Fidelity:
    """``samples`` encoded alone with the film's settings (each its own key frame, a little better than
    inside the film), decoded and compared: the figure the legend states before the film is encoded."""
    h, w = samples[0].shape[:2]
    with tempfile.TemporaryDirectory(prefix="layerfilm-share-") as tmp:
        target = Path(tmp) / f"samples.{kind}"
        with encoder(encoder_command(kind, (w, h), opts, fps, target), (w, h)) as writer:
            for s in samples:
                writer.write(s)
        return compare(decode(target, (w, h), set(range(len(samples)))), lambda i: samples[i])


def share_legend(est: Fidelity, kind: str) -> str:
    """The legend's words for a shareable film."""
    codec = "VP9 profile 0" if kind == "webm" else "H.264"
    return (f"shareable film ({codec}, yuv420p, lossy): PSNR about {min(est.psnr):.0f} dB against the lossless "
            f"frames (measured on key frames)")
