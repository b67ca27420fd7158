"""How much a render reads, and whether its memory stays flat as checkpoints grow.

1. Bytes read per checkpoint against the bytes of the tensors the film needs (one matrix per block),
   page cache cold: every file is dropped from the cache (fsync + posix_fadvise(POSIX_FADV_DONTNEED))
   before it is opened, and /proc/self/io read_bytes is read around opening it and reading the points.
   Target: <= 1.2x for safetensors. Also shown for torch .pt files (torch.load mmap=True).
2. Peak RSS reading 20 vs 80 checkpoints of the same model, for the reading stage (scan + extract)
   and for a whole render to .webm: VmHWM of a fresh process, reset (/proc/self/clear_refs) after
   its imports so that it is the work's own peak. Target: RSS(80)/RSS(20) <= 1.2.

    python benchmarks/bench_io.py                       # 80 checkpoints, width 256, 8 blocks (~2 GB in a temp folder)
    python benchmarks/bench_io.py --width 128 --checkpoints 40

Each measurement runs in its own subprocess so that peak RSS and read_bytes belong to it alone.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def read_bytes() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("read_bytes:"):
            return int(line.split()[1])
    raise RuntimeError("no read_bytes in /proc/self/io")


def drop_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # dirty pages cannot be dropped
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def make_series(folder: Path, n: int, width: int, layers: int, n_pt: int) -> None:
    """``n`` checkpoints of the example GPT as step_%06d.safetensors, and the first ``n_pt`` also as
    ckpt_%06d.pt (nanoGPT-style training dict without optimizer), weights drifting from step to step."""
    import torch
    from safetensors.torch import save_file

    sys.path.insert(0, str(ROOT / "examples"))
    import make_checkpoints as mc

    torch.manual_seed(0)
    state = {k: v.detach().contiguous() for k, v in mc.GPT(mc.Config(n_layer=layers, d_model=width, n_head=4)).state_dict().items()}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "st").mkdir(exist_ok=True)
    (folder / "pt").mkdir(exist_ok=True)
    for i in range(n):
        step = i * 100
        save_file(state, str(folder / "st" / f"step_{step:06d}.safetensors"))
        if i < n_pt:
            torch.save({"model": state, "iter_num": step}, folder / "pt" / f"ckpt_{step:06d}.pt")
        state = {k: v + 0.001 * torch.randn_like(v) for k, v in state.items()}


def child_bytes(folder: str, limit: int) -> dict:
    import numpy as np

    from layerfilm.features.weights import WeightSpec, plan, read_points
    from layerfilm.formats import open_checkpoint
    from layerfilm.scan import scan

    series = scan(folder, warn=False)
    wp = plan(series, WeightSpec())
    rows = []
    for c in series.checkpoints[:limit]:
        files = sorted(c.path.glob("*")) if c.path.is_dir() else [c.path]
        for f in files:
            drop_cache(f)
        before = read_bytes()
        with open_checkpoint(c.path, c.format) as reader:
            needed = sum(int(np.prod(reader.shape(n))) * {"F32": 4, "F16": 2, "BF16": 2}[reader.dtype(n)]
                         for n in wp.tensor_names)
            read_points(reader, wp, c.path)
        rows.append((read_bytes() - before, needed, sum(f.stat().st_size for f in files)))
    return {"read": [r[0] for r in rows], "needed": [r[1] for r in rows], "file": [r[2] for r in rows]}


def child_rss(folder: str, n: int, mode: str) -> dict:
    from layerfilm import render
    from layerfilm.features.weights import WeightSpec, extract
    from layerfilm.film import FilmOptions
    from layerfilm.render import Style
    from layerfilm.scan import scan

    last = scan(folder, warn=False).steps[n - 1]
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM: measure the peak of the work alone
    t0 = time.perf_counter()
    if mode == "read":
        series = scan(folder, steps=(None, last), warn=False)
        with tempfile.TemporaryDirectory() as work:
            extract(series, WeightSpec(), Path(work), progress=False)
    else:
        with tempfile.TemporaryDirectory() as work:
            render(folder, Path(work) / "film.webm", FilmOptions(fps=2, steps=(None, last), style=Style(width=320, height=180)),
                   progress=False)
    hwm = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM:"))
    return {"rss_mib": hwm / 1024, "process_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "seconds": time.perf_counter() - t0}


def run_child(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", *args], check=True, capture_output=True, text=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", type=Path, default=None, help="where to write the series (default: a temp folder, removed after)")
    p.add_argument("--checkpoints", type=int, default=80)
    p.add_argument("--small", type=int, default=20, help="the smaller series for the RSS ratio (default 20)")
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--bytes-checkpoints", type=int, default=10, help="checkpoints measured for bytes read (default 10)")
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        kind, folder, *rest = a.child
        res = child_bytes(folder, int(rest[0])) if kind == "bytes" else child_rss(folder, int(rest[0]), rest[1])
        print(json.dumps(res))
        return
    with tempfile.TemporaryDirectory(dir=a.dir, prefix="bench_io-") as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        make_series(folder, a.checkpoints, a.width, a.layers, a.bytes_checkpoints)
        print(f"# series: {a.checkpoints} checkpoints, width {a.width}, {a.layers} blocks, written in "
              f"{time.perf_counter() - t0:.0f} s under {folder}  (python {' '.join(sys.argv)})")
        print("\n## bytes read per checkpoint, page cache cold (mean over %d checkpoints)" % a.bytes_checkpoints)
        print(f"| format | file MiB | needed tensors MiB | read MiB | read / needed | target |")
        print("|---|---|---|---|---|---|")
        for fmt in ("st", "pt"):
            r = run_child("bytes", str(folder / fmt), str(a.bytes_checkpoints))
            mean = lambda xs: sum(xs) / len(xs) / 2**20  # noqa: E731
            ratio = sum(r["read"]) / sum(r["needed"])
            target = "<= 1.2 " + ("ok" if ratio <= 1.2 else "MISSED") if fmt == "st" else "-"
            print(f"| {'safetensors' if fmt == 'st' else 'torch .pt'} | {mean(r['file']):.2f} | {mean(r['needed']):.2f} | "
                  f"{mean(r['read']):.2f} | {ratio:.3f} | {target} |")
        print(f"\n## peak RSS, {a.small} vs {a.checkpoints} checkpoints (safetensors)")
        print("Peak RSS during the work (VmHWM reset after imports and a first scan); in brackets the whole")
        print("process's peak (ru_maxrss, imports included).\n")
        print("| stage | RSS(%d) MiB | RSS(%d) MiB | ratio | target | seconds (%d / %d) |" % (a.small, a.checkpoints, a.small, a.checkpoints))
        print("|---|---|---|---|---|---|")
        for mode in ("read", "render"):
            small = run_child("rss", str(folder / "st"), str(a.small), mode)
            big = run_child("rss", str(folder / "st"), str(a.checkpoints), mode)
            ratio = big["rss_mib"] / small["rss_mib"]
            print(f"| {'scan + extract' if mode == 'read' else 'whole render (.webm 320x180)'} | {small['rss_mib']:.0f} ({small['process_mib']:.0f}) | "
                  f"{big['rss_mib']:.0f} ({big['process_mib']:.0f}) | {ratio:.3f} | <= 1.2 {'ok' if ratio <= 1.2 else 'MISSED'} | "
                  f"{small['seconds']:.1f} / {big['seconds']:.1f} |")


if __name__ == "__main__":
    main()
