"""Live films (layerfilm.live.film, layerfilm.callbacks): `watch` on a folder filled while it runs, the
Trainer and Lightning callbacks on real training runs, and SIGTERM during an update."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from layerfilm.errors import OptionsError
from layerfilm.live.film import LiveFilm, LiveOptions, Readiness, parse_refit

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
    script's own workers are tests/test_processes.py's)."""
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
