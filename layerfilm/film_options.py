"""``FilmOptions``: everything a film needs besides its folder and output, checked when made. Built by
the options tree (layerfilm.config) from the command line or keywords; taken by every product
(layerfilm.film, layerfilm.study, layerfilm.reports, layerfilm.live)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from layerfilm.draw.film_layout import check_film_layout
from layerfilm.draw.raster import Style
from layerfilm.draw.timeline import check_time, check_time_mode
from layerfilm.errors import OptionsError, need
from layerfilm.io.storage import parse_storage_options
from layerfilm.parallel.engines import check_engine, check_jobs
from layerfilm.points.weights import WeightSpec
from layerfilm.projection import FITS, UmapOptions
from layerfilm.stability import check_settle_threshold
from layerfilm.video.encode import EncodeOptions

if TYPE_CHECKING:  # the activations module imports torch; only activation films need it
    from layerfilm.points.activations import ActivationSpec


@dataclass(frozen=True)
class FilmOptions:
    """Everything ``render`` needs besides the folder and the output path."""

    weights: WeightSpec = field(default_factory=WeightSpec)
    activations: ActivationSpec | None = None  # set: film block outputs on a probe batch instead of weights
    projection: str = "pca"
    fit: str = "all"  # pca only: key frames the basis is fitted on (all | first | last)
    umap: UmapOptions = field(default_factory=UmapOptions)  # umap only
    fps: float = 15.0
    seconds_per_keyframe: float = 1.0
    time: str = "auto"  # where key frames fall in the film: auto | keys | steps | log-steps (layerfilm.draw.timeline)
    legend: bool = True  # the key under the panels, the colour bar and the timeline (layerfilm.draw.legend)
    curves: bool = True  # the run's logged loss and learning rate under the timeline, when logged (layerfilm.draw.curves)
    style: Style = field(default_factory=Style)
    encode: EncodeOptions = field(default_factory=EncodeOptions)
    every: int = 1
    steps: tuple[int | None, int | None] = (None, None)
    final_step: int | None = None  # step of a final model saved at the folder's root
    strict: bool = False  # an unusable checkpoint is an error instead of a skip
    cache: bool = True  # keep projected key frames on disk (layerfilm.io.cache); a re-render skips the checkpoints
    cache_dir: str | None = None  # None: $LAYERFILM_CACHE or ~/.cache/layerfilm
    overlay: bool = True  # per-panel "still moving" bar and "settled" mark (layerfilm.draw.overlay)
    settle_threshold: float = 0.1  # see layerfilm.stability
    jobs: int = 0  # tasks at once (block chunks, film segments: layerfilm.video.segments); 0 = one per core
    engine: str = "local"  # where tasks run (layerfilm.parallel.engines): local processes, or dask
    address: str | None = None  # dask: the scheduler's address (None: a LocalCluster)
    storage_options: str | None = None  # a URL folder: fsspec options as a JSON object (layerfilm.io.storage)
    film_layout: str = "fit"  # axes, colour scale, legend, timeline: fit (the whole film) | live (layerfilm.draw.film_layout)
    bar: str = "motion"  # the per-panel bar: motion | update-ratio (layerfilm.draw.overlay, layerfilm.points.optimizer)

    def points_options(self) -> dict:
        """The options that change the points (the cache key): all but the look, encoding and cache."""
        options = {k: v for k, v in asdict(self).items() if k not in _NOT_POINTS}
        options["umap"].pop("jobs")  # umap's workers (the command's --jobs) never change a point either
        if options["activations"] is not None:  # where the probe runs never changes a point (as --jobs)
            options["activations"].pop("devices")
        return options

    def engine_options(self) -> dict:
        """Options of the engine beside ``jobs`` (layerfilm.parallel.engines.get_engine)."""
        return {"address": self.address} if self.address is not None else {}

    def __post_init__(self) -> None:
        check_jobs(self.jobs)
        check_engine(self.engine, self.address)
        parse_storage_options(self.storage_options)
        check_time(self.fps, self.seconds_per_keyframe)
        check_time_mode(self.time)
        check_settle_threshold(self.settle_threshold)
        check_film_layout(self.film_layout)
        if self.bar not in BARS:
            raise OptionsError(f"bar={self.bar!r}: choose one of {', '.join(BARS)}")
        if self.bar == "update-ratio" and (self.film_layout != "fit" or self.activations is not None):
            raise OptionsError("bar=update-ratio: a film of weights made at once (film_layout=fit)")
        if self.fit not in FITS:
            raise OptionsError(f"fit={self.fit!r}: choose one of {', '.join(FITS)}")
        if self.projection == "umap":
            need("umap", "umap", "projection=umap")
        if self.fit != "all" and self.projection != "pca":
            raise OptionsError(f"fit={self.fit} applies to projection=pca only, not {self.projection}")

    def projection_kwargs(self) -> dict:
        """Options of the chosen projection method, as ``project`` takes them."""
        by_method: dict[str, dict] = {"pca": {"fit": self.fit}, "umap": {"options": self.umap}}
        return by_method.get(self.projection, {})


# FilmOptions fields that never change the projected points (which checkpoints: the cache key lists them)
_NOT_POINTS = {"style", "encode", "fps", "seconds_per_keyframe", "time", "legend", "every", "steps", "cache", "cache_dir",
               "curves", "overlay", "settle_threshold", "jobs", "engine", "address", "storage_options", "film_layout",
               "bar"}
BARS = ("motion", "update-ratio")
