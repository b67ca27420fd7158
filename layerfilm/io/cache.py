"""On-disk cache of what a Run computes from the checkpoints (layerfilm.study), so that a re-render with
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

Whose files: layerfilm removes only what it can prove it wrote. It uses a folder only once it has
marked it as its cache (a ``CACHEDIR.TAG`` with the standard signature and a layerfilm line), and it
writes that mark only in a folder it created or found empty (or, for the default folder, one holding
nothing but layerfilm's own entries: caches of earlier versions). A folder that holds anything else is
used through a subfolder of its own, ``layerfilm-cache/``, under the same rule. In its cache it
removes only its own names (``<32 hex digits>.npz`` and their temporaries), never another file there.
A cache folder equal to, inside or around an input folder is refused (one line, before any tensor is read).

The cache never stops a film: a folder that cannot be created or written, a damaged entry (recomputed
and replaced) and a bad ``$LAYERFILM_CACHE_MAX_MB`` are each one warning line, and no temporary file
is left behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

import numpy as np

from layerfilm.errors import OptionsError, OutputError
from layerfilm.io.outputs import atomic_output
from layerfilm.io.scan import Series
from layerfilm.io.storage import AnyPath, RemotePath, stamp
from layerfilm.text import show

T = TypeVar("T")
VERSION = 4  # bump when the meaning of an entry changes
DEFAULT_MAX_MB = 4096
STALE_PARTIAL_S = 3600  # a temporary entry this old was left by a process that was killed while writing it


KEY_ENTRY = re.compile(r"[0-9a-f]{32}\.npz")  # a cache entry's name: its key (see :func:`key`)
PARTIAL_ENTRY = re.compile(r"\.[0-9a-f]{32}\.npz\.partial-\d+\.npz")  # one being written (outputs.atomic_output)
MARK = "CACHEDIR.TAG"
SIGNATURE = "Signature: 8a477f597d28d172789f06886806bc55"  # https://bford.info/cachedir/
MARK_TEXT = (f"{SIGNATURE}\n# This file is a cache directory tag created by layerfilm: its cache of key frames.\n"
             "# layerfilm removes only its own entries here (<32 hex digits>.npz). See https://bford.info/cachedir/\n")
OWN_FOLDER = "layerfilm-cache"  # the cache inside a given folder that holds other things


def cache_dir(folder: str | Path | None = None, inputs: Iterable[AnyPath] = ()) -> Path | None:
    """The cache folder, marked as layerfilm's: ``folder``, else $LAYERFILM_CACHE, else the user's cache
    folder; its subfolder ``layerfilm-cache`` where it holds other things (see the module's "Whose
    files"). None (one warning) where neither can be created or marked: the film is made without the
    cache. One OptionsError if it is equal to, inside or around one of the local ``inputs``."""
    option = "--cache"
    if folder is None:
        option = "LAYERFILM_CACHE" if os.environ.get("LAYERFILM_CACHE") else "cache folder"
        folder = os.environ.get("LAYERFILM_CACHE") or Path(
            os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "layerfilm"
    folder = Path(folder).expanduser()
    _check_inputs(folder, inputs, option)
    place = folder
    try:
        for place in (folder, folder / OWN_FOLDER):
            place.mkdir(parents=True, exist_ok=True)
            if _claim(place, legacy=option == "cache folder" and place == folder):
                return place
    except OSError as e:
        warnings.warn(f"cache folder {show(place)}: cannot create it ({e.strerror or e}); going on without the cache "
                      "(pass --cache DIR or --no-cache)", stacklevel=2)
        return None
    warnings.warn(f"cache folder {show(place)}: holds files layerfilm did not write; going on without the cache "
                  "(pass --cache DIR or --no-cache)", stacklevel=2)
    return None


def _check_inputs(folder: Path, inputs: Iterable[AnyPath], option: str) -> None:
    """Refuse a cache folder equal to, inside or around a local input: its entries would change the
    input's key, and trimming would work among the checkpoints."""
    where = folder.resolve()
    for given in inputs:
        if isinstance(given, RemotePath):
            continue
        src = Path(given).resolve()
        if where == src or src in where.parents or where in src.parents:
            how = "is" if where == src else "is inside" if src in where.parents else "holds"
            name = f"${option}" if option == "LAYERFILM_CACHE" else option
            raise OptionsError(f"{name} {show(folder)}: {how} the input {show(given)}; "
                               "pass --cache DIR outside the checkpoints (or --no-cache)")


def marked(folder: Path) -> bool:
    """True if ``folder`` holds layerfilm's cache mark (a CACHEDIR.TAG that layerfilm wrote)."""
    try:
        with open(folder / MARK, encoding="utf-8", errors="replace") as f:
            return f.read(len(MARK_TEXT) + 1) == MARK_TEXT
    except OSError:
        return False


def _claim(folder: Path, legacy: bool = False) -> bool:
    """True if ``folder`` is layerfilm's cache: marked, or now marked because it was empty (or, with
    ``legacy``, held nothing but layerfilm's entries). A folder holding anything else is never marked."""
    if marked(folder):
        return True
    names = os.listdir(folder)
    if names and not (legacy and all(KEY_ENTRY.fullmatch(n) or PARTIAL_ENTRY.fullmatch(n) for n in names)):
        return False
    try:
        with open(folder / MARK, "x", encoding="utf-8") as f:
            f.write(MARK_TEXT)
    except FileExistsError:  # another process marked it meanwhile (or a user's tag: then not ours)
        pass
    return marked(folder)


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
        _remove(folder, path)
        return None
    try:
        os.utime(path)  # recently used: evicted last
    except OSError:  # a read-only cache: still a hit
        pass
    return value


def _remove(folder: Path, path: Path) -> None:
    """Unlink ``path``, an entry (or a temporary) of layerfilm's cache ``folder``: only a regular file of
    layerfilm's own name in a folder that layerfilm marked; quietly (a read-only cache keeps it)."""
    if not (KEY_ENTRY.fullmatch(path.name) or PARTIAL_ENTRY.fullmatch(path.name)) or path.parent != folder:
        return
    try:
        if stat.S_ISREG(path.lstat().st_mode) and marked(folder):
            path.unlink()
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
    """Remove the least recently used entries until the folder's entries take at most ``max_mb``
    (default: $LAYERFILM_CACHE_MAX_MB), and temporaries left by killed processes. Only layerfilm's own
    names in a folder it marked (:func:`cache_dir`); entries that cannot be removed are left."""
    if max_mb is None:
        max_mb = max_mb_from_env()
    if not marked(folder):
        return
    stats = {}
    for e in os.scandir(folder):
        try:
            st = e.stat(follow_symlinks=False)
        except OSError:  # trimmed by another process meanwhile
            continue
        if not stat.S_ISREG(st.st_mode):
            continue
        if KEY_ENTRY.fullmatch(e.name):
            stats[Path(e.path)] = st
        elif PARTIAL_ENTRY.fullmatch(e.name) and time.time() - st.st_mtime > STALE_PARTIAL_S:  # left by a killed process
            _remove(folder, Path(e.path))
    total = 0
    for p in sorted(stats, key=lambda p: stats[p].st_mtime, reverse=True):
        total += stats[p].st_size
        if total > max_mb * 2**20:
            _remove(folder, p)
