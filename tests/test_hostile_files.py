"""Hostile checkpoint files (issue 24): a zip bomb of a .pt, a .pt truncated while it is read, widths
that cannot fit in memory, zero-size block tensors. Each is one line (a skipped checkpoint or an error),
in bounded memory, and nothing of the user's is touched."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import torch

from layerfilm.formats.torch_format import MAX_PICKLE_BYTES
from processes import run_measured
from test_hostile_scan import snapshot

BLOCK = "transformer.h.{}.mlp.c_fc.weight"


def save_pt(path: Path, width: int = 8) -> None:
    torch.save({BLOCK.format(b): torch.randn(16, width) for b in range(2)}, path)


# ---------------------------------------------------------------- a zip bomb

BOMB_BYTES = 2**30  # what data.pkl inflates to: 4x the whole budget of MAX_PICKLE_BYTES


def zip_bomb(good: Path, out: Path) -> None:
    """``good`` (a torch.save zip) with its data.pkl deflated and padded with BOMB_BYTES of zeros after the
    pickle's STOP: a valid checkpoint of ~1 MB on disk that torch inflates whole (1 GiB) to read its pickle."""
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        for info in src.infolist():
            if not info.filename.endswith("data.pkl"):
                z.writestr(info, src.read(info))  # as stored (the tensors must stay mappable)
                continue
            with z.open(info.filename, "w", force_zip64=True) as f:
                f.write(src.read(info))
                zeros = bytes(64 * 2**20)
                for _ in range(BOMB_BYTES // len(zeros)):
                    f.write(zeros)


def test_a_zip_bomb_is_refused_before_it_inflates(tmp_path):
    """scan reads headers only: a data.pkl that inflates to 1 GiB is refused once it passes MAX_PICKLE_BYTES,
    and the process's peak memory stays far below what it inflates to (the old code took 2.3 GB and called
    the checkpoint usable)."""
    ck = tmp_path / "ck"
    ck.mkdir()
    save_pt(ck / "ckpt_0.pt")
    zip_bomb(ck / "ckpt_0.pt", ck / "ckpt_100.pt")
    assert (ck / "ckpt_100.pt").stat().st_size < 8 * 2**20
    before = snapshot(ck)
    work = tmp_path / "work"
    work.mkdir()
    code, out, err, peak = run_measured("scan", ck, "--json", cwd=work)
    assert (code, err) == (0, "")
    problem = f"its pickle unpacks to more than {MAX_PICKLE_BYTES // 2**20} MiB (a zip bomb, or no checkpoint); " \
              "refused before loading it"
    assert [c.get("problem") for c in json.loads(out)] == [None, problem]
    assert peak < BOMB_BYTES // 2
    assert snapshot(ck) == before and list(work.iterdir()) == []


# ---------------------------------------------------------------- a .pt truncated while it is read

TRUNCATE_ON_READ = """
import os
from layerfilm.formats import torch_format
enter, opened = torch_format.TorchReader.__enter__, []
def truncating(self):  # the scan's open, then the read's: truncated between the read's map and its reads
    out = enter(self)
    opened.append(self.path.name)
    if opened.count("ckpt_20.pt") == 2 and self.path.name == "ckpt_20.pt":
        os.truncate(self.path, 4096)
    return out
torch_format.TorchReader.__enter__ = truncating
"""


def test_a_pt_truncated_while_it_is_read_is_a_skipped_checkpoint(tmp_path):
    """A trainer rewrites ckpt_20.pt in place after the render mapped it: its tensors lie past the new end
    (SIGBUS, exit 135, when they were read through the map); now one warning line, listed again at the end."""
    ck = tmp_path / "ck"
    ck.mkdir()
    for step in (0, 10, 20, 30):
        save_pt(ck / f"ckpt_{step}.pt", width=64)  # 16 KiB per tensor: past the first page
    code, out, err, _ = run_measured("render", "ck", "--out", "f.gif", "--jobs", "1", "--no-cache", "--quiet",
                                     "--size", "160x90", "--fps", "2", "--points", "8", cwd=tmp_path,
                                     prelude=TRUNCATE_ON_READ)
    problem = f"truncated inside tensor {BLOCK.format(0)}"
    lines = err.splitlines()
    assert code == 0, err
    assert lines[0] == f"warning: ck/ckpt_20.pt: {problem}; skipped"
    assert lines[1].startswith("wrote f.gif (5 frames from 3 key frames)")
    assert lines[2:] == ["skipped 1 checkpoint(s):", f"  ck/ckpt_20.pt: {problem}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck", "f.gif"]
