"""layerfilm.AlignedProjection on the user's own arrays gives the film's numbers (the points a render
exports, bit for bit), and refuses bad input in one line."""

from __future__ import annotations

import numpy as np
import pytest

import layerfilm
from layerfilm.errors import LayerfilmError
from layerfilm.points.weights import WeightSpec
from layerfilm.projection.umap import UmapOptions


@pytest.fixture(scope="module")
def raw_points(tiny_run, tmp_path_factory):
    """(T, L, N, D): the tracked rows of every block at every key frame, as the film reads them."""
    opts = layerfilm.FilmOptions(weights=WeightSpec(points=32), cache=False)
    f = layerfilm.Study(layerfilm.scan(tiny_run), opts, progress=False).points()
    return np.stack([f.store[t] for t in range(len(f.store))])


@pytest.mark.parametrize("method", ["pca", "procrustes", pytest.param("umap", marks=pytest.mark.slow)])
def test_fit_transform_equals_the_films_exported_points(tiny_run, tmp_path, raw_points, method):
    # the film in this process (jobs 1: no workers to start and import umap); the estimator at its defaults.
    # Points do not depend on jobs: tests/test_projection_cli.py, test_projection_aligned.py
    opts = layerfilm.FilmOptions(projection=method, weights=WeightSpec(points=32), fps=2, cache=False, jobs=1,
                                 umap=UmapOptions(jobs=1), style=layerfilm.Style(width=320, height=180))
    layerfilm.render(tiny_run, tmp_path / "f.gif", opts, export=tmp_path / "p.npz", progress=False)
    est = layerfilm.AlignedProjection(method)
    xy = est.fit_transform(raw_points)
    assert xy.shape == raw_points.shape[:3] + (2,)
    assert np.array_equal(xy, np.load(tmp_path / "p.npz")["xy"])
    assert est.embedding_ is xy and (method == "umap") == (not hasattr(est, "explained_variance_"))


def test_one_block_of_shape_t_n_d_gives_t_n_2(raw_points):
    xy = layerfilm.AlignedProjection("procrustes").fit_transform(raw_points[:, 1])
    assert xy.shape == (raw_points.shape[0], raw_points.shape[2], 2) and np.isfinite(xy).all()


@pytest.mark.parametrize("kwargs, X, message", [
    ({"method": "tsne"}, np.ones((2, 4, 3)), "unknown projection 'tsne'"),
    ({"fit": "first", "method": "umap"}, np.ones((2, 4, 3)), "fit='first' applies to method 'pca' only, not 'umap'"),
    ({}, np.ones((4, 3)), "X of shape (4, 3): must be (T, N, D) or (T, L, N, D)"),
    ({}, np.full((2, 4, 3), np.nan), "X holds NaN or infinite values"),
])
def test_bad_input_is_one_line(kwargs, X, message):
    with pytest.raises(LayerfilmError) as e:
        layerfilm.AlignedProjection(**kwargs).fit(X)
    assert str(e.value).startswith(message)
