"""Activations as points: what each block computes on a fixed probe batch, one point per token.

The model is built once, without network access: from the checkpoint's ``config.json`` through
``transformers`` (``AutoConfig`` + ``AutoModelForCausalLM.from_config``), or by a user factory
``package.module:make_model`` (or ``path/to/file.py:make_model``) for any other torch module. Each
checkpoint's weights are then copied into it, one tensor at a time (strict: after stripping a
wrapper prefix such as ``module.`` or ``_orig_mod.``, every key must match). Forward hooks,
registered inside a context manager that always removes them, copy each block's output hidden
states at the tracked token positions. The same tokens are used at every checkpoint, so point i of
every frame is the same token: points correspond 1-to-1 across frames.

Memory is one model, one batch of hidden states, and the (L, N, D) points of one key frame.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..blocks import map_blocks
from ..errors import CheckpointError, OptionsError
from ..formats import check_regular, open_checkpoint
from ..scan import Checkpoint, Series
from . import Features, FeatureStore, Subject
from .act_stats import ActivationStats, Moments

DEVICES = ("auto", "cpu", "cuda")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULT_PROBE = Path(__file__).resolve().parents[1] / "data" / "probe.txt"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
# every file transformers may open to build a tokenizer or a config: each must be a regular file first
MODEL_FILES = (*TOKENIZER_FILES, "config.json", "merges.txt", "special_tokens_map.json", "added_tokens.json")
MAX_DEFAULT_SEQ = 128  # default tokens per probe sequence (or the model's context, if shorter)
_CONTEXT_ATTRS = ("max_position_embeddings", "n_positions", "n_ctx", "context", "block_size", "max_seq_len")


@dataclass(frozen=True)
class ActivationSpec:
    """What to film from the activations.

    model: ``package.module:make_model`` or ``file.py:make_model`` returning a torch module
           (called with the first checkpoint's path if it takes an argument); None: build from
           ``config.json`` beside the checkpoint with transformers.
    probe: a text file, or a ``.pt``/``.npy`` of token ids (1-D: cut into rows of seq_len;
           2-D: rows as given); None: the bundled text.
    points: at most this many token positions, chosen once (seeded) and tracked at every step.
    seed: seed of that choice.
    seq_len: tokens per probe sequence; None: min(128, the model's context when it states one).
    batch_size: sequences per forward pass.
    device: "auto" (cuda when available), "cpu" or "cuda".
    dtype: weights and activations dtype: float32, bfloat16 or float16.
    near_zero: |a| below this counts as near zero in the statistics.
    blocks_regex: override block detection (a regex whose first group is the block index).
    """

    model: str | None = None
    probe: str | Path | None = None
    points: int = 512
    seed: int = 0
    seq_len: int | None = None
    batch_size: int = 8
    device: str = "auto"
    dtype: str = "float32"
    near_zero: float = 0.05
    blocks_regex: str | None = None

    def __post_init__(self) -> None:
        if self.points < 2:
            raise OptionsError(f"--points {self.points}: need at least 2 points per block")
        if self.seq_len is not None and self.seq_len < 1:
            raise OptionsError(f"--seq-len {self.seq_len}: must be 1 or more")
        if self.batch_size < 1:
            raise OptionsError(f"--batch-size {self.batch_size}: must be 1 or more")
        if self.device not in DEVICES:
            raise OptionsError(f"--device {self.device!r}: choose one of {', '.join(DEVICES)}")
        if self.dtype not in DTYPES:
            raise OptionsError(f"--dtype {self.dtype!r}: choose one of {', '.join(DTYPES)}")
        if not self.near_zero > 0:
            raise OptionsError(f"--near-zero {self.near_zero}: must be positive")
        if self.model is not None and not re.fullmatch(r"[^:]+:[A-Za-z_]\w*", self.model):
            raise OptionsError(f"--model {self.model!r}: expected package.module:function or file.py:function")
        if self.probe is not None and not Path(self.probe).exists():
            raise OptionsError(f"--probe {self.probe}: no such file")
        if self.probe is not None:  # a FIFO would block the read forever
            check_regular(Path(self.probe), OptionsError, f"--probe {self.probe}")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise OptionsError("--device cuda: no CUDA device is available to torch (use --device cpu)")
    return torch.device(name)


def model_folder(ckpt: Checkpoint) -> Path:
    """Where config.json and tokenizer files live: the checkpoint folder, or the file's folder."""
    path = ckpt.path
    assert isinstance(path, Path)  # activation films need a local folder (layerfilm.run.scan_for)
    return path if path.is_dir() else path.parent


def _transformers():
    try:
        import transformers
    except ImportError:
        raise OptionsError("building the model from config.json needs transformers: pip install 'layerfilm[hf]' "
                           "(or pass --model package.module:make_model)") from None
    return transformers


def input_files(spec: ActivationSpec, series: Series) -> list[Path]:
    """Files besides the checkpoints whose contents change an activation film (the cache stamps them):
    the probe, the model factory's source, and config/tokenizer files beside checkpoint files."""
    files = [Path(spec.probe) if spec.probe is not None else DEFAULT_PROBE]
    if spec.model is not None:
        target = spec.model.rpartition(":")[0]
        if target.endswith(".py"):
            files.append(Path(target))
        else:
            sys.path.insert(0, str(Path.cwd()))
            try:
                found = importlib.util.find_spec(target)
            except (ImportError, ValueError):
                found = None
            finally:
                sys.path.remove(str(Path.cwd()))
            if found is not None and found.origin:
                files.append(Path(found.origin))
    folders = {c.path.parent for c in series.checkpoints if isinstance(c.path, Path) and not c.path.is_dir()}
    files += [f / n for f in sorted(folders) for n in ("config.json", *TOKENIZER_FILES) if (f / n).is_file()]
    return [f for f in files if f.is_file()]


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
        tf = _transformers()
        try:
            config = tf.AutoConfig.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError, KeyError) as e:
            raise CheckpointError(f"{folder / 'config.json'}: transformers cannot read it ({e})") from None
        config.dtype = dtype  # transformers >= 4.56 builds in config.dtype; older ones follow the default dtype

        def make() -> torch.nn.Module:
            try:
                return tf.AutoModelForCausalLM.from_config(config)
            except ValueError as e:  # an architecture with no causal-LM head
                raise CheckpointError(f"{folder / 'config.json'}: {str(e).splitlines()[0]}") from None
    with torch.device(device), default_dtype(dtype):  # built in place: no full-precision copy on the CPU
        model = make()
    if not isinstance(model, torch.nn.Module):
        raise OptionsError(f"--model {spec.model!r} returned {type(model).__name__}, not a torch.nn.Module")
    model.to(device)
    if any(p.is_floating_point() and p.dtype != dtype for p in model.parameters()):
        model.to(dtype)
    return model.eval()


def _prefixes(keys: list[str], depth: int = 2) -> set[str]:
    out = {""}
    for k in keys:
        parts = k.split(".")
        out.update(".".join(parts[:i]) + "." for i in range(1, min(depth, len(parts) - 1) + 1))
    return out


def match_keys(model_keys: list[str], ckpt_keys: list[str], where: Path | str = "",
               optional: Callable[[str, set[str]], bool] = lambda key, found: False) -> dict[str, str]:
    """Model key -> checkpoint key, after removing a wrapper prefix the checkpoint has and the model
    lacks (``module.``, ``_orig_mod.``, ``model.``), or adding one the model has and the checkpoint lacks.

    Strict: raises CheckpointError listing the missing and unexpected keys unless every model key
    is found (``optional(key, found_keys)`` ones may be missing, e.g. a tied ``lm_head.weight``).
    """
    wanted = set(model_keys)
    best, best_hits = {}, -1
    for strip in sorted(_prefixes(ckpt_keys), key=len):
        for add in sorted(_prefixes(model_keys, 1), key=len):
            mapping = {add + k[len(strip):]: k for k in ckpt_keys if k.startswith(strip)}
            hits = len(wanted & mapping.keys())
            if hits > best_hits:
                best, best_hits = mapping, hits
    found = best.keys() & wanted
    missing = [k for k in model_keys if k not in found and not optional(k, found)]
    used = {best[k] for k in found}
    unexpected = [k for k in ckpt_keys if k not in used]
    if missing or unexpected:
        def few(keys: list[str]) -> str:
            return ", ".join(keys[:4]) + (f" (+{len(keys) - 4} more)" if len(keys) > 4 else "")

        parts = [f"{len(missing)} missing: {few(missing)}"] if missing else []
        parts += [f"{len(unexpected)} unexpected: {few(unexpected)}"] if unexpected else []
        raise CheckpointError(f"{where}: weights do not match the model ({'; '.join(parts)}); "
                              f"is --model (or config.json) the architecture that wrote this checkpoint?")
    return {k: best[k] for k in model_keys if k in best}


class WeightLoader:
    """Copies a checkpoint's tensors into a built model, one tensor at a time."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.state = model.state_dict(keep_vars=True)
        groups: dict[int, list[str]] = {}
        for k, v in self.state.items():  # tied weights share storage: one of them is enough
            groups.setdefault(v.data_ptr(), []).append(k)
        self.tied = {k: g for g in groups.values() if len(g) > 1 for k in g}
        self.ignore = [re.compile(p) for p in getattr(model, "_keys_to_ignore_on_load_missing", None) or []]

    def optional(self, key: str, found: set[str]) -> bool:
        """A key that may be missing: tied to one that is found, or one the model says to ignore."""
        return any(o in found for o in self.tied.get(key, ())) or any(p.search(key) for p in self.ignore)

    @torch.no_grad()
    def load(self, reader, where: Path) -> None:
        mapping = match_keys(list(self.state), reader.keys(), where, self.optional)
        for key, name in mapping.items():
            target = self.state[key]
            if tuple(reader.shape(name)) != tuple(target.shape):
                raise CheckpointError(f"{where}: {name} has shape {tuple(reader.shape(name))}, "
                                      f"the model expects {tuple(target.shape)}")
            target.data.copy_(torch.from_numpy(reader.get(name)))


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


def check_model_files(folder: Path) -> None:
    """Refuse a FIFO, device or socket among the files transformers would open in ``folder`` (open()
    would block forever) before it opens any."""
    for name in MODEL_FILES:
        if (folder / name).exists():
            check_regular(folder / name)


def tokenize(text: str, folder: Path) -> np.ndarray:
    """Token ids of ``text``: the checkpoint's own tokenizer when its files are present, else UTF-8 bytes."""
    check_model_files(folder)
    if not any((folder / f).is_file() for f in TOKENIZER_FILES):
        return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int64)
    tf = _transformers()
    try:
        tok = tf.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{folder}: cannot load its tokenizer ({e})") from None
    return np.asarray(tok(text, add_special_tokens=False)["input_ids"], np.int64)


def probe_ids(spec: ActivationSpec, folder: Path, context: int | None, vocab: int | None) -> np.ndarray:
    """(S, T) int64 token ids of the probe batch."""
    path = Path(spec.probe) if spec.probe is not None else DEFAULT_PROBE
    name = f"--probe {path}" if spec.probe is not None else f"the default probe ({path.name})"
    if path.suffix in (".pt", ".npy"):
        try:
            raw = torch.load(path, weights_only=True) if path.suffix == ".pt" else np.load(path, allow_pickle=False)
        except Exception as e:  # torch and numpy raise many types for a bad file
            raise OptionsError(f"{name}: cannot read token ids ({type(e).__name__}: {e})") from None
        ids = raw.numpy() if isinstance(raw, torch.Tensor) else np.asarray(raw)
        if ids.dtype.kind not in "iu" or ids.ndim not in (1, 2) or ids.size == 0:
            raise OptionsError(f"{name}: expected a 1-D or 2-D array of integer token ids, got {ids.dtype} {ids.shape}")
        ids = ids.astype(np.int64)
    else:
        try:
            ids = tokenize(path.read_text(encoding="utf-8"), folder)
        except UnicodeDecodeError:
            raise OptionsError(f"{name}: not UTF-8 text (token ids go in a .pt or .npy file)") from None
    if ids.ndim == 1:
        seq = spec.seq_len or min(MAX_DEFAULT_SEQ, context or MAX_DEFAULT_SEQ)
        if len(ids) < seq:
            seq = len(ids)
        ids = ids[: len(ids) // seq * seq].reshape(-1, seq)
    if ids.size < 2:
        raise OptionsError(f"{name}: holds {ids.size} token; need at least 2")
    if context is not None and ids.shape[1] > context:
        raise OptionsError(f"{name}: sequences of {ids.shape[1]} tokens exceed the model's context of {context} "
                           f"(use --seq-len {context} or less)")
    if ids.min() < 0 or (vocab is not None and ids.max() >= vocab):
        raise OptionsError(f"{name}: token ids {ids.min()}..{ids.max()} fall outside the model's vocabulary of {vocab}")
    return ids


def find_blocks(model: torch.nn.Module, blocks_regex: str | None) -> tuple[list[int], list[torch.nn.Module]]:
    """The decoder blocks (index, module), found from parameter names as for the weights."""
    layer_map = map_blocks(list(model.state_dict()), blocks_regex)
    paths = []
    for b in layer_map.blocks:
        comp, full = next(iter(layer_map.names[b].items()))
        paths.append(full[: len(full) - len(comp)].rstrip("."))
    return list(layer_map.blocks), [model.get_submodule(p) for p in paths]


class _Stop(Exception):
    """Raised by the last block's hook: nothing after it (final norm, LM head) needs computing."""


@contextmanager
def capture(blocks: list[torch.nn.Module], on_output: Callable[[int, torch.Tensor], None],
            on_input: Callable[[torch.Tensor], None] | None = None) -> Iterator[None]:
    """Call ``on_output(l, hidden)`` with each block's output hidden states (B, T, D) during a forward
    pass (and ``on_input`` with the first block's input); the last block then ends the pass.
    The hooks are removed on exit, whatever happens inside."""

    def hidden(x):
        return x[0] if isinstance(x, (tuple, list)) else x

    def out_hook(l: int):
        def hook(module, args, output):
            on_output(l, hidden(output))
            if l == len(blocks) - 1:
                raise _Stop

        return hook

    def in_hook(module, args, kwargs):
        x = args[0] if args else kwargs.get("hidden_states")
        if isinstance(x, torch.Tensor):
            on_input(x)

    handles = [b.register_forward_hook(out_hook(l)) for l, b in enumerate(blocks)]
    if on_input is not None:
        handles.append(blocks[0].register_forward_pre_hook(in_hook, with_kwargs=True))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def run_probe(model: torch.nn.Module, blocks: list[torch.nn.Module], ids: torch.Tensor, picks: np.ndarray,
              batch_size: int, near_zero: float) -> tuple[np.ndarray, dict[str, np.ndarray], float]:
    """Forward the probe batch ids (S, T) through the model in batches.

    Returns (L, N, D) float32 hidden states at the flat token positions ``picks`` (N,), the per-block
    statistics over all tokens (``Moments.result()``) and the mean token norm entering block 0.
    """
    S, T = ids.shape
    moments = Moments(len(blocks), near_zero, ids.device)
    points: list[list[torch.Tensor]] = [[] for _ in blocks]
    in_norm = torch.zeros((), dtype=torch.float64, device=ids.device)
    is_hf = hasattr(model, "config") and hasattr(model, "get_input_embeddings")
    for r0 in range(0, S, batch_size):
        r1 = min(r0 + batch_size, S)
        local = torch.as_tensor(picks[(picks >= r0 * T) & (picks < r1 * T)] - r0 * T, device=ids.device)

        def on_output(l: int, h: torch.Tensor, local: torch.Tensor = local) -> None:
            moments.add(l, h)
            points[l].append(h.reshape(-1, h.shape[-1])[local].float().cpu())

        def on_input(h: torch.Tensor) -> None:
            nonlocal in_norm
            in_norm += h.float().norm(dim=-1).sum().double()

        with capture(blocks, on_output, on_input):
            try:
                model(input_ids=ids[r0:r1], use_cache=False) if is_hf else model(ids[r0:r1])
            except _Stop:
                pass
    pts = np.stack([torch.cat(p).numpy() for p in points])
    return pts, moments.result(), float(in_norm) / (S * T) if in_norm > 0 else float("nan")


def extract(series: Series, spec: ActivationSpec, workdir: Path, progress: bool = True) -> Features:
    """Forward the probe batch through every checkpoint; keep each block's outputs at the tracked tokens.

    Returns ``Features`` whose store holds (L, N, D) per key frame (N tokens, D hidden units) and whose
    ``stats`` hold the ``act_*`` arrays of :class:`ActivationStats`.
    """
    device = resolve_device(spec.device)
    first = series.checkpoints[0]
    model = build_model(spec, first, device)
    blocks, modules = find_blocks(model, spec.blocks_regex)
    ids_np = probe_ids(spec, model_folder(first), model_context(model), embedding_rows(model))
    n = min(spec.points, ids_np.size)
    picks = np.sort(np.random.default_rng(spec.seed).choice(ids_np.size, n, replace=False))
    ids = torch.as_tensor(ids_np, device=device)
    loader = WeightLoader(model)
    store = FeatureStore(workdir)
    per_step, in_norms = [], []
    with torch.inference_mode():
        for ckpt in tqdm(series.checkpoints, desc="activations", unit="ckpt", disable=not progress):
            with open_checkpoint(ckpt.path, ckpt.format) as reader:
                loader.load(reader, ckpt.path)
            try:
                pts, stats, in_norm = run_probe(model, modules, ids, picks, spec.batch_size, spec.near_zero)
            except (RuntimeError, IndexError) as e:  # shape errors, CUDA out of memory: the user can act on them
                raise CheckpointError(
                    f"{ckpt.path}: the forward pass on the probe failed ({type(e).__name__}: {str(e).splitlines()[0]}); "
                    f"check --model and --probe/--seq-len, or lower --batch-size {spec.batch_size}") from e
            store.append(pts)
            per_step.append(stats)
            in_norms.append(in_norm)
    act = ActivationStats.stack(series.steps, blocks, per_step, in_norms, spec.near_zero)
    return Features(
        steps=np.asarray(series.steps, np.int64),
        blocks=np.asarray(blocks, np.int64),
        point_ids=np.tile(picks.astype(np.int64), (len(blocks), 1)),
        name=f"block outputs ({n} probe tokens of {ids_np.shape[0]}x{ids_np.shape[1]})",
        store=store,
        stats=act.arrays(),
        subject=Subject("block outputs", "activations", n, ids_np.size, "probe tokens"),
    )
