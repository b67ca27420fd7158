"""Projections (layerfilm.projection).

Projecting points to the plane (layerfilm.projection): weights that never change never move, pca is
deterministic with shared axes, and the timeline interpolates between key frames.

Truthfulness of the aligned projections, on series whose answer is known by construction.

The projection options of ``layerfilm render``: --projection, --fit, --umap-*, --jobs, --stats.

layerfilm.AlignedProjection on the user's own arrays gives the film's numbers (the points a render
exports, bit for bit), and refuses bad input in one line."""

from __future__ import annotations

import importlib
import shutil

import numpy as np
import pytest

import layerfilm
from layerfilm.draw.timeline import Timeline, lerp
from layerfilm.errors import LayerfilmError
from layerfilm.film_options import FilmOptions
from layerfilm.io.scan import scan
from layerfilm.points import Features, FeatureStore
from layerfilm.points.weights import WeightSpec
from layerfilm.projection import coherence, project
from layerfilm.projection.umap import UmapOptions
from layerfilm.study import Study


# ==== Projecting points to the plane (layerfilm.projection)
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


# ==== Truthfulness of the aligned projections, on series whose answer is known by construction
P = importlib.import_module("layerfilm.projection.linear")
UMAP_SMALL = {"options": UmapOptions(jobs=1, epochs=60, place_epochs=15, neighbors=8)}


def make_features(frames: list[np.ndarray], folder) -> Features:
    store = FeatureStore(folder)
    for x in frames:
        store.append(x)
    L, N = frames[0].shape[:2]
    return Features(np.arange(len(frames), dtype=np.int64) * 100, np.arange(L, dtype=np.int64),
                    np.tile(np.arange(N, dtype=np.int64), (L, 1)), "synthetic", store)


def drifting(T=6, L=3, N=96, D=12, frozen=(1, 2, 3), seed=0) -> list[np.ndarray]:
    """Random-walk point clouds with a decaying spectrum; block ``frozen[0]`` does not change between
    key frames ``frozen[1]`` and ``frozen[2]`` (its weights are copied bitwise)."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((L, N, D)) * np.geomspace(3, 0.2, D)).astype(np.float32)
    out = [x]
    for t in range(1, T):
        x = x + 0.15 * rng.standard_normal((L, N, D)).astype(np.float32)
        if t == frozen[2]:
            x[frozen[0]] = out[-1][frozen[0]]
        out.append(x.copy())
    return out


@pytest.mark.parametrize("method,kwargs,tol", [("pca", {}, 0.0), ("pca", {"fit": "last"}, 0.0),
                                               ("procrustes", {}, 0.0), ("umap", UMAP_SMALL, 0.01)])
def test_unchanged_block_does_not_move(tmp_path, method, kwargs, tol):
    traj = project(make_features(drifting(), tmp_path), method, progress=False, **kwargs)
    ext = traj.extent()
    width = ext[:, 1] - ext[:, 0]  # (L,) panel extent
    still = np.abs(traj.xy[3, 1] - traj.xy[2, 1]).max() / width[1]
    assert still <= tol
    if tol == 0.0:
        np.testing.assert_array_equal(traj.xy[3, 1], traj.xy[2, 1])
        assert traj.stats["motion"][1, 2] == 0.0
    moving = np.abs(traj.xy[3, 0] - traj.xy[2, 0]).max() / width[0]
    assert moving > max(10 * tol, 1e-3)  # the blocks that changed did move


def rotating(T=8, N=200, D=10, angle=0.03, seed=1) -> tuple[list[np.ndarray], np.ndarray]:
    """One matrix rotated a little each step in D dimensions: X_t = X_0 Q^t, Q = exp(angle * K), K skew.
    Returns the frames (one block) and the true per-point displacement (T-1, N) in D dimensions."""
    rng = np.random.default_rng(seed)
    x0 = rng.standard_normal((N, D)) * np.geomspace(4, 0.3, D)
    x0 -= x0.mean(axis=0)
    k = rng.standard_normal((D, D))
    k = (k - k.T) / np.linalg.norm(k - k.T, 2)
    w, v = np.linalg.eig(angle * k)
    q = (v @ np.diag(np.exp(w)) @ np.linalg.inv(v)).real  # the rotation exp(angle K)
    xs = [x0]
    for _ in range(T - 1):
        xs.append(xs[-1] @ q)
    true = np.stack([np.linalg.norm(b - a, axis=1) for a, b in zip(xs, xs[1:])])
    return [x[None].astype(np.float32) for x in xs], true


def flip_signs(monkeypatch, seed: int) -> None:
    """Make every eigen-solve return its axes with random signs, per key frame (naive per-frame PCA)."""
    rng = np.random.default_rng(seed)
    ritz = P._ritz

    def flipped(q, cq, total):
        axes, rot, ratio = ritz(q, cq, total)
        s = rng.choice([-1.0, 1.0], size=(axes.shape[0], 1, axes.shape[2]))
        return (axes * s).astype(np.float32), rot * s, ratio

    monkeypatch.setattr(P, "_ritz", flipped)


@pytest.fixture
def random_signs(monkeypatch):
    flip_signs(monkeypatch, 7)


@pytest.mark.parametrize("method", ["pca", "procrustes"])
def test_rotation_with_sign_flips_moves_smoothly(tmp_path, method, random_signs):
    frames, true = rotating()
    traj = project(make_features(frames, tmp_path), method, progress=False)
    shown = np.linalg.norm(np.diff(traj.xy[:, 0], axis=0), axis=-1)  # (T-1, N) on screen
    assert np.all(shown <= true * (1 + 1e-3) + 1e-4)  # no jump larger than the true rotation implies
    # and naive per-frame PCA with those sign flips would jump by far more than the rotation implies
    rng = np.random.default_rng(3)
    naive = []
    for x in frames:
        xc = x[0] - x[0].mean(axis=0)
        vt = np.linalg.svd(xc, full_matrices=False)[2][:2]
        naive.append(xc @ (vt.T * rng.choice([-1.0, 1.0], 2)))
    assert np.linalg.norm(np.diff(naive, axis=0), axis=-1).max() > 10 * true.max()


def test_procrustes_ignores_axis_signs(tmp_path, monkeypatch):
    frames = drifting(frozen=(0, 0, 0))
    a = project(make_features(frames, tmp_path / "a"), "procrustes", progress=False)
    flip_signs(monkeypatch, 11)
    b = project(make_features(frames, tmp_path / "b"), "procrustes", progress=False)
    # chained frames agree with the unflipped run up to one fixed rotation/reflection of the whole film
    r = P.procrustes_rotation(b.xy.transpose(1, 0, 2, 3).reshape(3, -1, 2), a.xy.transpose(1, 0, 2, 3).reshape(3, -1, 2))
    aligned = np.einsum("tlni,lij->tlnj", b.xy, r)
    assert np.abs(aligned - a.xy).max() < 1e-3 * np.abs(a.xy).max()


def test_pca_explained_variance_matches_exact_pca(tmp_path):
    frames = drifting(frozen=(0, 0, 0))
    traj = project(make_features(frames, tmp_path), "pca", progress=False)
    pooled = np.concatenate(frames, axis=1).astype(np.float64)  # (L, T*N, D)
    for l in range(pooled.shape[0]):
        xc = pooled[l] - pooled[l].mean(axis=0)
        s = np.linalg.svd(xc, compute_uv=False) ** 2
        ratio, exact = traj.stats["explained_variance"][l].astype(np.float64), s[:2] / s.sum()
        # two passes of subspace iteration: the axes capture (almost) the top-2 variance, never more (Ky Fan)
        assert 0.99 * exact.sum() <= ratio.sum() <= exact.sum() * (1 + 1e-5)
        np.testing.assert_allclose(ratio, exact, rtol=2e-2)
        # the reported ratio is exactly the variance of the cloud on screen (orthonormal axes)
        shown = traj.xy[:, l].reshape(-1, 2).astype(np.float64)
        np.testing.assert_allclose(shown.var(axis=0) * len(shown) / s.sum(), ratio, rtol=1e-4)


def test_coherence_known_motion():
    xy = np.zeros((3, 1, 4, 2), np.float32)
    xy[0, 0] = [[1, 0], [-1, 0], [0, 1], [0, -1]]  # RMS spread 1
    xy[1] = xy[0] + np.array([0.5, 0], np.float32)  # every point moves 0.5
    xy[2] = xy[1]
    c = coherence(xy)
    np.testing.assert_allclose(c["motion"], [[0.5, 0.0]], rtol=1e-6)
    assert c["motion_mean"][0] == pytest.approx(0.25) and c["motion_max"][0] == pytest.approx(0.5)


@pytest.mark.parametrize("method,kwargs", [("pca", {}), ("procrustes", {}), ("umap", UMAP_SMALL)])
def test_same_seed_same_bytes(tmp_path, method, kwargs):
    frames = drifting(T=4, L=2, N=64)
    a = project(make_features(frames, tmp_path / "a"), method, progress=False, **kwargs)
    b = project(make_features(frames, tmp_path / "b"), method, progress=False, **kwargs)
    assert a.xy.tobytes() == b.xy.tobytes()


def test_umap_learns_compiled_functions_are_cached_on_disk():
    """umap-learn compiles the graph and Procrustes functions a layout calls without numba's cache: after
    the projection's import of umap they are cached, so a worker loads them instead of compiling them."""
    from numba.core.caching import NullCache
    from umap import aligned_umap, umap_

    import layerfilm.projection.umap as U

    U._umap()
    for fn in (umap_.smooth_knn_dist, umap_.compute_membership_strengths, aligned_umap.procrustes_align):
        assert not isinstance(fn._cache, NullCache), fn.py_func.__name__


@pytest.mark.slow
def test_similarities_match_umap(tmp_path):
    """Our vectorised neighbourhood similarities equal umap-learn's own on real fuzzy graphs."""
    import numba
    from umap.aligned_umap import build_neighborhood_similarities

    import layerfilm.projection.umap as U

    frames = drifting(T=4, L=1, N=40, D=6, frozen=(0, 0, 0))
    opts = UmapOptions(neighbors=6)
    graphs = [U._graph(x[0], opts, np.random.RandomState(0)) for x in frames]
    rel = U._relations(len(graphs), 40, opts.window)
    ip, ix = numba.typed.List(), numba.typed.List()
    for g in graphs:
        ip.append(g.indptr.astype(np.int32))
        ix.append(g.indices.astype(np.int32))
    expected = build_neighborhood_similarities(ip, ix, rel)
    assert expected.max() > 0
    np.testing.assert_allclose(U.similarities(graphs, rel), expected, rtol=1e-6)


@pytest.mark.slow
def test_epoch_matches_umap():
    """Our compiled aligned epoch makes exactly umap-learn's updates (same random numbers and order)."""
    import numba
    from umap.layouts import _optimize_layout_aligned_euclidean_single_epoch as theirs
    from umap.umap_ import find_ab_params, make_epochs_per_sample

    import layerfilm.projection.umap as U

    frames, opts, epochs = drifting(T=4, L=1, N=60, D=6, frozen=(0, 0, 0)), UmapOptions(neighbors=6, alignment=0.05), 3
    graphs = [U._graph(x[0], opts, np.random.RandomState(0)) for x in frames]
    start = [np.random.default_rng(i).standard_normal((60, 2)).astype(np.float32) for i in range(4)]
    rel = U._relations(4, 60, opts.window)
    L = numba.typed.List
    heads, rows, cols, eps, neg, next_neg, next_s = L(), L(), L(), L(), L(), L(), L()
    for i, (g, e) in enumerate(zip(graphs, start)):
        coo = g.tocoo()
        e_p_s = np.full(coo.nnz, epochs + 1.0) if i == 1 else make_epochs_per_sample(coo.data, epochs)
        for lst, arr in ((heads, e.copy()), (rows, coo.row.astype(np.int32)), (cols, coo.col.astype(np.int32)),
                         (eps, e_p_s), (neg, (e_p_s / 5).astype(np.float32)),
                         (next_neg, (e_p_s / 5).astype(np.float32)), (next_s, e_p_s.astype(np.float32))):
            lst.append(arr)
    a, b = find_ab_params(1.0, opts.min_dist)
    seed = np.random.RandomState(5).randint(np.iinfo(np.int32).min + 1, np.iinfo(np.int32).max - 1, 3).astype(np.int64)
    epoch = numba.njit(theirs, fastmath=True)
    for n in range(epochs):
        epoch(heads, heads, rows, cols, eps, a, b, U.similarities(graphs, rel), rel, seed, 1.0, opts.alignment, 2, True,
              1.0 - n / epochs, neg, next_neg, next_s, n)
    ours = U._optimize(start, graphs, {1}, epochs, opts, np.random.RandomState(5), True)
    assert np.abs(ours - start).max() > 0.1
    np.testing.assert_array_equal(ours, np.stack(list(heads)))


# ==== The projection options of ``layerfilm render``
COMMON = ("--points", "32", "--size", "320x240", "--fps", "1", "--quiet")


@pytest.mark.parametrize("method", ["pca", "procrustes"])
def test_stats_table_and_export(tiny_run, tmp_path, run_cli, method):
    code, out, err = run_cli("render", tiny_run, "--out", tmp_path / "f.gif", "--projection", method, "--stats",
                             "--export-points", tmp_path / "p.npz", *COMMON)
    assert code == 0, err
    z = np.load(tmp_path / "p.npz")
    assert z["xy"].shape == (7, 4, 32, 2) and z["motion"].shape == (4, 6) and z["explained_variance"].shape == (4, 2)
    rows = [r.split() for r in out.strip().splitlines()[2:]]
    assert [r[0] for r in rows] == ["L0", "L1", "L2", "L3"]
    np.testing.assert_allclose([float(r[1]) for r in rows], z["motion_mean"], atol=1e-4)
    np.testing.assert_allclose([float(r[2]) for r in rows], z["motion"].max(axis=1), atol=1e-4)


@pytest.mark.slow
def test_umap_export_is_seeded_and_independent_of_jobs(tiny_run, tmp_path, run_cli):
    opts = ("--projection", "umap", "--umap-neighbors", "6", "--umap-min-dist", "0.2", "--umap-alignment", "0.05", *COMMON)
    for jobs in ("1", "2"):
        code, _, err = run_cli("render", tiny_run, "--out", tmp_path / f"f{jobs}.gif", "--jobs", jobs,
                               "--export-points", tmp_path / f"p{jobs}.npz", *opts)
        assert code == 0, err
    a, b = np.load(tmp_path / "p1.npz"), np.load(tmp_path / "p2.npz")
    assert a["xy"].tobytes() == b["xy"].tobytes() and np.isfinite(a["xy"]).all()
    assert "explained_variance" not in a.files and a["motion"].shape == (4, 6)
    code, _, _ = run_cli("render", tiny_run, "--out", tmp_path / "g.gif", "--jobs", "1", "--seed", "1",
                         "--export-points", tmp_path / "s1.npz", *opts)
    assert code == 0 and np.load(tmp_path / "s1.npz")["xy"].tobytes() != a["xy"].tobytes()


@pytest.mark.parametrize("args,message", [
    (("--projection", "procrustes", "--fit", "first"), "layerfilm: error: --fit first applies to --projection pca only, not "
     "procrustes\n"),
    (("--projection", "umap", "--umap-neighbors", "1"), "layerfilm: error: --umap-neighbors 1: must be at least 2\n"),
    (("--projection", "umap", "--umap-min-dist", "2"), "layerfilm: error: --umap-min-dist 2.0: must be between 0 and 1\n"),
])
def test_bad_projection_options_one_line(tiny_run, tmp_path, run_cli, args, message):
    code, out, err = run_cli("render", tiny_run, "--out", tmp_path / "f.gif", *args, *COMMON)
    assert code == 2 and err == message and not (tmp_path / "f.gif").exists()


# ==== layerfilm.AlignedProjection on the user's own arrays gives the film's numbers (the points a render exports, bit for bit)...
@pytest.fixture(scope="module")
def raw_points(tiny_run, tmp_path_factory):
    """(T, L, N, D): the tracked rows of every block at every key frame, as the film reads them."""
    opts = layerfilm.FilmOptions(weights=WeightSpec(points=32), cache=False)
    f = layerfilm.Study(layerfilm.scan(tiny_run), opts, progress=False).points()
    return np.stack([f.store[t] for t in range(len(f.store))])


@pytest.mark.parametrize("method", ["pca", "procrustes", pytest.param("umap", marks=pytest.mark.slow)])
def test_fit_transform_equals_the_films_exported_points(tiny_run, tmp_path, raw_points, method):
    # the film in this process (jobs 1: no workers to start and import umap); the estimator at its defaults.
    # Points do not depend on jobs: tests/test_projection.py, test_projection.py
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
