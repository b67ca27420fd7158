"""Issue 30's GPU target: `stability --device cuda` (whole-block measures on the device) against the bare
`safetensors.torch.load_file(f, device="cuda")` of the same checkpoints.

Writes (or reuses) a 6.7B-Llama-shaped bf16 series: 32 blocks of width 4,096 (MLP 11,008), the seven
matrices of each (q, k, v, o, gate, up, down), 12.9 GB a checkpoint, filled from a seeded random pool
(the content does not change the work). Then, with the files in the page cache:

- ``load_file``: each checkpoint loaded to the device by safetensors, one after the other (synchronised);
- ``stability``: ``layerfilm stability DIR --no-cache --device cuda --json --quiet``, and with ``--cpu`` the
  same on the CPU.

    python benchmarks/bench_device.py /dev/shm/llama7b --checkpoints 3 [--cpu] [--json out.jsonl]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_sparse import header_bytes  # noqa: E402 - the benchmarks' own helpers


def llama_specs(blocks: int = 32, width: int = 4096, mlp: int = 11008) -> list[tuple[str, tuple[int, int]]]:
    out = []
    for b in range(blocks):
        p = f"model.layers.{b}."
        out += [(p + f"self_attn.{m}_proj.weight", (width, width)) for m in "qkvo"]
        out += [(p + "mlp.gate_proj.weight", (mlp, width)), (p + "mlp.up_proj.weight", (mlp, width)),
                (p + "mlp.down_proj.weight", (width, mlp))]
    return out


def make_series(folder: Path, checkpoints: int, blocks: int) -> list[Path]:
    config = {"checkpoints": checkpoints, "blocks": blocks, "shape": "llama-6.7b"}
    stamp = folder / "series.json"
    files = [folder / f"step_{i * 1000:06d}.safetensors" for i in range(checkpoints)]
    if stamp.exists() and json.loads(stamp.read_text()) == config and all(f.exists() for f in files):
        return files
    if folder.exists() and any(folder.iterdir()) and not stamp.exists():
        sys.exit(f"{folder}: not empty and not a series this script wrote: choose another folder")
    folder.mkdir(parents=True, exist_ok=True)
    stamp.unlink(missing_ok=True)
    specs = llama_specs(blocks)
    head, _ = header_bytes(specs)
    rng = np.random.default_rng(0)
    pool = (rng.standard_normal(1 << 25, np.float32) * 0.02).view(np.uint32) >> 16  # 32 Mi bf16 values
    pool = pool.astype(np.uint16)
    for f in files:
        with open(f.with_suffix(".partial"), "wb") as fh:
            fh.write(head)
            for _, (r, c) in specs:
                n, at = r * c, int(rng.integers(0, 1 << 20))
                reps = -(-(n + at) // pool.size)
                fh.write(np.tile(pool, reps)[at:at + n].tobytes())
        f.with_suffix(".partial").replace(f)
        print(f"wrote {f} ({f.stat().st_size / 1e9:.1f} GB)", flush=True)
    stamp.write_text(json.dumps(config))
    return files


def load_file_seconds(files: list[Path]) -> float:
    import torch
    from safetensors.torch import load_file

    total = 0.0
    for f in files:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        state = load_file(str(f), device="cuda")
        torch.cuda.synchronize()
        total += time.perf_counter() - t0
        del state
        torch.cuda.empty_cache()
    return total


def stability_seconds(folder: Path, device: str) -> dict:
    argv = [sys.executable, "-m", "layerfilm", "stability", str(folder), "--no-cache", "--json", "--quiet",
            "--device", device]
    t0 = time.perf_counter()
    r = subprocess.run(argv, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode:
        return {"error": r.stderr[-800:]}
    import hashlib

    return {"wall": round(wall, 2), "json": hashlib.sha256(r.stdout.encode()).hexdigest()[:16], "stdout": r.stdout}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", type=Path)
    p.add_argument("--checkpoints", type=int, default=3)
    p.add_argument("--blocks", type=int, default=32)
    p.add_argument("--cpu", action="store_true", help="also stability on the CPU (the same numbers are compared)")
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args()
    files = make_series(a.folder, a.checkpoints, a.blocks)
    subprocess.run(["cat", *map(str, files)], stdout=subprocess.DEVNULL, check=True)  # into the page cache
    rows = [{"run": "load_file to cuda", "wall": round(load_file_seconds(files), 2)}]
    runs = {"cuda": stability_seconds(a.folder, "cuda")}
    if a.cpu:
        runs["cpu"] = stability_seconds(a.folder, "cpu")
    for device, got in runs.items():
        rows.append({"run": f"stability --device {device}", **{k: v for k, v in got.items() if k != "stdout"}})
    if "wall" in runs["cuda"]:
        rows.append({"run": "ratio cuda / load_file", "wall": round(runs["cuda"]["wall"] / rows[0]["wall"], 2)})
    if a.cpu and all("stdout" in r for r in runs.values()):  # the same measures, to float64's rounding
        x, y = (json.loads(runs[d]["stdout"]) for d in ("cuda", "cpu"))
        worst = max(abs(u - v) / max(abs(v), 1e-300) for rx, ry in zip(x, y) for k in ("norm", "distance_to_final")
                    for u, v in zip(rx[k], ry[k]))
        rows.append({"run": "largest relative difference cuda vs cpu (norm, distance_to_final)", "wall": worst})
    for row in rows:
        print(json.dumps(row), flush=True)
        if a.json:
            with a.json.open("a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
