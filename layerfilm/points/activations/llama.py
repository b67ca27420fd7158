"""layerfilm's own forward pass for Llama-shaped decoders, so that an activation film of a Llama
checkpoint does not import transformers' modelling code (7-9 s of imports: torch.distributed's sympy,
generation's scikit-learn, dynamo), which on a short film costs more than reading the checkpoints.

It covers what ``config.json`` says with ``"model_type": "llama"`` and the default rotary embedding,
and nothing else: :func:`llama_shape` returns None for any setting it does not implement (another
architecture, RoPE scaling, another activation, partial rotary), and the model is then built by
transformers as before. The computation is transformers' (``LlamaForCausalLM`` with its "sdpa" attention),
op for op and in the same dtypes: RMSNorm in float32, the rotary table in float32 then cast, one
``scaled_dot_product_attention`` call with ``is_causal``. The tests check block outputs equal to
transformers' own model on the same weights.

The module names are transformers' (``model.layers.N.self_attn.q_proj``, ...), so checkpoints load by
the same keys and blocks are found by the same rule. There is no LM head: the probe stops after the last
block, so ``lm_head.weight`` is left in the file (``_keys_to_ignore_on_load_unexpected``), never read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

DEFAULT_THETA = 10_000.0
# scaled_dot_product_attention takes grouped key/value heads itself from torch 2.5 on (enable_gqa); transformers
# lets it, up to 256 dimensions per head, and repeats the key/value heads otherwise: so does this module
SDPA_GQA = tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 5)
MAX_GQA_HEAD_DIM = 256
# settings that change the computation, with the only values implemented here (absent: the same)
REQUIRED_SAME = {"hidden_act": "silu", "pretraining_tp": 1, "partial_rotary_factor": 1.0}


@dataclass(frozen=True)
class LlamaShape:
    """What the forward pass needs from ``config.json`` (transformers' LlamaConfig field names)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = DEFAULT_THETA
    attention_bias: bool = False
    mlp_bias: bool = False
    max_position_embeddings: int = 2048

    @property
    def parameters(self) -> int:
        """How many numbers the model holds (no LM head), counted without building it."""
        d, q, kv = self.hidden_size, self.num_attention_heads * self.head_dim, self.num_key_value_heads * self.head_dim
        attention = 2 * d * q + 2 * d * kv + (q + 2 * kv + d) * self.attention_bias
        mlp = 3 * d * self.intermediate_size + (2 * self.intermediate_size + d) * self.mlp_bias
        return self.vocab_size * d + self.num_hidden_layers * (attention + mlp + 2 * d) + d


def _rope(config: dict) -> float | None:
    """The default rotary embedding's theta, or None where the config asks for any other kind (in either
    spelling: transformers 5's ``rope_parameters`` or 4's ``rope_scaling``, each checked)."""
    theta = config.get("rope_theta", DEFAULT_THETA)
    for params in (config.get("rope_scaling"), config.get("rope_parameters")):
        if params is None:
            continue
        if not isinstance(params, dict):
            return None
        if params.get("rope_type", params.get("type", "default")) != "default" \
                or params.get("partial_rotary_factor", 1.0) != 1.0:
            return None
        theta = params.get("rope_theta", theta)
    return float(theta) if isinstance(theta, (int, float)) and theta > 0 else None


def llama_shape(config: dict) -> LlamaShape | None:
    """The shape of a Llama this module runs exactly as transformers does, or None (transformers builds it)."""
    if config.get("model_type") != "llama" or any(config.get(k, v) != v for k, v in REQUIRED_SAME.items()):
        return None
    theta = _rope(config)
    sizes = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    if theta is None or not all(isinstance(config.get(k), int) and config[k] > 0 for k in sizes):
        return None
    heads = config["num_attention_heads"]
    kv = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    if not (isinstance(kv, int) and isinstance(head_dim, int) and kv > 0 and heads % kv == 0 and head_dim % 2 == 0):
        return None
    return LlamaShape(config["vocab_size"], config["hidden_size"], config["intermediate_size"],
                      config["num_hidden_layers"], heads, kv, head_dim,
                      rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)), rope_theta=theta,
                      attention_bias=bool(config.get("attention_bias", False)),
                      mlp_bias=bool(config.get("mlp_bias", False)),
                      max_position_embeddings=int(config.get("max_position_embeddings", 2048)))


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def repeat_kv(x: torch.Tensor, n: int) -> torch.Tensor:
    """(B, kv heads, T, d) -> (B, kv heads x n, T, d), each key/value head repeated for its n query heads."""
    b, kv, t, d = x.shape
    return x[:, :, None].expand(b, kv, n, t, d).reshape(b, kv * n, t, d)


class Attention(nn.Module):
    def __init__(self, s: LlamaShape) -> None:
        super().__init__()
        self.head_dim = s.head_dim
        # grouped key/value heads: sdpa's enable_gqa where torch has it (and transformers uses it), else repeated
        group = s.num_attention_heads // s.num_key_value_heads
        native = group > 1 and SDPA_GQA and s.head_dim <= MAX_GQA_HEAD_DIM
        self.gqa: dict[str, Any] = {"enable_gqa": True} if native else {}
        self.repeat = group if group > 1 and not native else 1
        self.q_proj = nn.Linear(s.hidden_size, s.num_attention_heads * s.head_dim, bias=s.attention_bias)
        self.k_proj = nn.Linear(s.hidden_size, s.num_key_value_heads * s.head_dim, bias=s.attention_bias)
        self.v_proj = nn.Linear(s.hidden_size, s.num_key_value_heads * s.head_dim, bias=s.attention_bias)
        self.o_proj = nn.Linear(s.num_attention_heads * s.head_dim, s.hidden_size, bias=s.attention_bias)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        shape = (*x.shape[:-1], -1, self.head_dim)
        q = self.q_proj(x).view(shape).transpose(1, 2)
        k = self.k_proj(x).view(shape).transpose(1, 2)
        v = self.v_proj(x).view(shape).transpose(1, 2)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        if self.repeat > 1:
            k, v = repeat_kv(k, self.repeat), repeat_kv(v, self.repeat)
        out = F.scaled_dot_product_attention(q, k, v, scale=self.head_dim**-0.5, is_causal=q.shape[2] > 1, **self.gqa)
        return self.o_proj(out.transpose(1, 2).contiguous().reshape(*x.shape[:-1], -1))


class MLP(nn.Module):
    def __init__(self, s: LlamaShape) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(s.hidden_size, s.intermediate_size, bias=s.mlp_bias)
        self.up_proj = nn.Linear(s.hidden_size, s.intermediate_size, bias=s.mlp_bias)
        self.down_proj = nn.Linear(s.intermediate_size, s.hidden_size, bias=s.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, s: LlamaShape) -> None:
        super().__init__()
        self.self_attn = Attention(s)
        self.mlp = MLP(s)
        self.input_layernorm = RMSNorm(s.hidden_size, s.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(s.hidden_size, s.rms_norm_eps)

    def forward(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        h = h + self.self_attn(self.input_layernorm(h), cos, sin)
        return h + self.mlp(self.post_attention_layernorm(h))


class Trunk(nn.Module):
    def __init__(self, s: LlamaShape) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(s.vocab_size, s.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(s) for _ in range(s.num_hidden_layers))
        self.norm = RMSNorm(s.hidden_size, s.rms_norm_eps)
        # transformers' default RoPE, computed where and as it computes it (in float32 on the build device)
        inv_freq = 1.0 / (s.rope_theta ** (torch.arange(0, s.head_dim, 2, dtype=torch.float) / s.head_dim))
        self.inv_freq: torch.Tensor
        self.register_buffer("inv_freq", inv_freq, persistent=False)


class LlamaTrunk(nn.Module):
    """A Llama decoder without its LM head: ``forward(input_ids)`` returns the final-normed hidden states
    (B, T, D); the probe's hooks stop it after the last block."""

    _keys_to_ignore_on_load_unexpected = [r"(^|\.)lm_head\.(weight|bias)$"]

    def __init__(self, shape: LlamaShape) -> None:
        super().__init__()
        self.config = shape  # model_context() reads max_position_embeddings from it
        self.model = Trunk(shape)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def forward(self, input_ids: torch.Tensor, use_cache: bool = False) -> torch.Tensor:
        h = self.model.embed_tokens(input_ids)
        positions = torch.arange(input_ids.shape[1], device=h.device)[None]
        freqs = positions[..., None].float() * self.model.inv_freq.to(device=h.device, dtype=torch.float)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos().to(h.dtype), emb.sin().to(h.dtype)
        for layer in self.model.layers:
            h = layer(h, cos, sin)
        return self.model.norm(h)
