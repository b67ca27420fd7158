"""layerfilm: films and stills of how every layer of a neural network evolves while it learns.

The public API is the names below (``__all__``): the products (render, stills, report, measure, watch),
the one reader (Study), the scan, the estimator for your own arrays (AlignedProjection), the option
classes and the one error base. Everything else is reached through its module (layerfilm.reports.figures,
layerfilm.points.act_stats, ...); the names earlier versions exported here still resolve, on first use.
"""

from layerfilm.compare import compare, render_runs
from layerfilm.draw.raster import Style
from layerfilm.errors import LayerfilmError
from layerfilm.film import render
from layerfilm.film_options import FilmOptions, StabilityOptions
from layerfilm.io.scan import scan
from layerfilm.live.film import LiveOptions, watch
from layerfilm.points.weights import WeightSpec
from layerfilm.projection.estimator import AlignedProjection
from layerfilm.reports.document import report, stills
from layerfilm.study import Study, measure

__all__ = ["ActivationSpec", "AlignedProjection", "FilmOptions", "LayerfilmError", "LiveOptions", "StabilityOptions",
           "Study", "Style", "WeightSpec", "compare", "measure", "render", "render_runs", "report", "scan", "stills", "watch"]
__version__ = "0.1.0"

# names of earlier versions, and the rest of the library's types and figures: imported on first use
_ELSEWHERE = {
    "ActivationSpec": "layerfilm.points.activations",  # needs torch
    "ActivationStats": "layerfilm.points.act_stats",
    "Checkpoint": "layerfilm.io.scan", "Series": "layerfilm.io.scan",
    "CheckpointError": "layerfilm.errors", "EncodeError": "layerfilm.errors", "LayerError": "layerfilm.errors",
    "OptionsError": "layerfilm.errors", "OutputError": "layerfilm.errors", "ScanError": "layerfilm.errors",
    "EncodeOptions": "layerfilm.video.encode",
    **{name: "layerfilm.film_options" for name in ("StudyOptions", "StillsOptions", "ViewOptions")},  # FilmOptions' bases
    "FilmResult": "layerfilm.film", "export_points": "layerfilm.film", "write_film": "layerfilm.film",
    "LiveFilm": "layerfilm.live.film",
    "Renderer": "layerfilm.draw.raster",
    "Report": "layerfilm.reports.document", "Stills": "layerfilm.reports.media",
    "Run": "layerfilm.study",
    "Stability": "layerfilm.stability",
    "Trajectories": "layerfilm.projection", "UmapOptions": "layerfilm.projection", "project": "layerfilm.projection",
    "extract": "layerfilm.points.weights",
    **{name: "layerfilm.reports.figures" for name in (
        "activation_hot_figure", "activation_near_zero_figure", "activation_norm_figure", "heatmap_figure", "hot_figure",
        "norm_figure", "save_figure", "settling_figure", "stills_figure")},
}


def __getattr__(name: str):
    if name in _ELSEWHERE:
        import importlib

        return getattr(importlib.import_module(_ELSEWHERE[name]), name)
    raise AttributeError(f"module 'layerfilm' has no attribute {name!r}")
