"""Settled, moving or barely moved (layerfilm.stability.Settling): one definition for `stability`, the film's
marks, the report and watch, that tells a block that stopped from a learning rate that decays for all."""

from __future__ import annotations

import json

import numpy as np

from conftest import FROZEN_BLOCKS, FROZEN_STEP
from layerfilm.draw.overlay import BARELY, MOVING, SETTLED, TRACK
from layerfilm.draw.raster import Style
from layerfilm.film import film_frames, render
from layerfilm.film_options import FilmOptions
from layerfilm.live.film import LiveFilm, LiveOptions, report_line
from layerfilm.points.weights import WeightSpec
from layerfilm.stability import BARELY_MOVED, Settling, calm_index, near_index, relative_motion, settle_index

SMALL = ("--size", "320x180", "--points", "64", "--quiet", "--jobs", "1")
OPTS = FilmOptions(cache=False, jobs=1, fps=1, style=Style(320, 180), weights=WeightSpec(points=64))


def test_rules_exact():
    """Rule (a) (near the end), rule (b) (calm against the median block) and their join, on a series
    whose answer is known by construction: block 0 stops after key frame 1, block 3 slows to a twentieth
    of the others from key frame 2, blocks 1 and 2 keep their pace."""
    nan = np.nan
    update = np.array([[nan] * 4, [1, 1, 1, 1], [0, 1, 1, 0.5], [0, 1, 1, 0.05], [0, 1, 1, 0.05]])
    distance = np.array([[1, 1, 1, 1], [0, 0.6, 0.6, 0.5], [0, 0.4, 0.4, 0.05], [0, 0.2, 0.2, 0.04], [0, 0, 0, 0]])
    median = np.array([nan, 1, 0.75, 0.525, 0.525])
    np.testing.assert_allclose(relative_motion(update)[1:], update[1:] / median[1:, None])
    assert np.isnan(relative_motion(update)[0]).all()
    assert near_index(distance, 0.1).tolist() == [1, -1, -1, 2]
    assert calm_index(update, 0.1).tolist() == [1, 4, 4, 2]
    assert settle_index(near_index(distance, 0.1), update, 0.1).tolist() == [1, -1, -1, 2]
    s = Settling.of(distance, update, 0.1)
    assert s.status(0) == ["moving"] * 4
    assert s.status(1) == ["settled", "moving", "moving", "moving"]
    assert s.status() == ["settled", "moving", "moving", "settled"] and s.moving() == 2
    # a block that never moved, or moved less than the floor, barely moved: at every key frame
    still = Settling.of(distance * BARELY_MOVED * 0.9, update, 0.1)
    assert still.status(0) == still.status() == ["barely moved"] * 4 and still.moving() == 0
    # where most blocks stopped the median is 0 (then the mean counts): those that stopped settle, the
    # one that goes on moves; where every block stopped (a learning rate of 0) none is calm
    three_stopped = np.array([[nan] * 4, [1, 1, 1, 1], [0, 0, 0, 1], [0, 0, 0, 1]])
    assert calm_index(three_stopped, 0.1).tolist() == [1, 1, 1, 3]
    assert calm_index(np.concatenate([three_stopped, np.zeros((1, 4))]), 0.1).tolist() == [4, 4, 4, 4]


def _decay(frozen_from: int | None = None, T: int = 21, L: int = 4, seed: int = 0):
    """Exact blocks W_l(t) = A_l + s(t) D_l moved by a warmup-cosine learning rate that decays to 0 for
    every block alike (s: its running sum), block 0 frozen from key frame ``frozen_from``: (distance, update)."""
    rng = np.random.default_rng(seed)
    a, d = rng.normal(size=(L, 64)), rng.normal(size=(L, 64)) * np.linspace(0.5, 1.5, L)[:, None] * 0.05
    lr = np.minimum(1, (np.arange(T) + 1) / 3) * 0.5 * (1 + np.cos(np.pi * np.arange(T) / T))
    s = np.repeat(np.concatenate([[0], np.cumsum(lr[1:])])[:, None], L, 1)  # (T, L)
    if frozen_from is not None:
        s[frozen_from:, 0] = s[frozen_from, 0]
    w = a[None] + s[..., None] * d[None]  # (T, L, 64)
    norm = np.linalg.norm(w, axis=-1)
    update = np.full((T, L), np.nan)
    update[1:] = np.linalg.norm(np.diff(w, axis=0), axis=-1) / norm[1:]
    return np.linalg.norm(w - w[-1], axis=-1) / norm[-1], update


def test_a_learning_rate_that_decays_for_all_settles_no_block():
    distance, update = _decay()
    assert (near_index(distance, 0.1) >= 0).all()  # distance alone: every block "settles" in the decay
    assert Settling.of(distance, update, 0.1).status() == ["moving"] * 4
    distance, update = _decay(frozen_from=10)  # ... while a block that stops settles where it stopped
    s = Settling.of(distance, update, 0.1)
    assert s.status() == ["settled", "moving", "moving", "moving"] and s.index[0] == 10


def test_a_run_at_lr_1e_7_barely_moved(still_run, run_cli):
    """A real run that learned nothing: no block settled, all barely moved, in stability, the film and watch."""
    code, out, err = run_cli("stability", still_run, "--json", *SMALL[2:])
    assert code == 0, err
    rows = json.loads(out)
    assert [r["status"] for r in rows] == ["barely moved"] * 4
    assert all(r["settle_step"] is None and 0 < r["distance_to_final"][0] < BARELY_MOVED for r in rows)
    # the film (its own points) marks every panel grey on every key frame, and the legend gives the floor
    frames = film_frames(_traj(still_run), OPTS)
    assert all(frames.overlay.status(k) == ["barely moved"] * 4 for k in range(len(frames.steps)))
    assert f"grey: barely moved (changed < {BARELY_MOVED:.0%} over the film)" in frames.renderer.legend.parts
    img = frames.draw(len(frames.steps) - 1, 0.0)
    bars = _bar_colours(img, frames.overlay)
    assert bars <= {tuple(BARELY.astype(np.uint8)), tuple(TRACK)} and tuple(BARELY.astype(np.uint8)) in bars
    # watch: nothing moving, and it says why
    lines, _ = _watch_lines(still_run)
    assert "0 of 4 blocks still moving, 4 barely moved so far" in lines[-1]


def _traj(folder):
    from layerfilm.study import Study
    return Study.open(folder, OPTS, progress=False).trajectories()


def _bar_colours(img: np.ndarray, overlay) -> set[tuple[int, ...]]:
    """The colours of every panel's bottom bar."""
    r, c = overlay.r, overlay.r.cell
    w, h = overlay.size
    return {tuple(px) for ox, oy in r.panels for px in img[oy * c + h - overlay.bar, ox * c : ox * c + w]}


def _watch_lines(folder, **live) -> tuple[list[str], Settling]:
    """watch's printed lines for ``folder``, one checkpoint per update (the live layout, as watch's
    default), and its final statuses."""
    from dataclasses import replace
    out = []
    with LiveFilm(folder, folder.parent / f"{folder.name}-{len(live)}.webm", replace(OPTS, film_layout="live"),
                  LiveOptions(**live)) as film:
        for c in film.new_checkpoints() or film.new_checkpoints():
            out += report_line(film.update([c]), 4)
        assert film.settling is not None
        return out, film.settling


def test_frozen_blocks_settle_where_they_stopped_and_the_others_move(frozen_run, frozen_stability, run_cli, tmp_path):
    """frozen_run: blocks 0 and 3 copied unchanged from step 20 to 40, blocks 1 and 2 training on. The same
    statuses from the whole blocks (stability), the film's points (its marks) and watch (its lines)."""
    st = frozen_stability
    status = dict(zip(st.blocks.tolist(), st.status))
    steps = dict(zip(st.blocks.tolist(), st.settle_steps))
    for b in status:
        assert (status[b], steps[b]) == (("settled", FROZEN_STEP) if b in FROZEN_BLOCKS else ("moving", None))
    code, out, err = run_cli("stability", frozen_run, "--json", *SMALL[2:])
    assert code == 0, err
    assert {r["block"]: r["status"] for r in json.loads(out)} == status
    # the film's marks: from its own points, the same statuses, "settled" drawn from step 20 on
    res = render(frozen_run, tmp_path / "f/", OPTS, progress=False)
    k = list(res.trajectories.steps).index(FROZEN_STEP)
    assert res.overlay.status(len(st.steps) - 1) == [status[b] for b in res.trajectories.blocks.tolist()]
    assert res.overlay.status(k - 1) == ["moving"] * 4
    import imageio.v3 as iio
    frames = sorted((tmp_path / "f").glob("*.png"))
    for key, img in ((k - 1, iio.imread(frames[k - 1])), (k, iio.imread(frames[k]))):
        colours = {tuple(SETTLED.astype(np.uint8)), tuple(MOVING.astype(np.uint8))} & _bar_colours(img, res.overlay)
        assert (tuple(SETTLED.astype(np.uint8)) in colours) == (key >= k)
    # watch: two blocks still moving at the end, from the bounds or from every distance (--json) alike
    for live in ({}, {"json": str(tmp_path / "s.json")}):
        lines, settling = _watch_lines(frozen_run, **live)
        assert "2 of 4 blocks still moving" in lines[-1] and settling.status() == res.overlay.status(k + 2)
    assert [r["status"] for r in json.loads((tmp_path / "s.json").read_text())] == res.overlay.status(k + 2)


def test_a_decaying_run_is_still_moving_at_its_end(tiny_run):
    """tiny_run's learning rate decays to 0 (cosine) for every block: near its end the blocks' distance to the
    final checkpoint is small (the old rule "settled" them all), but none stopped while the others went on."""
    from layerfilm.film_options import StabilityOptions
    from layerfilm.io.scan import scan
    from layerfilm.study import measure

    st = measure(scan(tiny_run), StabilityOptions(weights=WeightSpec(points=64)), progress=False)
    assert (near_index(st.distance_to_final, 0.1) >= 0).all()
    assert st.status == ["moving"] * 4
    lines, _ = _watch_lines(tiny_run)
    assert "4 of 4 blocks still moving" in lines[-1]
