"""The projection options of ``layerfilm render``: --projection, --fit, --umap-*, --jobs, --stats."""

from __future__ import annotations

import numpy as np
import pytest

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
