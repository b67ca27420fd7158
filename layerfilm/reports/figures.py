"""Publication figures (matplotlib ``Figure`` objects, no pyplot state) of a ``Stability`` and of
``ActivationStats``.

  heatmap_figure   blocks x steps of the relative update, log colour scale, settling steps marked
  settling_figure  each block's distance to the final checkpoint over training, with the threshold
  hot_figure       histograms over time per block (value bins up, steps across, colour log(1 + count))
  norm_figure      the norm of every tensor of every block over training
  stills_figure    rendered frames side by side
  image_figure     one rendered picture (a still) at its own size
  activation_hot_figure        activation histograms over time per block (symmetric log value axis)
  activation_norm_figure       mean token norm against depth at every step; growth per block over training
  activation_near_zero_figure  fraction of activations near zero over training, per block
  divergence_figure     several runs: blocks (ranked) x common steps of a run's divergence from the base
  runs_settling_figure  several runs: each run's settling curves, side by side
  runs_norm_figure      several runs: each block's weight norm over training, a line per run

``save_figure`` writes PNG, SVG or PDF by the file's extension, atomically.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from layerfilm.errors import OptionsError
from layerfilm.io.outputs import MARK, atomic_output, check_output_path
from layerfilm.points.act_stats import HIST_EDGES, ActivationStats
from layerfilm.points.optimizer import OptimizerMeasures
from layerfilm.stability import Stability

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from layerfilm.compare import Comparison

FIGURE_FORMATS = ("png", "svg", "pdf")
DPI = 200


def figure_format(path: str | Path) -> str:
    """'png', 'svg' or 'pdf' from the extension of ``path``; anything else is an error."""
    fmt = Path(path).suffix.lower().lstrip(".")
    if fmt not in FIGURE_FORMATS:
        raise OptionsError(f"{path}: unknown figure extension {Path(path).suffix!r}; use .png, .svg or .pdf")
    return fmt


def save_figure(fig: Figure, path: str | Path, inputs: tuple[Path, ...] = ()) -> Path:
    """Write ``fig`` as PNG (200 dpi), SVG or PDF, by the extension of ``path``."""
    fmt = figure_format(path)
    check_output_path(path, (f".{fmt}",), inputs)
    with atomic_output(path, suffix=f".{fmt}") as tmp, plain_text(fig):
        fig.savefig(tmp, format=fmt, dpi=DPI, facecolor="white", metadata={"Creator": MARK})
    return Path(path)


@contextmanager
def plain_text(fig: Figure) -> Iterator[None]:
    """Draw every text of ``fig`` as written, never as math: names (tensors, folders) are text, and one
    holding a pair of ``$`` made matplotlib's math parser raise. Texts made so far are set here; those
    made while drawing (tick labels) take the setting from the context."""
    import matplotlib
    from matplotlib.text import Text

    for text in fig.findobj(Text):
        text.set_parse_math(False)
    with matplotlib.rc_context({"text.parse_math": False}):
        yield


def _new(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _labels(stab: Stability) -> list[str]:
    return [f"L{b}" for b in stab.blocks]


def _grid(fig: Figure, n: int, cols: int = 4) -> list:
    cols = min(cols, n)
    rows = math.ceil(n / cols)
    axes = fig.subplots(rows, cols, sharex=True, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return list(axes[:n])


def log_labels(bar, lo: float, hi: float) -> None:
    """A log colour bar's numbers as plain text (0.2, 1e-05), never as math (the report draws no math):
    the decades, and within a range of less than two decades the ticks between them too."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    span = max(hi / max(lo, 1e-300) - 1, 1e-12)
    digits = max(2, math.ceil(-math.log10(span)) + 2) if span < 1 else 2  # a narrow range: enough to tell ticks apart
    label = FuncFormatter(lambda v, _: f"{v:.{digits}g}")
    bar.ax.yaxis.set_major_formatter(label)
    bar.ax.yaxis.set_minor_formatter(label if span < 99 else NullFormatter())


def _centre_edges(x: np.ndarray) -> np.ndarray:
    """(T + 1,) cell edges around the (T,) centres ``x``: halfway between neighbours."""
    x = np.asarray(x, np.float64)
    mid = (x[:-1] + x[1:]) / 2
    return np.concatenate([[x[0] - (mid[0] - x[0])], mid, [x[-1] + (x[-1] - mid[-1])]])


def heatmap_figure(stab: Stability, cmap: str = "magma") -> Figure:
    """Blocks (rows) x steps: relative update from the previous key frame, log colour scale.
    Cell t spans the steps (s[t-1], s[t]]; a white tick marks each block's settling step;
    grey cells did not change at all."""
    import matplotlib
    from matplotlib.colors import LogNorm

    T, L = stab.relative_update.shape
    rel = stab.relative_update[1:].T  # (L, T-1)
    good = np.isfinite(rel) & (rel > 0)
    lo, hi = (rel[good].min(), rel[good].max()) if good.any() else (1e-12, 1.0)
    fig = _new(min(14, 5 + 0.08 * T), min(12, 1.5 + 0.32 * L))
    ax = fig.add_subplot()
    colours = matplotlib.colormaps[cmap].with_extremes(bad="#9a9a9a")
    mesh = ax.pcolormesh(stab.steps, np.arange(L + 1) - 0.5, np.ma.masked_where(~good, rel),
                         norm=LogNorm(lo, max(hi, lo * 1.0001)), cmap=colours)
    for l, (k, status) in enumerate(zip(stab.settle_index, stab.status)):
        if status == "settled":
            ax.vlines(stab.steps[k], l - 0.45, l + 0.45, colors="white", linewidth=2.5)
    ax.set_yticks(range(L), _labels(stab))
    ax.set_ylim(L - 0.5, -0.5)
    ax.set_xlabel("training step")
    ax.set_ylabel("block")
    gap = np.median(np.diff(stab.steps))
    ax.set_title("Which blocks still move\n(white tick: settling step; grey: unchanged)", fontsize="medium")
    log_labels(fig.colorbar(mesh, ax=ax, label=f"‖ΔW‖/‖W‖ per {gap:g} steps (log scale)"), lo, hi)
    return fig


def update_ratio_figure(stab: Stability, cmap: str = "viridis") -> Figure:
    """:func:`ratio_heatmap` of a measured run (``stab.optimizer`` set)."""
    assert stab.optimizer is not None
    return ratio_heatmap(stab.optimizer, stab.steps, stab.blocks, cmap)


def ratio_heatmap(opt: OptimizerMeasures, steps: np.ndarray, blocks: np.ndarray, cmap: str = "viridis") -> Figure:
    """Blocks (rows) x key frames at ``steps``: the Adam update ratio lr·‖m̂/(√v̂+ε)‖/‖W‖ over each block's
    matrices (layerfilm.points.optimizer), log colour; grey: no optimizer state; a red x marks a spike (10x
    the block's running median); blocks whose median lies outside 1e-4..1e-2 are flagged by their label."""
    import matplotlib
    from matplotlib.colors import LogNorm
    from matplotlib.ticker import FuncFormatter, NullFormatter

    from layerfilm.points.optimizer import HEALTHY

    steps = np.asarray(steps)
    r = opt.update_ratio.T  # (L, T)
    L, T = r.shape
    good = np.isfinite(r) & (r > 0)
    lo, hi = (min(r[good].min(), HEALTHY[0]), max(r[good].max(), HEALTHY[1])) if good.any() else HEALTHY
    fig = _new(min(14, 6 + 0.08 * T), min(12, 3 + 0.32 * L))
    ax = fig.add_subplot()
    colours = matplotlib.colormaps[cmap].with_extremes(bad="#9a9a9a", under="black")
    x = _centre_edges(steps) if T > 1 else np.array([steps[0] - 0.5, steps[0] + 0.5])
    shown = np.where(np.isfinite(r) & (r <= 0), lo / 10, r)  # an update of 0 (lr 0): the 'under' colour
    mesh = ax.pcolormesh(x, np.arange(L + 1) - 0.5, np.ma.masked_invalid(shown), norm=LogNorm(lo, hi), cmap=colours)
    ls, ts = np.nonzero(opt.spikes().T)
    ax.scatter(steps[ts], ls, marker="x", color="red", s=40, zorder=3)
    flags = opt.flags()
    ax.set_yticks(range(L), [f"L{b} ({f})" if f else f"L{b}" for b, f in zip(blocks, flags)])
    ax.set_ylim(L - 0.5, -0.5)
    ax.set_xlabel("training step")
    ax.set_ylabel("block")
    ax.set_title("Update ratio per block, from the Adam state\n(red x: spike, 10x the running median; grey: no state; "
                 "black: 0)", fontsize="medium")
    bar = fig.colorbar(mesh, ax=ax, extend="min", label="lr·‖m̂/(√v̂+ε)‖ / ‖W‖ (log)")
    bar.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.0e}"))
    bar.ax.yaxis.set_minor_formatter(NullFormatter())
    for v in HEALTHY:
        bar.ax.axhline(v, color="white", linewidth=1.5)
    return fig


def settling_figure(stab: Stability) -> Figure:
    """Each block's distance to the final checkpoint, relative to its distance at the first key frame,
    with the settling threshold; below it, one row per block marks its settling step.

    Why a row per block: blocks often settle at the same key frame with distances near the threshold,
    so markers drawn on the curves hid each other; in their own rows no two markers can overlap."""
    import matplotlib

    L = len(stab.blocks)
    fig = _new(8, 4.5 + 0.16 * L)
    ax, strip = fig.subplots(2, 1, sharex=True, height_ratios=(3, max(1.0, 0.22 * L)))
    d0 = np.where(stab.distance_to_final[0] > 0, stab.distance_to_final[0], 1.0)
    rel = stab.distance_to_final / d0
    colours = matplotlib.colormaps["viridis"](np.linspace(0, 0.9, L))
    labels = _labels(stab)
    status = stab.status
    for l, label in enumerate(labels):
        ax.plot(stab.steps, rel[:, l], color=colours[l], label=label, alpha=0.85)
        k = stab.settle_index[l]
        if status[l] == "settled":
            strip.plot([stab.steps[k]], [l], "o", color=colours[l], markersize=7, markeredgecolor="black")
        else:
            strip.text(0.995, l, "never settles" if status[l] == "moving" else status[l],
                       transform=strip.get_yaxis_transform(), ha="right", va="center", fontsize="small",
                       color="#b00" if status[l] == "moving" else "#777")
    ax.axhline(stab.settle_threshold, color="black", linestyle="--", linewidth=1,
               label=f"settling threshold ({stab.settle_threshold:g})")
    ax.set_ylabel("distance to final /\ndistance at first key frame")
    ax.set_title("Settling: distance to the final checkpoint; below, each block's settling step")
    ax.legend(fontsize="small", ncols=max(1, L // 12), loc="upper right")
    strip.set_yticks(range(L), labels, fontsize="small")
    strip.set_ylim(L - 0.5, -0.5)
    strip.grid(axis="x", color="#ddd", linewidth=0.6)
    strip.set_xlabel("training step")
    strip.set_ylabel("settles at")
    return fig


def hot_figure(stab: Stability, cmap: str = "magma") -> Figure:
    """Histograms over time, one panel per block: value bins of the block's matrix entries up the y
    axis, steps along x, colour log(1 + count) on one scale for all panels (fastai's HOT chart)."""
    L = len(stab.blocks)
    cols = min(4, L)
    fig = _new(3.2 * cols + 1, 2.4 * math.ceil(L / cols) + 0.6)
    level = np.log1p(stab.hist)
    x = _centre_edges(stab.steps)
    mesh = None
    for l, ax in enumerate(_grid(fig, L, cols)):
        mesh = ax.pcolormesh(x, stab.hist_edges[l], level[:, l, :].T, cmap=cmap, vmin=0, vmax=level.max(),
                             rasterized=True)
        ax.set_title(_labels(stab)[l], fontsize="medium")
        ax.tick_params(labelsize="small")
    fig.supxlabel("training step")
    fig.supylabel("weight value")
    fig.suptitle("Histograms over time of each block's weight matrices")
    assert mesh is not None  # one panel per block, at least one block
    fig.colorbar(mesh, ax=fig.axes[:L], label="log(1 + count)", shrink=0.8)
    return fig


def norm_figure(stab: Stability) -> Figure:
    """The norm of every tensor of every block over training: one panel per tensor name, one line per
    block coloured by depth (a colour bar, not a legend), linear axes.

    Why this shape: one panel per block with a line per tensor needed a legend of a dozen entries that
    was unreadable at report size, and a log axis that a zero-initialised bias (norm 0 at step 0)
    dragged down by decades. Tensors of one name compare across depth on one axis."""
    import matplotlib
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import BoundaryNorm, ListedColormap

    L, C = len(stab.blocks), len(stab.components)
    cols = min(4, C)
    fig = _new(3.0 * cols + 1.2, 2.2 * math.ceil(C / cols) + 0.8)
    cmap = matplotlib.colormaps["viridis"]
    colours = cmap(np.linspace(0, 1, L)) if L > 1 else cmap([0.5])
    axes = _grid(fig, C, cols)
    for c, (ax, name) in enumerate(zip(axes, stab.components)):
        for l, label in enumerate(_labels(stab)):
            ax.plot(stab.steps, stab.param_norm[:, l, c], color=colours[l], label=label, linewidth=1.2)
        values = stab.param_norm[:, :, c]
        lo, hi = (float(np.nanmin(values)), float(np.nanmax(values))) if np.isfinite(values).any() else (0.0, 1.0)
        if hi - lo <= 0.02 * abs(hi):  # a flat tensor (e.g. a LayerNorm weight) looks flat, not like noise
            ax.set_ylim(lo - 0.05 * abs(hi) - 1e-12, hi + 0.05 * abs(hi) + 1e-12)
        ax.set_title(name, fontsize="medium")
        ax.tick_params(labelsize="small")
    bounds = np.arange(L + 1) - 0.5
    mappable = ScalarMappable(BoundaryNorm(bounds, L), ListedColormap(colours))
    bar = fig.colorbar(mappable, ax=axes, label="block (depth)", shrink=0.8)
    step = max(1, L // 8)
    bar.set_ticks(range(0, L, step), labels=_labels(stab)[::step])
    fig.supxlabel("training step")
    fig.supylabel("‖tensor‖")
    fig.suptitle("Parameter norms: one panel per tensor, one line per block")
    return fig


def stills_figure(frames: Sequence[np.ndarray] | np.ndarray, steps: Sequence[int] | None = None, title: str = "",
                  titles: Sequence[str] | None = None) -> Figure:
    """Frames (H, W, 3) side by side. The film's frames carry their step in their caption, so by
    default nothing is written above them (the step once, not twice); ``steps`` titles each frame
    "step N" and ``titles`` with any text (for frames that do not say what they are)."""
    h, w, _ = frames[0].shape
    k = len(frames)
    fig = _new(6.5 * k, 6.5 * h / w + (0.6 if title or steps is not None or titles is not None else 0.2))
    names = list(titles) if titles is not None else [f"step {s:,}" for s in steps] if steps is not None else [""] * k
    for ax, frame, name in zip(fig.subplots(1, k, squeeze=False)[0], frames, names):
        ax.imshow(frame, interpolation="nearest")
        if name:
            ax.set_title(name)
        ax.set_axis_off()
    if title:
        fig.suptitle(title)
    return fig


def image_figure(image: np.ndarray) -> Figure:
    """One picture (H, W, 3) filling the figure, sized so that a PNG at ``DPI`` has its own pixels."""
    from matplotlib.figure import Figure

    h, w, _ = image.shape
    fig = Figure(figsize=(w / DPI, h / DPI))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(image, interpolation="nearest")
    ax.set_axis_off()
    return fig


def _value_axis(v: np.ndarray | float) -> np.ndarray:
    """Activation values -> y in bin units of ``HIST_EDGES`` (bin i spans y in [i, i + 1]; edge k is at
    y = k + 1), interpolated on a symmetric log scale between edges."""
    def slog(x):
        x = np.asarray(x, np.float64)
        return np.sign(x) * (np.log10(np.maximum(np.abs(x), 1e-3)) + 4)  # +-1e-3 -> +-1, +-1e3 -> +-7

    return np.interp(slog(v), slog(HIST_EDGES), np.arange(1, len(HIST_EDGES) + 1))


def activation_hot_figure(act: ActivationStats, cmap: str = "magma") -> Figure:
    """Histograms over time of each block's output on the probe batch (fastai's "colorful dimension"):
    value bins on a symmetric log axis up (the range any block ever reaches), steps across, colour
    log(1 + count) on one scale for all panels; dotted lines at +-the near-zero threshold."""
    L = len(act.blocks)
    cols = min(4, L)
    fig = _new(3.2 * cols + 1, 2.6 * math.ceil(L / cols) + 0.6)
    level = np.log1p(act.hist.astype(np.float64))  # (T, L, B)
    used = np.flatnonzero(act.hist.sum(axis=(0, 1)))
    lo, hi = (int(used[0]), int(used[-1]) + 1) if len(used) else (0, level.shape[2])
    decades = [v for v in (-1e3, -1e2, -10, -1, -0.1, -0.01, 0, 0.01, 0.1, 1, 10, 1e2, 1e3)
               if lo <= _value_axis(v) <= hi]
    x = _centre_edges(act.steps)
    mesh = None
    for l, ax in enumerate(_grid(fig, L, cols)):
        mesh = ax.pcolormesh(x, np.arange(lo, hi + 1), level[:, l, lo:hi].T, cmap=cmap, vmin=0,
                             vmax=max(level.max(), 1e-9), rasterized=True)
        for v in (-act.threshold, act.threshold):
            ax.axhline(_value_axis(v), color="white", linestyle=":", linewidth=0.8)
        ax.set_yticks(_value_axis(np.array(decades)), [f"{v:g}" for v in decades])
        ax.set_ylim(lo, hi)
        ax.set_title(f"L{int(act.blocks[l])}", fontsize="medium")
        ax.tick_params(labelsize="small")
    fig.supxlabel("training step")
    fig.supylabel("activation value (symmetric log scale)")
    fig.suptitle(f"Histograms over time of each block's output on the probe batch "
                 f"(dotted: |a| = {act.threshold:g})")
    assert mesh is not None  # one panel per block, at least one block
    fig.colorbar(mesh, ax=fig.axes[:L], label="log(1 + count)", shrink=0.8)
    return fig


def _step_colours(act: ActivationStats):
    """A colour per key frame (viridis, early dark to late bright) and the colour bar's mappable."""
    import matplotlib
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    norm = Normalize(float(act.steps[0]), float(max(act.steps[-1], act.steps[0] + 1)))
    cmap = matplotlib.colormaps["viridis"]
    return [cmap(norm(s)) for s in act.steps], ScalarMappable(norm, cmap)


def activation_norm_figure(act: ActivationStats) -> Figure:
    """Left: the mean token norm of each block's output against depth, one line per key frame (the
    first block's input at depth "in" when it was captured), log scale. Right: the growth of the norm
    per block over training (geometric mean from the first block to the last; 1 = flat with depth)."""
    from matplotlib.ticker import FuncFormatter

    fig = _new(11, 4.5)
    left, right = fig.subplots(1, 2, width_ratios=(1.4, 1))
    colours, mappable = _step_colours(act)
    depth = np.arange(len(act.blocks))
    with_input = np.isfinite(act.input_norm).all()
    for t, step in enumerate(act.steps):
        x, y = (np.r_[-1, depth], np.r_[act.input_norm[t], act.norm[t]]) if with_input else (depth, act.norm[t])
        left.plot(x, y, "o-", color=colours[t], markersize=3, linewidth=1.2, label=f"step {int(step):,}")
    left.set_yscale("log")
    left.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # 0.2, 3 rather than 2x10^-1, 3x10^0
    left.yaxis.set_minor_formatter(FuncFormatter(  # label 2, 3 and 5 of each decade only
        lambda v, _: f"{v:g}" if v > 0 and round(v / 10 ** math.floor(math.log10(v))) in (2, 3, 5) else ""))
    left.set_xticks(np.r_[-1, depth] if with_input else depth,
                    (["in"] if with_input else []) + [f"L{int(b)}" for b in act.blocks])
    left.set_xlabel("block (depth)")
    left.set_ylabel("mean token norm (log scale)")
    left.set_title("Activation norm against depth, one line per step", fontsize="medium")
    fig.colorbar(mappable, ax=left, label="training step")
    right.plot(act.steps, act.growth_per_block, "o-", color="black", markersize=3, label="geometric mean per block")
    right.axhline(1.0, color="grey", linestyle="--", linewidth=1, label="flat with depth")
    right.set_xlabel("training step")
    right.set_ylabel("norm growth per block (x)")
    right.set_title(f"Growth per block: {act.growth_per_block[-1]:.3f}x at step {int(act.steps[-1]):,}", fontsize="medium")
    right.legend(fontsize="small")
    return fig


def activation_near_zero_figure(act: ActivationStats) -> Figure:
    """The fraction of each block's output activations with |a| below the threshold, over training."""
    import matplotlib

    fig = _new(8, 4.5)
    ax = fig.add_subplot()
    colours = matplotlib.colormaps["viridis"](np.linspace(0, 0.9, len(act.blocks)))
    for l, b in enumerate(act.blocks):
        ax.plot(act.steps, 100 * act.near_zero[:, l], "o-", markersize=3, color=colours[l], label=f"L{int(b)}")
    ax.set_ylim(0, max(5.0, 100 * float(np.nanmax(act.near_zero)) * 1.1))
    ax.set_xlabel("training step")
    ax.set_ylabel(f"% of activations with |a| < {act.threshold:g}")
    ax.set_title("Activations near zero, per block")
    ax.legend(fontsize="small", ncols=max(1, len(act.blocks) // 12), loc="upper right")
    return fig


# ------------------------------------------------------------------------------------------ several runs

IDENTICAL, NOT_READ = "#9a9a9a", "#e4e4e4"  # a divergence of exactly 0; a checkpoint that could not be read


def divergence_figure(cmp: Comparison, run: str, cmap: str = "magma") -> Figure:
    """Blocks (rows, ranked by this run: the block that differs most on top) x the common steps:
    ``run``'s divergence from the base (layerfilm.compare), on a log colour scale in the report
    heatmap's style; dark grey: identical to the base (0), light grey: not read."""
    import matplotlib
    from matplotlib.colors import LogNorm

    r = cmp.runs.index(run)
    order = cmp.order(run)  # this run's ranking
    d = cmp.divergence[r][:, order].T  # (L, S) in rank order
    L, S = d.shape
    good = np.isfinite(d) & (d > 0)
    lo, hi = (d[good].min(), d[good].max()) if good.any() else (1e-12, 1.0)
    lo = min(lo, hi / 1.0001)
    fig = _new(min(14, 7.5 + 0.08 * S), min(12, 2.2 + 0.32 * L))
    ax = fig.add_subplot()
    colours = matplotlib.colormaps[cmap].with_extremes(bad=NOT_READ, under=IDENTICAL)
    shown = np.where(np.isfinite(d) & (d <= 0), lo / 10, d)  # exactly the base's: the 'under' colour
    x = _centre_edges(cmp.steps) if S > 1 else np.array([cmp.steps[0] - 0.5, cmp.steps[0] + 0.5])
    mesh = ax.pcolormesh(x, np.arange(L + 1) - 0.5, np.ma.masked_invalid(shown), norm=LogNorm(lo, hi), cmap=colours)
    ax.set_yticks(range(L), [f"{i + 1}. L{cmp.blocks[l]}" for i, l in enumerate(order)])
    ax.set_ylim(L - 0.5, -0.5)
    if S <= 12:
        ax.set_xticks(cmp.steps, [f"{int(v):,}" for v in cmp.steps])
    ax.set_xlabel("training step (the steps every run saved)")
    ax.set_ylabel("block, ranked")
    ax.set_title(f"{run} against {cmp.base}: the block that differs most on top\n(dark grey: identical to the base; "
                 "light grey: not read)", fontsize="medium")
    what = "‖W − W_base‖ / ‖W_base‖" if cmp.kind[run] == "weights" else "1 − CKA of the block outputs"
    log_labels(fig.colorbar(mesh, ax=ax, extend="min", label=f"{what} (log scale)"), lo, hi)
    return fig


def runs_settling_figure(runs: Mapping[str, Stability]) -> Figure:
    """Each run's blocks' distance to its own final checkpoint (relative to the first key frame), one
    panel per run side by side on one y axis, with the settling threshold; a dot at each settling step."""
    import matplotlib

    first = next(iter(runs.values()))
    L = len(first.blocks)
    fig = _new(min(16, 1.5 + 4.2 * len(runs)), 4.2)
    axes = fig.subplots(1, len(runs), sharey=True, squeeze=False)[0]
    colours = matplotlib.colormaps["viridis"](np.linspace(0, 0.9, L))
    for ax, (name, st) in zip(axes, runs.items()):
        d0 = np.where(st.distance_to_final[0] > 0, st.distance_to_final[0], 1.0)
        rel = st.distance_to_final / d0
        steps = st.settle_steps
        for l in range(len(st.blocks)):
            ax.plot(st.steps, rel[:, l], color=colours[l % L], label=f"L{st.blocks[l]}", alpha=0.85)
            if steps[l] is not None:
                ax.plot([steps[l]], [rel[st.settle_index[l], l]], "o", color=colours[l % L], markeredgecolor="black")
        ax.axhline(st.settle_threshold, color="black", linestyle="--", linewidth=1)
        settled = sum(s is not None for s in steps)
        ax.set_title(f"{name}: {settled} of {len(st.blocks)} blocks settle", fontsize="medium")
        ax.set_xlabel("training step")
    axes[0].set_ylabel("distance to own final /\ndistance at first key frame")
    axes[-1].legend(fontsize="small", ncols=max(1, L // 12), loc="upper right")
    fig.suptitle(f"Settling per run (dashed: threshold {first.settle_threshold:g}; dot: settling step)")
    return fig


def runs_norm_figure(runs: Mapping[str, Stability]) -> Figure:
    """The norm of each block's weights (every tensor of the block as one vector) over training, one
    panel per block, one line per run: the runs compared by distribution, which needs no neuron to
    correspond (another initialisation too)."""
    import matplotlib

    first = next(iter(runs.values()))
    L = len(first.blocks)
    cols = min(4, L)
    fig = _new(3.2 * cols + 1.5, 2.4 * math.ceil(L / cols) + 0.8)
    colours = matplotlib.colormaps["tab10"](np.arange(len(runs)) % 10)
    axes = _grid(fig, L, cols)
    for l, ax in enumerate(axes):
        for c, (name, st) in zip(colours, runs.items()):
            if l < len(st.blocks):
                ax.plot(st.steps, st.norm[:, l], "o-", color=c, label=name, linewidth=1.3, markersize=3)
        ax.set_title(f"L{first.blocks[l]}", fontsize="medium")
        ax.tick_params(labelsize="small")
    axes[0].legend(fontsize="small")
    fig.supxlabel("training step")
    fig.supylabel("‖W‖ of the block")
    fig.suptitle("Weight norm per block, one line per run")
    return fig
