"""The command line. Parses options, calls the API, and turns LayerfilmError into one line (exit 2)."""

from __future__ import annotations

import argparse
import sys
import time
import warnings

from .encode import EncodeOptions
from .errors import LayerfilmError
from .features.weights import LAYOUTS, WeightSpec
from .film import FilmOptions, render
from .project import PROJECTIONS
from .render import Style, parse_size
from .report import parse_step_list, report, stills
from .scan import parse_steps, scan
from .stability import measure

RENDER_HELP = """\
Render a film of how every decoder block's weights move over training.

Checkpoints: *.safetensors files whose names hold the step (step_000100.safetensors,
step-100.safetensors, 100.safetensors) or Hugging Face Trainer folders (checkpoint-N/model.safetensors),
sorted by step numerically. Blocks are found by their names (transformer.h.N., model.layers.N.,
gpt_neox.layers.N., blocks.N., layers.N., ...).

Points are the output neurons of one matrix per block (--param): rows of an nn.Linear weight stored
[out, in]; columns of a GPT-2 Conv1D weight stored [in, out] (detected when c_attn is [d, 3d];
force with --layout). Each block's points are projected to 2-D with one PCA basis shared by all key
frames, so the axes never flip or jump; points move in straight lines between key frames.

Output by extension: .webm = VP9 lossless (decodes to the exact RGB frames), .gif = 256-colour
palette, .mp4 = H.264 (lossy, --crf), a path without extension = a folder of PNG frames (lossless).
A film of T key frames has (T-1) x round(fps x seconds-per-keyframe) + 1 frames.
"""


def _size(text: str) -> tuple[int, int]:
    return parse_size(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="layerfilm", description="Films of neural network layers evolving over training.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    r = sub.add_parser("render", help="render a film from a folder of checkpoints", description=RENDER_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("folder", help="folder that holds the checkpoints")
    r.add_argument("--out", required=True, help="output: film.webm | film.gif | film.mp4 | frames/ (PNG folder)")
    _add_selection(r.add_argument_group("which checkpoints"))
    _add_points(r.add_argument_group("what to film"))
    g = r.add_argument_group("projection and time")
    g.add_argument("--fps", type=float, default=15.0, help="frames per second (default 15)")
    g.add_argument("--seconds-per-keyframe", type=float, default=1.0, metavar="S", help="seconds between key frames (default 1)")
    g = r.add_argument_group("look and encoding")
    _add_look(g)
    g.add_argument("--no-overlay", action="store_true", help="no per-panel overlay; by default a bar along the bottom "
                   "of each panel shows how much the block still moves (relative update, log scale over 3 decades "
                   "below the film's fastest) and the panel says 'settled' in green from its settling step on")
    _add_settle(g)
    g.add_argument("--crf", type=int, default=18, help="quality of lossy .mp4 output, 0-51, lower is better (default 18); .webm is always lossless")
    g.add_argument("--encoder-threads", type=int, default=0, metavar="N", help="ffmpeg encoder threads (default 0: ffmpeg decides)")
    g.add_argument("--export-points", default=None, metavar="FILE.npz", help="also write key-frame coordinates: steps (T), blocks (L), point_ids (L,N), xy (T,L,N,2)")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_study_commands(sub)
    return parser


def _add_selection(g) -> None:
    g.add_argument("--every", type=int, default=1, metavar="K", help="keep every K-th checkpoint (default 1: all)")
    g.add_argument("--steps", default=None, metavar="A:B", help="keep steps A..B inclusive; either side may be empty (e.g. 1000:)")


def _add_points(g) -> None:
    g.add_argument("--param", default=None, help="matrix inside each block, e.g. mlp.c_fc.weight or attn.c_attn "
                   "('.weight' optional); default: the MLP's input projection")
    g.add_argument("--points", type=int, default=512, metavar="N", help="at most N neurons per block, chosen once with --seed and tracked at every step (default 512)")
    g.add_argument("--seed", type=int, default=0, help="seed for choosing the points (default 0)")
    g.add_argument("--blocks", default=None, metavar="REGEX", help="override block detection: a regex whose first group is the block index, e.g. 'net\\.stage(\\d+)\\.'")
    g.add_argument("--layout", choices=LAYOUTS, default="auto", help="storage of the matrix: out-in (nn.Linear), in-out (GPT-2 Conv1D) or auto (default)")
    g.add_argument("--projection", default="pca", choices=PROJECTIONS.names(), help="2-D projection aligned over time (default pca: one basis per block for all key frames)")


def _add_look(g) -> None:
    g.add_argument("--size", type=_size, default=(1280, 720), metavar="WxH", help="frame size in pixels, even numbers (default 1280x720)")
    g.add_argument("--cmap", default="magma", help="matplotlib colormap for density, log(1+count) scaled (default magma)")


def _add_settle(g) -> None:
    g.add_argument("--settle-threshold", type=float, default=0.1, metavar="F",
                   help="a block has settled from the first step after which its distance to the final checkpoint "
                   "stays below F times its distance at the first key frame (default 0.1)")


def _weight_spec(args: argparse.Namespace) -> WeightSpec:
    return WeightSpec(param=args.param, points=args.points, seed=args.seed, blocks_regex=args.blocks, layout=args.layout)


def _film_options(args: argparse.Namespace) -> FilmOptions:
    w, h = args.size
    return FilmOptions(
        weights=_weight_spec(args),
        projection=args.projection,
        fps=args.fps,
        seconds_per_keyframe=args.seconds_per_keyframe,
        style=Style(width=w, height=h, cmap=args.cmap),
        encode=EncodeOptions(fps=args.fps, crf=args.crf, threads=args.encoder_threads),
        every=args.every,
        steps=parse_steps(args.steps) if args.steps else (None, None),
        overlay=not args.no_overlay,
        settle_threshold=args.settle_threshold,
    )


def cmd_render(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    res = render(args.folder, args.out, _film_options(args), export=args.export_points, progress=not args.quiet)
    print(f"wrote {res.out} ({res.frames} frames from {res.keyframes} key frames) in {time.perf_counter() - t0:.1f} s",
          file=sys.stderr)
    return 0


STABILITY_HELP = """\
Which blocks have settled and which still move, measured from the weights.

Per block (every tensor inside it, as one vector W) and per key frame: the relative update
||W_t - W_t-1|| / ||W_t|| (scaled to the median gap between key frames), the distance to the final
checkpoint ||W_t - W_T|| / ||W_T||, the norm of each tensor, the linear CKA between the block's points
(the film's neurons) and the same points at the final checkpoint, and their on-screen motion in the
film's projection (fraction of the panel width per key frame).

A block settles at the first step after which its distance to the final checkpoint stays below
--settle-threshold times its distance at the first key frame; the last key frame does not count, so
a block that only gets there at the end never settles. The table is ranked by settling step.
--json prints a list of objects in that order: block, rank, settle_step (null: never),
settle_threshold, steps, relative_update, distance_to_final, norm, param_norm {tensor: series},
cka_to_final, motion (null where undefined, e.g. the first key frame's update).
"""

STILLS_HELP = """\
Stills of the film's key frames side by side (matplotlib; .png, .svg or .pdf by extension).

Default: the first and the last key frame; --steps 0,2000 picks any key frames (one step gives one
frame). Every frame uses the film's fixed axes and colour scale, so the panels compare directly.
"""

REPORT_HELP = """\
A report on which layers stabilize: stills of the first and last key frame, the heatmap of relative
updates (blocks x steps, log colour scale, settling steps marked), each block's distance to the final
checkpoint, histograms over time of each block's weights (value bins up, steps across, colour
log(1 + count)), parameter-norm curves, and the settling table (see `layerfilm stability --help`).

report.html: one self-contained file, images (and the --film) embedded as data: URIs; it fetches
nothing. report.md: Markdown with the figures as report_<name>.png beside it; --film is linked.
"""


def _study_parser(sub, name: str, help: str, description: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help, description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", help="folder that holds the checkpoints")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def _add_study_commands(sub) -> None:
    s = _study_parser(sub, "stability", "table of which blocks have settled (or --json)", STABILITY_HELP)
    s.add_argument("--json", action="store_true", help="print JSON (a list of per-block objects) instead of the table")
    _add_settle(s)
    _add_selection(s.add_argument_group("which checkpoints"))
    _add_points(s.add_argument_group("points for CKA and on-screen motion (as in render)"))
    t = _study_parser(sub, "stills", "the first and last key frames (or --steps) side by side", STILLS_HELP)
    t.add_argument("--out", required=True, help="output figure: X.png | X.svg | X.pdf")
    t.add_argument("--steps", default=None, metavar="S1,S2,...", help="key frames to show, by step (default: first and last)")
    _add_points(t.add_argument_group("what to film (as in render)"))
    _add_look(t.add_argument_group("look"))
    p = _study_parser(sub, "report", "HTML or Markdown report: stills, heatmap, HOT charts, norms, settling table", REPORT_HELP)
    p.add_argument("--out", required=True, help="report.html (self-contained) | report.md (PNGs written beside it)")
    p.add_argument("--film", default=None, metavar="FILE", help="a film (.webm, .mp4, .gif) to embed (HTML) or link (Markdown)")
    _add_settle(p)
    _add_selection(p.add_argument_group("which checkpoints"))
    _add_points(p.add_argument_group("what to film (as in render)"))
    _add_look(p.add_argument_group("look of the stills"))


def _study_options(args: argparse.Namespace) -> FilmOptions:
    a = vars(args)
    w, h = a.get("size", (1280, 720))
    return FilmOptions(
        weights=_weight_spec(args), projection=args.projection, style=Style(width=w, height=h, cmap=a.get("cmap", "magma")),
        every=a.get("every", 1), steps=parse_steps(a["steps"]) if "every" in a and a["steps"] else (None, None),
        settle_threshold=a.get("settle_threshold", 0.1),
    )


def cmd_stability(args: argparse.Namespace) -> int:
    opts = _study_options(args)
    series = scan(args.folder, opts.every, opts.steps)
    stab = measure(series, opts.stability_options(), progress=not args.quiet)
    print(stab.to_json() if args.json else stab.table())
    return 0


def cmd_stills(args: argparse.Namespace) -> int:
    steps = parse_step_list(args.steps) if args.steps else None
    res = stills(args.folder, args.out, steps, _study_options(args), progress=not args.quiet)
    print(f"wrote {args.out} (steps {', '.join(f'{s:,}' for s in res.steps)})", file=sys.stderr)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    res = report(args.folder, args.out, args.film, _study_options(args), progress=not args.quiet)
    print(f"wrote {', '.join(map(str, res.files))}", file=sys.stderr)
    return 0


COMMANDS = {"render": cmd_render, "stability": cmd_stability, "stills": cmd_stills, "report": cmd_report}


def _one_line_warnings(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except LayerfilmError as e:  # raised by option converters such as --size
        print(f"layerfilm: error: {e}", file=sys.stderr)
        return 2
    warnings.showwarning = _one_line_warnings
    try:
        return COMMANDS[args.command](args)
    except LayerfilmError as e:
        print(f"layerfilm: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("layerfilm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
