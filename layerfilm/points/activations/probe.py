"""The probe batch (the same token ids at every checkpoint) and the forward pass that turns it into
each block's points and statistics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from layerfilm.errors import CheckpointError, OptionsError
from layerfilm.points.act_stats import Moments
from layerfilm.points.activations.configs import read_tokenizer_config, said
from layerfilm.points.activations.hooks import Stop, capture
from layerfilm.points.activations.model import transformers_module
from layerfilm.points.activations.spec import DEFAULT_PROBE, TOKENIZER_FILES, ActivationSpec, check_model_files

MAX_DEFAULT_SEQ = 128  # default tokens per probe sequence (or the model's context, if shorter)


def tokenize(text: str, folder: Path) -> np.ndarray:
    """Token ids of ``text``: the checkpoint's own tokenizer when its files are present (never code from
    its folder), else UTF-8 bytes."""
    check_model_files(folder)
    if not any((folder / f).is_file() for f in TOKENIZER_FILES):
        return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int64)
    read_tokenizer_config(folder)  # bounded JSON, no code from the folder: before transformers reads it
    tf = transformers_module()
    try:
        tok = tf.AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    except Exception as e:  # transformers and tokenizers raise many types for files they cannot use
        raise CheckpointError(f"{folder}: cannot load its tokenizer ({said(e)})") from None
    return np.asarray(tok(text, add_special_tokens=False)["input_ids"], np.int64)


def probe_ids(spec: ActivationSpec, folder: Path, context: int | None, vocab: int | None) -> np.ndarray:
    """(S, T) int64 token ids of the probe batch."""
    path = Path(spec.probe) if spec.probe is not None else DEFAULT_PROBE
    name = f"probe={path}" if spec.probe is not None else f"the default probe ({path.name})"
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
                           f"(use seq_len={context} or less)")
    if ids.min() < 0 or (vocab is not None and ids.max() >= vocab):
        raise OptionsError(f"{name}: token ids {ids.min()}..{ids.max()} fall outside the model's vocabulary of {vocab}")
    return ids


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
            points[l].append(h.reshape(-1, h.shape[-1])[local])  # a copy, in the model's dtype

        def on_input(h: torch.Tensor) -> None:
            nonlocal in_norm
            in_norm += h.float().norm(dim=-1).sum().double()

        with capture(blocks, on_output, on_input):
            try:
                model(input_ids=ids[r0:r1], use_cache=False) if is_hf else model(ids[r0:r1])
            except Stop:
                pass
    # one copy to the host at the end (not one per block and batch: each would wait for the device)
    pts = torch.stack([torch.cat(p) for p in points]).cpu().float().numpy()
    return pts, moments.result(), float(in_norm) / (S * T) if in_norm > 0 else float("nan")
