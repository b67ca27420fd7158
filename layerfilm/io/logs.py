"""A run's training logs: the loss and the learning rate by step, read from the files trainers write
beside their checkpoints, for the strip of curves under the film's timeline (layerfilm.draw.curves).

Sources, the first that holds a loss or a learning rate wins:

1. Hugging Face Trainer: ``trainer_state.json``'s ``log_history`` (``loss``, ``learning_rate``,
   ``grad_norm`` by ``step``), from the newest ``checkpoint-N/`` folder, or the run's own folder
   (``trainer.save_state()``) when that one holds more entries;
2. Lightning's CSVLogger: ``metrics.csv`` in the folder, or in its newest ``lightning_logs/version_N/``
   (looked for beside a ``checkpoints/`` folder too: Lightning's default layout);
3. TensorBoard event files (``events.out.tfevents.*``, also under ``runs/*/`` and ``lightning_logs/version_N/``),
   read with the ``tensorboard`` package when it is installed (imported only then).

Logs are data, never code: JSON, CSV and event records are parsed, nothing is imported or run from
the run's folder. A file that cannot be read or parsed is skipped with one warning; a local folder
only (a URL folder has no logs here).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import warnings
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from layerfilm.errors import LayerfilmError
from layerfilm.io.formats.base import check_regular
from layerfilm.io.scan import TRAINER_STATE
from layerfilm.io.storage import AnyPath
from layerfilm.text import show

MAX_LOG_BYTES = 256 * 2**20  # a log file larger than this is not read (a log of a million steps is ~100 MB)
EVENTS = "events.out.tfevents.*"

# column / tag / key names, best first; then any name holding the word (not a validation's or a test's)
LOSS_NAMES = ("loss", "train_loss", "train/loss", "train_loss_step", "training_loss", "train/loss_step")
LR_NAMES = ("learning_rate", "lr", "train/learning_rate", "train/lr")
_NOT_TRAIN = re.compile(r"val|eval|test|epoch", re.I)


@dataclass(frozen=True)
class Curve:
    """One logged quantity: ``values`` (n,) float64 at increasing ``steps`` (n,) int64, all finite."""

    name: str  # the key, column or tag it was read from, e.g. "loss", "lr-AdamW", "train/learning_rate"
    steps: np.ndarray
    values: np.ndarray

    @classmethod
    def of(cls, name: str, pairs: list[tuple[int, float]]) -> Curve | None:
        """The curve of (step, value) pairs: the last value of a step kept, non-finite ones dropped."""
        by_step = {s: v for s, v in pairs if math.isfinite(v) and s >= 0}
        if not by_step:
            return None
        steps = np.array(sorted(by_step), np.int64)
        return cls(name, steps, np.array([by_step[s] for s in steps.tolist()], np.float64))


@dataclass(frozen=True)
class RunLogs:
    """What a run logged: the loss and the learning rate (either may be missing) and where from."""

    source: str  # the file read, as printed
    loss: Curve | None = None
    lr: Curve | None = None
    grad_norm: Curve | None = None  # Trainer's log_history only


def _name(names: list[str], best: tuple[str, ...], word: str) -> str | None:
    """The name among ``names`` that is the training ``word`` (loss or lr): one of ``best``, else the first
    holding it (``lr-AdamW`` of Lightning's LearningRateMonitor) that is not a validation's."""
    for b in best:
        if b in names:
            return b
    pattern = re.compile(rf"(^|[^a-z]){word}([^a-z]|$)", re.I)
    return next((n for n in names if pattern.search(n) and not _NOT_TRAIN.search(n)), None)


def _number(v) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        return None
    try:
        return float(v)
    except ValueError:
        return None


def _logs(source: AnyPath, columns: dict[str, list[tuple[int, float]]], grad: str | None = None) -> RunLogs | None:
    names = list(columns)
    loss, lr = _name(names, LOSS_NAMES, "loss"), _name(names, LR_NAMES, "lr") or _name(names, (), "learning_rate")
    logs = RunLogs(show(source), Curve.of(loss, columns[loss]) if loss else None, Curve.of(lr, columns[lr]) if lr else None,
                   Curve.of(grad, columns[grad]) if grad in columns else None)
    return logs if logs.loss is not None or logs.lr is not None else None


def _text(path: Path) -> str:
    size = check_regular(path).st_size
    if size > MAX_LOG_BYTES:
        raise ValueError(f"{size / 2**20:.0f} MB, more than a log file of {MAX_LOG_BYTES // 2**20} MB")
    return path.read_text(encoding="utf-8")


def trainer_state(path: Path) -> RunLogs | None:
    """The curves of a Trainer's ``trainer_state.json`` (its ``log_history``)."""
    history = json.loads(_text(path)).get("log_history")
    if not isinstance(history, list):
        raise ValueError("no log_history list")
    columns: dict[str, list[tuple[int, float]]] = {}
    for entry in history:
        step = entry.get("step") if isinstance(entry, dict) else None
        if type(step) is not int:
            continue
        for key in ("loss", "learning_rate", "grad_norm"):
            v = _number(entry.get(key))
            if v is not None:
                columns.setdefault(key, []).append((step, v))
    return _logs(path, columns, "grad_norm")


def metrics_csv(path: Path) -> RunLogs | None:
    """The curves of a Lightning CSVLogger's ``metrics.csv`` (a ``step`` column, one per metric)."""
    rows = csv.DictReader(io.StringIO(_text(path)))
    if rows.fieldnames is None or "step" not in rows.fieldnames:
        raise ValueError("no step column")
    columns: dict[str, list[tuple[int, float]]] = {n: [] for n in rows.fieldnames if n not in ("step", "epoch")}
    for row in rows:
        step = _number(row.get("step"))
        if step is None or step != int(step):
            continue
        for name, pairs in columns.items():
            v = _number(row.get(name) or "")
            if v is not None:
                pairs.append((int(step), v))
    return _logs(path, columns)


def event_files(folder: Path) -> RunLogs | None:
    """The scalar curves of the TensorBoard event files in ``folder`` (None without ``tensorboard``)."""
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        warnings.warn(f"{show(folder)}: TensorBoard event files not read (pip install tensorboard to show their "
                      "loss and learning rate)", stacklevel=3)
        return None
    for f in folder.glob(EVENTS):
        check_regular(f)
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    columns = {tag: [(int(e.step), float(e.value)) for e in acc.Scalars(tag)] for tag in acc.Tags().get("scalars", [])}
    return _logs(folder, columns, "train/grad_norm")


def _number_in(path: Path) -> int:
    m = re.search(r"(\d+)$", path.name)
    return int(m.group(1)) if m else -1


def _newest(paths) -> list[Path]:
    return sorted(paths, key=lambda p: (_number_in(p.parent), str(p)))[-1:]


def _candidates(root: Path, skipped: Collection[Path] = ()) -> list[tuple[str, Path]]:
    """(kind, path) of every log file or folder to try, best first (not in the ``skipped`` checkpoints'
    folders: their files were refused once already)."""
    states = [p for p in _newest(root.glob(f"checkpoint-*/{TRAINER_STATE}")) if p.parent not in skipped]
    if (root / TRAINER_STATE).is_file():
        states.append(root / TRAINER_STATE)
    bases = [root, root.parent] if root.name == "checkpoints" else [root]
    csvs, events = [], []
    for base in bases:
        csvs += [base / "metrics.csv", *_newest(base.glob("lightning_logs/version_*/metrics.csv"))]
        events += [base, *[p.parent for p in _newest(base.glob(f"lightning_logs/version_*/{EVENTS}"))],
                   *sorted({p.parent for p in base.glob(f"runs/*/{EVENTS}")})[-1:]]
    return ([("trainer", p) for p in states] + [("csv", p) for p in csvs if p.exists()]
            + [("events", p) for p in events if any(p.glob(EVENTS))])


READERS = {"trainer": trainer_state, "csv": metrics_csv, "events": event_files}


def read_logs(root: AnyPath, skipped: Collection[AnyPath] = ()) -> RunLogs | None:
    """The loss and learning rate a run logged beside its checkpoints in ``root`` (see the module's
    docstring for where they are looked for), or None when there are none (or ``root`` is a URL).
    A Trainer's states are compared by length: the one with the most entries wins. The folders of the
    ``skipped`` checkpoints are not read (the scan refused them, with its one line each)."""
    if not isinstance(root, Path):
        return None
    found: list[RunLogs] = []
    refused = {q for p in skipped if isinstance(p, Path) for q in (p, p.parent) if q != root}  # folders, or a file's
    for kind, path in _candidates(root, refused):
        if found and kind != "trainer":
            break
        try:
            logs = READERS[kind](path)
        except (OSError, ValueError, UnicodeDecodeError, RecursionError, AttributeError, csv.Error, LayerfilmError) as e:
            warnings.warn(f"{show(path)}: training logs not read ({e}); skipped", stacklevel=2)
            continue
        except Exception as e:  # the tensorboard package's own parse errors (a damaged event file)
            if kind != "events":
                raise
            warnings.warn(f"{show(path)}: training logs not read ({type(e).__name__}: {e}); skipped", stacklevel=2)
            continue
        if logs is not None:
            found.append(logs)
    return max(found, key=lambda g: sum(len(c.steps) for c in (g.loss, g.lr) if c is not None), default=None)
