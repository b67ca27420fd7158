"""The activation pass: build the model once, then for every checkpoint load its weights and forward
the probe batch, keeping each block's outputs at the tracked tokens and its statistics.

Checkpoint-major (a forward pass needs the whole model). The next checkpoint is staged (checked, and its
first bytes read into host memory) in a background thread while the current one runs the probe. A checkpoint that
cannot be read or does not fit the model is skipped by the weights' one rule
(layerfilm.features.weights.skip): one warning line, listed at the end, an error under ``strict``.
"""

from __future__ import annotations

from contextlib import closing
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ...errors import CheckpointError, ScanError
from ...formats import open_checkpoint
from ...pipeline import prefetch
from ...scan import Checkpoint, Series
from ...storage import local_path
from .. import Features, FeatureStore, Subject
from ..act_stats import ActivationStats
from ..weights import skip
from .loader import Staged, WeightLoader
from .model import build_model, check_fits, embedding_rows, find_blocks, model_context
from .probe import probe_ids, run_probe
from .spec import ActivationSpec, model_folder, resolve_device


def extract(series: Series, spec: ActivationSpec, workdir: Path, progress: bool = True, strict: bool = False,
            device: torch.device | None = None) -> Features:
    """Forward the probe batch through every checkpoint; keep each block's outputs at the tracked tokens.

    Returns ``Features`` whose store holds (L, N, D) per key frame (N tokens, D hidden units), whose
    ``stats`` hold the ``act_*`` arrays of :class:`ActivationStats`, and whose ``skipped`` lists the
    checkpoints that could not be loaded (with ``strict``, the first is an error). ``device``: where
    the model runs (default: ``spec.device`` resolved), so a worker per GPU passes its own.
    """
    device = device if device is not None else resolve_device(spec.device)
    first = series.checkpoints[0]
    check_fits(series.checkpoints, spec, device)
    model = build_model(spec, first, device)
    blocks, modules = find_blocks(model, spec.blocks_regex)
    ids_np = probe_ids(spec, model_folder(first), model_context(model), embedding_rows(model))
    n = min(spec.points, ids_np.size)
    picks = np.sort(np.random.default_rng(spec.seed).choice(ids_np.size, n, replace=False))
    ids = torch.as_tensor(ids_np, device=device)
    store = FeatureStore(workdir)
    steps, per_step, in_norms, skipped = [], [], [], []
    with WeightLoader(model, device) as loader:

        def stage(ckpt: Checkpoint) -> Staged | CheckpointError:
            try:
                with open_checkpoint(ckpt.path, ckpt.format) as reader:
                    return loader.stage(reader, local_path(ckpt.path))
            except CheckpointError as e:
                return e

        ahead = prefetch((stage(c) for c in series.checkpoints), depth=1)
        # closed in reverse order: the loader first, so that a stage waiting for the ring stops, then the prefetch
        with closing(ahead), closing(loader), torch.inference_mode():
            for ckpt, staged in zip(tqdm(series.checkpoints, desc="activations", unit="ckpt", disable=not progress), ahead):
                try:
                    if isinstance(staged, CheckpointError):
                        raise staged
                    loader.apply(staged)
                except CheckpointError as e:
                    skipped.append(skip(ckpt, e, strict))
                    continue
                try:
                    pts, stats, in_norm = run_probe(model, modules, ids, picks, spec.batch_size, spec.near_zero)
                except (RuntimeError, IndexError) as e:  # shape errors, CUDA out of memory: the user can act on them
                    raise CheckpointError(
                        f"{ckpt.path}: the forward pass on the probe failed ({type(e).__name__}: {str(e).splitlines()[0]}); "
                        f"check --model and --probe/--seq-len, or lower --batch-size {spec.batch_size}") from e
                finally:
                    loader.release()  # no file stays mapped after its probe
                store.append(pts)
                steps.append(ckpt.step)
                per_step.append(stats)
                in_norms.append(in_norm)
    if skipped and len(steps) < 2:
        raise ScanError(f"{series.root}: {len(steps)} readable checkpoint(s); a film needs at least two key frames")
    act = ActivationStats.stack(steps, blocks, per_step, in_norms, spec.near_zero)
    return Features(
        steps=np.asarray(steps, np.int64),
        blocks=np.asarray(blocks, np.int64),
        point_ids=np.tile(picks.astype(np.int64), (len(blocks), 1)),
        name=f"block outputs ({n} probe tokens of {ids_np.shape[0]}x{ids_np.shape[1]})",
        store=store,
        skipped=tuple(skipped),
        stats=act.arrays(),
        subject=Subject("block outputs", "activations", n, ids_np.size, "probe tokens"),
    )
