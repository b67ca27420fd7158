"""Write a reference checkpoint series shaped like the model that inspired layerfilm.

128 nanoGPT-style decoder blocks of width 128 (MLP 4 x width), 179 checkpoints, bf16 safetensors,
parameter names as examples/make_checkpoints.py writes them (``transformer.h.N.mlp.c_fc.weight``).
Training that model 179 times over is not the point of a benchmark, so the weights follow a seeded
synthetic training-like path instead: every block's MLP neurons drift from their random start towards
a few cluster centres, fast at first and then settling, deeper blocks later, with noise that fades.
The films look like real ones (clouds that split, move and settle), and the files are real: same
names, shapes, dtypes and layout on disk as a training run would write.

    python benchmarks/make_reference.py /tmp/ref                  # full: 128 blocks, 179 checkpoints (~9 GB)
    python benchmarks/make_reference.py /tmp/ref --quick          # CI scale: 16 blocks, width 64, 24 checkpoints

A folder that already holds the same series (same reference.json) is reused, not rewritten.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file


@dataclass(frozen=True)
class Shape:
    blocks: int = 128
    width: int = 128
    checkpoints: int = 179
    every: int = 100  # training steps between checkpoints (names only)
    seed: int = 0


FULL = Shape()
QUICK = Shape(blocks=16, width=64, checkpoints=24)


def step_name(i: int, shape: Shape) -> str:
    return f"step_{i * shape.every:06d}.safetensors"


def make(out: str | Path, shape: Shape = FULL, log: bool = True, first: int | None = None) -> Path:
    """Write the series into ``out`` (created) unless it is already there; returns ``out``. ``first``:
    write only the first checkpoints of the series (the same files as the whole series' first ones)."""
    out = Path(out)
    manifest = out / "reference.json"
    wanted = {**asdict(shape), "first": first}
    if manifest.is_file() and json.loads(manifest.read_text()) in (wanted, asdict(shape) if first is None else None):
        return out
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("step_*.safetensors"):
        old.unlink()
    L, d, T = shape.blocks, shape.width, shape.checkpoints
    rng = np.random.default_rng(shape.seed)
    g = torch.Generator().manual_seed(shape.seed)
    std, proj_std = 0.02, 0.02 / np.sqrt(2 * L)
    # the filmed matrix: every block's c_fc rows walk towards one of 5 cluster centres
    c_fc = rng.normal(0, std, (L, 4 * d, d)).astype(np.float32)
    centres = rng.normal(0, 3 * std, (L, 5, d)).astype(np.float32)
    target = c_fc + centres[np.arange(L)[:, None], rng.integers(0, 5, (L, 4 * d))]
    depth = np.linspace(0, 1, L, dtype=np.float32)[:, None, None]
    rate = 0.06 * (1.2 - depth)  # deeper blocks learn later and slower
    # the rest of each block: random, moving a little every checkpoint (written, never filmed)
    others = {
        "ln_1.weight": lambda: torch.ones(d), "ln_1.bias": lambda: torch.zeros(d),
        "attn.c_attn.weight": lambda: torch.randn(3 * d, d, generator=g) * std,
        "attn.c_attn.bias": lambda: torch.zeros(3 * d),
        "attn.c_proj.weight": lambda: torch.randn(d, d, generator=g) * proj_std,
        "attn.c_proj.bias": lambda: torch.zeros(d),
        "ln_2.weight": lambda: torch.ones(d), "ln_2.bias": lambda: torch.zeros(d),
        "mlp.c_fc.bias": lambda: torch.zeros(4 * d),
        "mlp.c_proj.weight": lambda: torch.randn(d, 4 * d, generator=g) * proj_std,
        "mlp.c_proj.bias": lambda: torch.zeros(d),
    }
    rest = {f"transformer.h.{b}.{k}": f() for b in range(L) for k, f in others.items()}
    embed = {"transformer.wte.weight": torch.randn(256, d, generator=g) * std,
             "transformer.wpe.weight": torch.randn(1024, d, generator=g) * std,
             "transformer.ln_f.weight": torch.ones(d), "transformer.ln_f.bias": torch.zeros(d)}
    for t in range(min(T, first or T)):
        if t:
            frac = t / T
            pull = rate * np.exp(-3 * np.maximum(frac - depth, 0)) * (frac > depth * 0.5)
            c_fc += pull * (target - c_fc) + rng.normal(0, std * 0.05 * (1 - frac), c_fc.shape).astype(np.float32)
            for v in rest.values():
                if v.dim() == 2:
                    v.add_(torch.randn(v.shape, generator=g), alpha=std * 0.01 * (1 - t / T))
        state = {**embed, **rest}
        state.update({f"transformer.h.{b}.mlp.c_fc.weight": torch.from_numpy(c_fc[b]) for b in range(L)})
        state = {k: v.to(torch.bfloat16).contiguous() for k, v in state.items()}
        save_file(state, str(out / step_name(t, shape)), metadata={"step": str(t * shape.every)})
        if log and (t % 20 == 0 or t == T - 1):
            print(f"  reference: wrote {t + 1}/{T} checkpoints", file=sys.stderr)
    manifest.write_text(json.dumps(wanted))
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="folder for the checkpoints")
    p.add_argument("--quick", action="store_true", help="CI scale: 16 blocks, width 64, 24 checkpoints")
    p.add_argument("--first", type=int, default=None, metavar="N", help="write only the first N checkpoints (the same "
                   "files as the whole series' first N; for benchmarks on a small disk)")
    a = p.parse_args(argv)
    make(a.out, QUICK if a.quick else FULL, first=a.first)


if __name__ == "__main__":
    main()
