"""On-disk checkpoint formats, one module each, registered by name.

A format is a class with
  ``detect(path) -> bool``    cheap test on a file or folder (names and headers only);
  ``open(path) -> Reader``    a lazy context manager over the checkpoint's tensors.

A ``Reader`` exposes ``keys()``, ``shape(name)``, ``dtype(name)`` and ``get(name) -> np.ndarray``
(float32), reading only the tensors asked for. Later stages never see torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..registry import Registry


class Reader(Protocol):
    def keys(self) -> list[str]: ...
    def shape(self, name: str) -> tuple[int, ...]: ...
    def dtype(self, name: str) -> str: ...
    def get(self, name: str) -> np.ndarray: ...
    def __enter__(self) -> "Reader": ...
    def __exit__(self, *exc: object) -> None: ...


class Format(Protocol):
    name: str

    def detect(self, path: Path) -> bool: ...
    def open(self, path: Path) -> Reader: ...


FORMATS: Registry[Format] = Registry("checkpoint format")


def detect_format(path: Path) -> str | None:
    """Name of the first registered format that recognises ``path``, or None."""
    for name, fmt in FORMATS:
        if fmt.detect(path):
            return name
    return None


def to_float32(tensor: Any) -> np.ndarray:
    """A torch tensor (any float dtype, bf16 included) as a float32 NumPy array.

    bf16 is widened by a bit shift in NumPy rather than ``tensor.float()``: torch splits even small
    conversions over its thread pool, and on a busy machine with few cores those threads spin
    against each other (300x slower measured on 2 shared cores)."""
    import torch

    tensor = tensor.detach()
    if tensor.dtype == torch.bfloat16:
        bits = tensor.contiguous().view(torch.int16).numpy().view(np.uint16)
        return (bits.astype(np.uint32) << 16).view(np.float32)
    if tensor.dtype in (torch.float16, torch.float32, torch.float64):
        return tensor.numpy().astype(np.float32, copy=False)
    return tensor.float().numpy()


def open_checkpoint(path: Path, format: str) -> Reader:
    return FORMATS.get(format).open(path)


from . import safetensors_format  # noqa: E402,F401  (registers itself)
