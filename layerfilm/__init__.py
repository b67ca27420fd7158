"""layerfilm: films and stills of how every layer of a neural network evolves while it learns."""

from .encode import EncodeOptions
from .errors import CheckpointError, EncodeError, LayerError, LayerfilmError, OptionsError, OutputError, ScanError
from .features.act_stats import ActivationStats
from .features.weights import WeightSpec, extract
from .figures import (
    activation_hot_figure,
    activation_near_zero_figure,
    activation_norm_figure,
    heatmap_figure,
    hot_figure,
    norm_figure,
    save_figure,
    settling_figure,
    stills_figure,
)
from .film import FilmOptions, FilmResult, export_points, render, write_film
from .live import LiveFilm, LiveOptions, watch
from .projection import Trajectories, UmapOptions, project
from .projection.estimator import AlignedProjection
from .raster import Renderer, Style
from .report import Report, Stills, report, stills
from .run import Run
from .scan import Checkpoint, Series, scan
from .stability import Stability, StabilityOptions, measure

__all__ = [
    "AlignedProjection", "ActivationSpec", "ActivationStats",
    "CheckpointError", "EncodeError", "EncodeOptions", "LayerError", "OptionsError", "OutputError", "Run",
    "ScanError", "Checkpoint", "FilmOptions", "FilmResult", "LayerfilmError", "Renderer", "Series", "Style",
    "Trajectories", "UmapOptions", "WeightSpec", "export_points", "extract", "project", "render", "scan", "write_film",
    "Report", "Stability", "StabilityOptions", "Stills", "heatmap_figure", "hot_figure", "measure", "norm_figure",
    "report", "save_figure", "settling_figure", "stills", "stills_figure",
    "activation_hot_figure", "activation_near_zero_figure", "activation_norm_figure",
    "LiveFilm", "LiveOptions", "watch",
]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "ActivationSpec":  # imported on first use: the activations module needs torch
        from .features.activations import ActivationSpec

        return ActivationSpec
    raise AttributeError(f"module 'layerfilm' has no attribute {name!r}")
