"""`layerfilm scan`, and surviving bad checkpoints: skipped with one warning line, listed at the end,
refused under --strict, never executed, never a traceback or a half-written output."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from layerfilm.io.scan import scan


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
