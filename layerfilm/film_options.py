"""The option classes of the products: each command's options object holds only what it uses.

Frozen dataclasses, each a narrowing of the next, checked when made (each class checks the fields it
adds, in ``__post_init__``); built by the options tree (layerfilm.config) from the command line or
keywords, or by hand:

  StudyOptions   what reads, selects and projects the checkpoints and runs the work: what a Study
                 (layerfilm.study) reads. ``stability`` and ``compare``.
  StillsOptions  + the look of a picture (style, legend, curves). ``stills`` and ``report``.
  ViewOptions    + the film's time and overlay (fps, time, film_layout, overlay, bar): the film as drawn,
                 frame by frame. ``view`` and ``serve``: they draw every frame but never encode one, so they
                 get no encoder fields (a FilmOptions would carry crf, threads and preset they never read).
  FilmOptions    + the encoder (encode). ``render`` and ``watch``.

A function takes the narrowest class it needs (mypy then proves that stills and stability never reach an
encoder field); a wider object is one of the narrower ones, so a FilmOptions goes anywhere. A still or a
report shows the film's own frames too: it draws them with the film's default time and overlay
(:meth:`ViewOptions.of`), which their commands do not set.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING

from layerfilm.draw.film_layout import check_film_layout
from layerfilm.draw.raster import Style
from layerfilm.draw.timeline import check_time, check_time_mode
from layerfilm.errors import OptionsError, need
from layerfilm.io.storage import parse_storage_options
from layerfilm.parallel.engines import check_engine, check_jobs
from layerfilm.points.weights import WeightSpec
from layerfilm.points.whole import HIST_BINS
from layerfilm.projection import FITS, UmapOptions
from layerfilm.stability import check_settle_threshold
from layerfilm.video.encode import EncodeOptions

if TYPE_CHECKING:  # the activations module imports torch; only activation films need it
    from layerfilm.points.activations import ActivationSpec


@dataclass(frozen=True)
class StudyOptions:
    """Which checkpoints, which points, their projection, and where the work runs (layerfilm.study.Study)."""

    weights: WeightSpec = field(default_factory=WeightSpec)
    activations: ActivationSpec | None = None  # set: block outputs on a probe batch instead of weights
    projection: str = "pca"
    fit: str = "all"  # pca only: key frames the basis is fitted on (all | first | last)
    umap: UmapOptions = field(default_factory=UmapOptions)  # umap only
    every: int = 1
    steps: tuple[int | None, int | None] = (None, None)
    final_step: int | None = None  # step of a final model saved at the folder's root
    strict: bool = False  # an unusable checkpoint is an error instead of a skip
    cache: bool = True  # keep projected key frames on disk (layerfilm.io.cache); a re-render skips the checkpoints
    cache_dir: str | None = None  # None: $LAYERFILM_CACHE or ~/.cache/layerfilm
    settle_threshold: float = 0.1  # when a block has settled (layerfilm.stability; the film's overlay too)
    jobs: int = 0  # tasks at once (block chunks, film segments: layerfilm.video.segments); 0 = one per core
    engine: str = "local"  # where tasks run (layerfilm.parallel.engines): local processes, or dask
    address: str | None = None  # dask: the scheduler's address (None: a LocalCluster)
    storage_options: str | None = None  # a URL folder: fsspec options as a JSON object (layerfilm.io.storage)
    # cuda[:N]: the weights' whole-block measures run on that GPU (layerfilm.points.whole.DeviceBlockStats);
    # anything else: on the CPU. (Activations: where the probe runs, ActivationSpec.device.)
    device: str = "auto"

    def __post_init__(self) -> None:
        check_jobs(self.jobs)
        check_engine(self.engine, self.address)
        parse_storage_options(self.storage_options)
        check_settle_threshold(self.settle_threshold)
        if self.fit not in FITS:
            raise OptionsError(f"fit={self.fit!r}: choose one of {', '.join(FITS)}")
        if self.projection == "umap":
            need("umap", "umap", "projection=umap")
        if self.fit != "all" and self.projection != "pca":
            raise OptionsError(f"fit={self.fit} applies to projection=pca only, not {self.projection}")

    def points_options(self) -> dict:
        """The options that change the points (the cache key), the same for every class of the same values."""
        every = asdict(self)
        options = {k: every[k] for k in POINTS}
        options["umap"].pop("jobs")  # umap's workers (the command's --jobs) never change a point either
        if options["activations"] is not None:  # where the probe runs never changes a point (as --jobs)
            options["activations"].pop("devices")
        return options

    def engine_options(self) -> dict:
        """Options of the engine beside ``jobs`` (layerfilm.parallel.engines.get_engine)."""
        return {"address": self.address} if self.address is not None else {}

    def projection_kwargs(self) -> dict:
        """Options of the chosen projection method, as ``project`` takes them."""
        by_method: dict[str, dict] = {"pca": {"fit": self.fit}, "umap": {"options": self.umap}}
        return by_method.get(self.projection, {})


@dataclass(frozen=True)
class StabilityOptions(StudyOptions):
    """What :func:`layerfilm.measure` takes: a study's options (``settle_threshold``: when a block has settled,
    layerfilm.stability; ``weights``: the points that feed the CKA and the on-screen motion; ``projection``:
    the one the motion is measured in; ``activations``: also each block's output statistics on that probe
    batch) + ``bins``, the value bins of the per-block histograms over time. Nothing is cached by default."""

    cache: bool = False
    bins: int = HIST_BINS

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.bins < 2:
            raise OptionsError(f"bins={self.bins}: need at least 2 histogram bins")


@dataclass(frozen=True)
class StillsOptions(StudyOptions):
    """+ how a picture of key frames looks (layerfilm.reports.document: stills and the report's still)."""

    style: Style = field(default_factory=Style)
    legend: bool = True  # the key under the panels, the colour bar and the timeline (layerfilm.draw.legend)
    curves: bool = True  # the run's logged loss and learning rate under the timeline, when logged (layerfilm.draw.curves)


@dataclass(frozen=True)
class ViewOptions(StillsOptions):
    """+ the film's time and overlay: every frame as drawn (layerfilm.film.film_frames, the interactive film)."""

    fps: float = 15.0
    seconds_per_keyframe: float = 1.0
    time: str = "auto"  # where key frames fall in the film: auto | keys | steps | log-steps (layerfilm.draw.timeline)
    overlay: bool = True  # per-panel "still moving" bar and "settled" mark (layerfilm.draw.overlay)
    film_layout: str = "fit"  # axes, colour scale, legend, timeline: fit (the whole film) | live (layerfilm.draw.film_layout)
    bar: str = "motion"  # the per-panel bar: motion | update-ratio (layerfilm.draw.overlay, layerfilm.points.optimizer)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_time(self.fps, self.seconds_per_keyframe)
        check_time_mode(self.time)
        check_film_layout(self.film_layout)
        if self.bar not in BARS:
            raise OptionsError(f"bar={self.bar!r}: choose one of {', '.join(BARS)}")
        if self.bar == "update-ratio" and (self.film_layout != "fit" or self.activations is not None):
            raise OptionsError("bar=update-ratio: a film of weights made at once (film_layout=fit)")

    @classmethod
    def of(cls, opts: StudyOptions) -> ViewOptions:
        """``opts`` as a film is drawn: itself when it has the film's time and look, else its own fields
        with the film's defaults for the rest (the film's frames that a still or a report shows)."""
        if isinstance(opts, ViewOptions):
            return opts
        return ViewOptions(**{f.name: getattr(opts, f.name) for f in fields(opts)})


@dataclass(frozen=True)
class FilmOptions(ViewOptions):
    """Everything ``render`` needs besides the folder and the output path: + the encoder."""

    encode: EncodeOptions = field(default_factory=EncodeOptions)


# the fields that change the projected points (the cache key); every other field changes only which
# checkpoints are read (the key lists them), where the work runs, or how the points are drawn
POINTS = ("weights", "activations", "projection", "fit", "umap", "final_step", "strict")
BARS = ("motion", "update-ratio")
