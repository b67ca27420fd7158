"""Checkpoint file formats (layerfilm.io.formats).

Each on-disk format, read from a series written by the tool that writes it (tests/makers.py).

Hostile checkpoint files (issue 24): a zip bomb of a .pt, a .pt truncated while it is read, widths
that cannot fit in memory, zero-size block tensors. Each is one line (a skipped checkpoint or an error),
in bounded memory, and nothing of the user's is touched.

Hostile checkpoint files (issue 11, format and header items): every one is built for real, from a
file written by safetensors or torch, and must come out of `scan` as a skipped checkpoint with one
problem line and out of `render` as one warning line naming it; never a traceback, never a wrong tensor.
A property test mutates valid safetensors headers and .pt archives at random to the same end."""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import shutil
import signal
import struct
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from layerfilm.errors import LayerfilmError
from layerfilm.io.formats import open_checkpoint
from layerfilm.io.formats.safetensors_format import DTYPE_BITS
from layerfilm.io.formats.torch_format import MAX_PICKLE_BYTES
from layerfilm.io.scan import NO_FINAL_STEP, scan
from processes import run_measured
from test_scan import snapshot


# ==== Each on-disk format, read from a series written by the tool that writes it (tests/makers.py)
def read_all(path, fmt) -> dict[str, np.ndarray]:
    with open_checkpoint(path, fmt) as reader:
        return {k: reader.get(k) for k in reader.keys()}


def same(a: dict[str, np.ndarray], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == np.float32
        np.testing.assert_array_equal(a[k], b[k].float().numpy(), err_msg=k)


def test_hf_trainer_folders_and_final_model(hf_run):
    series = scan(hf_run, warn=False)
    assert series.steps == [4, 8, 12]
    assert [c.path.name for c in series.checkpoints] == ["checkpoint-4", "checkpoint-8", "checkpoint-12"]
    assert {c.format for c in series.checkpoints} == {"safetensors"}
    # the final model at the root is not a key frame without --final-step; training_args.bin is ignored
    assert [(c.path, c.problem) for c in series.skipped] == [(hf_run / "model.safetensors", NO_FINAL_STEP)]

    final = scan(hf_run, final_step=100, warn=False)
    assert final.steps == [4, 8, 12, 100] and final.checkpoints[-1].path == hf_run / "model.safetensors"
    # the final model saved at the root is the last checkpoint's weights
    assert all(np.array_equal(a, b) for a, b in zip(read_all(hf_run / "model.safetensors", "safetensors").values(),
                                                   read_all(hf_run / "checkpoint-12", "safetensors").values()))


def test_trainer_state_step_must_match_the_folder_name(hf_run, tmp_path):
    for name in ("checkpoint-4", "checkpoint-8"):
        shutil.copytree(hf_run / name, tmp_path / name)
    shutil.copytree(hf_run / "checkpoint-12", tmp_path / "checkpoint-13")  # trainer_state.json says 12
    series = scan(tmp_path, warn=False)
    assert series.steps == [4, 8]
    assert [(c.path.name, c.problem) for c in series.skipped] == [
        ("checkpoint-13", "its name says step 13 but it records step 12")]


def test_pythia_revisions_sharded_bf16(pythia_run):
    from safetensors.torch import load_file

    series = scan(pythia_run, warn=False)
    assert series.steps == [0, 3, 6]
    assert {(c.format, c.dtype, c.blocks) for c in series.checkpoints} == {("sharded", "BF16", 2)}
    for c in series.checkpoints:
        shards = sorted(c.path.glob("model-*-of-*.safetensors"))
        assert len(shards) >= 2
        same(read_all(c.path, c.format), {k: v for f in shards for k, v in load_file(f).items()})


def test_pytorch_model_bin_fp16(bin_run):
    series = scan(bin_run, warn=False)
    assert series.steps == [2, 4, 6]
    assert {(c.format, c.dtype) for c in series.checkpoints} == {("torch", "F16")}
    for c in series.checkpoints:
        same(read_all(c.path, c.format), torch.load(c.path / "pytorch_model.bin", weights_only=True))


@pytest.mark.parametrize("wrap", ["", "compile", "dp"])
def test_nanogpt_training_dicts_with_wrapper_prefixes(makers, example, tmp_path, wrap):
    """Steps from the names (ckpt_5.pt) or, when names hold none (run_a.pt), from iter_num inside;
    ``_orig_mod.`` (torch.compile) and ``module.`` (DataParallel) are stripped."""
    named = makers.nanogpt_run(example, tmp_path / "named", wrap=wrap)
    unnamed = makers.nanogpt_run(example, tmp_path / "unnamed", wrap=wrap, names="run_", steps=(0, 3, 7))
    assert scan(named, warn=False).steps == [0, 5, 10]
    series = scan(unnamed, warn=False)
    assert series.steps == [0, 3, 7] and [c.path.name for c in series.checkpoints] == ["run_a.pt", "run_b.pt", "run_c.pt"]
    plain = example.GPT(makers.nano_config(example)).state_dict()
    prefix = {"compile": "_orig_mod.", "dp": "module.", "": ""}[wrap]
    for c in series.checkpoints:
        stored = torch.load(c.path, weights_only=True)["model"]
        assert list(stored) == [prefix + k for k in plain]  # as the wrapper wrote them
        got = read_all(c.path, c.format)
        assert sorted(got) == sorted(plain)
        same(got, dict(zip(plain, stored.values())))


def test_lightning_ckpt(lightning_ckpts):
    series = scan(lightning_ckpts, warn=False)
    assert series.steps == [5, 10, 15]
    assert all(c.path.name.startswith("epoch=") and c.format == "lightning" for c in series.checkpoints)
    for c in series.checkpoints:
        stored = torch.load(c.path, weights_only=True)
        assert stored["global_step"] == c.step
        assert all(k.startswith("model.") for k in stored["state_dict"])
        same(read_all(c.path, c.format), {k.removeprefix("model."): v for k, v in stored["state_dict"].items()})


@pytest.mark.parametrize("series", ["pythia_run", "lightning_ckpts", "bin_run"])
def test_render_each_format(request, run_cli, tmp_path, series):
    folder = request.getfixturevalue(series)
    out = tmp_path / "film.webm"
    code, _, err = run_cli("render", folder, "--out", out, "--size", "320x180", "--fps", "2", "--jobs", "1", "--quiet",
                           "--export-points", tmp_path / "pts.npz")
    assert code == 0, err
    assert out.stat().st_size > 0 and "Traceback" not in err
    assert np.load(tmp_path / "pts.npz")["steps"].tolist() == scan(folder, warn=False).steps


def test_scan_reads_no_tensor_data(monkeypatch, pythia_run, lightning_ckpts, run_cli):
    """`scan` works from headers and pickles only: any tensor read would raise here."""
    from layerfilm.io.formats import safetensors_format, torch_format

    def refuse(self, name):
        raise AssertionError(f"scan read tensor {name}")

    monkeypatch.setattr(safetensors_format.SafetensorsReader, "get", refuse)
    monkeypatch.setattr(torch_format.TorchReader, "get", refuse)
    for folder in (pythia_run, lightning_ckpts):
        code, out, err = run_cli("scan", folder)
        assert code == 0, err
        assert out.splitlines()[0].split() == ["step", "format", "path", "blocks", "dtype", "size", "problem"]
        assert len(out.splitlines()) == 4


# ==== Hostile checkpoint files (issue 24)
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


# ==== Hostile checkpoint files (issue 11, format and header items)
T = "transformer.h.1.mlp.c_fc.weight"  # [128, 32] F32, right after its bias [128]
LAST = "transformer.wte.weight"  # [256, 32], the last tensor's data
DEEP = "[" * 200_000 + "]" * 200_000


def split(path: Path) -> tuple[dict, bytes]:
    """(JSON header, tensor data) of a safetensors file."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def join(path: Path, header: dict | str | bytes, data: bytes) -> None:
    """Write a safetensors file from a header (a dict, or its text as is) and the tensor data."""
    text = header if isinstance(header, bytes) else (header if isinstance(header, str) else json.dumps(header)).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


DROP = object()


def entry(**changes):
    """A mutation setting keys of tensor T's entry (value DROP: delete the key)."""
    def mutate(h):
        for key, value in changes.items():
            if value is DROP:
                del h[T][key]
            else:
                h[T][key] = value
    return mutate


def at(name, **changes):
    def mutate(h):
        h[name].update(changes)
    return mutate


def as_text(make):
    """A mutation that rewrites the header's text (``make(header_text) -> text``)."""
    def mutate(h):
        return make(json.dumps(h))
    return mutate


def grow_last(h):
    start = h[LAST]["data_offsets"][0]
    h[LAST].update(shape=[512, 32], data_offsets=[start, start + 512 * 32 * 4])


# name -> (mutation of the header, or of (header, data); what scan's problem says)
HEADER_CASES = {
    "no_shape": (entry(shape=DROP), f"corrupt safetensors header (tensor '{T}' has no shape)"),
    "no_dtype": (entry(dtype=DROP), f"tensor '{T}' has no dtype"),
    "shape_null": (entry(shape=None), f"tensor '{T}': shape null is not a list of non-negative integers"),
    "shape_5": (entry(shape=5), "shape 5 is not a list of non-negative integers"),
    "shape_negative": (entry(shape=[-128, -32]), "shape [-128, -32] is not a list"),
    "shape_bool": (entry(shape=[True, 4096]), "shape [true, 4096] is not a list"),
    "shape_float": (entry(shape=[128.0, 32]), "shape [128.0, 32] is not a list"),
    "shape_wrong_size": (entry(shape=[64, 32]), "data_offsets span 16384 bytes, shape and dtype need 8192"),
    "offsets_infinity": (entry(data_offsets=[101504, float("inf")]), "(Infinity is not valid JSON)"),
    "offsets_nan": (entry(data_offsets=[float("nan"), 117888]), "(NaN is not valid JSON)"),
    "offsets_float": (entry(data_offsets=[101504.0, 117888.0]),
                      "data_offsets [101504.0, 117888.0] are not two non-negative integers"),
    "offsets_fraction": (entry(data_offsets=[101504, 117888.5]), "are not two non-negative integers"),
    "offsets_three": (entry(data_offsets=[101504, 117888, 0]), "data_offsets [101504, 117888, 0] are not two"),
    "offsets_strings": (entry(data_offsets=["101504", "117888"]), "are not two non-negative integers"),
    "offsets_negative": (entry(data_offsets=[-16384, 0]), "data_offsets [-16384, 0] are not two"),
    "offsets_huge": (entry(data_offsets=[2**64, 2**64 + 16384]), "are not two non-negative integers"),
    "offsets_reversed": (entry(data_offsets=[117888, 101504]), f"tensor '{T}': data_offsets end before they start"),
    "offsets_overlap": (entry(data_offsets=[101500, 117884]), f"tensor '{T}': data_offsets overlap the previous tensor"),
    "offsets_gap": (entry(data_offsets=[101508, 117892]), f"tensor '{T}': data_offsets leave a gap before it"),
    "offsets_same_range": (at("transformer.h.1.ln_1.weight", data_offsets=[100480, 100608]),
                           "data_offsets overlap the previous tensor"),
    "past_the_end": (grow_last, "truncated (278,645 bytes on disk, header promises 311,413)"),
    "dtype_unknown": (entry(dtype="XYZ"), f"tensor '{T}': unknown dtype \"XYZ\""),
    "dtype_not_text": (entry(dtype=4), "unknown dtype 4"),
    "entry_not_object": (lambda h: h.__setitem__(T, 5), f"tensor '{T}' is not a JSON object"),
    "metadata_not_strings": (lambda h: h["__metadata__"].__setitem__("step", 60), "__metadata__ is not a map of strings"),
    "name_lone_surrogate": (lambda h: h.__setitem__("\ud800x", h.pop(T)), "tensor name '\\ud800x' is not valid UTF-8"),
    "not_an_object": (as_text(lambda t: "[]"), "corrupt safetensors header (not a JSON object)"),
    "nested_200k_deep": (as_text(lambda t: t[:-1] + ', "x": ' + DEEP + "}"), "(JSON nested too deeply)"),
    "not_utf8": (as_text(lambda t: t.encode().replace(b"lm_head", b"lm\xffhead")), "'utf-8' codec can't decode byte 0xff"),
}
DATA_CASES = {  # mutations of the data after the header
    "trailing_bytes": (lambda data: data + bytes(16), "corrupt safetensors file (16 bytes after the last tensor's data)"),
}
OTHER_CASES = {  # built by their own code in `hostile` below
    "f8_block_tensor": f"tensor {T} has dtype F8_E4M3, which layerfilm cannot read",
    "sparse_pt": f"tensor {T} is sparse; layerfilm reads dense tensors",
    "pickle_protocol_4_pt": "unsafe pickle, refused without running it",
    "index_200k_deep": "corrupt index (no weight_map)",
}
GOOD = ("step_000000.safetensors", "step_000030.safetensors", "step_000060.safetensors")


def hostile_name(case: str) -> str:
    return f"step_{100 + sorted({**HEADER_CASES, **DATA_CASES, **OTHER_CASES}).index(case):06d}"


@pytest.fixture(scope="module")
def hostile(tiny_run, tmp_path_factory) -> Path:
    """Three good checkpoints of tiny_run, one hostile file per case, and a Trainer folder whose
    trainer_state.json is nested 200k deep (usable: its step comes from its name)."""
    d = tmp_path_factory.mktemp("hostile")
    for name in GOOD:
        shutil.copy(tiny_run / name, d)
    source = tiny_run / "step_000060.safetensors"
    header, data = split(source)
    for case, (mutate, _) in HEADER_CASES.items():
        h = json.loads(json.dumps(header))
        h = mutate(h) or h
        join(d / f"{hostile_name(case)}.safetensors", h, data)
    for case, (mutate, _) in DATA_CASES.items():
        join(d / f"{hostile_name(case)}.safetensors", header, mutate(data))
    state = load_file(source)
    save_file({**state, T: state[T].to(torch.float8_e4m3fn)}, str(d / f"{hostile_name('f8_block_tensor')}.safetensors"))
    torch.save({"model": {**state, T: state[T].to_sparse()}, "iter_num": 0}, d / f"{hostile_name('sparse_pt')}.pt")
    (d / f"{hostile_name('pickle_protocol_4_pt')}.pt").write_bytes(pickle.dumps({"model": {}}, protocol=4))
    sharded = d / hostile_name("index_200k_deep")
    sharded.mkdir()
    shutil.copy(source, sharded / "model-00001-of-00001.safetensors")
    (sharded / "model.safetensors.index.json").write_text('{"weight_map": ' + DEEP + "}")
    trainer = d / "checkpoint-70"
    trainer.mkdir()
    shutil.copy(source, trainer / "model.safetensors")
    (trainer / "trainer_state.json").write_text('{"global_step": 70, "log_history": ' + DEEP + "}")
    return d


EXPECTED = {hostile_name(c): why for c, (_, why) in {**HEADER_CASES, **DATA_CASES}.items()}
EXPECTED.update({hostile_name(c): why for c, why in OTHER_CASES.items()})


@pytest.fixture(scope="module")
def scanned(hostile):
    """`layerfilm scan --json` rows of the hostile folder by file name (stem), and its stderr."""
    from layerfilm.cli.commands import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["scan", str(hostile), "--json"])
    assert code == 0, err.getvalue()
    return {Path(r["path"]).name.split(".")[0]: r for r in json.loads(out.getvalue())}, err.getvalue()


@pytest.mark.parametrize("case", sorted({**HEADER_CASES, **DATA_CASES, **OTHER_CASES}))
def test_scan_calls_hostile_file_unusable(scanned, case):
    rows, err = scanned
    row = rows[hostile_name(case)]
    assert EXPECTED[hostile_name(case)] in row.get("problem", ""), row
    assert "\n" not in row["problem"] and "Traceback" not in err


def test_scan_keeps_good_and_deep_trainer_state(scanned):
    rows, _ = scanned
    usable = sorted(r["step"] for r in rows.values() if "problem" not in r)
    assert usable == [0, 30, 60, 70]


def test_render_skips_each_hostile_file_with_one_line(hostile, run_cli, tmp_path):
    out = tmp_path / "film.webm"
    code, _, err = run_cli("render", hostile, "--out", out, "--size", "320x180", "--fps", "2", "--jobs", "1", "--quiet")
    assert code == 0, err
    assert "Traceback" not in err and "Detected pickle protocol" not in err and out.stat().st_size > 0
    warned = [line for line in err.splitlines() if line.startswith("warning: ")]
    logs = [w for w in warned if "training logs not read" in w]  # the deep trainer_state.json, read for the curves
    assert len(logs) == 1 and "checkpoint-70/trainer_state.json: training logs not read (" in logs[0], logs
    warned = [w for w in warned if w not in logs]
    assert len(warned) == len(EXPECTED), "\n".join(warned)
    for name, why in EXPECTED.items():
        assert sum(f"{name}" in w and why in w for w in warned) == 1, (name, why)
    listing = err.split(f"skipped {len(EXPECTED)} checkpoint(s):\n")
    assert len(listing) == 2 and len(listing[1].splitlines()) == len(EXPECTED)
    others = [line for line in listing[0].splitlines() if not line.startswith(("warning: ", "wrote "))]
    assert others == [], others


def test_pickle_protocol_warning_silenced(tmp_path):
    """torch warns "Detected pickle protocol 4" on such a pickle; our one error line is all the user sees."""
    path = tmp_path / "step_1.pt"
    path.write_bytes(pickle.dumps({"model": {}}, protocol=4))
    with warnings.catch_warnings(record=True) as caught:
        with pytest.raises(LayerfilmError, match="step_1.pt: unsafe pickle"):
            with open_checkpoint(path, "torch"):
                pass
    assert [str(w.message) for w in caught] == []


# ---------------------------------------------------------------- random mutations (hypothesis)

@contextlib.contextmanager
def time_limit(seconds: float):
    """Fail (TimeoutError) instead of hanging: each open + read must finish within ``seconds``."""
    def expire(*_):
        raise TimeoutError(f"took more than {seconds} s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def read_ours(path: Path, fmt: str) -> dict | None:
    """Every tensor as layerfilm reads it, or None when layerfilm refuses the file (a LayerfilmError;
    any other exception fails the test)."""
    try:
        with time_limit(5), open_checkpoint(path, fmt) as reader:
            return {k: reader.get(k) for k in reader.keys()}
    except LayerfilmError:
        return None


def read_official(path: Path) -> dict | None:
    try:
        with safe_open(str(path), "pt") as f:
            return {k: f.get_tensor(k).float().numpy() for k in f.keys()}
    except Exception:
        return None


SMALL = {"alpha": torch.randn(16, 16), "beta": torch.randn(5).half(), "gamma": torch.randn(2, 3).bfloat16(),
         "delta": torch.arange(6, dtype=torch.int64), "eps": torch.zeros(0, 3), "zeta": torch.tensor([True, False])}
SETTINGS = settings(max_examples=150, deadline=None, database=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=2),
    max_leaves=5)


def mutate_header(data: st.DataObject, h: dict) -> None:
    """One random JSON-level change to a safetensors header."""
    names = [n for n in h if n != "__metadata__"]
    name = data.draw(st.sampled_from(names)) if names else None
    op = data.draw(st.sampled_from(["drop_key", "set_key", "offsets", "dtype", "shape", "drop_tensor",
                                    "swap_offsets", "metadata"]))
    if name is None or op == "metadata":
        h["__metadata__"] = data.draw(json_values)
        return
    info = h[name]
    if not isinstance(info, dict):
        h[name] = data.draw(json_values)
    elif op == "drop_key":
        info.pop(data.draw(st.sampled_from(["dtype", "shape", "data_offsets"])), None)
    elif op == "set_key":
        info[data.draw(st.sampled_from(["dtype", "shape", "data_offsets", "extra"]))] = data.draw(json_values)
    elif op == "offsets" and isinstance(info.get("data_offsets"), list) and info["data_offsets"]:
        i = data.draw(st.integers(0, len(info["data_offsets"]) - 1))
        if isinstance(info["data_offsets"][i], int):
            info["data_offsets"][i] += data.draw(st.integers(-8, 8))
    elif op == "dtype":
        info["dtype"] = data.draw(st.sampled_from([*DTYPE_BITS, "XYZ", "f32"]))
    elif op == "shape" and isinstance(info.get("shape"), list):
        info["shape"] = data.draw(st.lists(st.integers(-1, 6), max_size=3)) if data.draw(st.booleans()) \
            else info["shape"] + [data.draw(st.integers(0, 2))]
    elif op == "drop_tensor":
        del h[name]
    elif op == "swap_offsets":
        other = h[data.draw(st.sampled_from(names))]
        if isinstance(other, dict) and "data_offsets" in info and "data_offsets" in other:
            info["data_offsets"], other["data_offsets"] = other["data_offsets"], info["data_offsets"]


def mutate_bytes(data: st.DataObject, raw: bytes) -> bytes:
    """Random byte flips, then maybe a truncation or an extension."""
    raw = bytearray(raw)
    for pos in data.draw(st.lists(st.integers(0, len(raw) - 1), max_size=4)):
        raw[pos] ^= data.draw(st.integers(1, 255))
    cut = data.draw(st.sampled_from(["none", "none", "none", "truncate", "extend"]))
    if cut == "truncate":
        return bytes(raw[:data.draw(st.integers(0, len(raw)))])
    return bytes(raw) + (bytes(data.draw(st.integers(1, 16))) if cut == "extend" else b"")


@pytest.fixture(scope="module")
def small_safetensors(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prop") / "small.safetensors"
    save_file(SMALL, str(path))
    return path


@SETTINGS
@given(data=st.data())
def test_mutated_safetensors_never_crash_nor_lie(small_safetensors, data):
    header, tensors = split(small_safetensors)
    for _ in range(data.draw(st.integers(0, 2))):
        mutate_header(data, header)
    text = json.dumps(header).encode()
    raw = mutate_bytes(data, struct.pack("<Q", len(text)) + text + tensors)
    path = small_safetensors.with_name("mutated.safetensors")
    path.write_bytes(raw)
    ours, official = read_ours(path, "safetensors"), read_official(path)
    if ours is not None:
        assert official is not None, "layerfilm accepted a file the safetensors library refuses"
        assert ours.keys() == official.keys()
        for k in ours:
            np.testing.assert_array_equal(ours[k], official[k], err_msg=k)


@pytest.fixture(scope="module")
def small_pt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prop") / "small.pt"
    torch.save({"model": {k: v for k, v in SMALL.items()}, "iter_num": 7}, path)
    return path


@SETTINGS
@given(data=st.data())
def test_mutated_pt_never_crashes(small_pt, data):
    raw = small_pt.read_bytes()
    path = small_pt.with_name("mutated.pt")
    path.write_bytes(mutate_bytes(data, raw))
    read_ours(path, "torch")  # a LayerfilmError or tensors; anything else fails
