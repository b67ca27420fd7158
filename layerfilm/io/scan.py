"""Finding checkpoints in a folder, recovering each one's training step, and vetting it.

Every candidate is opened lazily (headers and pickles only, no tensor data) to learn its step, its
blocks, dtype and size, and what is wrong with it. Unusable checkpoints are kept aside with the
reason (``Checkpoint.problem``) so a render can skip them and say why; ``strict`` refuses them.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from tqdm.auto import tqdm

from layerfilm.errors import CheckpointError, LayerfilmError, OptionsError, ScanError, StorageError
from layerfilm.io.blocks import map_blocks, resolve_param
from layerfilm.io.formats import (
    HF_WEIGHT_FILE,
    READABLE_DTYPES,
    cannot_read_dtype,
    check_finite,
    check_regular,
    detect_format,
    open_checkpoint,
)
from layerfilm.io.storage import AnyPath, RemotePath, location

# A step written with a keyword wins over any other number in the name:
# "epoch=0-step=150.ckpt" is step 150, "checkpoint-2000" is step 2000, "step_000100" is 100.
_KEYWORD_STEP = re.compile(r"(?:global_step|step|checkpoint|ckpt|iter|iteration)[-_=]?(\d+)", re.I)
_ANY_NUMBER = re.compile(r"\d+")
# Files a Hugging Face Trainer writes beside the weights; never model weights.
_SIDE_FILES = re.compile(r"^(?:training_args\.bin|optimizer\.(?:pt|bin)|scheduler\.pt|scaler\.pt|rng_state(?:_\d+)?\.pth)$")
NO_FINAL_STEP = "no training step in its name; not a key frame unless --final-step N says which step it is"
MAX_STEP = 2**63 - 1  # steps are int64 from here on (features, trajectories, caches)
TRAINER_STATE = "trainer_state.json"


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint found by :func:`scan`.

    step:    training step (None when it could not be recovered).
    format:  registered format name (see ``layerfilm.io.formats.FORMATS``).
    problem: why it cannot be used, or None.
    blocks:  decoder blocks found; dtype: dtype of the block tensors ("BF16", "F32", ...);
    size:    bytes on disk of its weight files.
    """

    step: int | None
    path: AnyPath  # a local Path, or a RemotePath (layerfilm.io.storage) for a folder given as a URL
    format: str
    problem: str | None = None
    blocks: int = 0
    dtype: str = ""
    size: int = 0

    def as_dict(self) -> dict:
        d = asdict(self)
        d["path"] = str(self.path)
        if self.problem is None:
            del d["problem"]
        return d


@dataclass(frozen=True)
class Series:
    """Usable checkpoints sorted by step (numerically), one per step; ``skipped``: the unusable ones."""

    root: AnyPath
    checkpoints: tuple[Checkpoint, ...]
    skipped: tuple[Checkpoint, ...] = ()

    @property
    def steps(self) -> list[int]:
        steps = [c.step for c in self.checkpoints if c.step is not None]
        assert len(steps) == len(self.checkpoints)  # a usable checkpoint has a step
        return steps

    def __len__(self) -> int:
        return len(self.checkpoints)


def step_from_name(name: str) -> int | None:
    """The training step a file or folder name encodes, or None if it encodes none.

    A number after a keyword (step, checkpoint, iter, ...) wins; otherwise a name holding exactly
    one number uses it (``100.safetensors``); names with several bare numbers are ambiguous.
    """
    stem = name
    for suffix in (".safetensors", ".ckpt", ".pth", ".pt", ".bin"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    hits = _KEYWORD_STEP.findall(stem)
    if hits:
        return int(hits[-1])
    numbers = _ANY_NUMBER.findall(stem)
    return int(numbers[0]) if len(numbers) == 1 else None


def parse_steps(text: str) -> tuple[int | None, int | None]:
    """``"A:B"`` -> (A, B) inclusive; either side may be empty."""
    m = re.fullmatch(r"\s*(\d*)\s*:\s*(\d*)\s*", text)
    if not m:
        raise OptionsError(f"steps={text!r}: expected A:B (e.g. 0:2000, 500: or :1000)")
    lo, hi = (int(g) if g else None for g in m.groups())
    if lo is not None and hi is not None and lo > hi:
        raise OptionsError(f"steps={text!r}: start {lo} is after end {hi}")
    return lo, hi


def _trainer_step(folder: AnyPath) -> int | None:
    """``global_step`` of a Trainer folder's trainer_state.json, if there is one."""
    path = folder / TRAINER_STATE
    if not path.exists():
        return None
    check_regular(path)
    try:
        step = json.loads(path.read_text()).get("global_step")
    except (OSError, ValueError, AttributeError, RecursionError):
        return None
    return step if type(step) is int else None


def _candidates(root: AnyPath, only: Callable[[AnyPath], bool] | None = None) -> list[tuple[AnyPath, str, bool, str | None]]:
    """(path, format, is the final model, problem) of everything in ``root`` that looks like a checkpoint,
    by name only.

    A model saved at the root itself (Trainer's final ``save_model``: model.safetensors, shards with
    an index, pytorch_model.bin) is one candidate, the final model, whose step only --final-step gives.
    A folder named like a checkpoint (``checkpoint-N/``) that cannot be looked into is a candidate with
    its problem; a folder whose weight files are not regular files (a FIFO ``model.safetensors``) is
    one whose problem :func:`_inspect` finds. ``only``: a filter on the entries of ``root`` (the final
    model: on ``root`` itself), applied before anything is opened (layerfilm.live.film: only complete ones).
    """
    root_format = detect_format(root) if only is None or only(root) else None
    found: list[tuple[AnyPath, str, bool, str | None]] = []
    if root_format == "sharded":
        found.append((root, root_format, True, None))
    elif root_format:  # one weight file: name it, not the folder
        weights = next(root / n for n in ("model.safetensors", "pytorch_model.bin") if (root / n).is_file())
        weights_format = detect_format(weights)
        assert weights_format is not None  # detected by its suffix
        found.append((weights, weights_format, True, None))
    for entry in _entries(root):
        if entry.name.startswith(".") or _SIDE_FILES.match(entry.name) or (only is not None and not only(entry)):
            continue
        if root_format and HF_WEIGHT_FILE.match(entry.name):
            continue
        try:
            fmt = detect_format(entry) or (_folder_format(entry) if entry.is_dir() else None)
        except OSError as e:  # a folder without read or search permission
            if step_from_name(entry.name) is not None:
                found.append((entry, "unknown", False, f"cannot read ({e.strerror or e})"))
            continue
        if fmt is not None:
            found.append((entry, fmt, False, None))
    return found


def _names(folder: AnyPath) -> list[str]:
    """The names in a folder, sorted (a remote folder's from its one listing)."""
    return sorted(os.listdir(folder) if isinstance(folder, Path) else (p.name for p in folder.iterdir()))


def _entries(folder: AnyPath) -> list[AnyPath]:
    """What is in a folder, sorted by name."""
    if isinstance(folder, RemotePath):
        return sorted(folder.iterdir())
    return sorted(folder.iterdir())


def _folder_format(folder: AnyPath) -> str | None:
    """The format of a checkpoint folder whose weight files are there but not regular files (detection
    wants regular files), so that it is skipped with its problem rather than ignored."""
    names = [n for n in _names(folder) if HF_WEIGHT_FILE.match(n)]
    if any(n.endswith(".index.json") for n in names):
        return "sharded"
    if "model.safetensors" in names:
        return "safetensors"
    return "torch" if "pytorch_model.bin" in names else None


def _files_of(path: AnyPath) -> list[AnyPath]:
    """Every file a reader of the checkpoint at ``path`` may open: the file itself, or a folder's weight
    files, index and trainer_state.json."""
    if not path.is_dir():
        return [path]
    return [path / n for n in _names(path) if HF_WEIGHT_FILE.match(n) or n == TRAINER_STATE]


def out_of_range(step: int | None) -> str | None:
    """The problem of a step that does not fit the int64 steps of every later stage, or None."""
    return None if step is None or 0 <= step <= MAX_STEP else f"step {step} is out of range"


def _inspect(path: AnyPath, fmt: str, step: int | None, blocks_regex: str | None,
             deep: bool = False, param: str | None = None) -> tuple[Checkpoint, dict]:
    """The checkpoint at ``path`` with its problem (if any), and its block tensors' shapes.

    Every file is checked to be a regular file before anything opens it. From the headers: block
    tensors in a dtype layerfilm cannot read. With ``deep``, the filmed tensor (``param``, default the
    MLP input projection) of every block is read too, and NaN/Inf in it is a problem."""
    try:
        for f in _files_of(path):
            check_regular(f)
        with open_checkpoint(path, fmt) as reader:
            keys = reader.keys()
            inner = _trainer_step(path) if path.is_dir() else reader.step
            layer_map = map_blocks(keys, blocks_regex)
            block_keys = [n for b in layer_map.blocks for n in layer_map.names[b].values()]
            shapes = {f"{b}.{c}": reader.shape(n) for b in layer_map.blocks for c, n in layer_map.names[b].items()}
            dtypes = Counter(reader.dtype(n) for n in block_keys)
            unreadable = next((n for n in block_keys if reader.dtype(n) not in READABLE_DTYPES), None)
            if unreadable is not None:
                raise CheckpointError(cannot_read_dtype(unreadable, reader.dtype(unreadable)))
            size = sum(f.stat().st_size for f in reader.files)
            if deep:
                component = resolve_param(layer_map, param, {n: reader.shape(n) for n in block_keys})
                for b, name in zip(layer_map.blocks, layer_map.param_names(component)):
                    check_finite(reader.get(name), path, name, b)
    except StorageError:  # the storage, not this checkpoint: stops the command
        raise
    except LayerfilmError as e:
        return Checkpoint(step, path, fmt, problem=problem_of(e, path)), {}
    except OSError as e:
        return Checkpoint(step, path, fmt, problem=f"cannot read ({e.strerror or e})"), {}
    problem = out_of_range(step) or out_of_range(inner)
    if problem is None and step is None:
        step = inner
        if step is None:
            problem = "no training step in its name or inside it"
    elif problem is None and inner is not None and inner != step:
        problem = f"its name says step {step} but it records step {inner}"
    dtype = "+".join(sorted(dtypes)) if len(dtypes) > 1 else next(iter(dtypes), "")
    return Checkpoint(step, path, fmt, problem, len(layer_map.blocks), dtype, size), shapes


def problem_of(e: LayerfilmError, path: AnyPath) -> str:
    """An error's message without the leading path (the checkpoint is named beside it)."""
    text, p = str(e), str(path)
    if text.startswith(p + ": "):
        return text[len(p) + 2:]
    return text[len(p) + 1:] if text.startswith(p + os.sep) else text


def _odd_shapes(found: list[tuple[Checkpoint, dict]]) -> list[Checkpoint]:
    """Mark checkpoints whose blocks differ in number or shape from most others'."""
    usable = [(c, s) for c, s in found if c.problem is None]
    signature = Counter((c.blocks, tuple(sorted(s.items()))) for c, s in usable)
    if len(signature) <= 1:
        return [c for c, _ in found]
    (blocks, common_shapes), _ = signature.most_common(1)[0]
    common = dict(common_shapes)
    out = []
    for c, s in found:
        if c.problem is None and c.blocks != blocks:
            c = replace(c, problem=f"{c.blocks} blocks, most checkpoints have {blocks}")
        elif c.problem is None:
            odd = next((n for n in sorted(s) if n in common and s[n] != common[n]), None)
            missing = next((n for n in sorted(common) if n not in s), None)
            extra = next((n for n in sorted(s) if n not in common), None)
            if odd is not None:
                c = replace(c, problem=f"block tensor {odd} has shape {list(s[odd])}, "
                               f"most checkpoints have {list(common[odd])}")
            elif missing is not None:
                c = replace(c, problem=f"block tensor {missing} is missing, most checkpoints have it")
            elif extra is not None:
                c = replace(c, problem=f"block tensor {extra} is not in most checkpoints")
        out.append(c)
    return out


def _in_range(step: int, steps: tuple[int | None, int | None]) -> bool:
    lo, hi = steps
    return (lo is None or step >= lo) and (hi is None or step <= hi)


def scan(
    root: str | Path | RemotePath,
    every: int = 1,
    steps: tuple[int | None, int | None] = (None, None),
    *,
    final_step: int | None = None,
    strict: bool = False,
    blocks_regex: str | None = None,
    warn: bool = True,
    progress: bool = False,
    deep: bool = False,
    param: str | None = None,
    storage_options: str | None = None,
    only: Callable[[AnyPath], bool] | None = None,
    empty_ok: bool = False,
) -> Series:
    """Find the checkpoints directly inside ``root``, vet them and sort them by step.

    Args:
        root: a folder (or an fsspec URL: s3://, gs://, hf://, http(s)://) of checkpoint files
            (``*.safetensors``, ``*.pt``/``*.pth``/``*.bin``, Lightning ``*.ckpt``) or folders (``checkpoint-N/``,
            ``step1000/`` holding ``model.safetensors``, shards with an index, or ``pytorch_model.bin``); over a
            URL only safetensors (a pickle cannot be read by byte ranges).
        every: keep every K-th usable checkpoint (after the step range is applied).
        steps: inclusive (start, end) range of steps to keep; None = open end.
        final_step: the step of a model saved at ``root`` itself (otherwise it is not used).
        strict: raise on the first unusable checkpoint instead of skipping it.
        blocks_regex: block detection override (see :func:`layerfilm.io.blocks.map_blocks`).
        warn: one warning line per skipped checkpoint.
        deep: also read every block's filmed tensor (``param``, default the MLP input projection): one
            holding NaN/Inf makes a problem. Without it only headers are read.
        storage_options: JSON passed to fsspec for a URL (layerfilm.io.storage), e.g. an endpoint or credentials.
        only: look only at the entries of ``root`` for which this is True (nothing else is opened).
        empty_ok: candidates none of which is usable give a Series of no checkpoints (``skipped`` says why)
            instead of a ScanError: the scan command's table of problems, a live film's new arrivals.
    Returns:
        a :class:`Series`; unusable checkpoints are in ``Series.skipped`` with their problem.
    """
    root = location(root, storage_options)
    if every < 1:
        raise OptionsError(f"every={every}: must be 1 or more")
    if final_step is not None and not 0 <= final_step <= MAX_STEP:
        raise OptionsError(f"final_step={final_step}: must be between 0 and {MAX_STEP}")
    if not root.exists():
        raise ScanError(f"{root}: no such folder")
    if not root.is_dir():
        raise ScanError(f"{root}: not a folder (give the folder that holds the checkpoints)")
    try:
        candidates = _candidates(root, only)
    except OSError as e:
        raise ScanError(f"{root}: cannot list the folder ({e.strerror or e})") from None
    if not candidates:
        what = "the folder is empty" if not any(root.iterdir()) else "no checkpoints found"
        raise ScanError(f"{root}: {what} (expected *.safetensors, *.pt, *.bin, *.ckpt files "
                        "or checkpoint-N/ folders)")
    found: list[tuple[Checkpoint, dict]] = []
    finals = set()
    for path, fmt, final, problem in tqdm(candidates, desc="scanning", unit="ckpt", disable=not progress):
        if problem is not None:
            found.append((Checkpoint(step_from_name(path.name), path, fmt, problem), {}))
            continue
        if final:
            finals.add(path)
            if final_step is None:
                found.append((Checkpoint(None, path, fmt, NO_FINAL_STEP), {}))
                continue
        named = final_step if final else step_from_name(path.name)
        if named is not None and not _in_range(named, steps):
            continue  # outside --steps by its name alone: not opened (its header is not even read)
        found.append(_inspect(path, fmt, named, blocks_regex, deep, param))
    checkpoints: list[Checkpoint] = []
    taken: dict[int | None, AnyPath] = {}
    # on a duplicate step the first kept wins: a checkpoint folder before the root's final model
    for c in sorted(_odd_shapes(found), key=lambda c: (c.step is None, c.step or 0, c.path in finals, str(c.path))):
        if c.problem is None and c.step in taken:
            c = replace(c, problem=f"step {c.step} already taken by {taken[c.step].name}")
        if c.problem is None:
            taken[c.step] = c.path
        checkpoints.append(c)
    lo, hi = steps
    in_range = [c for c in checkpoints if c.step is None or ((lo is None or c.step >= lo) and (hi is None or c.step <= hi))]
    kept = [c for c in in_range if c.problem is None][::every]
    skipped = [c for c in in_range if c.problem is not None]
    for c in skipped:
        if strict and c.problem != NO_FINAL_STEP:
            raise CheckpointError(f"{c.path}: {c.problem} (strict: nothing is skipped)")
        if warn:
            warnings.warn(f"{c.path}: {c.problem}; skipped", stacklevel=2)
    if not kept and not empty_ok:
        raise no_usable(root, skipped, steps)
    return Series(root, tuple(kept), tuple(skipped))


def no_usable(root: AnyPath, skipped: list[Checkpoint] | tuple[Checkpoint, ...],
              steps: tuple[int | None, int | None] = (None, None)) -> ScanError:
    """The error of a folder none of whose checkpoints is usable, naming the first one's problem."""
    why = f" ({skipped[0].path.name}: {skipped[0].problem})" if skipped else ""
    range_note = f" in the step range {steps[0]}:{steps[1]}" if steps != (None, None) else ""
    return ScanError(f"{root}: no usable checkpoints{range_note}{why}")
