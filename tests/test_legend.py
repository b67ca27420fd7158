"""The legend: its words and numbers come from the film's own arrays (the plan, the trajectories, the
renderer's densities), the colour scale's rule, points kept off labels and edges, --time's key-frame
positions, per-key-frame zoom of activation films, and --no-legend."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest

from layerfilm.draw.legend import SEP, VMAX_PERCENTILE, scale_top
from layerfilm.draw.overlay import bar_text
from layerfilm.draw.raster import Style
from layerfilm.draw.timeline import Timeline
from layerfilm.film import FilmFrames, caption, film_renderer
from layerfilm.film_options import FilmOptions
from layerfilm.io.scan import scan
from layerfilm.points import Subject
from layerfilm.points.weights import WeightSpec, plan
from layerfilm.projection import Trajectories
from layerfilm.study import Study

POINTS = 16  # of tiny_run's 128 c_fc neurons: a sample, which the legend must say


@pytest.fixture(scope="module")
def traj(tiny_run):
    return Study.open(tiny_run, FilmOptions(weights=WeightSpec(points=POINTS), jobs=1, cache=False), progress=False
                    ).trajectories()


def test_legend_words_are_the_plans_and_the_projections_numbers(tiny_run, traj):
    wp = plan(scan(tiny_run), WeightSpec(points=POINTS))
    r = film_renderer(traj, Style(1280, 720), FilmOptions(), bar=True)
    text = SEP.join(r.rows)
    assert SEP.join(r.legend.parts) == text  # every phrase is drawn (nothing cut at 720p)
    n, of = wp.point_ids.shape[1], wp.shape[0]
    assert n < of and f"{wp.component}: {n:,} of {of:,} output neurons (a seeded sample, --points), weights" in text
    ev = traj.stats["explained_variance"].astype(np.float64).sum(axis=1)
    assert f"PCA pooled over {len(traj.steps)} key frames; axes explain {np.median(ev):.0%} of the variance" in text
    assert f"run: {tiny_run.name}" in text and bar_text(traj.stats["point_update"]) in text
    # the same words come back from the cache's layout
    again = Trajectories.from_arrays(traj.to_arrays())
    assert again.subject == traj.subject and again.subject.sampled()
    assert "subject_what" not in again.stats


def test_all_neurons_are_not_called_a_sample(tiny_run):
    t = Study.open(tiny_run, FilmOptions(weights=WeightSpec(points=4096), jobs=1, cache=False), progress=False).trajectories()
    assert t.subject.points == t.subject.of == t.xy.shape[2]
    text = SEP.join(film_renderer(t, Style(1280, 720)).rows)
    assert f"mlp.c_fc.weight: all {t.subject.of:,} output neurons, weights" in text and "sample" not in text


def test_colour_scale_top_is_the_stated_percentile_of_key_frame_maxima(traj):
    r = film_renderer(traj, Style(640, 360))
    maxima = np.array([r.density(traj.xy[k]).max() for k in range(len(traj.steps))])
    assert r.vmax == max(np.ceil(np.percentile(maxima, VMAX_PERCENTILE) - 1e-9), 2.0)  # a whole count, 2 at least
    vmax, clipped = scale_top(maxima)
    assert clipped == (maxima > r.vmax * (1 + 1e-9)).sum()
    # the colour bar in the header runs from the scale's first colour to its top colour
    top = r.lut[-1]
    head = r.base[: r.header]
    assert np.all(head == top, axis=-1).any() and not np.all(r.base[r.header:] == top, axis=-1).any()


def test_one_outlier_key_frame_does_not_set_the_scale():
    """Key frame 0 is every point on one spot (an init blob): it clips, the others fill the scale."""
    rng = np.random.default_rng(0)
    T, L, N = 9, 2, 400
    xy = rng.normal(0, 1, (T, L, N, 2)).astype(np.float32)
    xy[0] = 0.01 * xy[0]
    traj = Trajectories(np.arange(T) * 10, np.arange(L), np.tile(np.arange(N), (L, 1)), xy, "pca")
    r = film_renderer(traj, Style(640, 360))
    maxima = r.key_maxima(traj.xy)
    assert maxima[0] > 5 * maxima[1:].max()  # the construction: one outlier frame
    assert r.vmax <= np.sort(maxima)[-2]  # below the outlier
    level = np.log1p(maxima[1:]) / np.log1p(r.vmax)
    assert level.min() > 0.75  # every other key frame reaches the top quarter of the scale
    assert (np.log1p(maxima[1:]) / np.log1p(maxima.max())).max() < 0.6  # with the blob at the top: washed out
    assert scale_top(maxima)[1] >= 1
    assert scale_top(np.array([1.0, 2, 3, 4, 100])) == (4.0, 1)


@pytest.mark.parametrize("size,L", [((1280, 720), 8), ((1920, 1080), 128), ((640, 360), 4)])
def test_points_stay_off_labels_and_panel_edges(size, L):
    rng = np.random.default_rng(1)
    T, N = 3, 300
    xy = rng.uniform(-1, 1, (T, L, N, 2)).astype(np.float32)
    xy[:, :, :4] = [[-1, -1], [1, 1], [-1, 1], [1, -1]]  # the extent's corners
    traj = Trajectories(np.arange(T), np.arange(L), np.tile(np.arange(N), (L, 1)), xy, "pca")
    r = film_renderer(traj, Style(*size))
    img = r.frame(traj.xy[1], "step 1")
    c = r.cell
    points = np.zeros(img.shape[:2], bool)
    for ox, oy in r.origin:  # the points' areas, in pixels
        points[oy * c : (oy + r.bins[1]) * c, ox * c : (ox + r.bins[0]) * c] = True
    changed = (img != r.base).any(-1)
    changed.ravel()[r.labels_at] = False
    changed[: r.header] = False  # the caption
    assert changed.any() and not (changed & ~points).any()
    pbw, pbh = r.panel_bins
    for (px, py), (ox, oy) in zip(r.panels, r.origin):
        assert ox > px and ox + r.bins[0] < px + pbw  # a margin at both sides
        assert oy > py and (oy + r.bins[1]) * c <= (py + pbh) * c - r.bar_px  # a strip for the label; the bar
    # and the labels' pixels are nowhere inside a points' area
    labels = np.zeros(img.shape[:2], bool)
    labels.ravel()[r.labels_at] = True
    assert not (labels & points).any()


PYTHIA = np.array([0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000, 2000, 3000, 4000])


@pytest.mark.parametrize("time", ["keys", "steps", "log-steps"])
def test_time_modes_place_every_key_frame_on_a_frame_of_its_own(time):
    fps, spk = 10.0, 0.5
    tl = Timeline.of(PYTHIA, fps, spk, time)
    T, n = len(PYTHIA), (len(PYTHIA) - 1) * 5 + 1
    assert tl.n_frames == n == Timeline(T, fps, spk).n_frames  # the frame count rule does not change
    at = tl.key_frames
    assert at[0] == 0 and at[-1] == n - 1 and np.all(np.diff(at) >= 1)
    for k, f in enumerate(at):
        assert tl.locate(int(f)) == (k, 0.0)
    assert [tl.locate(f)[0] for f in range(n)] == sorted(tl.locate(f)[0] for f in range(n))
    if time == "keys":
        assert list(at) == [5 * k for k in range(T)]
    elif time == "steps":  # proportional to the step where that leaves each key frame a frame
        ideal = np.round((n - 1) * PYTHIA / PYTHIA[-1])
        free = np.flatnonzero(np.diff(ideal) >= 2) + 1  # from 1000 on, steps are far apart
        assert list(at[free[-3:]]) == list(ideal[free[-3:]])
        assert at[-2] - at[-3] == pytest.approx((n - 1) * 1000 / 4000, abs=1)
    else:  # log(1 + step): the doublings 8, 16, ..., 512 are evenly spaced (1, 2, 4 a little closer)
        gaps = np.diff(at[4:11])
        assert gaps.max() - gaps.min() <= 1
        ideal = np.round((n - 1) * np.log1p(PYTHIA) / np.log1p(PYTHIA[-1]))
        assert np.abs(at - ideal).max() <= 1


def _grey_text(img: np.ndarray) -> int:
    """Pixels of the legend's light grey words (panels are magma, bars blue or green)."""
    px = img.astype(int)
    return int(((px.min(-1) > 150) & (px.max(-1) - px.min(-1) < 20)).sum())


def test_caption_step_runs_as_film_time_does():
    steps = np.array([0, 100, 1100])
    assert caption(steps, 0, 0.5).startswith("step 50 ") and caption(steps, 1, 0.0).startswith("step 100 ")
    assert caption(steps, 0, 0.5, "log-steps").startswith(f"step {round(np.sqrt(101) - 1)} ")  # log(1+s) halfway
    assert caption(steps, 1, 0.5, "log-steps").startswith(f"step {round(np.sqrt(101 * 1101) - 1):,} ")


def test_render_time_log_steps_and_no_legend(tiny_run, run_cli, tmp_path):
    args = (tiny_run, "--size", "320x180", "--fps", "2", "--points", "16", "--quiet", "--jobs", "1")
    films = {}
    for name, extra in {"keys": (), "log": ("--time", "log-steps"), "off": ("--no-legend",)}.items():
        code, _, err = run_cli("render", *args, "--out", tmp_path / f"{name}/", *extra)
        assert code == 0, err
        films[name] = [iio.imread(p) for p in sorted((tmp_path / name).glob("*.png"))]
    assert {len(f) for f in films.values()} == {(7 - 1) * 2 + 1}  # --time keeps the frame count
    # without the legend there are no words under the panels; with it there are
    assert _grey_text(films["off"][0][120:]) == 0 and _grey_text(films["keys"][0][120:]) > 50
    # log-steps puts key frame k on the frame Timeline.of says: the panels there are key frame k's
    at = Timeline.of(np.arange(0, 61, 10), 2.0, 1.0, "log-steps").key_frames
    assert list(at) != [2 * k for k in range(7)]
    for k, f in enumerate(at):
        assert np.array_equal(films["log"][f][:120], films["keys"][2 * k][:120])


def test_stills_no_legend(tiny_run, run_cli, tmp_path):
    base = ("stills", tiny_run, "--size", "320x180", "--points", "16", "--quiet")
    assert run_cli(*base, "--out", tmp_path / "on.png")[0] == 0
    assert run_cli(*base, "--out", tmp_path / "off.png", "--no-legend")[0] == 0
    assert not np.array_equal(iio.imread(tmp_path / "on.png"), iio.imread(tmp_path / "off.png"))


def test_activation_film_zooms_each_key_frame_to_its_spread():
    """Key frame 0 is 1000x smaller than the others (random-init activations): with one extent it would
    be a dot; zoomed per key frame it covers as many bins as the others, and the legend says so."""
    rng = np.random.default_rng(2)
    T, L, N = 4, 3, 300
    xy = rng.normal(0, 1, (T, L, N, 2)).astype(np.float32)
    xy[0] *= 1e-3
    subject = Subject("block outputs", "activations", N, 1024, "probe tokens", "PCA pooled over 4 key frames", "run")
    traj = Trajectories(np.arange(T), np.arange(L), np.tile(np.arange(N), (L, 1)), xy, "pca", {}, subject)
    r = film_renderer(traj, Style(640, 360))
    frame = FilmFrames.of(traj, FilmOptions(), r).draw
    covered = [((frame(k, 0.0) != r.base).any(-1)[r.header : -r.footer]).sum() for k in range(T)]
    assert covered[0] > 0.5 * min(covered[1:])
    assert "block outputs: 300 of 1,024 probe tokens (a seeded sample, --points), activations" in SEP.join(r.rows)
    assert "axes zoom to each key frame's spread" in SEP.join(r.rows)
    plain = Trajectories(traj.steps, traj.blocks, traj.point_ids, xy, "pca")  # weights: one extent, a dot
    rp = film_renderer(plain, Style(640, 360))
    dot = ((FilmFrames.of(plain, FilmOptions(), rp).draw(0, 0.0) != rp.base).any(-1)[rp.header : -rp.footer]).sum()
    assert dot < 0.1 * covered[0]
