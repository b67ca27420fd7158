"""Finite but huge weights (issue 11): a real training run with every tensor times 1e38, still finite
float32, films and measures like the run itself: exit 0, finite output, the projected points the same
up to a scale per block, and the scale-free measures (relative update, distance to final, CKA, motion)
the same as the unscaled run's."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from layerfilm.film_options import FilmOptions
from layerfilm.io.scan import scan
from layerfilm.points import FeatureStore, in_safe_range, safe_scale
from layerfilm.points.measures import sum_sq
from layerfilm.projection import project
from layerfilm.study import Study

SCALE = 1e38
RTOL = 1e-4


@pytest.fixture(scope="session")
def huge_run(tiny_run, tmp_path_factory):
    """`tiny_run` with every floating tensor multiplied by 1e38 (in float32: still finite)."""
    from safetensors.numpy import load_file, save_file

    out = tmp_path_factory.mktemp("huge_run")
    for f in sorted(tiny_run.glob("*.safetensors")):
        state = load_file(str(f))
        scaled = {k: v * v.dtype.type(SCALE) if v.dtype.kind == "f" else v for k, v in state.items()}
        assert all(np.isfinite(v).all() for v in scaled.values())
        assert max(float(np.abs(v).max()) for v in scaled.values()) > 1e37
        save_file(scaled, str(out / f.name))
    return out


@pytest.mark.parametrize("projection", ["pca", "procrustes"])
def test_render_of_huge_weights_is_a_film(run_cli, huge_run, tmp_path, projection):
    out = tmp_path / "x.webm"
    code, _, err = run_cli("render", huge_run, "--out", out, "--size", "320x180", "--fps", "2", "--jobs", "1", "--quiet",
                           "--no-cache", "--projection", projection, "--export-points", tmp_path / "p.npz")
    assert code == 0, err
    assert "Traceback" not in err and "warning" not in err
    assert out.stat().st_size > 0
    with np.load(tmp_path / "p.npz") as z:
        assert z["xy"].shape[:2] == (7, 4)
        for n in (n for n in z.files if z[n].dtype.kind != "U"):  # all but the method name; point_update is NaN at t = 0
            assert np.isfinite(z[n][1:] if n == "point_update" else z[n]).all(), n


def test_stability_of_huge_weights_is_finite_and_the_same(run_cli, huge_run, tiny_run):
    code, out, err = run_cli("stability", huge_run, "--json")
    assert code == 0, err
    assert "Traceback" not in err and "warning" not in err
    huge = json.loads(out)
    code, out, _ = run_cli("stability", tiny_run, "--json")
    ref = json.loads(out)
    assert [r["block"] for r in huge] == [r["block"] for r in ref]  # the same ranking
    for h, r in zip(huge, ref):
        assert h["settle_step"] == r["settle_step"]
        for key in ("relative_update", "distance_to_final", "cka_to_final", "motion"):
            assert [v is None for v in h[key]] == [v is None for v in r[key]], key
            got = [v for v in h[key] if v is not None]
            want = [v for v in r[key] if v is not None]
            assert all(math.isfinite(v) for v in got), key
            np.testing.assert_allclose(got, want, rtol=RTOL, atol=1e-9, err_msg=key)
        np.testing.assert_allclose(h["norm"], np.array(r["norm"]) * SCALE, rtol=RTOL)


@pytest.fixture(scope="module")
def both_features(tiny_run, huge_run):
    return [Study(scan(run), FilmOptions(cache=False), progress=False).points() for run in (tiny_run, huge_run)]


def test_point_measures_of_huge_weights_are_the_same(both_features):
    ref, huge = both_features
    for key in ("point_update", "point_distance"):
        a, b = ref.stats[key], huge.stats[key]
        assert np.array_equal(np.isnan(a), np.isnan(b))
        np.testing.assert_allclose(b[~np.isnan(b)], a[~np.isnan(a)], rtol=RTOL, atol=1e-12, err_msg=key)


@pytest.mark.parametrize("projection", ["pca", "procrustes"])
def test_projected_points_are_the_same_up_to_a_scale_per_block(both_features, projection):
    ref, huge = (project(f, projection, progress=False) for f in both_features)
    assert np.isfinite(huge.xy).all()
    for l in range(ref.xy.shape[1]):
        a, b = ref.xy[:, l].astype(np.float64), huge.xy[:, l].astype(np.float64)
        c = np.vdot(a, b) / np.vdot(a, a)  # the block's scale: 1e38 times a power of two
        assert c > 0
        np.testing.assert_allclose(b, c * a, atol=RTOL * np.abs(b).max())
    for key in ("explained_variance", "motion"):
        np.testing.assert_allclose(huge.stats[key], ref.stats[key], rtol=RTOL, atol=1e-6, err_msg=key)


def test_ordinary_blocks_are_used_bit_for_bit(tmp_path):
    """Only out-of-range blocks are rescaled, by powers of two; ordinary ones stay as they are."""
    store = FeatureStore(tmp_path)
    x = np.random.default_rng(0).standard_normal((3, 5, 4)).astype(np.float32)
    x[1] *= np.float32(3e37)
    x[2] *= np.float32(1e-30)
    store.append(x)
    scale = safe_scale(store.max_abs)
    assert scale[0] == 1 and np.log2(scale[1:]).tolist() == np.round(np.log2(scale[1:])).tolist()
    y = in_safe_range(store)[0]
    assert np.array_equal(y[0], x[0])
    top = np.abs(x[1:]).reshape(2, -1).max(1).astype(np.float64)
    assert scale[1:].tolist() == (2.0 ** -np.floor(np.log2(top))).tolist()  # each brought to [1, 2) by its exponent
    assert np.array_equal(y, x * scale[:, None, None])  # each block exactly times its power of two
    ordinary = FeatureStore(tmp_path / "ordinary")
    ordinary.append(x[:1])
    assert in_safe_range(ordinary) is ordinary


def test_sum_sq_survives_float32_overflow_and_underflow():
    x = np.random.default_rng(1).standard_normal((3, 8, 16)).astype(np.float32)
    x /= np.abs(x).max()  # |x| <= 1: x times 3e38 is finite
    want = np.einsum("lnd,lnd->l", x.astype(np.float64), x.astype(np.float64))
    np.testing.assert_allclose(sum_sq(x), want, rtol=1e-6)
    for s in (1e38, 1e-30):
        np.testing.assert_allclose(sum_sq(x * np.float32(s)) / s**2, want, rtol=1e-5)
    y = -x * np.float32(3e38)  # x - y overflows float32 where |x| > 0.57
    np.testing.assert_allclose(sum_sq(x * np.float32(3e38), y), want * (6e38) ** 2, rtol=1e-5)
