"""Projecting points to the plane (layerfilm.projection): weights that never change never move, pca is
deterministic with shared axes, and the timeline interpolates between key frames."""

import shutil

import numpy as np

from layerfilm.draw.timeline import Timeline, lerp
from layerfilm.film_options import FilmOptions
from layerfilm.io.scan import scan
from layerfilm.points.weights import WeightSpec
from layerfilm.projection import project
from layerfilm.study import Study


def points(folder):
    """The raw key-frame points of ``folder``, 64 per block, as a film reads them."""
    return Study(scan(folder), FilmOptions(weights=WeightSpec(points=64), cache=False), progress=False).points()


def test_unchanged_weights_give_identical_coordinates(tiny_run, tmp_path):
    """A series whose weights never change must not move: same coordinates at every key frame."""
    src = tiny_run / "step_000030.safetensors"
    for step in (0, 100, 200, 300):
        shutil.copy(src, tmp_path / f"step_{step:06d}.safetensors")
    feats = points(tmp_path)
    traj = project(feats, progress=False)
    assert traj.xy.shape == (4, 4, 64, 2)
    for t in range(1, 4):
        np.testing.assert_array_equal(traj.xy[t], traj.xy[0])
    assert np.ptp(traj.xy[0][..., 0]) > 0  # and the points are not collapsed


def test_pca_shares_axes_and_is_deterministic(tiny_run, tmp_path):
    a = project(points(tiny_run), progress=False)
    b = project(points(tiny_run), progress=False)
    assert a.xy.tobytes() == b.xy.tobytes()
    ev = a.stats["explained_variance"]
    assert ev.shape == (4, 2) and np.all(ev[:, 0] >= ev[:, 1]) and np.all(ev.sum(1) <= 1.0 + 1e-6)
    # consecutive key frames of real training move less than the cloud's spread: no flips
    spread = a.xy.std(axis=2).mean()
    jumps = np.linalg.norm(np.diff(a.xy, axis=0), axis=-1).mean(axis=2)
    assert jumps.max() < spread


def test_timeline_and_interpolation():
    tl = Timeline(keyframes=5, fps=15, seconds_per_keyframe=1.0)
    assert tl.n_frames == 4 * 15 + 1
    assert tl.locate(0) == (0, 0.0) and tl.locate(15) == (1, 0.0) and tl.locate(60) == (4, 0.0)
    k, a = tl.locate(22)
    assert k == 1 and abs(a - 7 / 15) < 1e-12
    keys = np.arange(5, dtype=np.float32)[:, None] * np.ones((5, 3), np.float32)
    np.testing.assert_allclose(lerp(keys, k, a), np.full(3, 1 + 7 / 15), rtol=1e-6)
