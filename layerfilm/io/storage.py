"""Where checkpoint bytes come from: a local file, or a file in object storage named by an fsspec URL
(``s3://``, ``gs://``, ``hf://``, ``http(s)://``).

Local paths stay :class:`pathlib.Path` and keep their fast paths (``os.pread`` on a descriptor advised
``POSIX_FADV_RANDOM``, torch's memory map); ``file://`` URLs become local paths. A remote file or folder
is a :class:`RemotePath`: the few ``Path`` methods the scan and the readers use (``name``, ``suffix``,
``/``, ``is_dir``, ``is_file``, ``iterdir``, ``stat``, ``read_text``), answered from one listing per
folder (which also gives each file's size and ETag or modification time), so the formats stay
format-only. It pickles as its URL, its storage options (JSON) and what the listing said, so a block
task in a worker process or on a Dask worker re-opens the file itself without listing again.

Remote bytes are read only by byte ranges (fsspec ``cat_ranges``): the header, then the tracked rows.
Every answer is checked for its length: a server that ignores ``Range`` (it sends the whole file) or
sends a wrong length is a :class:`StorageError`, one line, never a silent whole-file read. Over http(s)
the ranges are read here (:func:`_http_range`): an answer is streamed and dropped at the length asked
(a server sending the whole file is refused from its headers, not buffered), and its ``Content-Range``
must name the range asked. Many sorted ranges go MULTI_RANGES to a request (:func:`_http_multi`, RFC
7233 multi-range, one ``multipart/byteranges`` answer), falling back to one range a request for a
server that answers with a single range or the whole file. Torch pickles cannot be read by ranges, so
they are refused over a URL (see ``PICKLE_OVER_URL``).

Nothing waits forever (:func:`timeouts`): a connection has ``LAYERFILM_CONNECT_TIMEOUT`` seconds, a
listing ``LAYERFILM_READ_TIMEOUT`` more, and a ranged read must bring ``PROGRESS`` bytes (or the rest of
its range) in every ``LAYERFILM_READ_TIMEOUT`` seconds (a server trickling a byte a second is stopped).

Locations are shown redacted (:func:`redact`): ``str()`` of a :class:`RemotePath` drops the URL's
``user:password@``, and a storage error's text drops it and the values of secret-looking storage options;
the real URL and options are used only for the requests.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import stat
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np

from layerfilm.errors import CheckpointError, LayerfilmError, OptionsError, StorageError

URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# fsspec protocol -> the package (and layerfilm extra) that provides it, for a missing-package message
EXTRAS = {"s3": ("s3fs", "s3"), "s3a": ("s3fs", "s3"), "gs": ("gcsfs", "gcs"), "gcs": ("gcsfs", "gcs"),
          "http": ("aiohttp", "http"), "https": ("aiohttp", "http"), "hf": ("huggingface_hub", "hf")}
# what tells two versions of a remote file apart, first found wins; else size + modification time
_VERSION_KEYS = ("ETag", "etag", "md5Hash", "blob_id", "sha256")
_TIME_KEYS = ("LastModified", "last_modified", "Last-Modified", "mtime", "updated", "modified", "created")
# storage options whose values are secrets (never shown): key, secret, token, password, credentials...
_SECRET_OPTION = re.compile(r"key|secret|token|passw|credential|auth|session|signature", re.IGNORECASE)
_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/\s?#]*@")
TIMEOUTS = {"LAYERFILM_CONNECT_TIMEOUT": 10.0, "LAYERFILM_READ_TIMEOUT": 30.0}  # seconds, by default
PROGRESS = 64 * 1024  # a ranged read must bring this many bytes (or the rest) per read timeout
_CHUNK = 1 << 20  # a streamed answer is read in pieces of at most this many bytes
HTTP_REQUESTS = 64  # ranged GETs in flight at once for one read
PICKLE_OVER_URL = ("a PyTorch pickle cannot be read by byte ranges, and layerfilm does not download whole files "
                   "from a URL; convert the checkpoints to .safetensors or copy the folder to a local disk")


def is_remote(path: object) -> bool:
    return isinstance(path, RemotePath)


def _secrets(value: Any, secret: bool = False) -> list[str]:
    """The string values under secret-looking keys of storage options (nested ones too)."""
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in _secrets(v, secret or bool(_SECRET_OPTION.search(str(k))))]
    if isinstance(value, list):
        return [s for v in value for s in _secrets(v, secret)]
    return [str(value)] if secret and isinstance(value, (str, int)) and len(str(value)) >= 4 else []


def redact(text: str, options: str = "{}") -> str:
    """``text`` safe to show: every URL's ``user:password@`` written as ``***@``, and the values of the
    secret-looking storage ``options`` (JSON; key, secret, token, password, credentials...) as ``***``."""
    text = _USERINFO.sub(r"\1***@", text)
    try:
        hidden = _secrets(json.loads(options))
    except ValueError:
        hidden = []
    for secret in sorted(hidden, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def parse_storage_options(text: str | None) -> str:
    """``--storage-options`` checked to be a JSON object, as canonical JSON (picklable, hashable).
    A bad one is never echoed: it may hold credentials."""
    if not text:
        return "{}"
    try:
        value = json.loads(text)
    except ValueError as e:  # the error names the position, never the text
        raise OptionsError(f"storage_options: not JSON ({str(e).splitlines()[0]}); give a JSON object") from None
    if not isinstance(value, dict):
        raise OptionsError("storage_options: must be a JSON object, e.g. "
                           '\'{"endpoint_url": "http://127.0.0.1:9000"}\'')
    return json.dumps(value, sort_keys=True)


def timeouts() -> tuple[float, float]:
    """(connect, read) timeouts in seconds: ``LAYERFILM_CONNECT_TIMEOUT`` (default 10) and
    ``LAYERFILM_READ_TIMEOUT`` (default 30). A remote read never waits longer for a connection, and a
    listing, an answer's headers or the next ``PROGRESS`` bytes of a range never wait longer than read."""
    values = []
    for name, default in TIMEOUTS.items():
        text = os.environ.get(name, "").strip()
        try:
            value = float(text) if text else default
        except ValueError:
            value = float("nan")
        if not 0 < value < float("inf"):
            raise OptionsError(f"{name}={text}: give the timeout in seconds, e.g. {default:g}")
        values.append(value)
    return values[0], values[1]


def location(folder: str | Path | RemotePath, storage_options: str | None = None) -> Path | RemotePath:
    """The checkpoint folder ``folder`` names: a local Path (``file://`` URLs too) or a :class:`RemotePath`.
    ``storage_options``: JSON passed to fsspec; only for a remote folder."""
    if isinstance(folder, RemotePath):
        return folder
    m = URL.match(str(folder))
    if m is None or m.group(1).lower() == "file":
        if storage_options not in (None, "", "{}"):
            raise OptionsError(f"storage_options: {folder} is a local folder; the options are for URLs "
                               "(s3://, gs://, hf://, http(s)://)")
        return Path(unquote(urlparse(str(folder)).path)) if m else Path(folder)
    return RemotePath(str(folder), parse_storage_options(storage_options))


def local_inputs(folder: str | Path | RemotePath) -> tuple[Path, ...]:
    """The input folder as the outputs' checks want it (an output may not be in or around it): a local
    folder, or nothing for a URL (no output can be inside a bucket)."""
    where = location(folder)
    return (where,) if isinstance(where, Path) else ()


def local_path(path: Path | RemotePath) -> Path:
    """``path`` where only a local file will do (activation films build the model from local files;
    Run refuses a URL for them before this is reached)."""
    if not isinstance(path, Path):
        raise OptionsError(f"{path}: features=activations needs a local folder, not a URL")
    return path


@dataclass(frozen=True)
class RemoteStat:
    """What a listing tells of a remote file, shaped as the ``os.stat_result`` fields the readers use.
    ``st_ino`` carries the version (ETag, or size + modification time): with the size it tells two
    versions of a file apart, as inode and mtime do for a local one."""

    st_size: int
    st_ino: str
    st_mtime_ns: int = 0
    st_mode: int = stat.S_IFREG | 0o444


class RemotePath:
    """A file or folder named by an fsspec URL; the subset of ``pathlib.Path`` that scan and the formats use.

    url:     the URL without a trailing slash; options: fsspec storage options as canonical JSON;
    entry:   what the parent folder's listing said of it ({"type", "size", "version"}), once known;
    children: a folder's listing (name -> entry), once listed.

    Both travel with it (pickled), so a worker opens a checkpoint without listing or stat-ing it again.
    They are kept on the object, not per process: a new scan lists anew and sees files that changed.
    """

    def __init__(self, url: str, options: str = "{}", entry: dict | None = None, listed: bool = False) -> None:
        self.url = url.rstrip("/")
        self.options = options
        self.entry = entry
        self.children: dict[str, dict] | None = None
        self._looked = listed or entry is not None  # the parent's listing was consulted (absent if entry is None)

    # ------------------------------------------------------------ naming
    def __str__(self) -> str:
        """The URL as shown everywhere (messages, reports, JSON, cache keys): credentials redacted."""
        return redact(self.url)

    def __repr__(self) -> str:
        return f"RemotePath({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RemotePath) and (self.url, self.options) == (other.url, other.options)

    def __hash__(self) -> int:
        return hash((self.url, self.options))

    def __lt__(self, other: RemotePath) -> bool:
        return self.url < other.url

    def __truediv__(self, name: str) -> RemotePath:
        """The file or folder ``name`` in this folder, with what this folder's listing (made once) says of it."""
        return RemotePath(f"{self.url}/{name}", self.options, self.listing().get(name), listed=True)

    @property
    def name(self) -> str:
        return unquote(str(self).rsplit("/", 1)[-1])  # a host's URL has only the host as its name

    @property
    def suffix(self) -> str:
        return os.path.splitext(self.name)[1]

    @property
    def parent(self) -> RemotePath:
        return RemotePath(self.url.rsplit("/", 1)[0], self.options)

    def resolve(self) -> RemotePath:
        return self

    @property
    def protocol(self) -> str:
        m = URL.match(self.url)
        assert m is not None  # made by location() from a URL
        return m.group(1).lower()

    @property
    def fs(self) -> Any:
        return filesystem(self.protocol, self.options)

    # ------------------------------------------------------------ what the listing says
    def _entry(self) -> dict | None:
        """What the parent's listing says of this file (listing the parent if nothing is known yet)."""
        if not self._looked and urlparse(self.url).path.strip("/"):  # a bucket or host has no parent to list
            self.entry = self.parent.listing().get(self.name)
            self._looked = True
        return self.entry

    def listing(self) -> dict[str, dict]:
        """name -> entry of everything directly inside this folder (listed once); {} if it is not a folder."""
        if self.children is None:
            self.children = listing(self)
        return self.children

    def is_dir(self) -> bool:
        if self.entry is not None:
            return self.entry["type"] == "directory"
        if self._looked:  # not in its parent's listing
            return False
        return bool(self.listing())  # a folder if it lists anything (object stores have no empty folders)

    def is_file(self) -> bool:
        entry = self._entry()
        return entry is not None and entry["type"] == "file"

    def exists(self) -> bool:
        return self.is_file() or self.is_dir()

    def iterdir(self) -> list[RemotePath]:
        return [RemotePath(f"{self.url}/{name}", self.options, entry, listed=True) for name, entry in self.listing().items()]

    def stat(self) -> RemoteStat:
        """Size and version of a file, from the listing (or the server's answer to HEAD where the listing
        has none, as an HTTP index page)."""
        entry = self._entry()
        if entry is None:
            raise FileNotFoundError(2, "No such file")
        if entry["type"] != "file":
            return RemoteStat(0, "", st_mode=stat.S_IFDIR | 0o555)
        if entry["size"] is None or entry["version"] is None:
            with _errors(self):
                self.entry = entry = _entry_of(_bounded(self.fs, "info", self.url))
        if entry["size"] is None:
            raise StorageError(f"{self}: the server does not tell the file's size")
        return RemoteStat(entry["size"], entry["version"])

    def read_bytes(self) -> bytes:
        """A whole small file (an index or trainer_state.json), its length checked against the listing."""
        size = self.stat().st_size
        return read_ranges(self, [(0, size)])[0]

    def read_text(self) -> str:
        return self.read_bytes().decode("utf-8")


AnyPath = Path | RemotePath

_FILESYSTEMS: dict[tuple, Any] = {}
# variables the filesystems read when they are made (and the timeouts given to them)
_ENV = ("AWS_", "GOOGLE_", "GCS", "HF_", "FSSPEC", *TIMEOUTS)
_LOCK = threading.Lock()


def filesystem(protocol: str, options: str) -> Any:
    """The fsspec filesystem of ``protocol`` with ``options`` (JSON), one per process and environment
    (s3fs reads AWS_ENDPOINT_URL and credentials when made; fsspec's own instance cache would hand back
    one made under other variables)."""
    key = (protocol, options, tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(_ENV))))
    with _LOCK:
        fs = _FILESYSTEMS.get(key)
        if fs is None:
            try:
                import fsspec

                fs = fsspec.filesystem(protocol, skip_instance_cache=True, **_with_timeouts(protocol, json.loads(options)))
            except ImportError as e:
                package, extra = EXTRAS.get(protocol, (getattr(e, "name", None) or "fsspec", ""))
                hint = f"pip install 'layerfilm[{extra}]'" if extra else f"pip install {package}"
                raise OptionsError(f"{protocol}:// URLs need {package}: {hint}") from None
            except ValueError as e:  # fsspec: unknown protocol
                raise OptionsError(f"{protocol}:// URLs: {str(e).splitlines()[0]}") from None
            except TypeError as e:  # an option the filesystem does not take
                raise OptionsError(f"storage_options: {str(e).splitlines()[0]}") from None
            _FILESYSTEMS[key] = fs
        return fs


def _with_timeouts(protocol: str, options: dict) -> dict:
    """``options`` with the connect and read timeouts (:func:`timeouts`) given to the client underneath,
    unless the options set them: aiohttp's for http(s), botocore's for s3."""
    connect, read = timeouts()
    if protocol in ("http", "https"):
        import aiohttp

        client = {"timeout": aiohttp.ClientTimeout(total=None, sock_connect=connect, sock_read=read),
                  **options.get("client_kwargs", {})}
        return {**options, "client_kwargs": client}
    if protocol in ("s3", "s3a"):
        return {**options, "config_kwargs": {"connect_timeout": connect, "read_timeout": read,
                                             **options.get("config_kwargs", {})}}
    return options


def _bounded(fs: Any, method: str, *args: Any, **kwargs: Any) -> Any:
    """``fs.method(*args, **kwargs)`` (a listing or an info), given connect + read timeout seconds in all
    where fsspec can bound it (async filesystems: past it, FSTimeoutError)."""
    if getattr(fs, "async_impl", False):
        kwargs["timeout"] = sum(timeouts())
    return getattr(fs, method)(*args, **kwargs)


def _entry_of(info: dict) -> dict:
    """A listing's (or info's) entry, reduced to what layerfilm uses: type, size, version."""
    version = next((str(info[k]) for k in _VERSION_KEYS if info.get(k)), None)
    if version is None:
        when = next((str(info[k]) for k in _TIME_KEYS if info.get(k)), None)
        version = None if when is None else f"mtime {when}"
    kind = "directory" if info.get("type") == "directory" else "file"
    return {"type": kind, "size": info.get("size"), "version": version}


def listing(folder: RemotePath) -> dict[str, dict]:
    """name -> entry of everything directly inside ``folder``; {} if it is not there."""
    try:
        with _errors(folder):
            found = _bounded(folder.fs, "ls", folder.url, detail=True, refresh=True)
    except CheckpointError:  # not found: nothing there
        found = []
    names = [unquote(str(info["name"]).rstrip("/").rsplit("/", 1)[-1]) for info in found]
    if names == [folder.name] and found[0].get("type") != "directory":
        found, names = [], []  # listing a file (s3fs answers with the file itself): not a folder
    return {name: _entry_of(info) for name, info in zip(names, found) if name}


class _errors:
    """Map what fsspec raises to layerfilm's errors: a missing file is a checkpoint's problem (skipped as
    any unreadable checkpoint), anything else about the storage (refused, unreachable, no credentials)
    is a StorageError that stops the command with one line."""

    def __init__(self, where: RemotePath) -> None:
        self.where = where

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type | None, e: BaseException | None, tb: object) -> None:
        if e is None or isinstance(e, (StorageError, CheckpointError, OptionsError)) or not isinstance(e, Exception):
            return
        raise _mapped(self.where, e) from None


def _mapped(where: RemotePath, e: BaseException) -> Exception:
    """One line for what reading ``where`` raised; its text redacted (a URL's password, secret options)."""
    if isinstance(e, LayerfilmError):
        return e
    if isinstance(e, FileNotFoundError):
        return CheckpointError(f"{where}: cannot read (not found)")
    if _timed_out(e):
        return _timeout(where, "no connection to the server" if "Connect" in type(e).__name__ else "no answer in time")
    why = redact(str(e).splitlines()[0] if str(e) else type(e).__name__, where.options)
    return StorageError(f"{where}: cannot read from {where.protocol}:// ({type(e).__name__}: {why[:200]})")


def _timed_out(e: BaseException | None) -> bool:
    """Whether ``e`` (or what caused it) is a timeout: asyncio's or aiohttp's, fsspec's, botocore's."""
    seen = 0
    while e is not None and seen < 8:
        if isinstance(e, TimeoutError) or "Timeout" in type(e).__name__:
            return True
        e, seen = e.__cause__ or e.__context__, seen + 1
    return False


def _timeout(where: RemotePath, what: str) -> StorageError:
    """The one line of a remote read that timed out, naming the settings that would wait longer."""
    connect, read = timeouts()
    return StorageError(f"{where}: {what} (timeouts: connect {connect:g} s, read {read:g} s; set "
                        "LAYERFILM_CONNECT_TIMEOUT or LAYERFILM_READ_TIMEOUT, in seconds, to wait longer)")


def read_ranges(path: RemotePath, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
    """The bytes of ``ranges`` ((offset, length) pairs) of a remote file, in one ``cat_ranges`` call.
    Each answer must have exactly the length asked for: anything else means the server ignored the range
    (sent the whole file) or the file changed, and is an error, never a silent whole-file read."""
    todo = [(o, n) for o, n in ranges if n > 0]
    got: list[Any] = []
    if todo:
        fs = path.fs
        with _errors(path):
            if path.protocol in ("http", "https"):
                from fsspec.asyn import sync

                got = sync(fs.loop, _http_ranges, fs, path, todo)
            else:
                # async filesystems (s3fs, gcsfs) send one ranged GET per range; the others (hf://) read
                # through a file object whose default read-ahead cache would fetch megabytes past each range
                extra = {} if getattr(fs, "async_impl", False) else {"cache_type": "none"}
                got = fs.cat_ranges([path.url] * len(todo), [o for o, _ in todo], [o + n for o, n in todo],
                                    on_error="return", **extra)
    answers = iter(got)
    out = []
    for offset, n in ranges:
        if n <= 0:
            out.append(b"")
            continue
        data = next(answers)
        if isinstance(data, BaseException):
            raise _mapped(path, data)
        if len(data) != n:
            raise _wrong_length(path, offset, n, len(data))
        out.append(bytes(data))
    return out


def _wrong_length(path: RemotePath, offset: int, n: int, got: int) -> StorageError:
    return StorageError(f"{path}: asked the server for bytes {offset:,}-{offset + n - 1:,} ({n:,} bytes) and got "
                        f"{got:,} in its answer; the server ignores Range requests (or the file changed), and layerfilm "
                        "reads remote files by byte ranges only")


async def _http_ranges(fs: Any, path: RemotePath, ranges: list[tuple[int, int]]) -> list[Any]:
    """The bytes of each of ``ranges`` of ``path`` (or the exception that stopped it), at most
    HTTP_REQUESTS requests at once. Sorted ranges that do not overlap go MULTI_RANGES to a request
    (RFC 7233 multi-range: nginx and Apache answer them, one round trip for a hundred rows); what a
    server leaves out of its answer (it sent one range, or refused with the whole file: S3, static
    servers) is asked for by one ranged GET per range, and that server (its host) is asked so from then on."""
    session = await fs.set_session()
    slots = asyncio.Semaphore(HTTP_REQUESTS)
    out: list[Any] = [None] * len(ranges)

    async def one(i: int) -> None:
        async with slots:
            try:
                out[i] = await _http_range(session, fs, path, *ranges[i])
            except Exception as e:  # noqa: BLE001 - handed back, then raised as one line by read_ranges
                out[i] = e

    async def several(idx: range) -> None:
        async with slots:
            got: list[Any]
            try:
                got = await _http_multi(session, fs, path, [ranges[i] for i in idx])
            except Exception as e:  # noqa: BLE001 - as above
                got = [e] * len(idx)
        for i, data in zip(idx, got):
            out[i] = data
        await asyncio.gather(*(one(i) for i in idx if out[i] is None))

    host = urlparse(path.url).netloc
    ordered = all(ranges[i][0] + ranges[i][1] <= ranges[i + 1][0] for i in range(len(ranges) - 1))
    if len(ranges) < 2 or not ordered or host in _SINGLE_RANGE_HOSTS:
        await asyncio.gather(*(one(i) for i in range(len(ranges))))
    else:
        k = -(-len(ranges) // MULTI_RANGES)  # requests, each of about the same number of ranges
        await asyncio.gather(*(several(range(j * len(ranges) // k, (j + 1) * len(ranges) // k)) for j in range(k)))
    return out


MULTI_RANGES = 100  # ranges per multi-range request (Apache answers at most 200, MaxRanges; nginx: any)
_SINGLE_RANGE_HOSTS: set[str] = set()  # hosts that answered a multi-range request with one range or the whole file
_PART_SLACK = 1024  # bytes per joined range that a server may add when it joins ranges into one part (RFC 7233 4.1)
_PART_HEAD = 512  # bytes of a part's delimiter and headers, at most


async def _http_multi(session: Any, fs: Any, path: RemotePath, ranges: list[tuple[int, int]]) -> list[bytes | None]:
    """The bytes of ``ranges`` (sorted, not overlapping) by one multi-range GET: a 206
    ``multipart/byteranges`` answer, each part's ``Content-Range`` one asked range, or consecutive asked
    ranges joined (the gaps between them dropped). None for each range the answer does not bring: the
    server sent a single range, or the whole file (HTTP 200: not read; its host is then asked one range
    at a time, ``_SINGLE_RANGE_HOSTS``). The answer is read whole, in large pieces (no round of the event
    loop per part), and no further than the ranges asked and their parts' headers."""
    connect, read = timeouts()
    spec = ",".join(f"{o}-{o + n - 1}" for o, n in ranges)
    kw = {**fs.kwargs, "headers": {**fs.kwargs.get("headers", {}), "Range": f"bytes={spec}"}}
    asked = f"{ranges[0][0]:,}-{ranges[-1][0] + ranges[-1][1] - 1:,} ({len(ranges)} ranges)"
    try:
        answer = await asyncio.wait_for(session.get(fs.encode_url(path.url), **kw), connect + read)
    except asyncio.TimeoutError:
        raise _timeout(path, f"no answer to a request for bytes {asked}") from None
    got: list[bytes | None] = [None] * len(ranges)
    starts = {o: i for i, (o, _) in enumerate(ranges)}
    ends = {o + n - 1: i for i, (o, n) in enumerate(ranges)}

    def covers(value: str | None) -> tuple[int, int, int, int] | None:
        """(first, last) asked ranges that a Content-Range covers, and its (offset, length); None unless it
        is asked ranges not yet answered (consecutive ones joined, with small gaps between them at most)."""
        m = _CONTENT_RANGE.match((value or "").strip())
        start, end = (int(m.group(1)), int(m.group(2))) if m else (-1, -1)
        first, last = starts.get(start, -1), ends.get(end, -1)
        if m is None or first < 0 or last < first or any(got[first:last + 1]) or \
                end + 1 - start > sum(n for _, n in ranges[first:last + 1]) + _PART_SLACK * (last - first):
            return None
        return first, last, start, end + 1 - start

    def place(value: str | None, data: memoryview) -> int:
        """Hand out a part's bytes ``data`` (from its start) to the asked ranges its Content-Range covers;
        returns its length. A part that is not asked ranges, or is shorter than its Content-Range, is a
        StorageError."""
        span = covers(value)
        if span is None:
            raise StorageError(f"{path}: asked the server for bytes {asked} and it answered a part with Content-Range "
                               f"{_header(value)}; layerfilm reads only the ranges it asks for")
        first, last, start, n = span
        if len(data) < n:
            raise _wrong_length(path, start, n, len(data))
        for i in range(first, last + 1):
            got[i] = bytes(data[ranges[i][0] - start:ranges[i][0] - start + ranges[i][1]])
        return n

    async with answer as r:
        if r.status == 404:
            raise FileNotFoundError(path.url)
        r.raise_for_status()
        kind = r.headers.get("Content-Type", "")
        boundary = re.search(r'boundary="?([^";]+)"?', kind) if kind.lower().startswith("multipart/byteranges") else None
        single = covers(r.headers.get("Content-Range")) if r.status == 206 and boundary is None else None
        if r.status != 206 or boundary is None:  # the whole file, or one range: asked one range at a time from now on
            _SINGLE_RANGE_HOSTS.add(urlparse(path.url).netloc)
            if single is None:  # not read
                return got
        most = single[3] if single else sum(n for _, n in ranges) + len(ranges) * (_PART_HEAD + _PART_SLACK)
        body = await _body(r, most + 1, read)
    if body is None:
        raise _timeout(path, f"the answer for bytes {asked} brought less than {PROGRESS // 1024} KiB (or the rest) "
                             "in one read timeout")
    if len(body) > most:
        raise StorageError(f"{path}: asked the server for bytes {asked} and its answer is longer than them")
    if boundary is None:
        place(r.headers.get("Content-Range"), memoryview(body))
    else:
        _parts(memoryview(body), boundary.group(1).encode(), place, lambda what: StorageError(
            f"{path}: asked the server for bytes {asked} and its multipart answer is broken ({what})"))
    return got


def _parts(body: memoryview, boundary: bytes, place: Callable[[str | None, memoryview], int],
           broken: Callable[[str], StorageError]) -> None:
    """Each part of a ``multipart/byteranges`` body (RFC 2046: ``--boundary``, headers, a blank line, the
    bytes, CRLF; the last delimiter ``--boundary--``) handed to ``place(its Content-Range, its bytes on)``,
    which returns its length."""
    data = bytes(body[:_PART_HEAD])
    delimiter = b"--" + boundary
    at = data.find(delimiter)
    if at < 0:
        raise broken("no boundary")
    while True:
        at += len(delimiter)
        if body[at:at + 2] == b"--":
            return
        head = bytes(body[at:at + _PART_HEAD])
        stop = head.find(b"\r\n\r\n")
        if stop < 0:
            raise broken("a part's headers do not end")
        fields = dict(line.partition(b":")[::2] for line in head[:stop].split(b"\r\n") if line)
        value = next((v.strip().decode("latin-1") for k, v in fields.items() if k.strip().lower() == b"content-range"),
                     None)
        at += stop + 4
        at += place(value, body[at:])
        if body[at:at + 2 + len(delimiter)] != b"\r\n" + delimiter:
            raise broken("a part longer than its Content-Range")
        at += 2


_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)$")


async def _http_range(session: Any, fs: Any, path: RemotePath, offset: int, n: int) -> bytes:
    """Bytes ``offset`` to ``offset + n`` of ``path`` by one ``Range`` GET, checked from the answer's headers
    before its body is read: 206 with the ``Content-Range`` asked for, or 200 with exactly the bytes asked
    (the whole file, from offset 0). The body is streamed and never read past ``n`` bytes (+1 where its
    length is not told), and must bring PROGRESS bytes or the rest in every read timeout."""
    connect, read = timeouts()
    asked = f"{offset:,}-{offset + n - 1:,}"
    kw = {**fs.kwargs, "headers": {**fs.kwargs.get("headers", {}), "Range": f"bytes={offset}-{offset + n - 1}"}}
    try:
        answer = await asyncio.wait_for(session.get(fs.encode_url(path.url), **kw), connect + read)
    except asyncio.TimeoutError as e:
        what = "no connection to the server" if "Connect" in type(e).__name__ else f"no answer to a request for bytes {asked}"
        raise _timeout(path, what) from None
    async with answer as r:
        if r.status == 404:
            raise FileNotFoundError(path.url)
        r.raise_for_status()
        told = r.headers.get("Content-Length")
        length = int(told) if told and told.isdigit() else None
        if r.status == 206:
            m = _CONTENT_RANGE.match(r.headers.get("Content-Range", "").strip())
            if m is None or (int(m.group(1)), int(m.group(2))) != (offset, offset + n - 1):
                raise StorageError(f"{path}: asked the server for bytes {asked} and it answered Content-Range "
                                   f"{_header(r.headers.get('Content-Range'))}; layerfilm reads only the range it asks for")
        elif r.status != 200:
            raise StorageError(f"{path}: asked the server for bytes {asked} and it answered HTTP {r.status}; "
                               "layerfilm reads remote files by byte ranges only")
        elif offset != 0:
            raise StorageError(f"{path}: asked the server for bytes {asked} and it sent the whole file (HTTP 200); "
                               "the server ignores Range requests, and layerfilm reads remote files by byte ranges only")
        if length is not None and length != n:
            raise _wrong_length(path, offset, n, length)
        body = await _body(r, n + (length is None), read)
    if body is None:
        raise _timeout(path, f"the answer for bytes {asked} brought less than {PROGRESS // 1024} KiB (or the rest) "
                             "in one read timeout")
    return body


async def _body(r: Any, want: int, read: float) -> bytes | None:
    """At most ``want`` bytes of the answer ``r``; None if PROGRESS of them (or the rest) took over ``read`` s."""
    loop = asyncio.get_running_loop()
    body = bytearray()
    start, since = loop.time(), 0
    while len(body) < want:
        try:
            chunk = await asyncio.wait_for(r.content.read(min(_CHUNK, want - len(body))),
                                           max(start + read - loop.time(), 0.001))
        except asyncio.TimeoutError:
            return None
        if not chunk:
            break
        body += chunk
        since += len(chunk)
        if since >= PROGRESS:
            start, since = loop.time(), 0
    return bytes(body)


def _header(value: str | None) -> str:
    """A header's value for a message: short, one line."""
    return "(none)" if value is None else repr(value[:80])


class LocalBytes:
    """A local file read by ``os.pread``, on a descriptor advised POSIX_FADV_RANDOM: read what is asked, no
    read-ahead (a page fault in a memory map pulled 8 MiB windows; see benchmarks/bench_io.py).

    Many ranges at once (:meth:`read_into`, a checkpoint's tracked rows) are merged across small gaps
    (:func:`merge_gaps`) and each merged range is one ``preadv`` straight into the caller's buffer (the
    gaps into a scratch buffer), several at once on a few threads (``pread`` releases the GIL): fewer
    system calls, no intermediate ``bytes``, and a cold disk sees several requests queued."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDONLY)
        try:
            self.size = os.fstat(self._fd).st_size
            os.posix_fadvise(self._fd, 0, 0, os.POSIX_FADV_RANDOM)
        except OSError:
            os.close(self._fd)
            raise

    def read(self, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        """The bytes of ``ranges`` ((offset, length)); shorter where the file ends first (the caller checks)."""
        return [os.pread(self._fd, n, offset) for offset, n in ranges]

    def read_into(self, ranges: Sequence[tuple[int, int]], out: memoryview) -> bool:
        """The bytes of ``ranges`` (sorted, not overlapping) one after another into ``out`` (exactly their
        total length); False if the file ended first (it shrank after it was opened)."""
        merged, parts = merge_gaps(ranges)
        plans = _iovecs(merged, parts, ranges, out)
        if len(plans) < 2 * LOCAL_THREADS or not hasattr(os, "preadv"):
            return all(self._preadv(*p) for p in plans)
        groups = [plans[i::LOCAL_THREADS] for i in range(LOCAL_THREADS)]
        return all(_pool().map(lambda g: all(self._preadv(*p) for p in g), groups))

    def _preadv(self, offset: int, n: int, iovs: list[memoryview]) -> bool:
        if not hasattr(os, "preadv"):
            data = os.pread(self._fd, n, offset)
            at = 0
            for v in iovs:
                v[:] = data[at:at + len(v)] if len(data) >= at + len(v) else bytes(len(v))
                at += len(v)
            return len(data) == n
        done = 0
        for i in range(0, len(iovs), _IOV_MAX):  # the kernel takes at most IOV_MAX pieces per call
            piece = iovs[i:i + _IOV_MAX]
            want = sum(len(v) for v in piece)
            got = os.preadv(self._fd, piece, offset + done)
            if got != want:  # a pread from a regular file is short only at its end
                return False
            done += want
        return done == n

    def close(self) -> None:
        os.close(self._fd)


LOCAL_THREADS = 4  # preads in flight at once for one local read_into
_IOV_MAX = 1024
_POOL: list[ThreadPoolExecutor] = []


def _pool() -> ThreadPoolExecutor:
    """The process's pool of LOCAL_THREADS reading threads (made on first use; threads die with the process)."""
    with _LOCK:
        if not _POOL:
            _POOL.append(ThreadPoolExecutor(LOCAL_THREADS, thread_name_prefix="layerfilm-pread"))
        return _POOL[0]


def _iovecs(merged: list[tuple[int, int]], parts: list[tuple[int, int, int]], ranges: Sequence[tuple[int, int]],
            out: memoryview) -> list[tuple[int, int, list[memoryview]]]:
    """Per merged range: (offset, length, the buffers it fills in order: each asked range's place in
    ``out``, and a scratch buffer for each gap between them)."""
    plans: list[tuple[int, int, list[memoryview]]] = [(o, n, []) for o, n in merged]
    gap = max((ranges[i][0] - ranges[i - 1][0] - ranges[i - 1][1] for i in range(1, len(ranges))
               if parts[i][0] == parts[i - 1][0]), default=0)
    scratch = memoryview(bytearray(gap))
    at, end = 0, [0] * len(merged)  # where each merged range has been filled up to
    for (i, start, n) in parts:
        if start > end[i]:
            plans[i][2].append(scratch[:start - end[i]])
        if n:
            plans[i][2].append(out[at:at + n])
        at += n
        end[i] = start + n
    return [p for p in plans if p[1] > 0]


class RemoteBytes:
    """A remote file read by byte ranges (see :func:`read_ranges`); its size comes from the listing."""

    def __init__(self, path: RemotePath) -> None:
        self.path = path
        self.size = path.stat().st_size

    def read(self, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        """The bytes of ``ranges`` (sorted, not overlapping), fetched as fewer, merged ranges where the
        gaps between them cost little (see :func:`merge_gaps`)."""
        merged, parts = merge_gaps(ranges)
        got = read_ranges(self.path, merged)
        return [got[i][start:start + n] for i, start, n in parts]

    def read_into(self, ranges: Sequence[tuple[int, int]], out: memoryview) -> bool:
        """As :meth:`LocalBytes.read_into`: ``ranges`` one after another into ``out`` (answers of the wrong
        length are a StorageError in :func:`read_ranges`)."""
        at = 0
        for data in self.read(ranges):
            out[at:at + len(data)] = data
            at += len(data)
        return True

    def close(self) -> None:
        pass


GAP_BUDGET = 0.2  # a read of many ranges may fetch this fraction more than asked, to send fewer requests


def merge_gaps(ranges: Sequence[tuple[int, int]],
               budget: float = GAP_BUDGET) -> tuple[list[tuple[int, int]], list[tuple[int, int, int]]]:
    """Fewer requests for a remote read: the smallest gaps between consecutive ``ranges`` ((offset, length),
    sorted, not overlapping) are fetched too, as long as the gap bytes stay within ``budget`` times the
    bytes asked for (a request costs a round trip; a few KB of rows between two tracked ones cost less).
    Returns the merged ranges and, per range asked, (merged range index, offset in it, length)."""
    if not len(ranges):
        return [], []
    at = np.array([o for o, _ in ranges], np.int64)
    size = np.array([n for _, n in ranges], np.int64)
    gaps = at[1:] - (at[:-1] + size[:-1])
    order = np.argsort(gaps, kind="stable")  # smallest gaps first, ties by position
    spent = np.cumsum(gaps[order])
    ok = (spent <= budget * size.sum()) & (np.minimum.accumulate(gaps[order]) >= 0) if len(gaps) else spent > 0
    join = np.zeros(len(gaps), bool)
    join[order[:np.argmin(ok) if not ok.all() else len(ok)]] = True
    first = np.flatnonzero(np.concatenate([[True], ~join]))  # the ranges that start a merged range
    group = np.cumsum(np.concatenate([[True], ~join])) - 1  # merged range of each range asked
    ends = np.maximum.reduceat(at + size, first)
    merged = list(zip(at[first].tolist(), (ends - at[first]).tolist()))
    parts = list(zip(group.tolist(), (at - at[first][group]).tolist(), size.tolist()))
    return merged, parts


def open_bytes(path: AnyPath) -> LocalBytes | RemoteBytes:
    """A reader of byte ranges of ``path``, local or remote (close it after use)."""
    return RemoteBytes(path) if isinstance(path, RemotePath) else LocalBytes(path)


def stamp(path: AnyPath) -> list:
    """[url, size, version] of a remote file, or of every file in a remote checkpoint folder (the cache key)."""
    assert isinstance(path, RemotePath)
    if path.is_dir():
        return [str(path), [[f.name, f.stat().st_size, f.stat().st_ino] for f in sorted(path.iterdir()) if f.is_file()]]
    st = path.stat()
    return [str(path), st.st_size, st.st_ino]
