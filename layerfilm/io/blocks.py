"""Which parameters belong to which decoder block, across naming conventions.

Block containers recognised: ``transformer.h.N.`` (GPT-2, GPT-J, Falcon), ``model.layers.N.``
(Llama, Mistral, Qwen2, Gemma, Phi), ``gpt_neox.layers.N.``, ``model.decoder.layers.N.`` (OPT),
``blocks.N.``, ``layers.N.``, ``encoder.layer.N.`` (BERT), ``decoder.block.N.`` (T5),
``backbone.layers.N.`` (Mamba), PyTorch's ``nn.TransformerEncoder``/``Decoder`` (``layers.N.``, filmed
matrix ``linear1``). A user regex with one group (the index) overrides them.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass

from layerfilm.errors import LayerError

# prefix (anything ending in a container name) + index + the name inside the block
# (the outermost container: T5's "decoder.block.0.layer.2.x" is block 0 of decoder.block, not 2 of .layer)
_BLOCK = re.compile(r"^(?P<prefix>(?:.*?\.)?(?:h|layers|layer|blocks|block))\.(?P<index>\d+)\.(?P<rest>.+)$")

# Added by wrappers around the model: DDP / DataParallel, torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# Added by a module holding the whole network (a LightningModule's ``self.model``): stripped only
# when every name carries it.
WHOLE_PREFIXES = ("model.",)

# The MLP's input projection under each convention, tried in order for the default --param.
DEFAULT_PARAMS = (
    "mlp.c_fc.weight",  # GPT-2, nanoGPT
    "mlp.up_proj.weight",  # Llama, Mistral, Qwen2, Gemma
    "mlp.dense_h_to_4h.weight",  # GPT-NeoX, Falcon
    "mlp.fc_in.weight",  # GPT-J
    "mlp.fc1.weight",  # Phi
    "fc1.weight",  # OPT
    "intermediate.dense.weight",  # BERT
    "layer.2.DenseReluDense.wi.weight",  # T5 decoder
    "layer.2.DenseReluDense.wi_0.weight",  # T5 v1.1 (gated)
    "layer.1.DenseReluDense.wi.weight",  # T5 encoder
    "mixer.in_proj.weight",  # Mamba
    "feed_forward.w1.weight",  # Meta Llama
    "ff.0.weight",
    "linear1.weight",  # PyTorch's own nn.TransformerEncoderLayer / nn.TransformerDecoderLayer
)


def _mlp_pair(matrices: dict[str, tuple[int, ...]]) -> str | None:
    """The up projection of the block's one MLP-like pair of linears, or None when there is not
    exactly one: an up matrix [h, d] and a down matrix [d, h] (stored [out, in]), h != d, where d is
    the block's residual width (the input width most of its matrices share). Why: a block named by no
    known convention still has an MLP whose input projection is the natural thing to film."""
    if not matrices:
        return None
    widths = Counter(shape[1] for shape in matrices.values())
    d = widths.most_common(1)[0][0]
    ups = [c for c, (h, w) in matrices.items() if w == d and h != d
           and sum(1 for other in matrices.values() if other == (d, h)) == 1]
    return ups[0] if len(ups) == 1 else None


def strip_prefixes(keys: list[str]) -> dict[str, str]:
    """Clean name -> stored name: drops ``module.`` / ``_orig_mod.`` wherever a name starts with
    them (repeatedly: ``module._orig_mod.``), then one ``model.`` if every name starts with it.

    Example:
        >>> strip_prefixes(["module._orig_mod.model.h.0.w", "module._orig_mod.model.wte"])
        {'h.0.w': 'module._orig_mod.model.h.0.w', 'wte': 'module._orig_mod.model.wte'}
    """
    clean = []
    for key in keys:
        name = key
        while name.startswith(WRAPPER_PREFIXES):
            name = name.split(".", 1)[1]
        clean.append(name)
    for prefix in WHOLE_PREFIXES:
        if clean and all(c.startswith(prefix) for c in clean):
            clean = [c[len(prefix):] for c in clean]
    out = dict(zip(clean, keys))
    return out if len(out) == len(keys) else {k: k for k in keys}  # stripping must not merge names


@dataclass(frozen=True)
class BlockMap:
    """Parameter names grouped by block: ``names[block][component] = full name``."""

    prefix: str
    blocks: tuple[int, ...]
    names: dict[int, dict[str, str]]

    def param_names(self, component: str) -> list[str]:
        return [self.names[b][component] for b in self.blocks]

    def components(self) -> list[str]:
        return sorted(self.names[self.blocks[0]])


def map_blocks(keys: list[str], blocks_regex: str | None = None) -> BlockMap:
    """Group parameter ``keys`` by block.

    With ``blocks_regex`` (a regex whose first group is the block index, matched at the start of a
    name), the rest of the name after the match is the component. Without it, the block container
    holding the most blocks wins (T5 and encoder-decoder models: the decoder on a tie).
    """
    by_prefix: dict[str, dict[int, dict[str, str]]] = defaultdict(lambda: defaultdict(dict))
    if blocks_regex is not None:
        try:
            pattern = re.compile(blocks_regex)
        except re.error as e:
            raise LayerError(f"blocks={blocks_regex!r}: not a valid regex ({e})") from None
        if pattern.groups < 1:
            raise LayerError(f"blocks={blocks_regex!r}: needs one group that captures the block index")
        for key in keys:
            m = pattern.match(key)
            if m and m.group(1) is not None and m.group(1).isdigit():
                by_prefix[blocks_regex][int(m.group(1))][key[m.end():].lstrip(".")] = key
        if not by_prefix:
            raise LayerError(f"blocks={blocks_regex!r} matches no parameter name (e.g. {keys[0] if keys else '-'})")
    else:
        for key in keys:
            m = _BLOCK.match(key)
            if m:
                by_prefix[m["prefix"]][int(m["index"])][m["rest"]] = key
        if not keys:
            raise LayerError("holds no tensors (an empty checkpoint)")
        if not by_prefix:
            sample = ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")
            raise LayerError(f"no decoder blocks found in parameter names ({sample}); pass blocks=REGEX")
    prefix = max(by_prefix, key=lambda p: (len(by_prefix[p]), "decoder" in p))
    groups = by_prefix[prefix]
    return BlockMap(prefix, tuple(sorted(groups)), {b: dict(groups[b]) for b in groups})


def resolve_param(layer_map: BlockMap, param: str | None, shapes: dict[str, tuple[int, ...]]) -> str:
    """The component name to film in every block.

    ``param`` may be the name inside a block (``mlp.c_fc.weight``) or omit ``.weight`` (or PyTorch's
    ``_weight``: ``self_attn.in_proj`` is ``self_attn.in_proj_weight``).
    None picks the MLP's input projection of the detected convention, else the up matrix of the
    block's one MLP-like pair of linears (``_mlp_pair``). Every block must have it as a 2-D matrix.
    """
    b0 = layer_map.blocks[0]
    matrices = [c for c in layer_map.components() if len(shapes.get(layer_map.names[b0][c], ())) == 2]
    if param is None:
        choice = next((c for c in DEFAULT_PARAMS if c in matrices), None) or \
            _mlp_pair({c: tuple(shapes[layer_map.names[b0][c]]) for c in matrices})
        if choice is None and not matrices:
            held = ", ".join(f"{c} {list(shapes.get(layer_map.names[b0][c], ()))}" for c in layer_map.components()[:5])
            raise LayerError(f"the blocks hold no 2-D matrix to film (block {b0} holds {held}); pass blocks=REGEX "
                             "if these are not the decoder blocks")
        if choice is None:
            raise LayerError("no MLP input projection found by its usual names nor as one up/down pair of matrices; "
                             "pass --param, one of: " + ", ".join(matrices))
    else:
        wanted = [param, param + ".weight", param + "_weight"]
        choice = next((c for c in wanted if c in layer_map.names[b0]), None)
        if choice is None:
            raise LayerError(f"param={param!r} matches no matrix in the blocks; candidates: {', '.join(matrices)}")
        if choice not in matrices:
            raise LayerError(f"param={param!r} is not a 2-D matrix; candidates: {', '.join(matrices)}")
    missing = [b for b in layer_map.blocks if choice not in layer_map.names[b]]
    if missing:
        raise LayerError(f"param={choice!r} is missing from blocks {missing}")
    return choice


def is_conv1d_layout(keys: list[str], shapes: dict[str, tuple[int, ...]]) -> bool:
    """True for GPT-2's Conv1D storage ([in, out]) rather than nn.Linear's ([out, in]).

    GPT-2 and nanoGPT share the names ``c_attn``/``c_fc``/``c_proj``, so names alone cannot tell.
    The fused QKV matrix can: Conv1D stores it as [d, 3d], nn.Linear as [3d, d].
    """
    for key in keys:
        if key.endswith("c_attn.weight"):
            shape = shapes[key]
            return len(shape) == 2 and shape[1] == 3 * shape[0]
    return False

