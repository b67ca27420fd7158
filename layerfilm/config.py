"""The one options tree: every option of every command, declared once.

Each :class:`Option` has its name (the Python API's keyword, the callbacks' keyword, the JSON key),
default, the Python type(s) it takes, its check, its help (at most 3 lines of ``--help``; details in
the README), its command-line flag, and whether it changes the points (part of the cache key). The
command line's parser is generated from it (layerfilm.cli.commands), the callbacks take the same names and
types (layerfilm.callbacks), and :func:`options` turns a command's values into the option objects of
the library: the class of layerfilm.film_options that holds just what the command uses (``CLASSES``), and
LiveOptions. A bad value is an :class:`OptionsError` naming the field
(``settle_threshold=2: must be in (0, 1)``); the command line says the flag instead (:func:`to_flags`).

Adding an option: one :class:`Option` here, its name in the commands that take it (``COMMANDS``), and
its use where :func:`options` builds the library's objects.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from layerfilm.errors import OptionsError

PATH = (str, os.PathLike)  # a file or folder option takes a str or a Path


@dataclass(frozen=True)
class Option:
    """One option.

    name: the API's keyword and the JSON key (snake_case).
    default: its value when not given.
    help: one to three lines of ``--help`` (the default is added when it says something).
    kind: the Python type(s) the API takes; ``None`` is also taken where the default is None.
    parse: text -> value, for the command line (default: ``kind``).
    flag: the command line's flag (default ``--name-with-dashes``; ``--no-name`` for a bool that defaults to True).
    check: value -> the reason it is refused, or None.
    choices: the values taken (checked; listed in ``--help``).
    points: changing it changes the points (the cache key).
    group: the heading it is listed under in ``--help``.
    """

    name: str
    default: Any
    help: str
    kind: type | tuple[type, ...] = str
    parse: Callable[[str], Any] | None = None
    flag: str = ""
    metavar: str | None = None
    check: Callable[[Any], str | None] | None = None
    choices: tuple[str, ...] | None = None
    points: bool = False
    group: str = "options"

    @property
    def cli_flag(self) -> str:
        if self.flag:
            return self.flag
        if self.default is True:
            return "--no-" + self.name.replace("_", "-")
        return "--" + self.name.replace("_", "-")

    def value(self, given: Any) -> Any:
        """``given`` checked: its type, choices and check; OptionsError naming the field otherwise."""
        if given is None and self.default is None:
            return None
        shown = f"{given:g}" if isinstance(given, float) else repr(given)
        kinds = self.kind if isinstance(self.kind, tuple) else (self.kind,)
        if os.PathLike in kinds and isinstance(given, os.PathLike):
            given = os.fspath(given)
        if float in kinds and isinstance(given, int) and not isinstance(given, bool):
            given = float(given)
        if not isinstance(given, kinds) or (isinstance(given, bool) and bool not in kinds):
            names = " or ".join(k.__name__ for k in kinds)
            raise OptionsError(f"{self.name}={shown}: must be a {names}")
        if self.choices is not None and given not in self.choices:
            raise OptionsError(f"{self.name}={shown}: choose one of {', '.join(self.choices)}")
        why = self.check(given) if self.check is not None else None
        if why:
            raise OptionsError(f"{self.name}={shown}: {why}")
        return given


# checks: value -> why it is refused (or None)
def _at_least(low: float) -> Callable[[Any], str | None]:
    return lambda v: None if v >= low else f"must be at least {low:g}"


def _size(text: str) -> tuple[int, int]:
    from layerfilm.draw.raster import parse_size

    return parse_size(text)


def _size_check(v: tuple) -> str | None:
    ok = len(v) == 2 and all(isinstance(x, int) and not isinstance(x, bool) for x in v)
    return None if ok else "must be (width, height), two ints"


def _steps(text: str) -> tuple[int | None, int | None]:
    from layerfilm.io.scan import parse_steps

    return parse_steps(text)


def _step_list(text: str) -> list[int]:
    from layerfilm.reports.document import parse_step_list

    return parse_step_list(text)


WHICH, WHAT, ACT, TIME, LOOK, WHERE, CACHE, LIVE, OUT = (
    "which checkpoints", "what to film", "activations (with --features activations)", "projection and time",
    "look and encoding", "where the work runs", "cache", "following the run", "output")

_O = [
    # which checkpoints
    Option("every", 1, "keep every K-th checkpoint", int, metavar="K", check=_at_least(1), group=WHICH),
    Option("steps", (None, None), "keep steps A..B inclusive; either side may be empty (e.g. 1000:)", tuple, parse=_steps,
           metavar="A:B", group=WHICH),
    Option("storage_options", None, "a URL folder's fsspec options as JSON, e.g. '{\"anon\": true}'; never printed",
           (str, dict), metavar="JSON", points=True, group=WHICH),
    Option("final_step", None, "use a final model saved at the folder's root (no step in its name) as step N", int,
           metavar="N", points=True, group=WHICH),
    Option("strict", False, "an unusable checkpoint is an error (exit 2) instead of a skip", bool, points=True, group=WHICH),
    Option("blocks", None, "override block detection: a regex whose first group is the block index, e.g. "
           "'net\\.stage(\\d+)\\.'", metavar="REGEX", points=True, group=WHICH),
    # what to film
    Option("features", "weights", "weight rows, Adam's update rows (updates), or block outputs on a probe "
           "(activations)", choices=("weights", "updates", "activations"), points=True,
           group=WHAT),
    Option("param", None, "matrix inside each block, e.g. mlp.c_fc.weight or attn.c_attn; default: the MLP's input "
           "projection", points=True, group=WHAT),
    Option("points", 512, "at most N neurons per block, chosen once with --seed and tracked at every step", int,
           metavar="N", points=True, group=WHAT),
    Option("seed", 0, "seed for choosing the points and for umap", int, points=True, group=WHAT),
    Option("layout", "auto", "storage of the matrix: out-in (nn.Linear), in-out (GPT-2 Conv1D) or auto",
           choices=("auto", "out-in", "in-out"), points=True, group=WHAT),
    Option("projection", "pca", "pca (one basis for all key frames), procrustes (each frame's own PCA, aligned) or "
           "umap", choices=("pca", "procrustes", "umap"),
           points=True, group=WHAT),
    # activations
    Option("model", None, "build the model with package.module:make_model or path/file.py:make_model; default: from "
           "config.json beside the checkpoints", metavar="MODULE:FN", points=True, group=ACT),
    Option("probe", None, "probe batch: a UTF-8 text file, or a .pt/.npy of token ids; default: a short bundled text",
           kind=PATH, metavar="FILE", points=True, group=ACT),
    Option("seq_len", None, "tokens per probe sequence (default: 128, or the model's context if shorter)", int,
           metavar="T", points=True, group=ACT),
    Option("batch_size", 8, "probe sequences per forward pass; memory is one model + one batch", int, metavar="B",
           points=True, group=ACT),
    Option("device", "auto", "where activations run: auto (cuda when available), cpu or cuda; cuda[:N] also measures\n"
           "the weights' whole blocks on that GPU (stability, report)", points=True, group=ACT),
    Option("devices", None, "one long-lived worker per device, e.g. 0,1,2,3 or cpu,cpu (default: every visible GPU)",
           metavar="LIST", group=ACT),
    Option("dtype", "float32", "float32, bfloat16 or float16", points=True,
           group=ACT),
    Option("near_zero", 0.05, "activations with |a| < X count as near zero", float, metavar="X",
           points=True, group=ACT),
    # projection and time
    Option("fit", "all", "pca only: fit the basis on all key frames pooled, the first or the last",
           choices=("all", "first", "last"), points=True, group=TIME),
    Option("umap_neighbors", 15, "umap: n_neighbors of each key frame's graph", int, metavar="K",
           points=True, group=TIME),
    Option("umap_min_dist", 0.1, "umap: min_dist, how tightly points pack", float, metavar="D", points=True, group=TIME),
    Option("umap_alignment", 0.01, "umap: pull of a point to its place in nearby key frames", float, metavar="W",
           points=True, group=TIME),
    Option("umap_stride", 0, "umap: fit jointly every K-th key frame and place those between; 0 = auto (at most 8 "
           "jointly)", int, metavar="K", points=True, group=TIME),
    Option("stats", False, "print a per-block table of point motion and explained variance", bool, group=TIME),
    Option("fps", 15.0, "frames per second", float, group=TIME),
    Option("seconds_per_keyframe", 1.0, "seconds between key frames with --time keys (auto: when evenly spaced)", float,
           metavar="S",
           group=TIME),
    Option("time", "auto", "key frames evenly (keys), by step or log-step; auto: keys if evenly spaced, "
           "else steps",
           choices=("auto", "keys", "steps", "log-steps"), group=TIME),
    # look and encoding
    Option("size", (1280, 720), "frame size in pixels, even numbers, from 320x180 to 8K", tuple, parse=_size,
           metavar="WxH", check=_size_check, group=LOOK),
    Option("cmap", "magma", "matplotlib colormap of the density (log scale, fixed for the film)", group=LOOK),
    Option("legend", True, "no legend (what is filmed, the colour bar, the timeline)", bool, group=LOOK),
    Option("curves", True, "no strip of the loss and learning rate the run logged (trainer_state.json, "
           "metrics.csv, TensorBoard) under the timeline", bool, group=LOOK),
    Option("film_layout", "fit", "fit: axes and colours fitted to the whole film; live: changed rarely as key frames "
           "come", choices=("fit", "live"), group=LOOK),
    Option("overlay", True, "no per-panel bar of how much the block still moves, and no 'settled' mark", bool,
           group=LOOK),
    Option("bar", "motion", "per-panel bar: motion of the points, or update-ratio (Adam's step against the weights)",
           choices=("motion", "update-ratio"), group=LOOK),
    Option("settle_threshold", 0.1, "a block has settled once its distance to the final checkpoint stays below F times "
           "its first and its updates below F times the median block's", float, metavar="F", group=LOOK),
    Option("crf", 18, "quality of lossy .mp4 output, 0-51, lower is better (.webm: lossless unless render --quality share)", int,
           group=LOOK),
    Option("quality", "lossless", "share: a small lossy .webm (VP9 yuv420p) or .mp4 that plays everywhere, "
           "its PSNR stated", choices=("lossless", "share"), group=LOOK),
    Option("encoder_threads", 0, "ffmpeg encoder threads (0: ffmpeg decides)", int, metavar="N",
           group=LOOK),
    Option("preset", "", ".webm: good, or realtime (still lossless, faster, larger; default: good when fast enough "
           "here); .mp4: an x264 preset", metavar="NAME", group=LOOK),
    Option("export_points", None, "also write the key frames' coordinates: steps, blocks, point_ids, xy (T,L,N,2)",
           kind=PATH, metavar="FILE.npz", group=OUT),
    Option("quiet", False, "no progress bars", bool, group=OUT),
    # where the work runs
    Option("jobs", 0, "tasks at once (block chunks, umap layouts, film segments); 0: one per core", int, metavar="N",
           check=lambda v: None if v >= 0 else "must be 0 (one per core) or more", group=WHERE),
    Option("engine", "local", "local worker processes, or dask (a Dask cluster: pip install 'layerfilm[dask]')",
           choices=("local", "dask"), group=WHERE),
    Option("address", None, "--engine dask: the scheduler, e.g. tcp://HOST:8786 (default: a LocalCluster)",
           metavar="URL", group=WHERE),
    # cache
    Option("cache_dir", None, "cache folder (default $LAYERFILM_CACHE, else ~/.cache/layerfilm)", flag="--cache",
           kind=PATH, metavar="DIR", group=CACHE),
    Option("cache", True, "neither read nor write the cache", bool, group=CACHE),
]
OPTIONS: dict[str, Option] = {o.name: o for o in _O}

# options a command has that others name differently
JSON_FLAG = Option("json", False, "print JSON instead of the table", bool, group=OUT)
DEEP = Option("deep", False, "also read every block's filmed tensor and call one holding NaN/Inf unusable", bool, group=OUT)
KEYFRAMES = Option("keyframes", None, "key frames to show, by step (default: the first and last)", list, parse=_step_list,
                   flag="--steps", metavar="S1,S2,...", group=OUT)
FILM = Option("film", None, "a film to show: .html embeds one of at most 8 MB and links a larger one; .md links it",
              kind=PATH, metavar="FILE", group=OUT)
PORT = Option("port", 8000, "the port on 127.0.0.1 (0: any free one)", int,
              check=lambda v: None if 0 <= v <= 65535 else "must be 0..65535", group=OUT)
LOSSLESS_FILM = Option("lossless_film", None, "the lossless film of a --film rendered with --quality share: "
                       "linked under it", kind=PATH, metavar="FILE", group=OUT)
INTERACTIVE = Option("interactive", False, "also write the interactive film (REPORT_view.html, layerfilm view) and "
                     "link it", bool, group=OUT)
NAMES = Option("names", None, "the runs' names in order, base first (default: the folders' names)", (list, tuple),
               parse=lambda text: text.split(","), metavar="A,B,...", group=OUT)
FILM_LINK = Option("film_link", False, "link the --film (keep it beside the report) instead of embedding it", bool,
                   group=OUT)
LIVE_OPTIONS = (
    Option("interval", 10.0, "seconds between polls of the folder", float, metavar="S", group=LIVE),
    Option("refit", "doubling", "pca basis: refit on all key frames as they double, never (first only), always, "
           "every=K", metavar="doubling|never|always|every=K", group=LIVE),
    Option("stills", None, "also keep the first and last key frames side by side here (.png, .svg, .pdf)",
           kind=PATH, metavar="FILE", group=LIVE),
    Option("json", None, "also keep the film's per-block stability here", kind=PATH, metavar="FILE.json", group=LIVE),
)

_SELECT = ("every", "steps")
_SOURCE = ("storage_options", "final_step", "strict")
_POINTS = ("param", "points", "seed", "blocks", "layout", "projection")
_ACT = ("features", "model", "probe", "seq_len", "batch_size", "device", "devices", "dtype", "near_zero")
_RUN = ("quiet", "jobs", "engine", "address", "cache_dir", "cache")
_LOOK = (*_SELECT, *_SOURCE, *_ACT, *_POINTS, "fit", "umap_neighbors", "umap_min_dist", "umap_alignment", "umap_stride")
_TIME = ("fps", "seconds_per_keyframe", "time", "size", "cmap", "legend", "film_layout", "overlay", "settle_threshold")
_FILM = (*_LOOK, "stats", *_TIME, "curves", "crf", "quality", "encoder_threads", "preset", "export_points", *_RUN)


def _of(*names: str | Option) -> tuple[Option, ...]:
    return tuple(n if isinstance(n, Option) else OPTIONS[n] for n in names)


COMMANDS: dict[str, tuple[Option, ...]] = {
    "render": _of(NAMES, *_FILM, "bar"),
    "compare": _of(JSON_FLAG, NAMES, *_SELECT, *_SOURCE, "param", "points", "seed", "blocks", "layout", *_ACT, *_RUN),
    "watch": _of(NAMES, *LIVE_OPTIONS, *(n for n in _FILM if n != "quality")),  # a live film stays lossless
    "scan": _of(JSON_FLAG, DEEP, *_SOURCE, "blocks"),
    "stability": _of(JSON_FLAG, NAMES, "settle_threshold", *_SELECT, *_SOURCE, *_POINTS, *_ACT, *_RUN),
    "stills": _of(KEYFRAMES, NAMES, *_SOURCE, *_POINTS, "size", "cmap", "legend", "curves", *_RUN),
    "view": _of(NAMES, *_LOOK, *_TIME, "curves", *_RUN),
    "serve": _of(PORT, *_LOOK, *_TIME, "curves", *_RUN),
    "report": _of(NAMES, FILM, FILM_LINK, LOSSLESS_FILM, INTERACTIVE, "settle_threshold", *_SELECT, *_SOURCE, *_POINTS, *_ACT,
                  "size", "cmap", "curves", *_RUN),
}
DEFAULTS = {"watch": {"film_layout": "live"}}  # a command whose default differs


def values(command: str, given: dict[str, Any]) -> dict[str, Any]:
    """Every option of ``command``: ``given`` (by name) checked, the defaults for the rest.
    A name the command does not take is one line listing the ones it does."""
    opts = {o.name: o for o in COMMANDS[command]}
    unknown = [k for k in given if k not in opts]
    if unknown:
        raise OptionsError(f"{unknown[0]}={given[unknown[0]]!r}: not an option of {command} (options: "
                           f"{', '.join(sorted(opts))})")
    defaults = DEFAULTS.get(command, {})
    return {name: o.value(given[name]) if name in given else defaults.get(name, o.default) for name, o in opts.items()}


# the options object each command's product takes (layerfilm.film_options): the narrowest class that
# holds the command's options; scan takes none (it reads headers with a few options of its own)
CLASSES = {"render": "FilmOptions", "watch": "FilmOptions", "view": "ViewOptions", "serve": "ViewOptions",
           "stills": "StillsOptions", "report": "StillsOptions", "stability": "StudyOptions", "compare": "StudyOptions"}


def options(command: str, given: dict[str, Any]):
    """The library's option objects for ``command`` from option values by name (``given``: the API's
    or the callbacks' keywords, or the parsed command line): (the command's options object, of the class
    ``CLASSES`` names, with only its fields; LiveOptions or None); for compare and report, the second is a
    function giving the ActivationSpec (layerfilm.compare's ``probe``); for scan, the first is None."""
    from layerfilm import film_options
    from layerfilm.draw.raster import Style
    from layerfilm.points.weights import WeightSpec
    from layerfilm.projection import UmapOptions
    from layerfilm.video.encode import EncodeOptions

    v = values(command, given)
    g = v.get

    def probe():  # the activations' options (imports torch)
        from layerfilm.points.activations import ActivationSpec

        return ActivationSpec(model=v["model"], probe=v["probe"], points=v["points"], seed=v["seed"],
                              seq_len=v["seq_len"], batch_size=v["batch_size"], device=v["device"],
                              devices=v["devices"] or (), dtype=v["dtype"], near_zero=v["near_zero"],
                              blocks_regex=v["blocks"])

    if g("features") == "activations" and command in ("render", "watch") and (
            v["param"] is not None or v["layout"] != "auto"):
        name = "param" if v["param"] is not None else "layout"
        raise OptionsError(f"{name}={v[name]}: chooses weights; it does nothing with features=activations")
    if g("features") == "updates" and command != "render":
        raise OptionsError(f"features=updates: films the optimizer's updates (render); {command} measures the weights")
    parts = {  # the fields that several options build; a field named as no option of the command keeps its default
        "weights": lambda: WeightSpec(param=v["param"], points=v["points"], seed=v["seed"], blocks_regex=v["blocks"],
                                      layout=v["layout"], source="updates" if g("features") == "updates" else "weights"),
        "activations": lambda: probe() if g("features") == "activations" else None,
        "umap": lambda: UmapOptions(neighbors=g("umap_neighbors", 15), min_dist=g("umap_min_dist", 0.1),
                                    alignment=g("umap_alignment", 0.01), stride=g("umap_stride", 0), jobs=v["jobs"],
                                    seed=v["seed"]),
        "style": lambda: Style(width=v["size"][0], height=v["size"][1], cmap=v["cmap"]),
        "encode": lambda: EncodeOptions(crf=v["crf"], threads=v["encoder_threads"], preset=v["preset"],
                                        quality=g("quality", "lossless")),
    }
    opts = None
    if command in CLASSES:
        cls = getattr(film_options, CLASSES[command])
        names = [f.name for f in dataclasses.fields(cls)]
        opts = cls(**{n: parts[n]() if n in parts else v[n] for n in names if n in parts or n in v})
    live: Any = None
    if command in ("compare", "report"):  # runs without the base's initialisation: compared by their activations
        live = probe
    if command == "watch":
        from layerfilm.live.film import LiveOptions

        live = LiveOptions(refit=v["refit"], interval=v["interval"], stills=v["stills"], json=v["json"],
                           export=v["export_points"])
    return opts, live


_FIELD = re.compile(r"(?<![\w./\\:-])([a-z][a-z0-9_]*)(=|:(?= ))")  # name=... or name: ... (not in paths)


def to_flags(message: str) -> str:
    """A library message about ``name=value`` (or ``name: ...``) said with the command line's flag:
    ``--flag value`` (``--flag: ...``)."""
    flags = {o.name: o.cli_flag for opts in COMMANDS.values() for o in opts}

    def flag(m: re.Match) -> str:  # name=value -> --flag value; name: ... -> --flag: ...
        name, sign = m.groups()
        return (f"{flags[name]} " if sign == "=" else f"{flags[name]}:") if name in flags else m.group(0)

    return _FIELD.sub(flag, message)


_UNSET = object()  # argparse's default for every generated option: unset options take the tree's default


def given(namespace: dict[str, Any], command: str) -> dict[str, Any]:
    """The options set on the command line (argparse's namespace as a dict): those the user gave."""
    opts: Iterable[Option] = COMMANDS[command]
    return {o.name: namespace[o.name] for o in opts if o.name in namespace and namespace[o.name] is not _UNSET}

