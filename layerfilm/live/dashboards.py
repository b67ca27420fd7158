"""The training's own dashboards (W&B, TensorBoard) fed by a live film (layerfilm.callbacks).

The live film's background process (layerfilm.live.film.follow) sends a :class:`Measured` after each
update: the new key frames' ``point_update`` per block, and at the end the film's stability rows (those
of ``--json``) and the film's path. The training process logs them, between its own steps, to:

  W&B          the current run (``wandb.run``, started by the Trainer's WandbCallback or Lightning's
               WandbLogger): scalars ``layerfilm/point_update/block_B`` against the trainer's step metric,
               and at the end ``layerfilm/film`` (``wandb.Video``) and ``layerfilm/stability`` (a
               ``wandb.Table``: one row per block and key frame).
  TensorBoard  its own event file in the trainer's log folder: scalars ``layerfilm/point_update/block_B``
               at each key frame's step, at the end ``layerfilm/point_distance/block_B`` (the distance to
               the last key frame), the film as an animated GIF (what ``add_video`` writes) under
               ``layerfilm/film`` and the blocks' statuses as text (``layerfilm/stability``).

A missing package is silently nothing; a dashboard that fails is one warning and is left alone from
then on: the dashboards never break training.
"""

from __future__ import annotations

import importlib.util
import math
import struct
import subprocess
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

VIDEO = (".webm", ".mp4", ".gif")  # what wandb.Video takes as a file (a PNG-frames folder is not logged)


@dataclass(frozen=True)
class Measured:
    """What the live film's process sends after an update (plain lists: it crosses a process queue)."""

    blocks: list[int]
    steps: list[int]  # the new key frames
    point_update: list[list[float]]  # per new key frame, per block (NaN: none, the first key frame)
    rows: list[dict] | None = None  # the last update: the film's per-block stability (stability_json's rows)
    film: str | None = None  # the last update: the film, when there is one


def finite(values: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in values.items() if v is not None and math.isfinite(v)}


def update_scalars(m: Measured, k: int) -> dict[str, float]:
    """The scalars of the k-th new key frame of ``m``."""
    return finite({f"layerfilm/point_update/block_{b}": v for b, v in zip(m.blocks, m.point_update[k])})


def table_rows(rows: list[dict]) -> tuple[list[Any], list[list]]:
    """The stability rows in long form, one per block and key frame: (columns, data)."""
    columns = ["block", "step", "point_update", "point_distance", "status", "settle_step"]
    return columns, [[r["block"], s, u, d, r["status"], r["settle_step"]]
                     for r in rows for s, u, d in zip(r["steps"], r["point_update"], r["point_distance"])]


class Wandb:
    """The current W&B run (none: nothing is logged); ``step_key`` is the trainer's step metric."""

    name = "W&B"

    def __init__(self, step_key: str) -> None:
        self.step_key = step_key

    def _log(self, values: dict[str, Any], step: int) -> None:
        import wandb

        if wandb.run is not None:
            wandb.run.log({**values, self.step_key: step})

    def scalars(self, values: dict[str, float], step: int) -> None:
        self._log(values, step)

    def final(self, rows: list[dict], film: str | None, step: int) -> None:
        import wandb

        columns, data = table_rows(rows)
        logged: dict[str, Any] = {"layerfilm/stability": wandb.Table(columns=columns, data=data)}
        if film is not None and Path(film).suffix in VIDEO:
            logged["layerfilm/film"] = wandb.Video(film, format=Path(film).suffix[1:])  # type: ignore[arg-type]
        self._log(logged, step)

    def close(self) -> None:
        pass


class TensorBoard:
    """An event file of its own in ``folder`` (beside the trainer's: TensorBoard reads them together)."""

    name = "TensorBoard"

    def __init__(self, folder: str | Path) -> None:
        self.folder = str(folder)
        self._writer: Any = None

    def _write(self, step: int, *values: Any) -> None:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        if self._writer is None:
            self._writer = EventFileWriter(self.folder)
        self._writer.add_event(Event(wall_time=time.time(), step=step, summary=Summary(value=list(values))))
        self._writer.flush()

    def scalars(self, values: dict[str, float], step: int) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary

        self._write(step, *(Summary.Value(tag=k, simple_value=v) for k, v in values.items()))

    def final(self, rows: list[dict], film: str | None, step: int) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
        from tensorboard.compat.proto.tensor_pb2 import TensorProto
        from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto

        for k, s in enumerate(rows[0]["steps"] if rows else []):
            self.scalars(finite({f"layerfilm/point_distance/block_{r['block']}": r["point_distance"][k] for r in rows}), s)
        text = "| block | status | settle step |\n|---|---|---|\n" + "".join(
            f"| {r['block']} | {r['status']} | {'' if r['settle_step'] is None else r['settle_step']} |\n" for r in rows)
        meta = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="text"))
        tensor = TensorProto(dtype="DT_STRING", string_val=[text.encode()],
                             tensor_shape=TensorShapeProto(dim=[TensorShapeProto.Dim(size=1)]))
        values = [Summary.Value(tag="layerfilm/stability", metadata=meta, tensor=tensor)]
        if film is not None and Path(film).suffix in VIDEO:
            gif = film_gif(Path(film))
            width, height = struct.unpack("<HH", gif[6:10])  # the GIF's logical screen size
            values.append(Summary.Value(tag="layerfilm/film", image=Summary.Image(
                height=height, width=width, colorspace=3, encoded_image_string=gif)))
        self._write(step, *values)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def film_gif(film: Path) -> bytes:
    """The film as an animated GIF (TensorBoard's images show those; a .gif film is taken as it is)."""
    if film.suffix == ".gif":
        return film.read_bytes()
    from layerfilm.video.encode import ffmpeg_exe

    graph = "split[a][b];[a]palettegen=stats_mode=full[p];[b][p]paletteuse=dither=none"
    return subprocess.run([ffmpeg_exe(), "-v", "error", "-i", str(film), "-lavfi", graph, "-loop", "0", "-f", "gif",
                           "pipe:1"], check=True, capture_output=True).stdout


def installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


class Dashboards:
    """The dashboards a live film is logged to; each that fails is one warning and then left alone."""

    def __init__(self, sinks: list[Any]) -> None:
        self.sinks = sinks

    def __bool__(self) -> bool:
        return bool(self.sinks)

    def _each(self, call: str, *args: Any) -> None:
        for sink in list(self.sinks):
            try:
                getattr(sink, call)(*args)
            except Exception as e:  # a dashboard's failure must never stop the training
                self.sinks.remove(sink)
                warnings.warn(f"layerfilm: logging to {sink.name} failed ({type(e).__name__}: {e}); the live film is "
                              f"no longer logged there", stacklevel=2)

    def log(self, m: Measured) -> None:
        for k, step in enumerate(m.steps):
            if values := update_scalars(m, k):
                self._each("scalars", values, step)
        if m.rows is not None and m.rows:
            self._each("final", m.rows, m.film, m.rows[0]["steps"][-1])

    def close(self) -> None:
        self._each("close")


def trainer_dashboards(report_to: list[str] | str | None, tensorboard_dir: str | Path) -> Dashboards:
    """The dashboards that a transformers Trainer's ``report_to`` names and that are installed."""
    names = [report_to] if isinstance(report_to, str) else list(report_to or [])
    on = {n for n in ("wandb", "tensorboard") if (n in names or "all" in names) and installed(n)}
    sinks: list[Any] = []
    if "wandb" in on:
        sinks.append(Wandb("train/global_step"))  # the step metric of the Trainer's WandbCallback
    if "tensorboard" in on:
        sinks.append(TensorBoard(tensorboard_dir))
    return Dashboards(sinks)


def lightning_dashboards(loggers: list[Any]) -> Dashboards:
    """The dashboards of a Lightning Trainer's loggers (WandbLogger, TensorBoardLogger)."""
    sinks: list[Any] = []
    for logger in loggers:
        kind = type(logger).__name__
        try:
            if kind == "WandbLogger" and installed("wandb"):
                logger.experiment  # noqa: B018  (starts the W&B run if the logger has not yet)
                sinks.append(Wandb("trainer/global_step"))
            elif kind == "TensorBoardLogger" and installed("tensorboard"):
                sinks.append(TensorBoard(logger.log_dir))
        except Exception as e:  # never stops the training
            warnings.warn(f"layerfilm: the live film is not logged to {kind} ({type(e).__name__}: {e})", stacklevel=2)
    return Dashboards(sinks)
