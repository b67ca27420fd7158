"""Drawing and encoding frames (layerfilm.draw.raster, layerfilm.video.encode): the panel grid, bit-exact
webm, PNG folders and GIFs, a failed encode leaves nothing, the output kinds, points placed in their panels."""

import numpy as np
import pytest

from layerfilm.draw.raster import Renderer, Style, grid_shape
from layerfilm.errors import OptionsError
from layerfilm.video.encode import open_film, output_kind


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
