"""layerfilm: films and stills of how every layer of a neural network evolves while it learns."""

from .errors import LayerfilmError
from .features.act_stats import ActivationStats
from .film import FilmOptions, FilmResult, export_points, render, write_film
from .features.weights import WeightSpec, extract
from .project import Trajectories, project
from .render import Renderer, Style
from .scan import Checkpoint, Series, scan

__all__ = [
    "ActivationSpec", "ActivationStats", "Checkpoint", "FilmOptions", "FilmResult", "LayerfilmError", "Renderer", "Series", "Style",
    "Trajectories", "WeightSpec", "export_points", "extract", "project", "render", "scan", "write_film",
]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "ActivationSpec":  # imported on first use: the activations module needs torch
        from .features.activations import ActivationSpec

        return ActivationSpec
    raise AttributeError(f"module 'layerfilm' has no attribute {name!r}")
