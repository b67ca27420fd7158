"""Encoder knobs (--preset, --encoder-threads): realtime VP9 stays lossless; bad values fail at once."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from layerfilm.errors import OptionsError
from layerfilm.video.encode import EncodeOptions, ffmpeg_exe, open_film


def decode_raw(path, w, h) -> np.ndarray:
    raw = subprocess.run([ffmpeg_exe(), "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                         capture_output=True, check=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, h, w, 3)


@pytest.mark.parametrize("preset", ["good", "realtime"])
def test_webm_presets_decode_to_the_exact_frames(tmp_path, preset):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (4, 48, 64, 3), dtype=np.uint8)
    frames[:, 10:20] = frames[0, 10:20]  # some motion-free area too
    out = tmp_path / "f.webm"
    with open_film(out, (64, 48), EncodeOptions(preset=preset, threads=1), fps=5) as writer:
        for f in frames:
            writer.write(f)
    assert np.array_equal(decode_raw(out, 64, 48), frames)


@pytest.mark.parametrize("kind, preset, message", [
    ("webm", "fast", "--preset 'fast' for .webm: choose one of good, realtime"),
    ("mp4", "realtime", "--preset 'realtime' for .mp4: choose one of ultrafast, superfast, veryfast, faster, fast, "
                        "medium, slow, slower, veryslow"),
])
def test_a_preset_the_format_lacks_fails_before_any_work(run_cli, tiny_run, tmp_path, kind, preset, message):
    cache = tmp_path / "cache"
    code, _, err = run_cli("render", tiny_run, "--out", tmp_path / f"f.{kind}", "--preset", preset, "--cache", cache)
    assert (code, err) == (2, f"layerfilm: error: {message}\n")
    assert list(tmp_path.iterdir()) == []  # no film, no cache: nothing was read


def test_mp4_preset_is_used(tmp_path):
    frames = np.zeros((3, 48, 64, 3), np.uint8)
    out = tmp_path / "f.mp4"
    with open_film(out, (64, 48), EncodeOptions(preset="ultrafast"), fps=5) as writer:
        for f in frames:
            writer.write(f)
    assert len(decode_raw(out, 64, 48)) == 3


def test_negative_encoder_threads(run_cli, tiny_run, tmp_path):
    with pytest.raises(OptionsError, match=r"^encoder_threads=-1: must be 0 \(ffmpeg decides\) or more$"):
        EncodeOptions(threads=-1)
    code, _, err = run_cli("render", tiny_run, "--out", tmp_path / "f.webm", "--encoder-threads", "-1")
    assert (code, err) == (2, "layerfilm: error: --encoder-threads -1: must be 0 (ffmpeg decides) or more\n")


def test_help_says_which_outputs_are_lossless_and_what_the_knobs_do():
    from layerfilm.cli.commands import build_parser

    text = build_parser()._subparsers._group_actions[0].choices["render"].format_help()
    for needle in (".webm = VP9 lossless", "PNG frames (lossless)", "--preset", "realtime (still lossless",
                   "--encoder-threads", "--cache DIR", "--no-cache"):
        assert needle in text, needle


def test_default_webm_preset_by_frames_and_cores():
    """good while its estimated encode time fits the budget, realtime beyond: the boundary moves with
    the frame count, the frame size and the cores."""
    from layerfilm.video.encode import GOOD_BUDGET_S, GOOD_CORE_SECONDS_PER_MPIXEL, webm_preset

    for size, cores in (((1280, 720), 2), ((1920, 1080), 16), ((256, 144), 1)):
        per_frame = size[0] * size[1] / 1e6 * GOOD_CORE_SECONDS_PER_MPIXEL / cores
        n = int(GOOD_BUDGET_S / per_frame)
        assert (webm_preset(n, size, cores), webm_preset(n + 1, size, cores)) == ("good", "realtime")
        assert webm_preset(n + 1, size, cores * 2) == "good"


@pytest.mark.parametrize("given, budget, expected", [("", 1e9, "good"), ("", 0.0, "realtime"), ("good", 0.0, "good"),
                                                     ("realtime", 1e9, "realtime")])
def test_cli_picks_the_webm_preset_and_says_so(run_cli, tiny_run, tmp_path, monkeypatch, given, budget, expected):
    """Without --preset render picks by frames and cores and says which in the output line; an
    explicit --preset is used as given and nothing is said."""
    import layerfilm.film as film
    import layerfilm.video.encode as encode
    from layerfilm.parallel.engines import cores

    monkeypatch.setattr(encode, "GOOD_BUDGET_S", budget)
    seen = []
    real = film.write_film
    monkeypatch.setattr(film, "write_film", lambda traj, out, opts, *a, **kw: seen.append(opts.encode.preset)
                        or real(traj, out, opts, *a, **kw))
    args = ("--size", "320x240", "--fps", "2", "--points", "16", "--jobs", "1", "--quiet", "--cache", tmp_path / "cache")
    code, _, err = run_cli("render", tiny_run, "--out", tmp_path / "f.webm", *(("--preset", given) if given else ()), *args)
    assert code == 0, err
    assert seen == [expected]
    frames = (7 - 1) * 2 + 1
    said = f"; VP9 preset {expected}, picked for {frames} frames on {cores()} core"
    assert (said in err) == (given == ""), err
    assert len(decode_raw(tmp_path / "f.webm", 320, 240)) == frames
