"""layerfilm: films and stills of how every layer of a neural network evolves while it learns."""

from .errors import LayerfilmError
from .film import FilmOptions, FilmResult, export_points, render, write_film
from .features.weights import WeightSpec, extract
from .project import Trajectories, project
from .project_umap import UmapOptions
from .render import Renderer, Style
from .scan import Checkpoint, Series, scan

__all__ = [
    "Checkpoint", "FilmOptions", "FilmResult", "LayerfilmError", "Renderer", "Series", "Style",
    "Trajectories", "UmapOptions", "WeightSpec", "export_points", "extract", "project", "render", "scan", "write_film",
]
__version__ = "0.1.0"
