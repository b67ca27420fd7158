"""A checkpoint's weights into a built model at the speed of the read.

Tensors go from the file to the model's parameters in their stored dtype (no float32 detour; a
parameter of another dtype converts on the device, as ``load_state_dict`` would). Loading is split in
two halves so that the next checkpoint is read while the current one runs the probe:

- :meth:`WeightLoader.stage` (a background thread): match the keys, check every shape against the
  model (a bad checkpoint fails here, before anything in the model changes), and for a GPU read the
  stored bytes into a pinned host buffer laid out in file order: few large ``preadv`` calls, run by a
  few threads (the page cache copies faster with several), straight into the pinned memory.
- :meth:`WeightLoader.apply` (the main thread): for a GPU, one non-blocking copy per tensor from the
  pinned buffer into its parameter (a DMA; nothing is staged on the device, so it holds the model and
  the probe batch only); for the CPU, the bytes are read straight into the parameters' memory (one
  copy, as ``safetensors.torch.load_file`` makes).

At most two host buffers exist (one filled while the other is copied from), reused across
checkpoints. Nothing is global: a loader owns its model, device, buffers and threads, so one loader
per device is all a worker per GPU needs.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ...errors import CheckpointError
from ...formats import unreadable

# safetensors dtype names -> torch dtypes whose bytes can be copied as they are
TORCH_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                "BOOL": torch.bool}
PIECE = 64 * 2**20  # bytes per read: large enough to cost nothing per call, small enough to share among threads
ALIGN = 64  # a run of tensors starts at this alignment in the buffer (offset mod ALIGN kept from the file)


def _prefixes(keys: list[str], depth: int = 2) -> set[str]:
    out = {""}
    for k in keys:
        parts = k.split(".")
        out.update(".".join(parts[:i]) + "." for i in range(1, min(depth, len(parts) - 1) + 1))
    return out


def match_keys(model_keys: list[str], ckpt_keys: list[str], where: Path | str = "",
               optional: Callable[[str, set[str]], bool] = lambda key, found: False) -> dict[str, str]:
    """Model key -> checkpoint key, after removing a wrapper prefix the checkpoint has and the model
    lacks (``module.``, ``_orig_mod.``, ``model.``), or adding one the model has and the checkpoint lacks.

    Strict: raises CheckpointError listing the missing and unexpected keys unless every model key
    is found (``optional(key, found_keys)`` ones may be missing, e.g. a tied ``lm_head.weight``).
    """
    wanted = set(model_keys)
    best, best_hits = {}, -1
    for strip in sorted(_prefixes(ckpt_keys), key=len):
        for add in sorted(_prefixes(model_keys, 1), key=len):
            mapping = {add + k[len(strip):]: k for k in ckpt_keys if k.startswith(strip)}
            hits = len(wanted & mapping.keys())
            if hits > best_hits:
                best, best_hits = mapping, hits
    found = best.keys() & wanted
    missing = [k for k in model_keys if k not in found and not optional(k, found)]
    used = {best[k] for k in found}
    unexpected = [k for k in ckpt_keys if k not in used]
    if missing or unexpected:
        def few(keys: list[str]) -> str:
            return ", ".join(keys[:4]) + (f" (+{len(keys) - 4} more)" if len(keys) > 4 else "")

        parts = [f"{len(missing)} missing: {few(missing)}"] if missing else []
        parts += [f"{len(unexpected)} unexpected: {few(unexpected)}"] if unexpected else []
        raise CheckpointError(f"{where}: weights do not match the model ({'; '.join(parts)}); "
                              f"is --model (or config.json) the architecture that wrote this checkpoint?")
    return {k: best[k] for k in model_keys if k in best}


@dataclass
class Item:
    """One tensor to load: into model key ``key``, from checkpoint tensor ``name`` (stored ``dtype``,
    ``shape``, ``nbytes``), whose bytes lie in ``file`` at ``offset``, or which is ``source`` (a torch
    pickle's memory-mapped tensor, or another format's float32 array); ``at``: its place in the buffer."""

    key: str
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    nbytes: int
    file: Path | None = None
    offset: int = 0
    source: torch.Tensor | None = None
    at: int = 0


class _Buffer:
    def __init__(self, nbytes: int, pin: bool) -> None:
        try:
            self.data = torch.empty(nbytes, dtype=torch.uint8, pin_memory=pin)
        except RuntimeError:  # pinning refused (memory lock limits): pageable memory still works, slower
            self.data = torch.empty(nbytes, dtype=torch.uint8)
        self.done: torch.cuda.Event | None = None  # the copies out of it, when they are in flight


@dataclass
class Staged:
    """One checkpoint's weights ready to go into the model: its items and, for a GPU, the host buffer
    holding their bytes."""

    where: Path
    items: list[Item]
    buffer: _Buffer | None = None


class HostBuffers:
    """At most ``most`` host buffers, reused across checkpoints. One is taken to read a checkpoint into
    and given back once the copies out of it are enqueued; it is filled again only after they finish."""

    def __init__(self, pin: bool, most: int = 2) -> None:
        self.pin, self.most = pin, most
        self._free: list[_Buffer] = []
        self._count = 0
        self._cond = threading.Condition()

    def take(self, nbytes: int) -> _Buffer:
        with self._cond:
            while True:
                fit = next((b for b in self._free if b.data.numel() >= nbytes), None)
                if fit is not None:
                    self._free.remove(fit)
                    break
                if self._free and self._count >= self.most:  # all free ones too small: drop one
                    dropped = self._free.pop()
                    if dropped.done is not None:
                        dropped.done.synchronize()
                    self._count -= 1
                if self._count < self.most:
                    self._count += 1
                    break
                self._cond.wait()
        if fit is None:
            try:
                fit = _Buffer(nbytes, self.pin)
            except BaseException:
                with self._cond:
                    self._count -= 1
                    self._cond.notify_all()
                raise
        if fit.done is not None:
            fit.done.synchronize()
            fit.done = None
        return fit

    def give(self, buf: _Buffer, done: torch.cuda.Event | None = None) -> None:
        with self._cond:
            buf.done = done
            self._free.append(buf)
            self._cond.notify_all()


def _read(fd: int, dest: np.ndarray, offset: int, file: Path) -> None:
    """Fill ``dest`` (uint8) with the bytes of ``fd`` from ``offset`` (a short file is a truncated checkpoint)."""
    view, got = dest.data, 0
    try:
        while got < len(view):
            n = os.preadv(fd, [view[got:]], offset + got)
            if n == 0:
                raise CheckpointError(f"{file}: truncated (it ends before byte {offset + len(view):,})")
            got += n
    except OSError as e:
        raise unreadable(file, e) from None


class WeightLoader:
    """Loads checkpoints into ``model`` on ``device`` (see the module's docstring); a context manager
    that owns its reading threads and host buffers.

    Example:
        >>> with WeightLoader(model, device) as loader:  # doctest: +SKIP
        ...     with open_checkpoint(path, "safetensors") as reader:
        ...         staged = loader.stage(reader, path)
        ...     loader.apply(staged)
    """

    def __init__(self, model: torch.nn.Module, device: torch.device, threads: int | None = None,
                 host_buffers: bool | None = None) -> None:
        """``threads``: reading threads (default: one per core, at most 8). ``host_buffers``: stage each
        checkpoint in a host buffer (default: on a GPU only; on the CPU the bytes go straight to the model)."""
        self.device = device
        state = model.state_dict(keep_vars=True)
        self.targets = {k: v.detach() for k, v in state.items()}
        groups: dict[int, list[str]] = {}
        for k, v in state.items():  # tied weights share storage: one of them is enough
            groups.setdefault(v.data_ptr(), []).append(k)
        self.tied = {k: g for g in groups.values() if len(g) > 1 for k in g}
        self.ignore = [re.compile(p) for p in getattr(model, "_keys_to_ignore_on_load_missing", None) or []]
        self.gpu = device.type == "cuda"
        self._pool = ThreadPoolExecutor(threads or min(8, os.cpu_count() or 1), thread_name_prefix="layerfilm-read")
        self._buffers = HostBuffers(pin=self.gpu) if (self.gpu if host_buffers is None else host_buffers) else None

    def __enter__(self) -> WeightLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown(wait=True)

    def optional(self, key: str, found: set[str]) -> bool:
        """A key that may be missing: tied to one that is found, or one the model says to ignore."""
        return any(o in found for o in self.tied.get(key, ())) or any(p.search(key) for p in self.ignore)

    # ------------------------------------------------------------ host half (a background thread)

    def stage(self, reader, where: Path) -> Staged:
        """Check an open checkpoint against the model and (GPU) read its bytes into a host buffer.
        Raises CheckpointError (keys, shapes, dtypes, a short file) before the model is touched."""
        mapping = match_keys(list(self.targets), reader.keys(), where, self.optional)
        items = []
        for key, name in mapping.items():
            shape = tuple(reader.shape(name))
            if shape != tuple(self.targets[key].shape):
                raise CheckpointError(f"{where}: {name} has shape {shape}, the model expects {tuple(self.targets[key].shape)}")
            items.append(self._item(reader, key, name, shape))
        staged = Staged(where, items)
        if self._buffers is not None:
            self._fill(staged)
        return staged

    def _item(self, reader, key: str, name: str, shape: tuple[int, ...]) -> Item:
        span = reader.span(name) if reader.dtype(name) in TORCH_DTYPES else None
        if span is not None:
            file, offset, nbytes = span
            return Item(key, name, TORCH_DTYPES[reader.dtype(name)], shape, nbytes, file, offset)
        source = reader.tensor(name)
        if source is None:  # a format without a byte layout or torch tensors: its float32 arrays
            source = torch.from_numpy(reader.get(name))
        return Item(key, name, source.dtype, shape, source.numel() * source.element_size(), source=source)

    def _fill(self, staged: Staged) -> None:
        """Lay the items out in file order and read them in: tensors adjacent in the file stay adjacent in
        the buffer, so a whole safetensors file is one run of large reads."""
        pos, prev = 0, None
        runs: list[list] = []  # [file, offset, at, nbytes]
        for it in sorted(staged.items, key=lambda i: (i.file is None, str(i.file), i.offset)):
            if it.file is not None and prev is not None and prev.file == it.file and prev.offset + prev.nbytes == it.offset:
                it.at = prev.at + prev.nbytes
                runs[-1][3] += it.nbytes
            else:
                it.at = -(-pos // ALIGN) * ALIGN + (it.offset % ALIGN if it.file is not None else 0)
                if it.file is not None:
                    runs.append([it.file, it.offset, it.at, it.nbytes])
            pos, prev = it.at + it.nbytes, it
        assert self._buffers is not None
        buf = self._buffers.take(max(pos, 1))
        try:
            data = buf.data.numpy()
            self._read_all([(file, offset, data[at: at + n]) for file, offset, at, n in runs])
            for it in staged.items:
                if it.source is not None:
                    buf.data[it.at: it.at + it.nbytes].view(it.dtype).view(it.shape).copy_(it.source)
                    it.source = None
        except BaseException:
            self._buffers.give(buf)
            raise
        staged.buffer = buf

    def _read_all(self, reads: list[tuple[Path, int, np.ndarray]]) -> None:
        """Read each (file, offset, destination) in pieces of at most PIECE bytes, on the loader's threads."""
        fds: dict[Path, int] = {}
        try:
            pieces = []
            for file, offset, dest in reads:
                if file not in fds:
                    try:
                        fds[file] = os.open(file, os.O_RDONLY)
                    except OSError as e:
                        raise unreadable(file, e) from None
                for s in range(0, len(dest), PIECE):
                    pieces.append((fds[file], dest[s: s + PIECE], offset + s, file))
            for f in [self._pool.submit(_read, *p) for p in pieces]:
                f.result()
        finally:
            for fd in fds.values():
                os.close(fd)

    # ------------------------------------------------------------ device half (the main thread)

    @torch.no_grad()
    def apply(self, staged: Staged) -> None:
        """Copy a staged checkpoint into the model's parameters (GPU: enqueued, non-blocking; the
        buffer goes back to be refilled once the copies finish)."""
        if staged.buffer is None:
            self._apply_cpu(staged)
            return
        buf, done = staged.buffer, None
        staged.buffer = None
        try:
            for it in staged.items:
                src = buf.data[it.at: it.at + it.nbytes]
                if it.at % it.dtype.itemsize:  # a tensor stored at an odd offset: an aligned copy of it
                    src = src.clone()
                self.targets[it.key].copy_(src.view(it.dtype).view(it.shape), non_blocking=True)
            if self.gpu:
                done = torch.cuda.Event()
                done.record(torch.cuda.current_stream(self.device))
        finally:
            assert self._buffers is not None
            if self.gpu and done is None:  # copies may be in flight: wait for them before the buffer is reused
                torch.cuda.current_stream(self.device).synchronize()
            self._buffers.give(buf, done)

    def _apply_cpu(self, staged: Staged) -> None:
        """Read each tensor's bytes straight into its parameter (another dtype: through a scratch copy)."""
        reads, convert = [], []
        for it in staged.items:
            target = self.targets[it.key]
            if it.file is None:
                assert it.source is not None
                target.copy_(it.source)
            elif it.dtype == target.dtype and target.is_contiguous():
                reads.append((it.file, it.offset, target.reshape(-1).view(torch.uint8).numpy()))
            else:
                scratch = torch.empty(it.nbytes, dtype=torch.uint8)
                reads.append((it.file, it.offset, scratch.numpy()))
                convert.append((target, scratch, it))
        self._read_all(reads)
        for target, scratch, it in convert:
            target.copy_(scratch.view(it.dtype).view(it.shape))
