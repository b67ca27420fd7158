"""Issue 30: the 70B-shaped sparse series rendered from disk and from a slow server, and `stability` on
the wide series against `cat`, for one or two versions of layerfilm on the same machine.

Each measured command runs in a fresh process pinned by ``taskset -c CORES`` (``--cores 0,1``: a 2-core
machine on a bigger host; the delayed server runs on the other cores). Reported per run: wall seconds,
user and system CPU seconds and the largest process's peak RSS of the command's process tree (``wait4``),
and a digest of its exported points and of its decoded frames, so that runs of two versions, or from disk
and from the server, can be checked to give the same film.

    python benchmarks/make_sparse.py /tmp/lf70b                                   # 24 checkpoints
    python benchmarks/bench_speed.py /tmp/lf70b --cores 0,1 --before /path/to/old/checkout \\
        --runs local:24,remote:24,local:179 --wide /tmp/lf_wide

``local:K``: render the first K checkpoints (K > the series' count: a folder of K hard links cycling
over the series, step_000000 ... so the page cache holds the distinct files); ``remote:K``: the same from
``tests/servers.py``'s delayed_folder (``--delay`` s per request, ``--connections`` served at once).
``--before ROOT``: also run each with the checkout at ROOT (same machine, same call; the server is this
checkout's ``tests/servers.py``). ``--multi``: how the server answers a request for several ranges
(parts, first, whole: ``tests/servers.py`` MULTI).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))


def timed(argv: list[str], root: Path, cores: str | None) -> dict:
    """Run ``argv`` with layerfilm from ``root``: wall, user and system seconds and the peak RSS (MiB, the
    largest process) of its process tree (``wait4``), and what it printed."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), *filter(None, [os.environ.get("PYTHONPATH")])]),
           "PYTHONUNBUFFERED": "1"}
    cmd = (["taskset", "-c", cores] if cores else []) + argv
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}):\n{stderr[-3000:]}")
    return {"wall": round(wall, 1), "user": round(usage.ru_utime, 1), "sys": round(usage.ru_stime, 1),
            "rss_mib": round(usage.ru_maxrss / 1024), "stdout": stdout}


def request_rate(url: str, folder: Path) -> dict:
    """Seconds for one key frame's worth of ranged GETs (512 rows of 16 KiB, merged as a render merges
    them) through layerfilm's reader, twice: what the server and the client manage together."""
    import numpy as np

    from layerfilm.io.storage import RemoteBytes, location

    src = RemoteBytes(location(f"{url}/{folder.name}") / sorted(folder.glob("step_*.safetensors"))[0].name)
    ids = np.sort(np.random.default_rng(0).choice(28672, 512, replace=False))
    walls = []
    for _ in range(2):
        t0 = time.perf_counter()
        src.read([(2**20 + int(i) * 16384, 16384) for i in ids])
        walls.append(round(time.perf_counter() - t0, 3))
    return {"walls_512_rows": walls}


def digest_points(path: Path) -> str:
    import numpy as np

    z = np.load(path)
    h = hashlib.sha256()
    for k in sorted(z.files):
        h.update(k.encode())
        h.update(np.ascontiguousarray(z[k]).tobytes())
    return h.hexdigest()[:16]


def digest_frames(path: Path) -> tuple[str, int]:
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
    next(reader)
    h, n = hashlib.sha256(), 0
    for f in reader:
        h.update(f)
        n += 1
    return h.hexdigest()[:16], n


def linked(series: Path, count: int) -> Path:
    """A folder of ``count`` checkpoints named as the series' (step i*1000), hard links cycling over its files."""
    files = sorted(series.glob("step_*.safetensors"))
    if count <= len(files):
        return series
    folder = series.parent / f"{series.name}_x{count}"
    folder.mkdir(exist_ok=True)
    step = int(files[1].stem.split("_")[1]) - int(files[0].stem.split("_")[1])
    for i in range(count):
        link = folder / f"step_{i * step:06d}.safetensors"
        if not link.exists():
            os.link(files[i % len(files)], link)
    return folder


def render(root: Path, folder: str, last: int, cores: str | None, work: Path) -> dict:
    out = work / "f.webm"
    argv = [sys.executable, "-m", "layerfilm", "render", folder, "--no-cache", "--out", str(out), "--export-points",
            str(work / "p.npz"), "--size", "640x360", "--quiet", "--steps", f":{last}"]
    r = timed(argv, root, cores)
    frames, n = digest_frames(out)
    return {**{k: r[k] for k in ("wall", "user", "sys", "rss_mib")}, "points": digest_points(work / "p.npz"),
            "frames": frames, "n_frames": n}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("series", type=Path, help="a folder written by make_sparse.py")
    p.add_argument("--runs", default="local:24,remote:24", help="comma-separated local:K / remote:K")
    p.add_argument("--cores", default=None, help="taskset -c CORES for the commands (e.g. 0,1)")
    p.add_argument("--server-cores", default=None, help="taskset -c for the delayed server (e.g. 2-15)")
    p.add_argument("--before", type=Path, default=None, help="another checkout to run local:K with too")
    p.add_argument("--versions", default="after,before", help="which of after (this checkout), before to run")
    p.add_argument("--delay", type=float, default=0.02)
    p.add_argument("--connections", type=int, default=128)
    p.add_argument("--server-processes", type=int, default=4)
    p.add_argument("--multi", default="parts", help="how the server answers several ranges: parts, first or whole")
    p.add_argument("--wide", type=Path, default=None, help="also stability --no-cache on this wide series vs cat")
    p.add_argument("--json", type=Path, default=None, help="append each result as a JSON line here")
    a = p.parse_args()
    versions = [(w, r) for w, r in [("after", ROOT), ("before", a.before)] if r and w in a.versions.split(",")]
    files = sorted(a.series.glob("step_*.safetensors"))
    step = int(files[1].stem.split("_")[1]) - int(files[0].stem.split("_")[1])
    rows = []

    def emit(row: dict) -> None:
        rows.append(row)
        print(json.dumps(row), flush=True)
        if a.json:
            with a.json.open("a") as f:
                f.write(json.dumps(row) + "\n")

    for spec in filter(None, a.runs.split(",")):
        kind, count = spec.split(":")
        count = int(count)
        folder = linked(a.series, count)
        last = (count - 1) * step
        for who, root in versions:
            with tempfile.TemporaryDirectory(prefix="bench-speed-") as work:
                try:
                    if kind == "local":
                        got = render(root, str(folder), last, a.cores, Path(work))
                    else:
                        from servers import delayed_folder

                        with delayed_folder(folder.parent, a.delay, a.connections, a.server_cores,
                                            a.server_processes, a.multi) as (url, stats):
                            emit({"run": "request rate", **request_rate(url, folder)})
                            got = render(root, f"{url}/{folder.name}", last, a.cores, Path(work))
                            got.update(stats())
                except Exception as e:  # noqa: BLE001 - one failed run is reported, the others still run
                    got = {"error": str(e)[-800:]}
            emit({"run": spec, "version": who, "cores": a.cores, **got})
    if a.wide:
        from bench_io import make_wide

        wide = make_wide(a.wide, 16, 1024, 12)
        cat = ["cat", *map(str, wide)]
        subprocess.run(cat, stdout=subprocess.DEVNULL, check=True)  # into the page cache
        for _ in range(2):
            t0 = time.perf_counter()
            subprocess.run((["taskset", "-c", a.cores] if a.cores else []) + cat, stdout=subprocess.DEVNULL, check=True)
            emit({"run": "cat wide", "cores": a.cores, "wall": round(time.perf_counter() - t0, 2)})
        for who, root in versions:
            argv = [sys.executable, "-m", "layerfilm", "stability", str(a.wide), "--no-cache", "--json", "--quiet"]
            try:
                r = timed(argv, root, a.cores)
                got = {**{k: r[k] for k in ("wall", "user", "sys", "rss_mib")},
                       "json": hashlib.sha256(r["stdout"].encode()).hexdigest()[:16]}
            except Exception as e:  # noqa: BLE001
                got = {"error": str(e)[-800:]}
            emit({"run": "stability wide", "version": who, "cores": a.cores, **got})
    print("\n| run | version | cores | wall s | user s | sys s | peak RSS MiB | points | frames | requests | ranges |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['run']} | {r.get('version', '')} | {r.get('cores')} | {r.get('wall', r.get('error', '')[:60])} | "
              f"{r.get('user', '')} | {r.get('sys', '')} | {r.get('rss_mib', '')} | {r.get('points', r.get('json', ''))} | "
              f"{r.get('frames', '')} | {r.get('requests', '')} | {r.get('ranges', '')} |")


if __name__ == "__main__":
    main()
