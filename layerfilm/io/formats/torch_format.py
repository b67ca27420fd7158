"""PyTorch pickles: ``.pt`` / ``.pth`` / ``.bin`` state dicts and training dicts, or a folder holding
``pytorch_model.bin`` (older Hugging Face checkpoints).

Loaded with ``torch.load(weights_only=True, mmap=True)``: the pickle may only rebuild tensors and
plain containers (anything else is refused, never executed), and tensor data stays on disk until a
tensor is asked for. A training dict (nanoGPT's ``{'model': ..., 'optimizer': ..., 'iter_num': N}``,
Lightning's ``{'state_dict': ..., 'global_step': N}``) is searched for its model's state dict.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import pickle
import re
import struct
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from layerfilm.errors import CheckpointError, need
from layerfilm.io.formats.base import FORMATS, check_regular, unreadable
from layerfilm.io.storage import PICKLE_OVER_URL, AnyPath, is_remote

# Where training dicts keep the model's weights, tried in order.
STATE_KEYS = ("state_dict", "model", "model_state_dict", "module", "net")
# Where they keep the training step, tried in order (first int wins).
STEP_KEYS = ("global_step", "iter_num", "step", "iteration")
# torch dtype -> the short names safetensors uses, so `layerfilm scan` shows one vocabulary.
DTYPE_NAMES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64", "int64": "I64",
               "int32": "I32", "int16": "I16", "int8": "I8", "uint64": "U64", "uint32": "U32", "uint16": "U16",
               "uint8": "U8", "bool": "BOOL"}

# The most a zip checkpoint's pickle (data.pkl) and its compressed members may unpack to, together: a
# state dict's pickle is KBs to a few MBs (a 7B model's: ~1 MB); a 3 MB file of deflated zeros is 3 GB.
MAX_PICKLE_BYTES = 256 * 2**20
CHUNK = 2**20

MADV_RANDOM = 1


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


def advise_random(tensors: list[Any]) -> None:
    """Tell the kernel that the memory-mapped file behind ``tensors`` is read at random, so that a
    page fault reads that page and not the device's whole read-ahead window (8 MiB on some VMs:
    reading 8 MiB of matrices then read all 25 MiB of the file; see benchmarks/bench_io.py)."""
    spans = [(s.data_ptr(), s.nbytes()) for s in (t.untyped_storage() for t in tensors) if s.nbytes()]
    if not spans:
        return
    lo = min(p for p, _ in spans) & ~(mmap.PAGESIZE - 1)
    hi = max(p + n for p, n in spans)
    try:
        ctypes.CDLL(None).madvise(ctypes.c_void_p(lo), ctypes.c_size_t(hi - lo), MADV_RANDOM)
    except (OSError, AttributeError):  # a hint only: no madvise, no harm
        pass


def load_pickle(path: AnyPath) -> tuple[Any, bool]:
    """``torch.load`` that refuses to run code and maps every failure to a :class:`CheckpointError`.
    Returns the object and whether its tensors are memory-mapped. A pickle at a URL is refused
    (``PICKLE_OVER_URL``): it cannot be read by ranges, and reading whole files is not what a film of
    a few rows per block should cost."""
    if is_remote(path):
        raise CheckpointError(f"{path}: {PICKLE_OVER_URL}")
    import torch

    check_regular(path)
    assert isinstance(path, Path)
    # torch warns "Detected pickle protocol 4 in the checkpoint..." before reading (or refusing) such a
    # pickle: a second line beside ours that tells the user nothing. A targeted filter (re-adding it is a
    # no-op), not catch_warnings(): that swaps the process-wide filters while the prefetch thread loads,
    # swallowing what other threads warn meanwhile.
    warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
    try:
        check_unpacked_size(path)
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True), True
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            return torch.load(path, map_location="cpu", weights_only=True), False  # legacy (non-zip) format
    except CheckpointError:
        raise
    except OSError as e:
        raise unreadable(path, e) from None
    except pickle.UnpicklingError as e:
        if "Weights only load failed" in str(e):
            m = re.search(r"WeightsUnpickler error: (.+?)(?: was not an allowed global| Please|\n|$)", str(e))
            why = f" ({m.group(1).strip().rstrip('.')})" if m else ""
            raise CheckpointError(f"{path}: unsafe pickle, refused without running it{why}") from None
        raise CheckpointError(f"{path}: not a PyTorch checkpoint or corrupt ({e})") from None
    except Exception as e:  # torch raises RuntimeError/ValueError/EOFError/... on damaged zips
        why = str(e).splitlines()[0].split(". ")[0][:160] if str(e) else type(e).__name__
        raise CheckpointError(f"{path}: corrupt or truncated PyTorch file ({why})") from None


def check_unpacked_size(path: Path) -> None:
    """Refuse a zip checkpoint whose pickle, or whose compressed members, unpack to more than
    ``MAX_PICKLE_BYTES`` in all, before torch inflates them whole in memory (a zip bomb made ``scan``, which
    reads headers only, take 6.5 GB). Compressed members are streamed, so their real sizes count, not the
    sizes their headers claim; stored ones (the tensors, memory-mapped) cost nothing. A file that is not
    a zip (torch's legacy format) is left to torch: its pickle is no larger than the file."""
    if not zipfile.is_zipfile(path):
        return
    budget = MAX_PICKLE_BYTES
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            pickle_file = info.filename.endswith("data.pkl")
            if info.compress_type == zipfile.ZIP_STORED and not pickle_file:
                continue
            size = info.file_size
            if info.compress_type != zipfile.ZIP_STORED:
                with z.open(info) as member:
                    size = 0
                    while size <= budget and (chunk := member.read(CHUNK)):
                        size += len(chunk)
            budget -= size
            if budget < 0:
                raise CheckpointError(f"{path}: its pickle unpacks to more than {MAX_PICKLE_BYTES // 2**20} MiB "
                                      "(a zip bomb, or no checkpoint); refused before loading it")


def record_offsets(path: Path) -> set[int]:
    """Where the data of each member of a zip checkpoint begins in the file (after its local header)."""
    offsets = set()
    with zipfile.ZipFile(path) as z, open(path, "rb") as f:
        for info in z.infolist():
            f.seek(info.header_offset)
            head = f.read(30)
            if len(head) == 30:
                name_len, extra_len = struct.unpack("<HH", head[26:30])
                offsets.add(info.header_offset + 30 + name_len + extra_len)
    return offsets


def file_offsets(tensors: dict[str, Any], path: Path) -> dict[str, int] | None:
    """The file offset of each mapped tensor's storage, or None where they cannot be told for sure.

    torch maps the whole file once, from a page boundary, and each storage is that map plus its
    record's offset: the one page-aligned base that puts every storage at some record's offset."""
    ptrs = {n: t.untyped_storage().data_ptr() for n, t in tensors.items() if t.untyped_storage().nbytes()}
    if not ptrs:
        return {}
    offsets = record_offsets(path)
    first = min(ptrs.values())
    bases = [b for b in {first - o for o in offsets} if b % mmap.PAGESIZE == 0
             and all(p - b in offsets for p in ptrs.values())]
    return {n: p - bases[0] for n, p in ptrs.items()} if len(bases) == 1 else None


def _tensors(obj: Any) -> dict[str, Any] | None:
    import torch

    if not isinstance(obj, dict):
        return None
    out = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    return out or None


def find_state_dict(obj: Any, path: AnyPath) -> tuple[dict[str, Any], int | None]:
    """The model's tensors in a loaded pickle, and the training step stored beside them."""
    step = None
    if isinstance(obj, dict):
        step = next((obj[k] for k in STEP_KEYS if type(obj.get(k)) is int), None)
    found = _tensors(obj)
    for key in STATE_KEYS:
        if found is None and isinstance(obj, dict):
            found = _tensors(obj.get(key))
    if found is None:
        if isinstance(obj, dict) and {"state", "param_groups"} <= set(obj):
            raise CheckpointError(f"{path}: an optimizer state, no model weights")
        keys = ", ".join(map(str, list(obj)[:5])) if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"{path}: no model weights found (holds {keys})")
    return found, step


class TorchReader:
    """A torch pickle's tensors. Loaded memory-mapped (headers only), but read with ``pread`` at each
    storage's offset in the file: a file truncated while it is read (a trainer rewriting it in place)
    then reads short, which is a skipped checkpoint, where touching the map past the new end of the file
    killed the process with SIGBUS. ``tensor`` (activations: loaded into a model) stays mapped."""

    def __init__(self, path: AnyPath) -> None:
        self.path = path
        self.files = [path]
        self.step: int | None = None
        self._tensors: dict[str, Any] = {}
        self._offsets: dict[str, int] | None = None
        self._fd: int | None = None

    def __enter__(self) -> TorchReader:
        need("torch", "torch", f"{self.path}: a PyTorch pickle", CheckpointError)
        import torch

        if not is_remote(self.path):
            check_regular(self.path)
            assert isinstance(self.path, Path)
            try:
                self._fd = os.open(self.path, os.O_RDONLY)  # before torch opens it: the same file, or seen replaced
            except OSError as e:
                raise unreadable(self.path, e) from None
        try:
            self._open(torch)
        except BaseException:
            self.__exit__()
            raise
        return self

    def _open(self, torch: Any) -> None:
        obj, mapped = load_pickle(self.path)
        self._tensors, self.step = find_state_dict(obj, self.path)
        for name, t in self._tensors.items():
            if t.layout != torch.strided:  # sparse COO/CSR/...: no plain storage to map or widen
                layout = str(t.layout).removeprefix("torch.")
                kind = "sparse" if layout.startswith("sparse") else f"of layout {layout}"
                raise CheckpointError(f"{self.path}: tensor {name} is {kind}; layerfilm reads dense tensors")
        if mapped and self._fd is not None:
            assert isinstance(self.path, Path)
            if os.stat(self.path).st_ino != os.fstat(self._fd).st_ino:
                raise CheckpointError(f"{self.path}: replaced while it was read; skipped (it is read again next time)")
            self._offsets = file_offsets(self._tensors, self.path)
            advise_random(list(self._tensors.values()))

    def __exit__(self, *exc: object) -> None:
        self._tensors = {}
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def keys(self) -> list[str]:
        return list(self._tensors)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._tensors[name].shape)

    def dtype(self, name: str) -> str:
        t = str(self._tensors[name].dtype).removeprefix("torch.")
        return DTYPE_NAMES.get(t, t)

    def tensor(self, name: str) -> Any:
        """Tensor ``name`` in its stored dtype, its data still memory-mapped (read when used)."""
        return self._tensors[name].detach()

    def get(self, name: str) -> np.ndarray:
        t = self._tensors[name]
        try:
            if self._offsets and name in self._offsets and t.numel():
                t = self._pread(name, t)
            return to_float32(t)
        except (RuntimeError, OSError, TypeError, NotImplementedError) as e:  # mmap'd data gone or damaged
            raise CheckpointError(f"{self.path}: cannot read tensor {name} ({e})") from None

    def _pread(self, name: str, t: Any) -> Any:
        """Tensor ``t``'s elements read from the file (the span its strides cover), as a tensor like ``t``."""
        import torch

        assert self._fd is not None and self._offsets is not None
        size = t.element_size()
        span = (1 + sum((n - 1) * s for n, s in zip(t.shape, t.stride()))) * size
        start = self._offsets[name] + t.storage_offset() * size
        raw = bytearray(span)
        view, got = memoryview(raw), 0
        while got < span and (n := os.preadv(self._fd, [view[got:]], start + got)):
            got += n
        if got < span:  # the file shrank after it was opened
            raise CheckpointError(f"{self.path}: truncated inside tensor {name}")
        return torch.frombuffer(raw, dtype=t.dtype).as_strided(tuple(t.shape), tuple(t.stride()))


@FORMATS.register("torch")
class TorchFormat:
    name = "torch"
    suffixes = (".pt", ".pth", ".bin")

    @staticmethod
    def detect(path: AnyPath) -> bool:
        if path.is_dir():
            return (path / "pytorch_model.bin").is_file()
        return path.suffix in TorchFormat.suffixes

    @staticmethod
    def open(path: AnyPath) -> TorchReader:
        return TorchReader(path / "pytorch_model.bin" if path.is_dir() else path)
