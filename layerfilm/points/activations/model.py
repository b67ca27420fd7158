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
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import torch
from torch.nn.modules.module import register_module_buffer_registration_hook, register_module_parameter_registration_hook

from layerfilm.errors import CheckpointError, LayerfilmError, OptionsError
from layerfilm.io.blocks import map_blocks
from layerfilm.io.formats import open_checkpoint
from layerfilm.io.scan import Checkpoint
from layerfilm.io.storage import AnyPath
from layerfilm.points.activations.configs import layer_counts, read_config, said
from layerfilm.points.activations.llama import LlamaTrunk, llama_shape
from layerfilm.points.activations.loader import match_keys
from layerfilm.points.activations.spec import DTYPES, ActivationSpec, check_model_files, model_folder

_CONTEXT_ATTRS = ("max_position_embeddings", "n_positions", "n_ctx", "context", "block_size", "max_seq_len")


def transformers_module():
    """``transformers``, or a one-line error saying what to install."""
    try:
        import transformers
    except ImportError:
        raise OptionsError("building the model from config.json needs transformers: pip install 'layerfilm[hf]' "
                           "(or pass model=package.module:make_model)") from None
    return transformers


def load_factory(ref: str) -> Callable[..., torch.nn.Module]:
    """The function named by ``package.module:fn`` (importable from the current folder too) or ``file.py:fn``."""
    target, _, fn = ref.rpartition(":")
    try:
        if target.endswith(".py"):
            path = Path(target)
            if not path.is_file():
                raise OptionsError(f"model={ref!r}: no such file {target}")
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
        raise OptionsError(f"model={ref!r}: cannot import {target} ({e})") from None
    factory = getattr(module, fn, None)
    if not callable(factory):
        raise OptionsError(f"model={ref!r}: {target} has no function {fn}")
    return factory


@contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def _header(ckpt: Checkpoint) -> dict[str, tuple[int, ...]]:
    """Each tensor's shape in a checkpoint (from its header); CheckpointError if it cannot be read."""
    with open_checkpoint(ckpt.path, ckpt.format) as reader:
        return {k: tuple(reader.shape(k)) for k in reader.keys()}


def _held(ckpt: Checkpoint) -> int | None:
    """How many numbers a checkpoint's tensors hold (from its header), or None if it cannot be read."""
    try:
        return sum(_numel(s) for s in _header(ckpt).values())
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


def build_model(spec: ActivationSpec, ckpt: Checkpoint, device: torch.device,
                checkpoints: Sequence[Checkpoint] = ()) -> torch.nn.Module:
    """The model, on ``device`` in ``spec.dtype``, in eval mode, with whatever weights it was created with.
    A model built from ``config.json`` is first checked against the header of the first readable of
    ``checkpoints`` (default: ``ckpt``): see :func:`check_against_header`."""
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
                raise OptionsError(f"model={ref}: {call} failed: {type(e).__name__}: {e}") from None
    else:
        folder = model_folder(ckpt)
        check_model_files(folder)
        if not (folder / "config.json").is_file():
            raise OptionsError(f"{folder}: no config.json to build the model from; pass model=package.module:make_model")
        make = _from_config(folder / "config.json", dtype, checkpoints or (ckpt,))
    with torch.device(device), default_dtype(dtype):  # built in place: no full-precision copy on the CPU
        model = make()
    if not isinstance(model, torch.nn.Module):
        raise OptionsError(f"model={spec.model!r} returned {type(model).__name__}, not a torch.nn.Module")
    model.to(device)
    if any(p.is_floating_point() and p.dtype != dtype for p in model.parameters()):
        model.to(dtype)
    return model.eval()


def _from_config(path: Path, dtype: torch.dtype, checkpoints: Sequence[Checkpoint]) -> Callable[[], torch.nn.Module]:
    """How to build the model ``config.json`` describes: layerfilm's own Llama forward where it covers the
    config (no transformers import), else transformers' ``AutoModelForCausalLM.from_config``, never with
    code from the checkpoint folder. The config is read as untrusted (:func:`.configs.read_config`) and
    the model it describes is checked against the checkpoints' header before anything real is built."""
    config = read_config(path)
    ckpt, header = _first_header(checkpoints)
    for name, layers in layer_counts(config):  # each block holds a tensor; making the config loops over them
        if layers > len(header):
            raise CheckpointError(f"{path}: {name} is {layers:,} and {ckpt.path} holds {len(header):,} tensors; "
                                  "is it this checkpoint's config?")
    shape = llama_shape(config)
    if shape is not None:  # counted without building: a billion blocks would take hours even on the meta device
        _refuse_larger(path, shape.parameters, ckpt.path, sum(_numel(s) for s in header.values()))
        make: Callable[[], torch.nn.Module] = partial(LlamaTrunk, shape)
    else:
        tf = transformers_module()
        try:
            hf_config = tf.AutoConfig.from_pretrained(str(path.parent), local_files_only=True, trust_remote_code=False)
        except Exception as e:  # transformers raises many types for a file it cannot use
            raise CheckpointError(f"{path}: transformers cannot read it ({said(e)})") from None
        hf_config.dtype = dtype  # transformers >= 4.56 builds in config.dtype; older ones follow the default dtype

        def make() -> torch.nn.Module:
            try:
                return tf.AutoModelForCausalLM.from_config(hf_config, trust_remote_code=False)
            except ValueError as e:  # an architecture with no causal-LM head
                raise CheckpointError(f"{path}: {str(e).splitlines()[0]}") from None

    check_against_header(make, path, ckpt.path, header)
    return make


def _first_header(checkpoints: Sequence[Checkpoint]) -> tuple[Checkpoint, dict[str, tuple[int, ...]]]:
    """The first readable checkpoint and its header; none readable: the first one's own error."""
    first: CheckpointError | None = None
    for c in checkpoints:
        try:
            return c, _header(c)
        except CheckpointError as e:
            first = first or e
    assert first is not None  # a series holds at least one checkpoint
    raise first


class _TooLarge(Exception):
    pass


def check_against_header(make: Callable[[], torch.nn.Module], path: Path, ckpt: AnyPath,
                         header: dict[str, tuple[int, ...]]) -> None:
    """Refuse, in one line, a config (``path``) that describes more parameters than checkpoint ``ckpt``
    holds, or a tensor of another shape than it holds (``header``: name -> shape): a wrong or hostile
    config must not allocate, or loop over, a model that could never load. The model is built by ``make``
    on the meta device (no memory), and the build stops as soon as the numbers it registers (parameters
    and buffers) pass :func:`build_limit`, so even a config of 10^9 experts or positions ends in moments."""
    held = sum(_numel(s) for s in header.values())
    budget, built, me = build_limit(held), 0, threading.get_ident()

    def count(module: torch.nn.Module, name: str, tensor: torch.Tensor | None) -> None:
        nonlocal built
        if tensor is not None and threading.get_ident() == me:
            built += tensor.numel()
            if built > budget:
                raise _TooLarge

    hooks = [register_module_parameter_registration_hook(count), register_module_buffer_registration_hook(count)]
    try:
        with torch.device("meta"):
            model = make()
    except _TooLarge:
        raise CheckpointError(f"{path}: describes a model of more than {budget:,} numbers (parameters and buffers) "
                              f"and {ckpt} holds {held:,}; is it this checkpoint's config?") from None
    except LayerfilmError:
        raise
    except Exception as e:  # transformers' own checks of a config's values (heads that do not divide the width, ...)
        raise CheckpointError(f"{path}: transformers cannot build the model it describes ({said(e)})") from None
    finally:
        for h in hooks:
            h.remove()
    _refuse_larger(path, sum(p.numel() for p in model.parameters()), ckpt, held)
    state = model.state_dict()
    both = match_keys(list(state), list(header), optional=lambda key, found: True, unused=lambda name: True)
    for key, name in both.items():
        if tuple(state[key].shape) != header[name]:
            raise CheckpointError(f"{path}: describes {key} of shape {tuple(state[key].shape)} and {ckpt} holds "
                                  f"{header[name]}; is it this checkpoint's config?")


def build_limit(held: int) -> int:
    """How many numbers a model built from a config may register on the meta device, for ``held`` in
    its checkpoint: twice (a tied head is registered before it is tied) plus 2^26 (buffers, such as
    causal masks, hold no weights)."""
    return 2 * held + 2**26


def _refuse_larger(path: Path, parameters: int, ckpt: AnyPath, held: int) -> None:
    if parameters > held:
        raise CheckpointError(f"{path}: describes a model of {parameters:,} parameters and {ckpt} holds {held:,}; "
                              "is it this checkpoint's config?")


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
