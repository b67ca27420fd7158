"""Encoding films (layerfilm.video.encode).

Drawing and encoding frames (layerfilm.draw.raster, layerfilm.video.encode): the panel grid, bit-exact
webm, PNG folders and GIFs, a failed encode leaves nothing, the output kinds, points placed in their panels.

Encoder knobs (--preset, --encoder-threads): realtime VP9 stays lossless; bad values fail at once."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from layerfilm.draw.raster import Renderer, Style, grid_shape
from layerfilm.errors import OptionsError
from layerfilm.video.encode import EncodeOptions, ffmpeg_exe, open_film, output_kind


# ==== Drawing and encoding frames (layerfilm.draw.raster, layerfilm.video.encode)
def decode(path):
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
    meta = next(reader)
    w, h = meta["size"]
    return [np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in reader]


def test_grid_layout():
    assert grid_shape(128, 1920, 1080) == (8, 16)
    assert grid_shape(8, 1280, 720) == (2, 4)
    assert grid_shape(1, 640, 480) == (1, 1)


def random_frames(n, w=96, h=64, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]


def test_webm_round_trip_is_bit_exact(tmp_path):
    frames = random_frames(5)
    out = tmp_path / "film.webm"
    with open_film(out, (96, 64)) as w:
        for f in frames:
            w.write(f)
    back = decode(out)
    assert len(back) == 5
    for a, b in zip(frames, back):
        np.testing.assert_array_equal(a, b)


def test_png_folder_and_gif(tmp_path):
    frames = random_frames(3)
    with open_film(tmp_path / "frames", (96, 64)) as w:
        for f in frames:
            w.write(f)
    import imageio.v3 as iio

    pngs = sorted((tmp_path / "frames").glob("*.png"))
    assert len(pngs) == 3
    np.testing.assert_array_equal(iio.imread(pngs[1]), frames[1])
    with open_film(tmp_path / "a.gif", (96, 64), samples=lambda: frames[:1]) as w:
        for f in frames:
            w.write(f)
    assert len(decode(tmp_path / "a.gif")) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.gif", "frames"]  # no temporaries left


def test_failed_encode_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with open_film(tmp_path / "x.webm", (96, 64)) as w:
            w.write(random_frames(1)[0])
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_output_kind():
    from pathlib import Path

    assert output_kind(Path("a.webm")) == "webm" and output_kind(Path("a.GIF")) == "gif"
    assert output_kind(Path("frames")) == "png"
    with pytest.raises(OptionsError, match="unknown output extension '.avi'"):
        output_kind(Path("a.avi"))


def test_renderer_places_points_in_their_panels():
    style = Style(width=320, height=180, cell=1)
    extent = np.array([[-1, 1, -1, 1]] * 2, float)
    r = Renderer(style, ["L0", "L1"], extent, vmax=4.0)
    empty = r.density(np.full((2, 1, 2), 10.0))  # far outside: dropped, not clamped onto the edge
    assert empty.sum() == 0
    pts = np.zeros((2, 3, 2))
    pts[1] += 0.5
    d = r.density(pts)
    assert d.sum() == 6  # every point inside its panel is counted once
    (_, x0), (_, x1) = (np.unravel_index(np.argmax(d * (np.arange(d.shape[1]) < r.origin[1, 0])), d.shape),
                        np.unravel_index(np.argmax(d * (np.arange(d.shape[1]) >= r.origin[1, 0])), d.shape))
    assert x0 < r.origin[1, 0] <= x1
    frame = r.frame(pts, "step 1")
    assert frame.shape == (180, 320, 3) and frame.dtype == np.uint8


def test_caption_wider_than_its_room_is_cut_to_it_not_a_crash():
    r = Renderer(Style(width=320, height=180, cell=1), ["L0"], np.array([[-1, 1, -1, 1]], float), vmax=2.0,
                 caption="step 1   key 1/1")
    frame = r.frame(np.zeros((1, 2, 2)), "step 1,000,000,000   key 100/100")
    room = r.layout.caption
    assert frame.shape == (180, 320, 3)
    changed = (frame != r.frame(np.zeros((1, 2, 2)), "")).any(-1)  # against a frame without a caption
    assert changed[:, room.x : room.x + room.w].any()
    changed[room.y : room.y + room.h, room.x : room.x + room.w] = False
    assert not changed.any()


# ==== Encoder knobs (--preset, --encoder-threads)
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
