"""On-disk checkpoint formats, one module each, registered by name.

A format is a class with
  ``detect(path) -> bool``    cheap test on a file or folder (names only, no reading);
  ``open(path) -> Reader``    a lazy context manager over the checkpoint's tensors.

A ``Reader`` exposes ``keys()``, ``shape(name)``, ``dtype(name)``, ``get(name) -> np.ndarray``
(float32, bf16/fp16 widened), ``files`` (the files holding the weights) and ``step`` (the training
step recorded inside the checkpoint, or None). Opening reads headers only (safetensors JSON header,
the pickle of a torch zip with its tensors memory-mapped); ``get`` reads one tensor. Later stages
never see torch. :func:`open_checkpoint` wraps the reader so that names come without the prefixes
wrappers add (``module.``, ``_orig_mod.``, a ``model.`` around the whole network).
"""

from layerfilm.io.formats import lightning_format, safetensors_format, sharded_format, torch_format  # noqa: F401 (register)
from layerfilm.io.formats.base import (
    COMPACT,
    FORMATS,
    HF_WEIGHT_FILE,
    READABLE_DTYPES,
    Format,
    NotExact,
    Reader,
    Renamed,
    cannot_read_dtype,
    check_finite,
    check_regular,
    detect_format,
    narrow,
    not_finite,
    open_checkpoint,
    unreadable,
    widen,
)

__all__ = ["COMPACT", "FORMATS", "HF_WEIGHT_FILE", "READABLE_DTYPES", "Format", "NotExact", "Reader", "Renamed",
           "cannot_read_dtype", "check_finite", "check_regular", "detect_format", "narrow", "not_finite", "open_checkpoint",
           "unreadable", "widen"]
