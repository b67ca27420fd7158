"""Write a 70B-shaped checkpoint series as sparse safetensors files (real headers, full logical sizes).

80 Llama-style decoder blocks of width 8,192 (MLP 28,672), bf16, four matrices per block:
``model.layers.N.self_attn.q_proj.weight`` [8192, 8192], ``...self_attn.o_proj.weight`` [8192, 8192],
``model.layers.N.mlp.up_proj.weight`` [28672, 8192] (what layerfilm films by default) and
``model.layers.N.mlp.down_proj.weight`` [8192, 28672]. One checkpoint is 80 x 2 x (2 x 8192^2 +
2 x 28672 x 8192) bytes = 95.6 GB logical, 24 of them 2.3 TB; on disk each file is extended to its
full size with ``os.truncate`` and only some rows hold data, the rest are holes (read back as zeros):

- the first ``--band`` rows of every tensor (default 16);
- the rows of up_proj that layerfilm tracks with its defaults (``--points 512``, ``--seed 0``: the same
  seeded choice as ``layerfilm.points.weights.plan``), so that the film shows real motion, not zeros.

The tracked rows drift between checkpoints: w_t = base + a_t * d1 + b_t * d2 per block, with a_t, b_t
seeded random walks per block (different blocks move differently, some settle). About 0.7 GB of data
per checkpoint at the defaults (24 checkpoints: ~17 GB of disk).

    python benchmarks/make_sparse.py /tmp/lf70b                     # 24 checkpoints, step_000000 ... step_023000
    python benchmarks/make_sparse.py /tmp/lf70b --checkpoints 3 --blocks 8

A folder that already holds the same series (same sparse.json) is reused, not rewritten.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import time
from pathlib import Path

import numpy as np


def tensor_specs(blocks: int, width: int, mlp: int) -> list[tuple[str, tuple[int, int]]]:
    out = []
    for b in range(blocks):
        p = f"model.layers.{b}."
        out += [(p + "self_attn.q_proj.weight", (width, width)), (p + "self_attn.o_proj.weight", (width, width)),
                (p + "mlp.up_proj.weight", (mlp, width)), (p + "mlp.down_proj.weight", (width, mlp))]
    return out


def header_bytes(specs: list[tuple[str, tuple[int, int]]]) -> tuple[bytes, dict[str, int]]:
    """The safetensors header (8-byte length + JSON padded to 8 bytes) and each tensor's data offset."""
    header, offsets, pos = {}, {}, 0
    for name, shape in specs:
        n = shape[0] * shape[1] * 2
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [pos, pos + n]}
        offsets[name] = pos
        pos += n
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text, offsets


def to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bits (round to nearest even), as uint16."""
    u = np.ascontiguousarray(x, np.float32).view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def tracked_rows(blocks: int, mlp: int, points: int, seed: int) -> np.ndarray:
    """(blocks, points) the rows layerfilm's plan() picks with --points/--seed (same generator, same order)."""
    rng = np.random.default_rng(seed)
    n = min(points, mlp)
    return np.stack([np.sort(rng.choice(mlp, n, replace=False)) for _ in range(blocks)])


def write_rows(fd: int, base: int, row_bytes: int, ids: np.ndarray, data: np.ndarray) -> None:
    """pwrite rows ``ids`` (sorted) of a tensor starting at byte ``base``; consecutive rows in one call."""
    breaks = np.flatnonzero(np.diff(ids) != 1) + 1
    start = 0
    for run in np.split(ids, breaks):
        chunk = data[start:start + len(run)]
        os.pwrite(fd, chunk.tobytes(), base + int(run[0]) * row_bytes)
        start += len(run)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path)
    p.add_argument("--checkpoints", type=int, default=24)
    p.add_argument("--blocks", type=int, default=80)
    p.add_argument("--width", type=int, default=8192)
    p.add_argument("--mlp", type=int, default=28672)
    p.add_argument("--band", type=int, default=16, help="leading rows of every tensor that hold data (default 16)")
    p.add_argument("--points", type=int, default=512, help="tracked up_proj rows to fill, as layerfilm --points (default 512; 0: "
                   "none)")
    p.add_argument("--seed", type=int, default=0, help="as layerfilm --seed (default 0), and the data's seed")
    p.add_argument("--step", type=int, default=1000, help="step between checkpoints (default 1000)")
    a = p.parse_args()
    config = {k: v for k, v in vars(a).items() if k != "out"}
    a.out.mkdir(parents=True, exist_ok=True)
    stamp = a.out / "sparse.json"
    names = [a.out / f"step_{i * a.step:06d}.safetensors" for i in range(a.checkpoints)]
    if stamp.exists() and json.loads(stamp.read_text()) == config and all(f.exists() for f in names):
        print(f"{a.out}: already holds this series; reused")
        return
    stamp.unlink(missing_ok=True)
    t0 = time.perf_counter()
    specs = tensor_specs(a.blocks, a.width, a.mlp)
    head, offsets = header_bytes(specs)
    total = len(head) + sum(s[0] * s[1] * 2 for _, s in specs)
    rng = np.random.default_rng(a.seed + 1)
    ids = tracked_rows(a.blocks, a.mlp, a.points, a.seed) if a.points else np.zeros((a.blocks, 0), np.int64)
    n = ids.shape[1]
    # per block: base, two drift directions of the tracked rows (float32, ~4 GB at the defaults)
    scale = np.float32(0.02)
    base = rng.standard_normal((a.blocks, n, a.width), np.float32) * scale
    d1 = rng.standard_normal((a.blocks, n, a.width), np.float32) * scale
    d2 = np.empty_like(d1)
    for b in range(a.blocks):  # a structured second direction: half the points one way, half the other
        d2[b] = rng.standard_normal((1, a.width), np.float32) * scale * np.where(np.arange(n) % 2, 1, -1)[:, None]
    # random walks of the coefficients, decaying (blocks settle, deeper ones later)
    T = a.checkpoints
    decay = np.exp(-np.arange(T)[:, None] / (T * (0.2 + 0.6 * np.arange(a.blocks)[None, :] / max(a.blocks - 1, 1))))
    walk_a = np.cumsum(rng.standard_normal((T, a.blocks)) * decay, axis=0).astype(np.float32)
    walk_b = np.cumsum(np.abs(rng.standard_normal((T, a.blocks))) * decay, axis=0).astype(np.float32)
    band = {shape: to_bf16(rng.standard_normal((min(a.band, shape[0]), shape[1]), np.float32) * scale)
            for shape in {s for _, s in specs}}
    data_base = len(head)
    for t, path in enumerate(names):
        tmp = path.with_suffix(".partial")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, head)
            os.ftruncate(fd, total)
            for name, shape in specs:
                row = shape[1] * 2
                rows = band[shape]
                if len(rows):
                    os.pwrite(fd, rows.tobytes(), data_base + offsets[name])
                if name.endswith("mlp.up_proj.weight") and n:
                    b = int(name.split(".")[2])
                    w = to_bf16(base[b] + walk_a[t, b] * d1[b] + walk_b[t, b] * d2[b])
                    write_rows(fd, data_base + offsets[name], row, ids[b], w)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        du = os.stat(path).st_blocks * 512
        print(f"  wrote {path.name}: {total / 1e9:.1f} GB logical, {du / 1e9:.2f} GB on disk "
              f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    stamp.write_text(json.dumps(config))
    print(f"{a.out}: {a.checkpoints} checkpoints of {total / 1e9:.1f} GB logical each in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
