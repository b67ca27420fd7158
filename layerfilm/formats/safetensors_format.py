"""A single ``.safetensors`` file, or a folder holding ``model.safetensors`` (Hugging Face Trainer).

Tensors are read with ``pread`` of exactly their byte range (offsets from the JSON header), on a
descriptor advised ``POSIX_FADV_RANDOM``. Not ``safe_open``'s memory map: a page fault there pulls
the device's whole read-ahead window (8 MiB on some VMs), so reading one 1 MiB matrix of a 25 MiB
file read 18 MiB from disk; see benchmarks/bench_io.py.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np

from ..errors import CheckpointError
from . import FORMATS, check_regular, unreadable

# safetensors dtype -> NumPy dtype of the stored bytes (little-endian); BF16 is widened by hand.
NUMPY_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "I64": "<i8", "I32": "<i4",
                "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "?"}


def widen(raw: bytes, dtype: str, shape: list[int]) -> np.ndarray:
    """Stored bytes of one tensor as a float32 array of ``shape`` (BF16: the high half of a float32)."""
    arr = np.frombuffer(raw, NUMPY_DTYPES[dtype]).reshape(shape)
    if dtype == "BF16":
        return (arr.astype(np.uint32) << 16).view(np.float32)
    return arr.astype(np.float32)


def _file_of(path: Path) -> Path:
    return path / "model.safetensors" if path.is_dir() else path


def read_header(path: Path) -> tuple[dict, dict]:
    """(tensors, metadata) of a safetensors file, reading only its JSON header.

    A file shorter than its header promises (truncated) is refused here, before any tensor is read.
    """
    check_regular(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path}: not a safetensors file (too short)")
            (n,) = struct.unpack("<Q", head)
            size = fh.seek(0, 2)
            if n > min(size - 8, 100_000_000):
                raise CheckpointError(f"{path}: not a safetensors file (bad header length)")
            fh.seek(8)
            header = json.loads(fh.read(n))
    except OSError as e:
        raise unreadable(path, e) from None
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: corrupt safetensors header ({e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (not a JSON object)")
    meta = header.pop("__metadata__", None) or {}
    try:
        end = max((int(v["data_offsets"][1]) for v in header.values()), default=0)
    except (TypeError, KeyError, IndexError, ValueError):
        raise CheckpointError(f"{path}: corrupt safetensors header (bad tensor entry)") from None
    if 8 + n + end > size:
        raise CheckpointError(f"{path}: truncated ({size:,} bytes on disk, header promises {8 + n + end:,})")
    return header, meta


class SafetensorsReader:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.files = [path]
        self.step: int | None = None
        self._header: dict = {}
        self._fd: int | None = None
        self._base = 0

    def __enter__(self) -> "SafetensorsReader":
        self._header, _ = read_header(self.path)  # the step comes from the name (or trainer_state.json)
        try:
            self._fd = os.open(self.path, os.O_RDONLY)
            self._base = 8 + struct.unpack("<Q", os.pread(self._fd, 8, 0))[0]
            os.posix_fadvise(self._fd, 0, 0, os.POSIX_FADV_RANDOM)  # read what is asked, no read-ahead
        except OSError as e:
            raise unreadable(self.path, e) from None
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def keys(self) -> list[str]:
        return list(self._header)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._header[name]["shape"])

    def dtype(self, name: str) -> str:
        return str(self._header[name]["dtype"])

    def get(self, name: str) -> np.ndarray:
        """Tensor ``name`` as a float32 array (bf16/fp16 are widened), reading only its bytes."""
        if self._fd is None:
            raise RuntimeError("use the reader as a context manager")
        info = self._header[name]
        start, end = (int(x) for x in info["data_offsets"])
        dtype, shape = str(info["dtype"]), [int(d) for d in info["shape"]]
        if dtype not in NUMPY_DTYPES:
            raise CheckpointError(f"{self.path}: tensor {name} has dtype {dtype}, which layerfilm cannot read")
        if end - start != int(np.prod(shape)) * np.dtype(NUMPY_DTYPES[dtype]).itemsize:
            raise CheckpointError(f"{self.path}: corrupt header entry for tensor {name} (size does not match shape)")
        try:
            raw = os.pread(self._fd, end - start, self._base + start)
        except OSError as e:
            raise unreadable(self.path, e) from None
        if len(raw) != end - start:  # the file shrank after it was opened
            raise CheckpointError(f"{self.path}: truncated inside tensor {name}")
        return widen(raw, dtype, shape)


@FORMATS.register("safetensors")
class SafetensorsFormat:
    name = "safetensors"

    @staticmethod
    def detect(path: Path) -> bool:
        if path.is_dir():
            return (path / "model.safetensors").is_file()
        return path.suffix == ".safetensors"

    @staticmethod
    def open(path: Path) -> SafetensorsReader:
        return SafetensorsReader(_file_of(path))
