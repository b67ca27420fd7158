"""A checkpoint's weights into a built model at the speed of the read.

Tensors go from the file to the model's parameters in their stored dtype (no float32 detour; a
parameter of another dtype converts on the device, as ``load_state_dict`` would). Loading is split in
two halves so that the next checkpoint is read while the current one runs the probe:

- :meth:`WeightLoader.stage` (a background thread): match the keys, check every shape and every file's
  length against the model (a bad checkpoint fails here, before anything in the model changes); for a
  GPU, cut the stored bytes into pieces of one ring chunk each (:mod:`.ring`) and read the first ones
  ahead, while the previous checkpoint's probe runs (the rest: the kernel is asked to page it in, which
  helps a disk; the ring bounds what the loader itself holds).
- :meth:`WeightLoader.apply` (the main thread): for a GPU, stream the pieces through the ring: reading
  threads ``preadv`` a piece into a pinned chunk while the chunk before it is copied (non-blocking, a
  DMA) into the byte ranges of the parameters' storage it covers (a tensor may span chunks); a chunk is
  refilled only after its copies finish (a CUDA event). Nothing is staged on the device (a parameter of
  another dtype: one tensor's scratch), so it holds the model and the probe batch only. For the CPU,
  tensors stored in the model's dtype are not copied at all: the parameters become views of the
  memory-mapped file (copy-on-write, so nothing can write to the file) until :meth:`WeightLoader.release`
  gives them back their own memory; the others are read straight into the parameters.

Host memory is the ring (``chunks`` x ``chunk_bytes``, 256 MiB by default), whatever the model's size.
Nothing is global: a loader owns its model, device, ring and threads, so one loader per device is all a
worker per GPU needs.
"""

from __future__ import annotations

import mmap
import os
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from layerfilm.errors import CheckpointError
from layerfilm.io.formats import unreadable
from layerfilm.points.activations.ring import ChunkRing, RingClosed

# safetensors dtype names -> torch dtypes whose bytes can be copied as they are
TORCH_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                "BOOL": torch.bool}
PIECE = 64 * 2**20  # bytes per read on the CPU path: large enough to cost nothing per call, small enough to share
CHUNKS, CHUNK_BYTES = 8, 32 * 2**20  # the ring: 8 reads in flight, 256 MiB of pinned memory in all


def _prefixes(keys: list[str], depth: int = 2) -> set[str]:
    out = {""}
    for k in keys:
        parts = k.split(".")
        out.update(".".join(parts[:i]) + "." for i in range(1, min(depth, len(parts) - 1) + 1))
    return out


def match_keys(model_keys: list[str], ckpt_keys: list[str], where: Path | str = "",
               optional: Callable[[str, set[str]], bool] = lambda key, found: False,
               unused: Callable[[str], bool] = lambda name: False) -> dict[str, str]:
    """Model key -> checkpoint key, after removing a wrapper prefix the checkpoint has and the model
    lacks (``module.``, ``_orig_mod.``, ``model.``), or adding one the model has and the checkpoint lacks.

    Strict: raises CheckpointError listing the missing and unexpected keys unless every model key
    is found (``optional(key, found_keys)`` ones may be missing, e.g. a tied ``lm_head.weight``) and every
    checkpoint tensor is used (``unused(name)`` ones may be left in the file, never read: e.g. the LM head
    of a model that stops after its last block).
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
    unexpected = [k for k in ckpt_keys if k not in used and not unused(k)]
    if missing or unexpected:
        def few(keys: list[str]) -> str:
            return ", ".join(keys[:4]) + (f" (+{len(keys) - 4} more)" if len(keys) > 4 else "")

        parts = [f"{len(missing)} missing: {few(missing)}"] if missing else []
        parts += [f"{len(unexpected)} unexpected: {few(unexpected)}"] if unexpected else []
        raise CheckpointError(f"{where}: weights do not match the model ({'; '.join(parts)}); "
                              f"is --model (or config.json) the architecture that wrote this checkpoint?")
    return {k: best[k] for k in model_keys if k in best}


@dataclass(eq=False)
class Item:
    """One tensor to load: into model key ``key``, from checkpoint tensor ``name`` (stored ``dtype``,
    ``shape``, ``nbytes``), whose bytes lie in ``file`` at ``offset``, or which is ``source`` (a torch
    pickle's memory-mapped tensor, or another format's float32 array); ``view``: the CPU's zero-copy
    view of the memory-mapped file, when the model's dtype is the stored one."""

    key: str
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    nbytes: int
    file: Path | None = None
    offset: int = 0
    source: torch.Tensor | None = None
    view: torch.Tensor | None = None


@dataclass(eq=False)
class Piece:
    """Bytes ``offset`` .. ``offset + nbytes`` of ``file``, one ring chunk's worth, numbered ``seq`` in
    the ring's sequence; ``dests``: (item, place in the chunk, place in the item's bytes, length) of
    every tensor it covers (a tensor larger than a chunk is covered by several pieces)."""

    file: Path
    offset: int
    nbytes: int
    dests: list[tuple[Item, int, int, int]]
    seq: int = 0


@dataclass(eq=False)
class Staged:
    """One checkpoint's weights ready to go into the model: its items, and for a GPU the pieces they
    stream in by, the first ``len(held)`` of them already read into the ring's chunks ``held``."""

    where: Path
    items: list[Item]
    pieces: list[Piece]
    held: list[torch.Tensor]


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


def _read_piece(piece: Piece, dest: torch.Tensor) -> None:
    try:
        fd = os.open(piece.file, os.O_RDONLY)
    except OSError as e:
        raise unreadable(piece.file, e) from None
    try:
        _read(fd, dest[: piece.nbytes].numpy(), piece.offset, piece.file)
    finally:
        os.close(fd)


def plan_pieces(items: list[Item], size: int) -> list[Piece]:
    """Cut the stored bytes of ``items`` into pieces of at most ``size`` bytes, in file order: tensors
    adjacent in a file share pieces, so a whole safetensors file is one run of full chunks."""
    runs: list[tuple[Path, int, int, list[Item]]] = []
    for it in sorted((i for i in items if i.file is not None and i.nbytes), key=lambda i: (str(i.file), i.offset)):
        assert it.file is not None
        if runs and runs[-1][0] == it.file and runs[-1][2] == it.offset:
            file, start, _, members = runs[-1]
            runs[-1] = (file, start, it.offset + it.nbytes, [*members, it])
        else:
            runs.append((it.file, it.offset, it.offset + it.nbytes, [it]))
    pieces = []
    for file, start, end, members in runs:
        k = 0
        for s in range(start, end, size):
            e = min(s + size, end)
            dests = []
            while k < len(members) and members[k].offset < e:
                it = members[k]
                a, b = max(it.offset, s), min(it.offset + it.nbytes, e)
                dests.append((it, a - s, a - it.offset, b - a))
                if it.offset + it.nbytes > e:  # continues in the next piece
                    break
                k += 1
            pieces.append(Piece(file, s, e - s, dests))
    return pieces


class WeightLoader:
    """Loads checkpoints into ``model`` on ``device`` (see the module's docstring); a context manager
    that owns its reading threads and its ring of host chunks.

    Example:
        >>> with WeightLoader(model, device) as loader:  # doctest: +SKIP
        ...     with open_checkpoint(path, "safetensors") as reader:
        ...         staged = loader.stage(reader, path)
        ...     loader.apply(staged)
        ...     run_probe(model, ...)
        ...     loader.release()
    """

    def __init__(self, model: torch.nn.Module, device: torch.device, threads: int | None = None,
                 host_buffers: bool | None = None, chunks: int = CHUNKS, chunk_bytes: int = CHUNK_BYTES) -> None:
        """``threads``: reading threads (default: one per core, at most 8). ``host_buffers``: stream through
        the ring of ``chunks`` host chunks of ``chunk_bytes`` (default: on a GPU only; on the CPU the
        parameters map the file or are read into directly; True on the CPU runs the GPU's code, unpinned)."""
        self.device = device
        self.gpu = device.type == "cuda"
        ring = self.gpu if host_buffers is None else host_buffers
        if self.gpu and not ring:
            raise ValueError("a GPU loads through host buffers")
        self.live = model.state_dict(keep_vars=True)  # the model's own tensor objects (CPU views swap their .data)
        self.own = {k: v.detach() for k, v in self.live.items()}  # and the memory they were built with
        groups: dict[int, list[str]] = {}
        for k, v in self.live.items():  # tied weights share storage: one of them is enough
            groups.setdefault(v.data_ptr(), []).append(k)
        self.tied = {k: g for g in groups.values() if len(g) > 1 for k in g}
        self.ignore = [re.compile(p) for p in getattr(model, "_keys_to_ignore_on_load_missing", None) or []]
        self.unread = [re.compile(p) for p in getattr(model, "_keys_to_ignore_on_load_unexpected", None) or []]
        self._pool = ThreadPoolExecutor(threads or min(8, os.cpu_count() or 1), thread_name_prefix="layerfilm-read")
        self._ring = ChunkRing(chunks, chunk_bytes, pin=self.gpu) if ring else None
        self._mapped: list[str] = []  # keys whose parameters are views of a mapped file

    def __enter__(self) -> WeightLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
        self._pool.shutdown(wait=True)

    def close(self) -> None:
        """Stop reads waiting for a chunk (a background stage of a checkpoint that will never be applied)."""
        if self._ring is not None:
            self._ring.close()

    def optional(self, key: str, found: set[str]) -> bool:
        """A key that may be missing: tied to one that is found, or one the model says to ignore."""
        return any(o in found for o in self.tied.get(key, ())) or any(p.search(key) for p in self.ignore)

    def unused(self, name: str) -> bool:
        """A checkpoint tensor the model says it does not use (left in the file, never read)."""
        return any(p.search(name) for p in self.unread)

    def target(self, key: str) -> torch.Tensor:
        """The tensor that holds model key ``key`` now."""
        return self.live[key].detach()

    @property
    def host_bytes(self) -> int:
        """Host memory held by the ring (0 without one)."""
        return self._ring.allocated if self._ring is not None else 0

    # ------------------------------------------------------------ host half (a background thread)

    def stage(self, reader, where: Path) -> Staged:
        """Check an open checkpoint against the model, then (GPU) read its first pieces into the ring or
        (CPU) map its files. Raises CheckpointError (keys, shapes, a short file) before the model is touched."""
        mapping = match_keys(list(self.own), reader.keys(), where, self.optional, self.unused)
        items = []
        for key, name in mapping.items():
            shape = tuple(reader.shape(name))
            if shape != tuple(self.own[key].shape):
                raise CheckpointError(f"{where}: {name} has shape {shape}, the model expects {tuple(self.own[key].shape)}")
            items.append(self._item(reader, key, name, shape))
        _check_lengths(items)
        staged = Staged(where, items, [], [])
        if self._ring is not None:
            staged.pieces = plan_pieces(items, self._ring.size)
            first = self._ring.reserve(len(staged.pieces))
            for i, piece in enumerate(staged.pieces):
                piece.seq = first + i
            _will_need(staged.pieces[self._ring.count:])
            self._read_ahead(staged)
        elif not self.gpu:
            self._map(staged)
        return staged

    def _item(self, reader, key: str, name: str, shape: tuple[int, ...]) -> Item:
        span = reader.span(name) if reader.dtype(name) in TORCH_DTYPES else None
        if span is not None:
            file, offset, nbytes = span
            return Item(key, name, TORCH_DTYPES[reader.dtype(name)], shape, nbytes, Path(file), offset)
        source = reader.tensor(name)
        if source is None:  # a format without a byte layout or torch tensors: its float32 arrays
            source = torch.from_numpy(reader.get(name))
        return Item(key, name, source.dtype, shape, source.numel() * source.element_size(), source=source)

    def _read_ahead(self, staged: Staged) -> None:
        """Read the first pieces (one ring's worth) now: this runs while the previous checkpoint's probe does."""
        assert self._ring is not None
        for piece in staged.pieces[: self._ring.count]:
            try:
                staged.held.append(self._fill(piece))
            except BaseException:
                self._abandon(staged, 0, {})
                raise

    def _fill(self, piece: Piece) -> torch.Tensor:
        """Wait for ``piece``'s chunk and read the piece into it."""
        assert self._ring is not None
        chunk = self._ring.acquire(piece.seq)
        _read_piece(piece, chunk)
        return chunk

    def _abandon(self, staged: Staged, start: int, reading: dict) -> None:
        """Give back the ring's turns of pieces ``start`` onwards (none released yet) of a checkpoint that
        failed, in order, since later checkpoints wait for them: reads in flight are waited for first."""
        assert self._ring is not None
        staged.held.clear()
        for i in range(start, len(staged.pieces)):
            if i in reading:
                try:
                    reading.pop(i).result()
                except Exception:  # noqa: BLE001 - a read that failed too: the first error is the one raised
                    pass
            self._ring.skip(staged.pieces[i].seq)  # its chunk, whether it was read into or not

    def _map(self, staged: Staged) -> None:
        """CPU: a view of the mapped file for each tensor stored in its parameter's dtype (no copy now;
        the probe touches the pages). Mapped copy-on-write: a write (never made) could not reach the file."""
        maps: dict[Path, mmap.mmap] = {}
        for it in staged.items:
            target = self.own[it.key]
            if (it.file is None or it.dtype != target.dtype or not it.nbytes or it.offset % it.dtype.itemsize
                    or len({id(self.live[k]) for k in self.tied.get(it.key, [it.key])}) > 1):
                continue  # read into the parameter instead (another dtype, an odd offset, storage shared otherwise)
            if it.file not in maps:
                try:
                    with open(it.file, "rb") as f:
                        maps[it.file] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
                except OSError as e:
                    raise unreadable(it.file, e) from None
            it.view = torch.frombuffer(maps[it.file], dtype=it.dtype, count=it.nbytes // it.dtype.itemsize,
                                       offset=it.offset).view(it.shape)

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
        """Put a staged checkpoint into the model's parameters (GPU: copies enqueued, non-blocking, on the
        device's current stream, so the probe that follows sees them)."""
        self.release()
        for it in staged.items:
            if it.source is not None:
                self.target(it.key).copy_(it.source)
                it.source = None
        if self._ring is not None:
            self._stream(staged)
        else:
            self._apply_cpu(staged)

    def release(self) -> None:
        """Give the parameters that view a mapped file their own memory back (contents as last loaded
        there), so no file stays mapped once the probe is done."""
        for key in self._mapped:
            self.live[key].data = self.own[key]
        self._mapped = []

    def _stream(self, staged: Staged) -> None:
        """Every piece through the ring: the reads of the next chunks (the loader's threads) overlap the
        copies out of this one; each chunk goes back with an event recorded after its copies."""
        ring, pieces = self._ring, staged.pieces
        assert ring is not None
        stream = torch.cuda.current_stream(self.device) if self.gpu else None
        reading: dict = {}

        def read(j: int) -> None:
            if len(staged.held) <= j < len(pieces):
                reading[j] = self._pool.submit(self._fill, pieces[j])

        for j in range(len(staged.held), min(ring.count, len(pieces))):
            read(j)
        scratch: dict[Item, list] = {}  # item -> [bytes of its dtype on the device, bytes still to come]
        released = 0
        try:
            for i, piece in enumerate(pieces):
                chunk = staged.held[i] if i < len(staged.held) else reading.pop(i).result()
                try:
                    for it, at, pos, n in piece.dests:
                        self._dest(it, scratch)[pos: pos + n].copy_(chunk[at: at + n], non_blocking=True)
                        if it in scratch:
                            scratch[it][1] -= n
                            if not scratch[it][1]:  # the whole tensor is on the device: convert into place
                                self.target(it.key).copy_(scratch.pop(it)[0].view(it.dtype).view(it.shape))
                finally:
                    done = None
                    if stream is not None:
                        done = torch.cuda.Event()
                        done.record(stream)
                    ring.release(piece.seq, done)
                    released += 1
                read(i + ring.count)
        except BaseException as e:
            if not isinstance(e, RingClosed):  # closed: nothing waits any more
                self._abandon(staged, released, reading)
            raise
        staged.held.clear()

    def _dest(self, it: Item, scratch: dict[Item, list]) -> torch.Tensor:
        """The bytes piece copies of ``it`` go to: its parameter's storage (as uint8), or for another dtype
        or a non-contiguous parameter, a scratch tensor on the device converted once complete."""
        target = self.target(it.key)
        if it.dtype == target.dtype and target.is_contiguous():
            return target.reshape(-1).view(torch.uint8)
        if it not in scratch:
            scratch[it] = [torch.empty(it.nbytes, dtype=torch.uint8, device=self.device), it.nbytes]
        return scratch[it][0]

    def _apply_cpu(self, staged: Staged) -> None:
        """Swap in the mapped views; read the other tensors' bytes straight into their parameters
        (another dtype: through a scratch copy)."""
        reads, convert = [], []
        for it in staged.items:
            target = self.target(it.key)
            if it.view is not None:
                self.live[it.key].data = it.view
                self._mapped.append(it.key)
            elif it.file is None:
                continue  # copied from its source above
            elif it.dtype == target.dtype and target.is_contiguous():
                reads.append((it.file, it.offset, target.reshape(-1).view(torch.uint8).numpy()))
            else:
                scratch = torch.empty(it.nbytes, dtype=torch.uint8)
                reads.append((it.file, it.offset, scratch.numpy()))
                convert.append((target, scratch, it))
        self._read_all(reads)
        for target, scratch, it in convert:
            target.copy_(scratch.view(it.dtype).view(it.shape))


def _will_need(pieces: list[Piece]) -> None:
    """Ask the kernel to read the rest of a checkpoint into the page cache now (while the previous probe runs),
    where the ring cannot hold it: on a disk, the pieces' reads are then copies from memory. A hint only:
    a file system without it (tmpfs: already memory) is not an error."""
    if not pieces or not hasattr(os, "posix_fadvise"):
        return
    spans: dict[Path, list[int]] = {}
    for p in pieces:
        lo, hi = spans.setdefault(p.file, [p.offset, p.offset + p.nbytes])
        spans[p.file] = [min(lo, p.offset), max(hi, p.offset + p.nbytes)]
    for file, (lo, hi) in spans.items():
        try:
            fd = os.open(file, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, lo, hi - lo, os.POSIX_FADV_WILLNEED)
            finally:
                os.close(fd)
        except OSError:
            pass


def _check_lengths(items: list[Item]) -> None:
    """A file shorter than its tensors' bytes is a truncated checkpoint: found before anything is loaded."""
    ends: dict[Path, int] = {}
    for it in items:
        if it.file is not None:
            ends[it.file] = max(ends.get(it.file, 0), it.offset + it.nbytes)
    for file, end in ends.items():
        try:
            size = os.stat(file).st_size
        except OSError as e:
            raise unreadable(file, e) from None
        if size < end:
            raise CheckpointError(f"{file}: truncated (it ends before byte {end:,})")
