"""The live layout (layerfilm.draw.film_layout) and a live film's segment store (layerfilm.video.segments.SegmentStore):
after every update the film holds exactly the frames of a one-shot ``render --film-layout live`` of the
checkpoints so far, and an update whose layout is unchanged encodes only the new key frames' frames."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from layerfilm.draw.film_layout import grid_up, horizon, live_extent, live_scale, live_segments, live_timeline
from layerfilm.draw.legend import zooms
from layerfilm.draw.raster import Style
from layerfilm.draw.timeline import Timeline
from layerfilm.film import film_frames, film_renderer, film_timeline, render
from layerfilm.film_options import FilmOptions
from layerfilm.live.film import LiveFilm, LiveOptions
from layerfilm.points.weights import WeightSpec
from test_live import decode

OPTS = FilmOptions(cache=False, jobs=1, fps=2, style=Style(width=320, height=180), weights=WeightSpec(points=16),
                   film_layout="live")


def frames_of(out: Path) -> np.ndarray:
    if out.suffix:
        return decode(out)
    return np.stack([iio.imread(p) for p in sorted(out.iterdir())])


def layout_of(traj, opts: FilmOptions) -> tuple:
    """What every frame shares under the layout: axes, colour scale, static layer (legend), timeline span."""
    r = film_renderer(traj, opts.style, opts, bar=opts.overlay)
    return (r.scale.tobytes(), r.offset.tobytes(), r.vmax, r.base.tobytes(), film_timeline(traj.steps, opts).span,
            r.labels_at.tobytes())


def test_grid_and_horizon():
    assert [horizon(t) for t in (1, 2, 3, 4, 5, 8, 9, 179)] == [2, 2, 4, 4, 8, 8, 16, 256]
    for x in (1e-9, 0.3, 1.0, 5.0, 1234.5):
        g = grid_up(x, 4)
        assert x <= g < x * 2 ** 0.25 + 1e-12 and np.isclose(np.log2(g) * 4, round(np.log2(g) * 4))


def test_live_extent_holds_every_key_frame_and_changes_only_when_points_leave_it():
    rng = np.random.default_rng(0)
    xy = rng.normal(size=(6, 3, 200, 2)).astype(np.float32)
    xy[:, 1] *= 100  # blocks of other scales
    ext = live_extent(xy)
    boxes = zooms(xy)
    assert (ext[:, 0] <= boxes[..., 0].min(0)).all() and (ext[:, 1] >= boxes[..., 1].max(0)).all()
    assert (ext[:, 2] <= boxes[..., 2].min(0)).all() and (ext[:, 3] >= boxes[..., 3].max(0)).all()
    assert np.allclose(ext[:, 1] - ext[:, 0], ext[:, 3] - ext[:, 2])  # equal scale on both axes
    inside = np.concatenate([xy, xy[2:3] * 0.5])  # a key frame well inside: the same axes
    assert np.array_equal(live_extent(inside), ext)
    outside = np.concatenate([xy, xy[2:3] * 3])  # one far outside: the axes grow, never shrink
    grown = live_extent(outside)
    assert (grown[:, 0] <= ext[:, 0]).all() and (grown[:, 1] >= ext[:, 1]).all() and not np.array_equal(grown, ext)
    drift = xy * np.linspace(1, 2, 6)[:, None, None, None] + np.linspace(0, 3, 6)[:, None, None, None]
    changes = 0
    for t in range(1, 6):  # key frame by key frame: kept while the new key frame's box is inside in every panel
        a, b, box = live_extent(drift[:t]), live_extent(drift[: t + 1]), zooms(drift[t : t + 1])[0]
        inside = (box[:, 0] >= a[:, 0]) & (box[:, 1] <= a[:, 1]) & (box[:, 2] >= a[:, 2]) & (box[:, 3] <= a[:, 3])
        assert np.array_equal(a, b) == inside.all() and (b[:, 1] - b[:, 0] >= a[:, 1] - a[:, 0]).all()
        if not inside.all():  # every panel at once, each holding all its key frames' boxes
            changes += 1
            assert (b[:, 0] <= box[:, 0]).all() and (b[:, 1] >= box[:, 1]).all()
    assert 0 < changes < 5  # the drift leaves the axes, and the headroom keeps it from doing so at every key frame


def test_live_scale_is_monotone_and_on_its_grid():
    m = np.array([90.0, 3, 4, 5, 6, 7, 30, 2])
    tops = [live_scale(m[:t])[0] for t in range(1, len(m) + 1)]
    assert all(a <= b for a, b in zip(tops, tops[1:]))
    grid = {max(np.ceil(2 ** (i / 2) - 1e-9), 2.0) for i in range(40)}  # half octaves, up to whole counts
    assert all(t in grid for t in tops)
    assert live_scale(m)[1] == bool((m > live_scale(m)[0]).any())


@pytest.mark.parametrize("time", ["keys", "steps", "log-steps"])
def test_live_timeline_keeps_earlier_key_frames_in_place(time):
    """Appending key frames moves none of the earlier ones while the horizon (key frames, and the step
    span for steps and log-steps) stays; segments cut at key frames, the last key frame's frame alone."""
    steps = np.array([0, 1, 2, 4, 8, 16, 32, 50, 64, 100, 128])
    g = np.log1p(steps.astype(float)) if time == "log-steps" else steps.astype(float)
    full = live_timeline(steps, 4, 1.0, time)
    kept = 0
    for t in range(2, len(steps)):
        tl = live_timeline(steps[:t], 4, 1.0, time)
        assert tl.n_frames == tl.key_frames[-1] + 1 and (np.diff(tl.key_frames) >= 1).all()
        if time == "keys" or (horizon(t) == horizon(len(steps)) and grid_up(g[t - 1], 1) == grid_up(g[-1], 1)):
            assert list(tl.key_frames) == list(full.key_frames[:t])
            kept += 1
        segs = live_segments(tl, 3)
        assert segs[0][0] == 0 and segs[-1] == (tl.n_frames - 1, tl.n_frames)
        assert all(b == c for (_, b), (c, _) in zip(segs, segs[1:]))
    assert kept >= 1
    assert Timeline(3, 4, 1.0, span=20).position(2, 0.0) == 8 / 20


def grow(tiny_run: Path, folder: Path, out: Path, opts: FilmOptions, live: LiveOptions, batches: list[int]):
    """Copy tiny_run's checkpoints into ``folder`` in batches, one update each; after each update (two key
    frames or more) yield (update, film frames, the frames of render --film-layout live of the folder so far)."""
    names = sorted(p.name for p in tiny_run.glob("*.safetensors"))
    folder.mkdir()
    with LiveFilm(folder, out, opts, live) as film:
        done = 0
        for n in batches:
            for name in names[done:done + n]:
                shutil.copy(tiny_run / name, folder / name)
            done += n
            film.ready.poll()
            film.ready.poll()  # unchanged across two polls: complete
            up = film.update()
            assert len(up.steps) == n
            if len(film.steps) < 2:
                continue
            once = out.parent / f"once-{done}{out.suffix}"
            render(folder, once, replace(opts, fit="first" if live.every == 0 else "all"), progress=False)
            yield film, up, frames_of(out), frames_of(once)


@pytest.mark.parametrize("kind, overlay, time", [(".webm", False, "keys"), ("", True, "keys"), (".webm", True, "steps")])
def test_live_updates_equal_a_render_and_encode_only_new_frames(tiny_run, tmp_path, kind, overlay, time):
    opts = replace(OPTS, overlay=overlay, time=time)
    layouts, same, changed = [], 0, 0
    for film, up, live_frames, once_frames in grow(tiny_run, tmp_path / "run", tmp_path / f"live{kind}", opts,
                                                   LiveOptions(refit="never"), [2, 1, 1, 1, 1, 1]):
        assert live_frames.shape == once_frames.shape
        assert np.array_equal(live_frames, once_frames)  # bit for bit (WebM lossless, PNG)
        n = len(live_frames)
        layouts.append((layout_of(film.traj, opts), n))
        if len(layouts) == 1 or layouts[-1][0] != layouts[-2][0]:
            changed += 1
            assert up.encoded == n  # a new layout: every frame
        else:
            same += 1
            assert up.encoded == n - layouts[-2][1] + 1  # the new key frame's interval, and its own last frame
    assert same >= 2 and changed >= 2  # both kinds of update happened (the horizons double at 3 and 5)
    if overlay:  # bars, but no settled marks: the newest key frame could move them on any earlier frame
        assert film.segments is not None and film_frames(film.traj, opts).overlay.settling is None
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # the store is removed


def test_refit_always_reencodes_every_frame_and_equals_a_render(tiny_run, tmp_path):
    first: list[np.ndarray] = []
    for film, up, live_frames, once_frames in grow(tiny_run, tmp_path / "run", tmp_path / "live.webm", OPTS,
                                                   LiveOptions(refit="always"), [2, 2, 3]):
        assert np.array_equal(live_frames, once_frames)
        first.append(film.traj.xy[0].copy())
        assert up.encoded == len(live_frames)  # the refit moved the old points
    assert not np.array_equal(first[0], first[-1])


def test_refit_doubling_comes_with_the_horizon_and_encodes_no_more(tiny_run, tmp_path):
    """A refit (doubling, the default) moves every old point, at the updates where the live timeline's
    horizon doubles and every frame is encoded anyway; the updates between encode only the new key frame's
    interval while the layout holds (amortised O(1) frames a key frame, as refit=never)."""
    with LiveFilm(tiny_run, tmp_path / "live.webm", OPTS, LiveOptions()) as film:
        found = film.new_checkpoints() or film.new_checkpoints()
        film.update(found[:1])
        kinds, layout, n = [], None, 1
        for c in found[1:]:
            fits = len(film.refits)
            up = film.update([c])
            T, m = len(film.steps), len(frames_of(film.out))
            refit, new_layout = len(film.refits) > fits, layout_of(film.traj, OPTS)
            assert refit == (T in (2, 3, 5)) and (not refit or T == 2 or horizon(T) > horizon(T - 1))  # 2: the first film
            assert up.encoded == (m if refit or new_layout != layout else m - n + 1)
            kinds.append((refit, new_layout == layout))
            layout, n = new_layout, m
    assert (False, True) in kinds and (True, False) in kinds


def test_a_live_gif_is_reencoded_whole(tiny_run, tmp_path):
    with LiveFilm(tiny_run, tmp_path / "live.gif", OPTS, LiveOptions()) as film:
        film.ready.poll()
        up = film.update()
        assert film.segments is None and up.encoded == len(decode(tmp_path / "live.gif")) == 13


def test_render_fit_layout_is_unchanged_by_default(tiny_run, tmp_path):
    """--film-layout fit (render's default) keeps the whole-film layout: "key k/T" and counted clipping."""
    assert FilmOptions().film_layout == "fit"
    a, b = tmp_path / "fit.webm", tmp_path / "live.webm"
    render(tiny_run, a, replace(OPTS, film_layout="fit"), progress=False)
    render(tiny_run, b, OPTS, progress=False)
    x, y = decode(a), decode(b)
    assert x.shape == y.shape and not np.array_equal(x[-1], y[-1])
