"""Training-loop callbacks that keep a live film (layerfilm.live.film) of the run while it trains.

    trainer = transformers.Trainer(..., callbacks=[LayerfilmCallback(out="film.webm", points=256)])
    trainer = lightning.Trainer(..., callbacks=[LayerfilmLightningCallback(out="film.webm")])

Both take ``out=`` and the options of ``layerfilm watch`` (render's, with ``refit``, ``stills``, ``json``,
``export_points``) as keyword arguments by their names in the options tree (layerfilm.config), with
the API's types (``overlay=False``, ``size=(320, 180)``), checked when the callback is made, before
training starts; ``wait=True`` makes ``train()`` wait for the film. They run only on the main process
(rank 0). After each save they hand the new checkpoint's path to a background process (spawned at the first
save, at low priority, never re-running the training script) that reads it once, rewrites the film and
prints one line per update: the training process only puts a path on a queue. ``train()`` / ``fit()``
returns without waiting for the film's last update; the process finishes it before Python exits, or
when asked with ``wait=True`` (the film is then complete when ``train()`` returns).

The film and its stability measures also go to the training's dashboards (layerfilm.live.dashboards):
W&B and TensorBoard, when the Trainer's ``report_to`` names them (Lightning: a WandbLogger or
TensorBoardLogger) and they are installed. The background process sends each update's measures back;
the training process logs them at its next log or save, and the film at the end (``wait=True``: before
``train()`` returns; else when the background process ends, before Python exits).

transformers and lightning are imported only when their callback is (module ``__getattr__``).
"""

from __future__ import annotations

import atexit
import os
import queue
import sys
import warnings
from pathlib import Path
from typing import Any

from layerfilm.live.dashboards import Dashboards
from layerfilm.parallel.processes import context


class LiveFollower:
    """The framework-free part: options checked at once, a background process fed checkpoint paths."""

    def __init__(self, out: str | Path, folder: str | Path | None = None, wait: bool = False, **options: Any) -> None:
        from layerfilm.config import options as command_options
        from layerfilm.live.film import check_live, check_outputs

        self.out, self.folder, self.wait = str(out), folder, wait
        self.opts, self.live = command_options("watch", {"quiet": True, **options})
        check_outputs(folder, self.out, check_live(self.opts, self.live), self.live)  # fails now, not in the background
        self._queue: Any = None
        self._proc: Any = None
        self._ended = False  # the queue's last item (None) was sent
        self.dashboards = Dashboards([])  # set by the framework's callback when training begins
        self._results: Any = None  # the measures the background process sends back (dashboards only)

    def declare(self, folder: str | Path, paths: list[Path]) -> None:
        """``paths`` in ``folder`` are complete checkpoints: film them (in the background)."""
        if self._ended:  # a second training with the same callback: a new process for it
            self.finish()
        if self._proc is None:
            ctx = context()  # no fork of a training process (threads, CUDA), no re-run of its script
            self._queue, self._ended = ctx.Queue(), False
            self._results = ctx.Queue() if self.dashboards else None
            from layerfilm.live.film import follow

            self._proc = ctx.Process(target=follow, args=(str(self.folder or folder), self.out, self.opts, self.live,
                                                          self._queue, self._results), name="layerfilm-live")
            self._proc.start()
            atexit.register(self.finish)  # a training that dies still leaves the film of what was read
        self._queue.put([str(p) for p in paths])

    def end(self) -> None:
        """The training ended: the film's last update is asked for, and waited for only with ``wait=True``
        (else the background process finishes it while the script goes on, and before Python exits)."""
        if self._proc is None:
            return
        self._end()
        if self.wait:
            self.finish()
        else:
            print("layerfilm: the film's last update goes on in the background", file=sys.stderr, flush=True)

    def _end(self) -> None:
        if not self._ended:
            self._queue.put(None)
            self._ended = True

    def post(self, timeout: float = 0) -> None:
        """Log the measures the background process has sent so far to the dashboards (waits up to ``timeout``
        seconds for the first)."""
        while self._results is not None:
            try:
                got = self._results.get(timeout=timeout) if timeout else self._results.get_nowait()
            except (queue.Empty, OSError, ValueError):  # nothing yet; a queue gone with its process
                return
            self.dashboards.log(got)

    def finish(self) -> None:
        """Wait for the last update (the film is complete when this returns), logging its measures."""
        if self._proc is None:
            return
        self._end()
        while self._results is not None and self._proc.is_alive():  # read while it runs: a full pipe would block it
            self.post(timeout=0.2)
        self._proc.join()
        self.post()
        self.dashboards.close()
        if self._proc.exitcode:
            warnings.warn(f"layerfilm: the live film's process ended with exit code {self._proc.exitcode}", stacklevel=2)
        self._proc = None
        atexit.unregister(self.finish)


def _trainer_callback() -> type:
    from transformers import TrainerCallback

    from layerfilm.live.dashboards import trainer_dashboards

    class LayerfilmCallback(LiveFollower, TrainerCallback):
        """``transformers.Trainer`` callback: each ``checkpoint-N/`` saved is added to the film ``out``."""

        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero and self._proc is None:
                self.dashboards = trainer_dashboards(args.report_to, tensorboard_folder(args))

        def on_save(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                self.declare(args.output_dir, [Path(args.output_dir) / f"checkpoint-{state.global_step}"])
                self.post()

        def on_log(self, args, state, control, **kwargs):
            self.post()

        def on_train_end(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                self.end()

    return LayerfilmCallback


def tensorboard_folder(args: Any) -> str:
    """Where the live film's TensorBoard events go: the Trainer's TensorBoard folder when it is known
    (``TENSORBOARD_LOGGING_DIR``, or ``logging_dir`` before transformers 5), else ``runs/layerfilm`` in
    ``output_dir`` (beside the Trainer's time-stamped run)."""
    return (os.environ.get("TENSORBOARD_LOGGING_DIR") or getattr(args, "logging_dir", None)
            or str(Path(args.output_dir) / "runs" / "layerfilm"))


def _lightning_callback() -> type:
    try:
        from lightning.pytorch.callbacks import Callback
    except ImportError:  # the older package name
        from pytorch_lightning.callbacks import Callback  # type: ignore[assignment]

    from layerfilm.live.dashboards import lightning_dashboards

    class LayerfilmLightningCallback(LiveFollower, Callback):
        """Lightning callback: each checkpoint the Trainer saves (ModelCheckpoint's ``dirpath``, or
        ``folder=``) is added to the film ``out``. Lightning calls ``on_save_checkpoint`` before it writes
        the file, so the file is handed over at the next batch (or at the end of training), once written."""

        _pending = False

        def on_save_checkpoint(self, trainer, pl_module, checkpoint):
            self._pending = True

        def _hand_over(self, trainer) -> None:
            if not (self._pending and trainer.is_global_zero):
                return
            self._pending = False
            folder = self.folder or getattr(trainer.checkpoint_callback, "dirpath", None)
            if folder is None:
                warnings.warn("layerfilm: no checkpoint folder (give folder=...)", stacklevel=2)
                return
            self.declare(folder, sorted(p for p in Path(folder).iterdir() if not p.name.startswith(".")))

        def on_train_start(self, trainer, pl_module):
            if trainer.is_global_zero and self._proc is None:
                self.dashboards = lightning_dashboards(trainer.loggers)

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self._hand_over(trainer)
            self.post()

        def on_train_end(self, trainer, pl_module):
            self._hand_over(trainer)
            if trainer.is_global_zero:
                self.end()

    return LayerfilmLightningCallback


_MADE: dict[str, type] = {}
_MAKERS = {"LayerfilmCallback": _trainer_callback, "LayerfilmLightningCallback": _lightning_callback}


def __getattr__(name: str) -> type:
    if name not in _MAKERS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if name not in _MADE:
        _MADE[name] = _MAKERS[name]()
        _MADE[name].__module__ = __name__
    return _MADE[name]
