"""Does `layerfilm stability` stay flat in memory as the number of checkpoints grows?

Measures ``layerfilm.measure`` on the first K checkpoints of a series for several K: wall time, time
per checkpoint, and the peak of Python/NumPy allocations (tracemalloc; NumPy reports its buffers to
it). The reference is the size of one checkpoint's block tensors in float32: holding every checkpoint
would cost K times that, a streaming measure a small constant multiple of it.

    python examples/make_checkpoints.py outputs/ckpts          # 17 checkpoints, 8 blocks, width 64
    python benchmarks/stability_memory.py outputs/ckpts
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from layerfilm.formats import open_checkpoint
from layerfilm.layers import map_layers
from layerfilm.scan import Series, scan
from layerfilm.stability import measure


def block_bytes(series: Series) -> int:
    ckpt = series.checkpoints[0]
    with open_checkpoint(ckpt.path, ckpt.format) as reader:
        lm = map_layers(reader.keys())
        n = 0
        for b in lm.blocks:
            for name in lm.names[b].values():
                size = 1
                for d in reader.shape(name):
                    size *= d
                n += size
    return 4 * n


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", type=Path, help="a checkpoint series (e.g. from examples/make_checkpoints.py)")
    p.add_argument("--counts", default="4,8,16", help="numbers of checkpoints to measure (default 4,8,16)")
    a = p.parse_args(argv)
    full = scan(a.folder)
    one = block_bytes(full)
    rows = []
    for k in [int(v) for v in a.counts.split(",") if int(v) <= len(full)]:
        with tempfile.TemporaryDirectory() as tmp:  # a folder holding only the first k checkpoints
            for c in full.checkpoints[:k]:
                (shutil.copytree if c.path.is_dir() else shutil.copy)(c.path, Path(tmp) / c.path.name)
            series = scan(tmp)
            tracemalloc.start()
            t0 = time.perf_counter()
            st = measure(series, progress=False)
            dt = time.perf_counter() - t0
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        rows.append((k, len(st.blocks), dt, dt / k, peak, peak / one, k))
    print(f"command: python benchmarks/stability_memory.py {a.folder} --counts {a.counts}")
    print(f"input: {a.folder}, one checkpoint's block tensors = {one / 2**20:.2f} MiB float32\n")
    head = ("checkpoints", "blocks", "seconds", "s/ckpt", "peak MiB", "peak / 1 ckpt", "holding all / 1 ckpt")
    print(" | ".join(head))
    print(" | ".join("---" for _ in head))
    for k, L, dt, per, peak, ratio, naive in rows:
        print(f"{k} | {L} | {dt:.2f} | {per:.3f} | {peak / 2**20:.2f} | {ratio:.2f} | {naive}")


if __name__ == "__main__":
    sys.exit(main())
