"""Hostile checkpoint files (issue 11, format and header items): every one is built for real, from a
file written by safetensors or torch, and must come out of `scan` as a skipped checkpoint with one
problem line and out of `render` as one warning line naming it; never a traceback, never a wrong tensor.
A property test mutates valid safetensors headers and .pt archives at random to the same end."""

from __future__ import annotations

import contextlib
import io
import json
import pickle
import shutil
import signal
import struct
import warnings
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
