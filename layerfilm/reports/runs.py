"""The report of several runs (``layerfilm report BASE OTHER ...``): which blocks differ from the base
run, and how each run settles, side by side.

One file, as the report of one run: ``.html`` (figures embedded, nothing fetched) or ``.md`` (PNGs
beside it). It holds, in order:

  - how each run is compared: neuron by neuron where it shares the base's initialisation, else by
    representation (1 - CKA of the block outputs, with ``StudyOptions.activations``) or by distribution
    only (settling, norms): a run of another initialisation is never said to have the base's neurons;
  - the blocks ranked by how much they differ at the last common step (layerfilm.compare);
  - per run measured against the base, a heatmap of blocks (ranked) x common steps, log colour;
  - each run's settling side by side (a table, and the curves one panel per run);
  - each block's weight norm over training, a line per run (a comparison by distribution).
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from layerfilm.compare import DISTRIBUTION, Comparison, compare, describe_kind, run_names, settling, settling_note, settling_rows
from layerfilm.errors import OptionsError
from layerfilm.film_options import StudyOptions
from layerfilm.io.outputs import atomic_output, check_beside_path, check_output_path, removed_on_error
from layerfilm.io.scan import Checkpoint
from layerfilm.io.storage import local_inputs, redact
from layerfilm.reports.document import CSS, REPORT_KINDS, _data_uri, _html_table, _md, _md_table, _png
from layerfilm.reports.figures import divergence_figure, runs_norm_figure, runs_settling_figure, save_figure
from layerfilm.reports.media import relative_link
from layerfilm.stability import Stability
from layerfilm.text import printable

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass(frozen=True)
class RunsReport:
    out: Path
    comparison: Comparison
    stability: dict[str, Stability]  # each run's own, by name (base first)
    figures: dict[str, Figure]  # divergence_<i> (the i-th run measured against the base), settling, norms
    files: list[Path]  # everything written (the report, and for Markdown its PNGs)
    skipped: tuple[Checkpoint, ...] = ()  # checkpoints skipped in their run, each with its problem


SETTLING_TEXT = ("Each run against its own final checkpoint: the step each block settles at (never: it still moves; "
                 "barely moved: it hardly changed), and its distance to the final checkpoint at the last-but-one key "
                 "frame, relative to the first.")
NORMS_TEXT = ("The norm of each block's weights over training, one line per run: a comparison by distribution, which "
              "needs no neuron of one run to correspond to a neuron of another.")
RANK_TEXT = ("Each run's divergence from the base at the last common step where both could be read; blocks ranked by "
             "the largest over the runs (each run scaled to its own largest block). -: not measured or not read.")


def _heatmap_text(cmp: Comparison, run: str) -> str:
    if cmp.kind[run] == "weights":
        what = "‖W_run − W_base‖_F / ‖W_base‖_F over the block's matrices, neuron by neuron (the same initialisation)"
    else:
        what = "1 − linear CKA between the two runs' block outputs on the same probe tokens (representation)"
    return f"Divergence of {run} from {cmp.base} at every common step: {what}. Log colour scale; blocks ranked."


def report_runs(folders: Sequence[str | Path], out: str | Path, opts: StudyOptions = StudyOptions(),
                names: Sequence[str] | str | None = None, probe=None, progress: bool = True) -> RunsReport:
    """Compare ``folders`` (the first the base) and write the report of several runs: ``.html`` (one
    file, figures embedded) or ``.md`` (``<name>_<figure>.png`` beside it).

    Args:
        opts: the options; with ``activations`` every run is compared by representation (CKA); without,
            runs of another initialisation are compared by distribution only (no model is built).
        names: the runs' names, base first (default: the folders' names).
        probe: as for :func:`layerfilm.compare.compare` (with ``opts.activations`` unset it is not used).
    Example:
        >>> report_runs(["base/", "lr10x/"], "cmp.html", names="base,lr10x")  # doctest: +SKIP
    """
    out = Path(out)
    kind = REPORT_KINDS.get(out.suffix.lower())
    if kind is None:
        raise OptionsError(f"{out}: unknown report extension {out.suffix!r}; use .html or .md")
    labels = run_names(folders, names)
    inputs = tuple(p for f in folders for p in local_inputs(f))
    check_output_path(out, (out.suffix.lower(),), inputs)
    pngs = {n: out.with_name(f"{out.stem}_{n}.png")
            for n in [*(f"divergence_{i}" for i in range(1, len(labels))), "settling", "norms"]}
    if kind == "md":
        for png in pngs.values():
            check_beside_path(png, (".png",), inputs)
    cmp = compare(folders[0], folders[1:], opts, labels, probe, progress, by_representation=False)
    runs = settling(folders, replace(opts, activations=None), labels, progress)  # the weights' settling
    figures = {f"divergence_{i}": divergence_figure(cmp, n) for i, n in enumerate(cmp.runs, 1)
               if cmp.kind[n] != DISTRIBUTION}
    figures |= {"settling": runs_settling_figure(runs), "norms": runs_norm_figure(runs)}
    skipped = tuple({c.path: c for c in (*cmp.skipped, *(c for st in runs.values() for c in st.skipped))}.values())
    files: list[Path] = []
    with removed_on_error(files):
        if kind == "html":
            text = _html(cmp, runs, folders, {n: _png(f) for n, f in figures.items()}, skipped)
        else:
            for name, fig in figures.items():
                files.append(save_figure(fig, pngs[name], inputs))
            text = _markdown(cmp, runs, folders, {n: relative_link(pngs[n], out) for n in figures}, skipped)
        with atomic_output(out) as tmp:
            tmp.write_text(text, encoding="utf-8")
    return RunsReport(out, cmp, runs, figures, [out, *files], skipped)


def _summary(cmp: Comparison, runs: dict[str, Stability], folders: Sequence[str | Path]) -> list[str]:
    """The report's opening: the runs and their folders, the common steps, how each run is compared."""
    lines = [f"{len(runs)} runs, the base run {cmp.base}. " + "; ".join(
        f"{n}: {redact(str(f))}, {len(st.steps)} key frames (steps {int(st.steps[0]):,} to {int(st.steps[-1]):,})"
        for (n, st), f in zip(runs.items(), folders)) + "."]
    lines.append(f"Compared at the {len(cmp.steps)} step(s) every run saved ({', '.join(f'{int(s):,}' for s in cmp.steps)}).")
    return lines + [f"{n}: {describe_kind(cmp.kind[n], cmp.shared_init[n])}." for n in cmp.runs]


def _skipped_lines(skipped: tuple[Checkpoint, ...]) -> list[str]:
    return [f"skipped {redact(str(c.path))}: {printable(c.problem or '')}" for c in skipped]


def _html(cmp: Comparison, runs: dict[str, Stability], folders: Sequence[str | Path], images: dict[str, bytes],
          skipped: tuple[Checkpoint, ...]) -> str:
    def img(name: str, title: str) -> str:
        return f'<img alt="{html.escape(title, quote=True)}" src="{_data_uri(images[name], "image/png")}">'

    summary = _summary(cmp, runs, folders)
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>layerfilm: compare runs</title>"
             f"<style>{CSS}</style></head><body>", "<h1>Compare runs</h1>", f"<p>{html.escape(summary[0])}</p>",
             f"<p>{html.escape(summary[1])}</p>", "<ul>" + "".join(f"<li>{html.escape(s)}</li>" for s in summary[2:])
             + "</ul>"]
    parts += [f'<p class="note">{html.escape(s)}</p>' for s in _skipped_lines(skipped)]
    parts += ["<h2>Which blocks differ most</h2>", _html_table(*cmp.rows()), f'<p class="note">{html.escape(RANK_TEXT)}</p>']
    for i, n in enumerate(cmp.runs, 1):
        if f"divergence_{i}" in images:
            title = f"{n} against {cmp.base}"
            parts += [f"<h2>{html.escape(title)}</h2>", f"<p>{html.escape(_heatmap_text(cmp, n))}</p>",
                      img(f"divergence_{i}", title)]
    parts += ["<h2>Settling side by side</h2>", f"<p>{html.escape(SETTLING_TEXT)}</p>", _html_table(*settling_rows(runs)),
              f'<p class="note">{html.escape(settling_note(next(iter(runs.values())).settle_threshold))}.</p>',
              img("settling", "Settling per run")]
    parts += ["<h2>Weight norms</h2>", f"<p>{html.escape(NORMS_TEXT)}</p>", img("norms", "Weight norms")]
    return "\n".join(parts) + "\n</body></html>\n"


def _markdown(cmp: Comparison, runs: dict[str, Stability], folders: Sequence[str | Path], pngs: dict[str, str],
              skipped: tuple[Checkpoint, ...]) -> str:
    summary = _summary(cmp, runs, folders)
    lines = ["# Compare runs", "", _md(summary[0]), "", _md(summary[1]), "", *(f"- {_md(s)}" for s in summary[2:]), ""]
    lines += [*(f"{_md(s)}  " for s in _skipped_lines(skipped)), ""] if skipped else []
    lines += ["## Which blocks differ most", "", *_md_table(*cmp.rows()), "", _md(RANK_TEXT)]
    for i, n in enumerate(cmp.runs, 1):
        if f"divergence_{i}" in pngs:
            title = _md(f"{n} against {cmp.base}")
            lines += ["", f"## {title}", "", _md(_heatmap_text(cmp, n)), "", f"![{title}]({pngs[f'divergence_{i}']})"]
    lines += ["", "## Settling side by side", "", _md(SETTLING_TEXT), "", *_md_table(*settling_rows(runs)), "",
              _md(settling_note(next(iter(runs.values())).settle_threshold)) + ".", "",
              f"![Settling per run]({pngs['settling']})"]
    lines += ["", "## Weight norms", "", _md(NORMS_TEXT), "", f"![Weight norms]({pngs['norms']})"]
    return "\n".join(lines) + "\n"
