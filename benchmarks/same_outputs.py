"""Are layerfilm's outputs byte-identical to another version's on the same checkpoints? Runs the same
commands with two `layerfilm` executables (this checkout's and, e.g., a venv of an earlier commit) and
compares the exported points, `stability --json`, the decoded frames of the film and its file's bytes (all
but the TrackUID that ffmpeg draws at random on every run).

    python benchmarks/same_outputs.py CKPTS --other /path/to/old/venv/bin/layerfilm [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

RUNS = {  # name -> arguments after the folder
    "weights": ["--points", "64", "--size", "640x360", "--fps", "4"],
    "procrustes": ["--points", "64", "--size", "320x180", "--fps", "2", "--projection", "procrustes"],
    "umap": ["--points", "32", "--size", "320x180", "--fps", "2", "--projection", "umap"],
    "activations": ["--points", "64", "--size", "320x180", "--fps", "2", "--features", "activations", "--model",
                    "examples/make_checkpoints.py:make_model", "--device", "cpu"],
}


def frames(path: Path) -> np.ndarray:
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
    w, h = next(reader)["size"]
    return np.stack([np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in reader])


def without_track_uid(data: bytes) -> bytes:
    """The film's bytes with its Matroska TrackUID (ID 0x73C5, 8 bytes) zeroed: ffmpeg draws it at random
    on every run, so two runs of the same version differ there and nowhere else."""
    at = data.find(b"\x73\xc5\x88")
    return data if at < 0 else data[: at + 3] + bytes(8) + data[at + 11:]


def run(exe: str, args: list[str], cwd: Path, cache: Path) -> str:
    env = {**os.environ, "LAYERFILM_CACHE": str(cache)}
    done = subprocess.run([exe, *args], cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{exe} {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return done.stdout


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ckpts", type=Path)
    p.add_argument("--other", required=True, help="the other version's layerfilm executable")
    p.add_argument("--this", default=shutil.which("layerfilm"), help="this version's (default: on PATH)")
    p.add_argument("--only", nargs="*", default=list(RUNS))
    a = p.parse_args()
    root = Path(__file__).resolve().parents[1]
    work = Path(tempfile.mkdtemp(prefix="same-outputs-"))
    ok = True
    for name in a.only:
        got = {}
        for who, exe in (("this", a.this), ("other", a.other)):
            d = work / who / name
            d.mkdir(parents=True)
            run(exe, ["render", str(a.ckpts.resolve()), "--out", str(d / "f.webm"), "--export-points", str(d / "p.npz"),
                      "--quiet", *RUNS[name]], root, d / "cache")
            stab = run(exe, ["stability", str(a.ckpts.resolve()), "--json", "--quiet", "--no-cache"]
                       + [x for x in RUNS[name] if x not in ("--size", "640x360", "320x180", "--fps", "4", "2")], root,
                       d / "cache")
            got[who] = (np.load(d / "p.npz"), json.loads(stab), frames(d / "f.webm"), (d / "f.webm").read_bytes())
        (pa, sa, fa, ba), (pb, sb, fb, bb) = got["this"], got["other"]
        same_points = sorted(pa.files) == sorted(pb.files) and all(
            np.array_equal(pa[k], pb[k], equal_nan=pa[k].dtype.kind == "f") for k in pa.files)
        same = {"points": same_points, "stability": sa == sb, "frames": fa.shape == fb.shape and np.array_equal(fa, fb),
                "film bytes (but the random TrackUID)": without_track_uid(ba) == without_track_uid(bb)}
        ok &= all(same.values())
        print(f"{name:<12}" + "  ".join(f"{k}: {'same' if v else 'DIFFERENT'}" for k, v in same.items())
              + f"  ({len(fa)} frames, {len(pa.files)} arrays, {len(sa)} blocks)")
    shutil.rmtree(work)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
