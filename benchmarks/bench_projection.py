"""Time each projection method on synthetic features and print a table.

    python benchmarks/bench_projection.py                      # pca, procrustes at 128 x 179 x 512 x 256; umap trend
    python benchmarks/bench_projection.py --umap-full          # also umap on all 128 blocks (minutes)
    python benchmarks/bench_projection.py --blocks 16 --keyframes 40   # smaller

Features are random walks (each key frame = the previous plus noise, decaying spectrum). To keep the
benchmark's own memory small (128 x 179 x 512 x 256 float32 is 12 GB) the store cycles through
``--distinct`` precomputed key frames held in RAM; every method still reads and computes on T full
frames, but disk reading (the real FeatureStore's np.load) is not timed. UMAP is timed per block
in-process for growing T to show the trend, on one core with one BLAS and numba thread as in a
worker process (``layerfilm.parallel.engines.worker_init``), and its numba compilation is reported apart.
The goal column is the issue's: pca/procrustes under 10 s, umap under 600 s, on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from layerfilm.parallel.engines import worker_init  # noqa: E402
from layerfilm.points import Features  # noqa: E402
from layerfilm.projection import project  # noqa: E402
from layerfilm.projection.umap import UmapOptions, layout_block  # noqa: E402


class SyntheticStore:
    """store[t] -> (L, N, D) float32, cycling through ``distinct`` random-walk frames; each block's walk
    comes from its own seed, so a worker process regenerates just its block (the store pickles small)."""

    def __init__(self, T: int, L: int, N: int, D: int, distinct: int = 6, seed: int = 0) -> None:
        self.T, self.L, self.N, self.D, self.distinct, self.seed = T, L, N, D, min(distinct, T), seed
        self._pool = None

    def _walk(self, l: int) -> np.ndarray:
        """(distinct, N, D) block l's random walk."""
        rng = np.random.default_rng([self.seed, l])
        scale = np.geomspace(1.0, 0.05, self.D).astype(np.float32)
        x = rng.standard_normal((self.N, self.D), dtype=np.float32) * scale
        walk = []
        for _ in range(self.distinct):
            x = x + 0.1 * rng.standard_normal((self.N, self.D), dtype=np.float32) * scale
            walk.append(x)
        return np.stack(walk)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_pool": None}

    def __len__(self) -> int:
        return self.T

    def __getitem__(self, t: int) -> np.ndarray:
        if self._pool is None:
            self._pool = np.stack([self._walk(l) for l in range(self.L)], axis=1)  # (distinct, L, N, D)
        return self._pool[t % self.distinct]

    def block(self, l: int) -> np.ndarray:
        return self._walk(l)[np.arange(self.T) % self.distinct]


def features(T: int, L: int, N: int, D: int, distinct: int) -> Features:
    store = SyntheticStore(T, L, N, D, distinct)
    return Features(np.arange(T, dtype=np.int64), np.arange(L, dtype=np.int64),
                    np.tile(np.arange(N, dtype=np.int64), (L, 1)), "synthetic", store)


def timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blocks", type=int, default=128)
    ap.add_argument("--keyframes", type=int, default=179)
    ap.add_argument("--points", type=int, default=512)
    ap.add_argument("--dims", type=int, default=256)
    ap.add_argument("--distinct", type=int, default=6, help="distinct key frames held in RAM (default 6)")
    ap.add_argument("--umap-trend", default="12,45,90,179", help="key-frame counts for the per-block umap trend")
    ap.add_argument("--repeat", type=int, default=3, help="runs of pca and procrustes; the median is reported (default 3)")
    ap.add_argument("--umap-full", action="store_true", help="also run umap on all blocks with one worker per core")
    args = ap.parse_args()
    T, L, N, D = args.keyframes, args.blocks, args.points, args.dims
    print(f"machine: {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f} at start", flush=True)
    rows = []
    feats = features(T, L, N, D, args.distinct)
    feats.store[0]  # make the random walks now: generating them is not part of any method's time
    for method in ("pca", "procrustes"):
        runs = sorted(timed(lambda method=method: project(feats, method, progress=False))[0] for _ in range(args.repeat))
        rows.append((f"{method} (median of {args.repeat}: {', '.join(f'{r:.1f}' for r in runs)} s)",
                     f"{L}x{T}x{N}x{D}", runs[len(runs) // 2], 10.0))
        print(rows[-1], flush=True)

    opts = UmapOptions(jobs=1)
    worker_init()
    small = features(3, 1, 64, 16, 3).store.block(0)
    sec, _ = timed(lambda: layout_block(small, opts))
    rows.append(("umap numba compile + import (first call per process)", "1x3x64x16", sec, None))
    print(rows[-1], flush=True)
    for t in (int(v) for v in args.umap_trend.split(",") if v):
        frames = features(t, 1, N, D, args.distinct).store.block(0)
        sec, _ = timed(lambda frames=frames: layout_block(frames, opts))
        rows.append((f"umap, one block, one core (x{L} blocks / {os.cpu_count()} cores = "
                     f"{sec * L / os.cpu_count():.0f} s est.)", f"1x{t}x{N}x{D}", sec, None))
        print(rows[-1], flush=True)
    if args.umap_full:
        sec, _ = timed(lambda: project(feats, "umap", progress=False, options=UmapOptions()))
        rows.append((f"umap, all blocks, {os.cpu_count()} workers (incl. spawn + compile)", f"{L}x{T}x{N}x{D}", sec, 600.0))

    print(f"\nload average {os.getloadavg()[0]:.1f} at end (other jobs share these cores)")
    print(f"{'method':<72} {'blocks x keys x points x dims':>30} {'seconds':>9} {'goal':>6} {'ratio':>6}")
    for name, shape, sec, goal in rows:
        g = f"{goal:>6.0f} {sec / goal:>6.2f}" if goal else f"{'':>6} {'':>6}"
        print(f"{name:<72} {shape:>30} {sec:>9.2f} {g}")


if __name__ == "__main__":
    main()
