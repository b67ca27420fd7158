"""Several devices of one host: one long-lived worker per device, the checkpoints spread over them.

Each worker is one task of the engine (layerfilm.parallel.engines: a spawned local process per device, or a Dask
worker holding a ``GPU`` resource): it builds the model once on its device and runs
:func:`~layerfilm.points.activations.passes.device_pass` over its share of the checkpoints (round
robin: worker i takes checkpoints i, i + D, ...), streaming each one's weights into the model in
place and reading the next while the probe runs, exactly as a one-device run does. Each checkpoint
reports progress as it is done; what comes back is small (statistics, and the name of each frame's
file in the run's scratch folder, or the frames themselves from a remote Dask worker) and is put
together in checkpoint order by ``extract``. No tensor crosses between devices: no NCCL, no
peer-to-peer copies, nothing set that enables NVLink multicast.

Same bits as one device: every worker builds the same model in the same dtype from the same first
checkpoint and runs the same probe with the same kernels, so on the CPU the results are identical
(tested), provided each CPU worker uses as many torch threads as the one-device run (torch splits
reductions by thread count), so CPU workers standing in for devices share the cores: they show that
the results do not change, not a speed-up. On GPUs they are identical when the devices are the same model with the same driver and
libraries; different GPU models (or cuBLAS choosing another algorithm for a shape, e.g. under other
free memory or workspace settings) may differ in the last bits of the activations, as two runs on two
such GPUs would.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from tqdm.auto import tqdm

from layerfilm.errors import OptionsError
from layerfilm.io.scan import Series
from layerfilm.parallel.engines import get_engine
from layerfilm.points.activations.passes import DevicePass, device_pass
from layerfilm.points.activations.spec import ActivationSpec, resolve_device


def worker_devices(spec: ActivationSpec, remote: bool = False) -> list[torch.device]:
    """The devices the pass runs on, one worker each: ``spec.devices``; else with a CUDA device and
    several visible GPUs, all of them; else the one device. ``remote`` (a Dask cluster at an address):
    ``spec.devices`` only counts the workers, each using its own GPU (``cuda``: the one its
    CUDA_VISIBLE_DEVICES shows) or CPU, and nothing is asked of this machine's devices."""
    given = spec.devices
    if remote and not given:  # the pass stays in this process, as on one device
        return [resolve_device(spec.device)]
    if given and remote:
        return [torch.device(d.partition(":")[0]) for d in given]
    if given and given[0] != "cpu":
        if not torch.cuda.is_available():
            raise OptionsError(f"devices={','.join(given)}: no CUDA device is available to torch "
                               "(CPU workers: device=cpu devices=cpu,cpu)")
        count = torch.cuda.device_count()
        missing = [d for d in given if int(d.partition(":")[2]) >= count]
        if missing:
            raise OptionsError(f"devices={','.join(given)}: {missing[0]} is not visible ({count} CUDA device(s))")
    if given:
        return [torch.device(d) for d in given]
    device = resolve_device(spec.device)
    if device.type == "cuda" and device.index is None and torch.cuda.device_count() > 1:
        return [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    return [device]


def shares(checkpoints: int, workers: int) -> list[tuple[int, ...]]:
    """Checkpoint indices per worker, round robin (a skipped or slow stretch of the series is shared);
    a worker with none is not started."""
    return [s for s in (tuple(range(i, checkpoints, workers)) for i in range(workers)) if s]


def device_task(series: Series, spec: ActivationSpec, indices: tuple[int, ...], device: str, workdir: str | None,
                strict: bool, threads: int, progress: Callable[..., object]) -> DevicePass:
    """One worker (a task of the engine): its device's pass over ``indices``. ``threads``: torch's CPU
    threads for a CPU worker, those of the one-device run it stands in for (0: leave them)."""
    dev = torch.device(device)
    if threads:
        torch.set_num_threads(threads)
    if dev.type == "cuda" and dev.index is not None:
        torch.cuda.set_device(dev)  # this process's kernels and pinned buffers belong to its own GPU
    return device_pass(series, spec, indices, dev, Path(workdir) if workdir is not None else None, strict, progress)


def spread(series: Series, spec: ActivationSpec, devices: list[torch.device], workdir: Path, progress: bool = True,
           strict: bool = False, engine: str = "local", address: str | None = None) -> list[DevicePass]:
    """Run the pass with one long-lived worker per device of ``devices`` on ``engine`` (local: a spawned
    process each; dask: a worker each, holding a ``GPU`` resource when the devices are GPUs), and return
    the workers' results. Frames are written under ``workdir`` (one folder per worker), except from
    a remote cluster, whose workers send them back."""
    remote = engine == "dask" and address is not None
    work = shares(len(series), len(devices))
    # a CPU worker uses this process's torch threads: torch splits reductions by thread count, and another
    # count changes the last bits of the statistics (measured: act_mean, act_std of a Llama probe batch)
    cpu_threads = torch.get_num_threads() if devices[0].type == "cpu" and not remote else 0
    args = [(series, spec, share, str(dev), None if remote else str(workdir / f"device-{i}"), strict, cpu_threads)
            for i, (dev, share) in enumerate(zip(devices, work))]
    runner = get_engine(engine, len(work), **({"address": address} if address is not None else {}))
    resources: dict[str, float] | None = {"GPU": 1} if devices[0].type == "cuda" else None
    with tqdm(total=len(series), desc=f"activations on {len(work)} {devices[0].type} workers", unit="ckpt",
              disable=not progress) as bar:
        return runner.map(device_task, args, bar.update, resources=resources)
