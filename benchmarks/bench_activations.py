"""Activation films of a Llama-shaped model: time per checkpoint and peak GPU memory, end to end.

Makes a series of random-init checkpoints (``save_pretrained``: config.json + model.safetensors; each
one the previous plus a small random step, like a drifting training run), then runs the activation
film stage by stage and prints a table:

    python benchmarks/bench_activations.py /tmp/bench_act                  # ~1.1B params (TinyLlama shape), 10 ckpts
    python benchmarks/bench_activations.py /tmp/bench_act_tiny --shape tiny --device cpu   # a quick check

Reference for the time per checkpoint: ``safetensors.torch.load_file(..., device=...)`` of the same file
(reading the weights onto the device, nothing else). Reference for memory: the model's own bytes
(the promise is one model + one batch).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from layerfilm.errors import LayerfilmError  # noqa: E402
from layerfilm.features import activations  # noqa: E402
from layerfilm.features.act_stats import ActivationStats  # noqa: E402
from layerfilm.features.activations import ActivationSpec, resolve_device  # noqa: E402
from layerfilm.scan import scan  # noqa: E402

SHAPES = {  # TinyLlama-1.1B's shape, and a tiny one for a CPU check
    "1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
               num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=256, max_position_embeddings=256),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def make_series(folder: Path, shape: str, n: int, device: torch.device, dtype: torch.dtype) -> tuple[int, float]:
    """n checkpoints checkpoint-0, -100, ...; returns (parameters, seconds)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    t0 = time.perf_counter()
    config = LlamaConfig(**SHAPES[shape])
    config.dtype = dtype
    with torch.device(device), activations.default_dtype(dtype):
        model = AutoModelForCausalLM.from_config(config)
    params = sum(p.numel() for p in model.parameters())
    if len(list(folder.glob("checkpoint-*"))) != n:
        shutil.rmtree(folder, ignore_errors=True)
        g = torch.Generator(device).manual_seed(0)
        with torch.no_grad():
            for k in range(n):
                if k:
                    for p in model.parameters():
                        p.add_(torch.randn(p.shape, generator=g, device=device, dtype=p.dtype), alpha=2e-3)
                model.save_pretrained(folder / f"checkpoint-{k * 100}")
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return params, time.perf_counter() - t0


class Timer:
    """Wraps a function and records each call's (synchronised) wall time."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.times = device, []

    def wrap(self, fn):
        def timed(*a, **k):
            t = time.perf_counter()
            out = fn(*a, **k)
            sync(self.device)
            self.times.append(time.perf_counter() - t)
            return out

        return timed


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("work", type=Path, help="folder for the checkpoints and the film")
    p.add_argument("--shape", choices=SHAPES, default="1b")
    p.add_argument("--checkpoints", type=int, default=10)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--points", type=int, default=512)
    p.add_argument("--no-film", action="store_true", help="stop after the features (no projection, no film)")
    a = p.parse_args(argv)
    spec = ActivationSpec(points=a.points, seq_len=a.seq_len, batch_size=a.batch_size, device=a.device, dtype=a.dtype)
    device = resolve_device(a.device)
    dtype = activations.DTYPES[a.dtype]
    folder = a.work / f"llama-{a.shape}"
    params, t_make = make_series(folder, a.shape, a.checkpoints, device, dtype)
    print(f"checkpoints: {a.checkpoints} x {params / 1e6:.1f} M params ({a.dtype}) in {folder}, made in {t_make:.1f} s",
          flush=True)
    series = scan(folder)
    ckpt_file = series.checkpoints[-1].path / "model.safetensors"

    # reference: the bare read of one checkpoint onto the device
    from safetensors.torch import load_file

    t = time.perf_counter()
    state = load_file(str(ckpt_file), device=str(device))
    sync(device)
    t_ref = time.perf_counter() - t
    model_bytes = params * dtype.itemsize  # the model as it sits on the device, in --dtype
    del state
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()

    # the activation stage, with its two inner steps timed
    load_t, probe_t = Timer(device), Timer(device)
    orig_load, orig_probe = activations.WeightLoader.load, activations.run_probe
    activations.WeightLoader.load = load_t.wrap(orig_load)
    activations.run_probe = probe_t.wrap(orig_probe)
    work = Path(tempfile.mkdtemp(prefix="bench-act-", dir=a.work))
    try:
        t = time.perf_counter()
        feats = activations.extract(series, spec, work / "store", progress=False)
        t_extract = time.perf_counter() - t
    finally:
        activations.WeightLoader.load, activations.run_probe = orig_load, orig_probe
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else float("nan")
    T = len(series)
    L, N, D = feats.store[0].shape
    rows = [("make checkpoints (save_pretrained)", t_make, t_make / T),
            ("activations: total (build model + all ckpts)", t_extract, t_extract / T),
            ("  load weights into the model", sum(load_t.times), np.mean(load_t.times)),
            ("  forward probe + hooks + stats", sum(probe_t.times), np.mean(probe_t.times)),
            ("reference: safetensors load_file to device", t_ref, t_ref)]
    if not a.no_film:
        from layerfilm.film import FilmOptions, write_film
        from layerfilm.projection import project
        from layerfilm.raster import Style

        t = time.perf_counter()
        traj = project(feats, "pca", progress=False)
        rows.append(("projection (aligned PCA)", time.perf_counter() - t, (time.perf_counter() - t) / T))
        print(f"projection done in {rows[-1][1]:.1f} s", flush=True)
        try:
            t = time.perf_counter()
            n = write_film(traj, a.work / "film.webm", FilmOptions(style=Style(1280, 720)), progress=False)
            rows.append((f"render + encode film.webm ({n} frames)", time.perf_counter() - t, (time.perf_counter() - t) / T))
        except (ImportError, LayerfilmError) as e:  # no imageio-ffmpeg / no VP9 where this runs
            rows.append((f"render + encode: skipped ({type(e).__name__})", float("nan"), float("nan")))
    print()
    print(f"command: python benchmarks/bench_activations.py {' '.join(sys.argv[1:] if argv is None else argv)}")
    print(f"device: {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}; torch {torch.__version__}")
    print(f"inputs: Llama {a.shape} ({params / 1e6:.1f} M params, {L} blocks, width {D}), {T} checkpoints, {a.dtype}, "
          f"{feats.name}, batch {a.batch_size}")
    print(f"{'stage':<48} {'total s':>9} {'per ckpt s':>11}")
    for name, total, per in rows:
        print(f"{name:<48} {total:>9.2f} {per:>11.3f}")
    per_ckpt = np.mean(load_t.times) + np.mean(probe_t.times)
    print(f"time per checkpoint (load + forward): {per_ckpt:.3f} s = {per_ckpt / t_ref:.2f}x the bare load_file reference")
    if device.type == "cuda":
        print(f"GPU memory peak: {peak / 2**30:.2f} GiB = {peak / model_bytes:.2f}x the model's {model_bytes / 2**30:.2f} GiB")
    st = ActivationStats.from_arrays(feats.steps, feats.blocks, feats.stats)
    print(st.table())
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
