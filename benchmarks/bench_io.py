"""How much a render reads, and whether its memory stays flat as checkpoints grow.

1. Bytes read per checkpoint against the bytes of the tensors the film needs (one matrix per block),
   page cache cold: every file is dropped from the cache (fsync + posix_fadvise(POSIX_FADV_DONTNEED))
   before it is opened, and /proc/self/io read_bytes is read around opening it and reading the points.
   Target: <= 1.2x for safetensors. Also shown for torch .pt files (torch.load mmap=True).
2. Peak RSS reading 20 vs 80 checkpoints of the same model, for the reading stage (scan + Study.trajectories)
   and for a whole render to .webm: VmHWM of a fresh process, reset (/proc/self/clear_refs) after
   its imports so that it is the work's own peak. Target: RSS(80)/RSS(20) <= 1.2.

    python benchmarks/bench_io.py                       # 80 checkpoints, width 256, 8 blocks (~2 GB in a temp folder)
    python benchmarks/bench_io.py --width 128 --checkpoints 40

Each measurement runs in its own subprocess so that peak RSS and read_bytes belong to it alone.

3. ``--wide``: the targets of issue 12 at a real-ish width, through the CLI. A series of 16 Llama-style
   blocks x width 1024 x 12 bf16 safetensors checkpoints (q_proj, o_proj [1024, 1024], up_proj [4096, 1024]
   (the filmed matrix), down_proj [1024, 4096]; weights on a seeded random walk) is written, then each
   command runs as ``python -m layerfilm``-equivalent in a fresh process (a wrapper calling
   ``layerfilm.cli.commands.main`` that writes its own /proc/self/io ``rchar`` and VmHWM at exit; the same wrapper
   running ``--help`` is the baseline subtracted from rchar):
     a. ``render --no-cache``: rchar / (tracked rows + headers) <= 1.3
     b. ``stability --no-cache``: rchar / block-tensor bytes <= 1.15
     c. ``render``, ``stills``, ``report --film``, ``stability --json`` on one fresh cache: together
        (minus 4 baselines and the film's bytes read by report) / block-tensor bytes <= 1.3
   The table is printed and appended to benchmarks/RESULTS.md (``--no-record``: not appended).

    python benchmarks/bench_io.py --wide                         # series in /tmp/lf_wide (kept, reused)
    python benchmarks/bench_io.py --wide --engine dask --jobs 2  # the same commands on a Dask LocalCluster

   ``--wide --compare local:1,local:2,dask:2``: wall and CPU time of render and stability ``--no-cache`` under
   each engine and --jobs, interleaved (``--repeat``), ratio to the first. Targets (issue 13): on 2 cores
   ``--jobs 2`` no slower than ``--jobs 1`` (within 5%); a Dask LocalCluster of 2 workers <= 1.3x local.

4. ``--sparse DIR``: the same measurement of ``render --no-cache`` on a 70B-shaped sparse series written by
   benchmarks/make_sparse.py (first 3 checkpoints, then all), with $TMPDIR pointed at a fresh folder
   whose size is polled (scratch disk), and a cProfile of the 3-checkpoint run (top 10 cumulative).

    python benchmarks/make_sparse.py /tmp/lf70b && python benchmarks/bench_io.py --sparse /tmp/lf70b --profile

5. ``--ref DIR``: peak RSS and bytes of ``render --no-cache`` (12, 48 and all checkpoints) and ``stability
   --no-cache`` on the 128 x 179 reference (benchmarks/make_reference.py). Target: <= 1.5 GB each.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import struct
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
    model = mc.GPT(mc.Config(n_layer=layers, d_model=width, n_head=4))
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
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

    from layerfilm.io.formats import open_checkpoint
    from layerfilm.io.scan import scan
    from layerfilm.points.weights import WeightSpec, plan, read_points

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
    from layerfilm.draw.raster import Style
    from layerfilm.film_options import FilmOptions
    from layerfilm.io.scan import scan
    from layerfilm.study import Study

    last = scan(folder, warn=False).steps[n - 1]
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM: measure the peak of the work alone
    t0 = time.perf_counter()
    if mode == "read":
        series = scan(folder, steps=(None, last), warn=False)
        Study(series, FilmOptions(cache=False, jobs=1), progress=False).trajectories()
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


# ---------------------------------------------------------------- --wide and --sparse: the CLI, process by process

# Runs layerfilm.cli.commands.main(argv) and writes, at exit, the process's own rchar (bytes through read
# syscalls, page cache or not), VmHWM (peak RSS) and the peak RSS of its waited-for children (ffmpeg).
WRAPPER = r"""
import json, resource, sys, time
t0 = time.perf_counter()
side, argv = sys.argv[1], sys.argv[2:]
profile = argv[:1] == ["--cprofile"]
if profile:
    argv = argv[2:]
from layerfilm.cli import main
def go():
    try:
        return main(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 0
if profile:
    import cProfile, io, pstats
    prof = cProfile.Profile()
    rc = prof.runcall(go)
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(25)
    open(sys.argv[3], "w").write(buf.getvalue())
else:
    rc = go()
if "layerfilm.parallel.dask" in sys.modules:  # close a LocalCluster now, so that its workers' CPU is counted below
    sys.modules["layerfilm.parallel.dask"].close()
def field(path, key):
    for line in open(path):
        if line.startswith(key):
            return int(line.split()[1])
me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
res = {"rc": rc, "rchar": field("/proc/self/io", "rchar:"), "hwm_kib": field("/proc/self/status", "VmHWM:"),
       "children_kib": kids.ru_maxrss, "seconds_inside": time.perf_counter() - t0,
       "cpu": me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime}
open(side, "w").write(json.dumps(res))
sys.exit(rc)
"""


def run_cli(argv: list[str], env: dict | None = None, watch: Path | None = None, profile: Path | None = None) -> dict:
    """One layerfilm command in a fresh process: rc, rchar, peak RSS (KiB), its children's peak, wall s;
    with ``watch``, the largest size that folder reached (polled every 0.2 s) and its largest file."""
    import threading

    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        side = Path(f.name)
    extra = ["--cprofile", str(profile)] if profile else []
    cmd = [sys.executable, "-c", WRAPPER, str(side), *extra, *argv]
    peak = {"dir": 0, "file": 0}
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            total, largest = 0, 0
            for dirpath, _, files in os.walk(watch):
                for name in files:
                    try:
                        st = os.lstat(os.path.join(dirpath, name))
                    except OSError:
                        continue
                    total += st.st_blocks * 512
                    largest = max(largest, st.st_size)
            peak["dir"], peak["file"] = max(peak["dir"], total), max(peak["file"], largest)
            stop.wait(0.2)

    poller = threading.Thread(target=poll, daemon=True) if watch is not None else None
    if poller:
        poller.start()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env={**os.environ, **(env or {})}, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if poller:
        stop.set()
        poller.join()
    try:
        res = json.loads(side.read_text())
    finally:
        side.unlink(missing_ok=True)
    if proc.returncode != 0 or res["rc"] not in (0, None):
        raise RuntimeError(f"layerfilm {' '.join(argv)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    res.update(wall=wall, scratch=peak["dir"], scratch_file=peak["file"], stdout=proc.stdout, stderr=proc.stderr)
    return res


def help_baseline() -> int:
    """rchar of the wrapper running ``layerfilm --help`` (the least of two runs)."""
    return min(run_cli(["--help"])["rchar"] for _ in range(2))


def safetensors_layout(path: Path) -> tuple[int, dict[str, tuple[int, int]]]:
    """(8 + header length, name -> (data start, data end)) of a safetensors file."""
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(n))
    header.pop("__metadata__", None)
    return 8 + n, {k: tuple(v["data_offsets"]) for k, v in header.items()}


def series_bytes(folder: Path, files: list[Path]) -> dict:
    """Header bytes and block-tensor bytes (names with a ``layers.N.``) of ``files``."""
    import re

    block = re.compile(r"(^|\.)(layers|h|blocks)\.\d+\.")
    head = tensors = 0
    for f in files:
        h, spans = safetensors_layout(f)
        head += h
        tensors += sum(e - s for k, (s, e) in spans.items() if block.search(k))
    return {"headers": head, "block_tensors": tensors}


def make_wide(folder: Path, blocks: int, width: int, checkpoints: int, seed: int = 0) -> list[Path]:
    """``checkpoints`` bf16 safetensors of ``blocks`` Llama-style blocks (q, o, up, down), on a seeded
    random walk; reused when ``folder`` already holds the same series (wide.json)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from make_sparse import header_bytes, to_bf16

    config = {"blocks": blocks, "width": width, "checkpoints": checkpoints, "seed": seed}
    files = [folder / f"step_{i * 100:06d}.safetensors" for i in range(checkpoints)]
    stamp = folder / "wide.json"
    if stamp.exists() and json.loads(stamp.read_text()) == config and all(f.exists() for f in files):
        return files
    folder.mkdir(parents=True, exist_ok=True)
    stamp.unlink(missing_ok=True)
    mlp = 4 * width
    specs = []
    for b in range(blocks):
        p = f"model.layers.{b}."
        specs += [(p + "self_attn.q_proj.weight", (width, width)), (p + "self_attn.o_proj.weight", (width, width)),
                  (p + "mlp.up_proj.weight", (mlp, width)), (p + "mlp.down_proj.weight", (width, mlp))]
    head, _ = header_bytes(specs)
    rng = __import__("numpy").random.default_rng(seed)
    state = [rng.standard_normal(s, "float32") * 0.02 for _, s in specs]
    for f in files:
        with open(f.with_suffix(".partial"), "wb") as fh:
            fh.write(head)
            for w in state:
                fh.write(to_bf16(w).tobytes())
        f.with_suffix(".partial").replace(f)
        for w in state:  # the walk: every weight moves a little, by a seeded step
            w += rng.standard_normal(w.shape, "float32") * 0.002
    stamp.write_text(json.dumps(config))
    return files


def _mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def table(rows: list[dict]) -> str:
    lines = ["| command | bytes read | reference bytes | ratio | target | met | peak RSS | wall s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        met = "" if r.get("target") is None else ("yes" if r["ratio"] <= r["target"] else "NO")
        target = "" if r.get("target") is None else f"<= {r['target']}"
        lines.append(f"| `{r['command']}` | {_mib(r['read'])} | {_mib(r['ref']) if r.get('ref') else ''} "
                     f"({r.get('ref_what', '')}) | {r['ratio']:.3f} | {target} | {met} | {r['rss']} | {r['wall']:.1f} |"
                     if r.get("ref") else
                     f"| `{r['command']}` | {_mib(r['read'])} |  |  |  |  | {r['rss']} | {r['wall']:.1f} |")
    return "\n".join(lines)


def _rss(res: dict) -> str:
    # VmHWM of the Python process alone (ffmpeg is a child; its ru_maxrss from RUSAGE_CHILDREN would
    # count the parent's pages copied at fork, so it is not shown)
    return f"{res['hwm_kib'] / 1024:,.0f} MiB"


def record(title: str, body: str, no_record: bool) -> None:
    print(body)
    if not no_record:
        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        with open(ROOT / "benchmarks" / "RESULTS.md", "a") as fh:
            fh.write(f"\n## {title}, {stamp}\n\n{body}\n")


def engine_args(a: argparse.Namespace) -> list[str]:
    """--engine and --jobs as given to the benchmark (none: layerfilm's defaults)."""
    return (["--engine", a.engine] if a.engine else []) + (["--jobs", str(a.jobs)] if a.jobs is not None else [])


def bench_compare(a: argparse.Namespace) -> None:
    """``--wide --compare local:1,local:2,dask:2``: wall and CPU time of ``render --no-cache`` and ``stability
    --no-cache`` on the wide series under each engine:jobs, the configurations interleaved ``--repeat`` times
    (a shared machine's load drifts; interleaving spreads it over all of them); median wall, ratio to the first."""
    import statistics

    folder = a.wide_dir
    make_wide(folder, a.wide_blocks, a.wide_width, a.wide_checkpoints)
    configs = [c.split(":") for c in a.compare.split(",")]
    commands = {"render": ["render", str(folder), "--no-cache", "--size", "320x180", "--quiet"],
                "stability": ["stability", str(folder), "--no-cache", "--quiet"]}
    load0 = os.getloadavg()
    runs: dict[tuple[str, str, str], list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="bench_compare-") as work:
        for name in a.compare_commands.split(","):
            for i in range(a.repeat if name == "render" else a.repeat_stability):
                for engine, jobs in configs:
                    argv = [*commands[name], "--engine", engine, "--jobs", jobs]
                    if name == "render":
                        argv += ["--out", str(Path(work) / f"x{i}{engine}{jobs}.webm")]
                    r = run_cli(argv)
                    runs.setdefault((name, engine, jobs), []).append(r)
                    print(f"# {name} --engine {engine} --jobs {jobs}: {r['wall']:.1f} s wall, {r['cpu']:.1f} s CPU, "
                          f"load {os.getloadavg()[0]:.1f}", file=sys.stderr)
    lines = ["| command | engine | jobs | runs | wall s (median) | walls | CPU s (median) | ratio | to | target | met |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in a.compare_commands.split(","):
        wall = {(e, j): statistics.median(r["wall"] for r in runs[(name, e, j)]) for e, j in configs}
        for engine, jobs in configs:
            rs = runs[(name, engine, jobs)]
            # a Dask engine against the local engine with as many jobs (<= 1.3x); more local jobs against the first (<= 1.05x)
            ref = ("local", jobs) if engine != "local" and ["local", jobs] in configs else tuple(configs[0])
            target = 1.3 if engine != "local" else 1.05
            ratio = wall[(engine, jobs)] / wall[ref]
            met = "" if (engine, jobs) == ref else ("yes" if ratio <= target else "NO")
            walls = ", ".join(f"{r['wall']:.1f}" for r in rs)
            lines.append(f"| `{name} DIR --no-cache` | {engine} | {jobs} | {len(rs)} | {wall[(engine, jobs)]:.1f} | {walls} | "
                         f"{statistics.median(r['cpu'] for r in rs):.1f} | {ratio:.3f} | {':'.join(ref)} | "
                         f"{f'<= {target}' if met else ''} | {met} |")
    body = (f"{a.wide_blocks} blocks x width {a.wide_width} x {a.wide_checkpoints} bf16 checkpoints (`--wide`), "
            f"{os.cpu_count()} CPUs, LAYERFILM_CHUNK_MB={os.environ.get('LAYERFILM_CHUNK_MB', 'default')}; configurations "
            f"interleaved; load average at start {load0[0]:.1f} {load0[1]:.1f}, at end {os.getloadavg()[0]:.1f} "
            f"{os.getloadavg()[1]:.1f}; CPU = the command's process and its reaped children (pool workers, a LocalCluster's "
            "workers, ffmpeg)\n\n" + "\n".join(lines))
    record(f"`python benchmarks/bench_io.py --wide --compare {a.compare}`", body, a.no_record)


def bench_wide(a: argparse.Namespace) -> None:
    folder = a.wide_dir
    t0 = time.perf_counter()
    files = make_wide(folder, a.wide_blocks, a.wide_width, a.wide_checkpoints)
    sizes = series_bytes(folder, files)
    T, L, D, N = a.wide_checkpoints, a.wide_blocks, a.wide_width, 512
    tracked = N * D * 2 * L * T
    base = help_baseline()
    print(f"# series: {L} blocks x width {D} x {T} checkpoints bf16 in {folder} ({_mib(sizes['block_tensors'])} of block "
          f"tensors, ready in {time.perf_counter() - t0:.0f} s); --help baseline rchar {_mib(base)}", file=sys.stderr)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_wide-") as work:
        w = Path(work)
        film = str(w / "x.webm")
        eng = engine_args(a)
        r = run_cli(["render", str(folder), "--no-cache", "--out", film, "--size", "320x180", "--quiet", *eng])
        rows.append(dict(command=" ".join(["render DIR --no-cache --out X.webm --size 320x180", *eng]), read=r["rchar"] - base,
                         ref=tracked + sizes["headers"], ref_what="tracked rows + headers", target=1.3, rss=_rss(r),
                         wall=r["wall"]))
        r = run_cli(["stability", str(folder), "--no-cache", "--quiet", *eng])
        rows.append(dict(command=" ".join(["stability DIR --no-cache", *eng]), read=r["rchar"] - base, ref=sizes["block_tensors"],
                         ref_what="block tensors", target=1.15, rss=_rss(r), wall=r["wall"]))
        cache = str(w / "cache")
        film2 = w / "y.webm"
        steps = [
            ("render", ["render", str(folder), "--cache", cache, "--out", str(film2), "--size", "320x180", "--quiet", *eng]),
            ("stills", ["stills", str(folder), "--cache", cache, "--out", str(w / "s.png"), "--quiet", *eng]),
            ("report", ["report", str(folder), "--cache", cache, "--out", str(w / "r.html"), "--film", str(film2), "--quiet",
                        *eng]),
            ("stability", ["stability", str(folder), "--cache", cache, "--json", "--quiet", *eng]),
        ]
        total = wall = 0.0
        peak = 0
        for name, argv in steps:
            r = run_cli(argv)
            read = r["rchar"] - base - (film2.stat().st_size if name == "report" else 0)
            total += read
            wall += r["wall"]
            peak = max(peak, r["hwm_kib"])
            rows.append(dict(command=f"  c. {' '.join(['DIR' if x == str(folder) else x for x in argv]).replace(work, 'W')}",
                             read=read, ref=sizes["block_tensors"], ref_what="block tensors", target=None, rss=_rss(r),
                             wall=r["wall"], ratio=read / sizes["block_tensors"]))
        rows.append(dict(command="c. render + stills + report --film + stability --json, one cache", read=total,
                         ref=sizes["block_tensors"], ref_what="block tensors", target=1.3, rss=f"{peak / 1024:,.0f} MiB",
                         wall=wall))
    for r in rows:
        r.setdefault("ratio", r["read"] / r["ref"])
    body = (f"{L} blocks x width {D} x {T} bf16 checkpoints (q/o/up/down; up_proj filmed, 512 points), "
            f"{os.cpu_count()} CPUs; bytes read = child rchar - `--help` rchar ({_mib(base)}); "
            f"report's row also minus the film it embeds; "
            f"LAYERFILM_CHUNK_MB={os.environ.get('LAYERFILM_CHUNK_MB', 'default')}\n\n"
            + table(rows))
    record("`python benchmarks/bench_io.py --wide`", body, a.no_record)


def bench_sparse(a: argparse.Namespace) -> None:
    folder = a.sparse
    files = sorted(folder.glob("step_*.safetensors"))
    cfg = json.loads((folder / "sparse.json").read_text())
    L, D = cfg["blocks"], cfg["width"]
    N = min(512, cfg["mlp"])
    base = help_baseline()
    rows, notes = [], []
    counts = [c for c in a.sparse_counts if c <= len(files)]
    for T in counts:
        sel = files[:T]
        last = int(sel[-1].stem.split("_")[1])
        sizes = series_bytes(folder, sel)
        tracked = N * D * 2 * L * T
        with tempfile.TemporaryDirectory(prefix="bench_sparse-") as work:
            scratch = Path(work) / "tmp"
            scratch.mkdir()
            out = Path(work) / "out"
            out.mkdir()
            argv = ["render", str(folder), "--no-cache", "--out", str(out / "x.webm"), "--size", "640x360", "--quiet",
                    "--steps", f":{last}"]
            r = run_cli(argv, env={"TMPDIR": str(scratch)}, watch=scratch)
        rows.append(dict(command=f"render 70B x {T} ckpts --no-cache --size 640x360 --steps :{last}", read=r["rchar"] - base,
                         ref=tracked + sizes["headers"], ref_what="tracked rows + headers", target=1.3, rss=_rss(r),
                         wall=r["wall"]))
        notes.append(f"- {T} checkpoints: peak RSS {r['hwm_kib'] / 2**20:.2f} GiB (target <= 4 GiB: "
                     f"{'yes' if r['hwm_kib'] <= 4 * 2**20 else 'NO'}); scratch in $TMPDIR peak {_mib(r['scratch'])} "
                     f"(largest file {_mib(r['scratch_file'])}); trajectories {T} x {L} x {N} x 2 float32 = "
                     f"{_mib(T * L * N * 2 * 4)}; logical series {sum(f.stat().st_size for f in sel) / 1e12:.2f} TB; "
                     f"wall {r['wall']:.0f} s")
    for r in rows:
        r["ratio"] = r["read"] / r["ref"]
    prof = ""
    if a.profile and counts:
        T = counts[0]
        last = int(files[T - 1].stem.split("_")[1])
        with tempfile.TemporaryDirectory(prefix="bench_sparse-") as work:
            pf = Path(work) / "prof.txt"
            run_cli(["render", str(folder), "--no-cache", "--out", str(Path(work) / "x.webm"), "--size", "640x360", "--quiet",
                     "--steps", f":{last}"], profile=pf)
            lines = pf.read_text().splitlines()
        start = next(i for i, l in enumerate(lines) if l.strip().startswith("ncalls"))
        prof = (f"\ncProfile of the {T}-checkpoint render (main thread only: reads run in a prefetch thread, so "
                "they show as the main thread waiting on the queue), top by cumulative time:\n\n```\n"
                + "\n".join(lines[start:start + 26]) + "\n```\n")
    body = (f"70B-shaped sparse series (benchmarks/make_sparse.py: {L} blocks, width {D}, MLP {cfg['mlp']}, bf16, "
            f"q/o/up/down) in {folder}; {os.cpu_count()} CPUs; bytes read = child rchar - `--help` rchar ({_mib(base)})\n\n"
            + table(rows) + "\n\n" + "\n".join(notes) + "\n" + prof)
    record(f"`python benchmarks/bench_io.py --sparse {folder}`", body, a.no_record)


def bench_ref(a: argparse.Namespace) -> None:
    """Peak RSS (and bytes read) of render --no-cache and stability --no-cache on the 128 x 179 reference
    (benchmarks/make_reference.py), and of render on its first 12 and 48 checkpoints."""
    folder = a.ref
    files = sorted(folder.glob("*.safetensors"))
    sizes = series_bytes(folder, files)
    base = help_baseline()
    rows, notes = [], []
    with tempfile.TemporaryDirectory(prefix="bench_ref-") as work:
        scratch = Path(work) / "tmp"
        scratch.mkdir()
        for T in a.ref_counts:
            sel = files[:T]
            last = int(sel[-1].stem.split("_")[1])
            r = run_cli(["render", str(folder), "--no-cache", "--out", str(Path(work) / "x.webm"), "--size", "320x180", "--quiet",
                         "--steps", f":{last}"], env={"TMPDIR": str(scratch)}, watch=scratch)
            with open(sel[0], "rb") as fh:
                (n,) = struct.unpack("<Q", fh.read(8))
                header = json.loads(fh.read(n))
            shape = next(v["shape"] for k, v in header.items() if k.endswith("mlp.c_fc.weight"))
            L = sum(k.endswith("mlp.c_fc.weight") for k in header)
            N = min(512, shape[0])
            sz = series_bytes(folder, sel)
            ref = N * shape[1] * 2 * L * T + sz["headers"]
            rows.append(dict(command=f"render REF --no-cache --size 320x180 --steps :{last} ({T} ckpts)", read=r["rchar"] - base,
                             ref=ref, ref_what="tracked rows + headers", target=1.3, rss=_rss(r), wall=r["wall"]))
            notes.append(f"- render, {T} checkpoints: peak RSS {r['hwm_kib'] / 1024:,.0f} MiB (target <= 1,536 MiB); "
                         f"scratch in $TMPDIR peak {_mib(r['scratch'])}; trajectories {T} x {L} x {N} x 2 float32 = "
                         f"{_mib(T * L * N * 8)}")
        if not a.ref_render_only:
            r = run_cli(["stability", str(folder), "--no-cache", "--quiet"], env={"TMPDIR": str(scratch)}, watch=scratch)
            rows.append(dict(command=f"stability REF --no-cache ({len(files)} ckpts)", read=r["rchar"] - base,
                             ref=sizes["block_tensors"],
                             ref_what="block tensors", target=1.15, rss=_rss(r), wall=r["wall"]))
            notes.append(f"- stability: peak RSS {r['hwm_kib'] / 1024:,.0f} MiB (target <= 1,536 MiB); scratch peak "
                         f"{_mib(r['scratch'])}")
    for r in rows:
        r["ratio"] = r["read"] / r["ref"]
    body = (f"reference {folder}: {len(files)} checkpoints ({_mib(sum(f.stat().st_size for f in files))}), {os.cpu_count()} "
            f"CPUs; bytes read = child rchar - `--help` rchar ({_mib(base)})\n\n" + table(rows) + "\n\n" + "\n".join(notes))
    record(f"`python benchmarks/bench_io.py --ref {folder}`", body, a.no_record)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", type=Path, default=None, help="where to write the series (default: a temp folder, removed after)")
    p.add_argument("--checkpoints", type=int, default=80)
    p.add_argument("--small", type=int, default=20, help="the smaller series for the RSS ratio (default 20)")
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--bytes-checkpoints", type=int, default=10, help="checkpoints measured for bytes read (default 10)")
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    p.add_argument("--wide", action="store_true", help="issue 12's I/O targets through the CLI on a wide series (see above)")
    p.add_argument("--wide-dir", type=Path, default=Path(tempfile.gettempdir()) / "lf_wide", help="where --wide keeps its series "
                   "(default $TMPDIR/lf_wide)")
    p.add_argument("--wide-blocks", type=int, default=16)
    p.add_argument("--wide-width", type=int, default=1024)
    p.add_argument("--wide-checkpoints", type=int, default=12)
    p.add_argument("--engine", default=None, choices=("local", "dask"), help="--wide: run every command with --engine "
                   "(default: layerfilm's, local)")
    p.add_argument("--jobs", type=int, default=None, help="--wide: run every command with --jobs N (default: layerfilm's, "
                   "one per core)")
    p.add_argument("--compare", default=None, metavar="ENGINE:JOBS,...", help="--wide: time render and stability --no-cache "
                   "under each engine:jobs, e.g. local:1,local:2,dask:2 (ratios to the first)")
    p.add_argument("--compare-commands", default="render,stability", metavar="render,stability",
                   help="--compare: which commands (default both)")
    p.add_argument("--repeat", type=int, default=3, help="--compare: runs of render per configuration (default 3)")
    p.add_argument("--repeat-stability", type=int, default=1, help="--compare: runs of stability per configuration "
                   "(default 1; ~2 min each)")
    p.add_argument("--sparse", type=Path, default=None, metavar="DIR", help="measure render on a series written by "
                   "make_sparse.py")
    p.add_argument("--sparse-counts", type=lambda s: [int(x) for x in s.split(",")], default=[3, 24], metavar="3,24",
                   help="--sparse: numbers of checkpoints to render (the first K; default 3,24)")
    p.add_argument("--profile", action="store_true", help="--sparse: also cProfile the smallest count's render")
    p.add_argument("--no-record", action="store_true", help="--wide/--sparse: print only, do not append to RESULTS.md")
    p.add_argument("--ref", type=Path, default=None, metavar="DIR", help="peak RSS of render and stability on "
                   "make_reference.py's series")
    p.add_argument("--ref-counts", type=lambda s: [int(x) for x in s.split(",")], default=[12, 48, 179], metavar="12,48,179",
                   help="--ref: numbers of checkpoints to render (default 12,48,179)")
    p.add_argument("--ref-render-only", action="store_true", help="--ref: measure render only (stability takes ~20 min)")
    a = p.parse_args()
    if a.ref:
        bench_ref(a)
        return
    if a.wide and a.compare:
        bench_compare(a)
        return
    if a.wide:
        bench_wide(a)
        return
    if a.sparse:
        bench_sparse(a)
        return
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
        print(f"\n## bytes read per checkpoint, page cache cold (mean over {a.bytes_checkpoints:d} checkpoints)")
        print("| format | file MiB | needed tensors MiB | read MiB | read / needed | target |")
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
        print(f"| stage | RSS({a.small:d}) MiB | RSS({a.checkpoints:d}) MiB | ratio | target | seconds ({a.small:d} / "
              f"{a.checkpoints:d}) |")
        print("|---|---|---|---|---|---|")
        for mode in ("read", "render"):
            small = run_child("rss", str(folder / "st"), str(a.small), mode)
            big = run_child("rss", str(folder / "st"), str(a.checkpoints), mode)
            ratio = big["rss_mib"] / small["rss_mib"]
            what = "scan + Study.trajectories" if mode == "read" else "whole render (.webm 320x180)"
            print(f"| {what} | {small['rss_mib']:.0f} "
                  f"({small['process_mib']:.0f}) | {big['rss_mib']:.0f} ({big['process_mib']:.0f}) | {ratio:.3f} | <= 1.2 "
                  f"{'ok' if ratio <= 1.2 else 'MISSED'} | {small['seconds']:.1f} / {big['seconds']:.1f} |")


if __name__ == "__main__":
    main()
