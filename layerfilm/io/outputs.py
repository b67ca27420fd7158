"""Writing outputs without ever risking a user's files.

Every file or folder layerfilm writes (film, PNG frames, stills, figures, reports, exported points,
cache entries) goes through :func:`atomic_output`: it is written under a temporary name beside its
destination (``.NAME.partial-PID``) and renamed onto it only when complete; a failure or an interrupt
(SIGINT, SIGTERM) removes the temporary. Partials left by processes that died (SIGKILL, power loss)
are removed the next time the same output is written. Scratch folders in $TMPDIR (:func:`new_scratch`:
a live film's rows, an activation film's key frames) are named with their process's id, and those of
processes that died (and untouched for an hour) are removed when the next one is made.

What may be replaced (:func:`check_output_path`): nothing but what layerfilm itself writes. An existing
output is replaced only if it is a regular file with the output's own extension, or a folder that
holds nothing but ``frame_NNNNNN.png`` files (a PNG film). An output equal to, inside, or around an
input folder is refused, and so is a symlink, a device node, a FIFO or any other kind of file. The
same is checked again just before the new output is renamed into place (:func:`atomic_output`): a
file or folder that appeared in a PNG film's folder during the run is one OutputError, the folder is
left as it was, and of an old frames folder only its frame files are ever removed.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from layerfilm.errors import OptionsError, OutputError
from layerfilm.parallel.signals import deferred_signals
from layerfilm.text import printable, show

FRAME_FILE = re.compile(r"frame_\d{6,}\.png")
_PARTIAL = re.compile(r"\.(?P<name>.+)\.(?P<tag>partial|palette|old)-(?P<pid>\d+)(?:\.[A-Za-z0-9]+)?")


def _inside(a: Path, b: Path) -> bool:
    """True if ``a`` is ``b`` or lies inside it (both resolved)."""
    return a == b or b in a.parents


def frames_folder(path: Path) -> bool:
    """True if ``path`` is a folder (not a link) holding nothing but regular frame_NNNNNN.png files."""
    try:
        entries = list(os.scandir(path))
    except OSError:
        return False
    return all(FRAME_FILE.fullmatch(e.name) and e.is_file(follow_symlinks=False) for e in entries)


def check_output_path(out: str | Path, suffixes: Iterable[str], inputs: Iterable[str | Path] = (),
                      option: str = "--out", folder: bool = False) -> Path:
    """Refuse, before any work, an output path whose writing could lose something of the user's.

    Args:
        out: the destination.
        suffixes: extensions a replaceable existing file may have (lower case, with the dot).
        inputs: folders (or files) read by the run; ``out`` may be none of them, nor inside or around one.
        option: the option's name, for messages.
        folder: the output is a folder of PNG frames.
    Returns:
        ``out`` as a Path.
    """
    out = Path(out)
    if out.name in ("", ".", ".."):
        raise OptionsError(f"{option} {show(out)}: name a new file or folder, not {show(out) or 'nothing'}")
    parent = out.parent
    if not parent.is_dir():
        raise OptionsError(f"{option} {show(out)}: folder {show(parent)} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{option} {show(out)}: cannot write in {show(parent)} (read-only or no permission)")
    target = parent.resolve() / out.name
    for given in inputs:
        src = Path(given).resolve()
        if _inside(target, src) or _inside(src, target):
            how = "is" if target == src else "is inside" if _inside(target, src) else "holds"
            raise OptionsError(f"{option} {show(out)}: {how} the input {show(given)}; write the output elsewhere")
    try:
        st = os.lstat(out)
    except FileNotFoundError:
        return out
    except OSError as e:
        raise OptionsError(f"{option} {show(out)}: cannot check it ({e.strerror or e})") from None
    if folder:
        if not stat.S_ISDIR(st.st_mode) or not frames_folder(out):
            raise OptionsError(f"{option} {show(out)}: exists and is not a folder of layerfilm frames "
                               "(frame_NNNNNN.png only); layerfilm never replaces it: choose a new name")
    elif not stat.S_ISREG(st.st_mode) or out.suffix.lower() not in suffixes:
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "a link" if stat.S_ISLNK(st.st_mode) else \
            f"a {out.suffix or 'file without extension'} file" if stat.S_ISREG(st.st_mode) else "a special file"
        raise OptionsError(f"{option} {show(out)}: exists and is {kind}, not a {'/'.join(sorted(suffixes))} "
                           "output; layerfilm never replaces it: choose a new name")
    return out


MARK = "layerfilm"  # the Creator a figure of layerfilm's carries (layerfilm.reports.figures.save_figure)


def check_beside_path(out: str | Path, suffixes: Iterable[str], inputs: Iterable[str | Path] = ()) -> Path:
    """:func:`check_output_path` for a file layerfilm names itself beside the output the user named (a
    report's figures, the stills' heatmap): an existing file there is replaced only if layerfilm wrote it
    (it carries MARK), never a file of the user's that happens to have that name."""
    out = check_output_path(out, suffixes, inputs, option="beside --out")
    if out.exists() and not _marked(out):
        raise OptionsError(f"{show(out)}: exists and was not written by layerfilm (the output beside --out); "
                           "layerfilm never replaces it: move it or choose another --out")
    return out


def _marked(path: Path, span: int = 2**20) -> bool:
    """Whether the file carries MARK in its first or last ``span`` bytes (PNG text chunks and SVG metadata
    come first, a PDF's Info dictionary last)."""
    with path.open("rb") as f:
        head = f.read(span)
        f.seek(max(0, path.stat().st_size - span))
        return MARK.encode() in head or MARK.encode() in f.read(span)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_partials(out: Path) -> None:
    """Remove temporaries of ``out`` (``.NAME.partial-PID``, palettes, old frame folders) whose process
    is gone; those of live processes (another render of the same output) are left alone."""
    parent = out.parent
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return
    for e in entries:
        m = _PARTIAL.fullmatch(e.name)
        if m and m["name"] == out.name and int(m["pid"]) != os.getpid() and not _alive(int(m["pid"])):
            (remove_frames if m["tag"] == "old" else discard)(Path(e.path))


def discard(path: Path) -> None:
    """Remove a temporary file or folder of ours; quietly, it is only cleaning up."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    except OSError:
        pass


def remove_frames(path: Path) -> None:
    """Remove a replaced frames folder of ours: its frame_NNNNNN.png files, then the folder if that
    left it empty. Anything else in it (a user's file that came in a race) stays, and so does the folder."""
    try:
        entries = list(os.scandir(path))
    except OSError:
        return
    for e in entries:
        if FRAME_FILE.fullmatch(e.name) and e.is_file(follow_symlinks=False):
            try:
                os.unlink(e.path)
            except OSError:
                pass
    try:
        os.rmdir(path)
    except OSError:
        pass


def _foreign(path: Path) -> str | None:
    """The first entry of folder ``path`` that is not a regular frame_NNNNNN.png file (or why it cannot
    be looked at); None if there is none."""
    try:
        for e in os.scandir(path):
            if not (FRAME_FILE.fullmatch(e.name) and e.is_file(follow_symlinks=False)):
                return e.name
    except OSError as e:
        return f"({e.strerror or e})"
    return None


STALE_SCRATCH_S = 3600  # a scratch folder of a dead process untouched this long is removed
_SCRATCH = re.compile(r"layerfilm-(?:live|act)-(?P<pid>\d+)-[A-Za-z0-9_]+")


def new_scratch(kind: str, folder: str | Path | None = None) -> tempfile.TemporaryDirectory:
    """A new scratch folder ``layerfilm-KIND-PID-XXXXXXXX`` in ``folder`` ($TMPDIR by default), removed
    when it is cleaned up (or its ``with`` block ends). ``kind``: "live" or "act".

    A process killed with SIGKILL leaves its folder behind; so this first removes the folders of that
    form, the user's own, whose process is gone and which nothing touched for :data:`STALE_SCRATCH_S`:
    a process id reused by a live process keeps its folder (for now), and the age spares a process of
    another PID namespace sharing the folder, busy writing there."""
    assert _SCRATCH.fullmatch(f"layerfilm-{kind}-1-x"), kind
    where = Path(folder if folder is not None else tempfile.gettempdir())
    try:
        entries = list(os.scandir(where))
    except OSError:
        entries = []
    for e in entries:
        m = _SCRATCH.fullmatch(e.name)
        if m and int(m["pid"]) != os.getpid() and not _alive(int(m["pid"])) and _stale_scratch(Path(e.path)):
            discard(Path(e.path))
    return tempfile.TemporaryDirectory(prefix=f"layerfilm-{kind}-{os.getpid()}-", dir=folder)


def _stale_scratch(path: Path) -> bool:
    """A real folder of this user whose own and whose entries' last change is older than STALE_SCRATCH_S."""
    try:
        st = path.lstat()
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
            return False
        newest = max([st.st_mtime] + [e.stat(follow_symlinks=False).st_mtime for e in os.scandir(path)])
    except OSError:
        return False
    return time.time() - newest > STALE_SCRATCH_S


_WRITE_ERRORS = {errno.EROFS, errno.ENOSPC, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.EFBIG}


def temporary(out: Path, tag: str = "partial", suffix: str = "") -> Path:
    """The name of a temporary beside ``out`` owned by this process."""
    return out.parent / f".{out.name}.{tag}-{os.getpid()}{suffix}"


@contextmanager
def scratch_folder(out: str | Path) -> Iterator[Path]:
    """Yield a new empty folder beside ``out`` for the pieces it is made from (film segments, a GIF
    palette), removed when the block ends, however it ends. Its name (``.NAME.partial-PID.parts``) is
    a partial of ``out``'s: one left by a killed process is removed by the next run writing ``out``."""
    path = temporary(Path(out), suffix=".parts")
    try:
        path.mkdir()
    except OSError as e:
        if e.errno in _WRITE_ERRORS:
            raise OutputError(f"{show(out)}: cannot write ({e.strerror or e})") from None
        raise
    try:
        yield path
    finally:
        with deferred_signals():
            discard(path)


def _recheck(out: Path, folder: bool) -> None:
    """Check, just before replacing ``out``, that it is still what :func:`check_output_path` let be
    replaced (nothing, a regular file, or a folder of frame files only): one OutputError otherwise."""
    try:
        st = os.lstat(out)
    except FileNotFoundError:
        return
    except OSError as e:
        raise OutputError(f"{show(out)}: cannot check it before replacing it ({e.strerror or e})") from None
    if folder and stat.S_ISDIR(st.st_mode):
        name = _foreign(out)
        if name is None:
            return
        raise OutputError(f"{show(out)}: {printable(name)} appeared in it during the run and is not a layerfilm frame; "
                          "the folder was left as it was, the new frames not written: move it away and run again")
    if not folder and stat.S_ISREG(st.st_mode):
        return
    raise OutputError(f"{show(out)}: was replaced during the run by something that is not a layerfilm output; "
                      "it was left as it was, the new output not written: move it away and run again")


@contextmanager
def removed_on_error(files: list[Path]) -> Iterator[list[Path]]:
    """The files a block writes (it appends each as written): all removed if the block raises, so that
    a failed command leaves nothing half-written beside its output."""
    try:
        yield files
    except BaseException:
        for f in files:
            f.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_output(out: str | Path, folder: bool = False, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``out`` (a new empty folder if ``folder``); when the block
    completes, rename it onto ``out`` (which :func:`check_output_path` has vetted). On any failure
    or interrupt the temporary is removed and ``out`` is left as it was. A write that the file system
    refuses (read-only, full, no permission) becomes one :class:`OutputError` naming ``out``.

    ``suffix`` is appended to the temporary's name for writers that pick a format by extension."""
    out = Path(out)
    remove_stale_partials(out)
    tmp = temporary(out, suffix=suffix)
    old: Path | None = None
    try:
        try:
            if folder:
                tmp.mkdir()
            yield tmp
            _recheck(out, folder)
            if folder and os.path.lexists(out):
                old = temporary(out, "old")
                os.replace(out, old)
                if _foreign(old) is not None:  # came in since _recheck: put it back as it was
                    os.replace(old, out)
                    old = None
                    _recheck(out, folder)
            try:
                os.replace(tmp, out)
            except OSError:
                if old is not None:  # put the previous frames back
                    os.replace(old, out)
                    old = None
                raise
        except OSError as e:
            if e.errno in _WRITE_ERRORS or isinstance(e, (IsADirectoryError, NotADirectoryError)):
                raise OutputError(f"{show(out)}: cannot write ({e.strerror or e})") from None
            raise
    finally:
        with deferred_signals():
            discard(tmp)
            if old is not None:
                remove_frames(old)
