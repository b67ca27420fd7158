"""Joining WebM segments: layerfilm.video.webm against ffmpeg's concat demuxer (``-c copy``, what
layerfilm.video.encode.join used before), on a folder of segments written by layerfilm's encoder.

    python benchmarks/bench_join.py /tmp/jt --glob 'seg*.webm' --fps 15 --repeat 3

Each row: wall and CPU seconds of one join (the fastest of --repeat; ffmpeg's CPU is its process's,
the native join's this process's, the kernel's copy included), and the ratio to the native join.
Both outputs' packets are then hashed with their timestamps (``ffmpeg -c copy -f framemd5``): the
last line says whether they hold the same packets at the same times. The frame count of each part
(which the join needs) is read the same way, untimed.
"""

from __future__ import annotations

import argparse
import hashlib
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from layerfilm.video.encode import ffmpeg_exe  # noqa: E402
from layerfilm.video.webm import join_webm  # noqa: E402


def packets(path: Path) -> list[str]:
    """One line per packet: stream, dts, pts, duration, size, MD5 (in the file's own time base)."""
    p = subprocess.run([ffmpeg_exe(), "-v", "error", "-i", str(path), "-c", "copy", "-f", "framemd5", "-"],
                       capture_output=True, text=True, check=True)
    return [ln for ln in p.stdout.splitlines() if ln and not ln.startswith("#")]


def cpu_now() -> tuple[float, float]:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


def concat(parts: list[Path], counts: list[int], fps: float, dest: Path) -> None:
    listing = dest.with_suffix(".txt")
    listing.write_text("".join(f"file '{p.resolve()}'\nduration {n / fps:.6f}\n" for p, n in zip(parts, counts)))
    subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-f", "concat", "-safe", "0", "-i", str(listing), "-c", "copy",
                    "-f", "webm", str(dest)], check=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path, help="a folder of WebM segments of one film")
    ap.add_argument("--glob", default="*.webm", help="which files of the folder are the parts, in name order (default *.webm)")
    ap.add_argument("--fps", type=float, default=15.0, help="the frame rate they were encoded at (default 15)")
    ap.add_argument("--repeat", type=int, default=3, help="joins of each kind; the fastest counts (default 3)")
    a = ap.parse_args()
    parts = sorted(a.folder.glob(a.glob))
    if not parts:
        sys.exit(f"no {a.glob} in {a.folder}")
    counts = [len(packets(p)) for p in parts]
    size = sum(p.stat().st_size for p in parts)
    print(f"join {len(parts)} parts of {a.folder}/{a.glob} ({sum(counts)} frames, {size / 1e6:.0f} MB) at {a.fps:g} fps")
    print(f"{'join':<24}{'wall s':>8}{'CPU s':>8}{'x native':>10}")
    with tempfile.TemporaryDirectory(prefix="bench_join-") as tmp:
        rows, outs = {}, {}
        for name, run in (("layerfilm.video.webm", join_webm), ("ffmpeg concat -c copy", concat)):
            outs[name] = Path(tmp) / f"{len(outs)}.webm"
            best = None
            for _ in range(a.repeat):
                outs[name].unlink(missing_ok=True)
                c0, t0 = cpu_now(), time.perf_counter()
                run(parts, counts, a.fps, outs[name])
                wall, c1 = time.perf_counter() - t0, cpu_now()
                cpu = (c1[0] - c0[0]) if name == "layerfilm.video.webm" else (c1[1] - c0[1])
                best = min(best or (wall, cpu), (wall, cpu))
            rows[name] = best
        base = rows["layerfilm.video.webm"][0]
        for name, (wall, cpu) in rows.items():
            print(f"{name:<24}{wall:>8.2f}{cpu:>8.2f}{wall / base:>10.1f}")
        digests = {name: hashlib.sha256("\n".join(packets(out)).encode()).hexdigest()[:12] for name, out in outs.items()}
    same = len(set(digests.values())) == 1
    print(f"same packets at the same times: {'yes' if same else 'NO'} ({', '.join(digests.values())})")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
