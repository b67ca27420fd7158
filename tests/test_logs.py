"""layerfilm.io.logs (the loss and learning rate a run logged) and layerfilm.draw.curves (their strip under
the film's timeline, in the film, the stills and the report), on real Trainer and Lightning runs."""

from __future__ import annotations

import csv
import json
import shutil
import sys
import warnings

import imageio.v3 as iio
import numpy as np
import pytest

from layerfilm.draw.curves import LOSS, Strip
from layerfilm.draw.raster import CURSOR, Style
from layerfilm.film import film_frames
from layerfilm.film_options import FilmOptions
from layerfilm.io.logs import read_logs
from layerfilm.points.weights import WeightSpec
from layerfilm.study import Study

CSV = ("lightning_logs", "version_0", "metrics.csv")


def pairs(curve) -> list[tuple[int, float]]:
    return list(zip(curve.steps.tolist(), curve.values.tolist()))


def test_trainer_state_of_the_newest_checkpoint(hf_run):
    """Every step's loss, learning rate and gradient norm of the newest checkpoint's log_history."""
    logs = read_logs(hf_run)
    newest = hf_run / "checkpoint-12" / "trainer_state.json"
    assert logs is not None and logs.source == str(newest)
    history = json.loads(newest.read_text())["log_history"]
    for curve, key in ((logs.loss, "loss"), (logs.lr, "learning_rate"), (logs.grad_norm, "grad_norm")):
        assert pairs(curve) == [(e["step"], e[key]) for e in history if key in e]
    assert logs.loss.steps.tolist() == list(range(1, 13))  # the run's summary ("train_loss") is not a step's loss
    top = int(np.argmax(logs.lr.values))  # warm-up, then cosine decay
    assert 0 < top < 11 and (np.diff(logs.lr.values[: top + 1]) > 0).all() and (np.diff(logs.lr.values[top:]) < 0).all()


def test_lightning_csv_logger(lightning_logged, tmp_path):
    """metrics.csv of a CSVLogger: the module's train_loss and LearningRateMonitor's lr-AdamW; also found from
    Lightning's default layout (checkpoints in version_N/checkpoints/, the CSV beside that folder)."""
    path = lightning_logged.joinpath(*CSV)
    logs = read_logs(lightning_logged)
    assert logs is not None and logs.source == str(path) and logs.grad_norm is None
    rows = list(csv.DictReader(path.open()))
    for curve, column in ((logs.loss, "train_loss"), (logs.lr, "lr-AdamW")):
        assert curve.name == column
        assert pairs(curve) == [(int(r["step"]), float(r[column])) for r in rows if r[column]]
    assert len(logs.loss.steps) == 12 and logs.lr.values.argmax() not in (0, 11)  # one cycle: up, then down
    version = tmp_path.joinpath(*CSV[:2])
    shutil.copytree(path.parent, version)
    shutil.copytree(lightning_logged, version / "checkpoints", ignore=shutil.ignore_patterns("lightning_logs"))
    default = read_logs(version / "checkpoints")
    assert default is not None and default.source == str(version / "metrics.csv") and pairs(default.loss) == pairs(logs.loss)


def test_tensorboard_events(tmp_path):
    """Scalars written by TensorBoard's own writer (when the package is installed)."""
    pytest.importorskip("tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(tmp_path / "runs" / "one")) as w:
        for step in range(5):
            w.add_scalar("train/loss", 5.0 / (step + 1), step)
            w.add_scalar("train/learning_rate", 1e-3 * step, step)
    logs = read_logs(tmp_path)
    assert logs is not None and logs.loss.name == "train/loss" and logs.loss.steps.tolist() == list(range(5))
    np.testing.assert_allclose(logs.lr.values, [1e-3 * s for s in range(5)], rtol=1e-6)


def test_tensorboard_missing_or_logs_damaged_are_skipped_with_one_warning(hf_run, lightning_logged, tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "tensorboard" or m.startswith("tensorboard.")] + ["tensorboard"]:
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed: importing it (or a loaded submodule) fails
    events = tmp_path / "events"
    events.mkdir()
    (events / "events.out.tfevents.1.host").write_bytes(b"")
    with pytest.warns(UserWarning) as got:
        assert read_logs(events) is None
    assert [str(w.message) for w in got] == [f"{events}: TensorBoard event files not read (pip install tensorboard to "
                                             "show their loss and learning rate)"]
    # a damaged trainer_state.json (cut in half): one warning, and the CSV beside it is read instead
    run = tmp_path / "run"
    shutil.copytree(lightning_logged, run)
    state = (hf_run / "checkpoint-12" / "trainer_state.json").read_bytes()
    (run / "checkpoint-12").mkdir()
    (run / "checkpoint-12" / "trainer_state.json").write_bytes(state[: len(state) // 2])
    with pytest.warns(UserWarning) as got:
        logs = read_logs(run)
    assert len(got) == 1 and "trainer_state.json: training logs not read" in str(got[0].message)
    assert logs is not None and logs.source == str(run.joinpath(*CSV))
    with warnings.catch_warnings():  # logs found: the event files after them are not even looked at
        warnings.simplefilter("error")
        shutil.copy(events / "events.out.tfevents.1.host", lightning_logged.parent / "unused")
        assert read_logs(lightning_logged) is not None


def test_no_logs(tiny_run):
    assert read_logs(tiny_run) is None


def _film(run, curves: bool, time: str = "keys"):
    opts = FilmOptions(weights=WeightSpec(points=64), style=Style(640, 360), fps=4, curves=curves, time=time)
    study = Study.open(run, opts, progress=False)
    return film_frames(study.trajectories(), opts, study.logs())


def _strip_rows(film) -> slice:
    r = film.renderer
    top = r._timeline[2] + r.timeline_h + r.legend_px // 4
    return slice(top, top + r.strip_h - r.legend_px // 4)


def _columns(img: np.ndarray, colour: np.ndarray) -> np.ndarray:
    return np.flatnonzero((img == colour.astype(np.uint8)).all(-1).any(0))


def test_strip_under_the_timeline_follows_the_loss_and_the_cursor(lightning_logged):
    on, off = _film(lightning_logged, True), _film(lightning_logged, False)
    strip = on.renderer.strip
    assert isinstance(strip, Strip) and off.renderer.strip is None
    rows = _strip_rows(on)
    first, last = on.draw(0, 0.0), on.draw(len(on.steps) - 1, 0.0)
    assert not np.array_equal(first[rows], off.draw(0, 0.0)[rows])
    assert len(_columns(first[rows], LOSS)) > 100 and len(_columns(off.draw(0, 0.0), LOSS)) == 0
    # the loss curve: its highest logged value drawn above its lowest
    x0, x1, _ = on.renderer._timeline
    band = first[rows]
    def height(i: int) -> float:
        col = int(round(strip.x(strip.loss.steps[i : i + 1], x0, x1)[0]))
        return float(np.median(np.flatnonzero((band[:, col] == LOSS.astype(np.uint8)).all(-1))))
    hi, lo = int(np.argmax(strip.loss.values)), int(np.argmin(strip.loss.values))
    assert height(hi) < height(lo)
    # the cursor: at each key frame's step, moving right with the film, the timeline's cursor above it
    xs = []
    for f in range(on.n_frames):
        img = on.frame(f)
        cols = _columns(img[rows], CURSOR)
        y = on.renderer._timeline[2]
        assert len(cols) and set(cols) <= set(_columns(img[y : y + on.renderer.timeline_h], CURSOR))
        xs.append(cols.mean())
    assert (np.diff(xs) > 0).all()
    for k, f in enumerate(on.timeline.key_frames):
        assert int(round(strip.x(on.steps[k : k + 1], x0, x1)[0])) in _columns(on.frame(int(f))[rows], CURSOR)
    assert not np.array_equal(first[rows], last[rows])


def test_stills_and_report_show_the_curves(lightning_logged, run_cli, tmp_path):
    small = ("--size", "640x360", "--points", "64", "--quiet")
    for name, flags in (("on", ()), ("off", ("--no-curves",))):
        assert run_cli("stills", lightning_logged, "--out", tmp_path / f"{name}.png", *small, *flags)[0] == 0
    on, off = iio.imread(tmp_path / "on.png")[..., :3], iio.imread(tmp_path / "off.png")[..., :3]
    assert on.shape == off.shape == (360, 640, 3)
    assert len(_columns(on[-80:], LOSS)) > 100 and len(_columns(off, LOSS)) == 0
    assert run_cli("report", lightning_logged, "--out", tmp_path / "r.md", *small)[0] == 0
    assert len(_columns(iio.imread(tmp_path / "r_stills.png")[..., :3], LOSS)) > 100
