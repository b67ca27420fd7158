"""Render one checkpoint folder at several --jobs and both WebM presets: how much the film's segments
(layerfilm.video.segments) gain from more cores, and what they cost in bytes.

    python benchmarks/bench_jobs.py CKPTS                        # --jobs 1, 2, 4, 8, 16 up to this machine's cores
    python benchmarks/bench_jobs.py CKPTS --jobs 1,2 --size 1920x1080 --presets good
    python benchmarks/bench_jobs.py CKPTS --cold                 # end to end: no key-frame cache (reads and projects too)
    python benchmarks/make_reference.py /tmp/ref --quick && python benchmarks/bench_jobs.py /tmp/ref --size 1920x1080

Each row is ``layerfilm render CKPTS --out film.webm --jobs N --preset P`` in a subprocess of its own:
wall seconds, CPU seconds (layerfilm, its workers and every ffmpeg), frames per second of wall time,
the film's size and its ratio to --jobs 1 of the same preset, the speed-up over --jobs 1, and the
number of segments. By default one warm-up render first fills the key-frame cache (in a temporary
folder), so that the rows time the film itself (drawing, encoding, joining); --cold times the whole
run, checkpoints read and projected with the same --jobs. Every film is then decoded and its frames
hashed: all of them, both presets included (VP9 lossless), must hold the same frames, and the last
column says so (a film that does not is also the script's exit status: 1).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from layerfilm.draw.timeline import Timeline  # noqa: E402
from layerfilm.io.scan import scan  # noqa: E402
from layerfilm.parallel.engines import cores  # noqa: E402
from layerfilm.video.encode import EncodeOptions, ffmpeg_exe  # noqa: E402
from layerfilm.video.segments import plan  # noqa: E402


def cpu_of_children() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def render(ckpts: Path, out: Path, jobs: int, preset: str, extra: list[str], env: dict) -> tuple[float, float]:
    """(wall, CPU) seconds of one ``layerfilm render`` in a child process (its workers and ffmpegs counted)."""
    cmd = [sys.executable, "-m", "layerfilm_main", "render", str(ckpts), "--out", str(out), "--jobs", str(jobs),
           "--preset", preset, "--quiet", *extra]
    cpu = cpu_of_children()
    t = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{p.stderr[-2000:]}")
    return wall, cpu_of_children() - cpu


def frames_hash(film: Path) -> tuple[int, str]:
    """(frames, one hash of every decoded frame's MD5 and timestamps): equal films decode to equal frames."""
    p = subprocess.run([ffmpeg_exe(), "-v", "error", "-i", str(film), "-f", "framemd5", "-"], capture_output=True,
                       text=True, check=True)
    lines = [ln for ln in p.stdout.splitlines() if ln and not ln.startswith("#")]
    return len(lines), hashlib.sha256("\n".join(lines).encode()).hexdigest()[:12]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ckpts", type=Path, help="a checkpoint folder (e.g. written by benchmarks/make_reference.py)")
    ap.add_argument("--jobs", default="", help="comma-separated --jobs values (default: 1,2,4,8,16 up to the cores)")
    ap.add_argument("--presets", default="good,realtime", help="comma-separated .webm presets (default good,realtime)")
    ap.add_argument("--size", default="1280x720", help="--size of the films (default 1280x720)")
    ap.add_argument("--fps", type=float, default=15.0, help="--fps of the films (default 15)")
    ap.add_argument("--cold", action="store_true", help="no key-frame cache: time the whole run, not only the film")
    ap.add_argument("--keep", type=Path, default=None, help="write the films into this folder and keep them")
    ap.add_argument("--no-hash", action="store_true", help="do not decode and hash the films (saves a device's "
                    "time on long films; the tests check segment joins frame for frame)")
    ap.add_argument("--repeat", type=int, default=1, help="render each row this many times; the fastest counts (default 1)")
    a, extra = ap.parse_known_args()  # anything else goes to every render (e.g. --points 256)
    n = cores()
    jobs = [int(j) for j in a.jobs.split(",")] if a.jobs else sorted({j for j in (1, 2, 4, 8, 16) if j <= n} | {n})
    presets = a.presets.split(",")
    keys = len(scan(a.ckpts))
    n_frames = Timeline(keys, a.fps).n_frames
    extra += ["--size", a.size, "--fps", str(a.fps)]
    with tempfile.TemporaryDirectory(prefix="bench_jobs-") as tmp:
        work = a.keep or Path(tmp)
        work.mkdir(exist_ok=True)
        env = {**os.environ, "LAYERFILM_CACHE": str(Path(tmp) / "cache")}
        if a.cold:
            extra.append("--no-cache")
        else:  # fill the key-frame cache once, so that every row times the film alone
            render(a.ckpts, work / "warmup.webm", max(jobs), "realtime", extra, env)
            (work / "warmup.webm").unlink()
        print(f"layerfilm render {a.ckpts} ({keys} key frames, {n_frames} frames at {a.size}, {a.fps:g} fps) "
              f"--jobs N --preset P {' '.join(extra)}")
        print(f"{n} cores this process may use; load average before: {os.getloadavg()[0]:.1f}; "
              f"{'cold: checkpoints read and projected in every row' if a.cold else 'warm key-frame cache: the film alone'}")
        print(f"{'preset':<9}{'jobs':>5}{'segs':>5}{'wall s':>9}{'CPU s':>8}{'frames/s':>10}{'MB':>9}{'size x':>8}"
              f"{'speed-up':>9}  frames")
        hashes = set()
        for preset in presets:
            base_wall = base_size = None
            for j in jobs:
                out = work / f"film-{preset}-j{j}.webm"
                runs = []
                for _ in range(a.repeat):
                    out.unlink(missing_ok=True)
                    runs.append(render(a.ckpts, out, j, preset, extra, env))
                wall, cpu = min(runs)
                size = out.stat().st_size
                count, digest = (n_frames, "not hashed") if a.no_hash else frames_hash(out)
                hashes.add((count, digest))
                base_wall, base_size = base_wall or wall, base_size or size
                segs = len(plan(n_frames, j, a.fps, EncodeOptions()))
                print(f"{preset:<9}{j:>5}{segs:>5}{wall:>9.1f}{cpu:>8.1f}{n_frames / wall:>10.1f}{size / 1e6:>9.2f}"
                      f"{size / base_size:>8.3f}{base_wall / wall:>9.2f}  {count} {digest}", flush=True)
                if a.keep is None:
                    out.unlink()
        same = len(hashes) == 1
        verdict = "not checked (--no-hash)" if a.no_hash else "yes" if same else "NO: " + str(sorted(hashes))
        print(f"all films decode to the same frames: {verdict}; "
              f"load average after: {os.getloadavg()[0]:.1f}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
