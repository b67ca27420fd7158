"""A single ``.safetensors`` file, or a folder holding ``model.safetensors`` (Hugging Face Trainer).

Tensors are read with ``pread`` of exactly their byte range (offsets from the JSON header), on a
descriptor advised ``POSIX_FADV_RANDOM`` (a remote file: those ranges by fsspec ``cat_ranges``,
layerfilm.io.storage). Not ``safe_open``'s memory map: a page fault there pulls
the device's whole read-ahead window (8 MiB on some VMs), so reading one 1 MiB matrix of a 25 MiB
file read 18 MiB from disk; see benchmarks/bench_io.py.
"""

from __future__ import annotations

import json
import struct
import threading
from collections import OrderedDict

import numpy as np

from layerfilm.errors import CheckpointError
from layerfilm.io.formats.base import COMPACT, FORMATS, cannot_read_dtype, check_regular, unreadable
from layerfilm.io.storage import AnyPath, LocalBytes, RemoteBytes, open_bytes

# safetensors dtype -> NumPy dtype of the stored bytes (little-endian); BF16 is widened by hand.
NUMPY_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "I64": "<i8", "I32": "<i4",
                "I16": "<i2", "I8": "i1", "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?"}
# Every dtype the safetensors format defines -> bits per element (its Rust crate's ``Dtype::bitsize``).
# A header naming another is corrupt; one of these outside NUMPY_DTYPES is valid but unreadable here.
DTYPE_BITS = {"BOOL": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8,
              "F8_E8M0": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
              "I32": 32, "U32": 32, "F32": 32, "C64": 64, "F64": 64, "I64": 64, "U64": 64}
MAX_HEADER = 100_000_000  # the safetensors library's limit on the JSON header's length
U64 = 2**64


def _file_of(path: AnyPath) -> AnyPath:
    return path / "model.safetensors" if path.is_dir() else path


class _Corrupt(Exception):
    """Why a header is not valid safetensors (becomes a CheckpointError naming the file)."""


def _refuse_constant(name: str) -> None:
    raise _Corrupt(f"{name} is not valid JSON")


def _is_u64(x: object) -> bool:
    return type(x) is int and 0 <= x < U64


def _show(value: object) -> str:
    """A JSON value as it reads in the header, on one line, at most 40 characters."""
    try:
        text = json.dumps(value)
    except RecursionError:
        text = "(nested too deeply)"
    return text if len(text) <= 40 else text[:37] + "..."


def _named(name: str) -> str:
    """A tensor name fit for a one-line message: quoted, escaped, at most ~60 characters."""
    return repr(name if len(name) <= 60 else name[:60] + "...")


def _entry_span(name: str, info: object) -> tuple[int, int]:
    """The byte range of one tensor entry, after checking it as the safetensors library does: a
    known dtype, a shape of non-negative integers, two non-negative integer offsets spanning
    exactly shape x dtype bytes."""
    where = f"tensor {_named(name)}"
    if not isinstance(info, dict):
        raise _Corrupt(f"{where} is not a JSON object")
    for key in ("dtype", "shape", "data_offsets"):
        if key not in info:
            raise _Corrupt(f"{where} has no {key}")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
        raise _Corrupt(f"{where}: unknown dtype {_show(dtype)}")
    if not isinstance(shape, list) or not all(_is_u64(d) for d in shape):
        raise _Corrupt(f"{where}: shape {_show(shape)} is not a list of non-negative integers")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_u64(x) for x in offsets):
        raise _Corrupt(f"{where}: data_offsets {_show(offsets)} are not two non-negative integers")
    count = 1
    for d in shape:  # as the library's checked multiplication: refuse a count past 64 bits early
        count *= d
        if count >= U64:
            raise _Corrupt(f"{where}: shape {_show(shape)} holds more than 2**64 elements")
    bits = count * DTYPE_BITS[dtype]
    if bits % 8:
        raise _Corrupt(f"{where}: {count} elements of {dtype} are not a whole number of bytes")
    start, end = offsets
    if end < start:
        raise _Corrupt(f"{where}: data_offsets end before they start")
    if end - start != bits // 8:
        raise _Corrupt(f"{where}: data_offsets span {end - start} bytes, shape and dtype need {bits // 8}")
    return start, end


def _check_layout(tensors: dict, data_size: int) -> int:
    """Check that the tensors, sorted by offset, tile the data from byte 0 with no gap or overlap;
    returns where the last one ends (the file must end there)."""
    end = 0
    for start, stop, name in sorted((*_entry_span(n, info), n) for n, info in tensors.items()):
        if start != end:
            how = "overlap the previous tensor" if start < end else "leave a gap before it"
            raise _Corrupt(f"tensor {_named(name)}: data_offsets {how}")
        end = stop
    return end


def _parse(text: bytes) -> tuple[dict, dict]:
    """(tensors, metadata) of a JSON header, refusing what the safetensors library refuses."""
    try:
        header = json.loads(text.decode("utf-8"), parse_constant=_refuse_constant)
    except RecursionError:
        raise _Corrupt("JSON nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise _Corrupt(str(e).splitlines()[0]) from None
    if not isinstance(header, dict):
        raise _Corrupt("not a JSON object")
    meta = header.pop("__metadata__", None)
    meta = {} if meta is None else meta
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise _Corrupt("__metadata__ is not a map of strings")
    for name in header:
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raise _Corrupt(f"tensor name {_named(name)} is not valid UTF-8") from None
    return header, meta


class _HeaderCache:
    """Parsed headers of this process, keyed by path, size and modification time: a run opens each
    checkpoint once per block chunk, and a header read again for every chunk would be read from disk
    again (155 KB x 13 chunks x 179 checkpoints on the 128-block reference: 14% of the tracked rows).
    Bounded by the headers' total length (``MAX_BYTES``); the oldest entries go first."""

    MAX_BYTES = 64 * 2**20

    def __init__(self) -> None:
        self._entries: OrderedDict[tuple, tuple[dict, dict, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: tuple) -> tuple[dict, dict, int] | None:
        """(tensors, metadata, header length) of ``key``, or None."""
        with self._lock:
            return self._entries.get(key)

    def put(self, key: tuple, header: dict, meta: dict, n: int) -> None:
        with self._lock:
            if key in self._entries or n > self.MAX_BYTES:
                return
            self._entries[key] = (header, meta, n)
            self._bytes += n
            while self._bytes > self.MAX_BYTES:
                self._bytes -= self._entries.popitem(last=False)[1][2]


_HEADERS = _HeaderCache()


def read_header(path: AnyPath) -> tuple[dict, dict, int]:
    """(tensors, metadata, header length) of a safetensors file, reading only its JSON header (once per
    process while the file keeps its size and modification time, or for a remote file its version).

    The header is validated as strictly as the safetensors library validates it (known dtypes,
    integer shapes and offsets, tensors tiling the data exactly), so a file accepted here never
    yields a wrong tensor; a file shorter than its header promises (truncated) is refused too.
    """
    st = check_regular(path)
    key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino)
    cached = _HEADERS.get(key)
    if cached is not None:
        return cached
    header, meta, n = _read_header(path)
    _HEADERS.put(key, header, meta, n)
    return header, meta, n


def _read_header(path: AnyPath) -> tuple[dict, dict, int]:
    try:
        src = open_bytes(path)
        try:
            size = src.size
            if size < 8:
                raise CheckpointError(f"{path}: not a safetensors file (too short)")
            (head,) = src.read([(0, 8)])
            (n,) = struct.unpack("<Q", head)
            if n > min(size - 8, MAX_HEADER):
                raise CheckpointError(f"{path}: not a safetensors file (bad header length)")
            (text,) = src.read([(8, n)])
        finally:
            src.close()
    except OSError as e:
        raise unreadable(path, e) from None
    try:
        header, meta = _parse(text)
        end = _check_layout(header, size - 8 - n)
    except _Corrupt as e:
        raise CheckpointError(f"{path}: corrupt safetensors header ({e})") from None
    if 8 + n + end > size:
        raise CheckpointError(f"{path}: truncated ({size:,} bytes on disk, header promises {8 + n + end:,})")
    if 8 + n + end < size:
        raise CheckpointError(f"{path}: corrupt safetensors file ({size - 8 - n - end:,} bytes after the "
                              "last tensor's data)")
    return header, meta, n


class SafetensorsReader:
    """Tensors of one safetensors file, each read by its exact byte range: ``os.pread`` locally, one
    ``cat_ranges`` call remotely (layerfilm.io.storage)."""

    def __init__(self, path: AnyPath) -> None:
        self.path = path
        self.files = [path]
        self.step: int | None = None
        self._header: dict = {}
        self._src: LocalBytes | RemoteBytes | None = None
        self._base = 0

    def __enter__(self) -> SafetensorsReader:
        self._header, _, n = read_header(self.path)  # the step comes from the name (or trainer_state.json)
        self._base = 8 + n
        try:
            self._src = open_bytes(self.path)
        except OSError as e:
            raise unreadable(self.path, e) from None
        return self

    def __exit__(self, *exc: object) -> None:
        if self._src is not None:
            self._src.close()
            self._src = None

    def keys(self) -> list[str]:
        return list(self._header)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._header[name]["shape"])

    def dtype(self, name: str) -> str:
        return self._header[name]["dtype"]

    def span(self, name: str) -> tuple[AnyPath, int, int]:
        """(file, offset, nbytes): where tensor ``name``'s stored bytes lie (for reading them as they are)."""
        if self._src is None:
            raise RuntimeError("use the reader as a context manager")
        start, end = self._header[name]["data_offsets"]  # validated by read_header
        return self.path, self._base + start, end - start

    def get(self, name: str) -> np.ndarray:
        """Tensor ``name`` as a float32 array (bf16/fp16 are widened), reading only its bytes."""
        info = self._header[name]
        start, end = info["data_offsets"]  # validated by read_header: exactly shape x dtype bytes
        dtype, shape = info["dtype"], info["shape"]
        if dtype not in NUMPY_DTYPES:
            raise CheckpointError(f"{self.path}: {cannot_read_dtype(name, dtype)}")
        return self._widened(name, [(self._base + start, end - start)], shape)

    def _widened(self, name: str, ranges: list[tuple[int, int]], shape: list[int],
                 out: np.ndarray | None = None) -> np.ndarray:
        """The bytes of ``ranges`` (offsets in the file) of tensor ``name``, read straight into one array of
        its stored dtype, as float32 of ``shape`` (into ``out`` if given). An ``out`` of the tensor's
        ``COMPACT`` dtype (bf16 bits, float16) takes the bytes as stored: read straight into it, no widening."""
        if self._src is None:
            raise RuntimeError("use the reader as a context manager")
        dtype = self._header[name]["dtype"]
        as_stored = out is not None and out.dtype != np.float32
        if out is not None and as_stored and COMPACT.get(dtype) != out.dtype:
            raise ValueError(f"{name} is {dtype}: rows go into float32 or its own dtype, not {out.dtype}")
        raw = out if out is not None and as_stored else np.empty(shape, NUMPY_DTYPES[dtype])
        try:
            whole = self._src.read_into(ranges, memoryview(raw.reshape(-1).view(np.uint8).data))
        except OSError as e:
            raise unreadable(self.path, e) from None
        if not whole:  # the file shrank after it was opened
            raise CheckpointError(f"{self.path}: truncated inside tensor {name}")
        if as_stored:
            return raw
        out = np.empty(raw.shape, np.float32) if out is None else out
        if dtype == "BF16":  # the high half of a float32, written in place
            np.left_shift(raw, 16, out=out.view(np.uint32), dtype=np.uint32)
        else:
            out[...] = raw
        return out

    def rows(self, name: str, ids: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Rows ``ids`` (sorted, unique) of tensor ``name`` as float32 (len(ids), *shape[1:]), reading only
        those rows' bytes: one range per run of consecutive rows, runs a few rows apart merged
        (layerfilm.io.storage.merge_gaps), read straight into one buffer and widened into ``out`` if given."""
        info = self._header[name]
        dtype, shape = info["dtype"], info["shape"]
        if dtype not in NUMPY_DTYPES:
            raise CheckpointError(f"{self.path}: {cannot_read_dtype(name, dtype)}")
        if self._src is None:
            raise RuntimeError("use the reader as a context manager")
        ids = np.asarray(ids, np.int64)
        if len(ids) and (ids[0] < 0 or ids[-1] >= shape[0] or (np.diff(ids) <= 0).any()):
            raise ValueError(f"rows of {name}: need sorted unique indices below {shape[0]}")
        row = int(np.prod(shape[1:], dtype=np.int64)) * np.dtype(NUMPY_DTYPES[dtype]).itemsize
        first = self._base + info["data_offsets"][0]
        starts = np.flatnonzero(np.diff(ids, prepend=-2) != 1)  # where each run of consecutive rows begins
        lengths = np.diff(starts, append=len(ids))
        ranges = [(first + int(ids[s]) * row, int(k) * row) for s, k in zip(starts, lengths)]
        return self._widened(name, ranges, [len(ids), *shape[1:]], out)


@FORMATS.register("safetensors")
class SafetensorsFormat:
    name = "safetensors"

    @staticmethod
    def detect(path: AnyPath) -> bool:
        if path.is_dir():
            return (path / "model.safetensors").is_file()
        return path.suffix == ".safetensors"

    @staticmethod
    def open(path: AnyPath) -> SafetensorsReader:
        return SafetensorsReader(_file_of(path))
