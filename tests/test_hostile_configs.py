"""Hostile config.json and tokenizer_config.json beside real checkpoints, with --features activations:
code named by an auto_map never runs (and nothing asks "[y/N]" on stdin), malformed sizes and runaway
JSON are one line, and a config describing a larger model than its checkpoint is refused before
anything real is built, within a bounded address space and time.

The checkpoints are the tiny real runs of tests/test_activations.py (its session fixtures); the CLI
runs as a real process where stdin or memory is the point, in-process otherwise.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import test_activations
from conftest import ROOT
from layerfilm.io.formats import open_checkpoint
from layerfilm.points.activations import model as model_module
from layerfilm.points.activations.llama import llama_shape

gpt2_run, llama_run = test_activations.gpt2_run, test_activations.llama_run  # session fixtures: tiny real runs
ADDRESS_SPACE = 3 << 30  # a whole activation film of these runs fits in 2 GiB of address space
TIMEOUT = 240  # seconds; a run takes 5-20 s here (imports), the old code ran minutes or died
AUTO_MAP_MODEL = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
REFUSED = "its auto_map names code in the checkpoint folder, and layerfilm does not run code from checkpoint folders"
AGAIN = "is it this checkpoint's config?"
# the refused activation film's options: --jobs 1, so that no film workers start (a render starts them
# while it reads, and a refusal then waits for their imports: 2 processes for nothing)
ACTIVATIONS = ("--features", "activations", "--device", "cpu", "--quiet", "--jobs", "1")


def copy_run(run: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "ckpts"
    shutil.copytree(run, dest)
    return dest


def edit_json(folder: Path, name: str, change: dict | None = None, text: str | None = None) -> None:
    """In every checkpoint-N/ of ``folder``: update JSON file ``name`` with ``change``, or replace it by ``text``."""
    for c in folder.glob("checkpoint-*"):
        if text is None:
            text_now = json.dumps({**json.loads((c / name).read_text()), **(change or {})})
            (c / name).write_text(text_now)
        else:
            (c / name).write_text(text)


def files(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` with its size and modification time: what 'untouched' compares."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


def header_count(ckpt: Path) -> tuple[int, int]:
    """(numbers, tensors) in a checkpoint folder's model.safetensors, from its header."""
    with open_checkpoint(ckpt / "model.safetensors", "safetensors") as reader:
        shapes = [reader.shape(k) for k in reader.keys()]
    return sum(model_module._numel(s) for s in shapes), len(shapes)


def limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def layerfilm(tmp_path: Path, *argv: object, stdin: str = "", python: bool = False) -> tuple[int, str, str, float]:
    """Run ``python -m layerfilm argv`` (this checkout's package; ``python argv`` if ``python``) as a real
    process under an address-space limit, with ``stdin``: text piped in, or "yes" for the output of
    yes(1). Returns (exit code, stdout, stderr, seconds). Hugging Face's cache is a folder of ``tmp_path`` ("hf")."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, *([] if python else ["-m", "layerfilm"]), *map(str, argv)]
    (tmp_path / "hf").mkdir(exist_ok=True)
    start = time.monotonic()
    if stdin == "yes":
        yes = subprocess.Popen(["yes"], stdout=subprocess.PIPE)
        try:
            proc = subprocess.run(cmd, stdin=yes.stdout, capture_output=True, text=True, env=env, timeout=TIMEOUT,
                                  preexec_fn=limit_memory)
        finally:
            yes.kill()
            yes.wait()
            assert yes.stdout is not None
            yes.stdout.close()
    else:
        proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, env=env, timeout=TIMEOUT,
                              preexec_fn=limit_memory)
    return proc.returncode, proc.stdout, proc.stderr, time.monotonic() - start


# ------------------------------------------------------------------ code from the checkpoint folder


def plant_evil(folder: Path, marker: Path, name: str) -> str:
    """Beside every checkpoint, an evil.py that creates ``marker`` when imported, named by the auto_map of
    ``name`` (config.json: an architecture transformers does not know; tokenizer_config.json: a tokenizer
    class it does not know). Returns the hint the refusal gives."""
    for c in folder.glob("checkpoint-*"):
        (c / "evil.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n")
    if name == "config.json":
        edit_json(folder, name, {"model_type": "evil", "auto_map": AUTO_MAP_MODEL})
        return "build the model with --model package.module:make_model"
    edit_json(folder, name, {"tokenizer_class": "EvilTokenizer",
                             "auto_map": {"AutoTokenizer": ["evil.EvilTokenizer", "evil.EvilTokenizer"]}})
    return "give the probe as token ids: --probe ids.pt or ids.npy"


@pytest.mark.parametrize("command, name, stdin", [
    ("render", "config.json", "y\n"), ("stability", "config.json", "yes"),
    ("render", "tokenizer_config.json", "yes"), ("stability", "tokenizer_config.json", "y\n"),
])
@pytest.mark.slow
def test_an_auto_map_never_runs_code_and_never_asks(gpt2_run, tmp_path, command, name, stdin):
    """transformers asked "Do you wish to run the custom code? [y/N]" on stdin and ran evil.py on "y"."""
    ckpts, marker = copy_run(gpt2_run, tmp_path), tmp_path / "MARKER"
    hint = plant_evil(ckpts, marker, name)
    before = files(ckpts)
    out = ("--out", tmp_path / "a.webm") if command == "render" else ()
    code, stdout, stderr, _ = layerfilm(tmp_path, command, ckpts, *ACTIVATIONS, *out, stdin=stdin)
    assert not marker.exists()
    assert "[y/N]" not in stdout + stderr and "custom code" not in stdout + stderr
    assert code == 2 and stdout == ""
    assert stderr == f"layerfilm: error: {ckpts / 'checkpoint-0' / name}: {REFUSED} ({hint})\n"
    assert files(ckpts) == before and sorted(p.name for p in tmp_path.iterdir()) == ["ckpts", "hf"]
    assert not list((tmp_path / "hf").rglob("evil*"))  # not even copied to transformers' modules cache


def test_an_auto_map_of_an_architecture_transformers_has_builds_its_own(gpt2_run, tmp_path, run_cli):
    """Phi-3's config.json names its own files and a model_type transformers knows: transformers' own
    class is built (trust_remote_code=False), and the folder's file never runs."""
    ckpts, marker = copy_run(gpt2_run, tmp_path), tmp_path / "MARKER"
    plant_evil(ckpts, marker, "config.json")
    edit_json(ckpts, "config.json", {"model_type": "gpt2"})
    code, _, err = run_cli("render", ckpts, "--features", "activations", "--device", "cpu", "--quiet", "--points", "16",
                           "--size", "320x192", "--fps", "1", "--out", tmp_path / "a.webm")
    assert code == 0, err
    assert not marker.exists() and (tmp_path / "a.webm").stat().st_size > 0


# ------------------------------------------------------------------ malformed configs: one line, no traceback


@pytest.mark.parametrize("change, said", [
    ({"num_hidden_layers": 2.5}, "num_hidden_layers is 2.5"),
    ({"hidden_size": "32"}, "hidden_size is '32'"),
    ({"hidden_size": -32}, "hidden_size is -32"),
    ({"vocab_size": 1e9}, "vocab_size is 1000000000.0"),
    ({"num_key_value_heads": True}, "num_key_value_heads is True"),
    ({"text_config": {"hidden_size": 0}}, "text_config.hidden_size is 0"),
])
def test_a_size_that_is_not_a_positive_whole_number_is_one_line(llama_run, tmp_path, run_cli, change, said):
    ckpts = copy_run(llama_run, tmp_path)
    edit_json(ckpts, "config.json", change)
    assert_one_line(run_cli, ckpts, tmp_path, f"{ckpts / 'checkpoint-0' / 'config.json'}: {said}; "
                                               "it must be a positive whole number")


NESTED = "nested more than 32 deep; is it a config file?"


@pytest.mark.parametrize("run, name, text, said", [
    ("llama_run", "config.json", "[" * 100_000 + "]" * 100_000, f"JSON {NESTED}"),
    ("llama_run", "config.json", '{"a": ' * 40 + "1" + "}" * 40, f"JSON {NESTED}"),  # deep enough for transformers
    ("gpt2_run", "tokenizer_config.json", '{"a": ' * 200_000 + "1" + "}" * 200_000, f"JSON {NESTED}"),
    ("gpt2_run", "tokenizer_config.json", '{"tokenizer_class": 7}',
     "tokenizer_class is 7; it must be the name of a transformers tokenizer class"),
    ("llama_run", "config.json", "[1, 2]", "not a JSON object"),
])
def test_runaway_or_mistyped_json_is_one_line(request, tmp_path, run_cli, run, name, text, said):
    """json raised RecursionError (read_config caught only ValueError and OSError); transformers raised
    AttributeError on a tokenizer_class of 7."""
    ckpts = copy_run(request.getfixturevalue(run), tmp_path)
    edit_json(ckpts, name, text=text)
    assert_one_line(run_cli, ckpts, tmp_path, f"{ckpts / 'checkpoint-0' / name}: {said}")


def assert_one_line(run_cli, ckpts: Path, tmp_path: Path, line: str) -> None:
    """render exits 2 with ``line`` alone, writes nothing and changes no file of ``ckpts``."""
    before = files(ckpts)
    code, out, err = run_cli("render", ckpts, *ACTIVATIONS, "--out", tmp_path / "a.webm")
    assert (code, out, err) == (2, "", f"layerfilm: error: {line}\n")
    assert files(ckpts) == before and [p.name for p in tmp_path.iterdir()] == ["ckpts"]


# ------------------------------------------------------------------ configs larger than their checkpoint


def larger(ckpts: Path, what: str) -> str:
    """The one line for a config describing more than checkpoint-0 holds, as each check words it."""
    config, ckpt = ckpts / "checkpoint-0" / "config.json", ckpts / "checkpoint-0"
    held, tensors = header_count(ckpt)
    if what == "build":
        return f"{config}: describes a model of more than {model_module.build_limit(held):,} numbers (parameters and " \
               f"buffers) and {ckpt} holds {held:,}; {AGAIN}"
    if what.startswith("layers"):
        key, value = what.split()[1:]
        return f"{config}: {key} is {int(value):,} and {ckpt} holds {tensors:,} tensors; {AGAIN}"
    shape = llama_shape(json.loads(config.read_text()))
    return f"{config}: describes a model of {shape.parameters:,} parameters and {ckpt} holds {held:,}; {AGAIN}"


LARGER = [
    ("gpt2_run", {"n_layer": 200, "n_embd": 2048}, "layers n_layer 200"),  # the issue's: 9.8 GB, then a traceback
    ("gpt2_run", {"n_embd": 2048, "n_head": 2}, "build"),
    ("gpt2_run", {"n_positions": 10**9}, "build"),  # "can't allocate 128000000000 bytes"
    ("gpt2_run", {"vocab_size": 10**9}, "build"),
    ("llama_run", {"rope_scaling": {"rope_type": "linear", "factor": 2.0}, "num_hidden_layers": 10**9},
     "layers num_hidden_layers 1000000000"),  # transformers' Llama: the native one's guard did not cover it
    ("llama_run", {"rope_scaling": {"rope_type": "linear", "factor": 2.0}, "intermediate_size": 10**7}, "build"),
    ("llama_run", {"model_type": "qwen2", "num_hidden_layers": 10**8}, "layers num_hidden_layers 100000000"),
    ("llama_run", {"vocab_size": 10**9}, "parameters"),  # the native Llama
]

# Runs ``layerfilm.cli.commands.main`` on each argv of the JSON list argv[1], in this one process, each
# with its own stdout and stderr (file descriptors 1 and 2, so whatever writes there is caught); prints
# [[exit code, stdout, stderr, seconds], ...] as JSON to the stdout it started with.
MAIN_EACH = """
import json, os, sys, tempfile, time
from layerfilm.cli.commands import main
results, real_out = [], os.dup(1)
for argv in json.loads(sys.argv[1]):
    with tempfile.TemporaryFile() as o, tempfile.TemporaryFile() as e:
        os.dup2(o.fileno(), 1), os.dup2(e.fileno(), 2)
        start = time.monotonic()
        code = main(argv)
        sys.stdout.flush(), sys.stderr.flush()
        seconds = time.monotonic() - start
        o.seek(0), e.seek(0)
        results.append([code, o.read().decode(), e.read().decode(), seconds])
os.write(real_out, json.dumps(results).encode())
"""


@pytest.fixture(scope="module")
def larger_refusals(request, tmp_path_factory) -> list[tuple[Path, dict, tuple[int, str, str, float], dict]]:
    """Every LARGER config, each on its own copy of its run, refused by ``render`` in one real process
    limited to 3 GiB of address space (one import of torch and transformers for all; the limit holds for
    each, and for all together). Per config: (ckpts, files before, (code, stdout, stderr, seconds), files after)."""
    copies = []
    for i, (run, change, _) in enumerate(LARGER):
        ckpts = copy_run(request.getfixturevalue(run), tmp_path_factory.mktemp(f"larger{i}"))
        edit_json(ckpts, "config.json", change)
        copies.append((ckpts, files(ckpts)))
    tmp = tmp_path_factory.mktemp("hf_home")
    argvs = [["render", str(c), *ACTIVATIONS, "--out", str(c.parent / "a.webm")] for c, _ in copies]
    code, out, err, _ = layerfilm(tmp, "-c", MAIN_EACH, json.dumps(argvs), python=True)
    assert code == 0, err
    return [(c, before, tuple(r), files(c)) for (c, before), r in zip(copies, json.loads(out))]


@pytest.mark.parametrize("i", range(len(LARGER)), ids=[f"{r}-{w}" for r, _, w in LARGER])
@pytest.mark.slow
def test_a_config_larger_than_its_checkpoint_is_refused_in_bounded_memory(larger_refusals, i):
    """Each is refused from the checkpoint's header and a build on the meta device, in a process limited
    to 3 GiB of address space (the old code allocated 9.8 GB and more, or made Qwen2's per-layer list)."""
    ckpts, before, (code, out, err, seconds), after = larger_refusals[i]
    assert (code, out, err) == (2, "", f"layerfilm: error: {larger(ckpts, LARGER[i][2])}\n")
    assert seconds < TIMEOUT
    assert after == before and sorted(p.name for p in ckpts.parent.iterdir()) == ["ckpts"]


def test_a_config_of_other_shapes_is_refused_naming_the_tensor(gpt2_run, tmp_path, run_cli):
    """A smaller MLP than the checkpoint's (fewer parameters, so the count passes): the shapes do not."""
    ckpts = copy_run(gpt2_run, tmp_path)
    edit_json(ckpts, "config.json", {"n_inner": 16})
    ckpt = ckpts / "checkpoint-0"
    assert_one_line(run_cli, ckpts, tmp_path, f"{ckpt / 'config.json'}: describes transformer.h.0.mlp.c_fc.weight "
                                              f"of shape (32, 16) and {ckpt} holds (32, 128); {AGAIN}")
