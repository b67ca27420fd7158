"""A checkpoint folder's ``config.json`` and ``tokenizer_config.json``, read as untrusted input before
transformers sees them: bounded JSON (size and nesting), no code from the checkpoint folder, and the
sizes a model is built from checked to be positive whole numbers, each refused in one line that names
the file and field.

transformers runs Python files that a config's ``auto_map`` names (asking "[y/N]" on stdin, even when
stdin is not a terminal) for an architecture or tokenizer it does not know. layerfilm passes
``trust_remote_code=False`` to every transformers call and, before any, refuses a config that would need
such code (:class:`RemoteCodeError`): never a prompt, never code from a checkpoint folder.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from layerfilm.errors import CheckpointError, RemoteCodeError

MAX_BYTES = 64 << 20  # a config or tokenizer config is kilobytes (a few MB with many added tokens)
MAX_DEPTH = 32  # real ones nest 3 or 4 deep; deeper JSON makes transformers (and json) recurse
# sizes a model is built from (transformers' names across architectures): a positive whole number or null
SIZES = frozenset({
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "max_position_embeddings", "n_layer", "n_embd", "n_head", "n_positions",
    "n_ctx", "n_inner", "ffn_dim", "d_model", "d_ff", "d_kv", "num_layers", "num_heads", "rotary_dim",
    "num_local_experts", "num_experts", "num_experts_per_tok", "moe_intermediate_size", "word_embed_proj_dim",
    "n_layers", "num_decoder_layers",
})
TOKEN_IDS = "give the probe as token ids: --probe ids.pt or ids.npy"  # where no tokenizer is loaded
# the layer counts among them: transformers' configs loop over layers (Qwen2's per-layer list) as they are made
LAYERS = frozenset({"num_hidden_layers", "n_layer", "num_layers", "n_layers", "num_decoder_layers"})


def read_json(path: Path) -> dict:
    """``path`` as a JSON object, or CheckpointError in one line (too large, not JSON, nested too deep)."""
    try:
        if path.stat().st_size > MAX_BYTES:
            raise CheckpointError(f"{path}: {path.stat().st_size:,} bytes; a config file is at most {MAX_BYTES:,}")
        data = json.loads(path.read_text(encoding="utf-8"))
    except RecursionError:
        raise CheckpointError(f"{path}: JSON nested more than {MAX_DEPTH} deep; is it a config file?") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read it as JSON ({e})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: not a JSON object")
    stack: list[tuple[dict | list, int]] = [(data, 1)]
    while stack:  # iterative: a deep file must not recurse here either
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise CheckpointError(f"{path}: JSON nested more than {MAX_DEPTH} deep; is it a config file?")
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        stack += [(c, depth + 1) for c in children if isinstance(c, (dict, list))]
    return data


def read_config(path: Path) -> dict:
    """``config.json`` as a dict: bounded (:func:`read_json`), needing no code from its folder, and every
    size in :data:`SIZES` (at any level, e.g. ``text_config.hidden_size``) a positive whole number or null."""
    config = read_json(path)
    check_no_remote_code(path, config)
    for name, key, value in _entries(config):
        if key in SIZES and value is not None and (type(value) is not int or value <= 0):
            shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
            raise CheckpointError(f"{path}: {name} is {shown}; it must be a positive whole number")
    return config


def layer_counts(config: dict) -> list[tuple[str, int]]:
    """(name, value) of each layer count in a config read by :func:`read_config` (``text_config.num_layers``...)."""
    return [(name, value) for name, key, value in _entries(config) if key in LAYERS and isinstance(value, int)]


def _entries(config: dict) -> Iterator[tuple[str, str, object]]:
    """(dotted name, key, value) of every entry, those of nested objects included (iteratively)."""
    stack: list[tuple[str, dict]] = [("", config)]
    while stack:
        prefix, d = stack.pop()
        for key, value in d.items():
            if isinstance(value, dict):
                stack.append((f"{prefix}{key}.", value))
            else:
                yield f"{prefix}{key}", key, value


def read_tokenizer_config(folder: Path) -> None:
    """Check the files that choose a tokenizer class in ``folder`` (``config.json``, ``tokenizer_config.json``)
    as :func:`read_config` would, before transformers reads them."""
    for path in (folder / "config.json", folder / "tokenizer_config.json"):
        if not path.is_file():
            continue
        config = read_json(path)
        check_no_remote_code(path, config, TOKEN_IDS)
        name = config.get("tokenizer_class")
        if name is not None and not isinstance(name, str):
            raise CheckpointError(f"{path}: tokenizer_class is {name!r:.40}; it must be the name of a transformers "
                                  "tokenizer class")


def check_no_remote_code(path: Path, config: dict, hint: str = "build the model with --model package.module:make_model"
                         ) -> None:
    """RemoteCodeError if ``config`` has an ``auto_map`` (classes in Python files of its folder) for an
    architecture (``model_type``) or tokenizer (``tokenizer_class``) transformers does not know itself;
    where it knows it (Phi-3's config names its own files too), ``trust_remote_code=False`` builds
    transformers' own class and no file of the folder is run."""
    if "auto_map" not in config:
        return
    if path.name == "tokenizer_config.json":
        known = isinstance(config.get("tokenizer_class"), str) and _known_tokenizer(config["tokenizer_class"])
    else:
        known = isinstance(config.get("model_type"), str) and _known_model_type(config["model_type"])
    if not known:
        raise RemoteCodeError(f"{path}: its auto_map names code in the checkpoint folder, and layerfilm does not run "
                              f"code from checkpoint folders ({hint})")


def _known_model_type(name: str) -> bool:
    try:
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    except ImportError:  # no transformers: nothing could run the code anyway, but say why it is refused
        return False
    return name in CONFIG_MAPPING_NAMES


def _known_tokenizer(name: str) -> bool:
    try:
        from transformers.models.auto.tokenization_auto import tokenizer_class_from_name
    except ImportError:
        return False
    return tokenizer_class_from_name(name) is not None


def said(e: BaseException) -> str:
    """An exception as one short line: its type and the first line of its message."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:200]}" if lines else type(e).__name__
