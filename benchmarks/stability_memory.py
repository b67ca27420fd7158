"""Does `layerfilm stability` stay flat in memory as the number of checkpoints grows?

Measures ``layerfilm.measure`` on the first K checkpoints of a series for several K, each in a fresh
process: wall time, time per checkpoint, the peak of NumPy/Python allocations (tracemalloc; NumPy
reports its buffers to it, torch does not) and the process's peak resident memory (ru_maxrss, torch
and the imports included). The reference is the size of one checkpoint's block tensors in float32:
holding every checkpoint would cost K times that, a streaming measure a constant multiple of it.

    python examples/make_checkpoints.py outputs/ckpts          # 17 checkpoints, 8 blocks, width 64
    python benchmarks/stability_memory.py outputs/ckpts
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from layerfilm.io.blocks import map_blocks
from layerfilm.io.formats import open_checkpoint
from layerfilm.io.scan import Series, scan
from layerfilm.study import measure


def block_bytes(series: Series) -> int:
    ckpt = series.checkpoints[0]
    with open_checkpoint(ckpt.path, ckpt.format) as reader:
        lm = map_blocks(reader.keys())
        n = 0
        for b in lm.blocks:
            for name in lm.names[b].values():
                size = 1
                for d in reader.shape(name):
                    size *= d
                n += size
    return 4 * n


def run_one(folder: Path, k: int) -> dict:
    """Measure the first k checkpoints of ``folder`` in this process; returns the numbers."""
    full = scan(folder)
    with tempfile.TemporaryDirectory() as tmp:  # a folder holding only the first k checkpoints
        for c in full.checkpoints[:k]:
            (shutil.copytree if c.path.is_dir() else shutil.copy)(c.path, Path(tmp) / c.path.name)
        series = scan(tmp)
        tracemalloc.start()
        t0 = time.perf_counter()
        st = measure(series, progress=False)
        dt = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    return {"k": k, "blocks": len(st.blocks), "seconds": dt, "traced": peak, "rss": rss}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", type=Path, help="a checkpoint series (e.g. from examples/make_checkpoints.py)")
    p.add_argument("--counts", default="4,8,16", help="numbers of checkpoints to measure (default 4,8,16)")
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child is not None:
        print(json.dumps(run_one(a.folder, a.child)))
        return
    full = scan(a.folder)
    one = block_bytes(full)
    counts = [int(v) for v in a.counts.split(",") if int(v) <= len(full)]
    rows = [json.loads(subprocess.run([sys.executable, __file__, str(a.folder), "--child", str(k)], check=True,
                                      capture_output=True, text=True).stdout) for k in counts]
    print(f"command: python benchmarks/stability_memory.py {a.folder} --counts {a.counts}")
    print(f"input: {a.folder}, one checkpoint's block tensors = {one / 2**20:.2f} MiB float32\n")
    head = ("checkpoints", "blocks", "seconds", "s/ckpt", "traced peak MiB", "traced / 1 ckpt", "peak RSS MiB",
            "holding all / 1 ckpt")
    print(" | ".join(head))
    print(" | ".join("---" for _ in head))
    mib = 2**20
    for r in rows:
        print(f"{r['k']} | {r['blocks']} | {r['seconds']:.2f} | {r['seconds'] / r['k']:.3f} | {r['traced'] / mib:.1f} | "
              f"{r['traced'] / one:.2f} | {r['rss'] / mib:.0f} | {r['k']}")


if __name__ == "__main__":
    sys.exit(main())
