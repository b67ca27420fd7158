"""Hostile checkpoint files (issue 24): a zip bomb of a .pt, a .pt truncated while it is read, widths
that cannot fit in memory, zero-size block tensors. Each is one line (a skipped checkpoint or an error),
in bounded memory, and nothing of the user's is touched."""

from __future__ import annotations

import json
import os
import shutil
import struct
import zipfile
from pathlib import Path

import pytest
import torch

from layerfilm.io.formats.torch_format import MAX_PICKLE_BYTES
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
    assert peak < BOMB_BYTES * 3 // 4  # torch and NumPy imported take ~0.3-0.55 GB; inflating takes 1 GiB more
    assert snapshot(ck) == before and list(work.iterdir()) == []


# ---------------------------------------------------------------- a .pt truncated while it is read

TRUNCATE_ON_READ = """
import os
from layerfilm.io.formats import torch_format
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
                                     "--size", "320x180", "--fps", "2", "--points", "8", cwd=tmp_path,
                                     prelude=TRUNCATE_ON_READ)
    problem = f"truncated inside tensor {BLOCK.format(0)}"
    lines = err.splitlines()
    assert code == 0, err
    assert lines[0] == f"warning: ck/ckpt_20.pt: {problem}; skipped"
    assert lines[1].startswith("wrote f.gif (5 frames from 3 key frames)")
    assert lines[2:] == ["skipped 1 checkpoint(s):", f"  ck/ckpt_20.pt: {problem}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck", "f.gif"]


# ---------------------------------------------------------------- widths that cannot fit in memory

def sparse_series(folder: Path, rows: int, width: int, dtype: str, steps=(0, 10, 20)) -> Path:
    """Safetensors checkpoints of 2 blocks of [rows, width] tensors, full logical size but holes on disk
    (as benchmarks/make_sparse.py writes them): terabytes that take no space."""
    folder.mkdir()
    size = rows * width * {"F32": 4, "BF16": 2}[dtype]
    header = {BLOCK.format(b): {"dtype": dtype, "shape": [rows, width], "data_offsets": [b * size, (b + 1) * size]}
              for b in range(2)}
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    for step in steps:
        path = folder / f"step_{step}.safetensors"
        path.write_bytes(struct.pack("<Q", len(text)) + text)
        os.truncate(path, 8 + len(text) + 2 * size)
    return folder


@pytest.mark.parametrize("command, rows, width, dtype, each", [
    # the 8 TB files: a stability holds 5 float32 copies of a block's 4 TB tensor
    ("stability", 10**6, 10**6, "F32", "2 copies of 3 key frames x 512 points x width 1,000,000 as float32, and 5 "
     "copies of its tensors for the whole-block measures"),
    ("report", 10**6, 10**6, "F32", "2 copies of 3 key frames x 512 points x width 1,000,000 as float32, and 5 "
     "copies of its tensors for the whole-block measures"),
    # a render reads only the tracked rows, but 512 rows of 4e9 columns are 8 TB per key frame
    ("render", 512, 4 * 10**9, "BF16", "2 copies of 3 key frames x 512 points x width 4,000,000,000 as float32"),
])
def test_blocks_too_wide_for_memory_are_refused_from_the_header(tmp_path, command, rows, width, dtype, each):
    """MemoryError with a traceback (stability), or a process growing past 12 GB (render), before: now one
    line with the number, before any tensor is read, in little memory."""
    from layerfilm.stability import physical_memory

    ck = sparse_series(tmp_path / "ck", rows, width, dtype)
    before = snapshot(ck)
    out = {"render": ("--out", "f.webm"), "report": ("--out", "r.html")}.get(command, ())
    code, stdout, err, peak = run_measured(command, "ck", *out, "--jobs", "1", "--no-cache", "--quiet", cwd=tmp_path)
    whole = 5 * rows * width * 4 if command != "render" else 0
    need = 2 * 3 * 512 * width * 4 + whole
    assert (code, stdout) == (2, "")
    assert err.splitlines()[-1] == (f"layerfilm: error: ck: needs {need / 1e9:,.1f} GB of memory at once (one block: "
                                    f"{each}), more than the {physical_memory() / 1e9:,.1f} GB here; film fewer "
                                    "points or key frames (--every K, --steps A:B)")
    assert peak < 2 * 2**30
    assert snapshot(ck) == before and sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


# ---------------------------------------------------------------- zero-size blocks, names that look like math

ZERO_SIZE = "features of shape {} per block: a 2-D projection needs at least 2 points and 2 dimensions"


@pytest.mark.parametrize("rows, width, shape", [(0, 8, (0, 8)), (10**12, 0, (512, 0))])
@pytest.mark.parametrize("command", ["render", "stability", "report"])
def test_zero_size_blocks_are_the_projection_line_in_every_command(tmp_path, run_cli, command, rows, width, shape):
    """[0, 8] or [10^12, 0] block tensors: render's one line, also from stability and report (an IndexError
    in the histogram edges before)."""
    ck = sparse_series(tmp_path / "ck", rows, width, "F32")
    before = snapshot(ck)
    out = {"render": ("--out", tmp_path / "f.webm"), "report": ("--out", tmp_path / "r.html")}.get(command, ())
    code, stdout, err = run_cli(command, ck, *out, "--jobs", "1", "--no-cache", "--quiet")
    assert (code, stdout, err) == (2, "", f"layerfilm: error: {ZERO_SIZE.format(shape)}\n")
    assert snapshot(ck) == before and sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_names_with_dollar_pairs_are_text_not_math(tmp_path, run_cli):
    """A tensor named with a pair of $ (a broken TeX fraction between them): the report draws it as text
    (matplotlib's math parser raised ValueError from the norms figure)."""
    from safetensors.torch import save_file

    ck = tmp_path / "ck"
    ck.mkdir()
    odd = "transformer.h.{}.ln$\\frac{{1}}{{$.weight"
    for step in (0, 10, 20):
        save_file({BLOCK.format(b): torch.randn(16, 8) for b in range(2)} | {odd.format(b): torch.randn(8) for b in range(2)},
                  str(ck / f"step_{step}.safetensors"))
    code, out, err = run_cli("report", ck, "--out", tmp_path / "r.html", "--jobs", "1", "--no-cache", "--quiet")
    assert (code, out, err) == (0, "", f"wrote {tmp_path / 'r.html'}\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck", "r.html"]


# ---------------------------------------------------------------- watch: a bad checkpoint arriving alone

def test_watch_reports_a_bad_checkpoint_arriving_alone_exactly_once(tiny_run, tmp_path):
    """A damaged checkpoint that arrives alone is reported at once (its scan error was swallowed, so it was
    never reported until a good one came with it), and never again, whatever arrives after it."""
    import warnings

    from layerfilm.film_options import FilmOptions
    from layerfilm.live.film import LiveFilm, LiveOptions
    from layerfilm.points.weights import WeightSpec

    folder = tmp_path / "run"
    folder.mkdir()
    for step in (0, 10):
        shutil.copy(tiny_run / f"step_{step:06d}.safetensors", folder)
    bad = folder / "step_000020.safetensors"
    opts = FilmOptions(cache=False, fps=2, jobs=1, weights=WeightSpec(points=8))
    with LiveFilm(folder, tmp_path / "f.webm", opts, LiveOptions()) as film:
        reported = []

        def poll() -> None:
            film.ready.poll()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                film.update()
            reported.append([str(w.message) for w in caught if w.category is UserWarning])

        poll()
        bad.write_bytes(b"\x00" * 64)  # alone
        poll()
        poll()
        shutil.copy(tiny_run / "step_000030.safetensors", folder)  # a good one after it
        poll()
        poll()
    problem = "corrupt safetensors header (Expecting value: line 1 column 1 (char 0))"
    assert reported == [[], [f"{bad}: {problem}; skipped"], [], [], []]
    assert [c.path for c in film.skipped] == [bad] and film.steps == [0, 10, 30]
    assert sorted(p.name for p in folder.iterdir()) == ["step_000000.safetensors", "step_000010.safetensors",
                                                        "step_000020.safetensors", "step_000030.safetensors"]


# ---------------------------------------------------------------- messages that say what is wrong

def test_scan_of_no_usable_checkpoint_shows_the_table_of_problems(tmp_path, run_cli):
    """An empty safetensors file: its problem says so (it read "no decoder blocks found in parameter names
    (, ...)"), and scan prints the table before its one error line (it printed the line alone)."""
    from safetensors.torch import save_file

    ck = tmp_path / "ck"
    ck.mkdir()
    save_file({}, str(ck / "step_0.safetensors"))
    save_file({}, str(ck / "step_10.safetensors"))
    code, out, err = run_cli("scan", ck)
    line = f"layerfilm: error: {ck}: no usable checkpoints (step_0.safetensors: holds no tensors (an empty checkpoint))\n"
    assert (code, err) == (2, line)
    assert [line.split(None, 6)[6] for line in out.splitlines()[1:]] == ["holds no tensors (an empty checkpoint)"] * 2
    code, out, err = run_cli("scan", ck, "--json")
    assert code == 2 and [c["problem"] for c in json.loads(out)] == ["holds no tensors (an empty checkpoint)"] * 2
    assert sorted(p.name for p in ck.iterdir()) == ["step_0.safetensors", "step_10.safetensors"]


def test_blocks_without_a_matrix_say_what_they_hold(tmp_path, run_cli):
    """Blocks of 1-D, 3-D and 0-D tensors: "pass --param, one of: " was followed by nothing."""
    from safetensors.torch import save_file

    ck = tmp_path / "ck"
    ck.mkdir()
    for step in (0, 10):
        save_file({"transformer.h.0.conv.w": torch.zeros(2, 2, 2), "transformer.h.0.ln.weight": torch.zeros(3),
                   "transformer.h.0.scale": torch.zeros(())}, str(ck / f"step_{step}.safetensors"))
    code, out, err = run_cli("render", ck, "--out", tmp_path / "f.gif", "--quiet", "--no-cache")
    assert (code, out) == (2, "")
    assert err == ("layerfilm: error: the blocks hold no 2-D matrix to film (block 0 holds conv.w [2, 2, 2], "
                   "ln.weight [3], scale []); pass --blocks REGEX if these are not the decoder blocks\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]
