"""Activation statistics on an exact construction: blocks that multiply the residual stream by a gain.

Block l's output is E[ids] * g_0 * ... * g_l, so every statistic (norm, mean, std, fraction near zero,
histogram, growth with depth) is known by construction and computed here independently with NumPy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from safetensors.torch import save_file

from layerfilm.io.scan import scan
from layerfilm.points.act_stats import HIST_EDGES, N_BINS, ActivationStats, Moments
from layerfilm.points.activations import ActivationSpec, extract
from layerfilm.points.activations.hooks import capture

VOCAB, DIM = 16, 4
EMBED = np.stack([(v - 7.5) / 100 * np.array([1.0, 3.0, -7.0, 40.0]) for v in range(VOCAB)]).astype(np.float32)
GAINS = {0: [1.3, 1.7, 0.6], 100: [0.9, 2.3, 1.1], 250: [1.9, 0.7, 3.1]}  # step -> gain of blocks 0, 1, 2
IDS = (np.arange(5 * 6).reshape(5, 6) * 7) % VOCAB  # probe: 5 sequences of 6 tokens


class Gain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gain


class GainNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, DIM)
        self.blocks = nn.ModuleList(Gain() for _ in range(3))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        for block in self.blocks:
            x = block(x)
        return x


def make_gain_net() -> GainNet:  # the --model factory (no arguments)
    return GainNet()


@pytest.fixture(scope="module")
def gain_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gain_run")
    for step, gains in GAINS.items():
        state = {"embed.weight": torch.from_numpy(EMBED)}
        state.update({f"blocks.{l}.gain": torch.tensor([g], dtype=torch.float32) for l, g in enumerate(gains)})
        save_file(state, str(out / f"step_{step}.safetensors"))
    np.save(out.parent / "gain_ids.npy", IDS)
    return out


def expected(step: int) -> np.ndarray:
    """(L, S*T, D) block outputs by construction."""
    x = EMBED[IDS.ravel()].astype(np.float64)
    return np.stack([x * g for g in np.cumprod(GAINS[step])])


def test_statistics_known_by_construction(gain_run):
    spec = ActivationSpec(model=f"{__file__}:make_gain_net", probe=gain_run.parent / "gain_ids.npy", points=12,
                          batch_size=2, device="cpu", near_zero=0.05)
    f = extract(scan(gain_run), spec, gain_run.parent / "store", progress=False)
    st = ActivationStats.from_arrays(f.steps, f.blocks, f.stats)
    assert list(st.steps) == [0, 100, 250] and list(st.blocks) == [0, 1, 2] and st.threshold == 0.05
    edges = np.concatenate([HIST_EDGES, [0.05, -0.05]])
    for t, step in enumerate(GAINS):
        x = expected(step)  # (L, tokens, D)
        # no value sits on a bin edge or the threshold, so float32 rounding cannot move a count
        assert np.abs(np.abs(x.ravel()[:, None]) / np.abs(edges) - 1).min() > 1e-5
        np.testing.assert_allclose(st.norm[t], np.linalg.norm(x, axis=2).mean(axis=1), rtol=1e-5)
        np.testing.assert_allclose(st.mean[t], x.mean(axis=(1, 2)), rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(st.std[t], x.std(axis=(1, 2)), rtol=1e-4)
        np.testing.assert_array_equal(st.near_zero[t], (np.abs(x) < 0.05).mean(axis=(1, 2)))
        hist = [np.bincount(np.searchsorted(HIST_EDGES, xl.ravel(), side="right"), minlength=N_BINS) for xl in x]
        np.testing.assert_array_equal(st.hist[t], np.stack(hist))
        # growth with depth is the gain of each block (block 0 against the embedding it receives)
        np.testing.assert_allclose(st.input_norm[t], np.linalg.norm(EMBED[IDS.ravel()], axis=1).mean(), rtol=1e-5)
        np.testing.assert_allclose(st.growth[t], GAINS[step], rtol=1e-5)
        np.testing.assert_allclose(st.growth_per_block[t], np.sqrt(GAINS[step][1] * GAINS[step][2]), rtol=1e-5)
        # the filmed points are the block outputs at the chosen tokens
        np.testing.assert_allclose(f.store[t], x[:, f.point_ids[0]], rtol=1e-5, atol=1e-8)
    assert 0 < st.near_zero.min() < st.near_zero.max() < 1  # the construction exercises the threshold


def test_round_trip_table_and_hot_chart(gain_run):
    spec = ActivationSpec(model=f"{__file__}:make_gain_net", probe=gain_run.parent / "gain_ids.npy", device="cpu")
    f = extract(scan(gain_run), spec, gain_run.parent / "store2", progress=False)
    st = ActivationStats.from_arrays(f.steps, f.blocks, f.stats)
    again = ActivationStats.from_arrays(st.steps, st.blocks, st.arrays())
    for name in ("norm", "mean", "std", "near_zero", "input_norm", "hist"):
        np.testing.assert_array_equal(getattr(again, name), getattr(st, name))
    lines = st.table().splitlines()
    assert lines[0] == f"activations at step 250: norm growth {np.sqrt(0.7 * 3.1):.3f}x per block"
    assert len(lines) == 2 + 3 and lines[2].split()[0] == "0" and lines[4].split()[2] == "3.100"
    hot = st.hot(1)
    assert hot.shape == (N_BINS, 3) and np.allclose(np.expm1(hot).sum(axis=0), IDS.size * DIM)


def test_moments_do_not_depend_on_batching():
    x = torch.randn(6, 5, 8, generator=torch.Generator().manual_seed(0)) * 3
    whole, parts = Moments(1, 0.1, "cpu"), Moments(1, 0.1, "cpu")
    whole.add(0, x)
    for chunk in x.split(2):
        parts.add(0, chunk)
    a, b = whole.result(), parts.result()
    for k in ("norm", "mean", "std", "near_zero"):
        np.testing.assert_allclose(a[k], b[k], rtol=1e-6)
    np.testing.assert_array_equal(a["hist"], b["hist"])
    assert a["hist"].sum() == x.numel()


def test_shapes_are_checked():
    z = np.zeros((2, 3))
    with pytest.raises(ValueError, match=r"ActivationStats.std has shape \(2, 2\), expected \(2, 3\)"):
        ActivationStats(np.arange(2), np.arange(3), z, z, np.zeros((2, 2)), z, np.zeros(2), np.zeros((2, 3, N_BINS)), 0.05)


def test_hooks_are_removed_even_when_the_forward_fails():
    net = GainNet()
    seen = []
    with pytest.raises(RuntimeError, match="boom"):
        with capture(list(net.blocks), lambda l, h: seen.append(l), lambda h: seen.append("in")):
            raise RuntimeError("boom")
    assert all(not b._forward_hooks and not b._forward_pre_hooks for b in net.blocks)
    with capture(list(net.blocks), lambda l, h: seen.append(l), lambda h: seen.append("in")):
        try:
            net(torch.zeros(1, 2, dtype=torch.long))
        except Exception as e:  # the last block's hook ends the pass
            assert type(e).__name__ == "Stop"  # layerfilm.points.activations.hooks.Stop
    assert seen == ["in", 0, 1, 2]
