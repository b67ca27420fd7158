"""Speed and memory of ``layerfilm render`` against the encoder alone and against matplotlib.

    python benchmarks/bench_render.py --quick     # CI scale: 16 blocks, 24 checkpoints, 1280x720 (~2 min)
    python benchmarks/bench_render.py             # the reference: 128 blocks, 179 checkpoints, 1920x1080

Rows of the table (the format is stable, so runs can be compared later):
  (1) floor     ffmpeg alone encoding the film's number of frames, same size and flags, from raw RGB
                (real layerfilm frames: two key-frame intervals of the film, played back and forth)
  (2) layerfilm ``layerfilm render`` end to end in a subprocess, cold (--no-cache, and the reference's
                files dropped from the page cache first, as after a reboot): read, project,
                draw, encode; target (2)/(1) <= 1.15 in wall time. CPU seconds (layerfilm + ffmpeg
                against ffmpeg alone) are printed too: on a machine shared with other work they say
                more than wall time about what layerfilm adds to the encoder
  (2b) re-render the same film with another --cmap from a warm cache (--rerun; not a target)
  (3) drawing   per frame: layerfilm's Renderer against the straightforward matplotlib figure
                (benchmarks/mpl_reference.py), drawing only; target >= 20x
  (4) memory    peak RSS of the layerfilm process (ffmpeg apart) filming 1/4 of the checkpoints
                (45 of 179) and all of them; target ratio <= 1.2 and under 2 GB

The reference series is written once by benchmarks/make_reference.py into --ref (kept for reruns).
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import make_reference  # noqa: E402
from bench_io import drop_cache  # noqa: E402
from layerfilm.draw.raster import Style  # noqa: E402
from layerfilm.draw.timeline import Timeline  # noqa: E402
from layerfilm.film import caption, film_renderer  # noqa: E402
from layerfilm.film_options import FilmOptions  # noqa: E402
from layerfilm.study import Study  # noqa: E402
from layerfilm.video.encode import ENCODERS, EncodeOptions, _raw_input, ffmpeg_exe  # noqa: E402
from mpl_reference import MplFrames  # noqa: E402

FPS = 15.0
from layerfilm.io.scan import scan  # noqa: E402

# runs the CLI in a child that reports its own peak RSS, its children's (ffmpeg), and the CPU seconds of both
CHILD = ("import resource, sys; from layerfilm.cli.commands import main; rc = main(sys.argv[1:]); "
         "s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN); "
         "print('PEAK_RSS_KB', s.ru_maxrss, c.ru_maxrss, 'CPU_S', s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime, "
         "file=sys.stderr); sys.exit(rc)")


def cpu_of_children() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_cli(args: list[str]) -> tuple[float, float, int, int]:
    """(wall seconds, CPU seconds with ffmpeg, peak RSS of layerfilm in KB, peak RSS of its largest child in KB)."""
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", CHILD, *args], cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t
    m = re.search(r"PEAK_RSS_KB (\d+) (\d+) CPU_S ([\d.]+)", p.stderr)
    if p.returncode != 0 or not m:
        sys.exit(f"layerfilm {' '.join(args)} failed:\n{p.stderr[-2000:]}")
    return wall, float(m[3]), int(m[1]), int(m[2])


def floor(frames: list[np.ndarray], n: int, size: tuple[int, int], opts: EncodeOptions, out: Path) -> tuple[float, float]:
    """(wall, CPU) seconds for ffmpeg alone to encode ``n`` frames cycled from ``frames`` with layerfilm's flags."""
    cmd = [ffmpeg_exe(), "-v", "error", "-y", *_raw_input(size, FPS), *ENCODERS.get("webm")(opts), str(out)]
    cpu = cpu_of_children()
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE)
    for i in range(n):
        proc.stdin.write(frames[i % len(frames)].data)
    proc.stdin.close()
    if proc.wait() != 0:
        sys.exit("ffmpeg failed")
    return time.perf_counter() - t, cpu_of_children() - cpu


def per_frame(draw, cases: list[tuple[np.ndarray, str]]) -> float:
    """Seconds per frame of ``draw(pts, caption)`` over ``cases`` (after one warm-up call)."""
    draw(*cases[0])
    t = time.perf_counter()
    for pts, cap in cases:
        draw(pts, cap)
    return (time.perf_counter() - t) / len(cases)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="CI scale: 16 blocks, width 64, 24 checkpoints, 1280x720")
    p.add_argument("--ref", default=None, help="folder of the reference series (default: /tmp/layerfilm-bench-ref[-quick])")
    p.add_argument("--size", default=None, help="frame size (default 1920x1080; 1280x720 with --quick)")
    p.add_argument("--preset", default="good", help="VP9 deadline for both (1) and (2): good (layerfilm's default) or realtime")
    p.add_argument("--mpl-frames", type=int, default=5, help="frames drawn by matplotlib for (3) (default 5)")
    p.add_argument("--rerun", action="store_true", help="also time (2b), a re-render from a warm cache")
    a = p.parse_args(argv)
    shape = make_reference.QUICK if a.quick else make_reference.FULL
    ref = Path(a.ref or f"/tmp/layerfilm-bench-ref{'-quick' if a.quick else ''}")
    w, h = (int(v) for v in (a.size or ("1280x720" if a.quick else "1920x1080")).split("x"))
    load0 = os.getloadavg()
    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"reference series in {ref} ...", file=sys.stderr)
    make_reference.make(ref, shape)
    series = scan(ref)
    T = len(series)
    quarter = max(2, round(T / 4))
    fps = FPS
    n = Timeline(T, fps, 1.0).n_frames
    enc = EncodeOptions(preset=a.preset)
    style = Style(w, h)
    rows = []

    with tempfile.TemporaryDirectory(prefix="layerfilm-bench-") as tmp:
        tmp = Path(tmp)
        cache = tmp / "cache"
        # the film's trajectories, in-process (also fills the cache used by (2b))
        print("projecting in-process for the floor's frames and (3) ...", file=sys.stderr)
        t = time.perf_counter()
        opts = FilmOptions(style=style, cache_dir=str(cache))
        traj = Study(series, opts, progress=False).trajectories()
        prep = time.perf_counter() - t
        renderer = film_renderer(traj, style, opts, bar=True)  # with the legend, as render draws it
        tl = Timeline(T, fps, 1.0)

        def case(f: int) -> tuple[np.ndarray, str]:
            k, frac = tl.locate(f)
            return renderer.place(traj.xy, k, frac), caption(traj.steps, k, frac)

        # (3) drawing only, same frames for both
        picks = np.linspace(0, n - 1, max(a.mpl_frames, 1)).round().astype(int)
        mpl = MplFrames(w, h, renderer.labels, traj.extent(), renderer.vmax)
        t_mpl = per_frame(mpl, [case(f) for f in picks])
        del mpl
        t_lf = per_frame(lambda pts, cap: renderer.frame(pts, cap, 0.5),
                         [case(f) for f in np.linspace(0, n - 1, 60).round().astype(int)])

        # (1) floor: two key-frame intervals (at 1/3 and 2/3 of the film), each forwards then backwards
        fpk = tl.frames_per_key
        seg = [f for s in (n // 3, 2 * n // 3) for f in list(range(s, s + fpk)) + list(range(s + fpk - 1, s - 1, -1))]
        frames = [renderer.frame(*case(f), f / (n - 1)) for f in seg]
        print(f"(1) floor: ffmpeg alone, {n} frames ...", file=sys.stderr)
        t_floor, cpu_floor = floor(frames, n, (w, h), enc, tmp / "floor.webm")
        del frames

        common = ["render", str(ref), "--size", f"{w}x{h}", "--fps", str(fps), "--preset", a.preset, "--quiet"]
        print("(2) layerfilm render, end to end ...", file=sys.stderr)
        for c in series.checkpoints:
            drop_cache(c.path)
        t_lf_e2e, cpu_lf, rss_all, rss_ff = run_cli([*common, "--out", str(tmp / "film.webm"), "--no-cache"])
        film_mb = (tmp / "film.webm").stat().st_size / 1e6
        floor_mb = (tmp / "floor.webm").stat().st_size / 1e6
        print(f"(4) layerfilm render of {quarter} checkpoints for memory ...", file=sys.stderr)
        last = series.checkpoints[quarter - 1].step
        for c in series.checkpoints:
            drop_cache(c.path)
        _, _, rss_q, _ = run_cli([*common, "--out", str(tmp / "quarter.webm"), "--no-cache", "--steps", f":{last}"])
        if a.rerun:
            print("(2b) re-render from the warm cache ...", file=sys.stderr)
            t_rerun, cpu_rerun, _, _ = run_cli([*common, "--out", str(tmp / "rerun.webm"), "--cache", str(cache),
                                                "--cmap", "viridis"])

    flags = " ".join(ENCODERS.get("webm")(enc))
    lf = f"layerfilm render {ref.name}/ --size {w}x{h} --preset {a.preset} --no-cache --out film.webm"
    rows.append(("1", "floor: ffmpeg alone, raw RGB in", f"ffmpeg {flags}", n, t_floor, cpu_floor, "1.000 x (1)", "", ""))
    rows.append(("2", "layerfilm render, end to end, cold", lf, n, t_lf_e2e, cpu_lf,
                 f"{t_lf_e2e / t_floor:.3f} x (1); CPU {cpu_lf / cpu_floor:.3f} x", "<= 1.15",
                 "yes" if t_lf_e2e / t_floor <= 1.15 else "NO"))
    if a.rerun:
        rows.append(("2b", "re-render, warm cache, --cmap viridis", lf.replace("--no-cache", "--cmap viridis"), n,
                     t_rerun, cpu_rerun, f"{t_rerun / t_floor:.3f} x (1); CPU {cpu_rerun / cpu_floor:.3f} x", "", ""))
    rows.append(("3", "matplotlib: 1 figure, per-frame update + draw", "benchmarks/mpl_reference.py", len(picks),
                 t_mpl * len(picks), None, f"{t_mpl * 1e3:.0f} ms/frame", "", ""))
    rows.append(("3'", "layerfilm Renderer.frame, drawing only", "Renderer.frame", 60, t_lf * 60, None,
                 f"{t_lf * 1e3:.1f} ms/frame = {t_mpl / t_lf:.0f}x faster", ">= 20x", "yes" if t_mpl / t_lf >= 20 else "NO"))
    ratio = rss_all / rss_q
    rows.append(("4", f"peak RSS, {quarter} checkpoints", lf + f" --steps :{last}", "", None, None,
                 f"{rss_q / 1024:.0f} MB", "", ""))
    rows.append(("4", f"peak RSS, {T} checkpoints", lf, "", None, None, f"{rss_all / 1024:.0f} MB = {ratio:.3f} x",
                 "<= 1.2, < 2 GB", "yes" if ratio <= 1.2 and rss_all < 2 * 2**20 else "NO"))

    print(f"\nlayerfilm render benchmark, {started}; {os.cpu_count()} CPUs; load average at start "
          f"{' '.join(f'{v:.2f}' for v in load0)}, at end {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"reference: {shape.blocks} blocks x width {shape.width} (c_fc {4 * shape.width} x {shape.width}), {T} checkpoints "
          f"bf16 safetensors in {ref}; film {n} frames {w}x{h} at {fps:g} fps; in-process read+project {prep:.1f} s")
    print(f"sizes: film {film_mb:.1f} MB, floor {floor_mb:.1f} MB; ffmpeg peak RSS {rss_ff / 1024:.0f} MB (not in row 4)\n")
    print("| row | what | command | frames | wall s | CPU s | result | target | met |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r, what, cmd, frames_, secs, cpu, result, target, ok in rows:
        print(f"| {r} | {what} | `{cmd}` | {frames_} | {'' if secs is None else f'{secs:.1f}'} | "
              f"{'' if cpu is None else f'{cpu:.1f}'} | {result} | {target} | {ok} |")


if __name__ == "__main__":
    main()
