"""PyTorch Lightning ``.ckpt``: a torch pickle with ``state_dict`` (names prefixed by the
LightningModule's attribute, e.g. ``model.``) and ``global_step``. Read like any torch pickle;
the name ``epoch=0-step=150.ckpt`` holds the epoch before the step (the scan takes ``step=``)."""

from __future__ import annotations

from layerfilm.io.formats.base import FORMATS
from layerfilm.io.formats.torch_format import TorchReader
from layerfilm.io.storage import AnyPath


@FORMATS.register("lightning")
class LightningFormat:
    name = "lightning"

    @staticmethod
    def detect(path: AnyPath) -> bool:
        return path.suffix == ".ckpt" and not path.is_dir()

    @staticmethod
    def open(path: AnyPath) -> TorchReader:
        return TorchReader(path)
