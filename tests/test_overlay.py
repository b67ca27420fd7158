"""layerfilm.draw.overlay and `render --no-overlay`: the per-panel "still moving" bar and "settled" mark."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest

from conftest import FROZEN_BLOCKS, FROZEN_STEP
from layerfilm.draw.overlay import MOVING, SETTLED, TRACK, Overlay, moving_level
from layerfilm.draw.raster import Style
from layerfilm.film import caption, film_renderer


def test_moving_level_is_log_scaled_and_zero_when_frozen(frozen_stability):
    st = frozen_stability
    level = moving_level(st.relative_update)
    assert level.shape == st.relative_update.shape
    assert level.max() == 1.0 and level.min() >= 0
    k = list(st.steps).index(FROZEN_STEP)
    frozen = [list(st.blocks).index(b) for b in FROZEN_BLOCKS]
    assert np.all(level[k + 1 :, frozen] == 0)
    # an update 10x smaller than the fastest is one third shorter (3 decades span the bar)
    rel = st.relative_update[1:]
    i = np.unravel_index(np.nanargmin(np.where(rel > 0, rel, np.nan)), rel.shape)
    expected = 1 + np.log10(rel[i] / np.nanmax(rel)) / 3
    assert level[1:][i] == pytest.approx(max(expected, 0))


def _bar(img, overlay, l):
    c = overlay.r.cell
    ox, oy = overlay.r.panels[l]
    w, h = overlay.size
    return img[oy * c + h - overlay.bar, ox * c : ox * c + w]


def test_bar_and_settled_mark_are_drawn_where_expected(frozen_stability):
    st = frozen_stability
    r = film_renderer(st.trajectories, Style(640, 360))
    ov = Overlay.of(r, st)
    level = moving_level(st.relative_update)
    k = list(st.steps).index(FROZEN_STEP)
    last = len(st.steps) - 1
    for key in (1, last):
        plain = r.frame(st.trajectories.xy[key], caption(st.steps, key, 0.0))
        img = plain.copy()
        ov(img, key, 0.0)
        for l, b in enumerate(st.blocks):
            bar = _bar(img, ov, l)
            n = int(round(level[key, l] * ov.size[0]))
            settled = key >= k and b in FROZEN_BLOCKS
            colour = (SETTLED if settled else MOVING).astype(np.uint8)
            assert np.all(bar[:n] == colour) and np.all(bar[n:] == TRACK)
            # the "settled" text is green-ish pixels in the panel's top right, and only there
            c = r.cell
            ox, oy = r.panels[l]
            corner = img[oy * c : oy * c + r.label_px * 2, ox * c + ov.size[0] // 2 : ox * c + ov.size[0]].astype(int)
            green = (corner[..., 1] - corner[..., 0] > 60).sum()
            assert (green > 20) == settled, (key, b, green)
        # nothing else changes: the panel interiors above the bar are the renderer's
        assert np.array_equal(img[: r.header], plain[: r.header])


def test_render_no_overlay_gives_the_plain_frames(frozen_run, run_cli, tmp_path):
    args = (frozen_run, "--size", "320x180", "--fps", "2", "--points", "64", "--jobs", "1", "--quiet")
    assert run_cli("render", *args, "--out", tmp_path / "on/")[0] == 0
    code, _, err = run_cli("render", *args, "--out", tmp_path / "off/", "--no-overlay")
    assert code == 0, err
    on = sorted((tmp_path / "on").glob("*.png"))
    off = sorted((tmp_path / "off").glob("*.png"))
    assert len(on) == len(off) == 9
    moving = MOVING.astype(np.uint8)
    last_on, last_off = iio.imread(on[-1]), iio.imread(off[-1])
    assert not np.all(last_off == moving, axis=-1).any()
    assert np.all(last_on == moving, axis=-1).any()  # blocks 1 and 2 still move at the end
    assert (last_on != last_off).any(axis=-1).mean() < 0.1  # the overlay is thin


def test_film_overlay_measures_the_films_own_points(frozen_run, frozen_stability, tmp_path):
    import layerfilm
    from layerfilm.film_options import FilmOptions
    from layerfilm.io.formats import open_checkpoint
    from layerfilm.points.weights import WeightSpec, plan, read_points

    spec = WeightSpec(points=64)
    res = layerfilm.render(frozen_run, tmp_path / "f/", FilmOptions(weights=spec, style=Style(320, 180), fps=1, jobs=1),
                           progress=False)
    stats = res.trajectories.stats
    # the same points read straight from the checkpoints, measured in float64 without the feature store
    series = layerfilm.scan(frozen_run)
    wp = plan(series, spec)
    pts = []
    for c in series.checkpoints:
        with open_checkpoint(c.path, c.format) as reader:
            pts.append(read_points(reader, wp, c.path).astype(np.float64))
    pts = np.stack(pts)  # (T, L, N, D)
    norm = np.linalg.norm(pts, axis=(2, 3))
    gaps = np.diff(series.steps)
    update = np.linalg.norm(np.diff(pts, axis=0), axis=(2, 3)) / norm[1:] * (np.median(gaps) / gaps)[:, None]
    np.testing.assert_allclose(stats["point_update"][1:], update, rtol=1e-5)
    assert np.isnan(stats["point_update"][0]).all()
    np.testing.assert_allclose(stats["point_distance"], np.linalg.norm(pts - pts[-1], axis=(2, 3)) / norm[-1],
                               rtol=1e-5, atol=1e-12)
    # frozen blocks stop moving exactly, and the film settles them where the whole-block measure does
    k = list(series.steps).index(FROZEN_STEP)
    frozen = [list(res.trajectories.blocks).index(b) for b in FROZEN_BLOCKS]
    assert np.all(stats["point_update"][k + 1:, frozen] == 0)
    assert list(res.overlay.settling.index) == list(frozen_stability.settle_index)
    assert res.overlay.status(len(series.steps) - 1) == frozen_stability.status
    assert sorted(int(b) for b, s in zip(res.trajectories.blocks, res.overlay.settling.index) if s >= 0) == list(FROZEN_BLOCKS)
