"""One device's pass: build the model once on the device, then for each of its checkpoints load the
weights and forward the probe batch, keeping each block's outputs at the tracked tokens and their
statistics.

The same function serves one device (``extract``, in this process) and each long-lived worker of
several (layerfilm.points.activations.devices), so a checkpoint gives the same bits wherever it runs.
The next checkpoint is staged (checked and read into host memory) in a background thread while the
current one runs the probe. A checkpoint that cannot be read or does not fit the model is not skipped
here but reported in the result (``Frame.problem``): the caller applies the one rule
(layerfilm.points.weights.skip) in checkpoint order, so the warnings and the ``--strict`` error are
those of a one-device run however the checkpoints were spread.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from layerfilm.errors import CheckpointError
from layerfilm.io.formats import open_checkpoint
from layerfilm.io.scan import Checkpoint, Series
from layerfilm.io.storage import local_path
from layerfilm.parallel.threads import prefetch
from layerfilm.points import FeatureStore
from layerfilm.points.activations.loader import Staged, WeightLoader
from layerfilm.points.activations.model import build_model, check_fits, embedding_rows, find_blocks, model_context
from layerfilm.points.activations.probe import probe_ids, run_probe
from layerfilm.points.activations.spec import ActivationSpec, model_folder


@dataclass
class Frame:
    """One checkpoint's result: its ``problem``, or its statistics and points, either in a frame file
    (``file``, with ``top``: (L,) largest |value| per block) or, where the caller shares no folder
    with the worker, in memory (``points``: (L, N, D) float32)."""

    problem: CheckpointError | None = None
    stats: dict[str, np.ndarray] = field(default_factory=dict)
    in_norm: float = math.nan
    file: Path | None = None
    top: np.ndarray | None = None
    points: np.ndarray | None = None


@dataclass
class DevicePass:
    """What a pass returns (small): the blocks (L,), the tracked token positions ``picks`` (N,), the
    probe batch's (sequences, tokens), and a Frame per checkpoint index it ran. Under ``strict`` it
    stops at its first bad checkpoint (the caller raises for the first one in checkpoint order)."""

    blocks: list[int]
    picks: np.ndarray
    probe_shape: tuple[int, int]
    frames: dict[int, Frame]


def _nothing(n: int = 1) -> None:
    pass


def device_pass(series: Series, spec: ActivationSpec, indices: Sequence[int], device: torch.device,
                workdir: Path | None, strict: bool = False, progress: Callable[..., object] = _nothing) -> DevicePass:
    """Run checkpoints ``indices`` of ``series`` on ``device``; ``progress()`` once per checkpoint.
    ``workdir``: the folder this pass writes its frames in (None: they come back in memory)."""
    first = series.checkpoints[0]
    check_fits(series.checkpoints, spec, device)
    model = build_model(spec, first, device, series.checkpoints)
    blocks, modules = find_blocks(model, spec.blocks_regex)
    ids_np = probe_ids(spec, model_folder(first), model_context(model), embedding_rows(model))
    n = min(spec.points, ids_np.size)
    picks = np.sort(np.random.default_rng(spec.seed).choice(ids_np.size, n, replace=False))
    ids = torch.as_tensor(ids_np, device=device)
    store = FeatureStore(workdir) if workdir is not None else None
    frames: dict[int, Frame] = {}
    with WeightLoader(model, device) as loader:

        def stage(ckpt: Checkpoint) -> Staged | CheckpointError:
            try:
                with open_checkpoint(ckpt.path, ckpt.format) as reader:
                    return loader.stage(reader, local_path(ckpt.path))
            except CheckpointError as e:
                return e

        ahead = prefetch((stage(series.checkpoints[t]) for t in indices), depth=1)
        # closed in reverse order: the loader first, so that a stage waiting for the ring stops, then the prefetch
        with closing(ahead), closing(loader), torch.inference_mode():
            for t, staged in zip(indices, ahead):
                ckpt = series.checkpoints[t]
                try:
                    if isinstance(staged, CheckpointError):
                        raise staged
                    loader.apply(staged)
                except CheckpointError as e:
                    frames[t] = Frame(problem=e)
                    progress()
                    if strict:
                        break
                    continue
                try:
                    pts, stats, in_norm = run_probe(model, modules, ids, picks, spec.batch_size, spec.near_zero)
                except (RuntimeError, IndexError) as e:  # shape errors, CUDA out of memory: the user can act on them
                    raise CheckpointError(
                        f"{ckpt.path}: the forward pass on the probe failed ({type(e).__name__}: {str(e).splitlines()[0]}); "
                        f"check --model and --probe/--seq-len, or lower --batch-size {spec.batch_size}") from e
                finally:
                    loader.release()  # no file stays mapped after its probe
                if store is not None:
                    store.append(pts)
                    file, top = store.frame(len(store) - 1)
                    frames[t] = Frame(stats=stats, in_norm=in_norm, file=file, top=top)
                else:
                    frames[t] = Frame(stats=stats, in_norm=in_norm, points=pts)
                progress()
    return DevicePass(blocks, picks, (int(ids_np.shape[0]), int(ids_np.shape[1])), frames)
