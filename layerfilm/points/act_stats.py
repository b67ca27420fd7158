"""Activation statistics per block and step: norms, mean, spread, dead units, histograms, growth with depth.

The questions come from the seeds: fastai's "colorful dimension" chart (a histogram of activations
per step, log-scaled counts: the HOT chart) and its "fraction near zero"; OLMo's "do activation norms
grow layer by layer, and by how much per block". Everything is measured on all tokens of the probe
batch (not only the filmed points), on the output hidden states of each block.

``Moments`` accumulates on the model's device while the forward pass runs (torch); the result,
``ActivationStats``, is plain NumPy and round-trips through ``arrays()`` / ``from_arrays()`` (the
``act_*`` arrays of ``--export-points``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from layerfilm.text import text_table

# Histogram bin edges, symmetric and log-spaced: 6 bins per decade from 1e-3 to 1e3 on each side,
# one bin for |a| < 1e-3, and one overflow bin at each end. Fixed for every block and step, so HOT
# charts of different blocks and runs share their axis whatever the activations' scale.
HIST_EDGES = np.concatenate([-np.geomspace(1e3, 1e-3, 37), np.geomspace(1e-3, 1e3, 37)])  # (74,)
N_BINS = len(HIST_EDGES) + 1  # (75,) bin i holds edges[i-1] <= a < edges[i]; 0 and 74 are overflow


class Moments:
    """Running sums for L blocks on one device; ``add(l, h)`` with hidden states h (..., D)."""

    def __init__(self, n_blocks: int, near_zero: float, device) -> None:
        import torch

        self.near_zero = near_zero
        self.edges = torch.as_tensor(HIST_EDGES, dtype=torch.float32, device=device)
        # per block: tokens, sum of token norms, elements, sum, sum of squares, elements with |a| < near_zero
        self.sums = torch.zeros(n_blocks, 6, dtype=torch.float64, device=device)
        self.hist = torch.zeros(n_blocks, N_BINS, dtype=torch.int64, device=device)

    def add(self, block: int, h) -> None:
        import torch

        x = h.detach().float().reshape(-1, h.shape[-1])  # (tokens, D)
        row = torch.stack([
            torch.tensor(float(x.shape[0]), device=x.device), x.norm(dim=1).sum(),
            torch.tensor(float(x.numel()), device=x.device), x.sum(), x.square().sum(),
            (x.abs() < self.near_zero).sum().float(),
        ])
        self.sums[block] += row.double()
        self.hist[block] += torch.bincount(torch.bucketize(x.ravel(), self.edges, right=True), minlength=N_BINS)

    def result(self) -> dict[str, np.ndarray]:
        """Per-block (L,) norm, mean, std, near_zero and (L, N_BINS) hist of everything added."""
        s = self.sums.cpu().numpy()
        mean = s[:, 3] / s[:, 2]
        return {
            "norm": s[:, 1] / s[:, 0],
            "mean": mean,
            "std": np.sqrt(np.maximum(s[:, 4] / s[:, 2] - mean**2, 0.0)),
            "near_zero": s[:, 5] / s[:, 2],
            "hist": self.hist.cpu().numpy(),
        }


@dataclass(frozen=True)
class ActivationStats:
    """Statistics of each block's output on the probe batch, at every key frame.

    steps: (T,) training steps;  blocks: (L,) block indices.
    norm: (T, L) mean L2 norm of a token's hidden state;  mean, std: (T, L) over all tokens and units.
    near_zero: (T, L) fraction of activations with |a| < threshold.
    input_norm: (T,) mean token norm entering the first block (NaN when it could not be captured).
    hist: (T, L, N_BINS) counts in the bins of ``HIST_EDGES`` (the HOT chart of block l is hist[:, l].T).
    """

    steps: np.ndarray
    blocks: np.ndarray
    norm: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    near_zero: np.ndarray
    input_norm: np.ndarray
    hist: np.ndarray
    threshold: float

    def __post_init__(self) -> None:
        T, L = len(self.steps), len(self.blocks)
        for name in ("norm", "mean", "std", "near_zero"):
            if getattr(self, name).shape != (T, L):
                raise ValueError(f"ActivationStats.{name} has shape {getattr(self, name).shape}, expected {(T, L)}")
        if self.hist.shape != (T, L, N_BINS) or self.input_norm.shape != (T,):
            raise ValueError(f"ActivationStats: hist {self.hist.shape} / input_norm {self.input_norm.shape} "
                             f"do not match T={T}, L={L}")

    @property
    def growth(self) -> np.ndarray:
        """(T, L) factor by which each block multiplies the mean token norm: norm[l] / norm[l-1]
        (block 0: relative to the input of the first block)."""
        prev = np.concatenate([self.input_norm[:, None], self.norm[:, :-1]], axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            return self.norm / prev

    @property
    def growth_per_block(self) -> np.ndarray:
        """(T,) geometric-mean growth of the norm per block, from the first block's output to the last's:
        (norm[L-1] / norm[0]) ** (1 / (L-1)). 1.0 = flat with depth; sqrt(2) = the OLMo thread's estimate."""
        if self.norm.shape[1] < 2:
            return np.ones(len(self.steps))
        return (self.norm[:, -1] / self.norm[:, 0]) ** (1.0 / (self.norm.shape[1] - 1))

    def arrays(self) -> dict[str, np.ndarray]:
        """Flat ``act_*`` arrays (for ``.npz`` export and ``Features.stats``)."""
        return {
            "act_norm": self.norm, "act_mean": self.mean, "act_std": self.std, "act_near_zero": self.near_zero,
            "act_input_norm": self.input_norm, "act_hist": self.hist, "act_hist_edges": HIST_EDGES,
            "act_growth": self.growth, "act_threshold": np.float64(self.threshold),
        }

    @classmethod
    def from_arrays(cls, steps: np.ndarray, blocks: np.ndarray, arrays: dict[str, np.ndarray]) -> ActivationStats:
        def a(k: str) -> np.ndarray:
            return np.asarray(arrays[f"act_{k}"])

        return cls(np.asarray(steps), np.asarray(blocks), a("norm"), a("mean"), a("std"), a("near_zero"), a("input_norm"),
                   a("hist"), float(arrays["act_threshold"]))

    @classmethod
    def stack(cls, steps, blocks, per_step: list[dict[str, np.ndarray]], input_norm: list[float],
              threshold: float) -> ActivationStats:
        """From one ``Moments.result()`` per key frame."""
        def s(k: str) -> np.ndarray:
            return np.stack([r[k] for r in per_step])

        return cls(np.asarray(steps), np.asarray(blocks), s("norm"), s("mean"), s("std"), s("near_zero"),
                   np.asarray(input_norm, np.float64), s("hist"), threshold)

    def table_rows(self, t: int = -1) -> tuple[list[str], list[list[str]]]:
        """Header and rows (one per block) of key frame ``t`` (default the last), as text."""
        head = ["block", "norm", "growth", "mean", "std", f"|a|<{self.threshold:g}"]
        rows = [[str(int(b)), f"{self.norm[t, l]:.4g}", f"{self.growth[t, l]:.3f}", f"{self.mean[t, l]:.3g}",
                 f"{self.std[t, l]:.4g}", f"{self.near_zero[t, l]:.1%}"] for l, b in enumerate(self.blocks)]
        return head, rows

    def headline(self, t: int = -1) -> str:
        return f"activations at step {int(self.steps[t]):,}: norm growth {self.growth_per_block[t]:.3f}x per block"

    def table(self, t: int = -1) -> str:
        """A text table of key frame ``t`` (default the last): one row per block."""
        return self.headline(t) + "\n" + text_table(*self.table_rows(t))

    def over_time(self) -> str:
        """Text tables of every measure over training: one row per key frame, one column per block."""
        measures = [("mean token norm (last column: growth per block, geometric mean)", self.norm, ".4g"),
                    ("growth of the norm: block l / block l-1 (block 0: / its input)", self.growth, ".3f"),
                    ("mean", self.mean, ".3g"), ("std", self.std, ".4g"),
                    (f"fraction near zero (|a| < {self.threshold:g})", self.near_zero, ".1%")]
        out = []
        for title, values, fmt in measures:
            head = ["step", *(f"L{int(b)}" for b in self.blocks)] + (["per block"] if values is self.norm else [])
            rows = [[f"{int(s):,}", *(format(v, fmt) for v in values[t])]
                    + ([f"{self.growth_per_block[t]:.3f}x"] if values is self.norm else [])
                    for t, s in enumerate(self.steps)]
            out += [f"activations: {title}", text_table(head, rows), ""]
        return "\n".join(out + [self.table()])

    def records(self) -> list[dict]:
        """One JSON-ready dict per block (in ``blocks`` order) of ``act_*`` series over the key frames;
        the block-independent ones (threshold, input norm, growth per block, histogram edges) in each."""
        shared = {"act_threshold": self.threshold, "act_input_norm": json_series(self.input_norm),
                  "act_growth_per_block": json_series(self.growth_per_block), "act_hist_edges": HIST_EDGES.tolist()}
        return [{"act_norm": json_series(self.norm[:, l]), "act_mean": json_series(self.mean[:, l]),
                 "act_std": json_series(self.std[:, l]), "act_near_zero": json_series(self.near_zero[:, l]),
                 "act_growth": json_series(self.growth[:, l]), "act_hist": self.hist[:, l].tolist(), **shared}
                for l in range(len(self.blocks))]

    def hot(self, block: int) -> np.ndarray:
        """(N_BINS, T) log(1 + count) of block index ``block`` (position in ``blocks``): the HOT chart,
        value bins bottom (most negative) to top, time left to right."""
        return np.log1p(self.hist[:, block, :].T.astype(np.float64))


def json_series(x: np.ndarray) -> list[float | None]:
    """JSON-ready floats, NaN and infinities as None."""
    return [float(v) if np.isfinite(v) else None for v in np.asarray(x, np.float64)]
