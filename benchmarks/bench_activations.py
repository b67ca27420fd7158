"""Activation films of a Llama-shaped model: time per checkpoint against the bare read, peak GPU memory,
and the CLI end to end.

Makes a series of random-init checkpoints (``save_pretrained``: config.json + one model.safetensors;
each one the previous plus a small random step, like a drifting training run), then runs the activation
pass with its steps timed, the projection and the film, and (``--cli``) the same film through
``layerfilm render`` in a fresh process, and prints a table:

    python benchmarks/bench_activations.py /tmp/bench_act --device cuda             # ~1.1B params (TinyLlama shape), 10 ckpts
    python benchmarks/bench_activations.py /tmp/bench_act --shape 7b --checkpoints 3 --device cuda --cli --clean
    python benchmarks/bench_activations.py /tmp/bench_act --shape 100m --checkpoints 3 --device cpu --save-dtype float32
    python benchmarks/bench_activations.py /tmp/bench_act_tiny --shape tiny --device cpu   # a quick check
    python benchmarks/bench_activations.py /tmp/bench_act --checkpoints 16 --device cuda --devices 1,2,4,8 --cold

``--devices 1,2,4,8`` prints the scaling table instead (issue 17): the whole activation pass (build the
models, load + probe every checkpoint, frames back in order) on 1, 2, 4 and 8 devices (GPUs 0..k-1 with
--device cuda; k CPU workers standing in for devices with --device cpu), its wall time, the speed-up
over the first count, the checkpoint bytes read per second, and whether the frames and statistics
equal the first count's bit for bit. Beside it, what may limit the scaling: the disk's cold read
rate (one checkpoint read after dropping its pages with posix_fadvise DONTNEED) and this host's
memory copy bandwidth (one thread, and one per device count). ``--cold`` drops the checkpoints' pages
before every timed pass (a first run's reads from disk); without it the page cache holds them after
the first pass (if they fit).

References. Time: ``safetensors.torch.load_file(..., device=...)`` of the same files (reading the
weights onto the device, nothing else; the median of up to three checkpoints, after one warm-up read).
The activation pass is timed from the first checkpoint's read to the last probe's end (the first read
is not hidden behind a probe; the others are read in a background thread) and divided by the number of
checkpoints. The CLI is compared with T x the bare read + the projection + the film measured here.
Memory: the model's own bytes (the promise is one model + one probe batch).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from layerfilm.errors import LayerfilmError  # noqa: E402
from layerfilm.io.scan import scan  # noqa: E402
from layerfilm.points import activations  # noqa: E402
from layerfilm.points.act_stats import ActivationStats  # noqa: E402
from layerfilm.points.activations import ActivationSpec, WeightLoader, match_keys, resolve_device  # noqa: E402

PASS = sys.modules["layerfilm.points.activations.passes"]  # the module whose build_model and run_probe are timed
SHAPES = {  # Llama shapes: TinyLlama-1.1B, Llama-2-7B, a ~100M one for the CPU, and a tiny one for a check
    "1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
               num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048),
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096),
    "100m": dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
                 num_key_value_heads=12, vocab_size=8000, max_position_embeddings=1024),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=256, max_position_embeddings=256),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def save_tokenizer(folders: list[Path], vocab: int) -> None:
    """A byte-level BPE tokenizer (trained on the bundled probe text, at most ``vocab`` ids) saved into each
    folder as ``save_pretrained`` writes one, as the Trainer saves it beside every checkpoint."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator([activations.DEFAULT_PROBE.read_text()], trainers.BpeTrainer(
        vocab_size=min(vocab, 2000), special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>")
    for f in folders:
        tok.save_pretrained(f)


def make_series(folder: Path, shape: str, n: int, device: torch.device, dtype: torch.dtype) -> tuple[int, float]:
    """n checkpoints checkpoint-0, -100, ... in ``dtype`` (one file each); returns (parameters, seconds)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    t0 = time.perf_counter()
    config = LlamaConfig(**SHAPES[shape])
    config.dtype = dtype
    with torch.device(device), activations.default_dtype(dtype):
        model = AutoModelForCausalLM.from_config(config)
    params = sum(p.numel() for p in model.parameters())
    if len(list(folder.glob("checkpoint-*/config.json"))) != n:
        shutil.rmtree(folder, ignore_errors=True)
        g = torch.Generator(device).manual_seed(0)
        with torch.no_grad():
            for k in range(n):
                if k:
                    for p in model.parameters():
                        p.add_(torch.randn(p.shape, generator=g, device=device, dtype=p.dtype), alpha=2e-3)
                model.save_pretrained(folder / f"checkpoint-{k * 100}", max_shard_size="1000GB")  # one file
        os.sync()  # no write-back running under the timed reads
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return params, time.perf_counter() - t0


class Timed:
    """Replaces ``owner.name`` with a wrapper recording each call's (start, end) wall times."""

    def __init__(self, owner, name: str) -> None:
        self.owner, self.name, self.orig = owner, name, getattr(owner, name)
        self.calls: list[tuple[float, float]] = []
        self.last_args: tuple = ()

        def timed(*a, **k):
            self.last_args = a
            t = time.perf_counter()
            try:
                return self.orig(*a, **k)
            finally:
                self.calls.append((t, time.perf_counter()))

        setattr(owner, name, timed)

    def restore(self) -> None:
        setattr(self.owner, self.name, self.orig)

    def mean(self) -> float:
        return float(np.mean([b - a for a, b in self.calls])) if self.calls else float("nan")

    def total(self) -> float:
        return float(sum(b - a for a, b in self.calls))


def bare_reads(folders: list[Path], device: torch.device, into: dict | None = None) -> float:
    """Median seconds of ``load_file(f, device)`` of every weight file of each of ``folders`` (after one
    warm-up read of the first); with ``into`` (name -> tensor), each tensor is also copied there, as
    ``load_state_dict`` would (on the CPU ``load_file`` maps the file and copies nothing)."""
    from safetensors.torch import load_file

    times = []
    for i, folder in enumerate([folders[0], *folders]):
        t = time.perf_counter()
        states = [load_file(str(f), device=str(device)) for f in sorted(folder.glob("*.safetensors"))]
        if into is not None:
            for state in states:
                for k, v in state.items():
                    into[k].copy_(v)
        sync(device)
        if i:
            times.append(time.perf_counter() - t)
        del states
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return float(np.median(times))


def same_as_load_file(loader: WeightLoader, folder: Path, device: torch.device) -> str:
    """Whether the model holds, after the pass, exactly the last checkpoint's weights as ``load_file`` reads
    them (converted to the model's dtype as ``load_state_dict`` would). The CPU's mapped views are released
    after each probe, so only a GPU's model can still be compared."""
    if device.type != "cuda":
        return "not checked on the CPU (its parameters view the file only during the probe)"
    from safetensors.torch import load_file

    want: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        want.update(load_file(str(f), device=str(device)))
    mapping = match_keys(list(loader.own), list(want), folder, loader.optional, loader.unused)
    same = all(torch.equal(loader.own[k], want[v].to(loader.own[k].dtype)) for k, v in mapping.items())
    return f"{'yes' if same else 'NO'} ({len(mapping)} tensors compared with torch.equal)"


def against_transformers(ckpt, spec: ActivationSpec, device: torch.device) -> str:
    """layerfilm's own Llama forward against transformers' LlamaForCausalLM: the same weights (``ckpt``, read
    with ``load_file``), the same probe and tracked tokens; whether the block outputs are bit-equal, and
    the largest difference relative to the largest value."""
    from safetensors.torch import load_file

    from layerfilm.points.activations import model as model_module

    state: dict[str, torch.Tensor] = {}
    for f in sorted(ckpt.path.glob("*.safetensors")):
        state.update(load_file(str(f), device=str(device)))
    outs, kinds = [], []
    native_shape = model_module.llama_shape
    for native in (True, False):
        model_module.llama_shape = native_shape if native else (lambda config: None)
        try:
            model = activations.build_model(spec, ckpt, device)
        finally:
            model_module.llama_shape = native_shape
        kinds.append(type(model).__name__)
        model.load_state_dict({k: v for k, v in state.items() if k in model.state_dict()})
        _, blocks = activations.find_blocks(model, None)
        ids = activations.probe_ids(spec, activations.model_folder(ckpt), model_module.model_context(model),
                                    model_module.embedding_rows(model))
        picks = np.linspace(0, ids.size - 1, min(spec.points, ids.size)).astype(np.int64)
        with torch.inference_mode():
            outs.append(PASS.run_probe(model, blocks, torch.as_tensor(ids, device=device), picks, spec.batch_size,
                                       spec.near_zero)[0])
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    a, b = outs
    rel = float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))
    return (f"{kinds[0]} vs {kinds[1]} on {ckpt.path.name}: block outputs at {a.shape[1]} tokens x {a.shape[0]} blocks "
            f"{'bit-equal' if np.array_equal(a, b) else 'NOT bit-equal'}; max |diff| / max |value| = {rel:.3g}")


def profile_cli(args: list[str]) -> None:
    """``layerfilm ARGS`` in this fresh process with its stages timed: one ``PROFILE {json}`` line on stdout.
    CUDA is started first, on its own clock, so that its cost is not hidden in whichever stage touches it."""
    started = time.time()  # after the interpreter's start and this module's imports (torch, layerfilm)
    import layerfilm.cli.commands as cli
    import layerfilm.film as film
    import layerfilm.study as run

    imports = time.time() - started
    t_cuda = 0.0
    if "cuda" in args:
        t = time.perf_counter()
        torch.empty(1, device="cuda")
        torch.cuda.synchronize()
        t_cuda = time.perf_counter() - t
    timers = {"check_fits": Timed(PASS, "check_fits"), "build": Timed(PASS, "build_model"), "ids": Timed(PASS, "probe_ids"),
              "extract": Timed(activations, "extract"), "probe": Timed(PASS, "run_probe"),
              "projection": Timed(run, "project"), "film": Timed(film, "write_film")}
    t = time.perf_counter()
    code = cli.main(args)
    t_main = time.perf_counter() - t
    prof = {"started": started, "imports": imports, "cuda_init": t_cuda, "main": t_main, "code": code,
            "transformers": "transformers.modeling_utils" in sys.modules}  # a Llama config runs layerfilm's forward
    print("PROFILE " + json.dumps({**prof, **{k: w.total() for k, w in timers.items()}}), flush=True)
    sys.exit(code)


def print_cli_profile(prof: dict, cli: float, T: int, t_ref: float) -> None:
    """Where the CLI's time goes, beyond T x the bare read."""
    loop = prof["extract"] - prof["build"] - prof["check_fits"] - prof["ids"]
    parts = [("python start + imports (torch, layerfilm)", prof["imports"]),
             ("CUDA init (first allocation; 0 on the CPU)", prof["cuda_init"]),
             ("activations: free-memory check (header)", prof["check_fits"]),
             ("activations: build the model", prof["build"]),
             ("activations: probe token ids (tokenizer files: transformers' AutoTokenizer)", prof["ids"]),
             (f"activations: load + probe ({T} ckpts; {T} x bare read = {T * t_ref:.2f} s)", loop),
             ("projection", prof["projection"]),
             ("film (render + encode)", prof["film"])]
    other = cli - sum(v for _, v in parts)
    print(f"CLI profile (a fresh process; the same command with its stages timed): {cli:.2f} s; transformers' "
          f"modelling code imported: {'yes' if prof['transformers'] else 'no'}")
    for name, v in [*parts, ("other (scan, options, cache, exit)", other)]:
        print(f"  {name:<66} {v:>8.2f} s")
    beyond = cli - T * t_ref
    print(f"  beyond {T} x bare read: {beyond:.2f} s = load + probe beyond the reads {loop - T * t_ref:.2f} + start/imports "
          f"{prof['imports']:.2f} + CUDA {prof['cuda_init']:.2f} + build {prof['build']:.2f} + ids {prof['ids']:.2f} + "
          f"projection {prof['projection']:.2f} + film {prof['film']:.2f} + other {other + prof['check_fits']:.2f}")


def drop_pages(files: list[Path]) -> None:
    """Ask the kernel to forget ``files``' cached pages (posix_fadvise DONTNEED: no root needed): the next
    read comes from the disk."""
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def cold_read_rate(files: list[Path]) -> float:
    """GiB/s of reading ``files`` from the disk (their pages dropped first), 64 MiB at a time, one thread."""
    drop_pages(files)
    buf, total = bytearray(64 * 2**20), 0
    t = time.perf_counter()
    for f in files:
        with open(f, "rb", buffering=0) as fh:
            while n := fh.readinto(buf):
                total += n
    return total / (time.perf_counter() - t) / 2**30


def copy_bandwidth(threads: int, nbytes: int = 2**30) -> float:
    """GiB/s of host memory copies (``np.copyto`` of 1 GiB, read + write counted once) by ``threads`` threads at once."""
    from concurrent.futures import ThreadPoolExecutor

    pairs = [(np.ones(nbytes // threads, np.uint8), np.empty(nbytes // threads, np.uint8)) for _ in range(threads)]
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda p: np.copyto(p[1], p[0]), pairs))  # warm-up: pages touched
        t = time.perf_counter()
        list(pool.map(lambda p: np.copyto(p[1], p[0]), pairs))
    return nbytes / (time.perf_counter() - t) / 2**30


def scaling(series, spec: ActivationSpec, device: torch.device, counts: list[int], work: Path, cold: bool) -> None:
    """The activation pass on each device count of ``counts``: wall time, speed-up, read rate, same bits."""
    from dataclasses import replace

    files = [f for c in series.checkpoints for f in sorted(c.path.glob("*.safetensors"))]
    total = sum(f.stat().st_size for f in files)
    T = len(series)
    rows, first = [], None
    for k in counts:
        names = tuple(f"cuda:{i}" for i in range(k)) if device.type == "cuda" else ("cpu",) * k
        store = Path(tempfile.mkdtemp(prefix=f"bench-devices-{k}-", dir=work))
        if cold:
            drop_pages(files)
        t = time.perf_counter()
        feats = activations.extract(series, replace(spec, devices=names), store, progress=False)
        wall = time.perf_counter() - t
        frames = [feats.store[i] for i in range(len(feats.store))]
        same = "-" if first is None else str(all(np.array_equal(x, y) for x, y in zip(first[0], frames)) and all(
            np.array_equal(first[1][n], feats.stats[n], equal_nan=True) for n in feats.stats))
        if first is None:
            first = (frames, feats.stats, wall)
        rows.append((k, wall, wall / T, first[2] / wall, total / wall / 2**30, same))
        shutil.rmtree(store, ignore_errors=True)
    disk = cold_read_rate(files[-1:])
    print()
    print(f"command: python benchmarks/bench_activations.py {' '.join(sys.argv[1:])}")
    where = torch.cuda.get_device_name() if device.type == "cuda" else "CPU workers standing in for devices"
    print(f"device: {where}; {os.cpu_count()} cores; torch {torch.__version__}; {'cold' if cold else 'warm'} page cache")
    print(f"inputs: {T} checkpoints, {total / 2**30:.2f} GiB in all; {feats.name}, model in {spec.dtype}")
    print(f"{'devices':>7} {'wall s':>8} {'per ckpt s':>10} {'speed-up':>8} {'read GiB/s':>10} {'same bits':>9}")
    for k, wall, per, up, rate, same in rows:
        print(f"{k:>7} {wall:>8.2f} {per:>10.3f} {up:>7.2f}x {rate:>10.2f} {same:>9}")
    bw = {k: copy_bandwidth(k) for k in sorted({1, *counts})}
    print(f"limits: disk cold read {disk:.2f} GiB/s (one file, one thread); host memory copy "
          + ", ".join(f"{v:.1f} GiB/s with {k} thread(s)" for k, v in bw.items()))
    print("a count whose read rate nears the disk's cold rate (with --cold) or the copy bandwidth is limited by it; "
          "times include building the model once per device (and, for k > 1, starting the worker processes)")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--profile-cli"]:
        profile_cli(argv[1:])
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("work", type=Path, help="folder for the checkpoints and the film")
    p.add_argument("--shape", choices=SHAPES, default="1b")
    p.add_argument("--checkpoints", type=int, default=10)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="bfloat16", help="the model's dtype in the pass")
    p.add_argument("--save-dtype", default=None, help="dtype of the checkpoints on disk (default: --dtype)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--points", type=int, default=512)
    p.add_argument("--probe", default=None, help="probe file (text, or .pt/.npy token ids; default: the bundled text)")
    p.add_argument("--no-film", action="store_true", help="stop after the features (no projection, no film)")
    p.add_argument("--cli", action="store_true", help="also time `layerfilm render` end to end in a fresh process")
    p.add_argument("--clean", action="store_true", help="delete the checkpoints at the end")
    p.add_argument("--devices", default=None, metavar="COUNTS", help="print the scaling table over these device counts, "
                   "e.g. 1,2,4,8 (GPUs 0..k-1 with --device cuda, k CPU workers with --device cpu)")
    p.add_argument("--cold", action="store_true", help="--devices: drop the checkpoints' pages before every timed pass")
    p.add_argument("--tokenizer", action="store_true", help="save a tokenizer (byte-level BPE) beside every checkpoint, "
                   "as the Trainer does: the probe text is then tokenised by it (transformers' AutoTokenizer)")
    p.add_argument("--against-transformers", action="store_true", help="also compare layerfilm's Llama forward with "
                   "transformers' on the last checkpoint (bit-equal or not, largest difference)")
    a = p.parse_args(argv)
    spec = ActivationSpec(points=a.points, probe=a.probe, seq_len=a.seq_len, batch_size=a.batch_size, device=a.device,
                          dtype=a.dtype)
    device = resolve_device(a.device)
    dtype = activations.DTYPES[a.dtype]
    save_dtype = activations.DTYPES[a.save_dtype or a.dtype]
    folder = a.work / f"llama-{a.shape}-{a.save_dtype or a.dtype}"
    params, t_make = make_series(folder, a.shape, a.checkpoints, device, save_dtype)
    for f in folder.glob("checkpoint-*/tokenizer*.json"):
        f.unlink()  # made by this bench (save_tokenizer): present only with --tokenizer
    if a.tokenizer:
        if SHAPES[a.shape]["vocab_size"] < 300:
            sys.exit(f"--tokenizer: the {a.shape} shape's vocabulary is smaller than a byte-level BPE's (300 ids)")
        save_tokenizer(sorted(folder.glob("checkpoint-*")), SHAPES[a.shape]["vocab_size"])
    print(f"checkpoints: {a.checkpoints} x {params / 1e6:.1f} M params ({save_dtype}) in {folder}, made in {t_make:.1f} s",
          flush=True)
    series = scan(folder)
    T = len(series)
    if a.devices:
        scaling(series, spec, device, [int(k) for k in a.devices.split(",")], a.work, a.cold)
        if a.clean:
            shutil.rmtree(folder, ignore_errors=True)
        return
    if device.type == "cuda":  # the reference is timed in a warm context: CUDA's start is not the read's cost
        torch.empty(1, device=device)
        sync(device)
    t_ref = bare_reads([c.path for c in series.checkpoints[-3:]], device)
    file_bytes = sum(f.stat().st_size for f in series.checkpoints[-1].path.glob("*.safetensors"))
    warm = " in a warm CUDA context (after CUDA init)" if device.type == "cuda" else ""
    print(f"bare load_file to {device}: {t_ref:.3f} s ({file_bytes / t_ref / 2**30:.2f} GiB/s; median of "
          f"{min(3, T)} checkpoints, timed after one warm-up read{warm})", flush=True)
    t_copy = float("nan")
    if device.type == "cpu":  # load_file maps the file: the bytes are read only when used
        from safetensors.torch import load_file

        into = {k: v.clone() for k, v in load_file(str(series.checkpoints[0].path / "model.safetensors")).items()}
        t_copy = bare_reads([c.path for c in series.checkpoints[-3:]], device, into)
        del into
        print(f"load_file + copy into preallocated tensors (load_state_dict's work): {t_copy:.3f} s", flush=True)
    model_bytes = params * dtype.itemsize  # transformers' whole model in --dtype (layerfilm's Llama: no LM head)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    # the activation pass, with its steps timed
    build = Timed(PASS, "build_model")
    stage, apply, probe = Timed(WeightLoader, "stage"), Timed(WeightLoader, "apply"), Timed(PASS, "run_probe")
    work = Path(tempfile.mkdtemp(prefix="bench-act-", dir=a.work))
    try:
        t = time.perf_counter()
        feats = activations.extract(series, spec, work / "store", progress=False)
        t_extract = time.perf_counter() - t
    finally:
        for w in (build, stage, apply, probe):
            w.restore()
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else float("nan")
    loader = apply.last_args[0] if apply.last_args else None
    ring_bytes = loader.host_bytes if loader is not None else 0
    exact = same_as_load_file(loader, series.checkpoints[-1].path, device) if loader is not None else "not checked"
    del loader
    apply.last_args = stage.last_args = ()  # the model and the ring go, before the CLI's process needs the memory
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    getattr(torch._C, "_host_emptyCache", lambda: None)()  # pinned chunks back to the system
    loop = probe.calls[-1][1] - stage.calls[0][0]
    per_ckpt = loop / T
    ends = [b for _, b in probe.calls]
    each = [ends[0] - stage.calls[0][0], *np.diff(ends)]  # checkpoint k: from the end of probe k-1 to the end of probe k
    steady = float(np.mean(each[1:])) if T > 1 else float("nan")
    L, N, D = feats.store[0].shape
    rows = [("make checkpoints (save_pretrained)", t_make, t_make / T),
            ("activations: total (build model + all ckpts)", t_extract, t_extract / T),
            ("  build the model", build.calls[0][1] - build.calls[0][0], float("nan")),
            ("  load + probe, first read to last probe", loop, per_ckpt),
            ("    the first checkpoint (first read to its probe's end)", each[0], each[0]),
            ("    after the first (between probe ends)", float("nan"), steady),
            ("    stage: check + read to host (background)", float("nan"), stage.mean()),
            ("    apply: into the parameters (main)", float("nan"), apply.mean()),
            ("    forward probe + hooks + stats", float("nan"), probe.mean()),
            ("reference: safetensors load_file to device", t_ref * T, t_ref),
            ("reference: load_file + copy into tensors (CPU)", t_copy * T, t_copy)]
    t_rest = 0.0
    if not a.no_film:
        from layerfilm.draw.raster import Style
        from layerfilm.film import write_film
        from layerfilm.film_options import FilmOptions
        from layerfilm.projection import project

        t = time.perf_counter()
        traj = project(feats, "pca", progress=False)
        t_proj = time.perf_counter() - t
        rows.append(("projection (aligned PCA)", t_proj, t_proj / T))
        try:
            t = time.perf_counter()
            n = write_film(traj, a.work / "film.webm", FilmOptions(style=Style(1280, 720)), progress=False)
            t_film = time.perf_counter() - t
            rows.append((f"render + encode film.webm ({n} frames)", t_film, t_film / T))
            t_rest = t_proj + t_film
        except (ImportError, LayerfilmError) as e:  # no imageio-ffmpeg / no VP9 where this runs
            rows.append((f"render + encode: skipped ({type(e).__name__})", float("nan"), float("nan")))
            t_rest = float("nan")
    cli, prof = None, None
    if a.cli:
        out = a.work / "cli.webm"
        out.unlink(missing_ok=True)
        cmd = ["render", str(folder), "--features", "activations", "--device",
               device.type, "--dtype", a.dtype, "--no-cache", "--out", str(out), "--size", "1280x720", "--quiet",
               "--points", str(a.points), "--seq-len", str(a.seq_len), "--batch-size", str(a.batch_size),
               *(["--probe", a.probe] if a.probe else [])]
        t, spawned = time.perf_counter(), time.time()
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--profile-cli", *cmd], cwd=ROOT,
                              capture_output=True, text=True)
        cli = time.perf_counter() - t
        rows.append((f"CLI end to end (exit {proc.returncode})", cli, cli / T))
        if proc.returncode:
            print(proc.stderr[-2000:])
        line = next((x for x in proc.stdout.splitlines() if x.startswith("PROFILE ")), None)
        prof = json.loads(line[8:]) if line else None
        if prof is not None:
            prof["imports"] += prof.pop("started") - spawned
    print()
    print(f"command: python benchmarks/bench_activations.py {' '.join(argv)}")
    print(f"device: {torch.cuda.get_device_name() if device.type == 'cuda' else f'cpu ({os.cpu_count()} cores)'}; "
          f"torch {torch.__version__}")
    print(f"inputs: Llama {a.shape} ({params / 1e6:.1f} M params, {L} blocks, width {D}), {T} checkpoints of "
          f"{file_bytes / 2**30:.2f} GiB ({save_dtype}), model in {a.dtype}, {feats.name}, batch {a.batch_size}")
    print(f"{'stage':<56} {'total s':>9} {'per ckpt s':>11}")
    for name, total, per in rows:
        print(f"{name:<56} {total:>9.2f} {per:>11.3f}")
    print(f"load + probe per checkpoint: {per_ckpt:.3f} s = {per_ckpt / t_ref:.2f}x the bare load_file "
          f"(steady state {steady / t_ref:.2f}x; apply alone {apply.mean() / t_ref:.2f}x)")
    if device.type == "cpu":
        load = apply.mean() + stage.mean()
        print(f"load alone (stage + apply) per checkpoint: {load:.3f} s = {load / t_ref:.2f}x load_file, "
              f"{load / t_copy:.2f}x load_file + copy")
    print(f"first checkpoint: {each[0]:.3f} s = {each[0] / t_ref:.2f}x the bare read; after the first: {steady:.3f} s = "
          f"{steady / t_ref:.2f}x; without the first, load + probe over T-1: {sum(each[1:]) / max(T - 1, 1):.3f} s")
    print("  per checkpoint (probe end to probe end), s: " + " ".join(f"{x:.3f}" for x in each))
    for w in (stage, apply, probe):  # the first checkpoint pays one-time costs (host chunks, kernels' first use)
        print(f"  {w.name} per call, s: " + " ".join(f"{b - a:.3f}" for a, b in w.calls))
    if device.type == "cuda":
        print(f"host memory of the loader's ring: {ring_bytes / 2**20:.0f} MiB (pinned)")
    print(f"the model's weights after the pass equal load_file's of the last checkpoint: {exact}")
    if cli is not None:
        ref = T * t_ref + t_rest
        if a.no_film:  # the CLI makes a film; this run did not time one
            print(f"CLI end to end: {cli:.1f} s (no ratio: --no-film timed no projection or film here)")
        else:
            print(f"CLI end to end: {cli:.1f} s = {cli / ref:.2f}x ({T} x bare read + projection + film = {ref:.1f} s)")
        if prof is not None:
            print_cli_profile(prof, cli, T, t_ref)
    if device.type == "cuda":
        print(f"GPU memory peak: {peak / 2**30:.2f} GiB = {peak / model_bytes:.3f}x the model's {model_bytes / 2**30:.2f} GiB "
              f"(+{(peak - model_bytes) / 2**20:.0f} MiB)")
    if a.against_transformers:
        print(against_transformers(series.checkpoints[-1], spec, device))
    st = ActivationStats.from_arrays(feats.steps, feats.blocks, feats.stats)
    print(st.table())
    shutil.rmtree(work, ignore_errors=True)
    if a.clean:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
