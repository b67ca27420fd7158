"""Stills and reports: the answer to "which blocks have settled?" in pictures and one file.

``stills`` draws chosen key frames as one still (layerfilm.film.still_frame): each block's panels at
those steps side by side, on the film's fixed axes and colour rule, so two steps compare directly,
with one colour bar and the run's loss and learning rate when it logged them. ``report`` measures the
checkpoints once (``layerfilm.stability``; with ``StudyOptions.activations`` also the statistics of each
block's output on the probe batch) and writes either one self-contained HTML file (images and
film embedded as data: URIs, nothing fetched) or Markdown with PNGs beside it.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote

import numpy as np

from layerfilm.compare import stills_of_runs
from layerfilm.draw.raster import Style
from layerfilm.errors import OptionsError
from layerfilm.film import FilmFrames, film_renderer, key_indices, still_frame
from layerfilm.film_options import StillsOptions, ViewOptions
from layerfilm.io.logs import RunLogs
from layerfilm.io.outputs import atomic_output, check_beside_path, check_output_path, removed_on_error
from layerfilm.io.storage import local_inputs, redact
from layerfilm.points.optimizer import NO_STATE, missing_state
from layerfilm.projection import Trajectories
from layerfilm.reports.figures import (
    activation_hot_figure,
    activation_near_zero_figure,
    activation_norm_figure,
    figure_format,
    heatmap_figure,
    hot_figure,
    image_figure,
    norm_figure,
    plain_text,
    ratio_heatmap,
    save_figure,
    settling_figure,
    update_ratio_figure,
)
from layerfilm.reports.media import Film, FrameSource, Picture, Stills, film_for, pictures, png_bytes, relative_link
from layerfilm.reports.viewer import check_view_path, write_viewer
from layerfilm.stability import Stability, settling_text
from layerfilm.study import Study

if TYPE_CHECKING:
    from matplotlib.figure import Figure

REPORT_KINDS = {".html": "html", ".htm": "html", ".md": "md"}


@dataclass(frozen=True)
class Report:
    out: Path
    stability: Stability
    figures: dict[str, Figure]  # stills, heatmap, settling, hot, norms (+ act_hot, act_norms, act_near_zero)
    files: list[Path]  # everything written (the report, and for Markdown its PNGs)
    notes: tuple[str, ...] = ()  # what the reader should know, e.g. that a large film is linked, not embedded


def parse_step_list(text: str) -> list[int]:
    """``"0,2000"`` -> [0, 2000]."""
    try:
        steps = [int(v) for v in text.split(",")]
    except ValueError:
        raise OptionsError(f"keyframes={text!r}: expected steps separated by commas, e.g. 0,2000") from None
    if not steps:
        raise OptionsError(f"keyframes={text!r}: give at least one step")
    return steps


def keyframe_stills(traj: Trajectories, style: Style, steps: list[int] | None = None,
                    opts: StillsOptions | None = None, logs: RunLogs | None = None) -> Stills:
    """The still of the key frames at ``steps`` (default: the first and last), with the legend unless
    ``opts.legend`` is False and the curves of ``logs`` unless ``opts.curves`` is; and the film's own
    frames at those steps (with the film's time and overlay: ``ViewOptions.of``)."""
    steps, idx = key_indices([int(s) for s in traj.steps], steps)
    opts = replace(opts, style=style) if opts is not None else StillsOptions(style=style)
    look = ViewOptions.of(opts)
    film = FilmFrames.of(traj, look, film_renderer(traj, style, look))
    frames = np.stack([film.draw(k, 0.0) for k in idx])
    image = still_frame(traj, idx, opts, logs)
    return Stills(steps, frames, image_figure(image), image)


def stills(folder: str | Path | Sequence[str | Path], out: str | Path | None = None, steps: list[int] | None = None,
           opts: StillsOptions = StillsOptions(), progress: bool = True,
           names: Sequence[str] | str | None = None) -> Stills:
    """Stills of the checkpoints in ``folder`` at ``steps`` (default first and last), written to ``out``
    (.png, .svg or .pdf) when given.

    A run with optimizer state also gets its update-ratio heatmap (``Stills.update_ratio``; with ``out``,
    written beside it as ``<stem>_update_ratio<ext>``); a run without gets a note saying why not.

    Several folders (a list, the first the base; ``names``: the runs' names, default the folders'):
    each block's cell holds every run's panels, on one basis per block fitted on all runs together
    (layerfilm.compare.stills_of_runs); ``frames`` are the comparison film's frames at those steps.

    Example:
        >>> stills("ckpts/", "before_after.png", steps=[0, 2000]).frames.shape  # doctest: +SKIP
        (2, 720, 1280, 3)
        >>> stills(["base/", "lr10x/"], "runs.png", names="base,lr10x")  # doctest: +SKIP
    """
    folders = [folder] if isinstance(folder, (str, Path)) else list(folder)
    if len(folders) == 1 and names is not None:
        raise OptionsError(f"names={names if isinstance(names, str) else ','.join(names)}: for several runs only")
    inputs = tuple(p for f in folders for p in local_inputs(f))
    if out is not None:  # a bad extension or a path that is not ours fails before any work
        check_output_path(out, (f".{figure_format(out)}",), inputs)
        check_beside_path(ratio_path(out), (f".{figure_format(out)}",), inputs)
    if len(folders) > 1:
        runs = stills_of_runs(folders, steps, opts, names, progress)
        result = Stills(runs.steps, runs.frames, image_figure(runs.image), runs.image)
        return _save_stills(result, out, inputs) if out is not None else result
    run = Study.open(folders[0], opts, progress)
    key_indices(run.series.steps, steps)  # a step that is not a key frame fails before any work
    traj = run.trajectories()
    result = keyframe_stills(traj, opts.style, steps, opts, run.logs() if opts.curves else None)
    figure, note = ratio_figure(run)
    result = replace(result, update_ratio=figure, notes=(note,) if note else ())
    return _save_stills(result, out, inputs) if out is not None else result


def ratio_figure(run: Study) -> tuple[Figure | None, str]:
    """(the update-ratio heatmap of ``run``, "") when it has optimizer state, else (None, the one line why
    not). The heatmap needs the whole blocks' norms: the run is measured (read whole once, cached), but
    only after a cheap look (layerfilm.points.optimizer.missing_state) finds a state to measure."""
    why = missing_state(run.series)
    if why is None:
        measures = run.optimizer_measures()
        if measures.any:
            bm = run.block_measures()
            return ratio_heatmap(measures, bm.steps, bm.blocks), ""
        why = "; ".join(measures.notes) or NO_STATE
    return None, f"no update-ratio heatmap: {why}"


def ratio_path(out: str | Path) -> Path:
    """Where the stills ``out`` keep their update-ratio heatmap: ``<stem>_update_ratio<ext>`` beside it."""
    out = Path(out)
    return out.with_name(f"{out.stem}_update_ratio{out.suffix}")


def _save_stills(result: Stills, out: str | Path, inputs: tuple[Path, ...]) -> Stills:
    """Write the still to ``out`` and its update-ratio heatmap, if any, beside it (:func:`ratio_path`)."""
    files = [save_figure(result.figure, out, inputs)]
    if result.update_ratio is not None:
        files.append(save_figure(result.update_ratio, ratio_path(out), inputs))
    return replace(result, files=tuple(files))


SECTIONS = {  # name: (heading, what it shows)
    "stills": ("First and last key frame", "Each block's points (the film's neurons) at the first and the last key frame "
               "side by side, on the film's fixed axes and colour scale; under them the loss and learning rate the "
               "run logged, if it did."),
    "heatmap": ("Which blocks still move", "Relative update of each block's weights between key frames, on a log colour "
                "scale; the white tick is the block's settling step."),
    "update_ratio": ("What the optimizer saw", "The update ratio lr·‖m̂/(√v̂+ε)‖/‖W‖ of each block's weight "
                     "matrices, from the Adam state saved beside each checkpoint, on a log colour scale (white lines "
                     "on the colour bar: 1e-4 and 1e-2; about 1e-3 is healthy). A block labelled low or high has its "
                     "median outside that range; a red x marks a spike, 10x the block's running median."),
    "settling": ("Settling", "Distance to the final checkpoint relative to the first key frame; a block settles "
                 "once it stays below the dashed threshold and moves less than the threshold times the median "
                 "block. Below, each block's settling step, or its status, in a row of its own."),
    "hot": ("Histograms over time", "Value histograms of each block's weight matrices per key frame "
            "(colour: log(1 + count))."),
    "norms": ("Parameter norms", "The norm of every tensor of every block over training: one panel per tensor, one "
              "line per block (colour: depth)."),
    "act_hot": ("Activation histograms over time", "Histograms of each block's output on the probe batch per key "
                "frame: value bins on a symmetric log axis, colour log(1 + count); dotted lines at the near-zero "
                "threshold."),
    "act_norms": ("Activation norm against depth", "Left: the mean token norm of each block's output, one line per "
                  "key frame (early dark, late bright). Right: how much the norm grows per block (geometric mean from "
                  "the first block to the last) over training; 1 is flat with depth."),
    "act_near_zero": ("Activations near zero", "The fraction of each block's output activations near zero over "
                      "training."),
}


FIGURE_NAMES = ("stills", "heatmap", "update_ratio", "settling", "hot", "norms", "act_hot", "act_norms", "act_near_zero")


REPORT_STILL_WIDTH = 1280  # pixels at least: the still is shown about 1070 px wide (the page's width), never enlarged


def report_still(stab: Stability, opts: StillsOptions, logs: RunLogs | None = None) -> np.ndarray:
    """The report's still of the first and last key frame, at least ``REPORT_STILL_WIDTH`` pixels wide
    (the frame size's aspect), so that its labels and legend read at the page's width."""
    assert stab.trajectories is not None  # a measured Stability keeps the film's projection
    w, h = opts.style.width, opts.style.height
    if w < REPORT_STILL_WIDTH:
        w, h = REPORT_STILL_WIDTH, max(64, round(REPORT_STILL_WIDTH * h / w / 2) * 2)
    opts = replace(opts, style=replace(opts.style, width=w, height=h))
    _, idx = key_indices([int(s) for s in stab.trajectories.steps], None)
    return still_frame(stab.trajectories, idx, opts, logs)  # the picture only (not the film's frames too)


def report_figures(stab: Stability, style: Style, still: np.ndarray | None = None) -> dict[str, Figure]:
    """The report's figures; ``still``: its still (default: :func:`report_still` at ``style``'s size)."""
    figures = {
        "stills": image_figure(still if still is not None else report_still(stab, StillsOptions(style=style))),
        "heatmap": heatmap_figure(stab),
        **({"update_ratio": update_ratio_figure(stab)} if stab.optimizer is not None and stab.optimizer.any else {}),
        "settling": settling_figure(stab),
        "hot": hot_figure(stab),
        "norms": norm_figure(stab),
    }
    if stab.activations is not None:
        figures |= {"act_hot": activation_hot_figure(stab.activations),
                    "act_norms": activation_norm_figure(stab.activations),
                    "act_near_zero": activation_near_zero_figure(stab.activations)}
    return figures


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    with plain_text(fig):
        fig.savefig(buf, format="png", dpi=150, facecolor="white")
    return buf.getvalue()


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _summary(stab: Stability, folder: str | Path) -> str:
    steps = stab.steps
    status = stab.status
    return (f"{len(steps)} checkpoints in {redact(str(folder))} (steps {steps[0]:,} to {steps[-1]:,}), "
            f"{len(stab.blocks)} blocks; "
            + ", ".join(f"{status.count(s)} {s}" for s in ("settled", "moving", "barely moved"))
            + f" (threshold {stab.settle_threshold:g}). "
            f"Points: {stab.points}." + _optimizer_note(stab))


def _optimizer_note(stab: Stability) -> str:
    """One line on the optimizer state: why there is no section of it, or which blocks are flagged."""
    opt = stab.optimizer
    if opt is None:
        return ""
    if not opt.any:
        return " No optimizer section: " + ("; ".join(opt.notes) or "no optimizer state") + "."
    flagged = [f"L{b} ({f})" for b, f in zip(stab.blocks, opt.flags()) if f]
    return (f" Update ratio outside 1e-4..1e-2: {', '.join(flagged)}." if flagged else
            " Every block's median update ratio lies within 1e-4..1e-2.")


CSS = """body{font-family:system-ui,-apple-system,'DejaVu Sans',sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222}img,video{max-width:100%;height:auto}table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #ccc;padding:.3em .6em;text-align:right}th{background:#f3f3f3}
td:nth-child(2){text-align:left}.moving{color:#b00}.settled{color:#070}.barely{color:#777}p.note{color:#555}
.film{container-type:inline-size}.film video{display:block;width:100%;max-width:none;object-fit:contain;
object-position:top;background:#111}.frames img{margin:.3em 0}"""


ACT_TABLE = ("Activations at the last key frame", "Statistics of each block's output on all probe tokens: mean token "
             "norm, its growth over the previous block's (block 0: over its input), mean, std, fraction near zero.")


def _html_table(head: list[str], rows: list[list[str]], status_column: int | None = None) -> str:
    """An HTML table; cells of ``status_column`` are classed by the block's status (settled, moving, barely)."""
    def cls(i: int, c: str) -> str:
        return c.split()[0] if i == status_column else ""

    return "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>\n" + "\n".join(
        "<tr>" + "".join(f'<td class="{cls(i, c)}">{html.escape(c)}</td>' for i, c in enumerate(r)) + "</tr>"
        for r in rows) + "</table>"


MD_SPECIAL = "\\`*_[]|!#~$"  # backslash-escaped in Markdown text; <, > and & become entities


def _md(text: str) -> str:
    """``text`` (folder, tensor and frame names) as literal Markdown: ``<>&`` as HTML entities, so no tag in a
    name reaches a renderer (``<img onerror>`` ran), and link, emphasis, table and math marks escaped."""
    return "".join(html.escape(c) if c in "<>&" else "\\" + c if c in MD_SPECIAL else c for c in text)


def _md_table(head: list[str], rows: list[list[str]]) -> list[str]:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(_md(c) for c in cells) + " |"

    return [line(head), "|" + "---|" * len(head)] + [line(r) for r in rows]


def _html(stab: Stability, folder: str | Path, images: dict[str, bytes], film: Film | None,
          frames: dict[str, Picture], viewer: str | None = None) -> str:
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>layerfilm report</title>"
             f"<style>{CSS}</style></head><body>",
             "<h1>Which layers stabilize</h1>", f"<p>{html.escape(_summary(stab, folder))}</p>"]
    if film is not None:
        parts += ["<h2>Film</h2>", film.html(_data_uri(film.data, film.mime) if film.data is not None else None)]
    if viewer is not None:
        parts += ["<h2>Interactive film</h2>", f'<p><a href="{html.escape(viewer, quote=True)}">'
                  f"{html.escape(unquote(viewer))}</a>: {html.escape(VIEWER_TEXT)}</p>"]
    for title, pic in frames.items():
        parts += [f"<h2>{html.escape(title)}</h2>",
                  f'<p class="frames"><img alt="{html.escape(title, quote=True)}" src="{_data_uri(pic.data, pic.mime)}"></p>']
    parts += ["<h2>Settling table</h2>", _html_table(*stab.table_rows(), status_column=2),
              f'<p class="note">Ranked by settling step. {html.escape(settling_text(stab.settle_threshold))}.</p>']
    if stab.activations is not None:
        parts += [f"<h2>{ACT_TABLE[0]}</h2>", f"<p>{html.escape(stab.activations.headline())}. {ACT_TABLE[1]}</p>",
                  _html_table(*stab.activations.table_rows())]
    for name, png in images.items():
        title, text = SECTIONS[name]
        parts += [f"<h2>{title}</h2>", f"<p>{html.escape(text)}</p>",
                  f'<img alt="{title}" src="{_data_uri(png, "image/png")}">']
    return "\n".join(parts) + "\n</body></html>\n"


VIEWER_TEXT = ("the film in one HTML file beside this report: play, scrub, click a panel to enlarge it, hover a "
               "point for its neuron")


def _markdown(stab: Stability, folder: str | Path, pngs: dict[str, str], film: str | None,
              frames: dict[str, str], viewer: str | None = None, lossless: str | None = None) -> str:
    """The Markdown report; ``pngs``, ``film`` and ``frames`` are links (report_media.relative_link)."""
    lines = ["# Which layers stabilize", "", _md(_summary(stab, folder)), ""]
    if film is not None:
        lines += [f"Film: [{_md(unquote(film).rsplit('/', 1)[-1])}]({film})", ""]
    if lossless is not None:
        lines += [f"The lossless film (the exact frames): [{_md(unquote(lossless).rsplit('/', 1)[-1])}]({lossless})", ""]
    if viewer is not None:
        lines += [f"Interactive film: [{_md(unquote(viewer).rsplit('/', 1)[-1])}]({viewer}): {_md(VIEWER_TEXT)}", ""]
    for title, link in frames.items():
        lines += [f"## {_md(title)}", "", f"![{_md(title)}]({link})", ""]
    lines += ["## Settling table", "", *_md_table(*stab.table_rows()), "",
              _md(f"Ranked by settling step. {settling_text(stab.settle_threshold)}.")]
    if stab.activations is not None:
        lines += ["", f"## {ACT_TABLE[0]}", "", _md(f"{stab.activations.headline()}. {ACT_TABLE[1]}"), "",
                  *_md_table(*stab.activations.table_rows())]
    for name, png in pngs.items():
        title, text = SECTIONS[name]
        lines += ["", f"## {title}", "", _md(text), "", f"![{title}]({png})"]
    return "\n".join(lines) + "\n"


def report(folder: str | Path, out: str | Path, film: str | Path | None = None,
           opts: StillsOptions = StillsOptions(), progress: bool = True, *, film_link: bool = False,
           frames: Mapping[str, FrameSource] | None = None, interactive: bool = False,
           lossless_film: str | Path | None = None) -> Report:
    """Measure the checkpoints in ``folder`` and write a report: ``.html`` (one file, images embedded)
    or ``.md`` (Markdown, with ``<name>_<figure>.png`` beside it).

    Args:
        film: a .webm, .mp4 or .gif film. HTML embeds it when it is at most 8 MB
            (``report_media.EMBED_MAX_BYTES``) and links it (a path relative to the report, with a
            note) when larger or when ``film_link``; Markdown always links it.
        frames: title -> frames chosen in Python, each a section of the report after the film: an
            (H, W, 3) uint8 array, (K, H, W, 3) frames side by side, an image file (.png, .jpg, .gif,
            .webp, .svg), or the ``Stills`` of :func:`stills`. Markdown writes arrays as
            ``<name>_frame_<i>.png`` beside the report and links files where they are.
        lossless_film: the lossless film of a shareable ``film`` (``render --quality share``): the report
            shows ``film`` and links this one under it.
        interactive: also write the interactive film (layerfilm.reports.viewer) as ``<name>_view.html``
            beside the report, and link it.

    Example:
        >>> st = stills("ckpts/", "before_after.png")  # doctest: +SKIP
        >>> report("ckpts/", "report.html", film="film.webm",  # doctest: +SKIP
        ...        frames={"Last key frame": st.frames[-1], "Before and after": "before_after.png"})
    """
    out = Path(out)
    kind = REPORT_KINDS.get(out.suffix.lower())
    if kind is None:
        raise OptionsError(f"{out}: unknown report extension {out.suffix!r}; use .html or .md")
    inputs = local_inputs(folder)
    check_output_path(out, (out.suffix.lower(),), inputs)
    pngs = {n: out.with_name(f"{out.stem}_{n}.png") for n in FIGURE_NAMES}
    shown = pictures(frames)  # every frame checked (and its file read) before any checkpoint is
    frame_pngs = {t: out.with_name(f"{out.stem}_frame_{i}.png") for i, t in enumerate(shown) if shown[t].file is None}
    if kind == "md":
        for png in pngs.values():
            check_beside_path(png, (".png",), inputs)
        for png in frame_pngs.values():
            check_output_path(png, (".png",), inputs)
    view = check_view_path(out.with_name(f"{out.stem}_view.html"), inputs) if interactive else None
    if film_link and film is None:
        raise OptionsError("film_link: there is no film to link; give film=PATH")
    if lossless_film is not None and film is None:
        raise OptionsError("lossless_film: it is linked under the film; give film=PATH (the shareable one)")
    size = (opts.style.width, opts.style.height)
    movie = film_for(film, out, film_link, size, lossless_film) if film is not None else None
    study = Study.open(folder, opts, progress)
    stab = study.stability()
    logs = study.logs() if opts.curves else None
    still = report_still(stab, opts, logs)
    figures = report_figures(stab, opts.style, still)
    files: list[Path] = []
    if view is not None:
        assert stab.trajectories is not None  # a measured Stability keeps the film's projection
        files.append(write_viewer(stab.trajectories, view, ViewOptions.of(opts), inputs=inputs, logs=logs).out)
    link = relative_link(view, out) if view is not None else None
    if kind == "html":  # the still as drawn, pixel for pixel (not resampled through its figure)
        text = _html(stab, folder, {n: png_bytes(still) if n == "stills" else _png(f) for n, f in figures.items()},
                     movie, shown, link)
    else:
        with removed_on_error(files):
            for name, fig in figures.items():
                files.append(save_figure(fig, pngs[name], inputs))
            for title, png in frame_pngs.items():
                with atomic_output(png, suffix=".png") as tmp:
                    tmp.write_bytes(shown[title].data)
                files.append(png)
        links = {t: relative_link(frame_pngs.get(t) or _file(shown[t].file), out) for t in shown}
        text = _markdown(stab, folder, {n: relative_link(pngs[n], out) for n in figures}, movie.link if movie else None,
                         links, link, movie.lossless or None if movie else None)
    with removed_on_error(files), atomic_output(out) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Report(out, stab, figures, [out, *files], (movie.note,) if movie and movie.note and kind == "html" else ())


def _file(path: Path | None) -> Path:
    assert path is not None  # a picture from a file
    return path
