"""`layerfilm render` end to end: the documented frame count and exported points, key frames at the
interpolation endpoints, every option in --help, bad input as one line with nothing written, --version."""

import numpy as np
import pytest

from test_render_encode import decode


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
