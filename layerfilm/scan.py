"""Finding checkpoints in a folder and recovering each one's training step."""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

from .errors import OptionsError, ScanError
from .formats import detect_format

# A step written with a keyword wins over any other number in the name:
# "epoch=0-step=150.ckpt" is step 150, "checkpoint-2000" is step 2000, "step_000100" is 100.
_KEYWORD_STEP = re.compile(r"(?:global_step|step|checkpoint|ckpt|iter|iteration)[-_=]?(\d+)", re.I)
_ANY_NUMBER = re.compile(r"\d+")


@dataclass(frozen=True)
class Checkpoint:
    step: int
    path: Path
    format: str


@dataclass(frozen=True)
class Series:
    """Checkpoints sorted by step (numerically), one per step."""

    root: Path
    checkpoints: tuple[Checkpoint, ...]

    @property
    def steps(self) -> list[int]:
        return [c.step for c in self.checkpoints]

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
        raise OptionsError(f"--steps {text!r}: expected A:B (e.g. 0:2000, 500: or :1000)")
    lo, hi = (int(g) if g else None for g in m.groups())
    if lo is not None and hi is not None and lo > hi:
        raise OptionsError(f"--steps {text!r}: start {lo} is after end {hi}")
    return lo, hi


def scan(
    root: str | Path,
    every: int = 1,
    steps: tuple[int | None, int | None] = (None, None),
) -> Series:
    """Find the checkpoints directly inside ``root`` and sort them by step.

    Args:
        root: a folder of ``*.safetensors`` files or ``checkpoint-N/`` folders.
        every: keep every K-th checkpoint (after the step range is applied).
        steps: inclusive (start, end) range of steps to keep; None = open end.
    Returns:
        a :class:`Series`. Entries with no recoverable step are skipped with a warning.
    """
    root = Path(root)
    if every < 1:
        raise OptionsError(f"--every {every}: must be 1 or more")
    if not root.exists():
        raise ScanError(f"{root}: no such folder")
    if not root.is_dir():
        raise ScanError(f"{root}: not a folder (give the folder that holds the checkpoints)")
    entries = sorted(root.iterdir())
    if not entries:
        raise ScanError(f"{root}: the folder is empty")
    found: dict[int, Checkpoint] = {}
    for entry in entries:
        fmt = detect_format(entry)
        if fmt is None:
            continue
        step = step_from_name(entry.name)
        if step is None:
            warnings.warn(f"{entry}: no training step in its name; not used as a key frame", stacklevel=2)
            continue
        if step in found:
            warnings.warn(f"{entry}: step {step} already taken by {found[step].path.name}; skipped", stacklevel=2)
            continue
        found[step] = Checkpoint(step, entry, fmt)
    if not found:
        raise ScanError(f"{root}: no checkpoints found (expected *.safetensors files or checkpoint-N/ folders)")
    lo, hi = steps
    kept = [found[s] for s in sorted(found) if (lo is None or s >= lo) and (hi is None or s <= hi)]
    kept = kept[::every]
    if not kept:
        raise ScanError(f"{root}: no checkpoints in the step range {lo}:{hi}")
    return Series(root, tuple(kept))
