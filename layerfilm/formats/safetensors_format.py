"""A single ``.safetensors`` file, or a folder holding ``model.safetensors`` (Hugging Face Trainer)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from ..errors import CheckpointError
from . import FORMATS, to_float32


def _file_of(path: Path) -> Path:
    return path / "model.safetensors" if path.is_dir() else path


def read_header(path: Path) -> dict:
    """The safetensors JSON header (names, dtypes, shapes), without reading tensor data."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path}: not a safetensors file (too short)")
            (n,) = struct.unpack("<Q", head)
            if n > 100_000_000:
                raise CheckpointError(f"{path}: not a safetensors file (bad header length)")
            header = json.loads(fh.read(n))
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read safetensors header ({e})") from None
    header.pop("__metadata__", None)
    return header


class SafetensorsReader:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._header = read_header(path)
        self._handle = None

    def __enter__(self) -> "SafetensorsReader":
        from safetensors import safe_open

        try:
            self._handle = safe_open(str(self.path), framework="pt")
        except Exception as e:  # safetensors raises its own error types
            raise CheckpointError(f"{self.path}: cannot open ({e})") from None
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle = None

    def keys(self) -> list[str]:
        return list(self._header)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._header[name]["shape"])

    def dtype(self, name: str) -> str:
        return str(self._header[name]["dtype"])

    def get(self, name: str) -> np.ndarray:
        """Tensor ``name`` as a float32 array (bf16/fp16 are widened)."""
        assert self._handle is not None, "use the reader as a context manager"
        try:
            t = self._handle.get_tensor(name)
        except Exception as e:  # a truncated file fails here, not at open
            raise CheckpointError(f"{self.path}: cannot read tensor {name} ({e})") from None
        return to_float32(t)


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
