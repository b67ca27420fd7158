"""Building the model once, without network access: from the checkpoint's ``config.json`` (a Llama by
layerfilm's own forward, :mod:`.llama`; any other architecture through ``transformers``' ``AutoConfig`` +
``AutoModelForCausalLM.from_config``), or by a user factory
``package.module:make_model`` (or ``path/to/file.py:make_model``) for any other torch module; and
finding its decoder blocks. The model is built directly on the device, in the film's dtype."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch

from ...blocks import map_blocks
from ...errors import CheckpointError, OptionsError
from ...formats import open_checkpoint
from ...scan import Checkpoint
from .llama import LlamaTrunk, llama_shape, read_config
from .spec import DTYPES, ActivationSpec, check_model_files, model_folder

_CONTEXT_ATTRS = ("max_position_embeddings", "n_positions", "n_ctx", "context", "block_size", "max_seq_len")


def transformers_module():
    """``transformers``, or a one-line error saying what to install."""
    try:
        import transformers
    except ImportError:
        raise OptionsError("building the model from config.json needs transformers: pip install 'layerfilm[hf]' "
                           "(or pass --model package.module:make_model)") from None
    return transformers


def load_factory(ref: str) -> Callable[..., torch.nn.Module]:
    """The function named by ``package.module:fn`` (importable from the current folder too) or ``file.py:fn``."""
    target, _, fn = ref.rpartition(":")
    try:
        if target.endswith(".py"):
            path = Path(target)
            if not path.is_file():
                raise OptionsError(f"--model {ref!r}: no such file {target}")
            spec = importlib.util.spec_from_file_location(f"layerfilm_model_{path.stem}", path)
            assert spec is not None and spec.loader is not None  # a .py file has a source loader
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module  # dataclasses and pickling look modules up by name
            spec.loader.exec_module(module)
        else:
            sys.path.insert(0, str(Path.cwd()))
            try:
                module = importlib.import_module(target)
            finally:
                sys.path.remove(str(Path.cwd()))
    except ImportError as e:
        raise OptionsError(f"--model {ref!r}: cannot import {target} ({e})") from None
    factory = getattr(module, fn, None)
    if not callable(factory):
        raise OptionsError(f"--model {ref!r}: {target} has no function {fn}")
    return factory


@contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def _held(ckpt: Checkpoint) -> int | None:
    """How many numbers a checkpoint's tensors hold (from its header), or None if it cannot be read."""
    try:
        with open_checkpoint(ckpt.path, ckpt.format) as reader:
            return sum(_numel(reader.shape(k)) for k in reader.keys())
    except CheckpointError:  # reported (skipped or refused) when the pass reaches it
        return None


def check_fits(checkpoints: Sequence[Checkpoint], spec: ActivationSpec, device: torch.device,
               free: int | None = None) -> None:
    """Refuse, in one line and before anything is built or loaded, a model whose weights (counted from
    the first readable checkpoint's header, in ``spec.dtype``) exceed the device's free memory (``free``
    bytes; default: what CUDA reports). Models larger than one device are out of scope."""
    if device.type != "cuda" and free is None:
        return
    found = next(((c, n) for c in checkpoints if (n := _held(c)) is not None), None)
    if found is None:
        return
    ckpt, count = found
    need = count * DTYPES[spec.dtype].itemsize
    if free is None:
        free = torch.cuda.mem_get_info(device.index if device.index is not None else torch.cuda.current_device())[0]
    if need > free:
        raise OptionsError(f"{ckpt.path}: the model's weights need {need / 2**30:.1f} GiB in {spec.dtype} and {device} has "
                           f"{free / 2**30:.1f} GiB free; a model larger than one device's memory is not supported")


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def build_model(spec: ActivationSpec, ckpt: Checkpoint, device: torch.device) -> torch.nn.Module:
    """The model, on ``device`` in ``spec.dtype``, in eval mode, with whatever weights it was created with."""
    dtype = DTYPES[spec.dtype]
    if spec.model is not None:
        ref = spec.model
        factory = load_factory(ref)
        takes_path = bool(inspect.signature(factory).parameters)

        def make() -> torch.nn.Module:
            try:
                return factory(ckpt.path) if takes_path else factory()
            except Exception as e:  # the user's code: one line that says whose call failed, not a traceback
                call = f"{ref.rpartition(':')[2]}({ckpt.path if takes_path else ''})"
                raise OptionsError(f"--model {ref}: {call} failed: {type(e).__name__}: {e}") from None
    else:
        folder = model_folder(ckpt)
        check_model_files(folder)
        if not (folder / "config.json").is_file():
            raise OptionsError(f"{folder}: no config.json to build the model from; pass --model package.module:make_model")
        make = _from_config(folder / "config.json", dtype, ckpt)
    with torch.device(device), default_dtype(dtype):  # built in place: no full-precision copy on the CPU
        model = make()
    if not isinstance(model, torch.nn.Module):
        raise OptionsError(f"--model {spec.model!r} returned {type(model).__name__}, not a torch.nn.Module")
    model.to(device)
    if any(p.is_floating_point() and p.dtype != dtype for p in model.parameters()):
        model.to(dtype)
    return model.eval()


def _from_config(path: Path, dtype: torch.dtype, ckpt: Checkpoint) -> Callable[[], torch.nn.Module]:
    """How to build the model ``config.json`` describes: layerfilm's own Llama forward where it covers the
    config (no transformers import), else transformers' ``AutoModelForCausalLM.from_config``. A Llama
    config describing more numbers than ``ckpt`` holds is refused before anything is built (a hostile or
    wrong config must not allocate, or loop over, a model that could never load)."""
    shape = llama_shape(read_config(path))
    if shape is not None:
        held = _held(ckpt)
        if held is not None and shape.parameters > held:
            raise CheckpointError(f"{path}: describes a model of {shape.parameters:,} parameters and {ckpt.path} holds "
                                  f"{held:,}; is it this checkpoint's config?")
        return lambda: LlamaTrunk(shape)
    tf = transformers_module()
    try:
        config = tf.AutoConfig.from_pretrained(str(path.parent), local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: transformers cannot read it ({e})") from None
    config.dtype = dtype  # transformers >= 4.56 builds in config.dtype; older ones follow the default dtype

    def make() -> torch.nn.Module:
        try:
            return tf.AutoModelForCausalLM.from_config(config)
        except ValueError as e:  # an architecture with no causal-LM head
            raise CheckpointError(f"{path}: {str(e).splitlines()[0]}") from None

    return make


def embedding_rows(model: torch.nn.Module) -> int | None:
    """Vocabulary size of the model's token embedding, when it can be found."""
    get_input_embeddings = getattr(model, "get_input_embeddings", None)  # transformers' models have it
    emb = get_input_embeddings() if get_input_embeddings is not None else None
    if emb is None:
        emb = next((m for m in model.modules() if isinstance(m, torch.nn.Embedding)), None)
    return getattr(emb, "num_embeddings", None)


def model_context(model: torch.nn.Module) -> int | None:
    config = getattr(model, "config", None)
    for attr in _CONTEXT_ATTRS:
        value = getattr(config, attr, None) if config is not None else None
        if isinstance(value, int) and value > 0:
            return value
    return None


def find_blocks(model: torch.nn.Module, blocks_regex: str | None) -> tuple[list[int], list[torch.nn.Module]]:
    """The decoder blocks (index, module), found from parameter names as for the weights."""
    layer_map = map_blocks(list(model.state_dict()), blocks_regex)
    paths = []
    for b in layer_map.blocks:
        comp, full = next(iter(layer_map.names[b].items()))
        paths.append(full[: len(full) - len(comp)].rstrip("."))
    return list(layer_map.blocks), [model.get_submodule(p) for p in paths]
