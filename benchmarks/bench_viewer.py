"""Size and opening time of the interactive film (``layerfilm view``) at the reference's shape, in headless
Chromium from the system packages (tests/browser.py).

    python benchmarks/bench_viewer.py            # 128 blocks x 179 key frames x 512 points, 1280x720
    python benchmarks/bench_viewer.py --quick    # 16 x 24 x 512

Synthetic trajectories (the coordinates are all the page holds; how they were made does not matter to
it), three kinds, since the deflated size depends on how smoothly points move between key frames:
  settling  each point a random walk whose steps shrink over training (e^(-t/40)), as a real run settles
  walk      a random walk of constant steps (a run that never settles)
  noise     independent positions at every key frame (no temporal coherence: the worst case)
Per kind: the file's size, the time from navigation to the first drawn frame (the page's
performance.now() when it is ready), split into the HTML parsed (the script starts), the coordinates'
base64 read, inflated and decoded; and the time to draw one frame. Also prints the load average: on a
shared machine the times are those of the moment.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from browser import chromium, console_errors, open_viewer  # noqa: E402
from layerfilm.draw.raster import Style  # noqa: E402
from layerfilm.film_options import FilmOptions  # noqa: E402
from layerfilm.points import ArrayStore  # noqa: E402
from layerfilm.points.measures import point_measures  # noqa: E402
from layerfilm.projection import Trajectories  # noqa: E402
from layerfilm.reports.viewer import write_viewer  # noqa: E402


def synthetic(kind: str, T: int, L: int, N: int, seed: int = 0) -> Trajectories:
    rng = np.random.default_rng(seed)
    start = rng.normal(size=(1, L, N, 2))
    if kind == "noise":
        xy = rng.normal(size=(T, L, N, 2))
    else:
        sigma = 0.08 * (np.exp(-np.arange(T) / 40.0) if kind == "settling" else np.ones(T))
        steps = rng.normal(size=(T, L, N, 2)) * sigma[:, None, None, None]
        steps[0] = 0
        xy = start + np.cumsum(steps, axis=0)
    xy = xy.astype(np.float32)
    steps_ = np.arange(T, dtype=np.int64) * 1000
    stats = point_measures(ArrayStore(xy), steps_)
    return Trajectories(steps_, np.arange(L, dtype=np.int64), np.tile(np.arange(N, dtype=np.int64), (L, 1)), xy, "pca",
                        stats)


def browser_cpu(driver) -> float:
    """CPU seconds (user + system) used so far by the browser's processes: on a shared machine a figure
    that the other work on it changes less than wall time."""
    import psutil

    root = psutil.Process(driver.service.process.pid)
    total = 0.0
    for p in [root, *root.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--kinds", default="settling,walk,noise")
    ap.add_argument("--shots", type=Path, help="a folder for screenshots of the settling film at its first, middle "
                    "and last key frame")
    args = ap.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    T, L, N = (24, 16, 512) if args.quick else (179, 128, 512)
    opts = FilmOptions(style=Style(1280, 720))
    print("| trajectories | coordinates | file MB | write s | ready ms | parsed / base64 / inflated / decoded ms "
          "| browser CPU s to open | ms per frame | console errors |")
    print("|---|---|---:|---:|---:|---|---:|---:|---|")
    with tempfile.TemporaryDirectory() as tmp, chromium(1600, 1000) as driver:
        for kind in args.kinds.split(","):
            traj = synthetic(kind, T, L, N)
            t0 = time.perf_counter()
            res = write_viewer(traj, Path(tmp) / f"{kind}.html", opts)
            written = time.perf_counter() - t0
            cpu = browser_cpu(driver)
            open_viewer(driver, res.out, timeout=300)
            cpu = browser_cpu(driver) - cpu
            ready = driver.execute_script("return layerfilm.readyMs")
            tm = driver.execute_script("return layerfilm.timing")
            parts = " / ".join(f"{tm[k]:.0f}" for k in ("script", "base64", "inflate", "decode"))
            per_frame = driver.execute_script(
                "const t = performance.now(); for (let i = 1; i <= 30; i++) layerfilm.go(i); "
                "return (performance.now() - t) / 30")
            errors = console_errors(driver)
            print(f"| {kind} {T}x{L}x{N} | {res.coords} | {res.size / 1e6:.1f} | {written:.1f} | {ready:.0f} | {parts} | "
                  f"{cpu:.1f} | {per_frame:.1f} | {len(errors)} |", flush=True)
            if kind == "settling" and args.shots:
                for k in (0, T // 2, T - 1):
                    driver.execute_script("layerfilm.go(layerfilm.keyFrames[arguments[0]])", k)
                    driver.save_screenshot(str(args.shots / f"viewer_{L}_key{k}.png"))
            driver.get("about:blank")


if __name__ == "__main__":
    main()
