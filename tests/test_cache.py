"""layerfilm.io.cache: a re-render with other colours does not read the checkpoints; anything that
changes the points (a rewritten checkpoint, another --points) misses; damage is a miss, not an error."""

from __future__ import annotations

import json
import os

import numpy as np

from layerfilm.io import cache
from layerfilm.projection import Trajectories


def render(run_cli, run, out, *extra):
    """A small film in this process (--jobs 1: the cache is the point, not the film's workers)."""
    code, _, err = run_cli("render", run, "--out", out, "--size", "320x240", "--fps", "2", "--jobs", "1", "--quiet", *extra)
    assert code == 0, err
    return err


def test_rerender_with_other_colours_reads_no_checkpoint(run_cli, run_copy, tmp_path, reads):
    c = tmp_path / "c"
    render(run_cli, run_copy, tmp_path / "a.webm", "--cache", c, "--export-points", tmp_path / "a.npz")
    assert len(reads) == 1 and len(list(c.glob("*.npz"))) == 1
    render(run_cli, run_copy, tmp_path / "b.webm", "--cache", c, "--cmap", "viridis", "--size", "320x240",
           "--export-points", tmp_path / "b.npz")
    assert len(reads) == 1  # served from the cache
    a, b = np.load(tmp_path / "a.npz"), np.load(tmp_path / "b.npz")
    for name in ("steps", "blocks", "point_ids", "xy", "explained_variance"):
        assert np.array_equal(a[name], b[name]), name


def test_a_rewritten_checkpoint_or_other_points_miss(run_cli, run_copy, tmp_path, reads):
    c = tmp_path / "c"
    render(run_cli, run_copy, tmp_path / "a.webm", "--cache", c)
    ckpt = sorted(run_copy.glob("*.safetensors"))[2]
    st = ckpt.stat()
    os.utime(ckpt, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    render(run_cli, run_copy, tmp_path / "a.webm", "--cache", c)
    assert len(reads) == 2
    render(run_cli, run_copy, tmp_path / "a.webm", "--cache", c, "--points", "17")
    assert len(reads) == 3
    render(run_cli, run_copy, tmp_path / "a.webm", "--cache", c, "--points", "17")
    assert len(reads) == 3
    assert len(list(c.glob("*.npz"))) == 3


def test_jobs_never_change_the_key(run_cli, run_copy, tmp_path, reads):
    """--jobs went into umap's options, and so into every film's key: a render with --jobs 1 missed the
    entry of one with the default (as the films' workers and umap's, it changes no point)."""
    from layerfilm.config import options

    keys = {json.dumps(options("render", {"jobs": jobs})[0].points_options(), sort_keys=True) for jobs in (0, 1, 2)}
    assert len(keys) == 1
    c = tmp_path / "c"
    render(run_cli, run_copy, tmp_path / "a.webm", "--cache", c, "--jobs", "2")
    render(run_cli, run_copy, tmp_path / "a.webm", "--cache", c)
    assert len(reads) == 1 and len(list(c.glob("*.npz"))) == 1


def test_no_cache_neither_reads_nor_writes(run_cli, run_copy, tmp_path, reads, monkeypatch):
    c = tmp_path / "c"
    monkeypatch.setenv("LAYERFILM_CACHE", str(c))
    render(run_cli, run_copy, tmp_path / "a.webm", "--no-cache")
    render(run_cli, run_copy, tmp_path / "a.webm", "--no-cache")
    assert len(reads) == 2 and not c.exists()
    render(run_cli, run_copy, tmp_path / "a.webm")  # $LAYERFILM_CACHE is the default folder
    assert len(list(c.glob("*.npz"))) == 1


def test_a_damaged_entry_is_a_miss_and_is_rewritten(run_cli, run_copy, tmp_path, reads):
    c = tmp_path / "c"
    render(run_cli, run_copy, tmp_path / "a.webm", "--cache", c)
    (entry,) = c.glob("*.npz")
    entry.write_bytes(b"not a zip")
    render(run_cli, run_copy, tmp_path / "a.webm", "--cache", c)
    assert len(reads) == 2
    assert cache.load(c, entry.stem, Trajectories.from_arrays) is not None


def test_trim_keeps_the_most_recently_used(tmp_path):
    c = cache.cache_dir(tmp_path / "c")  # a new folder: marked as layerfilm's cache
    names = [f"{i:032x}" for i in range(4)]
    for i, name in enumerate(names):
        (c / f"{name}.npz").write_bytes(b"x" * 400_000)
        os.utime(c / f"{name}.npz", (1000 + i, 1000 + i))
    os.utime(c / f"{names[0]}.npz")  # used just now
    cache.trim(c, max_mb=1.0)  # room for two of the four
    assert sorted(p.stem for p in c.glob("*.npz")) == [names[0], names[3]]
