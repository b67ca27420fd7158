"""The live film on the training's dashboards (layerfilm.live.dashboards): W&B in its offline mode and
TensorBoard's event files, read back and compared with the film's own stability JSON and the film.

The fast tests call the Trainer callback's hooks as transformers.Trainer does (real TrainingArguments
and TrainerState) on the checkpoints of a real Trainer run (``hf_run``); a slow one trains for real."""

from __future__ import annotations

import io
import json
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest

from layerfilm.live.dashboards import table_rows

pytest.importorskip("transformers")
STEPS = (4, 8, 12)  # hf_run's checkpoints


def decode(path: Path) -> np.ndarray:
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
    w, h = next(reader)["size"]
    return np.stack([np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in reader])


def callback(tmp_path: Path, wait: bool = True):
    """The Trainer callback of a small film, made in its background process alone (jobs=1: no film workers;
    the dashboards are the point)."""
    from layerfilm.callbacks import LayerfilmCallback

    return LayerfilmCallback(out=tmp_path / "film.webm", points=16, size=(320, 180), fps=2, json=tmp_path / "s.json",
                             wait=wait, jobs=1)


def train_through_hooks(cb, run: Path, report_to: list[str]) -> None:
    """The hooks transformers.Trainer calls for a training that saved ``run``'s checkpoints (its own run,
    read only: the outputs go to tmp)."""
    import transformers as T

    args = T.TrainingArguments(output_dir=str(run), report_to=report_to, use_cpu=True)
    state, control = T.TrainerState(), T.TrainerControl()
    cb.on_train_begin(args, state, control)
    for step in STEPS:
        state.global_step = step
        cb.on_save(args, state, control)
        cb.on_log(args, state, control, logs={"loss": 1.0})
    cb.on_train_end(args, state, control)


def series(rows: list[dict], key: str) -> dict[int, list[tuple[int, float]]]:
    """block -> [(step, value)] of the stability JSON's ``key``, as float32 (what TensorBoard keeps)."""
    return {r["block"]: [(s, float(np.float32(v))) for s, v in zip(r["steps"], r[key]) if v is not None] for r in rows}


def events(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_tensorboard_gets_the_film_and_each_blocks_measures(hf_run, tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb"))
    cb = callback(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing failed
        train_through_hooks(cb, hf_run, ["tensorboard"])
    rows = json.loads((tmp_path / "s.json").read_text())
    acc = events(tmp_path / "tb")
    for key in ("point_update", "point_distance"):
        got = {r["block"]: [(e.step, e.value) for e in acc.Scalars(f"layerfilm/{key}/block_{r['block']}")] for r in rows}
        assert got == series(rows, key) and all(len(v) >= 2 for v in got.values()), key
    assert rows[0]["steps"] == list(STEPS)
    [image] = acc.Images("layerfilm/film")
    assert image.step == STEPS[-1] and (image.width, image.height) == (320, 180)
    import imageio.v3 as iio

    gif = iio.imread(io.BytesIO(image.encoded_image_string), index=None, extension=".gif")
    film = decode(tmp_path / "film.webm")
    assert gif.shape[:3] == film.shape[:3]  # every frame of the film, at its size
    assert np.abs(gif[..., :3].astype(int) - film).mean() < 8  # the same pictures (a GIF's 256 colours)
    [text] = acc.Tensors("layerfilm/stability")
    table = text.tensor_proto.string_val[0].decode()
    for r in rows:
        assert f"| {r['block']} | {r['status']} | {r['settle_step'] or ''} |" in table


@pytest.mark.slow
def test_without_wait_the_film_reaches_tensorboard_before_python_exits(hf_run, tmp_path):
    """train() returns at once; the film's last update, and its logging, end in the exit hook."""
    pytest.importorskip("tensorboard")
    import os
    import subprocess
    import sys

    code = ("import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]); import test_dashboards as t; "
            "t.train_through_hooks(t.callback(Path(sys.argv[2]), wait=False), Path(sys.argv[3]), ['tensorboard']); "
            "print('train() returned', flush=True)")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "TENSORBOARD_LOGGING_DIR": str(tmp_path / "tb")}
    done = subprocess.run([sys.executable, "-c", code, str(root / "tests"), str(tmp_path), str(hf_run)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and done.stdout == "train() returned\n", done.stderr
    assert "the film's last update goes on in the background" in done.stderr
    acc = events(tmp_path / "tb")
    assert [i.step for i in acc.Images("layerfilm/film")] == [STEPS[-1]]
    rows = json.loads((tmp_path / "s.json").read_text())
    assert {r["block"]: [(e.step, e.value) for e in acc.Scalars(f"layerfilm/point_distance/block_{r['block']}")]
            for r in rows} == series(rows, "point_distance")


def read_wandb(path: Path) -> list[dict]:
    """The history rows of an offline W&B run's .wandb file (LevelDB log records of wandb's Record protobuf)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    pos, part, out = 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header: padding
            pos += block - pos % block
            continue
        _, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        part, pos = part + data[pos + 7:pos + 7 + n], pos + 7 + n
        if kind in (1, 4):  # FULL or LAST
            record = pb.Record()
            record.ParseFromString(part)
            part = b""
            if record.WhichOneof("record_type") == "history":
                out.append({"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in record.history.item})
    return out


def test_wandb_offline_gets_the_film_the_table_and_each_blocks_update(hf_run, tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    for k, v in {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true"}.items():
        monkeypatch.setenv(k, v)
    run = wandb.init(project="layerfilm-test")
    try:
        cb = callback(tmp_path)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # nothing failed
            train_through_hooks(cb, hf_run, ["wandb"])
    finally:
        wandb.finish()
        wandb.teardown()  # waits for W&B's service process: its run file is complete only then
    rows = json.loads((tmp_path / "s.json").read_text())
    [folder] = (tmp_path / "wandb").glob(f"offline-run-*-{run.id}")
    history = read_wandb(folder / f"run-{run.id}.wandb")
    for r in rows:
        tag = f"layerfilm/point_update/block_{r['block']}"
        got = [(h["train/global_step"], h[tag]) for h in history if tag in h]
        assert got == [(s, v) for s, v in zip(r["steps"], r["point_update"]) if v is not None] and len(got) >= 2
    [last] = [h for h in history if "layerfilm/film/path" in h]
    assert last["train/global_step"] == STEPS[-1]
    assert (folder / "files" / last["layerfilm/film/path"]).read_bytes() == (tmp_path / "film.webm").read_bytes()
    table = json.loads((folder / "files" / last["layerfilm/stability/path"]).read_text())
    columns, data = table_rows(rows)
    assert table["columns"] == columns and table["data"] == data and len(data) == len(rows) * len(STEPS)


def test_a_failing_dashboard_is_one_warning_and_the_film_goes_on(hf_run, tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    (tmp_path / "tb").write_text("a file where the events folder should be")
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb"))
    cb = callback(tmp_path)
    with pytest.warns(UserWarning) as got:
        train_through_hooks(cb, hf_run, ["tensorboard"])
    [line] = [str(w.message) for w in got if "layerfilm" in str(w.message)]
    assert line.startswith("layerfilm: logging to TensorBoard failed (") and "\n" not in line
    assert len(decode(tmp_path / "film.webm")) == 2 * 2 + 1 and not cb.dashboards
    assert len(json.loads((tmp_path / "s.json").read_text())) == 2


def test_a_dashboard_not_installed_or_not_asked_for_is_silently_nothing(hf_run, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if not installed
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb"))
    for report_to in (["tensorboard"], []):
        cb = callback(tmp_path)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            train_through_hooks(cb, hf_run, report_to)
        assert not cb.dashboards and cb._results is None and not (tmp_path / "tb").exists()
    assert len(decode(tmp_path / "film.webm")) == 2 * 2 + 1


@pytest.mark.slow
def test_a_real_trainer_reports_the_film_to_tensorboard_and_wandb(example, makers, tmp_path, monkeypatch):
    import torch
    import transformers as T

    pytest.importorskip("wandb")
    pytest.importorskip("tensorboard")
    for k, v in {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true",
                 "WANDB_PROJECT": "layerfilm-test"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    torch.manual_seed(0)
    model = T.GPT2LMHeadModel(T.GPT2Config(vocab_size=256, n_positions=32, n_embd=32, n_layer=2, n_head=2))
    data = [{"input_ids": x[0], "labels": x[0]} for x in makers.batches(example, 96, batch=1)]
    args = T.TrainingArguments(output_dir=str(tmp_path / "run"), max_steps=12, save_steps=4, per_device_train_batch_size=8,
                               report_to=["tensorboard", "wandb"], use_cpu=True, disable_tqdm=True, logging_steps=1,
                               save_strategy="steps", seed=0)
    import wandb

    try:
        T.Trainer(model=model, args=args, train_dataset=data, callbacks=[callback(tmp_path)]).train()
        run_id = wandb.run.id
    finally:
        wandb.finish()
        wandb.teardown()
    rows = json.loads((tmp_path / "s.json").read_text())
    acc = events(tmp_path / "run" / "runs" / "layerfilm")
    for r in rows:
        got = [(e.step, e.value) for e in acc.Scalars(f"layerfilm/point_update/block_{r['block']}")]
        assert got == series(rows, "point_update")[r["block"]]
    assert [i.step for i in acc.Images("layerfilm/film")] == [12]
    history = read_wandb(next((tmp_path / "wandb").glob(f"offline-run-*-{run_id}")) / f"run-{run_id}.wandb")
    assert any("train/loss" in h for h in history)  # the Trainer's own logging, in the same run
    assert [h["train/global_step"] for h in history if "layerfilm/film/path" in h] == [12]


@pytest.mark.slow
def test_a_lightning_tensorboard_logger_gets_the_film(example, makers, tmp_path):
    pytest.importorskip("lightning")
    pytest.importorskip("tensorboard")
    from lightning.pytorch.loggers import TensorBoardLogger

    from layerfilm.callbacks import LayerfilmLightningCallback

    logger = TensorBoardLogger(str(tmp_path / "logs"))
    makers.fit_lightning(example, makers.gpt_module(example), tmp_path / "run", steps=15, every=5, items=8, logger=logger,
                         callbacks=(LayerfilmLightningCallback(out=tmp_path / "film.webm", points=16, size=(320, 180),
                                                               fps=2, json=tmp_path / "s.json", wait=True, jobs=1),))
    rows = json.loads((tmp_path / "s.json").read_text())
    acc = events(Path(logger.log_dir))  # the logger's own run: its scalars and the film's together
    for r in rows:
        got = [(e.step, e.value) for e in acc.Scalars(f"layerfilm/point_update/block_{r['block']}")]
        assert got == series(rows, "point_update")[r["block"]] and len(got) == 2
    assert [i.step for i in acc.Images("layerfilm/film")] == [15]
