"""Hostile checkpoint folders (issue 11, the scan items): FIFOs and devices named like checkpoints,
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

import pytest
import torch
from safetensors.torch import load_file, save_file

from layerfilm.io.scan import scan

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
