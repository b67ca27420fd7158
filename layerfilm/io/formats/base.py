"""What every format shares: the reader protocol, the registry of formats, and the checks of a file
before and while it is read (layerfilm.io.formats)."""


from __future__ import annotations

import os
import re
import stat
from typing import Protocol

import numpy as np

from layerfilm.errors import CheckpointError, LayerfilmError
from layerfilm.io.blocks import strip_prefixes
from layerfilm.io.storage import AnyPath, RemotePath, RemoteStat
from layerfilm.registry import Registry

# Weight files of a Hugging Face model folder: model.safetensors, model-00001-of-00002.safetensors,
# model.safetensors.index.json, pytorch_model.bin and their shards/index.
HF_WEIGHT_FILE = re.compile(r"^(?:model|pytorch_model)(?:-\d+-of-\d+)?\.(?:safetensors|bin)(?:\.index\.json)?$")


class Reader(Protocol):
    files: list[AnyPath]
    step: int | None

    def keys(self) -> list[str]: ...
    def shape(self, name: str) -> tuple[int, ...]: ...
    def dtype(self, name: str) -> str: ...
    def get(self, name: str) -> np.ndarray: ...
    # optional: rows(name, ids, out=None) -> np.ndarray, only those rows' bytes (see Renamed.rows);
    # span(name) -> (file, offset, nbytes): where the stored bytes lie (formats with a plain byte layout);
    # tensor(name) -> torch.Tensor in its stored dtype (torch pickles). Both for loading weights into a model.
    def __enter__(self) -> Reader: ...
    def __exit__(self, *exc: object) -> None: ...


class Format(Protocol):
    name: str

    def detect(self, path: AnyPath) -> bool: ...
    def open(self, path: AnyPath) -> Reader: ...


FORMATS: Registry[Format] = Registry("checkpoint format")


def detect_format(path: AnyPath) -> str | None:
    """Name of the first registered format that recognises ``path``, or None."""
    for name, fmt in FORMATS:
        if fmt.detect(path):
            return name
    return None


class Renamed:
    """A reader seen through prefix-stripped names (see :func:`layerfilm.io.blocks.strip_prefixes`)."""

    def __init__(self, reader: Reader) -> None:
        self.reader = reader
        self.files: list[AnyPath] = []
        self.step: int | None = None
        self._raw: dict[str, str] = {}

    def __enter__(self) -> Renamed:
        self.reader.__enter__()
        self._raw = strip_prefixes(self.reader.keys())
        self.files, self.step = self.reader.files, self.reader.step
        return self

    def __exit__(self, *exc: object) -> None:
        self.reader.__exit__(*exc)

    def keys(self) -> list[str]:
        return list(self._raw)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.reader.shape(self._raw[name])

    def dtype(self, name: str) -> str:
        return self.reader.dtype(self._raw[name])

    def get(self, name: str) -> np.ndarray:
        return self.reader.get(self._raw[name])

    def span(self, name: str) -> tuple[AnyPath, int, int] | None:
        """(file, offset, nbytes) of tensor ``name``'s stored bytes, or None where the format has no such layout."""
        span = getattr(self.reader, "span", None)
        return None if span is None else span(self._raw[name])

    def tensor(self, name: str):
        """Tensor ``name`` as a torch tensor in its stored dtype (data may stay on disk until used), or None
        where the format does not hold torch tensors."""
        tensor = getattr(self.reader, "tensor", None)
        return None if tensor is None else tensor(self._raw[name])

    def rows(self, name: str, ids: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Rows ``ids`` (sorted) of tensor ``name``, float32 (into ``out`` if given; an ``out`` of the
        tensor's ``COMPACT`` dtype takes its values as stored); only their bytes where the format allows."""
        rows = getattr(self.reader, "rows", None)
        if rows is not None:
            return rows(self._raw[name], ids, out=out)
        got = self.reader.get(self._raw[name])[ids]
        return got if out is None else narrow(got, out)


def open_checkpoint(path: AnyPath, format: str) -> Renamed:
    """A lazy reader over ``path`` (use it as a context manager), names without wrapper prefixes."""
    return Renamed(FORMATS.get(format).open(path))


# dtypes (safetensors' names; the torch reader maps torch's to these) that every reader widens to float32.
READABLE_DTYPES = frozenset({"F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U64", "U32", "U16", "U8", "BOOL"})


def cannot_read_dtype(name: str, dtype: str) -> str:
    return f"tensor {name} has dtype {dtype}, which layerfilm cannot read"


def unreadable(path: AnyPath, e: OSError) -> CheckpointError:
    return CheckpointError(f"{path}: cannot read ({e.strerror or e})")


_KINDS = ((stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
          (stat.S_ISBLK, "block device"), (stat.S_ISDIR, "folder"))


def check_regular(path: AnyPath, error: type[LayerfilmError] = CheckpointError,
                  name: str = "") -> os.stat_result | RemoteStat:
    """Refuse ``path`` unless it is a regular file (symlinks followed), before anything opens it:
    ``open()`` on a FIFO blocks forever, and a device or socket is never a checkpoint. The error is
    ``error`` (an option's file: OptionsError) with ``name`` (default the path) leading its message.
    Returns its ``stat`` (a remote file's: size and version from its folder's listing)."""
    try:
        st = path.stat() if isinstance(path, RemotePath) else os.stat(path)
        mode = st.st_mode
    except OSError as e:
        raise error(f"{name or path}: cannot read ({e.strerror or e})") from None
    if not stat.S_ISREG(mode):
        kind = next((k for test, k in _KINDS if test(mode)), "special file")
        raise error(f"{name or path}: not a regular file ({kind})")
    return st


# Stored dtypes whose values a block task may hold as they are stored, at half float32's bytes, since
# widening gives back the float32 values exactly: bfloat16 as its bits (uint16: the high half of a
# float32; the convention of layerfilm.points' key frames too) and float16 as it is.
COMPACT = {"BF16": np.dtype(np.uint16), "F16": np.dtype(np.float16)}


class NotExact(ValueError):
    """Values that a compact array (``COMPACT``) cannot hold exactly (a float32 checkpoint in a bf16 series)."""


def widen(x: np.ndarray) -> np.ndarray:
    """``x`` as float32: bf16 bits (uint16) and float16 widened exactly (a new array), float32 as it is."""
    if x.dtype == np.uint16:
        return np.left_shift(x, 16, dtype=np.uint32).view(np.float32)
    return np.asarray(x, np.float32)


def narrow(x: np.ndarray, out: np.ndarray) -> np.ndarray:
    """float32 ``x`` written into ``out``: float32, or a compact array (bf16 bits, float16) if every value
    fits it exactly, else :class:`NotExact` (``out`` then holds garbage)."""
    if out.dtype == np.uint16:
        bits = np.ascontiguousarray(x, np.float32).view(np.uint32)
        if (bits & 0xFFFF).any():
            raise NotExact("values that bfloat16 cannot hold")
        np.right_shift(bits, 16, out=out, casting="unsafe")
    else:
        with np.errstate(over="ignore"):  # a value float16 cannot hold becomes inf: found below
            out[...] = x
        if out.dtype != np.float32 and not np.array_equal(out, x, equal_nan=True):
            raise NotExact(f"values that {out.dtype} cannot hold")
    return out


def check_finite(values: np.ndarray, where: AnyPath, name: str, block: int) -> None:
    """Refuse a tensor holding NaN or infinite values (a diverged run or damaged data): the one rule and
    the one message of ``scan --deep``, render, stills, stability and report. ``values``: float, or
    bf16 bits (uint16: finite unless the exponent bits are all ones)."""
    finite = ((values & 0x7F80) != 0x7F80).all() if values.dtype == np.uint16 else np.isfinite(values).all()
    if not finite:
        raise not_finite(where, name, block)


def not_finite(where: AnyPath, name: str, block: int) -> CheckpointError:
    """The one message of a tensor holding NaN/Inf (:func:`check_finite`; a device's check too)."""
    return CheckpointError(f"{where}: tensor {name} of block {block} holds NaN/Inf")


# Registration order is detection order: folder formats look inside, file formats at the suffix.
