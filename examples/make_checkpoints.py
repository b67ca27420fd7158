"""Train a small decoder-only transformer on real text and save a checkpoint series.

The corpus is the Python standard library's own source files (always on disk, no download).
The model is nanoGPT-shaped (pre-norm blocks, fused QKV ``c_attn``, MLP ``c_fc``/``c_proj``,
nn.Linear weights stored [out, in]); parameter names follow nanoGPT: ``transformer.h.N.mlp.c_fc.weight``.
Checkpoints are ``step_000000.safetensors``, ``step_000025.safetensors``, ... including step 0.

    python examples/make_checkpoints.py outputs/ckpts            # 8 blocks, 400 steps, ~67 s of CPU (one thread)
    python examples/make_checkpoints.py /tmp/c --steps 40 --every 10 --layers 4 --width 32

Each file's metadata holds its config, so ``make_model`` can rebuild the model for activation films:

    layerfilm render outputs/ckpts --features activations --model examples/make_checkpoints.py:make_model --out outputs/act.webm
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import sysconfig
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file


@dataclass
class Config:
    n_layer: int = 8  # decoder blocks
    d_model: int = 64  # residual width
    n_head: int = 4
    context: int = 64  # tokens per training sequence
    vocab: int = 256  # bytes


class Block(nn.Module):
    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.d_model)
        self.attn = nn.Module()
        self.attn.c_attn = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.attn.c_proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.ln_2 = nn.LayerNorm(cfg.d_model)
        self.mlp = nn.Module()
        self.mlp.c_fc = nn.Linear(cfg.d_model, 4 * cfg.d_model)
        self.mlp.c_proj = nn.Linear(4 * cfg.d_model, cfg.d_model)
        self.n_head = cfg.n_head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.attn.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
        x = x + self.attn.c_proj(y)
        return x + self.mlp.c_proj(F.gelu(self.mlp.c_fc(self.ln_2(x))))


class GPT(nn.Module):
    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.config = cfg  # read by layerfilm for the context length
        self.transformer = nn.Module()
        self.transformer.wte = nn.Embedding(cfg.vocab, cfg.d_model)
        self.transformer.wpe = nn.Embedding(cfg.context, cfg.d_model)
        self.transformer.h = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.transformer.ln_f = nn.LayerNorm(cfg.d_model)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab, bias=False)
        for name, p in self.named_parameters():  # GPT-2 init; residual projections scaled by depth
            if name.endswith("weight") and p.dim() == 2:
                std = 0.02 / math.sqrt(2 * cfg.n_layer) if name.endswith("c_proj.weight") else 0.02
                nn.init.normal_(p, 0.0, std)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)
        for block in self.transformer.h:
            x = block(x)
        return self.lm_head(self.transformer.ln_f(x))


def make_model(path: str | Path) -> GPT:
    """The model a checkpoint written by ``train`` belongs to (its config is in the file's metadata)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return GPT(Config(**json.loads(f.metadata()["config"])))


def corpus(max_bytes: int = 2_000_000) -> torch.Tensor:
    """Bytes of the standard library's .py files (sorted, so the corpus is the same every run)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    chunks, total = [], 0
    for path in sorted(root.glob("*.py")):
        data = path.read_bytes()
        chunks.append(data)
        total += len(data)
        if total >= max_bytes:
            break
    return torch.frombuffer(bytearray(b"".join(chunks)[:max_bytes]), dtype=torch.uint8).long()


def train(out: str | Path, steps: int = 400, every: int = 25, cfg: Config = Config(), batch: int = 16,  # noqa: B008 (never mutated)
          lr: float = 3e-3, seed: int = 0, log: bool = True, metrics: bool = False) -> list[Path]:
    """Train and save ``step_%06d.safetensors`` every ``every`` steps (step 0 included); returns the paths.
    ``metrics``: also write each step's loss and learning rate to ``metrics.csv`` beside them, as Lightning's
    CSVLogger does (``step,train_loss,lr-AdamW``): the film draws them under its timeline."""
    torch.manual_seed(seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = corpus()
    model = GPT(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(seed)
    saved: list[Path] = []
    t0 = time.perf_counter()
    loss = torch.tensor(float("nan"))  # no batch before step 0 (step 0 is not logged)
    rows: list[str] = []
    for step in range(steps + 1):  # ``step`` counts the updates already made: the file step_N holds N updates
        if step % every == 0 or step == steps:
            path = out / f"step_{step:06d}.safetensors"
            state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
            save_file(state, str(path), metadata={"step": str(step), "config": json.dumps(asdict(cfg))})
            saved.append(path)
        if log and step and (step % 50 == 0 or step == steps):  # the loss of the batch that made this step's weights
            print(f"step {step:5d}  loss {loss.item():.3f}  {time.perf_counter() - t0:5.1f} s", file=sys.stderr)
        if step == steps:
            break
        ix = torch.randint(len(data) - cfg.context - 1, (batch,), generator=gen)
        x = torch.stack([data[i : i + cfg.context] for i in ix])
        y = torch.stack([data[i + 1 : i + cfg.context + 1] for i in ix])
        for g in opt.param_groups:  # warmup then cosine decay
            g["lr"] = lr * min(1.0, (step + 1) / 30) * 0.5 * (1 + math.cos(math.pi * step / steps))
        loss = F.cross_entropy(model(x).view(-1, cfg.vocab), y.view(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if metrics:  # the loss of the batch of update step + 1, at the lr it used
            rows.append(f"{step + 1},{loss.item():.6g},{opt.param_groups[0]['lr']:.6g}")
    if metrics:
        (out / "metrics.csv").write_text("step,train_loss,lr-AdamW\n" + "\n".join(rows) + "\n")
    return saved


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="folder for the checkpoints")
    p.add_argument("--steps", type=int, default=400, help="training steps (default 400)")
    p.add_argument("--every", type=int, default=25, help="save a checkpoint every N steps (default 25)")
    p.add_argument("--layers", type=int, default=8, help="decoder blocks (default 8)")
    p.add_argument("--width", type=int, default=64, help="residual width (default 64)")
    p.add_argument("--batch", type=int, default=16, help="sequences per step (default 16)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initialisation and the batches (default 0)")
    a = p.parse_args(argv)
    # One thread: this model's matrices are too small for intra-op threads to pay for their
    # synchronisation, and on a shared machine spinning threads made training ~3x slower (measured).
    torch.set_num_threads(1)
    paths = train(a.out, a.steps, a.every, Config(n_layer=a.layers, d_model=a.width), a.batch,
                  seed=a.seed, metrics=True)
    print(f"saved {len(paths)} checkpoints in {a.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
