"""Blocks: finding a model's blocks in its checkpoints (layerfilm.io.blocks).

Blocks (layerfilm.io.blocks): parameters grouped into decoder blocks across naming conventions, the
regex override, the filmed matrix and its points (output neurons, whatever the storage layout).

Block naming across architectures: tiny models built offline from transformers configs.

Hostile config.json and tokenizer_config.json beside real checkpoints, with --features activations:
code named by an auto_map never runs (and nothing asks "[y/N]" on stdin), malformed sizes and runaway
JSON are one line, and a config describing a larger model than its checkpoint is refused before
anything real is built, within a bounded address space and time.

The checkpoints are the tiny real runs of tests/test_activations.py (its session fixtures); the CLI
runs as a real process where stdin or memory is the point, in-process otherwise."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers as T  # the `test` extra
from safetensors.numpy import load_file, save_file

import test_activations
from conftest import ROOT
from layerfilm.errors import LayerError
from layerfilm.film_options import FilmOptions
from layerfilm.io.blocks import map_blocks, resolve_param, strip_prefixes
from layerfilm.io.formats import open_checkpoint
from layerfilm.io.scan import scan
from layerfilm.points.activations import model as model_module
from layerfilm.points.activations.llama import llama_shape
from layerfilm.points.weights import WeightSpec
from layerfilm.study import Study

# ==== Blocks (layerfilm.io.blocks)
CONVENTIONS = {
    "transformer.h.{i}.": "mlp.c_fc.weight",
    "model.layers.{i}.": "mlp.up_proj.weight",
    "gpt_neox.layers.{i}.": "mlp.dense_h_to_4h.weight",
    "blocks.{i}.": "mlp.c_fc.weight",
    "layers.{i}.": "mlp.fc1.weight",
}


@pytest.mark.parametrize("pattern, mlp_in", CONVENTIONS.items())
def test_blocks_grouped_across_conventions(pattern, mlp_in):
    n = 12  # two-digit indices must sort numerically
    keys = ["embed.weight", "final_norm.weight"]
    shapes = {"embed.weight": (10, 4), "final_norm.weight": (4,)}
    for i in range(n):
        for comp, shape in ((mlp_in, (16, 4)), ("attn.o_proj.weight", (4, 4)), ("ln.weight", (4,))):
            keys.append(pattern.format(i=i) + comp)
            shapes[keys[-1]] = shape
    lm = map_blocks(keys)
    assert lm.blocks == tuple(range(n))
    assert lm.prefix + f".{n - 1}." == pattern.format(i=n - 1)
    assert resolve_param(lm, None, shapes) == mlp_in
    assert resolve_param(lm, "attn.o_proj", shapes) == "attn.o_proj.weight"
    with pytest.raises(LayerError, match="candidates: attn.o_proj.weight"):
        resolve_param(lm, "nope", shapes)


def test_blocks_regex_override():
    keys = [f"net.stage{i}.conv.weight" for i in range(3)]
    lm = map_blocks(keys, r"net\.stage(\d+)\.")
    assert lm.blocks == (0, 1, 2) and lm.components() == ["conv.weight"]
    with pytest.raises(LayerError, match="no decoder blocks"):
        map_blocks(keys)


def test_points_are_output_neurons_in_both_layouts(tiny_run, tmp_path):
    """GPT-2's Conv1D stores [in, out]: transposing every block matrix must give the same points."""
    (tmp_path / "linear").mkdir()
    (tmp_path / "conv1d").mkdir()
    for f in sorted(tiny_run.glob("*.safetensors"))[:3]:
        state = load_file(str(f))
        save_file(state, str(tmp_path / "linear" / f.name))
        conv = {k: (np.ascontiguousarray(v.T) if v.ndim == 2 and ".h." in k else v) for k, v in state.items()}
        save_file(conv, str(tmp_path / "conv1d" / f.name))
    spec = WeightSpec(points=50, seed=3)
    a = Study(scan(tmp_path / "linear"), FilmOptions(weights=spec, cache=False), progress=False).points()
    b = Study(scan(tmp_path / "conv1d"), FilmOptions(weights=spec, cache=False), progress=False).points()
    assert "rows" in a.name and "columns" in b.name
    np.testing.assert_array_equal(a.point_ids, b.point_ids)
    for t in range(3):
        np.testing.assert_array_equal(a.store[t], b.store[t])
    # the points are rows of c_fc [4d, d] = output neurons: D is the input width
    assert a.store[0].shape == (4, 50, 32)
    w = load_file(str(sorted(tiny_run.glob("*.safetensors"))[0]))["transformer.h.2.mlp.c_fc.weight"]
    np.testing.assert_array_equal(a.store[0][2], w[a.point_ids[2]])


def test_pytorch_transformer_layers_film_linear1_without_param(lightning_encoder, tmp_path, run_cli):
    """A real Lightning checkpoint of nn.TransformerEncoder layers: blocks `encoder.layers.N.`, the
    default filmed matrix is linear1 (the same film as --param linear1), in_proj_weight reachable as
    --param self_attn.in_proj."""
    from layerfilm.points.weights import plan

    series = scan(lightning_encoder, warn=False)
    assert series.steps == [3, 6, 9]
    wp = plan(series, WeightSpec())
    assert wp.component == "linear1.weight" and wp.shape == (48, 16) and not wp.transpose
    assert wp.layer_map.blocks == (0, 1, 2) and wp.tensor_names[0].endswith("encoder.layers.0.linear1.weight")
    args = ("--size", "320x192", "--fps", "1", "--points", "20", "--jobs", "1", "--quiet")
    code, _, err = run_cli("render", lightning_encoder, "--out", tmp_path / "a.webm", "--export-points", tmp_path / "a.npz",
                           *args)
    assert code == 0, err
    code, _, err = run_cli("render", lightning_encoder, "--out", tmp_path / "b.webm", "--export-points", tmp_path / "b.npz",
                           "--param", "linear1", *args)
    assert code == 0, err
    a, b = np.load(tmp_path / "a.npz"), np.load(tmp_path / "b.npz")
    assert a["xy"].shape == (3, 3, 20, 2)
    np.testing.assert_array_equal(a["xy"], b["xy"])
    assert plan(series, WeightSpec(param="self_attn.in_proj")).component == "self_attn.in_proj_weight"
    code, out, err = run_cli("scan", lightning_encoder, "--deep")
    assert code == 0 and "3 usable, 0 skipped" in err, err


def test_one_mlp_like_pair_is_filmed_under_any_names():
    """Unknown names: the up matrix [h, d] of the block's one up/down pair ([h, d] and [d, h]) is the
    default; two such pairs (or none) leave the choice to --param."""
    def blocks(comps):
        keys = [f"net.blocks.{i}.{c}" for i in range(2) for c in comps]
        return map_blocks(keys), {k: comps[k.split(".", 3)[3]] for k in keys}

    lm, shapes = blocks({"mix.q.weight": (8, 8), "mix.out.weight": (8, 8), "grow.weight": (24, 8), "shrink.weight": (8, 24),
                         "norm.weight": (8,)})
    assert resolve_param(lm, None, shapes) == "grow.weight"
    lm, shapes = blocks({"mix.q.weight": (8, 8), "shrink.weight": (8, 24), "grow.weight": (24, 8), "a.weight": (16, 8),
                         "b.weight": (8, 16)})
    with pytest.raises(LayerError, match="nor as one up/down pair of matrices; pass --param, one of: a.weight"):
        resolve_param(lm, None, shapes)
    lm, shapes = blocks({"mix.q.weight": (8, 8), "proj.weight": (24, 8)})
    with pytest.raises(LayerError, match="pass --param"):
        resolve_param(lm, None, shapes)


# ==== Block naming across architectures
H, FF, L = 32, 64, 2
ARCHS = {
    "gpt2": lambda: T.GPT2LMHeadModel(T.GPT2Config(n_embd=H, n_layer=L, n_head=2, vocab_size=64, n_positions=32)),
    "llama": lambda: T.LlamaForCausalLM(T.LlamaConfig(hidden_size=H, intermediate_size=FF, num_hidden_layers=L,
                                                      num_attention_heads=2, num_key_value_heads=2, vocab_size=64)),
    "mistral": lambda: T.MistralForCausalLM(T.MistralConfig(hidden_size=H, intermediate_size=FF, num_hidden_layers=L,
                                                            num_attention_heads=2, num_key_value_heads=2, vocab_size=64)),
    "qwen2": lambda: T.Qwen2ForCausalLM(T.Qwen2Config(hidden_size=H, intermediate_size=FF, num_hidden_layers=L,
                                                      num_attention_heads=2, num_key_value_heads=2, vocab_size=64)),
    "gpt_neox": lambda: T.GPTNeoXForCausalLM(T.GPTNeoXConfig(hidden_size=H, intermediate_size=FF, num_hidden_layers=L,
                                                             num_attention_heads=2, vocab_size=64)),
    "opt": lambda: T.OPTForCausalLM(T.OPTConfig(hidden_size=H, ffn_dim=FF, num_hidden_layers=L, num_attention_heads=2,
                                                word_embed_proj_dim=H, vocab_size=64)),
    "falcon": lambda: T.FalconForCausalLM(T.FalconConfig(hidden_size=H, num_hidden_layers=L, num_attention_heads=2,
                                                         vocab_size=64)),
    "phi": lambda: T.PhiForCausalLM(T.PhiConfig(hidden_size=H, intermediate_size=FF, num_hidden_layers=L,
                                                num_attention_heads=2, vocab_size=64)),
    "gemma": lambda: T.GemmaForCausalLM(T.GemmaConfig(hidden_size=H, intermediate_size=FF, num_hidden_layers=L,
                                                      num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                                                      vocab_size=64)),
    "gptj": lambda: T.GPTJForCausalLM(T.GPTJConfig(n_embd=H, n_layer=L, n_head=2, rotary_dim=8, vocab_size=64,
                                                   n_positions=32)),
    "bert": lambda: T.BertForMaskedLM(T.BertConfig(hidden_size=H, intermediate_size=FF, num_hidden_layers=L,
                                                   num_attention_heads=2, vocab_size=64)),
    "t5": lambda: T.T5ForConditionalGeneration(T.T5Config(d_model=H, d_ff=FF, num_layers=L, num_decoder_layers=L,
                                                          num_heads=2, d_kv=16, vocab_size=64)),
    "mamba": lambda: T.MambaForCausalLM(T.MambaConfig(hidden_size=H, num_hidden_layers=L, state_size=4, vocab_size=64)),
}


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_blocks_and_default_param(arch):
    """Every block is found, and the default --param is each block's MLP input projection: a linear
    map that reads the residual stream (in = hidden size) and widens it (out > hidden size)."""
    torch.manual_seed(0)
    model = ARCHS[arch]()
    state = model.state_dict()
    raw = strip_prefixes(list(state))
    shapes = {k: tuple(state[raw[k]].shape) for k in raw}
    layer_map = map_blocks(list(raw))
    assert layer_map.blocks == tuple(range(L))
    component = resolve_param(layer_map, None, shapes)
    for name in layer_map.param_names(component):
        module = model.get_submodule(raw[name].removesuffix(".weight"))
        if isinstance(module, torch.nn.Linear):
            fan_in, fan_out = module.in_features, module.out_features
        else:  # GPT-2's Conv1D stores [in, out]
            assert type(module).__name__ == "Conv1D"
            fan_in, fan_out = module.weight.shape
        assert fan_in == H and fan_out > H, (arch, name, fan_in, fan_out)
    if arch == "t5":
        assert layer_map.prefix == "decoder.block"  # the decoder's blocks, not the encoder's
    if arch == "bert":
        assert layer_map.prefix.endswith("encoder.layer")


def test_blocks_regex_overrides_detection():
    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stage = torch.nn.ModuleDict({f"s{i}": torch.nn.Linear(4, 8) for i in range(3)})

    keys = list(Net().state_dict())
    with pytest.raises(LayerError, match="pass blocks=REGEX"):
        map_blocks(keys)
    layer_map = map_blocks(keys, r"stage\.s(\d+)\.")
    assert layer_map.blocks == (0, 1, 2) and layer_map.components() == ["bias", "weight"]


def test_strip_prefixes():
    wrapped = torch.nn.DataParallel(torch.compile(torch.nn.Sequential(torch.nn.Linear(2, 2))))
    assert list(strip_prefixes(list(wrapped.state_dict()))) == ["0.weight", "0.bias"]
    # "model." is stripped only where it holds every name
    assert list(strip_prefixes(["model.layers.0.w", "lm_head.weight"])) == ["model.layers.0.w", "lm_head.weight"]
    assert list(strip_prefixes(["model.layers.0.w", "model.norm"])) == ["layers.0.w", "norm"]
    # never merge two stored names into one
    assert strip_prefixes(["module.a", "a"]) == {"module.a": "module.a", "a": "a"}


# ==== Hostile config.json and tokenizer_config.json beside real checkpoints, with --features activations
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
