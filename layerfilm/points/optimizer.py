"""What the optimizer saw: Adam's moments saved beside the weights, per block and per checkpoint.

Where the state is (read with ``torch.load(weights_only=True, mmap=True)``: never code, tensors stay on disk
until read):

  a Hugging Face Trainer folder  ``checkpoint-N/optimizer.pt`` (absent when saved with ``save_only_model``)
  a Lightning ``.ckpt``          its ``optimizer_states[0]``
  nanoGPT / a plain training dict ``{"model": ..., "optimizer": ...}`` (or ``optimizer_state_dict``)

Sharded states (DeepSpeed ZeRO ``*_optim_states.pt``, torch DCP ``optimizer_0/``) are not read: one line.

An optimizer state names its parameters by integers, numbered group after group. Which parameter each
integer is comes from a rule of how the groups were made, applied to the model's parameters in
``named_parameters`` order (a torch pickle's state dict keeps that order, tied tensors once; a Trainer
folder's model is built from its ``config.json`` on the meta device with transformers, no code from the
folder): the names a state carries (``param_names``), every group in order (one ``AdamW(model.parameters())``),
the Trainer's decay / no-decay groups, nanoGPT's matrices / the rest. A rule counts only when every
state's moments have its parameter's shape; rules that fit but disagree are ambiguous; both are one line
and no numbers, never a guess.

Measures of a block, over its 2-D weight matrices (u = m̂ / (√v̂ + ε), m̂ = m / (1 - β1^t), v̂ = v / (1 - β2^t),
t the state's own step, lr and ε its group's):

  update_ratio  lr · ‖u‖_F / ‖W‖_F   (the size of the next Adam step against the weights; ~1e-3 is healthy)
  grad_rms      √(mean v̂)           (the RMS gradient over the matrices' entries)
  m_norm        ‖m̂‖_F               (the first moment's norm)
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from layerfilm.errors import CheckpointError, LayerfilmError
from layerfilm.io.blocks import strip_prefixes
from layerfilm.io.formats import open_checkpoint
from layerfilm.io.formats.torch_format import find_state_dict, load_pickle, to_float32
from layerfilm.io.scan import Checkpoint, Series
from layerfilm.io.storage import AnyPath, is_remote

HEALTHY = (1e-4, 1e-2)  # update ratios outside this range are flagged (Karpathy's rule of thumb, ~1e-3)
SPIKE = 10.0  # a ratio this many times its running median is a spike
OPTIMIZER_FILES = ("optimizer.pt", "optimizer.bin")
STATE_KEYS = ("optimizer", "optimizer_state_dict", "optimizer_states")
# state-dict entries that are buffers, never parameters (dropped when the counts say buffers are there)
_BUFFERS = re.compile(r"(?:^|\.)(?:running_mean|running_var|num_batches_tracked|masked_bias|inv_freq|position_ids)$")
# the Trainer's no-decay names (transformers.Trainer.get_decay_parameter_names), for state dicts without modules
_NO_DECAY = [re.compile(p) for p in (r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)")]
NO_STATE = "no optimizer state"
PICKLE_FORMATS = ("torch", "lightning")  # file formats that may hold a training dict
WEIGHTS_ONLY = "holds weights only"  # a format that never holds optimizer state: a note, not a warning


class OptimizerStateError(CheckpointError):
    """An optimizer state that cannot be read or mapped to the model's parameters (one line, no numbers)."""


@dataclass(frozen=True)
class Param:
    """One parameter of the model, in ``named_parameters`` order."""

    name: str  # the checkpoint's tensor name (prefixes stripped, as layerfilm.io.formats.open_checkpoint names it)
    shape: tuple[int, ...]
    decay: bool  # in the Trainer's weight-decay group


# ---------------------------------------------------------------- finding and loading the state


def state_file(ckpt: Checkpoint) -> AnyPath:
    """The file holding ``ckpt``'s optimizer state, or OptimizerStateError saying why there is none."""
    path = ckpt.path
    if not path.is_dir():
        if ckpt.format not in PICKLE_FORMATS:
            raise OptimizerStateError(f"{path}: {NO_STATE} (a {ckpt.format} file {WEIGHTS_ONLY})")
        return path  # a training dict holds it beside the model, if at all
    for name in OPTIMIZER_FILES:
        if (path / name).is_file():
            return path / name
    names = [p.name for p in path.iterdir()]
    if any(n.endswith("_optim_states.pt") for n in names) or any(
            n.startswith("global_step") or n.startswith("optimizer_") for n in names):
        raise OptimizerStateError(f"{path}: sharded optimizer state (DeepSpeed ZeRO or torch DCP) is not supported")
    raise OptimizerStateError(f"{path}: {NO_STATE} (no optimizer.pt: saved with save_only_model?)")


def load_state(ckpt: Checkpoint) -> tuple[dict, Any]:
    """(optimizer state dict, the loaded pickle it came from). Refused without running anything."""
    path = state_file(ckpt)
    if is_remote(path):
        raise OptimizerStateError(f"{path}: optimizer state over a URL is not supported (a pickle is read whole)")
    obj, _ = load_pickle(path)
    if path.name in OPTIMIZER_FILES:
        state = obj
    else:
        state = next((obj[k] for k in STATE_KEYS if isinstance(obj, dict) and k in obj), None)
        if isinstance(state, list):  # Lightning: one per optimizer
            if len(state) != 1:
                raise OptimizerStateError(f"{path}: {len(state)} optimizers; layerfilm reads a run with one")
            state = state[0]
        if state is None:
            raise OptimizerStateError(f"{path}: {NO_STATE} in it")
    if not (isinstance(state, dict) and isinstance(state.get("state"), dict)
            and isinstance(state.get("param_groups"), list)):
        raise OptimizerStateError(f"{path}: not a torch optimizer state (no state and param_groups)")
    if not state["state"]:
        raise OptimizerStateError(f"{path}: the optimizer state is empty (no step taken yet)")
    return state, obj


# ---------------------------------------------------------------- the model's parameters in order


def pickle_params(obj: Any, path: AnyPath) -> list[Param]:
    """The parameters of a training dict's model in state-dict order (= ``named_parameters`` order):
    tied tensors (one storage) once, integer tensors and known buffers left out."""
    tensors, _ = find_state_dict(obj, path)
    clean = {raw: name for name, raw in strip_prefixes(list(tensors)).items()}
    seen, out = set(), []
    for raw, t in tensors.items():
        storage = t.untyped_storage()
        key = (storage.data_ptr(), storage.nbytes(), t.storage_offset(), tuple(t.shape), tuple(t.stride()))
        if key in seen and storage.nbytes() or not t.is_floating_point():
            continue
        seen.add(key)
        name = clean[raw]
        out.append(Param(name, tuple(t.shape), not any(p.search(name.lower()) for p in _NO_DECAY)))
    return out


def trainer_params(folder: Path, ckpt: Checkpoint) -> list[Param]:
    """The parameters of a Trainer folder's model, built from its ``config.json`` by transformers on the
    meta device (no memory, no code from the folder), with the Trainer's own decay rule."""
    config = folder / "config.json"
    if not config.is_file():
        raise OptimizerStateError(f"{folder}: no config.json to learn the parameters' order from")
    try:
        import torch
        import transformers as tf
    except ImportError:
        raise OptimizerStateError(f"{folder}: mapping optimizer.pt needs transformers: pip install 'layerfilm[hf]'") from None
    from layerfilm.points.activations.configs import read_config

    read_config(config)  # untrusted: bounded, no remote code
    verbosity = tf.logging.get_verbosity()
    tf.logging.set_verbosity_error()  # its notes on the config's values are not ours to print
    try:
        return _build_params(tf, torch, folder, config, ckpt)
    finally:
        tf.logging.set_verbosity(verbosity)


def _build_params(tf: Any, torch: Any, folder: Path, config: Path, ckpt: Checkpoint) -> list[Param]:
    from layerfilm.points.activations.model import check_against_header

    try:
        hf_config = tf.AutoConfig.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    except Exception as e:  # transformers raises many types for a file it cannot use
        raise OptimizerStateError(f"{config}: transformers cannot read it ({str(e).splitlines()[0][:120]})") from None

    def make() -> torch.nn.Module:
        return tf.AutoModelForCausalLM.from_config(hf_config, trust_remote_code=False)

    with open_checkpoint(ckpt.path, ckpt.format) as reader:
        header = {k: reader.shape(k) for k in reader.reader.keys()}
        raw_to_clean = {raw: name for name, raw in strip_prefixes(reader.reader.keys()).items()}
    try:
        check_against_header(make, config, ckpt.path, header)  # a wrong or hostile config stops here
        with torch.device("meta"):
            model = make()
    except LayerfilmError as e:
        raise OptimizerStateError(str(e)) from None
    except Exception as e:
        raise OptimizerStateError(f"{config}: transformers cannot build it ({str(e).splitlines()[0][:120]})") from None
    decay = set(tf.Trainer.get_decay_parameter_names(None, model))
    return [Param(raw_to_clean.get(n, n), tuple(p.shape), n in decay) for n, p in model.named_parameters()]


# ---------------------------------------------------------------- which integer is which parameter


def _rules(params: list[Param], groups: list[dict]) -> dict[str, list[list[Param]]]:
    """Each way the groups may have been made: the parameters of each group, in order."""
    sizes = [len(g["params"]) for g in groups]
    ordered, cuts = [], np.cumsum([0, *sizes])
    if sum(sizes) == len(params):
        ordered = [params[a:b] for a, b in zip(cuts[:-1], cuts[1:])]
    rules = {"in order": ordered,
             "decay / no decay (transformers.Trainer)": [[p for p in params if p.decay], [p for p in params if not p.decay]],
             "matrices / the rest (nanoGPT)": [[p for p in params if len(p.shape) >= 2],
                                               [p for p in params if len(p.shape) < 2]]}
    by_name = {p.name: p for p in params}
    names: list[list[str]] = [g["param_names"] for g in groups if isinstance(g.get("param_names"), list)]
    if names and len(names) == len(groups):
        clean = {raw: c for c, raw in strip_prefixes([n for ns in names for n in ns]).items()}
        rules = {"names in the state": [[by_name.get(clean[n], Param(n, (), False)) for n in ns] for ns in names]}
    return rules


def _fits(rule: list[list[Param]], groups: list[dict], state: dict) -> bool:
    """Every group has the rule's number of parameters and every saved moment has its parameter's shape."""
    if len(rule) != len(groups) or any(len(r) != len(g["params"]) for r, g in zip(rule, groups)):
        return False
    for members, g in zip(rule, groups):
        for p, i in zip(members, g["params"]):
            m = state.get(i, {}).get("exp_avg") if isinstance(state.get(i), dict) else None
            if m is not None and tuple(m.shape) != p.shape:
                return False
    return True


def map_params(params: list[Param], opt: dict, where: AnyPath) -> dict[str, tuple[Any, dict]]:
    """Parameter name -> (its state: exp_avg, exp_avg_sq, step; its group), proved by shapes.

    Raises OptimizerStateError when no rule fits (another model's state, another grouping) or when
    rules that fit disagree (ambiguous): never a guess."""
    groups, state = opt["param_groups"], opt["state"]
    if any(not isinstance(g, dict) or not isinstance(g.get("params"), list) for g in groups):
        raise OptimizerStateError(f"{where}: param_groups without params lists")
    if not params:
        raise OptimizerStateError(f"{where}: no parameters to map the optimizer state to")
    kept = [p for p in params if not _BUFFERS.search(p.name)]
    fitting: dict[str, dict[int, Param]] = {}
    for candidates in (params, kept) if len(kept) != len(params) else (params,):
        for rule, members in _rules(candidates, groups).items():
            if _fits(members, groups, state):
                fitting.setdefault(rule, {i: p for ms, g in zip(members, groups) for p, i in zip(ms, g["params"])})
    if not fitting:
        held = "+".join(str(len(g["params"])) for g in groups)
        raise OptimizerStateError(f"{where}: the optimizer state ({held} tensors in {len(groups)} group(s)) does not "
                                  f"match the model's {len(params)} parameters by shape; no update ratios")
    answers = {tuple(sorted((i, p.name) for i, p in m.items())) for m in fitting.values()}
    if len(answers) > 1:
        raise OptimizerStateError(f"{where}: which optimizer tensor is which parameter is ambiguous (rules that fit: "
                                  f"{', '.join(fitting)}); no update ratios")
    group_of = {i: g for g in groups for i in g["params"]}
    mapping = next(iter(fitting.values()))
    return {p.name: (state.get(i), group_of[i]) for i, p in mapping.items()}


# ---------------------------------------------------------------- measures


def adam_direction(s: dict, group: dict, where: AnyPath, name: str,
                   rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """(m̂, √v̂ + ε as float64, lr) of one parameter's Adam state, bias-corrected by the state's own step;
    ``rows``: only those rows (only their bytes are read from a memory-mapped state)."""
    if not isinstance(s, dict) or "exp_avg" not in s or "exp_avg_sq" not in s:
        raise OptimizerStateError(f"{where}: no Adam moments (exp_avg, exp_avg_sq) for {name}")
    try:
        step = float(s["step"])
        lr, eps = float(group["lr"]), float(group["eps"])
        b1, b2 = (float(b) for b in group["betas"])
    except (KeyError, TypeError, ValueError):
        raise OptimizerStateError(f"{where}: no step, lr, eps or betas for {name}") from None
    if not step >= 1 or not (math.isfinite(lr) and math.isfinite(eps)):
        raise OptimizerStateError(f"{where}: step {step:g}, lr {lr:g}, eps {eps:g} of {name} cannot be used")
    m, v = s["exp_avg"], s["max_exp_avg_sq"] if group.get("amsgrad") and "max_exp_avg_sq" in s else s["exp_avg_sq"]
    if rows is not None:
        import torch

        at = torch.from_numpy(np.asarray(rows, np.int64))
        m, v = m[at], v[at]
    m64 = to_float32(m).astype(np.float64) / (1 - b1 ** step)
    denom = np.sqrt(to_float32(v).astype(np.float64)) / math.sqrt(1 - b2 ** step) + eps
    return m64, denom, lr


@dataclass(frozen=True)
class OptimizerSums:
    """Per checkpoint and block, the sums the measures come from; NaN where a checkpoint has no state.

    update_sq: Σ over the block's matrices of (lr · ‖u‖_F)²; v_sum: Σ v̂; count: entries; m_sq: Σ ‖m̂‖²."""

    steps: np.ndarray  # (T,)
    update_sq: np.ndarray  # (T, L)
    v_sum: np.ndarray  # (T, L)
    count: np.ndarray  # (L,)
    m_sq: np.ndarray  # (T, L)
    notes: tuple[str, ...] = ()  # one line per reason some checkpoint has no numbers

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"steps": self.steps, "update_sq": self.update_sq, "v_sum": self.v_sum, "count": self.count,
                "m_sq": self.m_sq, "notes": np.asarray(self.notes, dtype=str)}

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray]) -> OptimizerSums:
        return cls(a["steps"], a["update_sq"], a["v_sum"], a["count"], a["m_sq"], tuple(str(n) for n in a["notes"]))


def matrices(series: Series, blocks: Sequence[int], names: dict[int, dict[str, str]]) -> list[list[str]]:
    """Each block's 2-D weight matrices (the tensor names), from the first checkpoint's header."""
    first = series.checkpoints[0]
    with open_checkpoint(first.path, first.format) as reader:
        return [[n for n in names[b].values() if len(reader.shape(n)) == 2] for b in blocks]


def mapped_state(ckpt: Checkpoint, params_cache: dict[str, list[Param]] | None = None
                 ) -> tuple[dict[str, tuple[Any, dict]], AnyPath]:
    """``ckpt``'s optimizer state by parameter name (:func:`map_params`) and the file it is in."""
    opt, obj = load_state(ckpt)
    cache = {} if params_cache is None else params_cache
    if isinstance(ckpt.path, Path) and ckpt.path.is_dir():  # (a URL was refused by load_state)
        key = _config_key(ckpt.path / "config.json")  # one model built per distinct config, not per checkpoint
        if key not in cache:
            cache[key] = trainer_params(ckpt.path, ckpt)
        params = cache[key]
    else:
        params = pickle_params(obj, ckpt.path)
    where = state_file(ckpt)
    return map_params(params, opt, where), where


def _config_key(path: Path) -> str:
    """A Trainer folder's model as its config says it (read bounded, as untrusted), for the cache of built models."""
    from layerfilm.points.activations.configs import read_config

    if not path.is_file():
        return str(path)  # trainer_params says why in one line
    return json.dumps(read_config(path), sort_keys=True)


def checkpoint_sums(ckpt: Checkpoint, block_matrices: list[list[str]],
                    params_cache: dict[str, list[Param]]) -> np.ndarray:
    """(4, L): update_sq, v_sum, count, m_sq of each block at ``ckpt``; OptimizerStateError when it has none.
    Each moment is read once."""
    mapped, where = mapped_state(ckpt, params_cache)
    out = np.zeros((4, len(block_matrices)))
    for l, block in enumerate(block_matrices):
        for name in block:
            if name not in mapped:
                raise OptimizerStateError(f"{where}: no optimizer state for {name}")
            s, group = mapped[name]
            m, denom, lr = adam_direction(s, group, where, name)
            u = m / denom
            out[0, l] += lr * lr * float(np.vdot(u, u))
            out[1, l] += float(((denom - float(group["eps"])) ** 2).sum())
            out[2, l] += m.size
            out[3, l] += float(np.vdot(m, m))
    return out


def optimizer_sums(series: Series, blocks: Sequence[int], names: dict[int, dict[str, str]],
                   warn: bool = True) -> OptimizerSums:
    """The sums of every checkpoint of ``series``; a checkpoint without a usable state gets NaN, and each
    distinct reason is one line (``notes``, and a warning)."""
    block_matrices = matrices(series, blocks, names)
    T, L = len(series), len(block_matrices)
    sums = np.full((4, T, L), np.nan)
    why: dict[str, list[Checkpoint]] = {}
    cache: dict[str, list[Param]] = {}
    for t, ckpt in enumerate(series.checkpoints):
        try:
            sums[:, t] = checkpoint_sums(ckpt, block_matrices, cache)
        except CheckpointError as e:
            why.setdefault(_reason(e, ckpt), []).append(ckpt)
    notes = _notes(series, why)
    if warn:  # a run of weight-only files (safetensors) is not a problem to warn about
        for n in notes:
            if WEIGHTS_ONLY not in n:
                warnings.warn(n, stacklevel=2)
    count = np.nan_to_num(sums[2]).max(axis=0)
    return OptimizerSums(np.asarray(series.steps, np.int64), sums[0], sums[1], count, sums[3], tuple(notes))


def missing_state(series: Series) -> str | None:
    """None when a checkpoint of ``series`` holds an optimizer state (loaded as :func:`load_state` loads
    it: memory-mapped, no moment read), else the one line why none does (e.g. "every checkpoint: no
    optimizer state (no optimizer.pt: saved with save_only_model?)"). A cheap look before the measures,
    which read every block whole."""
    why: dict[str, list[Checkpoint]] = {}
    for ckpt in series.checkpoints:
        try:
            load_state(ckpt)
            return None
        except CheckpointError as e:
            why.setdefault(_reason(e, ckpt), []).append(ckpt)
    return "; ".join(_notes(series, why)) or f"{series.root}: {NO_STATE} (no checkpoint)"


def _reason(e: CheckpointError, ckpt: Checkpoint) -> str:
    """The error's words without the checkpoint's path (:func:`_general`)."""
    text = str(e)
    return _general(text[len(str(ckpt.path)) + 2:] if text.startswith(str(ckpt.path) + ": ") else text, ckpt)


def _notes(series: Series, why: dict[str, list[Checkpoint]]) -> list[str]:
    """One line per distinct reason, saying which checkpoints it covers."""
    T = len(series)
    return [f"{series.root}: " + ("every checkpoint" if len(ckpts) == T else
                                  f"{len(ckpts)} of {T} checkpoints (first: {ckpts[0].path.name})") + f": {reason}"
            for reason, ckpts in why.items()]


def _general(reason: str, ckpt: Checkpoint) -> str:
    """A reason without the checkpoint's own file name, so that one line covers every checkpoint it fits."""
    return reason.replace(f"{ckpt.path}/", "").replace(str(ckpt.path), ckpt.path.name)


@dataclass(frozen=True)
class OptimizerMeasures:
    """The measures of layerfilm.points.optimizer per key frame and block (T, L), NaN where no state."""

    update_ratio: np.ndarray
    grad_rms: np.ndarray
    m_norm: np.ndarray
    notes: tuple[str, ...] = ()

    @classmethod
    def of(cls, sums: OptimizerSums, steps: np.ndarray, matrix_norm: np.ndarray) -> OptimizerMeasures:
        """At key frames ``steps`` (T,), from the sums and each block's ‖W‖_F over its matrices (T, L)."""
        at = {int(s): i for i, s in enumerate(sums.steps)}
        idx = np.array([at.get(int(s), -1) for s in steps])
        pick = lambda a: np.where((idx >= 0)[:, None], a[np.maximum(idx, 0)], np.nan)  # noqa: E731
        with np.errstate(divide="ignore", invalid="ignore"):
            return cls(np.sqrt(pick(sums.update_sq)) / matrix_norm, np.sqrt(pick(sums.v_sum) / sums.count),
                       np.sqrt(pick(sums.m_sq)), sums.notes)

    @property
    def any(self) -> bool:
        return bool(np.isfinite(self.update_ratio).any())

    def flags(self) -> list[str | None]:
        """Per block: "low" / "high" when the median update ratio over the key frames lies outside
        ``HEALTHY``, else None (no numbers: None)."""
        out: list[str | None] = []
        for l in range(self.update_ratio.shape[1]):
            r = self.update_ratio[:, l]
            r = r[np.isfinite(r)]
            med = float(np.median(r)) if len(r) else math.nan
            out.append("low" if med < HEALTHY[0] else "high" if med > HEALTHY[1] else None)
        return out

    def spikes(self) -> np.ndarray:
        """(T, L) bool: :func:`spikes` of the update ratio."""
        return spikes(self.update_ratio)

    def records(self, steps: np.ndarray) -> list[dict]:
        """Per block: ``update_ratio``, ``grad_rms``, ``m_norm`` (one value per key frame, null where no
        state), ``update_flag`` and ``update_spikes`` (the steps of the spikes)."""
        def series(a: np.ndarray) -> list[float | None]:
            return [float(v) if math.isfinite(v) else None for v in a]

        flags, spikes = self.flags(), self.spikes()
        return [{"update_ratio": series(self.update_ratio[:, l]), "grad_rms": series(self.grad_rms[:, l]),
                 "m_norm": series(self.m_norm[:, l]), "update_flag": flags[l],
                 "update_spikes": [int(s) for s in steps[spikes[:, l]]]} for l in range(self.update_ratio.shape[1])]


def spikes(ratio: np.ndarray) -> np.ndarray:
    """(T, L) bool: where a ratio (T, L) is at least ``SPIKE`` times the median of the block's earlier ratios
    (a run about to diverge takes far larger steps than before)."""
    out = np.zeros(ratio.shape, bool)
    for l in range(ratio.shape[1]):
        for t in range(1, ratio.shape[0]):
            before = ratio[:t, l][np.isfinite(ratio[:t, l])]
            if len(before) and np.isfinite(ratio[t, l]) and ratio[t, l] >= SPIKE * np.median(before) > 0:
                out[t, l] = True
    return out


def matrix_norm(param_norm: np.ndarray, components: Sequence[str], block_matrices: list[list[str]],
                names: dict[int, dict[str, str]], blocks: Sequence[int]) -> np.ndarray:
    """(T, L) ‖W‖_F over each block's matrices, from the per-tensor norms of the whole-block measures
    (layerfilm.stability: ``param_norm`` (T, L, C)), so the weights are not read a second time."""
    out = np.zeros(param_norm.shape[:2])
    for l, (b, mats) in enumerate(zip(blocks, block_matrices)):
        comps = [c for c, n in names[b].items() if n in mats]
        for c in comps:
            out[:, l] += param_norm[:, l, components.index(c)] ** 2
    return np.sqrt(out)


class UpdateReader:
    """A checkpoint's Adam update direction u = m̂/(√v̂+ε) per parameter, as a checkpoint reader
    (layerfilm.io.formats.Reader: keys, shape, dtype, get, rows), so that ``--features updates`` films its
    rows as a weights film films the weights' (layerfilm.points.weights.read_points)."""

    def __init__(self, ckpt: Checkpoint) -> None:
        self.ckpt = ckpt
        self.files: list[AnyPath] = []
        self.step: int | None = None
        self._state: dict[str, tuple[Any, dict]] = {}
        self._where: AnyPath = ckpt.path

    def __enter__(self) -> UpdateReader:
        self._state, self._where = mapped_state(self.ckpt)
        self.files = [self._where]
        return self

    def __exit__(self, *exc: object) -> None:
        self._state = {}

    def keys(self) -> list[str]:
        return [n for n, (s, _) in self._state.items() if isinstance(s, dict) and "exp_avg" in s]

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._state[name][0]["exp_avg"].shape)

    def dtype(self, name: str) -> str:
        return "F32"

    def get(self, name: str) -> np.ndarray:
        return self.rows(name, None)

    def rows(self, name: str, ids: np.ndarray | None, out: np.ndarray | None = None) -> np.ndarray:
        s, group = self._state[name]
        m, denom, _ = adam_direction(s, group, self._where, name, ids)
        if out is None:
            return (m / denom).astype(np.float32)
        np.divide(m, denom, out=out, casting="same_kind")
        return out


def read_updates(ckpt: Checkpoint, wp: Any, blocks: Sequence[int] | None = None) -> np.ndarray | CheckpointError:
    """(Lc, N, D) the tracked rows of Adam's update direction of ``blocks`` at ``ckpt`` (a
    layerfilm.points.weights.WeightPlan's), or why it has none (the checkpoint is then skipped)."""
    from layerfilm.points.weights import read_points

    try:
        with UpdateReader(ckpt) as reader:
            return read_points(reader, wp, state_file(ckpt), blocks)
    except CheckpointError as e:
        return e
