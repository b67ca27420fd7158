"""On-disk cache of what a Run computes from the checkpoints (layerfilm.run), so that a re-render with
other colours, another size or another encoder, or `stills`, `report` and `stability` after a render,
do not read the checkpoints again.

An entry is a dict of arrays in an ``.npz`` file (a film's ``Trajectories``: T x L x N x 2 float32
points, a few MB to ~100 MB; or a series' whole-block measures) named by a key: the SHA-256 of every
checkpoint's resolved path, size and modification time (each file's, for a checkpoint folder; for a
remote checkpoint its URL, size and ETag, or size and modification time from the listing) and of
every option that changes the entry (what it is, weights, features, projection; not the look or the
encoding). A checkpoint rewritten in place has a new
mtime and misses the cache. Where: ``--cache DIR``, else ``$LAYERFILM_CACHE``, else
``$XDG_CACHE_HOME/layerfilm`` or ``~/.cache/layerfilm``. The folder is kept under
``$LAYERFILM_CACHE_MAX_MB`` (default 4096) by removing the least recently used entries.

The cache never stops a film: a folder that cannot be created or written, a damaged entry (recomputed
and replaced) and a bad ``$LAYERFILM_CACHE_MAX_MB`` are each one warning line, and no temporary file
is left behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np

from .errors import OutputError
from .outputs import atomic_output
from .scan import Series
from .storage import AnyPath, RemotePath, stamp

T = TypeVar("T")
VERSION = 4  # bump when the meaning of an entry changes
DEFAULT_MAX_MB = 4096
STALE_PARTIAL_S = 3600  # a temporary entry this old was left by a process that was killed while writing it


def cache_dir(folder: str | Path | None = None) -> Path | None:
    """The cache folder: ``folder``, else $LAYERFILM_CACHE, else the user's cache folder; None (one
    warning) where it cannot be created: the film is made without the cache."""
    if folder is None:
        folder = os.environ.get("LAYERFILM_CACHE") or Path(
            os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "layerfilm"
    folder = Path(folder).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        warnings.warn(f"cache folder {folder}: cannot create it ({e.strerror or e}); going on without the cache "
                      "(pass --cache DIR or --no-cache)", stacklevel=2)
        return None
    return folder


def _file_stamp(path: Path) -> list:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def checkpoint_stamp(path: AnyPath) -> list:
    """[path, size, mtime] of a checkpoint file, or of every file in a checkpoint folder; for a remote
    one [URL, size, version] from the listing (its ETag, or its modification time)."""
    if isinstance(path, RemotePath):
        return stamp(path)
    path = path.resolve()
    if path.is_dir():
        return [str(path), [[str(f.relative_to(path)), *_file_stamp(f)] for f in sorted(path.rglob("*")) if f.is_file()]]
    return [str(path), *_file_stamp(path)]


def key(series: Series, options: dict) -> str:
    """The cache key of ``series`` filmed with ``options`` (a JSON-able dict of what changes the points)."""
    text = json.dumps({"version": VERSION, "options": options,
                       "checkpoints": [[c.step, c.format, checkpoint_stamp(c.path)] for c in series.checkpoints]},
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def load(folder: Path, k: str, parse: Callable[[dict[str, np.ndarray]], T]) -> T | None:
    """``parse`` of the arrays cached under key ``k``, or None: missing, or damaged (whatever reading or
    ``parse`` raises: one warning; the entry is removed, and the caller's ``store`` writes it again)."""
    path = folder / f"{k}.npz"
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            value = parse({name: z[name] for name in z.files})
    except Exception as e:  # noqa: BLE001 - whatever a damaged file raises (EOFError, BadZipFile, zlib...), it is a miss
        warnings.warn(f"cache entry {path}: damaged ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no detail'}); "
                      "computing the key frames again", stacklevel=2)
        _remove(path)
        return None
    try:
        os.utime(path)  # recently used: evicted last
    except OSError:  # a read-only cache: still a hit
        pass
    return value


def _remove(path: Path) -> None:
    """Unlink ``path`` if it is there and can be removed (a read-only cache keeps it)."""
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


def store(folder: Path, k: str, arrays: dict[str, np.ndarray], max_mb: float | None = None) -> Path:
    """Write ``arrays`` under key ``k`` (atomically), then trim the folder to ``max_mb``.
    A cache that cannot be written (disk full, read-only) is a warning: the film does not need it."""
    path = folder / f"{k}.npz"
    try:
        with atomic_output(path, suffix=".npz") as tmp:
            np.savez(tmp, **arrays)  # type: ignore[arg-type]  # numpy types **kwds beside allow_pickle: bool
    except (OutputError, OSError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e).rsplit("(", 1)[-1].rstrip(")")
        warnings.warn(f"cache folder {folder}: key frames not cached ({why})", stacklevel=2)
        return path
    trim(folder, max_mb)
    return path


def max_mb_from_env() -> float:
    """$LAYERFILM_CACHE_MAX_MB as a number of MB (0 or more; inf: no limit); else one warning and the default."""
    text = os.environ.get("LAYERFILM_CACHE_MAX_MB", "")
    if not text:  # unset or empty, as $LAYERFILM_CACHE
        return DEFAULT_MAX_MB
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value >= 0:
        warnings.warn(f"LAYERFILM_CACHE_MAX_MB={text!r}: not a size in MB (a number, 0 or more); "
                      f"using {DEFAULT_MAX_MB}", stacklevel=3)
        return DEFAULT_MAX_MB
    return value


def trim(folder: Path, max_mb: float | None = None) -> None:
    """Remove the least recently used entries until the folder holds at most ``max_mb``
    (default: $LAYERFILM_CACHE_MAX_MB). Entries that cannot be removed are left."""
    if max_mb is None:
        max_mb = max_mb_from_env()
    stats = {}
    for p in folder.glob("*.npz"):
        try:
            st = p.stat()
        except OSError:  # trimmed by another process meanwhile
            continue
        if not p.name.startswith("."):
            stats[p] = st
        elif ".partial-" in p.name and time.time() - st.st_mtime > STALE_PARTIAL_S:  # left by a killed process
            _remove(p)
    total = 0
    for p in sorted(stats, key=lambda p: stats[p].st_mtime, reverse=True):
        total += stats[p].st_size
        if total > max_mb * 2**20:
            _remove(p)
