"""The points cache (layerfilm.io.cache).

layerfilm.io.cache: a re-render with other colours does not read the checkpoints; anything that
changes the points (a rewritten checkpoint, another --points) misses; damage is a miss, not an error.

Hostile caches (issue 11): a damaged entry, an unwritable or uncreatable folder, a bad
$LAYERFILM_CACHE_MAX_MB. Each is one warning line, never a failure; the film is made; a damaged entry
is recomputed and replaced; no temporary file is left in the cache folder."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest

from layerfilm.io import cache
from layerfilm.projection import Trajectories


# ==== layerfilm.io.cache
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


# ==== Hostile caches (issue 11)
def render_warnings(run_cli, run: Path, out: Path, cache_dir: Path | None) -> list[str]:
    """Render ``run`` through ``cache_dir`` (None: the default one): must succeed, film written, no traceback;
    returns the warning lines. A small film in this process (the cache is the point, not the film's workers)."""
    where = ("--cache", cache_dir) if cache_dir is not None else ()
    code, _, err = run_cli("render", run, "--out", out, "--size", "320x180", "--fps", "2", "--jobs", "1", "--quiet", *where)
    assert code == 0, err
    assert "Traceback" not in err
    assert out.is_file() and out.stat().st_size > 0
    lines = [line for line in err.strip().splitlines() if not line.startswith("wrote ")]
    assert all(line.startswith("warning: ") for line in lines), err
    return lines


def no_partials(folder: Path) -> None:
    if folder.exists():
        assert not [p.name for p in folder.iterdir() if ".partial-" in p.name]


def damage_empty(entry: Path) -> None:
    entry.write_bytes(b"")


def damage_truncated(entry: Path) -> None:
    entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 2])


def damage_shapes(entry: Path) -> None:
    """A valid .npz whose points do not fit its steps (another writer, another version)."""
    with np.load(entry) as z:
        arrays = {n: z[n] for n in z.files}
    arrays["xy"] = arrays["xy"][:, :, :, :1]
    np.savez(entry.with_suffix(""), **arrays)


@pytest.mark.parametrize("damage", [damage_empty, damage_truncated, damage_shapes], ids=lambda f: f.__name__)
def test_a_damaged_entry_is_recomputed_with_one_warning_and_replaced(run_cli, run_copy, tmp_path, reads, damage):
    c = tmp_path / "c"
    assert render_warnings(run_cli, run_copy, tmp_path / "a.webm", c) == []
    (entry,) = c.glob("*.npz")
    damage(entry)
    lines = render_warnings(run_cli, run_copy, tmp_path / "b.webm", c)
    assert len(lines) == 1 and lines[0].startswith(f"warning: cache entry {entry}: damaged (")
    assert lines[0].endswith("computing the key frames again")
    assert len(reads) == 2
    assert cache.load(c, entry.stem, Trajectories.from_arrays) is not None  # replaced by a good entry
    assert render_warnings(run_cli, run_copy, tmp_path / "c.webm", c) == [] and len(reads) == 2  # a hit again
    no_partials(c)


def test_an_uncreatable_cache_folder_is_one_warning(run_cli, run_copy, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    lines = render_warnings(run_cli, run_copy, tmp_path / "a.webm", blocker / "sub")
    assert len(lines) == 1
    assert lines[0].startswith(f"warning: cache folder {blocker / 'sub'}: cannot create it (")
    assert blocker.read_text() == ""


def _erofs(*args, **kwargs):
    raise OSError(errno.EROFS, os.strerror(errno.EROFS))


def _disk_full(file, *args, **kwargs):
    Path(file).write_bytes(b"PK\x03\x04 half an entry")  # written in part, then the disk is full
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _denied(*args, **kwargs):
    raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))


def fail_in(monkeypatch, module, name: str, folder: Path, fake) -> None:
    """Make ``module.name`` (a function of the os or numpy module, shared by everything) call ``fake`` for
    paths in ``folder`` only: the film's own writes go on as usual."""
    real = getattr(module, name)

    def patched(path, *args, **kwargs):
        return (fake if Path(path).parent == folder else real)(path, *args, **kwargs)

    monkeypatch.setattr(module, name, patched)


@pytest.mark.parametrize("target, fake", [
    ("replace", _erofs),  # the entry cannot be renamed into place
    ("savez", _disk_full),  # a temporary file half written
    ("savez", _denied),  # not even the temporary file can be made
], ids=["replace-erofs", "savez-enospc", "savez-eacces"])
def test_an_unwritable_cache_is_one_warning_and_leaves_no_temporary_file(run_cli, run_copy, tmp_path, monkeypatch,
                                                                         target, fake):
    c = tmp_path / "c"
    c.mkdir()
    fail_in(monkeypatch, cache.os if target == "replace" else cache.np, target, c, fake)
    lines = render_warnings(run_cli, run_copy, tmp_path / "a.webm", c)
    assert len(lines) == 1 and lines[0].startswith(f"warning: cache folder {c}: key frames not cached (")
    assert [p.name for p in c.iterdir()] == [cache.MARK]  # marked as layerfilm's (it was empty); nothing else


def test_a_read_only_cache_folder_is_one_warning(run_cli, run_copy, tmp_path, monkeypatch):
    """As on a read-only mount: writing, renaming and removing all fail with EROFS (removing the
    temporary file, too: that was store()'s traceback)."""
    c = tmp_path / "c"
    c.mkdir()
    fail_in(monkeypatch, cache.np, "savez", c, _erofs)
    fail_in(monkeypatch, cache.os, "replace", c, _erofs)
    fail_in(monkeypatch, Path, "unlink", c, _erofs)
    lines = render_warnings(run_cli, run_copy, tmp_path / "a.webm", c)
    assert len(lines) == 1 and "key frames not cached (Read-only file system)" in lines[0]


def test_a_read_only_cache_still_serves_its_entries(run_cli, run_copy, tmp_path, reads, monkeypatch):
    c = tmp_path / "c"
    render_warnings(run_cli, run_copy, tmp_path / "a.webm", c)
    fail_in(monkeypatch, cache.os, "utime", c, _erofs)  # marking an entry as recently used fails
    assert render_warnings(run_cli, run_copy, tmp_path / "b.webm", c) == []
    assert len(reads) == 1


@pytest.mark.parametrize("value", ["abc", "-5", "nan"])
def test_a_bad_cache_size_is_one_warning_and_the_default(run_cli, run_copy, tmp_path, monkeypatch, value):
    monkeypatch.setenv("LAYERFILM_CACHE_MAX_MB", value)
    c = tmp_path / "c"
    lines = render_warnings(run_cli, run_copy, tmp_path / "a.webm", c)
    assert lines == [f"warning: LAYERFILM_CACHE_MAX_MB={value!r}: not a size in MB (a number, 0 or more); "
                     f"using {cache.DEFAULT_MAX_MB}"]
    assert len(list(c.glob("*.npz"))) == 1  # stored, and not trimmed away
    no_partials(c)


def test_a_stale_temporary_entry_is_removed_a_fresh_one_kept(tmp_path):
    c = cache.cache_dir(tmp_path / "c")
    stale, fresh = c / f".{'1' * 32}.npz.partial-1.npz", c / f".{'2' * 32}.npz.partial-2.npz"
    for p in (stale, fresh):
        p.write_bytes(b"x")
    old = os.stat(stale).st_mtime - cache.STALE_PARTIAL_S - 60
    os.utime(stale, (old, old))
    cache.trim(c, max_mb=0)  # partials are not entries: never counted or trimmed as such
    assert not stale.exists() and fresh.exists()


# ---------------------------------------------------------------- whose files (issue 24)

def stamps(folder: Path) -> dict[str, tuple]:
    """Every path under ``folder``: kind, inode, and a file's size and mtime (never the bytes: a 5 GB sparse
    file; never a folder's mtime, which an entry of layerfilm's own coming or going changes)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        st = p.lstat()
        out[str(p.relative_to(folder))] = (st.st_mode, st.st_ino) + (() if p.is_dir() else (st.st_size, st.st_mtime_ns))
    return out


def users_folder(tmp_path: Path, case: str) -> Path:
    """A folder of the user's holding .npz files layerfilm did not write (the issue's reproductions)."""
    d = tmp_path / case
    d.mkdir()
    if case == "keep":  # np.savez('keep/results.npz', a=1), then LAYERFILM_CACHE_MAX_MB=0
        np.savez(d / "results.npz", a=1)
    else:  # a 5 GB proj/embeddings.npz (sparse) with the default limit; and a file named like an entry
        with open(d / "embeddings.npz", "wb") as f:
            f.truncate(5 * 2**30)
        np.savez(d / f"{'ab' * 16}.npz", a=2)
    return d


@pytest.mark.parametrize("case, max_mb", [("keep", "0"), ("proj", "")], ids=["results-max0", "embeddings-5GB"])
def test_a_cache_folder_of_the_users_loses_nothing(run_cli, run_copy, tmp_path, reads, monkeypatch, case, max_mb):
    """`--cache keep` with LAYERFILM_CACHE_MAX_MB=0 deleted keep/results.npz; `--cache proj` deleted a 5 GB
    proj/embeddings.npz. Now layerfilm caches in a subfolder of its own there and trims only that."""
    monkeypatch.setenv("LAYERFILM_CACHE_MAX_MB", max_mb)
    d = users_folder(tmp_path, case)
    before = stamps(d)
    for out in ("a.webm", "b.webm"):
        assert render_warnings(run_cli, run_copy, tmp_path / out, d) == []
    assert {k: v for k, v in stamps(d).items() if k in before} == before
    own = d / cache.OWN_FOLDER
    assert set(stamps(d)) - set(before) <= {cache.OWN_FOLDER, *(f"{cache.OWN_FOLDER}/{n}" for n in os.listdir(own))}
    names = sorted(p.name for p in own.iterdir())
    if max_mb == "0":  # trimmed right after it was written: nothing but the mark
        assert names == [cache.MARK] and len(reads) == 2
    else:  # the second render was a hit
        entries = [n for n in names if n != cache.MARK]  # the key sorts before or after the mark: its first digit
        assert len(names) == 2 and cache.MARK in names and cache.KEY_ENTRY.fullmatch(entries[0]) and len(reads) == 1
    assert cache.marked(own) and not cache.marked(d)


def test_in_layerfilms_own_cache_only_its_entries_are_trimmed(run_cli, run_copy, tmp_path):
    """Files a user puts into a marked cache folder (another .npz, a folder, a link named like an entry)
    are never removed, whatever the limit."""
    c = tmp_path / "c"
    render_warnings(run_cli, run_copy, tmp_path / "a.webm", c)
    ours = [p.name for p in c.iterdir() if cache.KEY_ENTRY.fullmatch(p.name)]
    assert ours
    mine = tmp_path / "mine.npz"
    np.savez(mine, a=3)
    np.savez(c / "notes.npz", a=1)
    (c / "sub").mkdir()
    np.savez(c / "sub" / f"{'cd' * 16}.npz", a=2)
    (c / f"{'ef' * 16}.npz").symlink_to(mine)
    before = {k: v for k, v in stamps(tmp_path).items() if Path(k).name not in ours}
    cache.trim(c, max_mb=0)
    assert stamps(tmp_path) == before  # its own entries trimmed, nothing else touched


@pytest.mark.parametrize("where", ["equal", "inside", "around", "env"])
def test_a_cache_folder_equal_to_inside_or_around_the_input_is_refused(run_cli, run_copy, tmp_path, monkeypatch,
                                                                         where):
    """`--cache ck` wrote into the checkpoint folder and deleted ck/eval_metrics.npz."""
    np.savez(run_copy / "eval_metrics.npz", loss=1.5)
    c = {"equal": run_copy, "inside": run_copy / "cache", "around": tmp_path, "env": run_copy}[where]
    option = ["--cache", c]
    if where == "env":
        monkeypatch.setenv("LAYERFILM_CACHE", str(c))
        option = []
    monkeypatch.setenv("LAYERFILM_CACHE_MAX_MB", "0")
    before = stamps(tmp_path)
    code, _, err = run_cli("render", run_copy, "--out", tmp_path / "a.webm", "--quiet", *option)
    how = {"equal": "is", "inside": "is inside", "around": "holds", "env": "is"}[where]
    name = "$LAYERFILM_CACHE" if where == "env" else "--cache"
    assert code == 2
    assert err.splitlines() == [f"layerfilm: error: {name} {c}: {how} the input {run_copy}; "
                                "pass --cache DIR outside the checkpoints (or --no-cache)"]
    assert stamps(tmp_path) == before


def test_the_default_cache_of_an_earlier_version_is_adopted(run_cli, run_copy, tmp_path, monkeypatch):
    """~/.cache/layerfilm holding only entries of an earlier layerfilm (no mark yet) is marked and trimmed;
    one that also holds a file of someone else's is left alone (a subfolder of layerfilm's own is used)."""
    monkeypatch.delenv("LAYERFILM_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("LAYERFILM_CACHE_MAX_MB", "0")
    old = tmp_path / "xdg" / "layerfilm"
    old.mkdir(parents=True)
    np.savez(old / f"{'01' * 16}.npz", a=1)
    render_warnings(run_cli, run_copy, tmp_path / "a.webm", None)
    assert sorted(p.name for p in old.iterdir()) == [cache.MARK]
    (old / cache.MARK).unlink()
    np.savez(old / f"{'01' * 16}.npz", a=1)
    np.savez(old / "other.npz", a=1)
    render_warnings(run_cli, run_copy, tmp_path / "b.webm", None)
    assert sorted(p.name for p in old.iterdir()) == [f"{'01' * 16}.npz", cache.OWN_FOLDER, "other.npz"]
