"""On-disk cache of projected key frames, so that a re-render with other colours, another size or
another encoder does not read the checkpoints again.

An entry is one film's ``Trajectories`` (T x L x N x 2 float32 points, a few MB to ~100 MB) in an
``.npz`` file named by a key: the SHA-256 of every checkpoint's resolved path, size and modification
time (each file's, for a checkpoint folder) and of every option that changes the points (weights,
features, projection; not the look or the encoding). A checkpoint rewritten in place has a new
mtime and misses the cache. Where: ``--cache DIR``, else ``$LAYERFILM_CACHE``, else
``$XDG_CACHE_HOME/layerfilm`` or ``~/.cache/layerfilm``. The folder is kept under
``$LAYERFILM_CACHE_MAX_MB`` (default 4096) by removing the least recently used entries.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
import zipfile
from pathlib import Path

import numpy as np

from .errors import OptionsError
from .project import Trajectories
from .scan import Series

VERSION = 2  # bump when the meaning of an entry changes
DEFAULT_MAX_MB = 4096


def cache_dir(folder: str | Path | None = None) -> Path:
    """The cache folder: ``folder``, else $LAYERFILM_CACHE, else the user's cache folder."""
    if folder is None:
        folder = os.environ.get("LAYERFILM_CACHE") or Path(
            os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "layerfilm"
    folder = Path(folder).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OptionsError(f"cache folder {folder}: cannot create it ({e.strerror or e}); pass --cache DIR or --no-cache") from None
    return folder


def _file_stamp(path: Path) -> list:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def checkpoint_stamp(path: Path) -> list:
    """[path, size, mtime] of a checkpoint file, or of every file in a checkpoint folder."""
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


def load(folder: Path, k: str) -> Trajectories | None:
    """The cached trajectories under key ``k``, or None (a damaged entry is removed)."""
    path = folder / f"{k}.npz"
    if not path.is_file():
        return None
    try:
        with np.load(path) as z:
            stats = {name[6:]: z[name] for name in z.files if name.startswith("stats_")}
            traj = Trajectories(z["steps"], z["blocks"], z["point_ids"], z["xy"], str(z["method"]), stats)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        path.unlink(missing_ok=True)
        return None
    os.utime(path)  # recently used: evicted last
    return traj


def store(folder: Path, k: str, traj: Trajectories, max_mb: float | None = None) -> Path:
    """Write ``traj`` under key ``k`` (atomically), then trim the folder to ``max_mb``.
    A cache that cannot be written (disk full, read-only) is a warning: the film does not need it."""
    path = folder / f"{k}.npz"
    tmp = folder / f".{k}.partial-{os.getpid()}.npz"
    try:
        np.savez(tmp, steps=traj.steps, blocks=traj.blocks, point_ids=traj.point_ids, xy=traj.xy,
                 method=np.str_(traj.method), **{f"stats_{n}": v for n, v in traj.stats.items()})
        os.replace(tmp, path)
        trim(folder, max_mb)
    except OSError as e:
        warnings.warn(f"cache folder {folder}: key frames not cached ({e.strerror or e})", stacklevel=2)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def trim(folder: Path, max_mb: float | None = None) -> None:
    """Remove the least recently used entries until the folder holds at most ``max_mb``."""
    if max_mb is None:
        max_mb = float(os.environ.get("LAYERFILM_CACHE_MAX_MB", DEFAULT_MAX_MB))
    stats = {}
    for p in folder.glob("*.npz"):
        try:
            stats[p] = p.stat()
        except FileNotFoundError:  # trimmed by another process meanwhile
            continue
    total = 0
    for p in sorted(stats, key=lambda p: stats[p].st_mtime, reverse=True):
        total += stats[p].st_size
        if total > max_mb * 2**20:
            p.unlink(missing_ok=True)
