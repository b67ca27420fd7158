"""Scanning checkpoint folders (layerfilm.io.scan).

Scanning a checkpoint folder (layerfilm.io.scan): steps read from file and folder names, sorted numerically;
--every and --steps; files without a step are not key frames; empty and missing folders.

`layerfilm scan`, and surviving bad checkpoints: skipped with one warning line, listed at the end,
refused under --strict, never executed, never a traceback or a half-written output.

Hostile checkpoint folders (issue 11, the scan items): FIFOs and devices named like checkpoints,
unreadable checkpoint folders, steps beyond int64, and problems found only when tensors are read.
Each one is skipped with exactly one warning line naming the file, the same words in every command;
nothing is hung, nothing of the user's is touched, no traceback."""

from __future__ import annotations

import errno
import json
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from layerfilm.errors import OptionsError, ScanError
from layerfilm.io.scan import parse_steps, scan, step_from_name


# ==== Scanning a checkpoint folder (layerfilm.io.scan)
@pytest.mark.parametrize(
    "name, step",
    [
        ("step_000100.safetensors", 100),
        ("step-100.safetensors", 100),
        ("checkpoint-2000", 2000),
        ("epoch=0-step=150.ckpt", 150),
        ("ckpt_7.pt", 7),
        ("300.safetensors", 300),
        ("model.safetensors", None),
        ("run3_v2.safetensors", None),  # two bare numbers: ambiguous
    ],
)
def test_step_from_name(name, step):
    assert step_from_name(name) == step


def test_hf_trainer_folders_sort_numerically(tiny_run, tmp_path):
    steps = [5, 20, 100, 150, 1000, 2000, 10000]  # lexical order would be 10000, 1000, 100, 150, 2000, 20, 5
    for step, f in zip(steps, sorted(tiny_run.glob("*.safetensors"))):
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        shutil.copy(f, d / "model.safetensors")
    series = scan(tmp_path)
    assert series.steps == steps
    assert [c.path.name for c in series.checkpoints] == [f"checkpoint-{s}" for s in steps]
    assert all(c.format == "safetensors" for c in series.checkpoints)


def test_every_and_steps(tiny_run):
    assert scan(tiny_run, every=2).steps == [0, 20, 40, 60]
    assert scan(tiny_run, steps=(20, 50)).steps == [20, 30, 40, 50]
    assert scan(tiny_run, steps=(30, None), every=2).steps == [30, 50]
    assert parse_steps("100:") == (100, None)
    with pytest.raises(OptionsError):
        parse_steps("5-9")


def test_file_without_step_is_not_a_keyframe(tiny_run, tmp_path):
    for f in tiny_run.glob("*.safetensors"):
        shutil.copy(f, tmp_path / f.name)
    shutil.copy(tiny_run / "step_000060.safetensors", tmp_path / "model.safetensors")
    with pytest.warns(UserWarning, match="model.safetensors: no training step"):
        series = scan(tmp_path)
    assert "model.safetensors" not in [c.path.name for c in series.checkpoints]
    assert len(series) == 7


def test_empty_and_missing(tmp_path):
    with pytest.raises(ScanError, match="no such folder"):
        scan(tmp_path / "nope")
    with pytest.raises(ScanError, match="empty"):
        scan(tmp_path)
    (tmp_path / "README.md").write_text("hi")
    with pytest.raises(ScanError, match="no checkpoints found"):
        scan(tmp_path)


# ==== `layerfilm scan`, and surviving bad checkpoints
class Payload:
    """Unpickling this runs ``open(marker, "w")``: proof of execution is the marker file."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def unsafe_checkpoint(path, marker, weights: dict) -> None:
    torch.save({"model": weights, "iter_num": 45, "hook": Payload(marker)}, path)


@pytest.fixture(scope="module")
def damaged(tiny_run, example, tmp_path_factory):
    """tiny_run (steps 0..60 every 10) plus every kind of bad input; returns (folder, marker)."""
    d = tmp_path_factory.mktemp("damaged")
    marker = d.parent / f"{d.name}-payload-ran"
    for p in sorted(tiny_run.glob("*.safetensors")):
        shutil.copy(p, d)
    good = load_file(d / "step_000060.safetensors")
    (d / "step_000010.safetensors").write_bytes((d / "step_000010.safetensors").read_bytes()[:50_000])  # truncated
    with open(d / "step_000020.safetensors", "r+b") as fh:  # header overwritten
        fh.write(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage: not json")
    save_file({k: v for k, v in load_file(d / "step_000030.safetensors").items()
               if k != "transformer.h.2.mlp.c_fc.weight"}, str(d / "step_000030.safetensors"))  # tensor missing
    narrow = example.GPT(example.Config(n_layer=4, d_model=16, n_head=2, context=32))
    save_file(narrow.state_dict(), str(d / "step_000035.safetensors"))  # other block shapes
    torch.save(torch.optim.AdamW(narrow.parameters()).state_dict(), d / "optim_000040.pt")  # optimizer only
    torch.save(load_file(d / "step_000050.safetensors"), d / "step-50.pt")  # duplicate step
    os.symlink(d / "gone.safetensors", d / "step_000055.safetensors")  # unreadable
    unsafe_checkpoint(d / "step_000045.pt", marker, good)
    (d / "step_000065.safetensors").write_bytes(b"")  # empty
    torch.save({"model": good, "iter_num": 25}, d / "step_000025.pt")
    (d / "step_000025.pt").write_bytes((d / "step_000025.pt").read_bytes()[:100_000])  # truncated zip
    diverged = dict(good)
    diverged["transformer.h.1.mlp.c_fc.weight"] = torch.full_like(good["transformer.h.1.mlp.c_fc.weight"], float("nan"))
    save_file(diverged, str(d / "step_000015.safetensors"))  # NaN weights: found when read
    (d / "README.md").write_text("# my run\n")
    (d / "events.out.tfevents.1700000000.host.1.0").write_bytes(os.urandom(200))
    (d / "notes.txt").write_text("lr 3e-3\n")
    return d, marker


EXPECTED_SKIPS = {  # file -> what its problem says
    "step_000010.safetensors": "truncated",
    "step_000020.safetensors": "corrupt safetensors header",
    "step_000035.safetensors": "block tensor 0.attn.c_attn.bias has shape [48], most checkpoints have [96]",
    "optim_000040.pt": "an optimizer state, no model weights",
    "step_000045.pt": "unsafe pickle, refused without running it",
    "step_000050.safetensors": "step 50 already taken by step-50.pt",
    "step_000055.safetensors": "cannot read (No such file or directory)",
    "step_000065.safetensors": "not a safetensors file (too short)",
    "step_000025.pt": "corrupt or truncated PyTorch file",
    "step_000030.safetensors": "block tensor 2.mlp.c_fc.weight is missing, most checkpoints have it",
}
READ_TIME_SKIPS = {  # problems found only when the film reads the tensor (or `scan --deep`)
    "step_000015.safetensors": "tensor transformer.h.1.mlp.c_fc.weight of block 1 holds NaN/Inf",
}


def test_scan_lists_problems_without_reading_tensors(damaged, run_cli):
    folder, marker = damaged
    code, out, err = run_cli("scan", folder, "--json")
    assert code == 0, err
    rows = {os.path.basename(r["path"]): r for r in json.loads(out)}
    assert set(rows) == {*EXPECTED_SKIPS, *READ_TIME_SKIPS, "step_000000.safetensors",
                         "step_000040.safetensors", "step_000060.safetensors", "step-50.pt"}
    for name, why in EXPECTED_SKIPS.items():
        assert why in rows[name]["problem"], (name, rows[name])
    usable = [r for r in rows.values() if "problem" not in r]
    assert sorted(r["step"] for r in usable) == [0, 15, 40, 50, 60]
    assert all(r["blocks"] == 4 and r["format"] in ("safetensors", "torch") for r in usable)
    assert not marker.exists()

    code, out, err = run_cli("scan", folder)
    assert code == 0 and len(out.splitlines()) == 1 + len(rows)
    assert f"5 usable, {len(EXPECTED_SKIPS)} skipped" in err


def test_render_skips_bad_checkpoints_and_lists_them(damaged, run_cli, tmp_path):
    folder, marker = damaged
    out, pts = tmp_path / "film.webm", tmp_path / "pts.npz"
    code, _, err = run_cli("render", folder, "--out", out, "--size", "320x180", "--fps", "2", "--jobs", "1", "--quiet",
                           "--export-points", pts)
    assert code == 0, err
    assert "Traceback" not in err and not marker.exists()
    assert np.load(pts)["steps"].tolist() == [0, 40, 50, 60]
    warned = [line for line in err.splitlines() if line.startswith("warning: ") and line.endswith("; skipped")]
    assert len(warned) == len(EXPECTED_SKIPS) + len(READ_TIME_SKIPS)
    for name, why in {**EXPECTED_SKIPS, **READ_TIME_SKIPS}.items():
        assert sum(f"{name}: " in w and why in w for w in warned) == 1, (name, why)
    listed = err.split(f"skipped {len(warned)} checkpoint(s):\n")[1].splitlines()
    assert sorted(os.path.basename(line.split(": ")[0]) for line in listed) == sorted([*EXPECTED_SKIPS, *READ_TIME_SKIPS])
    assert out.stat().st_size > 0


def test_strict_refuses_and_writes_nothing(damaged, run_cli, tmp_path):
    folder, _ = damaged
    out = tmp_path / "film.webm"
    code, _, err = run_cli("render", folder, "--out", out, "--strict", "--quiet")
    assert code == 2
    assert err.startswith("layerfilm: error: ") and len(err.strip().splitlines()) == 1
    assert "(--strict: nothing is skipped)" in err
    assert list(tmp_path.iterdir()) == []


def test_strict_on_read_time_problem(tiny_run, run_cli, tmp_path):
    """NaN in the filmed matrix only shows when the film reads it; --strict stops there, output absent."""
    folder = tmp_path / "ckpts"
    shutil.copytree(tiny_run, folder)
    state = load_file(folder / "step_000020.safetensors")
    state["transformer.h.1.mlp.c_fc.weight"][3, 4] = float("nan")
    save_file(state, str(folder / "step_000020.safetensors"))
    out = tmp_path / "film.gif"
    code, _, err = run_cli("render", folder, "--out", out, "--strict", "--jobs", "1", "--quiet")
    assert code == 2 and "step_000020.safetensors: tensor transformer.h.1.mlp.c_fc.weight of block 1 holds NaN/Inf" in err
    assert "(--strict: nothing is skipped)" in err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["ckpts"]


def test_unsafe_pickle_never_runs(tiny_run, tmp_path, run_cli):
    folder = tmp_path / "ckpts"
    folder.mkdir()
    marker = tmp_path / "payload-ran"
    weights = load_file(tiny_run / "step_000000.safetensors")
    for step in (0, 10):
        unsafe_checkpoint(folder / f"step_{step}.pt", marker, weights)
    shutil.copy(tiny_run / "step_000020.safetensors", folder)
    # the payload is live: an unguarded load runs it
    torch.load(folder / "step_0.pt", weights_only=False)
    assert marker.exists()
    marker.unlink()
    code, out, err = run_cli("scan", folder, "--json")
    assert code == 0 and not marker.exists()
    problems = [r.get("problem", "") for r in json.loads(out)]
    assert sum("unsafe pickle" in p for p in problems) == 2
    code, _, err = run_cli("render", folder, "--out", tmp_path / "f.webm", "--quiet")
    assert code == 2 and "found 1 usable checkpoint; a film needs at least two key frames" in err
    assert not marker.exists() and not (tmp_path / "f.webm").exists()


@pytest.mark.parametrize("content, message", [
    ({}, "the folder is empty"),
    ({"README.md": b"hi", "events.out.tfevents.1.h": b"\x00" * 10}, "no checkpoints found"),
    ({"step_1.safetensors": b"", "step_2.pt": b"PK\x03\x04junk"}, "no usable checkpoints (step_1.safetensors: "
     "not a safetensors file (too short))"),
])
def test_folders_without_usable_checkpoints(tmp_path, run_cli, content, message):
    folder = tmp_path / "in"
    folder.mkdir()
    for name, data in content.items():
        (folder / name).write_bytes(data)
    for command in (["scan", folder], ["render", folder, "--out", tmp_path / "f.webm"]):
        code, _, err = run_cli(*command, "--quiet") if command[0] == "render" else run_cli(*command)
        errors = [line for line in err.splitlines() if not line.startswith("warning: ")]
        assert code == 2 and len(errors) == 1 and errors[0].startswith(f"layerfilm: error: {folder}: {message}"), err
    assert not (tmp_path / "f.webm").exists()


def test_bf16_safetensors_widened(tiny_run, tmp_path):
    from layerfilm.io.formats import open_checkpoint

    state = load_file(tiny_run / "step_000060.safetensors")
    save_file({k: v.bfloat16() for k, v in state.items()}, str(tmp_path / "step_1.safetensors"))
    series = scan(tmp_path, warn=False)
    assert series.checkpoints[0].dtype == "BF16"
    with open_checkpoint(series.checkpoints[0].path, "safetensors") as reader:
        w = reader.get("transformer.h.0.mlp.c_fc.weight")
    assert w.dtype == np.float32
    np.testing.assert_array_equal(w, state["transformer.h.0.mlp.c_fc.weight"].bfloat16().float().numpy())


# ==== Hostile checkpoint folders (issue 11, the scan items)
STEPS = [0, 10, 20, 30, 40, 50, 60]
FIFO = "not a regular file (FIFO)"


def snapshot(folder: Path) -> dict:
    """Every path under ``folder`` with its kind, size and modification time (lstat: FIFOs unopened)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        st = os.lstat(p)
        out[str(p.relative_to(folder))] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


def in_time(run, *argv, fifos: list[Path] = (), timeout: float = 240):
    """``run(*argv)`` in a thread; a run still blocked after ``timeout`` fails the test (its FIFOs are
    opened for writing so that the blocked thread ends) instead of hanging the session."""
    result: dict = {}

    def target() -> None:
        try:
            result["value"] = run(*argv)
        except BaseException as e:  # noqa: BLE001 - re-raised in the test's thread
            result["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        for f in fifos:
            try:
                os.close(os.open(f, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass
        thread.join(10)
        pytest.fail(f"layerfilm {' '.join(map(str, argv))} still running after {timeout} s (blocked in open()?)")
    if "error" in result:
        raise result["error"]
    return result["value"]


def warnings_of(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("warning: ")]


@pytest.fixture
def ckpts(tiny_run, tmp_path) -> Path:
    """A private copy of tiny_run (step_000000 ... step_000060.safetensors)."""
    folder = tmp_path / "ckpts"
    shutil.copytree(tiny_run, folder)
    return folder


def sharded(state: dict, folder: Path) -> None:
    """``state`` written as a two-shard Hugging Face checkpoint with its index."""
    names = sorted(state)
    half = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
            "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    folder.mkdir()
    for shard, keys in half.items():
        save_file({k: state[k] for k in keys}, str(folder / shard))
    index = {"metadata": {}, "weight_map": {k: s for s, keys in half.items() for k in keys}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))


def plant(ckpts: Path, where: str) -> tuple[Path, Path]:
    """A non-regular file at ``where`` in ``ckpts`` (beside a real checkpoint's other files where it
    belongs to a folder); returns (the bad file, the checkpoint the scan names)."""
    state = load_file(ckpts / "step_000060.safetensors")
    bad = ckpts / where
    top = ckpts / Path(where).parts[0]
    if where == "checkpoint-70/trainer_state.json":
        top.mkdir()
        save_file(state, str(top / "model.safetensors"))
    elif where == "checkpoint-70/model-00001-of-00002.safetensors":
        sharded(state, top)
        bad.unlink()
    elif where == "checkpoint-70/model.safetensors.index.json":
        sharded(state, top)
        bad.unlink()
    elif top != bad:
        top.mkdir()
    if where.endswith("device.safetensors"):
        os.symlink(os.devnull, bad)  # a character device, reached through a link
    else:
        os.mkfifo(bad)
    return bad, top


KINDS = {  # where the non-regular file is -> what the problem says
    "step_000070.safetensors": FIFO,
    "step_000070.pt": FIFO,
    "step_000070.bin": FIFO,
    "epoch=0-step=70.ckpt": FIFO,
    "model.safetensors": FIFO,  # a final model at the root
    "checkpoint-70/model.safetensors": f"model.safetensors: {FIFO}",
    "checkpoint-70/trainer_state.json": f"trainer_state.json: {FIFO}",
    "checkpoint-70/model.safetensors.index.json": f"model.safetensors.index.json: {FIFO}",
    "checkpoint-70/model-00001-of-00002.safetensors": f"model-00001-of-00002.safetensors: {FIFO}",
    "step_000070_device.safetensors": "not a regular file (character device)",
}


@pytest.mark.parametrize("where", list(KINDS))
def test_non_regular_files_are_never_opened(ckpts, run_cli, where):
    bad, named = plant(ckpts, where)
    before = snapshot(ckpts)
    code, out, err = in_time(run_cli, "scan", ckpts, "--json", fifos=[bad])
    assert code == 0, err
    rows = json.loads(out)
    problems = [r for r in rows if "problem" in r]
    assert [(r["path"], r["problem"]) for r in problems] == [(str(named), KINDS[where])]
    assert sorted(r["step"] for r in rows if "problem" not in r) == STEPS
    assert "Traceback" not in err and snapshot(ckpts) == before


@pytest.mark.parametrize("where", ["step_000070.safetensors", "checkpoint-70/model-00001-of-00002.safetensors"])
def test_render_skips_a_fifo_with_one_warning(ckpts, run_cli, tmp_path, where):
    bad, named = plant(ckpts, where)
    before = snapshot(ckpts)
    out = tmp_path / "film.gif"
    code, _, err = in_time(run_cli, "render", ckpts, "--out", out, "--size", "320x180", "--fps", "2", "--quiet",
                           "--no-cache", "--jobs", "1", fifos=[bad])
    assert code == 0, err
    assert warnings_of(err) == [f"warning: {named}: {KINDS[where]}; skipped"]
    assert "Traceback" not in err and out.stat().st_size > 0
    assert snapshot(ckpts) == before and sorted(p.name for p in tmp_path.iterdir()) == ["ckpts", "film.gif"]


def test_stability_skips_a_fifo_trainer_state(ckpts, run_cli):
    bad, named = plant(ckpts, "checkpoint-70/trainer_state.json")
    before = snapshot(ckpts)
    code, out, err = in_time(run_cli, "stability", ckpts, "--quiet", "--points", "16", fifos=[bad])
    assert code == 0, err
    assert warnings_of(err) == [f"warning: {named}: trainer_state.json: {FIFO}; skipped"]
    assert "Traceback" not in err and snapshot(ckpts) == before


class Unreadable:
    """A folder that cannot be looked into, for every user root included: chmod 000 (which is enough
    without root's override) and os.stat/listdir/scandir of anything inside refused as the kernel would."""

    def __init__(self, folder: Path, monkeypatch) -> None:
        self.folder = str(folder)
        for name in ("stat", "listdir", "scandir"):
            monkeypatch.setattr(os, name, self.guard(getattr(os, name), inside_only=name == "stat"))

    def guard(self, real, inside_only: bool):
        def call(path=".", *args, **kwargs):
            p = os.fsdecode(path) if isinstance(path, (str, bytes, os.PathLike)) else ""
            if p.startswith(self.folder + os.sep) or (p == self.folder and not inside_only):
                raise PermissionError(errno.EACCES, "Permission denied", p)
            return real(path, *args, **kwargs)

        return call


def test_unreadable_checkpoint_folder_is_skipped(ckpts, run_cli, tmp_path, monkeypatch):
    locked = ckpts / "checkpoint-70"
    locked.mkdir()
    shutil.copy(ckpts / "step_000060.safetensors", locked / "model.safetensors")
    (ckpts / "logs").mkdir()  # an unreadable folder without a step in its name is not a checkpoint
    before = snapshot(ckpts)
    os.chmod(locked, 0)
    os.chmod(ckpts / "logs", 0)
    try:
        Unreadable(locked, monkeypatch)
        Unreadable(ckpts / "logs", monkeypatch)
        code, out, err = run_cli("scan", ckpts, "--json")
        assert code == 0, err
        problems = [(r["path"], r["problem"]) for r in json.loads(out) if "problem" in r]
        assert problems == [(str(locked), "cannot read (Permission denied)")]
        code, _, err = run_cli("render", ckpts, "--out", tmp_path / "film.gif", "--size", "320x180", "--fps", "2",
                               "--quiet", "--no-cache", "--jobs", "1")
        assert code == 0, err
        assert warnings_of(err) == [f"warning: {locked}: cannot read (Permission denied); skipped"]
        assert "Traceback" not in err
    finally:
        monkeypatch.undo()
        os.chmod(locked, 0o755)
        os.chmod(ckpts / "logs", 0o755)
    assert snapshot(ckpts) == before


def test_steps_beyond_int64_are_refused_at_scan(ckpts, run_cli, tmp_path):
    huge = ckpts / "step_99999999999999999999.safetensors"
    shutil.copy(ckpts / "step_000060.safetensors", huge)
    state = load_file(ckpts / "step_000060.safetensors")
    torch.save({"model": state, "iter_num": 10**30}, ckpts / "nanogpt.pt")
    before = snapshot(ckpts)
    code, out, err = run_cli("scan", ckpts, "--json")
    assert code == 0, err
    problems = sorted((Path(r["path"]).name, r["problem"]) for r in json.loads(out) if "problem" in r)
    assert problems == [("nanogpt.pt", f"step {10**30} is out of range"),
                        ("step_99999999999999999999.safetensors", "step 99999999999999999999 is out of range")]
    code, _, err = run_cli("render", ckpts, "--out", tmp_path / "film.gif", "--size", "320x180", "--fps", "2",
                           "--quiet", "--no-cache", "--jobs", "1")
    assert code == 0 and "Traceback" not in err, err
    assert sorted(warnings_of(err)) == [f"warning: {ckpts / 'nanogpt.pt'}: step {10**30} is out of range; skipped",
                                        f"warning: {huge}: step 99999999999999999999 is out of range; skipped"]
    code, _, err = run_cli("scan", ckpts, "--final-step", str(2**63))
    assert code == 2 and err.strip().splitlines() == [
        f"layerfilm: error: --final-step {2**63}: must be between 0 and {2**63 - 1}"]
    assert snapshot(ckpts) == before


def test_header_problems_found_by_scan(ckpts, run_cli):
    """A dtype layerfilm cannot read, a block tensor missing: found by `scan` from the headers."""
    state = load_file(ckpts / "step_000020.safetensors")
    state["transformer.h.0.ln_1.weight"] = state["transformer.h.0.ln_1.weight"].to(torch.float8_e4m3fn)
    save_file(state, str(ckpts / "step_000020.safetensors"))
    state = load_file(ckpts / "step_000030.safetensors")
    del state["transformer.h.3.mlp.c_fc.weight"]
    save_file(state, str(ckpts / "step_000030.safetensors"))
    code, out, err = run_cli("scan", ckpts, "--json")
    assert code == 0, err
    problems = sorted((Path(r["path"]).name, r["problem"]) for r in json.loads(out) if "problem" in r)
    assert problems == [
        ("step_000020.safetensors", "tensor transformer.h.0.ln_1.weight has dtype F8_E4M3, which layerfilm cannot read"),
        ("step_000030.safetensors", "block tensor 3.mlp.c_fc.weight is missing, most checkpoints have it")]


NAN = "tensor transformer.h.1.mlp.c_fc.weight of block 1 holds NaN/Inf"


def test_nan_in_the_filmed_matrix_same_words_everywhere(ckpts, run_cli, tmp_path):
    bad = ckpts / "step_000030.safetensors"
    state = load_file(bad)
    state["transformer.h.1.mlp.c_fc.weight"][5, 7] = float("nan")
    save_file(state, str(bad))
    before = snapshot(ckpts)
    code, out, _ = run_cli("scan", ckpts, "--json")
    assert code == 0 and all("problem" not in r for r in json.loads(out))  # headers cannot tell
    code, out, _ = run_cli("scan", ckpts, "--json", "--deep")
    assert code == 0 and [(r["path"], r["problem"]) for r in json.loads(out) if "problem" in r] == [(str(bad), NAN)]
    line = f"warning: {bad}: {NAN}; skipped"
    code, _, err = run_cli("render", ckpts, "--out", tmp_path / "film.gif", "--size", "320x180", "--fps", "2",
                           "--quiet", "--no-cache", "--jobs", "1")
    assert code == 0 and warnings_of(err) == [line], err
    code, out, err = run_cli("stability", ckpts, "--quiet", "--points", "16", "--json")
    assert code == 0 and warnings_of(err) == [line], err
    assert json.loads(out)[0]["steps"] == [0, 10, 20, 40, 50, 60]
    assert err.splitlines()[-2:] == ["skipped 1 checkpoint(s):", f"  {bad}: {NAN}"]
    assert "Traceback" not in err and snapshot(ckpts) == before


def test_inf_in_a_tensor_stability_alone_reads(ckpts, run_cli):
    """Inf in a tensor the film does not show, in the last checkpoint: one warning naming the file and
    the tensor, the checkpoint left out of the measures, no numpy warning."""
    last = ckpts / "step_000060.safetensors"
    state = load_file(last)
    state["transformer.h.2.attn.c_proj.weight"][0, 0] = float("inf")
    save_file(state, str(last))
    code, out, err = run_cli("stability", ckpts, "--quiet", "--points", "16", "--json")
    assert code == 0, err
    assert warnings_of(err) == [f"warning: {last}: tensor transformer.h.2.attn.c_proj.weight of block 2 holds NaN/Inf; skipped"]
    assert json.loads(out)[0]["steps"] == [0, 10, 20, 30, 40, 50]
    assert "Traceback" not in err and "RuntimeWarning" not in err


def test_scan_deep_api(ckpts):
    state = load_file(ckpts / "step_000010.safetensors")
    state["transformer.h.0.attn.c_attn.weight"][0, 0] = float("-inf")
    save_file(state, str(ckpts / "step_000010.safetensors"))
    assert scan(ckpts, deep=True, warn=False).steps == STEPS  # not the filmed tensor by default
    series = scan(ckpts, deep=True, param="attn.c_attn", warn=False)
    assert [(c.path.name, c.problem) for c in series.skipped] == [
        ("step_000010.safetensors", "tensor transformer.h.0.attn.c_attn.weight of block 0 holds NaN/Inf")]


def test_fifo_probe_and_tokenizer_files_are_refused(tmp_path):
    from layerfilm.errors import CheckpointError, OptionsError
    from layerfilm.points.activations import ActivationSpec, tokenize

    probe = tmp_path / "probe.txt"
    os.mkfifo(probe)
    with pytest.raises(OptionsError, match=rf"^probe={probe}: not a regular file \(FIFO\)$"):
        ActivationSpec(probe=str(probe))
    (tmp_path / "tokenizer.json").write_text("{}")
    os.mkfifo(tmp_path / "vocab.json")
    with pytest.raises(CheckpointError, match=r"vocab.json: not a regular file \(FIFO\)$"):
        in_time(tokenize, "some text", tmp_path, fifos=[tmp_path / "vocab.json"], timeout=60)
