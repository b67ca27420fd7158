"""Block naming across architectures: tiny models built offline from transformers configs."""

from __future__ import annotations

import pytest
import torch
import transformers as T  # the `test` extra

from layerfilm.errors import LayerError
from layerfilm.io.blocks import map_blocks, resolve_param, strip_prefixes

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
