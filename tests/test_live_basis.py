"""The live film's pca basis (layerfilm.live.film, ``refit``): refitted on all key frames as they double,
turned onto the film's previous points at each refit, and the share of the newest key frame's variance
it shows in ``--json``, on the tiny real run fed one checkpoint at a time."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from layerfilm.draw.raster import Style
from layerfilm.film_options import FilmOptions
from layerfilm.io.scan import scan
from layerfilm.live.film import DOUBLING, LiveFilm, LiveOptions, parse_refit, refit_due, report_line
from layerfilm.points.weights import WeightSpec
from layerfilm.projection.linear import PcaBasis
from layerfilm.study import Study

BASIS_OPTS = FilmOptions(cache=False, jobs=1, fps=2, style=Style(width=320, height=180), weights=WeightSpec(points=32),
                         film_layout="live")


def fits(every: int, K: int) -> list[int]:
    """The film sizes (key frames) at which the basis is fitted when K key frames come one at a time."""
    out, fitted = [], 0
    for T in range(1, K + 1):
        if refit_due(every, T, fitted):
            out.append(T)
            fitted = T
    return out


def test_doubling_refits_about_log2_k_times():
    assert parse_refit("doubling") == DOUBLING and LiveOptions().refit == "doubling"
    assert fits(DOUBLING, 40) == [1, 2, 3, 5, 9, 17, 33]
    for K in range(2, 600):  # ~log2 K refits, the last on at least K/2 key frames: O(K) rows read in all
        assert len(fits(DOUBLING, K)) == 2 + math.floor(math.log2(K - 1)) and 2 * fits(DOUBLING, K)[-1] > K
    assert fits(0, 9) == [1] and fits(1, 4) == [1, 2, 3, 4] and fits(3, 10) == [1, 4, 7, 10]  # never, always, every=3


def _corr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(L, 2) per block and axis the correlation of points a and b (T, L, N, 2), pooled over T."""
    a = a - a.mean(axis=(0, 2), keepdims=True)
    b = b - b.mean(axis=(0, 2), keepdims=True)
    return (a * b).sum((0, 2)) / np.sqrt((a * a).sum((0, 2)) * (b * b).sum((0, 2)))


@pytest.fixture(scope="module")
def grown(tiny_run, tmp_path_factory):
    """tiny_run's 7 checkpoints added one update each with refit=doubling and --json; what each refit
    turned (the unturned and turned points of the film's frames so far, and those frames before)."""
    out = tmp_path_factory.mktemp("grown")
    turns = []
    real = PcaBasis.aligned

    def spy(self, coords, ref):
        turned = real(self, coords, ref)
        turns.append((self.rotate(coords), turned.rotate(coords), ref))
        return turned

    mp = pytest.MonkeyPatch()
    mp.setattr(PcaBasis, "aligned", spy)
    try:
        with LiveFilm(tiny_run, out / "live.webm", BASIS_OPTS, LiveOptions(json=str(out / "live.json"))) as film:
            found = film.new_checkpoints() or film.new_checkpoints()
            lines = [report_line(film.update([c]), 4) for c in found]
            words = film.traj.subject.projection
    finally:
        mp.undo()
    return {"film": film, "turns": turns, "lines": lines, "words": words,
            "json": json.loads((out / "live.json").read_text())}


def test_the_basis_is_refit_as_key_frames_double(grown):
    film = grown["film"]
    assert film.steps == [0, 10, 20, 30, 40, 50, 60]
    assert film.refits == [0, 10, 20, 40] and film.fitted == 5  # at 1, 2, 3 and 5 key frames
    # the viewer is told: in the printed line of the update that brought it, and in the legend's words
    said = [i for i, lines in enumerate(grown["lines"]) if "new basis" in lines[-1]]
    assert said == [2, 4] and "new basis at step 20: PCA of 3 key frames" in grown["lines"][2][-1]
    assert grown["words"] == "new basis at step 40: PCA of 5 key frames"


def test_a_refit_keeps_the_points_orientation(grown):
    """Before and after each refit, the frames filmed so far keep every axis's direction (the turned new
    basis correlates positively with the old on each axis); PCA's own signs and order flip on this run."""
    assert len(grown["turns"]) == 3  # the refits that replaced a basis: at 2, 3 and 5 key frames
    raw_flips = 0
    for raw, turned, before in grown["turns"]:
        assert (_corr(turned, before) > 0.2).all()
        raw_flips += int((_corr(raw, before) < 0).sum())
    assert raw_flips >= 3


def test_json_gives_the_newest_key_frames_explained_variance(grown, tiny_run):
    """Per block, the share of the newest key frame's variance in its 2-D points: computed here from the
    rows and the film's points, and at least 0.8x render --stats (fit all) on every block; a basis fitted
    on the random initialisation (refit=never) shows far less."""
    film, blocks = grown["film"], grown["json"]
    rows = Study(scan(tiny_run), BASIS_OPTS, progress=False).points().store[len(film.steps) - 1]  # (L, N, D)
    xy = film.traj.xy[-1].astype(np.float64)
    want = ((xy - xy.mean(1, keepdims=True)) ** 2).sum((1, 2)) / ((rows - rows.mean(1, keepdims=True)) ** 2).sum((1, 2))
    got = np.array([b["explained_variance"] for b in blocks])
    assert np.allclose(got, want, rtol=1e-4) and {"settle_step", "point_distance", "motion"} <= set(blocks[0])
    rendered = Study(scan(tiny_run), BASIS_OPTS, progress=False).trajectories().stats["explained_variance"].sum(1)
    assert (got >= 0.8 * rendered).all(), got / rendered
    with LiveFilm(tiny_run, film.out.parent / "never.webm", BASIS_OPTS, LiveOptions(refit="never")) as never:
        never.update(never.new_checkpoints() or never.new_checkpoints())
        assert (never.newest_explained() < 0.7 * rendered).all()
