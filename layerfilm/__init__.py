"""layerfilm: films and stills of how every layer of a neural network evolves while it learns."""

from layerfilm.draw.raster import Renderer, Style
from layerfilm.errors import CheckpointError, EncodeError, LayerError, LayerfilmError, OptionsError, OutputError, ScanError
from layerfilm.film import FilmResult, export_points, render, write_film
from layerfilm.film_options import FilmOptions
from layerfilm.io.scan import Checkpoint, Series, scan
from layerfilm.live.film import LiveFilm, LiveOptions, watch
from layerfilm.points.act_stats import ActivationStats
from layerfilm.points.weights import WeightSpec, extract
from layerfilm.projection import Trajectories, UmapOptions, project
from layerfilm.projection.estimator import AlignedProjection
from layerfilm.report.document import Report, Stills, report, stills
from layerfilm.report.figures import (
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
from layerfilm.stability import Stability, StabilityOptions
from layerfilm.study import Run, measure
from layerfilm.video.encode import EncodeOptions

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
        from layerfilm.points.activations import ActivationSpec

        return ActivationSpec
    raise AttributeError(f"module 'layerfilm' has no attribute {name!r}")
