"""Live films (layerfilm.live).

Live films (layerfilm.live.film, layerfilm.callbacks): `watch` on a folder filled while it runs, the
Trainer and Lightning callbacks on real training runs, and SIGTERM during an update.

The live film's pca basis (layerfilm.live.film, ``refit``): refitted on all key frames as they double,
turned onto the film's previous points at each refit, and the share of the newest key frame's variance
it shows in ``--json``, on the tiny real run fed one checkpoint at a time.

The live layout (layerfilm.draw.film_layout) and a live film's segment store (layerfilm.video.segments.SegmentStore):
after every update the film holds exactly the frames of a one-shot ``render --film-layout live`` of the
checkpoints so far, and an update whose layout is unchanged encodes only the new key frames' frames."""

from __future__ import annotations

import json
import math
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from layerfilm.draw.film_layout import grid_up, horizon, live_extent, live_scale, live_segments, live_timeline
from layerfilm.draw.legend import zooms
from layerfilm.draw.raster import Style
from layerfilm.draw.timeline import Timeline
from layerfilm.errors import OptionsError
from layerfilm.film import film_frames, film_renderer, film_timeline, render
from layerfilm.film_options import FilmOptions
from layerfilm.io.scan import scan
from layerfilm.live.film import DOUBLING, LiveFilm, LiveOptions, Readiness, parse_refit, refit_due, report_line
from layerfilm.points.weights import WeightSpec
from layerfilm.projection.linear import PcaBasis
from layerfilm.study import Study

# ==== Live films (layerfilm.live.film, layerfilm.callbacks)
ROOT = Path(__file__).resolve().parents[1]
FILM = ["--points", "32", "--size", "320x180", "--fps", "2", "--seconds-per-keyframe", "1"]


def decode(path: Path) -> np.ndarray:
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
    w, h = next(reader)["size"]
    return np.stack([np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in reader])


def same_arrays(a: Path, b: Path) -> None:
    x, y = np.load(a), np.load(b)
    assert sorted(x.files) == sorted(y.files)
    for k in x.files:
        assert np.array_equal(x[k], y[k], equal_nan=x[k].dtype.kind == "f"), k


class Watch:
    """`layerfilm watch` in a child process (signals need one), its stdout lines collected by a thread."""

    def __init__(self, folder: Path, out: Path, *extra: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen([sys.executable, "-m", "layerfilm", "watch", str(folder), "--out", str(out),
                                      "--quiet", *FILM, *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=env)
        self.lines: queue.Queue[str] = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def line(self, timeout: float = 120) -> str:
        return self.lines.get(timeout=timeout)

    def stop(self) -> tuple[int, str]:
        """SIGTERM; (exit code, stderr) once it has exited."""
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=120)
        self.reader.join(timeout=10)
        assert self.proc.stderr is not None
        return self.proc.returncode, self.proc.stderr.read()


def test_refit_and_options_are_checked(tiny_run, tmp_path):
    assert [parse_refit(t) for t in ("never", "always", "every=3")] == [0, 1, 3]
    for bad in ("sometimes", "every=0", "every=", "doubling=2"):
        with pytest.raises(OptionsError, match="refit="):
            parse_refit(bad)
    with pytest.raises(OptionsError, match="interval="):
        LiveOptions(interval=0)
    from layerfilm.film_options import FilmOptions

    with pytest.raises(OptionsError, match="refit=doubling: a fixed basis is pca's"):
        LiveFilm(tiny_run, tmp_path / "f.webm", FilmOptions(projection="umap"), LiveOptions())
    with pytest.raises(OptionsError, match="fit=last"):
        LiveFilm(tiny_run, tmp_path / "f.webm", FilmOptions(fit="last"), LiveOptions())


def test_readiness_waits_for_complete_checkpoints(tmp_path):
    ready = Readiness(tmp_path)
    growing = tmp_path / "step_10.safetensors"
    growing.write_bytes(b"x" * 10)
    (tmp_path / "tmp-checkpoint-5").mkdir()  # Trainer's folder being written: never
    (tmp_path / "tmp-checkpoint-5" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-4").mkdir()  # Trainer's marker: complete at once
    (tmp_path / "checkpoint-4" / "model.safetensors").write_bytes(b"y")
    (tmp_path / "checkpoint-4" / "trainer_state.json").write_text("{}")
    ready.poll()
    assert ready(tmp_path / "checkpoint-4") and not ready(growing) and not ready(tmp_path / "tmp-checkpoint-5")
    with open(growing, "ab") as f:
        f.write(b"x")
    ready.poll()
    assert not ready(growing)  # it grew since the last poll
    ready.poll()
    assert ready(growing) and not ready(tmp_path / "tmp-checkpoint-5")


@pytest.mark.slow
def test_watch_filled_one_checkpoint_at_a_time_equals_a_render(tiny_run, tmp_path, run_cli):
    """watch on an empty folder while tiny_run is copied in, each file half-written first: the film and
    its points equal a one-shot render with the same fixed basis (--fit first) and layout (watch's default,
    --film-layout live); SIGTERM after: exit 0; the key frames are left in the cache, so a render afterwards
    reads no checkpoint."""
    folder, out = tmp_path / "run", tmp_path / "out"
    folder.mkdir()
    out.mkdir()
    w = Watch(folder, out / "live.webm", "--interval", "0.3", "--refit", "never", "--export-points", str(out / "live.npz"),
              "--json", str(out / "live.json"), "--stills", str(out / "live.png"))
    names = sorted(p.name for p in tiny_run.glob("*.safetensors"))
    steps = []
    for name in names:
        data = (tiny_run / name).read_bytes()
        with open(folder / name, "wb") as f:  # half of it, then the rest: never read half-written
            f.write(data[: len(data) // 2])
            f.flush()
            time.sleep(0.05)
            f.write(data[len(data) // 2:])
        line = w.line()
        assert line.startswith(f"key frame: step {int(name[5:11]):,}, ")
        steps.append(int(name[5:11]))
    code, err = w.stop()
    assert code == 0, err
    assert "skipped" not in err and "warning" not in err
    code, _, err = run_cli("render", folder, "--out", out / "once.webm", "--fit", "first", "--no-cache", "--quiet",
                           "--film-layout", "live", *FILM, "--jobs", "1", "--export-points", out / "once.npz")
    assert code == 0, err
    same_arrays(out / "live.npz", out / "once.npz")
    assert list(np.load(out / "live.npz")["steps"]) == steps
    assert np.array_equal(decode(out / "live.webm"), decode(out / "once.webm"))
    blocks = json.loads((out / "live.json").read_text())
    assert [b["steps"] for b in blocks] == [steps] * 4 and (out / "live.png").stat().st_size > 0
    code, _, err = run_cli("render", folder, "--out", out / "cached.webm", "--fit", "first", "--film-layout", "live",
                           *FILM)  # reads no checkpoint
    assert code == 0 and "read from the cache" in err, err
    assert np.array_equal(decode(out / "cached.webm"), decode(out / "once.webm"))


def test_refit_always_equals_render_fit_all_and_rereads_no_checkpoint(tiny_run, tmp_path, monkeypatch):
    """--refit always re-projects from the kept rows: equal to render --fit all, each checkpoint opened once."""
    from layerfilm import study  # the one reader: a live film's key frames are read by its Study
    from layerfilm.draw.raster import Style
    from layerfilm.film import render
    from layerfilm.film_options import FilmOptions
    from layerfilm.points.weights import WeightSpec

    opts = FilmOptions(cache=False, jobs=1, fps=2, style=Style(width=320, height=180), weights=WeightSpec(points=32))
    opened: list[Path] = []
    real = study.open_checkpoint
    monkeypatch.setattr(study, "open_checkpoint", lambda p, f: (opened.append(p), real(p, f))[1])
    with LiveFilm(tiny_run, tmp_path / "l.webm", opts, LiveOptions(refit="always", export=str(tmp_path / "l.npz"))) as film:
        found = film.new_checkpoints() or film.new_checkpoints()  # complete after two polls
        for batch in (found[:3], found[3:]):  # two updates: the second refits on all seven
            film.update(batch)
    assert sorted(opened) == sorted(tiny_run.glob("*.safetensors"))
    render(tiny_run, tmp_path / "r.webm", opts, export=tmp_path / "r.npz", progress=False)
    same_arrays(tmp_path / "l.npz", tmp_path / "r.npz")


def test_frozen_blocks_do_not_move(frozen_run, tmp_path):
    """The frozen-block guarantee, live: blocks frozen from step 20 keep their points from then on."""
    from conftest import FROZEN_BLOCKS, FROZEN_STEP
    from layerfilm.draw.raster import Style
    from layerfilm.film_options import FilmOptions

    opts = FilmOptions(cache=False, fps=2, style=Style(width=320, height=180))
    with LiveFilm(frozen_run, tmp_path / "f.webm", opts, LiveOptions()) as film:
        film.ready.poll()
        film.update()
        film.update()
        xy, steps = film.traj.xy, list(film.traj.steps)
    k = steps.index(FROZEN_STEP)
    for b in FROZEN_BLOCKS:
        assert (xy[k:, b] == xy[k, b]).all()
    assert not (xy[k + 1, 1] == xy[k, 1]).all()


def test_sigterm_during_an_update_exits_0_with_complete_outputs(tiny_run, tmp_path):
    out = tmp_path / "live.webm"
    w = Watch(tiny_run, out, "--interval", "0.2", "--json", str(tmp_path / "s.json"))
    partial = tmp_path / f".live.webm.partial-{w.proc.pid}"
    store = tmp_path / f"{partial.name}.live"  # the segment store (layerfilm.video.segments.SegmentStore)
    deadline = time.monotonic() + 120
    # a segment or the film is being written: an update is under way (the native WebM join alone takes ms)
    while not (partial.exists() or any(store.glob("seg_*"))):
        assert time.monotonic() < deadline and w.proc.poll() is None
        time.sleep(0.005)
    code, err = w.stop()
    assert code == 0, err
    keys = w.lines.qsize()
    assert keys == 7  # the update under way (all 7 checkpoints, complete together) was finished
    assert len(decode(out)) == (keys - 1) * 2 + 1
    assert len(json.loads((tmp_path / "s.json").read_text())) == 4
    assert not list(tmp_path.glob(".*partial*"))


def test_callbacks_import_no_framework_unless_used():
    code = ("import sys, layerfilm.callbacks as c; assert not {'transformers', 'lightning'} & set(sys.modules); "
            "c.LayerfilmCallback; assert 'transformers' in sys.modules and 'lightning' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})


def _options(tmp_path: Path) -> dict:
    """A callback's small film, made in its background process alone (jobs=1: no film workers; the training
    script's own workers are tests/test_engine.py's)."""
    return {"out": tmp_path / "film.webm", "points": 16, "size": (320, 180), "fps": 2,
            "export_points": tmp_path / "points.npz", "wait": True, "jobs": 1}


def test_trainer_callback_films_its_checkpoints(example, makers, tmp_path):
    import torch
    import transformers as T

    from layerfilm.callbacks import LayerfilmCallback

    with pytest.raises(OptionsError, match="colour=.*not an option"):
        LayerfilmCallback(out=tmp_path / "x.webm", colour="red")
    torch.manual_seed(0)
    model = T.GPT2LMHeadModel(T.GPT2Config(vocab_size=256, n_positions=32, n_embd=32, n_layer=2, n_head=2))
    data = [{"input_ids": x[0], "labels": x[0]} for x in makers.batches(example, 96, batch=1)]
    args = T.TrainingArguments(output_dir=str(tmp_path / "run"), max_steps=12, save_steps=4, per_device_train_batch_size=8,
                               report_to=[], use_cpu=True, disable_tqdm=True, save_strategy="steps", seed=0)
    callback = LayerfilmCallback(**_options(tmp_path))
    T.Trainer(model=model, args=args, train_dataset=data, callbacks=[callback]).train()
    points = np.load(tmp_path / "points.npz")
    assert list(points["steps"]) == [4, 8, 12] == sorted(int(p.name[11:]) for p in (tmp_path / "run").glob("checkpoint-*"))
    assert len(decode(tmp_path / "film.webm")) == 2 * 2 + 1


def test_trainer_callback_runs_on_rank_0_only(tmp_path):
    from types import SimpleNamespace

    from layerfilm.callbacks import LayerfilmCallback

    callback = LayerfilmCallback(out=tmp_path / "film.webm")
    state = SimpleNamespace(is_world_process_zero=False, global_step=4)
    callback.on_save(SimpleNamespace(output_dir=str(tmp_path)), state, None)
    callback.on_train_end(SimpleNamespace(output_dir=str(tmp_path)), state, None)
    assert callback._proc is None and not (tmp_path / "film.webm").exists()


@pytest.mark.slow
def test_lightning_callback_films_its_checkpoints(example, makers, tmp_path):
    from layerfilm.callbacks import LayerfilmLightningCallback

    makers.fit_lightning(example, makers.gpt_module(example), tmp_path / "run", steps=15, every=5, items=8,
                         callbacks=(LayerfilmLightningCallback(**_options(tmp_path)),))
    assert list(np.load(tmp_path / "points.npz")["steps"]) == [5, 10, 15]
    assert len(list((tmp_path / "run").glob("*.ckpt"))) == 3
    assert len(decode(tmp_path / "film.webm")) == 2 * 2 + 1


def test_a_checkpoint_that_comes_late_is_skipped_not_inserted(tiny_run, tmp_path):
    """Key frames are only appended: an earlier step arriving after a later one is skipped with its reason."""
    from layerfilm.film_options import FilmOptions

    folder = tmp_path / "run"
    folder.mkdir()
    for name in ("step_000000.safetensors", "step_000020.safetensors"):
        shutil.copy(tiny_run / name, folder / name)
    with LiveFilm(folder, tmp_path / "f.webm", FilmOptions(cache=False, fps=2), LiveOptions()) as film:
        film.ready.poll()
        film.update()
        shutil.copy(tiny_run / "step_000010.safetensors", folder / "step_000010.safetensors")
        film.ready.poll()
        with pytest.warns(UserWarning, match="step 10 arrived after step 20"):
            film.update()
        assert film.steps == [0, 20] and film.skipped[0].step == 10


def test_blocks_still_moving_come_from_bounds_equal_to_exact_distances(frozen_run, tmp_path):
    """The printed "blocks still moving" of a film with the overlay and no --json (settling from the
    distance bounds, few rows read back) equal those of a film that computes every distance (--json)."""
    from layerfilm.draw.raster import Style
    from layerfilm.film_options import FilmOptions
    from layerfilm.points.weights import WeightSpec

    opts = FilmOptions(cache=False, jobs=1, fps=2, style=Style(width=320, height=180), weights=WeightSpec(points=32),
                       settle_threshold=0.5, film_layout="live")
    moving, read_back = [], []
    for live in (LiveOptions(), LiveOptions(json=str(tmp_path / "s.json"))):
        with LiveFilm(frozen_run, tmp_path / f"{len(moving)}.webm", opts, live) as film:
            found = film.new_checkpoints() or film.new_checkpoints()
            moving.append([film.update([c]).moving for c in found])
            assert film.bounds is not None
            read_back.append(film.bounds.read_back)
            if live.json is None:
                assert "point_distance" not in film.traj.stats
    assert moving[0] == moving[1] and len(moving[0]) == 5
    assert {m for ms in moving[0][1:] for m in ms} != {4}  # some blocks settle along the way (the frozen ones)
    assert read_back[0] < read_back[1]


# ==== The live film's pca basis (layerfilm.live.film, ``refit``)
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


# ==== The live layout (layerfilm.draw.film_layout) and a live film's segment store (layerfilm.video.segments.SegmentStore)
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
