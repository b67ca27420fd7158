"""Bytes fetched by a render from S3 (a local moto server) against the tracked rows plus headers.

A wide bf16 series (benchmarks/bench_io.py's ``make_wide``: Llama-style blocks, the filmed matrix
``mlp.up_proj`` [4 x width, width]) is uploaded to moto's S3-compatible server on 127.0.0.1, which
counts the object bytes it sends (tests/servers.py). Then ``layerfilm render s3://... --no-cache``
runs in a fresh process (endpoint through AWS_ENDPOINT_URL, default --jobs), and so does the same
render of the local folder. Reported: bytes fetched / (every file's header + 512 tracked rows per
block per checkpoint) (target <= 1.3), GET requests, wall time of both, and whether the exported
points are byte-identical.

    python benchmarks/bench_remote.py                      # 8 blocks x width 512 x 8 checkpoints
    python benchmarks/bench_remote.py --blocks 16 --width 1024 --checkpoints 6 --no-record
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from bench_io import _mib, make_wide, record, safetensors_layout  # noqa: E402
from servers import FAKE_AWS, CountingMoto  # noqa: E402

POINTS = 512


def render(folder: str, out: Path, env: dict, jobs: int) -> float:
    """Wall seconds of ``layerfilm render folder --no-cache`` in a fresh process (points exported beside)."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "layerfilm", "render", folder, "--out", str(out), "--export-points",
                    str(out.with_suffix(".npz")), "--no-cache", "--quiet", "--jobs", str(jobs)],
                   check=True, env=env, cwd=ROOT)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blocks", type=int, default=8)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--checkpoints", type=int, default=8)
    ap.add_argument("--jobs", type=int, default=0, help="--jobs of both renders (default 0: one per core)")
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "lf_remote", help="series folder (kept, reused)")
    ap.add_argument("--no-record", action="store_true", help="do not append the table to benchmarks/RESULTS.md")
    a = ap.parse_args()
    files = make_wide(a.dir, a.blocks, a.width, a.checkpoints)
    heads = sum(safetensors_layout(f)[0] for f in files)
    rows = min(POINTS, 4 * a.width) * a.width * 2 * a.blocks * len(files)
    env = {**os.environ, **FAKE_AWS, "PYTHONPATH": str(ROOT)}
    server = CountingMoto()
    server.start()
    try:
        t0 = time.perf_counter()
        url = server.upload(a.dir, "bench", "wide")
        upload_s = time.perf_counter() - t0
        server.reset()
        with tempfile.TemporaryDirectory() as tmp:
            remote_s = render(url, Path(tmp) / "s3.webm", {**env, "AWS_ENDPOINT_URL": server.endpoint}, a.jobs)
            sent, gets = server.sent, server.gets
            local_s = render(str(a.dir), Path(tmp) / "local.webm", env, a.jobs)
            same = (Path(tmp) / "s3.npz").read_bytes() == (Path(tmp) / "local.npz").read_bytes()
    finally:
        server.stop()
    ratio = sent / (heads + rows)
    body = "\n".join([
        f"Series: {a.blocks} blocks x width {a.width} x {len(files)} bf16 checkpoints "
        f"({_mib(sum(f.stat().st_size for f in files))}; uploaded to moto in {upload_s:.0f} s); --jobs {a.jobs or 'cores'}.",
        "",
        "| command | bytes fetched | headers + tracked rows | ratio | target | met | GET requests | wall s | local wall s "
        "| points identical |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| `render s3://... --no-cache` | {_mib(sent)} | {_mib(heads + rows)} ({_mib(heads)} + {_mib(rows)}) | {ratio:.3f} "
        f"| <= 1.3 | {'yes' if ratio <= 1.3 else 'NO'} | {gets:,} | {remote_s:.1f} | {local_s:.1f} | {'yes' if same else 'NO'} |",
    ])
    record("Remote render from S3 (moto on 127.0.0.1): bytes fetched (benchmarks/bench_remote.py)", body, a.no_record)


if __name__ == "__main__":
    main()
