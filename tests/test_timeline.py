"""layerfilm.draw.timeline: `--time auto` follows the checkpoints' spacing, and skipped checkpoints show as a
dashed gap on the legend's timeline."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest

from layerfilm.draw.raster import BACKGROUND, TRACK, Style
from layerfilm.draw.timeline import Timeline, even, resolve_time, skips
from layerfilm.film import film_frames
from layerfilm.film_options import FilmOptions
from layerfilm.io.scan import scan
from layerfilm.points.weights import WeightSpec
from layerfilm.study import Study

PYTHIA = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000, 2000, 3000, 4000]


@pytest.mark.parametrize("steps, gaps", [
    ([0, 10, 20, 30], ()),  # even
    ([0, 10, 20, 40, 50], (2,)),  # one checkpoint missing
    ([0, 10, 30, 40, 70, 80], (1, 3)),  # one, then two missing
    ([0, 500, 1000, 1500, 1734], ()),  # a Trainer's last save comes early: shorter, not a skip
    (PYTHIA, ()),  # mostly 1000 apart, the early doublings closer: nothing skipped
    ([0, 1, 2, 4, 8, 16, 32, 64], ()),  # log-spaced: no usual spacing, no skips
])
def test_skips_are_gaps_of_the_usual_spacing_or_more(steps, gaps):
    assert skips(np.array(steps)) == gaps
    assert resolve_time("auto", np.array(steps)) == ("keys" if even(np.array(steps)) else "steps")
    for time in ("keys", "steps", "log-steps"):  # an explicit choice is kept
        assert resolve_time(time, np.array(steps)) == time


def _frames(folder, **opts):
    opts = FilmOptions(cache=False, jobs=1, fps=2, style=Style(320, 180), weights=WeightSpec(points=16), **opts)
    return film_frames(Study.open(folder, opts, progress=False).trajectories(), opts)


def _track(frames) -> tuple[np.ndarray, list[int]]:
    """The timeline's track row of the first frame (drawn before the cursor moves), and the ticks' x."""
    r = frames.renderer
    x0, x1, y = r._timeline
    return frames.draw(0, 0.0)[y, :], [x for _, x in r._ticks]


def test_auto_time_is_keys_for_evenly_spaced_checkpoints(tiny_run):
    frames = _frames(tiny_run)
    steps = np.array(scan(tiny_run).steps)
    assert frames.timeline == Timeline.of(steps, 2.0, 1.0, "keys") and frames.time == "keys"
    assert "time: a key frame every 1 s, as checkpoints are evenly spaced (ticks above: key frames)" in \
        frames.renderer.legend.parts
    row, ticks = _track(frames)
    assert not (row[ticks[0] + 1 : ticks[-1]] == BACKGROUND).all(axis=-1).any()  # one solid track


def test_a_skipped_checkpoint_gets_its_time_and_a_dashed_gap(run_copy, run_cli, tmp_path):
    """tiny_run without step 30: auto picks steps (20 -> 40 lasts twice as long as 10 -> 20), the legend says
    so, and the timeline is dashed between the ticks of steps 20 and 40, and only there."""
    (run_copy / "step_000030.safetensors").unlink()
    steps = np.array(scan(run_copy).steps)
    frames = _frames(run_copy)
    assert frames.timeline == Timeline.of(steps, 2.0, 1.0, "steps") != Timeline.of(steps, 2.0, 1.0, "keys")
    at = frames.timeline.key_frames
    assert at[3] - at[2] > at[2] - at[1]
    assert ("time: proportional to the step, as checkpoints are unevenly spaced (ticks above: key frames; dashed: 1 "
            "gap of skipped checkpoints)") in frames.renderer.legend.parts
    row, ticks = _track(frames)
    background = (row == BACKGROUND).all(axis=-1)
    track = (row == TRACK).all(axis=-1)
    assert background[ticks[2] + 1 : ticks[3]].any() and track[ticks[2] + 1 : ticks[3]].any()  # dashed ...
    assert not background[ticks[0] : ticks[2]].any() and not background[ticks[3] : ticks[-1]].any()  # ... only there
    # the command line's default is that film: its panels equal --time steps' on every frame
    films = {}
    for name, extra in {"auto": (), "steps": ("--time", "steps")}.items():
        code, _, err = run_cli("render", run_copy, "--out", tmp_path / f"{name}/", "--size", "320x180", "--fps", "2",
                               "--points", "16", "--quiet", "--jobs", "1", *extra)
        assert code == 0, err
        films[name] = [iio.imread(p) for p in sorted((tmp_path / name).glob("*.png"))]
    assert len(films["auto"]) == len(films["steps"]) == frames.n_frames
    head = frames.renderer.footer
    assert all(np.array_equal(a[:-head], b[:-head]) for a, b in zip(films["auto"], films["steps"]))
