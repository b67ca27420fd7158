"""The options tree and the CLI built from it (layerfilm.config, layerfilm.cli).

Options are defined once, in the options tree (layerfilm.config); the command line is generated from
it and checked here against the option classes: every field of FilmOptions (and of the classes nested
in it) is set by exactly the flag listed here, or is listed as library-only. A new field without a
flag, or a flag wired to the wrong field, fails. The Python API and the callbacks take the same names
and types; errors name the field, and the command line says the flag.

`layerfilm render` end to end: the documented frame count and exported points, key frames at the
interpolation endpoints, every option in --help, bad input as one line with nothing written, --version."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from layerfilm.cli.commands import build_parser
from layerfilm.cli.flags import command_options
from layerfilm.config import CLASSES, COMMANDS, OPTIONS, options
from layerfilm.errors import OptionsError
from layerfilm.film_options import FilmOptions, StudyOptions
from layerfilm.points.weights import WeightSpec
from test_encode import decode

# ==== Options are defined once, in the options tree (layerfilm.config)
# flag (render) -> (field path in FilmOptions, value given, value expected)
FLAGS = {
    "--param": ("weights.param", "attn.c_attn", "attn.c_attn"),
    "--points": ("weights.points", "64", 64),
    "--seed": ("weights.seed", "7", 7),
    "--blocks": ("weights.blocks_regex", r"h\.(\d+)\.", r"h\.(\d+)\."),
    "--layout": ("weights.layout", "in-out", "in-out"),
    "--projection": ("projection", "umap", "umap"),
    "--fit": ("fit", "first", "first"),
    "--umap-neighbors": ("umap.neighbors", "9", 9),
    "--umap-min-dist": ("umap.min_dist", "0.3", 0.3),
    "--umap-alignment": ("umap.alignment", "0.2", 0.2),
    "--umap-stride": ("umap.stride", "3", 3),
    "--jobs": ("jobs", "2", 2),
    "--device": ("device", "cuda:0", "cuda:0"),
    "--engine": ("engine", "dask", "dask"),
    "--address": ("address", "tcp://127.0.0.1:8786", "tcp://127.0.0.1:8786"),
    "--storage-options": ("storage_options", "{\"anon\": true}", "{\"anon\": true}"),
    "--fps": ("fps", "4", 4.0),
    "--seconds-per-keyframe": ("seconds_per_keyframe", "2", 2.0),
    "--size": ("style.width", "320x180", 320),
    "--cmap": ("style.cmap", "viridis", "viridis"),
    "--crf": ("encode.crf", "30", 30),
    "--encoder-threads": ("encode.threads", "3", 3),
    "--preset": ("encode.preset", "realtime", "realtime"),
    "--quality": ("encode.quality", "share", "share"),
    "--every": ("every", "2", 2),
    "--steps": ("steps", "10:50", (10, 50)),
    "--final-step": ("final_step", "99", 99),
    "--strict": ("strict", None, True),
    "--no-cache": ("cache", None, False),
    "--cache": ("cache_dir", "/tmp/c", "/tmp/c"),
    "--no-overlay": ("overlay", None, False),
    "--no-legend": ("legend", None, False),
    "--no-curves": ("curves", None, False),
    "--time": ("time", "log-steps", "log-steps"),
    "--settle-threshold": ("settle_threshold", "0.2", 0.2),
    "--film-layout": ("film_layout", "live", "live"),
    "--bar": ("bar", "update-ratio", "update-ratio"),
    "--features": ("weights.source", "updates", "updates"),  # (activations: its own spec, tested below)
}
ALSO = {"style.height": 180, "umap.seed": 7, "umap.jobs": 2}  # set by the same flags as above (--size, --seed, --jobs)
WITH = {"--address": ["--engine", "dask"]}  # flags that need another
# fields that only the Python API sets: documented on their classes
LIBRARY_ONLY = {"umap.window", "umap.epochs", "umap.place_epochs", "umap.place_rate", "style.cell", "style.title",
                "encode.segment_seconds"}


def fields(obj, prefix: str = "") -> dict[str, object]:
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out |= fields(value, f"{prefix}{f.name}.")
        else:
            out[f"{prefix}{f.name}"] = value
    return out


def get(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def test_every_option_field_has_one_flag_or_is_library_only():
    have = set(fields(FilmOptions())) - {"activations"}  # activations: its own flags, checked below
    wired = {path for path, *_ in FLAGS.values()} | set(ALSO) | LIBRARY_ONLY
    assert have == wired, (have - wired, wired - have)


@pytest.mark.parametrize("flag", sorted(FLAGS))
def test_each_flag_sets_its_field_and_nothing_else(flag, tmp_path):
    path, given, expected = FLAGS[flag]
    argv = ["render", str(tmp_path), "--out", str(tmp_path / "f.webm"), flag] + ([given] if given is not None else [])
    argv += WITH.get(flag, [])
    opts = command_options(build_parser().parse_args(argv))[0]
    assert get(opts, path) == expected
    changed = {k for k, v in fields(opts).items() if v != fields(FilmOptions())[k]}
    also = {"--size": {"style.height"}, "--seed": {"umap.seed"}, "--jobs": {"umap.jobs"},
            "--address": {"engine"}}.get(flag, set())
    assert changed == {path} | also


def test_activation_flags_set_the_activation_spec(tmp_path):
    (tmp_path / "p.txt").write_text("a probe")
    argv = ["render", str(tmp_path), "--out", str(tmp_path / "f.webm"), "--features", "activations", "--model", "m.py:f",
            "--probe", str(tmp_path / "p.txt"), "--seq-len", "16", "--batch-size", "2", "--device", "cpu", "--dtype", "bfloat16",
            "--near-zero", "0.1", "--points", "32", "--seed", "3", "--blocks", r"h\.(\d+)\."]
    spec = command_options(build_parser().parse_args(argv))[0].activations
    got = (spec.model, spec.probe, spec.seq_len, spec.batch_size, spec.device, spec.dtype, spec.near_zero, spec.points,
           spec.seed, spec.blocks_regex)
    assert got == ("m.py:f", str(tmp_path / "p.txt"), 16, 2, "cpu", "bfloat16", 0.1, 32, 3, r"h\.(\d+)\.")


def test_the_api_takes_the_flags_values_by_name_and_type():
    opts, live = options("watch", {"overlay": False, "size": (320, 180), "points": 16, "refit": "always", "fps": 2})
    assert (opts.overlay, opts.style.width, opts.style.height, opts.weights.points, opts.fps) == (False, 320, 180, 16, 2.0)
    assert live.refit == "always" and opts.film_layout == "live"  # watch's own default


@pytest.mark.parametrize("given, message", [
    ({"every": 0}, "every=0: must be at least 1"),
    ({"size": "320x180"}, "size='320x180': must be a tuple"),
    ({"overlay": "no"}, "overlay='no': must be a bool"),
    ({"points": True}, "points=True: must be a int"),
    ({"projection": "tsne"}, "projection='tsne': choose one of pca, procrustes, umap"),
    ({"colour": "red"}, "colour='red': not an option of render (options: "),
])
def test_a_bad_value_is_one_error_naming_the_field(given, message):
    with pytest.raises(OptionsError) as e:
        options("render", given)
    assert str(e.value).startswith(message)


def test_the_command_line_says_the_flag_where_the_library_says_the_field(run_cli, tmp_path):
    code, out, err = run_cli("render", tmp_path, "--out", tmp_path / "f.webm", "--every", "0")
    assert (code, out, err) == (2, "", "layerfilm: error: --every 0: must be at least 1\n")


def test_each_command_has_only_the_options_it_uses():
    names = {command: {o.name for o in opts} for command, opts in COMMANDS.items()}
    assert not {"crf", "encoder_threads", "preset", "fps", "engine"} - names["render"]
    for command in ("stills", "stability", "scan"):
        assert not {"crf", "encoder_threads", "preset", "fps", "time", "film_layout"} & names[command], command
    assert not {"jobs", "engine", "address", "cache"} & names["scan"]


# option -> the top-level fields of the options objects it sets: FLAGS' field, those ALSO lists (set by the
# same flags) and the activation spec (its own flags: test_activation_flags_set_the_activation_spec)
SETS = {o.name: {FLAGS[o.cli_flag][0].split(".")[0]} for o in OPTIONS.values() if o.cli_flag in FLAGS}
SETS["jobs"].add("umap")
for _name in ("seed", "points", "blocks", "features"):
    SETS[_name] |= {"umap", "activations"} if _name == "seed" else {"activations"}
SETS |= {n: {"activations"} for n in ("model", "probe", "seq_len", "batch_size", "device", "devices", "dtype", "near_zero")}


def own_fields(cls) -> set[str]:
    """The fields ``cls`` adds to the class it narrows (all of them for the narrowest, StudyOptions)."""
    base = cls.__mro__[1]
    return {f.name for f in dataclasses.fields(cls)} - ({f.name for f in dataclasses.fields(base)}
                                                          if dataclasses.is_dataclass(base) else set())


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_each_commands_options_object_holds_only_what_the_command_uses(command):
    """The object holds every option the command takes, and its class is the narrowest that does: each
    class it narrows from adds a field the command sets (else that class would do). Fields of a class
    the command does not set keep their defaults: they are read by the code every command of the class
    runs (a Study reads the selection and the projection, a still is drawn with the film's time)."""
    opts, _ = options(command, {})
    if command not in CLASSES:  # scan reads headers with its own few options
        assert opts is None
        return
    have = {f.name for f in dataclasses.fields(opts)}
    taken = set().union(*(SETS.get(o.name, set()) for o in COMMANDS[command]))
    assert taken <= have, taken - have
    for cls in type(opts).__mro__:
        if dataclasses.is_dataclass(cls):
            assert own_fields(cls) & taken, (command, cls.__name__)
    pictures = {"style", "legend", "curves"}
    film = {"fps", "seconds_per_keyframe", "time", "overlay", "film_layout", "bar"}
    if command in ("stability", "compare"):
        assert not (pictures | film | {"encode"}) & have
    if command in ("stills", "report"):
        assert pictures <= have and not (film | {"encode"}) & have
    if command in ("view", "serve"):
        assert film <= have and "encode" not in have


SHARED = [{}, {"points": 16, "seed": 3, "jobs": 2, "strict": True, "final_step": 7, "every": 2, "steps": (10, 50)},
          {"projection": "procrustes", "param": "attn.c_attn", "layout": "in-out", "blocks": r"h\.(\d+)\.",
           "engine": "dask", "cache": False, "settle_threshold": 0.3},
          {"projection": "umap", "seed": 5, "storage_options": "{}"},
          {"features": "activations", "points": 8, "device": "cpu", "devices": "cpu,cpu", "near_zero": 0.1}]


@pytest.mark.parametrize("given", SHARED)
def test_every_command_keys_the_same_points_alike(given):
    """The cache key is the same for every class built from the same values: a render's cached key frames
    serve stability, stills, view and the rest."""
    film = options("render", given)[0]
    for command in sorted(CLASSES):
        ok = {k: v for k, v in given.items() if k in {o.name for o in COMMANDS[command]}}
        if ok != given:
            continue  # a value this command does not take (stills takes no features)
        assert options(command, given)[0].points_options() == film.points_options(), command
    assert FilmOptions(weights=WeightSpec(points=16)).points_options() == \
        StudyOptions(weights=WeightSpec(points=16)).points_options() != StudyOptions().points_options()


def test_a_renders_cache_serves_the_other_commands(run_cli, run_copy, tmp_path, reads):
    c = tmp_path / "c"
    code, _, err = run_cli("render", run_copy, "--out", tmp_path / "f.webm", "--size", "320x180", "--fps", "1",
                           "--points", "16", "--cache", c, "--quiet")
    assert code == 0 and len(reads) == 1, err
    for command, out in (("stills", "s.png"), ("view", "v.html")):
        code, _, err = run_cli(command, run_copy, "--out", tmp_path / out, "--points", "16", "--cache", c, "--quiet")
        assert code == 0 and len(reads) == 1, (command, err)  # its key frames from the render's entry
    (entry,) = c.glob("*.npz")
    code, _, err = run_cli("stability", run_copy, "--points", "16", "--cache", tmp_path / "c2", "--quiet")
    assert code == 0, err
    assert entry.name in {p.name for p in (tmp_path / "c2").glob("*.npz")}  # its key frames under the render's key


def test_each_option_help_fits_three_lines(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    for command in COMMANDS:
        text = build_parser()._subparsers._group_actions[0].choices[command].format_help()
        lines = text[text.index("\noptions:"):].splitlines()
        starts = [i for i, line in enumerate(lines) if line.startswith("  -")] + [len(lines)]
        for a, b in zip(starts, starts[1:]):
            kept = [line for line in lines[a:b] if line.startswith(" " * 24) or line is lines[a]]
            assert len(kept) <= 3, (command, lines[a:b])


# ==== `layerfilm render` end to end
def test_render_writes_film_with_documented_frame_count(tiny_run, tmp_path, run_cli):
    out = tmp_path / "film.webm"
    pts = tmp_path / "pts.npz"
    code, _, err = run_cli("render", tiny_run, "--out", out, "--size", "320x180", "--fps", "4",
                           "--points", "40", "--export-points", pts, "--quiet")
    assert code == 0, err
    frames = decode(out)
    T = 7
    assert len(frames) == (T - 1) * 4 + 1
    assert frames[0].shape == (180, 320, 3)
    assert not np.array_equal(frames[0], frames[-1])  # the blocks moved
    data = np.load(pts)
    assert data["xy"].shape == (T, 4, 40, 2) and data["xy"].dtype == np.float32
    assert list(data["steps"]) == [0, 10, 20, 30, 40, 50, 60]
    assert list(data["blocks"]) == [0, 1, 2, 3]
    assert data["point_ids"].shape == (4, 40)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["film.webm", "pts.npz"]


def test_keyframes_are_exact_interpolation_endpoints(tiny_run, tmp_path, run_cli):
    """The PNG-folder output with --every/--steps: key frames land on frame k * fps * spk."""
    out = tmp_path / "frames"
    code, _, err = run_cli("render", tiny_run, "--out", out, "--size", "320x240", "--fps", "3",
                           "--seconds-per-keyframe", "2", "--steps", "10:50", "--every", "2", "--quiet")
    assert code == 0, err
    assert len(list(out.glob("*.png"))) == (3 - 1) * 6 + 1


@pytest.mark.parametrize("command", ["render", "scan", "stability", "stills", "report", "compare"])
def test_help_explains_options(run_cli, capsys, command):
    """Every option of every command is in its --help with a sentence of its own; the checkpoint
    options that every study command shares are there too."""
    from layerfilm.cli.commands import build_parser

    with pytest.raises(SystemExit) as e:
        run_cli(command, "--help")
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    sub = next(a for a in build_parser()._subparsers._group_actions[0].choices.items() if a[0] == command)[1]
    for action in sub._actions:
        if not action.option_strings or action.option_strings == ["-h", "--help"]:
            continue
        assert action.help and len(action.help.split()) >= 3, action.option_strings
        assert action.option_strings[-1] in text, action.option_strings
        assert " ".join(action.help.replace("%%", "%").split())[:40] in text, action.option_strings
    if command != "scan":
        for flag in ("--final-step", "--strict", "--blocks", "--cache", "--no-cache"):
            assert flag in text, flag


BAD = [
    (lambda tmp, run: [tmp / "missing", "--out", tmp / "f.webm"], "no such folder"),
    (lambda tmp, run: [tmp / "empty", "--out", tmp / "f.webm"], "the folder is empty"),
    (lambda tmp, run: [tmp / "notes", "--out", tmp / "f.webm"], "no checkpoints found"),
    (lambda tmp, run: [run, "--out", tmp / "f.avi"], "unknown output extension '.avi'"),
    (lambda tmp, run: [run, "--out", tmp / "no" / "f.webm"], "does not exist"),
    (lambda tmp, run: [run, "--out", tmp / "f.webm", "--export-points", tmp / "p.txt"], "must end in .npz"),
    (lambda tmp, run: [run, "--out", tmp / "f.webm", "--param", "nope"], "candidates: attn.c_attn.weight"),
    (lambda tmp, run: [run, "--out", tmp / "f.webm", "--size", "100x5x"], "--size"),
    (lambda tmp, run: [run, "--out", tmp / "f.webm", "--cmap", "nocmap"], "not a matplotlib colormap"),
]


@pytest.mark.parametrize("make_args, message", BAD)
def test_bad_input_exits_2_with_one_line_and_nothing_written(make_args, message, tiny_run, tmp_path, run_cli):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "README.md").write_text("not a checkpoint")
    before = sorted(p.name for p in tmp_path.iterdir())
    code, out, err = run_cli("render", *make_args(tmp_path, tiny_run), "--quiet")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("layerfilm: error:") and message in lines[0], err
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_version_prints_the_package_version(capsys):
    """`layerfilm --version` prints `layerfilm X.Y.Z` (pyproject's version) and exits 0, through the
    installed entry point as well as in-process."""
    import re
    import subprocess
    import sys

    import layerfilm
    from conftest import ROOT
    from layerfilm.cli.commands import main

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    version = re.search(r'^version = "(.+)"$', (ROOT / "pyproject.toml").read_text(), re.M).group(1)  # 3.10: no tomllib
    assert out == f"layerfilm {version}\n" == f"layerfilm {layerfilm.__version__}\n"
    assert re.fullmatch(r"layerfilm \d+\.\d+\.\d+\n", out)
    done = subprocess.run([sys.executable, "-c", "import sys, layerfilm_main; sys.exit(layerfilm_main.main())", "--version"],
                          capture_output=True, text=True, cwd=ROOT)
    assert (done.returncode, done.stdout) == (0, out), done.stderr
