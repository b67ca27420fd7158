"""The activation pass: every checkpoint's block outputs on the probe batch, and their statistics.

Checkpoint-major (a forward pass needs the whole model). On one device the pass runs in this process
(layerfilm.points.activations.passes); on several (``spec.devices``, or every visible GPU), the
checkpoints are spread over one long-lived worker per device (layerfilm.points.activations.devices).
Either way the frames are put together here in checkpoint order, and a checkpoint that cannot be read
or does not fit the model is skipped by the weights' one rule (layerfilm.points.weights.skip): one
warning line, listed at the end, an error under ``strict``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from layerfilm.errors import ScanError
from layerfilm.io.scan import Series
from layerfilm.points import Features, FeatureStore, Subject
from layerfilm.points.act_stats import ActivationStats
from layerfilm.points.activations.devices import spread, worker_devices
from layerfilm.points.activations.passes import DevicePass, device_pass
from layerfilm.points.activations.spec import ActivationSpec
from layerfilm.points.weights import skip


def extract(series: Series, spec: ActivationSpec, workdir: Path, progress: bool = True, strict: bool = False,
            device: torch.device | None = None, engine: str = "local", address: str | None = None) -> Features:
    """Forward the probe batch through every checkpoint; keep each block's outputs at the tracked tokens.

    Returns ``Features`` whose store holds (L, N, D) per key frame (N tokens, D hidden units), whose
    ``stats`` hold the ``act_*`` arrays of :class:`ActivationStats`, and whose ``skipped`` lists the
    checkpoints that could not be loaded (with ``strict``, the first is an error). ``device``: run on
    this one device, in this process; default: ``spec.devices`` (or every visible GPU), one worker per
    device on the engine ``engine`` (local processes, or dask at ``address``) when there are several.
    The result does not depend on how many devices ran it.
    """
    workdir = Path(workdir)
    devices = [device] if device is not None else worker_devices(spec, remote=engine == "dask" and address is not None)
    if len(devices) == 1:
        with tqdm(total=len(series), desc="activations", unit="ckpt", disable=not progress) as bar:
            passes = [device_pass(series, spec, range(len(series)), devices[0], workdir / "device-0", strict, bar.update)]
    else:
        passes = spread(series, spec, devices, workdir, progress, strict, engine, address)
    return gather(series, spec, passes, workdir / "frames", strict)


def gather(series: Series, spec: ActivationSpec, passes: list[DevicePass], workdir: Path, strict: bool = False) -> Features:
    """The passes' frames in checkpoint order: the skipped ones by the one rule (the first under
    ``strict`` raises, as in a one-device run), the others into one FeatureStore and ActivationStats."""
    frames = {t: f for p in passes for t, f in p.frames.items()}
    store = FeatureStore(workdir)
    steps, per_step, in_norms, skipped = [], [], [], []
    for t in sorted(frames):
        ckpt, frame = series.checkpoints[t], frames[t]
        if frame.problem is not None:
            skipped.append(skip(ckpt, frame.problem, strict))
            continue
        if frame.file is not None:
            assert frame.top is not None
            store.add(frame.file, frame.top)
        else:
            assert frame.points is not None
            store.append(frame.points)
        steps.append(ckpt.step)
        per_step.append(frame.stats)
        in_norms.append(frame.in_norm)
    if skipped and len(steps) < 2:
        raise ScanError(f"{series.root}: {len(steps)} readable checkpoint(s); a film needs at least two key frames")
    first = passes[0]
    act = ActivationStats.stack(steps, first.blocks, per_step, in_norms, spec.near_zero)
    n, (rows, cols) = len(first.picks), first.probe_shape
    return Features(
        steps=np.asarray(steps, np.int64),
        blocks=np.asarray(first.blocks, np.int64),
        point_ids=np.tile(first.picks.astype(np.int64), (len(first.blocks), 1)),
        name=f"block outputs ({n} probe tokens of {rows}x{cols})",
        store=store,
        skipped=tuple(skipped),
        stats=act.arrays(),
        subject=Subject("block outputs", "activations", n, rows * cols, "probe tokens"),
    )
