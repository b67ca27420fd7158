"""Activation films (layerfilm.points.activations, layerfilm.points.act_stats).

Activation films: models built offline from config.json or a factory, strict weight loading,
probe batches, hooks, and the CLI. Fixtures are tiny real training runs saved as real tools save them.

Activation films over several devices (layerfilm.points.activations.devices; issue 17): CPU workers
standing in for GPUs give exactly the one-worker result (points and statistics, through the API, the
CLI and a Dask cluster), a bad checkpoint is skipped (or, with --strict, refused) as on one device,
and --devices is checked in one line before anything is read.

Activation statistics on an exact construction: blocks that multiply the residual stream by a gain.

Block l's output is E[ids] * g_0 * ... * g_l, so every statistic (norm, mean, std, fraction near zero,
histogram, growth with depth) is known by construction and computed here independently with NumPy."""

from __future__ import annotations

import json
import shutil
import sys
import threading
from dataclasses import replace
from pathlib import Path

import distributed
import numpy as np
import pytest
import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from layerfilm.errors import CheckpointError, EngineError, LayerfilmError, OptionsError
from layerfilm.io.formats import open_checkpoint
from layerfilm.io.scan import scan
from layerfilm.parallel import dask as engine_dask
from layerfilm.parallel.engines import get_engine
from layerfilm.points.act_stats import HIST_EDGES, N_BINS, ActivationStats, Moments
from layerfilm.points.activations import (
    DEFAULT_PROBE,
    ActivationSpec,
    WeightLoader,
    build_model,
    check_fits,
    extract,
    find_blocks,
    match_keys,
    probe_ids,
    resolve_device,
    run_probe,
    worker_devices,
)
from layerfilm.points.activations import loader as loader_module
from layerfilm.points.activations import model as model_module
from layerfilm.points.activations.devices import shares
from layerfilm.points.activations.hooks import Stop, capture
from layerfilm.points.activations.llama import LlamaTrunk, llama_shape
from layerfilm.points.activations.loader import Item, plan_pieces
from layerfilm.points.activations.ring import ChunkRing
from makers import Chain

# ==== Activation films
transformers = pytest.importorskip("transformers")
ROOT = Path(__file__).resolve().parents[1]
STEPS = (0, 2, 4)
# an activation film rendered in this process (no film workers: started ahead, they would wait idle for a
# refusal or a cache check; test_cli_renders_an_activation_film keeps the default --jobs)
ACTIVATIONS = ("--features", "activations", "--jobs", "1")


def train_hf(model, out: Path, batches: list[torch.Tensor], tokenizer=None) -> Path:
    """A few real AdamW steps; ``save_pretrained`` into checkpoint-N/ (config.json + model.safetensors)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for step in range(max(STEPS) + 1):
        if step in STEPS:
            model.save_pretrained(out / f"checkpoint-{step}")
            if tokenizer is not None:
                tokenizer.save_pretrained(out / f"checkpoint-{step}")
        loss = model(input_ids=batches[step], labels=batches[step]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return out


def byte_batches(example, n: int, rows: int = 4, seq: int = 32) -> list[torch.Tensor]:
    data = example.corpus(50_000)
    g = torch.Generator().manual_seed(0)
    return [torch.stack([data[i: i + seq] for i in torch.randint(len(data) - seq, (rows,), generator=g)])
            for _ in range(n)]


@pytest.fixture(scope="session")
def llama_run(example, tmp_path_factory) -> Path:
    """A Llama-shaped model (2 blocks, width 32, byte vocabulary, no tokenizer files), 5 steps."""
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                   num_key_value_heads=1, vocab_size=256, max_position_embeddings=64)
    model = transformers.AutoModelForCausalLM.from_config(cfg)
    return train_hf(model, tmp_path_factory.mktemp("llama_run"), byte_batches(example, max(STEPS) + 1))


@pytest.fixture(scope="session")
def gpt2_run(example, tmp_path_factory) -> Path:
    """A GPT-2 model (3 blocks, tied embeddings) with its own byte-level BPE tokenizer in every checkpoint."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    text = bytes(example.corpus(60_000).tolist()).decode("utf-8", "replace")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator([text], trainers.BpeTrainer(vocab_size=320, special_tokens=["<|endoftext|>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_embd=32, n_layer=3, n_head=2, n_positions=64, vocab_size=len(tok),
                                 bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
    ids = torch.tensor(tok(text)["input_ids"])
    g = torch.Generator().manual_seed(0)
    batches = [torch.stack([ids[i: i + 32] for i in torch.randint(len(ids) - 32, (4,), generator=g)])
               for _ in range(max(STEPS) + 1)]
    return train_hf(transformers.AutoModelForCausalLM.from_config(cfg), tmp_path_factory.mktemp("gpt2_run"),
                    batches, tok)


def features(folder: Path, tmp_path: Path, **kw):
    kw.setdefault("device", "cpu")
    return extract(scan(folder), ActivationSpec(**kw), tmp_path / "store", progress=False)


def test_llama_block_outputs_are_the_models_hidden_states(llama_run, tmp_path):
    f = features(llama_run, tmp_path, points=10_000, seq_len=32)
    ids = probe_ids(ActivationSpec(seq_len=32), llama_run, 64, 256)  # no tokenizer files: UTF-8 bytes
    assert np.array_equal(ids.ravel(), np.frombuffer(DEFAULT_PROBE.read_bytes()[: ids.size], np.uint8))
    assert list(f.blocks) == [0, 1] and f.point_ids.shape == (2, ids.size)  # every token is a point
    for t, step in enumerate(STEPS):
        model = transformers.AutoModelForCausalLM.from_pretrained(llama_run / f"checkpoint-{step}")
        with torch.no_grad():
            hs = model(input_ids=torch.as_tensor(ids), output_hidden_states=True).hidden_states
        # hidden_states[1] is block 0's output (the last entry has the final norm applied, so it is not compared)
        np.testing.assert_allclose(f.store[t][0], hs[1].reshape(-1, 32).numpy(), rtol=1e-4, atol=1e-5)
        norms = np.linalg.norm(hs[1].numpy(), axis=-1).mean()
        assert f.stats["act_norm"][t, 0] == pytest.approx(norms, rel=1e-5)
        assert f.stats["act_input_norm"][t] == pytest.approx(np.linalg.norm(hs[0].numpy(), axis=-1).mean(), rel=1e-5)


def test_nanogpt_factory_matches_a_manual_forward(example, tiny_run, tmp_path):
    ref = str(ROOT / "examples" / "make_checkpoints.py") + ":make_model"
    f = features(tiny_run, tmp_path, model=ref, points=64)
    series = scan(tiny_run)
    assert list(f.steps) == series.steps and f.store[0].shape == (4, 64, 32)
    ids = probe_ids(ActivationSpec(), tiny_run, 32, 256)  # context 32 from the model's config
    assert ids.shape[1] == 32
    picks = f.point_ids[0]
    for t in (0, len(series) - 1):
        model = example.make_model(series.checkpoints[t].path)
        model.load_state_dict(load_file(series.checkpoints[t].path))
        with torch.no_grad():
            x = torch.as_tensor(ids)
            h = model.transformer.wte(x) + model.transformer.wpe(torch.arange(x.shape[1]))
            for l, block in enumerate(model.transformer.h):
                h = block(h)
                np.testing.assert_allclose(f.store[t][l], h.reshape(-1, 32).numpy()[picks], rtol=1e-4, atol=1e-5)


def test_gpt2_with_its_own_tokenizer_and_tied_head(gpt2_run, tmp_path):
    tok = transformers.AutoTokenizer.from_pretrained(gpt2_run / "checkpoint-0")
    want = tok(DEFAULT_PROBE.read_text(), add_special_tokens=False)["input_ids"]
    ids = probe_ids(ActivationSpec(seq_len=16), gpt2_run / "checkpoint-0", 64, len(tok))
    assert ids.shape == (len(want) // 16, 16) and list(ids.ravel()) == want[: ids.size]
    assert len(want) < 0.9 * len(DEFAULT_PROBE.read_bytes())  # merged pieces, not bytes
    f = features(gpt2_run, tmp_path, points=40, seq_len=16)
    assert list(f.blocks) == [0, 1, 2] and f.store[2].shape == (3, 40, 32)
    # the weights changed between checkpoints, so the activations did
    assert not np.allclose(f.store[0], f.store[2])


def test_points_are_the_same_tokens_in_every_frame_and_run(llama_run, tmp_path):
    a = features(llama_run, tmp_path / "a", points=50, seed=3, batch_size=8)
    b = features(llama_run, tmp_path / "b", points=50, seed=3, batch_size=1)  # batching must not move points
    assert a.point_ids.shape == (2, 50) and (a.point_ids == a.point_ids[0]).all()
    assert np.array_equal(a.point_ids, b.point_ids)
    for t in range(len(STEPS)):
        np.testing.assert_allclose(a.store[t], b.store[t], rtol=1e-4, atol=1e-5)
    for key in ("act_norm", "act_std", "act_near_zero"):
        np.testing.assert_allclose(a.stats[key], b.stats[key], rtol=1e-5)
    assert np.array_equal(a.stats["act_hist"], b.stats["act_hist"])


def test_probe_files_of_token_ids(llama_run, tmp_path):
    ids2d = np.arange(3 * 20).reshape(3, 20) % 256
    np.save(tmp_path / "ids.npy", ids2d)
    assert np.array_equal(probe_ids(ActivationSpec(probe=tmp_path / "ids.npy"), llama_run, 64, 256), ids2d)
    torch.save(torch.arange(50), tmp_path / "ids.pt")
    got = probe_ids(ActivationSpec(probe=tmp_path / "ids.pt", seq_len=16), llama_run, 64, 256)
    assert np.array_equal(got, np.arange(48).reshape(3, 16))  # 1-D ids are cut into rows; the rest dropped
    f = features(llama_run, tmp_path, probe=tmp_path / "ids.npy", points=1000)
    assert f.point_ids.shape == (2, 60)
    with pytest.raises(OptionsError, match=r"token ids 0\.\.299 fall outside the model's vocabulary of 256"):
        np.save(tmp_path / "big.npy", np.arange(300))
        probe_ids(ActivationSpec(probe=tmp_path / "big.npy", seq_len=10), llama_run, 64, 256)
    np.save(tmp_path / "float.npy", np.ones(8))
    with pytest.raises(OptionsError, match="expected a 1-D or 2-D array of integer token ids, got float64"):
        probe_ids(ActivationSpec(probe=tmp_path / "float.npy"), llama_run, 64, 256)
    with pytest.raises(OptionsError, match="exceed the model's context of 64"):
        probe_ids(ActivationSpec(seq_len=100), llama_run, 64, 256)


def test_strict_loading_names_missing_and_unexpected_keys():
    model = ["embed.weight", "blocks.0.gain", "blocks.1.gain"]
    assert match_keys(model, ["_orig_mod." + k for k in model]) == {k: "_orig_mod." + k for k in model}
    assert match_keys(model, ["module.model." + k for k in model])["blocks.1.gain"] == "module.model.blocks.1.gain"
    assert match_keys(["model." + k for k in model], model)["model.embed.weight"] == "embed.weight"
    with pytest.raises(CheckpointError, match=r"^ck: weights do not match the model \(1 missing: blocks\.1\.gain; "
                                              r"1 unexpected: blocks\.7\.gain\)"):
        match_keys(model, ["embed.weight", "blocks.0.gain", "blocks.7.gain"], "ck")
    tied = match_keys(["wte.weight", "lm_head.weight"], ["wte.weight"],
                      optional=lambda k, found: k == "lm_head.weight" and "wte.weight" in found)
    assert tied == {"wte.weight": "wte.weight"}


def test_spec_checks_each_option():
    for kw, msg in [({"points": 1}, "points=1: need at least 2"), ({"batch_size": 0}, "batch_size=0"),
                    ({"device": "tpu"}, "device='tpu': choose one of auto, cpu, cuda"),
                    ({"dtype": "int8"}, "dtype='int8': choose one of float32, bfloat16, float16"),
                    ({"near_zero": 0}, "near_zero=0: must be positive"), ({"seq_len": 0}, "seq_len=0"),
                    ({"model": "no_colon"}, "expected package.module:function"),
                    ({"probe": "/no/such/probe.txt"}, "probe=/no/such/probe.txt: no such file")]:
        with pytest.raises(OptionsError, match=msg):
            ActivationSpec(**kw)


def test_cuda_asked_for_but_absent(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto").type == "cpu"
    with pytest.raises(OptionsError, match="device=cuda: no CUDA device is available"):
        resolve_device("cuda")


def test_cli_renders_an_activation_film(llama_run, run_cli, tmp_path):
    out, pts = tmp_path / "act.webm", tmp_path / "pts.npz"
    code, _, err = run_cli("render", llama_run, "--features", "activations", "--out", out, "--size", "320x192",
                           "--fps", "2", "--points", "64", "--device", "cpu", "--export-points", pts)
    assert code == 0, err
    assert out.stat().st_size > 0
    assert "activations at step 4: norm growth" in err and "block" in err
    z = np.load(pts)
    assert z["xy"].shape == (3, 2, 64, 2) and z["act_norm"].shape == (3, 2) and z["act_hist"].shape == (3, 2, N_BINS)
    assert np.array_equal(z["act_hist_edges"], HIST_EDGES)
    assert (z["act_hist"].sum(axis=2) == z["act_hist"][0, 0].sum()).all()  # every activation counted once


@pytest.mark.parametrize("args, message", [
    (("--model", "no_such_module_xyz:make"), "--model 'no_such_module_xyz:make': cannot import no_such_module_xyz"),
    (("--model", "json:no_such_fn"), "--model 'json:no_such_fn': json has no function no_such_fn"),
    (("--probe", "/no/such.txt"), "--probe /no/such.txt: no such file"),
    (("--param", "mlp.c_fc"), "--param mlp.c_fc: chooses weights; it does nothing with --features activations"),
    (("--dtype", "fp8"), "--dtype 'fp8': choose one of float32, bfloat16, float16"),
    (("--seq-len", "100"), "sequences of 100 tokens exceed the model's context of 64"),
])
def test_cli_bad_options_fail_in_one_line(llama_run, run_cli, tmp_path, args, message):
    out = tmp_path / "act.webm"
    code, _, err = run_cli("render", llama_run, *ACTIVATIONS, "--out", out, "--quiet", *args)
    assert code == 2 and err.strip().count("\n") == 0, err
    assert err.startswith("layerfilm: error: ") and message in err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_weights_of_another_model_are_refused_with_the_keys(llama_run, tiny_run, run_cli, tmp_path):
    ref = str(ROOT / "examples" / "make_checkpoints.py") + ":make_model"
    bad = tmp_path / "bad"
    bad.mkdir()
    state = transformers.AutoModelForCausalLM.from_pretrained(llama_run / "checkpoint-0").state_dict()
    for step in (0, 10):  # nanoGPT-config files holding a Llama's weights
        save_file({k: v.contiguous() for k, v in state.items()}, str(bad / f"step_{step}.safetensors"),
                  metadata={"config": json.dumps({"n_layer": 2, "d_model": 32, "n_head": 2, "context": 32, "vocab": 256})})
    code, _, err = run_cli("render", bad, *ACTIVATIONS, "--model", ref, "--out", tmp_path / "x.webm", "--quiet")
    assert code == 2 and "weights do not match the model (" in err and "missing: transformer.wte.weight" in err
    assert "unexpected: model.embed_tokens.weight" in err and not (tmp_path / "x.webm").exists()


def test_no_config_and_no_factory(tiny_run, run_cli, tmp_path):
    code, _, err = run_cli("render", tiny_run, *ACTIVATIONS, "--out", tmp_path / "x.webm", "--quiet")
    assert code == 2 and f"{tiny_run}: no config.json to build the model from; pass --model package.module:make_model" in err


def test_missing_transformers_says_what_to_install(gpt2_run, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers -> ImportError
    with pytest.raises(LayerfilmError, match=r"needs transformers: pip install 'layerfilm\[hf\]'"):
        features(gpt2_run, tmp_path)


# ---------------------------------------------------------------- layerfilm's own Llama forward (.llama)

def hf_built(monkeypatch) -> None:
    """From now on build_model builds every config.json model with transformers (as before .llama existed)."""
    monkeypatch.setattr(model_module, "llama_shape", lambda config: None)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_native_llama_gives_transformers_bits(llama_run, tmp_path, monkeypatch, dtype):
    """The same film, bit for bit, from layerfilm's Llama forward and from transformers' LlamaForCausalLM
    (grouped-query attention: 2 heads, 1 key/value head)."""
    spec = ActivationSpec(device="cpu", dtype=dtype, points=64)
    native = extract(scan(llama_run), spec, tmp_path / "native", progress=False)
    assert isinstance(build_model(spec, scan(llama_run).checkpoints[0], torch.device("cpu")), LlamaTrunk)
    hf_built(monkeypatch)
    assert not isinstance(build_model(spec, scan(llama_run).checkpoints[0], torch.device("cpu")), LlamaTrunk)
    hf = extract(scan(llama_run), spec, tmp_path / "hf", progress=False)
    assert np.array_equal(native.point_ids, hf.point_ids)
    for t in range(len(STEPS)):
        assert np.array_equal(native.store[t], hf.store[t])
    assert native.stats.keys() == hf.stats.keys()
    for k in native.stats:
        assert np.array_equal(native.stats[k], hf.stats[k], equal_nan=True), k


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("config", [
    dict(num_attention_heads=4, num_key_value_heads=2),  # grouped key/value heads, taken by sdpa itself
    dict(num_attention_heads=2, num_key_value_heads=1, head_dim=264),  # over 256 per head: the heads repeated
    dict(num_attention_heads=4, num_key_value_heads=4, attention_bias=True, mlp_bias=True, rope_theta=5e5),
])
def test_the_native_forward_equals_transformers_block_by_block(config, dtype):
    """Any weights (random here, not trained), each block's output bit for bit, on sequences of 1 and 40 tokens."""
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=3, vocab_size=300,
                                   max_position_embeddings=128, **config)
    hf = transformers.AutoModelForCausalLM.from_config(cfg).to(dtype).eval()
    native = LlamaTrunk(llama_shape(json.loads(cfg.to_json_string()))).to(dtype).eval()
    native.load_state_dict({k: v for k, v in hf.state_dict().items() if k in native.state_dict()})
    def blocks(model, ids: torch.Tensor) -> list[torch.Tensor]:
        out: list[torch.Tensor] = []
        with capture(list(model.model.layers), lambda l, h: out.append(h)), torch.no_grad(), pytest.raises(Stop):
            model(input_ids=ids, use_cache=False)
        return out

    for ids in (torch.randint(0, 300, (3, 40)), torch.randint(0, 300, (2, 1))):
        got, want = blocks(native, ids), blocks(hf, ids)
        assert len(got) == len(want) == 3 and all(torch.equal(a, b) for a, b in zip(got, want))


def test_a_llama_film_needs_no_transformers_and_never_reads_the_lm_head(llama_run, tmp_path, monkeypatch):
    read: list[str] = []
    item = WeightLoader._item
    monkeypatch.setattr(WeightLoader, "_item", lambda self, reader, key, name, shape:
                        read.append(name) or item(self, reader, key, name, shape))
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers -> ImportError
    f = features(llama_run, tmp_path, points=32)
    assert list(f.steps) == list(STEPS) and f.store[0].shape == (2, 32, 32)
    with open_checkpoint(llama_run / "checkpoint-0" / "model.safetensors", "safetensors") as reader:
        stored = set(reader.keys())
    assert "lm_head.weight" in stored and set(read) == (stored - {"lm_head.weight"})


@pytest.mark.parametrize("change", [{"model_type": "mistral"}, {"hidden_act": "gelu"},
                                    {"rope_scaling": {"rope_type": "llama3", "factor": 8.0}},
                                    {"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}},
                                    {"rope_parameters": {"rope_type": "default", "rope_theta": 1e4,
                                                         "partial_rotary_factor": 0.5}},
                                    {"num_key_value_heads": 3}, {"hidden_size": None}])
def test_configs_the_native_llama_does_not_cover_go_to_transformers(llama_run, change):
    config = json.loads((llama_run / "checkpoint-0" / "config.json").read_text())
    assert llama_shape(config) is not None
    assert llama_shape({**config, **change}) is None


@pytest.mark.parametrize("change", [{}, {"attention_bias": True, "mlp_bias": True}, {"head_dim": 8},
                                    {"num_key_value_heads": 2}])
def test_the_parameter_count_is_the_built_models(llama_run, change):
    config = json.loads((llama_run / "checkpoint-0" / "config.json").read_text())
    shape = llama_shape({**config, **change})
    assert shape.parameters == sum(p.numel() for p in LlamaTrunk(shape).parameters())


def test_a_config_larger_than_its_checkpoint_is_refused_before_building(llama_copy, run_cli, tmp_path):
    """A billion blocks would take hours to build (and never load): refused from the header, in one line
    (tests/test_blocks.py: more such configs, each architecture)."""
    for c in llama_copy.glob("checkpoint-*"):
        config = json.loads((c / "config.json").read_text())
        (c / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 10**9}))
    code, _, err = run_cli("render", llama_copy, *ACTIVATIONS, "--device", "cpu",
                           "--out", tmp_path / "x.webm", "--quiet")
    assert code != 0 and len(err.strip().splitlines()) == 1 and not (tmp_path / "x.webm").exists()
    assert "config.json: num_hidden_layers is 1,000,000,000 and" in err and "is it this checkpoint's config?" in err


def test_the_native_llama_reads_each_setting(llama_run):
    config = json.loads((llama_run / "checkpoint-0" / "config.json").read_text())
    shape = llama_shape(config)
    assert (shape.hidden_size, shape.num_hidden_layers, shape.num_attention_heads, shape.num_key_value_heads,
            shape.head_dim, shape.vocab_size, shape.max_position_embeddings) == (32, 2, 2, 1, 16, 256, 64)
    legacy = {k: v for k, v in config.items() if k != "rope_parameters"}  # transformers 4's spelling
    assert llama_shape({**legacy, "rope_theta": 5e5, "rope_scaling": None}).rope_theta == 5e5
    assert llama_shape({**legacy, "rope_theta": 5e5}) == replace(shape, rope_theta=5e5)
    assert llama_shape({**config, "head_dim": 8, "attention_bias": True}) == replace(shape, head_dim=8, attention_bias=True)


def test_bfloat16_is_close_to_float32(llama_run, tmp_path):
    a = features(llama_run, tmp_path / "a", points=32)
    b = features(llama_run, tmp_path / "b", points=32, dtype="bfloat16")
    rel = np.linalg.norm(b.store[2] - a.store[2]) / np.linalg.norm(a.store[2])
    assert 0 < rel < 0.05


class NeedsShortSequences(torch.nn.Module):
    """A model that states no context length and fails on sequences longer than 8 tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(256, 4)
        self.blocks = torch.nn.ModuleList([torch.nn.Linear(4, 4)])
        self.pos = torch.nn.Parameter(torch.zeros(8, 4))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.blocks[0](self.embed(ids) + self.pos)  # broadcasting fails past 8 tokens


def make_short_model() -> NeedsShortSequences:
    return NeedsShortSequences()


def test_a_failing_forward_pass_is_one_clear_line(run_cli, tmp_path):
    folder = tmp_path / "ckpts"
    folder.mkdir()
    for step in (0, 1):
        save_file({k: v.detach().clone() for k, v in NeedsShortSequences().state_dict().items()},
                  str(folder / f"step_{step}.safetensors"))
    ref = f"{__file__}:make_short_model"
    code, _, err = run_cli("render", folder, *ACTIVATIONS, "--model", ref, "--out", tmp_path / "a.webm",
                           "--quiet", "--device", "cpu")
    assert code == 2 and err.count("\n") == 1
    assert f"{folder / 'step_0.safetensors'}: the forward pass on the probe failed (RuntimeError: " in err
    assert "check --model and --probe/--seq-len, or lower --batch-size 8" in err
    code, _, err = run_cli("render", folder, *ACTIVATIONS, "--model", ref, "--out", tmp_path / "a.webm",
                           "--quiet", "--device", "cpu", "--seq-len", "8", "--fps", "2", "--size", "320x192")
    assert code == 0, err


def make_model_from_metadata(path):
    raise KeyError("config")  # e.g. a checkpoint written without the metadata the factory expects


def test_a_failing_model_factory_is_one_clear_line(tiny_run, run_cli, tmp_path):
    ref = f"{__file__}:make_model_from_metadata"
    code, _, err = run_cli("render", tiny_run, *ACTIVATIONS, "--model", ref, "--out", tmp_path / "a.webm",
                           "--quiet", "--device", "cpu")
    first = sorted(tiny_run.glob("*.safetensors"))[0]
    assert (code, err) == (2, f"layerfilm: error: --model {ref}: make_model_from_metadata({first}) failed: "
                              "KeyError: 'config'\n")
    assert list(tmp_path.iterdir()) == []


def test_activation_films_are_cached_until_the_probe_changes(llama_run, run_cli, tmp_path, monkeypatch):
    from layerfilm.study import Study

    calls = []
    real = Study._activation_trajectories
    monkeypatch.setattr(Study, "_activation_trajectories", lambda *a, **k: calls.append(1) or real(*a, **k))
    probe = tmp_path / "probe.txt"
    probe.write_text("the same tokens at every step " * 8)

    def render(name: str) -> np.lib.npyio.NpzFile:
        code, _, err = run_cli("render", llama_run, *ACTIVATIONS, "--probe", probe, "--device", "cpu",
                               "--out", tmp_path / f"{name}.webm", "--size", "320x192", "--fps", "1", "--quiet",
                               "--cache", tmp_path / "cache", "--export-points", tmp_path / f"{name}.npz")
        assert code == 0, err
        return np.load(tmp_path / f"{name}.npz")

    a, b = render("a"), render("b")
    assert len(calls) == 1  # the second film came from the cache
    for name in ("xy", "act_norm", "act_hist", "point_update", "point_distance"):
        assert np.array_equal(a[name], b[name], equal_nan=True), name
    probe.write_text("other words now, so other activations " * 8)
    c = render("c")
    assert len(calls) == 2 and not np.array_equal(a["act_norm"], c["act_norm"])


# ---------------------------------------------------------------- the loader (layerfilm.points.activations.loader)

def load_into(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """``load_state_dict``, strict about missing keys; the LM head, which layerfilm's Llama has not, is left out."""
    model.load_state_dict({k: v for k, v in state.items() if k in model.state_dict()})


def reference_pass(folder: Path, spec: ActivationSpec, picks: np.ndarray):
    """What the activation pass must give: each checkpoint put into the model by plain ``load_state_dict``."""
    series = scan(folder)
    device = torch.device("cpu")
    model = build_model(spec, series.checkpoints[0], device)
    _, modules = find_blocks(model, None)
    ids = torch.as_tensor(probe_ids(spec, folder / "checkpoint-0", 64, 256))
    out = []
    for c in series.checkpoints:
        load_into(model, load_file(c.path / "model.safetensors"))
        with torch.inference_mode():
            out.append(run_probe(model, modules, ids, picks, spec.batch_size, spec.near_zero))
    return out


def assert_equals_reference(f, folder: Path, spec: ActivationSpec) -> None:
    """The pass's points and statistics equal load_state_dict's bit for bit, at the steps it kept."""
    want = dict(zip(STEPS, reference_pass(folder, spec, f.point_ids[0])))
    kept = [want[int(step)] for step in f.steps]
    for t, (pts, _, in_norm) in enumerate(kept):
        assert np.array_equal(f.store[t], pts)
        assert f.stats["act_input_norm"][t] == in_norm
    ref = ActivationStats.stack(list(f.steps), list(f.blocks), [w[1] for w in kept], [w[2] for w in kept],
                                spec.near_zero).arrays()
    assert ref.keys() == f.stats.keys()
    for k in ref:
        assert np.array_equal(ref[k], f.stats[k], equal_nan=True), k


def loader_options(monkeypatch, **options) -> None:
    """Every WeightLoader made from now on (by extract) gets ``options``."""
    init = WeightLoader.__init__
    monkeypatch.setattr(WeightLoader, "__init__", lambda self, *a, **k: init(self, *a, **k, **options))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])  # bfloat16: float32 files narrowed on the way in
@pytest.mark.parametrize("host_buffers", [False, True])  # True: the GPU's path (streamed through a ring of host chunks)
def test_loaded_statistics_equal_load_state_dict_exactly(llama_run, tmp_path, monkeypatch, dtype, host_buffers):
    loader_options(monkeypatch, host_buffers=host_buffers)
    spec = ActivationSpec(device="cpu", dtype=dtype, points=40)
    f = extract(scan(llama_run), spec, tmp_path, progress=False)
    assert list(f.steps) == list(STEPS)
    assert_equals_reference(f, llama_run, spec)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_tensors_spanning_tiny_ring_chunks_load_exactly(llama_run, tmp_path, monkeypatch, dtype):
    """The GPU's code on the CPU (unpinned chunks): 3 chunks of 1,001 bytes, so nearly every tensor spans
    several chunks, chunks end inside elements, and each checkpoint's first pieces are read ahead."""
    loader_options(monkeypatch, host_buffers=True, chunks=3, chunk_bytes=1001)
    spec = ActivationSpec(device="cpu", dtype=dtype, points=40)
    f = extract(scan(llama_run), spec, tmp_path, progress=False)
    assert list(f.steps) == list(STEPS)
    assert_equals_reference(f, llama_run, spec)


def test_pieces_cover_every_byte_once():
    items = [Item(f"k{i}", f"n{i}", torch.float32, (n // 4,), n, Path("f"), off)
             for i, (off, n) in enumerate([(100, 12), (112, 4000), (4112, 8), (9000, 20)])]  # a gap before 9000
    pieces = plan_pieces(items, 1001)
    covered: dict[str, list[tuple[int, int]]] = {it.key: [] for it in items}
    for piece in pieces:
        assert 0 < piece.nbytes <= 1001
        for it, at, pos, n in piece.dests:
            assert piece.offset + at == it.offset + pos and at + n <= piece.nbytes  # the same file bytes
            covered[it.key].append((pos, n))
    for it in items:
        spans = sorted(covered[it.key])
        assert spans[0][0] == 0 and sum(n for _, n in spans) == it.nbytes
        assert all(a + n == b for (a, n), (b, _) in zip(spans, spans[1:]))
    assert [p.offset for p in pieces][-1] == 9000  # the gap is not read


@pytest.mark.parametrize("nth", [1, 4])  # the 2nd piece: read ahead (2 chunks); the 5th: streamed
def test_a_read_failing_midway_through_the_ring_skips_only_that_checkpoint(llama_run, tmp_path, monkeypatch, nth):
    loader_options(monkeypatch, host_buffers=True, chunks=2, chunk_bytes=4096)
    real, calls = loader_module._read_piece, []

    def flaky(piece, dest):
        if piece.file.parent.name == "checkpoint-2":
            calls.append(piece.offset)
            if len(calls) == nth + 1:
                raise CheckpointError(f"{piece.file}: cannot read (Input/output error)")
        real(piece, dest)

    monkeypatch.setattr(loader_module, "_read_piece", flaky)
    spec = ActivationSpec(device="cpu", points=40)
    with pytest.warns(UserWarning, match=r"checkpoint-2/model.safetensors: cannot read \(Input/output error\); skipped$"):
        f = extract(scan(llama_run), spec, tmp_path / "store", progress=False)
    assert list(f.steps) == [0, 4] and [c.path.name for c in f.skipped] == ["checkpoint-2"]
    assert_equals_reference(f, llama_run, spec)  # checkpoint-4 came through the ring whole after the failure


def test_a_failing_probe_does_not_leave_a_read_ahead_waiting(llama_run, tmp_path, monkeypatch):
    """The probe of checkpoint-0 fails while checkpoint-2 is staged (holding both chunks) and checkpoint-4's
    read-ahead waits for them: closing the loader must stop that wait, or the pass would never return."""
    loader_options(monkeypatch, host_buffers=True, chunks=2, chunk_bytes=4096)
    waiting, wait, reserve, firsts = threading.Event(), ChunkRing._wait, ChunkRing.reserve, []

    def reserving(ring, n):
        firsts.append(reserve(ring, n))
        return firsts[-1]

    def watched(ring, seq):
        if len(firsts) == 3 and seq >= firsts[2] and ring._released[seq % ring.count] != seq - ring.count:
            waiting.set()  # checkpoint-4's read-ahead is about to wait for a chunk
        return wait(ring, seq)

    def failing_probe(*a, **k):
        assert waiting.wait(60)
        raise RuntimeError("boom")

    monkeypatch.setattr(ChunkRing, "_wait", watched)
    monkeypatch.setattr(ChunkRing, "reserve", reserving)
    monkeypatch.setattr(sys.modules["layerfilm.points.activations.passes"], "run_probe", failing_probe)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            extract(scan(llama_run), ActivationSpec(device="cpu", points=40), tmp_path / "store", progress=False)
        except BaseException as e:  # noqa: BLE001 - handed to the test
            errors.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(120)  # a hang, not a speed: the pass takes about a second
    assert not thread.is_alive(), "the pass hung"
    assert len(errors) == 1 and "the forward pass on the probe failed (RuntimeError: boom)" in str(errors[0]), errors


def test_cpu_parameters_view_the_file_until_released_and_never_write_it(llama_run, tmp_path):
    """Stored in the model's dtype: no copy (the parameters are views of the mapped file during the probe);
    a write to one cannot reach the file (copy-on-write); released, they hold their own memory again."""
    file = tmp_path / "model.safetensors"
    shutil.copy(llama_run / "checkpoint-4" / "model.safetensors", file)
    before = file.read_bytes()
    model = build_model(ActivationSpec(), scan(llama_run).checkpoints[0], torch.device("cpu"))
    own = {k: v.data_ptr() for k, v in model.state_dict().items()}
    with WeightLoader(model, torch.device("cpu")) as loader:
        with open_checkpoint(file, "safetensors") as reader:
            staged = loader.stage(reader, file)
        loader.apply(staged)
        state, want = model.state_dict(), load_file(file)
        assert state.keys() == want.keys() - {"lm_head.weight"}  # left in the file: the probe stops before it
        assert all(torch.equal(state[k], want[k]) and state[k].data_ptr() != own[k] for k in state)
        next(model.parameters()).data.add_(1.0)
        loader.release()
    assert file.read_bytes() == before
    assert {k: v.data_ptr() for k, v in model.state_dict().items()} == own


@pytest.mark.parametrize("host_buffers", [False, True])
def test_every_format_loads_the_same_bits(llama_run, tmp_path, host_buffers):
    """safetensors (byte spans), a torch pickle (memory-mapped tensors) and shards: the parameters equal
    load_state_dict's bit for bit, in the stored dtype and narrowed to bfloat16."""
    state = load_file(llama_run / "checkpoint-4" / "model.safetensors")
    torch.save(state, tmp_path / "step_4.pt")
    half = {k: v.to(torch.bfloat16) for k, v in state.items()}  # a bf16 checkpoint into a float32 model: widened
    save_file(half, str(tmp_path / "half.safetensors"))
    shards = tmp_path / "sharded"
    shards.mkdir()
    keys = sorted(state)
    weight_map = {k: f"model-0000{1 + i % 2}-of-00002.safetensors" for i, k in enumerate(keys)}
    for name in set(weight_map.values()):
        save_file({k: state[k] for k in keys if weight_map[k] == name}, str(shards / name))
    (shards / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    cases = [(llama_run / "checkpoint-4", "safetensors", state), (tmp_path / "step_4.pt", "torch", state),
             (tmp_path / "half.safetensors", "safetensors", half), (shards, "sharded", state)]
    for dtype in ("float32", "bfloat16"):
        model = build_model(ActivationSpec(dtype=dtype), scan(llama_run).checkpoints[0], torch.device("cpu"))
        for path, fmt, src in cases:
            load_into(model, src)
            want = {k: v.clone() for k, v in model.state_dict().items()}
            for p in model.parameters():
                p.data.zero_()
            with WeightLoader(model, torch.device("cpu"), host_buffers=host_buffers) as loader:
                with open_checkpoint(path, fmt) as reader:
                    staged = loader.stage(reader, path)
                loader.apply(staged)
            for k, v in model.state_dict().items():
                assert v.dtype == want[k].dtype and torch.equal(v, want[k]), (path, k)


@pytest.fixture
def llama_copy(llama_run, tmp_path) -> Path:
    copy = tmp_path / "ckpts"
    shutil.copytree(llama_run, copy)
    return copy


def test_a_truncated_checkpoint_is_skipped_when_read(llama_copy, tmp_path):
    series = scan(llama_copy)  # scanned whole; cut before its tensors are read
    file = llama_copy / "checkpoint-2" / "model.safetensors"
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    with pytest.warns(UserWarning, match=r"checkpoint-2/model.safetensors: truncated \(.*; skipped$"):
        f = extract(series, ActivationSpec(device="cpu", points=16), tmp_path / "store", progress=False)
    assert list(f.steps) == [0, 4] and len(f.store) == 2 and f.stats["act_norm"].shape == (2, 2)
    assert [c.path.name for c in f.skipped] == ["checkpoint-2"] and "truncated" in f.skipped[0].problem
    with pytest.raises(CheckpointError, match=r"truncated .*\(strict: nothing is skipped\)$"):
        extract(series, ActivationSpec(device="cpu", points=16), tmp_path / "store2", progress=False, strict=True)


def test_a_checkpoint_that_does_not_fit_the_model_is_skipped_and_listed(llama_copy, run_cli, tmp_path):
    file = llama_copy / "checkpoint-2" / "model.safetensors"
    state = load_file(file)
    state["model.norm.weight"] = torch.ones(16)  # not a block tensor: the scan finds nothing wrong
    save_file(state, str(file))
    out = tmp_path / "act.webm"
    args = ("render", llama_copy, *ACTIVATIONS, "--device", "cpu", "--points", "16", "--out", out)
    code, _, err = run_cli(*args, "--size", "320x192", "--fps", "1")
    assert code == 0, err
    line = f"{llama_copy / 'checkpoint-2'}: model.norm.weight has shape (16,), the model expects (32,)"
    assert f"{line}; skipped" in err  # the warning, when it was read
    assert err.split("skipped 1 checkpoint(s):\n")[1].startswith(f"  {llama_copy / 'checkpoint-2'}: ")  # and at the end
    code, _, err = run_cli(*args, "--strict", "--quiet", "--no-cache")
    assert code == 2 and err == f"layerfilm: error: {line} (--strict: nothing is skipped)\n"


def test_a_model_larger_than_the_free_memory_is_one_line(llama_run):
    series = scan(llama_run)
    n = sum(v.numel() for v in load_file(llama_run / "checkpoint-0" / "model.safetensors").values())
    check_fits(series.checkpoints, ActivationSpec(dtype="bfloat16"), torch.device("cpu"), free=2 * n)
    with pytest.raises(OptionsError, match=r"^.*checkpoint-0: the model's weights need 0\.0 GiB in bfloat16 and cpu has "
                                           r"0\.0 GiB free; a model larger than one device's memory is not supported$"):
        check_fits(series.checkpoints, ActivationSpec(dtype="bfloat16"), torch.device("cpu"), free=2 * n - 1)


# ==== Activation films over several devices (layerfilm.points.activations.devices; issue 17)
FACTORY = str(ROOT / "examples" / "make_checkpoints.py") + ":make_model"
BAD = "step_000030.safetensors"
# one batch of the whole probe (44 x 32 tokens x width 32): large enough that torch splits its reductions by
# thread count, so a worker using other threads than the one-device run would change the statistics' bits
BATCH = 64
PROBLEM = rf"{BAD}: transformer.ln_f.weight has shape \(16,\), the model expects \(32,\)"


@pytest.fixture(scope="module")
def damaged_run(tiny_run, tmp_path_factory) -> Path:
    """The tiny run (7 checkpoints) with one whose final norm has another shape: a tensor outside the blocks,
    so the scan passes it and the worker that loads it skips it."""
    copy = tmp_path_factory.mktemp("devices") / "run"
    shutil.copytree(tiny_run, copy)
    with safe_open(copy / BAD, "pt") as r:
        state, meta = {k: r.get_tensor(k) for k in r.keys()}, r.metadata()
    state["transformer.ln_f.weight"] = torch.ones(16)
    save_file(state, str(copy / BAD), metadata=meta)
    return copy


@pytest.fixture(scope="module")
def damaged_series(damaged_run):
    return scan(damaged_run)


def spec(**kw) -> ActivationSpec:
    return ActivationSpec(**{"model": FACTORY, "points": 16, "device": "cpu", "batch_size": BATCH, **kw})


def run(series, tmp_path: Path, name: str, **kw):
    with pytest.warns(UserWarning, match=rf"{PROBLEM}; skipped$") as caught:
        f = extract(series, spec(**kw.pop("spec", {})), tmp_path / name, progress=False, **kw)
    assert len([w for w in caught if "skipped" in str(w.message)]) == 1
    return f


def assert_same(a, b) -> None:
    """Bit for bit: steps, blocks, tracked tokens, every key frame's points and every statistic."""
    assert np.array_equal(a.steps, b.steps) and np.array_equal(a.blocks, b.blocks)
    assert np.array_equal(a.point_ids, b.point_ids) and a.name == b.name and a.subject == b.subject
    assert len(a.store) == len(b.store)
    for t in range(len(a.store)):
        assert np.array_equal(a.store[t], b.store[t]), t
    assert np.array_equal(a.store.max_abs, b.store.max_abs)
    assert a.stats.keys() == b.stats.keys()
    for k in a.stats:
        assert np.array_equal(a.stats[k], b.stats[k], equal_nan=True), k
    assert [(c.path, c.problem) for c in a.skipped] == [(c.path, c.problem) for c in b.skipped]


@pytest.fixture(scope="module")
def one_worker(damaged_series, tmp_path_factory):
    return run(damaged_series, tmp_path_factory.mktemp("one"), "store")


def test_two_cpu_workers_give_the_one_worker_result(damaged_series, one_worker, tmp_path):
    two = run(damaged_series, tmp_path, "two", spec={"devices": "cpu,cpu"})
    assert_same(one_worker, two)
    assert list(two.steps) == [0, 10, 20, 40, 50, 60] and [c.path.name for c in two.skipped] == [BAD]
    # the frames came back from two workers' folders, by name
    assert {p.parent.name for p in (two.store.frame(t)[0] for t in range(len(two.store)))} == {"device-0", "device-1"}


@pytest.fixture(scope="module")
def cluster():
    """A Dask LocalCluster of 2 workers inside this process (no worker processes to start: seconds)."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as c:
        yield c.scheduler_address
        engine_dask.close()  # layerfilm's client of it, before the cluster stops


def test_strict_refuses_the_first_bad_checkpoint_as_on_one_device(damaged_series, cluster, tmp_path):
    messages = []
    for name, kw in (("one", {}), ("two", {"engine": "dask", "address": cluster})):
        with pytest.raises(CheckpointError, match=rf"{PROBLEM} \(strict: nothing is skipped\)$") as e:
            extract(damaged_series, spec(devices=() if name == "one" else "cpu,cpu"), tmp_path / name, progress=False,
                    strict=True, **kw)
        messages.append(str(e.value))
    assert messages[0] == messages[1]


def test_a_dask_cluster_of_cpu_workers_gives_the_one_worker_result(damaged_series, one_worker, cluster, tmp_path):
    """Workers at an address send their frames back (they share no folder with the caller)."""
    two = run(damaged_series, tmp_path, "dask", spec={"devices": ("cpu", "cpu")}, engine="dask", address=cluster)
    assert_same(one_worker, two)
    assert all(two.store.frame(t)[0].parent == tmp_path / "dask" / "frames" for t in range(len(two.store)))
    with pytest.raises(EngineError, match=r"^no worker of the Dask cluster at .* offers GPU=1 \(start one per GPU"):
        get_engine("dask", 2, address=cluster).map(len, [("a",), ("b",)], resources={"GPU": 1})


def test_cli_two_workers_export_the_same_points(damaged_run, damaged_series, run_cli, tmp_path):
    exported = []
    for name, extra in (("one", ()), ("two", ("--devices", "cpu,cpu"))):
        pts = tmp_path / f"{name}.npz"
        code, _, err = run_cli("render", damaged_run, "--features", "activations", "--model", FACTORY, "--device", "cpu",
                               "--points", "16", "--batch-size", str(BATCH), "--size", "320x192", "--fps", "1", "--no-cache",
                               "--quiet", "--jobs", "1",
                               "--out", tmp_path / f"{name}.webm", "--export-points", pts, *extra)
        assert code == 0, err
        assert err.split("skipped 1 checkpoint(s):\n")[1].startswith(f"  {damaged_run / BAD}: ")
        exported.append(dict(np.load(pts)))
    one, two = exported
    assert one.keys() == two.keys() and "act_norm" in one
    for k in one:
        assert np.array_equal(one[k], two[k], equal_nan=one[k].dtype.kind == "f"), k


@pytest.mark.parametrize("args, message", [
    (("--devices", "0,cpu"), "--devices '0,cpu': all GPUs or all cpu, not both"),
    (("--device", "cpu", "--devices", "0,1"), "--devices '0,1': not cpu devices (--device cpu)"),
    (("--device", "cuda", "--devices", "cpu,cpu"), "--devices 'cpu,cpu': not cuda devices (--device cuda)"),
    (("--devices", "1,cuda:1"), "--devices '1,cuda:1': each GPU at most once"),
    (("--devices", "gpu0"), "--devices 'gpu0': expected GPU indices such as 0,1 (or cuda:0,cuda:1), or cpu,cpu"),
    (("--devices", "0,"), "--devices '0,': expected GPU indices"),
    (("--devices", "\u00b2"), "--devices '\u00b2': expected GPU indices"),
    (("--devices", "0,1"), "--devices cuda:0,cuda:1: no CUDA device is available to torch (CPU workers: --device cpu "
                           "--devices cpu,cpu)"),
])
def test_cli_bad_devices_fail_in_one_line(tiny_run, run_cli, tmp_path, monkeypatch, args, message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "act.webm"
    code, _, err = run_cli("render", tiny_run, "--features", "activations", "--model", FACTORY, "--out", out,
                           "--quiet", "--no-cache", *args)
    assert code == 2 and err.strip().count("\n") == 0, err
    assert err.startswith("layerfilm: error: ") and message in err
    assert not out.exists()


def test_which_devices_run(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    cuda = [torch.device("cuda", i) for i in range(3)]
    assert worker_devices(ActivationSpec(device="cuda")) == cuda  # every visible GPU by default
    assert worker_devices(ActivationSpec()) == cuda  # auto: cuda when available
    assert worker_devices(ActivationSpec(devices="2,0")) == [cuda[2], cuda[0]]
    assert worker_devices(ActivationSpec(devices="1,2"), remote=True) == [torch.device("cuda")] * 2  # the workers' own
    assert worker_devices(ActivationSpec(device="cpu")) == [torch.device("cpu")]
    assert worker_devices(ActivationSpec(device="cpu", devices=("cpu",) * 4)) == [torch.device("cpu")] * 4
    with pytest.raises(OptionsError, match=r"^devices=cuda:1,cuda:3: cuda:3 is not visible \(3 CUDA device\(s\)\)$"):
        worker_devices(ActivationSpec(devices="1,3"))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert worker_devices(ActivationSpec(device="cuda")) == [torch.device("cuda")]


def test_checkpoints_are_shared_round_robin():
    assert shares(7, 2) == [(0, 2, 4, 6), (1, 3, 5)]
    assert shares(2, 4) == [(0,), (1,)]  # no worker without a checkpoint
    assert sorted(t for s in shares(179, 8) for t in s) == list(range(179))


def test_devices_do_not_change_the_cache_key():
    from layerfilm.film_options import FilmOptions

    one, two = (FilmOptions(activations=spec(devices=d)) for d in ((), "cpu,cpu"))
    assert one.points_options() == two.points_options()
    assert one.points_options() != FilmOptions(activations=spec(points=17)).points_options()


# ==== Activation statistics on an exact construction
VOCAB, DIM = 16, 4
EMBED = np.stack([(v - 7.5) / 100 * np.array([1.0, 3.0, -7.0, 40.0]) for v in range(VOCAB)]).astype(np.float32)
GAINS = {0: [1.3, 1.7, 0.6], 100: [0.9, 2.3, 1.1], 250: [1.9, 0.7, 3.1]}  # step -> gain of blocks 0, 1, 2
IDS = (np.arange(5 * 6).reshape(5, 6) * 7) % VOCAB  # probe: 5 sequences of 6 tokens


class Gain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gain


class GainNet(Chain):
    def __init__(self) -> None:
        super().__init__(VOCAB, DIM, (Gain() for _ in range(3)))


def make_gain_net() -> GainNet:  # the --model factory (no arguments)
    return GainNet()


@pytest.fixture(scope="module")
def gain_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gain_run")
    for step, gains in GAINS.items():
        state = {"embed.weight": torch.from_numpy(EMBED)}
        state.update({f"blocks.{l}.gain": torch.tensor([g], dtype=torch.float32) for l, g in enumerate(gains)})
        save_file(state, str(out / f"step_{step}.safetensors"))
    np.save(out.parent / "gain_ids.npy", IDS)
    return out


def expected(step: int) -> np.ndarray:
    """(L, S*T, D) block outputs by construction."""
    x = EMBED[IDS.ravel()].astype(np.float64)
    return np.stack([x * g for g in np.cumprod(GAINS[step])])


def test_statistics_known_by_construction(gain_run):
    spec = ActivationSpec(model=f"{__file__}:make_gain_net", probe=gain_run.parent / "gain_ids.npy", points=12,
                          batch_size=2, device="cpu", near_zero=0.05)
    f = extract(scan(gain_run), spec, gain_run.parent / "store", progress=False)
    st = ActivationStats.from_arrays(f.steps, f.blocks, f.stats)
    assert list(st.steps) == [0, 100, 250] and list(st.blocks) == [0, 1, 2] and st.threshold == 0.05
    edges = np.concatenate([HIST_EDGES, [0.05, -0.05]])
    for t, step in enumerate(GAINS):
        x = expected(step)  # (L, tokens, D)
        # no value sits on a bin edge or the threshold, so float32 rounding cannot move a count
        assert np.abs(np.abs(x.ravel()[:, None]) / np.abs(edges) - 1).min() > 1e-5
        np.testing.assert_allclose(st.norm[t], np.linalg.norm(x, axis=2).mean(axis=1), rtol=1e-5)
        np.testing.assert_allclose(st.mean[t], x.mean(axis=(1, 2)), rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(st.std[t], x.std(axis=(1, 2)), rtol=1e-4)
        np.testing.assert_array_equal(st.near_zero[t], (np.abs(x) < 0.05).mean(axis=(1, 2)))
        hist = [np.bincount(np.searchsorted(HIST_EDGES, xl.ravel(), side="right"), minlength=N_BINS) for xl in x]
        np.testing.assert_array_equal(st.hist[t], np.stack(hist))
        # growth with depth is the gain of each block (block 0 against the embedding it receives)
        np.testing.assert_allclose(st.input_norm[t], np.linalg.norm(EMBED[IDS.ravel()], axis=1).mean(), rtol=1e-5)
        np.testing.assert_allclose(st.growth[t], GAINS[step], rtol=1e-5)
        np.testing.assert_allclose(st.growth_per_block[t], np.sqrt(GAINS[step][1] * GAINS[step][2]), rtol=1e-5)
        # the filmed points are the block outputs at the chosen tokens
        np.testing.assert_allclose(f.store[t], x[:, f.point_ids[0]], rtol=1e-5, atol=1e-8)
    assert 0 < st.near_zero.min() < st.near_zero.max() < 1  # the construction exercises the threshold


def test_round_trip_table_and_hot_chart(gain_run):
    spec = ActivationSpec(model=f"{__file__}:make_gain_net", probe=gain_run.parent / "gain_ids.npy", device="cpu")
    f = extract(scan(gain_run), spec, gain_run.parent / "store2", progress=False)
    st = ActivationStats.from_arrays(f.steps, f.blocks, f.stats)
    again = ActivationStats.from_arrays(st.steps, st.blocks, st.arrays())
    for name in ("norm", "mean", "std", "near_zero", "input_norm", "hist"):
        np.testing.assert_array_equal(getattr(again, name), getattr(st, name))
    lines = st.table().splitlines()
    assert lines[0] == f"activations at step 250: norm growth {np.sqrt(0.7 * 3.1):.3f}x per block"
    assert len(lines) == 2 + 3 and lines[2].split()[0] == "0" and lines[4].split()[2] == "3.100"
    hot = st.hot(1)
    assert hot.shape == (N_BINS, 3) and np.allclose(np.expm1(hot).sum(axis=0), IDS.size * DIM)


def test_moments_do_not_depend_on_batching():
    x = torch.randn(6, 5, 8, generator=torch.Generator().manual_seed(0)) * 3
    whole, parts = Moments(1, 0.1, "cpu"), Moments(1, 0.1, "cpu")
    whole.add(0, x)
    for chunk in x.split(2):
        parts.add(0, chunk)
    a, b = whole.result(), parts.result()
    for k in ("norm", "mean", "std", "near_zero"):
        np.testing.assert_allclose(a[k], b[k], rtol=1e-6)
    np.testing.assert_array_equal(a["hist"], b["hist"])
    assert a["hist"].sum() == x.numel()


def test_shapes_are_checked():
    z = np.zeros((2, 3))
    with pytest.raises(ValueError, match=r"ActivationStats.std has shape \(2, 2\), expected \(2, 3\)"):
        ActivationStats(np.arange(2), np.arange(3), z, z, np.zeros((2, 2)), z, np.zeros(2), np.zeros((2, 3, N_BINS)), 0.05)


def test_hooks_are_removed_even_when_the_forward_fails():
    net = GainNet()
    seen = []
    with pytest.raises(RuntimeError, match="boom"):
        with capture(list(net.blocks), lambda l, h: seen.append(l), lambda h: seen.append("in")):
            raise RuntimeError("boom")
    assert all(not b._forward_hooks and not b._forward_pre_hooks for b in net.blocks)
    with capture(list(net.blocks), lambda l, h: seen.append(l), lambda h: seen.append("in")):
        try:
            net(torch.zeros(1, 2, dtype=torch.long))
        except Exception as e:  # the last block's hook ends the pass
            assert type(e).__name__ == "Stop"  # layerfilm.points.activations.hooks.Stop
    assert seen == ["in", 0, 1, 2]
