"""The command line. Parses options, calls the API, and turns LayerfilmError into one line (exit 2)."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

# matplotlib (colormaps, the captions' font) and its C extensions, imported here while layerfilm_main
# holds signals: a Ctrl-C inside a C extension's initialisation aborts Python. The package itself no
# longer imports it, so that worker processes, which ignore Ctrl-C, import it only if they draw.
import matplotlib.ft2font  # noqa: F401

from layerfilm.cli.flags import add_options, command_options, value
from layerfilm.compare import compare, render_runs, settling, settling_json, settling_table
from layerfilm.config import to_flags
from layerfilm.errors import LayerfilmError, OptionsError
from layerfilm.film import render
from layerfilm.io.scan import Checkpoint, no_usable, scan
from layerfilm.parallel.engines import session
from layerfilm.projection import stats_table
from layerfilm.reports.document import report, stills
from layerfilm.reports.runs import report_runs
from layerfilm.study import Study
from layerfilm.text import printable, show, text_table

RENDER_HELP = """\
Render a film of how every decoder block's weights (or activations) move over training.

Checkpoints, sorted by step numerically (see `layerfilm scan --help` for what is recognised):
*.safetensors, *.pt/*.pth/*.bin (state dicts or training dicts such as nanoGPT's), Lightning *.ckpt,
and folders: Hugging Face Trainer checkpoint-N/, Pythia-style step1000/, sharded safetensors with
an index, pytorch_model.bin. A damaged, unsafe or odd checkpoint is skipped with one warning line
(listed again at the end); --strict makes it an error. Blocks are found by their names
(transformer.h.N., model.layers.N., gpt_neox.layers.N., encoder.layer.N., decoder.block.N., ...).

Points are the output neurons of one matrix per block (--param): rows of an nn.Linear weight stored
[out, in]; columns of a GPT-2 Conv1D weight stored [in, out] (detected when c_attn is [d, 3d];
force with --layout). Each block's points are projected to 2-D aligned over time (--projection): with
pca one basis is shared by all key frames, so the axes never flip or jump; points move in straight
lines between key frames, and every panel keeps fixed axes for the whole film.

With --features activations, points are tokens instead: the outputs of every block (its hidden
states) on a fixed probe batch (--probe; default a short bundled text), the same tokens at every
checkpoint. The model is built once without network access, from the checkpoint's config.json with
transformers (pip install 'layerfilm[hf]'), or by --model package.module:make_model for any torch
module; each checkpoint's weights are loaded into it with strict key matching. Per block and step it
also measures the mean token norm, mean, std, fraction near zero (--near-zero), histograms and the
growth of the norm with depth (printed at the end; saved as act_* arrays by --export-points).

Output by extension: .webm = VP9 lossless (decodes to the exact RGB frames), .gif = 256-colour
palette, .mp4 = H.264 (lossy, --crf), a path without extension = a folder of PNG frames (lossless).
A film of T key frames has (T-1) x round(fps x seconds-per-keyframe) + 1 frames.
"""


SCAN_HELP = """\
List the checkpoints in a folder as `layerfilm render` would see them (its dry run): step, format,
path, decoder blocks found, dtype, size on disk, and the problem of each one that cannot be used.
Reads headers only (safetensors JSON headers, torch pickles with tensors memory-mapped), never
tensor data; --deep also reads every block's filmed tensor and finds NaN/Inf in it.

Recognised: *.safetensors; *.pt, *.pth, *.bin (state dicts, or training dicts holding one under
state_dict/model/..., e.g. nanoGPT's {'model', 'optimizer', 'iter_num'}); Lightning *.ckpt;
folders holding model.safetensors, a sharded model.safetensors.index.json, or pytorch_model.bin
(Trainer checkpoint-N/, Pythia step1000/). The step comes from the name (step, checkpoint, iter
followed by a number; epoch=0-step=150.ckpt is 150) or from inside (iter_num, step, global_step,
trainer_state.json); when both exist they must agree. Pickles are loaded with weights_only=True:
one that would run code is refused as unsafe, never executed. Prefixes added by wrappers
(module., _orig_mod., a model. around everything) are ignored.

Problems: unreadable, truncated or corrupt files, FIFOs, devices and other non-regular files (never
opened), unsafe pickles, files without model weights (optimizer states), no step, a step beyond
2^63-1, duplicate steps, blocks whose number, tensors or shapes differ from most checkpoints',
block tensors in a dtype layerfilm cannot read. Other files (READMEs, TensorBoard events, Trainer side files) are ignored.
"""


FOLDER_HELP = ("folder that holds the checkpoints, or a URL of one: s3://bucket/run/, gs://..., hf://..., "
               "http(s)://... (listed through the server's index page); see --storage-options")

REMOTE_HELP = """\
Remote folders: the folder may be an fsspec URL (s3:// with pip install 'layerfilm[s3]', gs:// with
'layerfilm[gcs]', hf://, http(s):// whose index page lists the files; file:// is a local folder).
Only safetensors headers and the byte ranges of the tracked rows are fetched; a server that ignores
Range requests is an error, never a whole-file download. PyTorch pickles (.pt, .bin, .ckpt) cannot be
read by ranges and are skipped over a URL (convert them to .safetensors or copy the folder). The cache
keys a remote file by its ETag (or its size and modification time) from the folder's listing.
"""


def build_parser() -> argparse.ArgumentParser:
    from layerfilm import __version__

    parser = argparse.ArgumentParser(prog="layerfilm", description="Films of neural network layers evolving over training.")
    parser.add_argument("--version", action="version", version=f"layerfilm {__version__}",
                        help="print the version (layerfilm X.Y.Z) and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    r = sub.add_parser("render", help="render a film from a folder of checkpoints", description=RENDER_HELP + "\n" + REMOTE_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("folder", nargs="+", help=FOLDER_HELP + "; several: one film comparing them, the first the base "
                   "(see `layerfilm compare --help`)")
    r.add_argument("--out", required=True, help="output: film.webm | film.gif | film.mp4 | frames/ (PNG folder)")
    add_options(r, "render")
    s = sub.add_parser("scan", help="list the checkpoints a render would use, and what is wrong with the others",
                       description=SCAN_HELP + "\n" + REMOTE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("folder", help=FOLDER_HELP)
    add_options(s, "scan")
    _add_study_commands(sub)
    _add_watch(sub)
    return parser


def cmd_render(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    opts, _ = command_options(args)
    several = len(args.folder) > 1
    for name in ("names", "export_points"):
        if value(args, name) is not None and several == (name == "export_points"):
            raise OptionsError(f"{name}={value(args, name)}: for {'one run' if several else 'several runs'} only")
    if several:
        res = render_runs(args.folder, args.out, opts, value(args, "names"), progress=not value(args, "quiet"))
    else:
        res = render(args.folder[0], args.out, opts, export=value(args, "export_points"),
                     progress=not value(args, "quiet"))
    if value(args, "stats"):
        print(stats_table(res.trajectories))
    picked = f"; {to_flags(res.preset)}" if res.preset else ""
    print(f"wrote {show(res.out)} ({res.frames} frames from {res.keyframes} key frames{picked}) in "
          f"{time.perf_counter() - t0:.1f} s", file=sys.stderr)
    if res.fidelity is not None:
        print(f"shareable film: {res.fidelity.text()}", file=sys.stderr)
    _list_skipped(res.skipped)
    if "act_norm" in res.trajectories.stats and not value(args, "quiet"):
        from layerfilm.points.act_stats import ActivationStats

        traj = res.trajectories
        print(ActivationStats.from_arrays(traj.steps, traj.blocks, traj.stats).table(), file=sys.stderr)
    return 0


def _list_skipped(skipped: tuple[Checkpoint, ...]) -> None:
    """The skipped checkpoints again at the end, one a line, each with its problem."""
    if skipped:
        print(f"skipped {len(skipped)} checkpoint(s):", file=sys.stderr)
        for c in skipped:
            print(f"  {show(c.path)}: {printable(to_flags(c.problem or ''))}", file=sys.stderr)


def scan_table(ckpts: list[Checkpoint]) -> str:
    """Aligned text table, one checkpoint a line."""
    rows = [("step", "format", "path", "blocks", "dtype", "size", "problem")]
    rows += [("-" if c.step is None else str(c.step), c.format, show(c.path), str(c.blocks or "-"), c.dtype or "-",
              f"{c.size / 2**20:.1f} MiB" if c.size else "-", printable(to_flags(c.problem or ""))) for c in ckpts]
    return text_table(rows[0], rows[1:], left=range(7))


def cmd_scan(args: argparse.Namespace) -> int:
    v = {name: value(args, name) for name in ("final_step", "strict", "blocks", "deep", "storage_options", "json")}
    series = scan(args.folder, final_step=v["final_step"], strict=v["strict"], blocks_regex=v["blocks"], warn=False,
                  deep=v["deep"], storage_options=v["storage_options"], empty_ok=True)
    ckpts = sorted(series.checkpoints + series.skipped, key=lambda c: (c.step is None, c.step or 0, str(c.path)))
    if v["json"]:
        print(json.dumps([c.as_dict() for c in ckpts], indent=1))
    else:
        print(scan_table(ckpts))
    if not series.checkpoints:  # the table of problems, then the one line of the other commands
        raise no_usable(series.root, series.skipped)
    if not v["json"]:
        print(f"{len(series)} usable, {len(series.skipped)} skipped", file=sys.stderr)
    return 0


STABILITY_HELP = """\
Which blocks have settled and which still move, measured from the weights.

Per block (every tensor inside it, as one vector W) and per key frame: the relative update
||W_t - W_t-1|| / ||W_t|| (scaled to the median gap between key frames), the distance to the final
checkpoint ||W_t - W_T|| / ||W_T||, the norm of each tensor, the linear CKA between the block's points
(the film's neurons) and the same points at the final checkpoint, and their on-screen motion in the
film's projection (fraction of the panel width per key frame).

Each block's status is one of: barely moved (its total change ||W_0 - W_T|| / ||W_T|| is below 1%),
settled, or moving. A block settles at the first step after which (a) its distance to the final
checkpoint stays below --settle-threshold F times its distance at the first key frame, and (b) each
of its updates is below F times the median block's update at the same step (so a learning rate that
decays for every block does not settle them all); the last key frame does not count, so a block that
only gets there at the end never settles. The table is ranked by settling step.
--json prints a list of objects in that order: block, rank, settle_step (null: never),
settle_threshold, steps, relative_update, distance_to_final, norm, param_norm {tensor: series},
cka_to_final, motion (null where undefined, e.g. the first key frame's update), status ("settled",
"moving" or "barely moved").

Several folders (--names a,b,...): each run's settling side by side, a row per block; --json prints
{"runs": [NAME, ...], "stability": {NAME: [that run's list, as above]}}.

With --features activations (see `layerfilm render --help` for --model and --probe), the probe batch is
also run through every checkpoint, and the statistics of each block's output on all probe tokens come
alongside, per step: the mean token norm, mean, std, fraction near zero (|a| < --near-zero), and the
growth of the norm with depth (block l's norm over block l-1's; block 0's over its input; and the
geometric mean per block from the first block to the last). The text output adds one table per measure
(a row per key frame, a column per block) and the last key frame's table. --json adds to each block's
object: act_norm, act_mean, act_std, act_near_zero, act_growth (one value per step), act_hist (per step,
counts in the fixed symmetric log bins of act_hist_edges: the HOT chart), and, the same in every block,
act_threshold, act_input_norm and act_growth_per_block.
"""

STILLS_HELP = """\
Stills of the film's key frames side by side (matplotlib; .png, .svg or .pdf by extension).

Default: the first and the last key frame; --steps 0,2000 picks any key frames (one step gives one
frame). Every frame uses the film's fixed axes and colour scale, so the panels compare directly.

A run with optimizer state (optimizer.pt, a Lightning or nanoGPT training dict) also gets the update
ratio per block and step as a heatmap, written beside the still as X_update_ratio.png (.svg, .pdf);
this measures every block whole once (cached). A run without it gets one line saying why not.

Several folders (BASE OTHER ..., --names a,b,...): each block's cell holds every run's panels, run
after run, on one basis per block fitted on all runs together (as `layerfilm render BASE OTHER`). The
default steps are the first and last of any run; a run that saved no checkpoint at a step shows its
last key frame before it, and the panel's label names the run and the step it shows.
"""

REPORT_HELP = """\
A report on which layers stabilize: stills of the first and last key frame, the heatmap of relative
updates (blocks x steps, log colour scale, settling steps marked), each block's distance to the final
checkpoint, histograms over time of each block's weights (value bins up, steps across, colour
log(1 + count)), parameter-norm curves, and the settling table (see `layerfilm stability --help`).

report.html: one file, images embedded as data: URIs; it fetches nothing. A --film of at most 8 MB
is embedded too; a larger one, or any with --film-link, is linked by its path relative to the report
(with a note), so keep the film beside it. report.md: Markdown with the figures as
report_<name>.png beside it; --film is linked.

With --features activations the report adds the statistics of each block's output on the probe batch:
the table of the last key frame (norm, growth, mean, std, fraction near zero), activation histograms
over time per block (value bins on a symmetric log axis, colour log(1 + count), fastai's "colorful
dimension"), the mean token norm against depth at every key frame with the growth per block over
training (does the norm grow with depth, and by how much per block), and the fraction of activations
near zero over training.

Several folders (the first the base; --names a,b,...): the report comparing them: how each run is
compared (neuron by neuron where it shares the base's initialisation; else by distribution, or with
--features activations by 1 - CKA of the block outputs), the blocks ranked by how much they differ
(see `layerfilm compare --help`), a heatmap per run of its divergence from the base (blocks x common
steps, log colour), each run's settling side by side, and each block's weight norm, a line per run.
"""


VIEW_HELP = """\
The film as one self-contained, interactive HTML file: it draws the film's frames itself from the
key frames' coordinates (those --export-points writes), with the film's axes, colour scale, legend
and straight-line motion between key frames. It needs no network and no server: open it from disk.

Play/pause (space), a frame slider (arrows: a frame; shift+arrows: a key frame), speed; click a panel
to enlarge it (click again or Esc: back); hover a point for its neuron's index (a probe token's with
--features activations); the chart of each block's distance to the final key frame follows the
film's cursor, and a click on a panel or a curve picks the block. Under the slider: the loss and
learning rate the run logged (trainer_state.json, metrics.csv, TensorBoard), with the cursor.

Several folders: the film of `layerfilm render BASE OTHER ...` (each block's runs side by side on one
basis per block, one clock by step); a check box per run shows or hides its panels.

At a key frame each panel equals the film's frame there (see the README for the tolerance of large
films, whose coordinates are stored in 16 bits). Needs a browser with DecompressionStream (Chrome 80,
Firefox 113, Safari 16.4).
"""


def _study_parser(sub, name: str, help: str, description: str, out: str | None = None,
                  several: str = "") -> argparse.ArgumentParser:
    """A command on one run's Study; ``several``: what it does with several folders (none: one only)."""
    p = sub.add_parser(name, help=help, description=description + "\n" + REMOTE_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", nargs="+" if several else None,
                   help=FOLDER_HELP + (f"; several: {several}" if several else ""))
    if out:
        p.add_argument("--out", required=True, help=out)
    add_options(p, name)
    return p


COMPARE_HELP = """\
Compare runs with a base run, block by block: which blocks differ most (e.g. a run at 10x the learning
rate, another initialisation, another seed). Only the steps every run saved are compared.

Runs whose first checkpoint equals the base's (the tracked rows, bit for bit) share its initialisation
and are compared neuron by neuron: per block and step, ||W_run - W_base||_F / ||W_base||_F over every
matrix of the block. Runs that do not (and every run with --features activations) have no neuron
correspondence; they are compared by representation: 1 - linear CKA between the block outputs of the
two runs on the same probe tokens (the model is built as for `layerfilm render --features activations`).

The table ranks the blocks by their largest divergence at the last common step. --json prints
{"base", "runs", "shared_init": {run: bool}, "steps", "blocks": [{"block", "name", "divergence":
{run: [one value per common step]}, "final": {run: value}}]} with the blocks in rank order (null: a
checkpoint of that run could not be read; it is skipped in that run only).
"""


def _add_study_commands(sub) -> None:
    c = sub.add_parser("compare", help="which blocks differ most between a base run and other runs (or --json)",
                       description=COMPARE_HELP + "\n" + REMOTE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("folder", help="the base run: " + FOLDER_HELP)
    c.add_argument("others", nargs="+", metavar="other", help="the runs compared with it (folders or URLs)")
    add_options(c, "compare")
    _study_parser(sub, "stability", "table of which blocks have settled (or --json)", STABILITY_HELP,
                  several="each run's settling side by side")
    _study_parser(sub, "stills", "the first and last key frames (or --steps) side by side", STILLS_HELP,
                  out="output figure: X.png | X.svg | X.pdf", several="a block's runs side by side, the first the base")
    _study_parser(sub, "view", "the interactive film: one HTML file that plays, zooms and names neurons", VIEW_HELP,
                  out="film.html (self-contained; open it from disk)",
                  several="one page comparing them, the first the base (as `render BASE OTHER`)")
    _study_parser(sub, "serve", "serve the interactive film from 127.0.0.1, for films too large for one file",
                  "Serve the interactive film (see `layerfilm view --help`) on http://127.0.0.1:PORT/ until Ctrl-C:\n"
                  "the page and its coordinates as two responses, from memory; only this machine can reach it.\n")
    _study_parser(sub, "report", "HTML or Markdown report: stills, heatmap, HOT charts, norms, settling table", REPORT_HELP,
                  out="report.html (self-contained) | report.md (PNGs written beside it)",
                  several="the report comparing them, the first the base")


def cmd_stability(args: argparse.Namespace) -> int:
    opts, _ = command_options(args)
    if len(args.folder) > 1:
        runs = settling(args.folder, opts, value(args, "names"), progress=not value(args, "quiet"))
        print(settling_json(runs) if value(args, "json") else settling_table(runs))
        _list_skipped(tuple(c for st in runs.values() for c in st.skipped))
        return 0
    if value(args, "names") is not None:
        raise OptionsError(f"names={value(args, 'names')}: for several runs only")
    stab = Study.open(args.folder[0], opts, progress=not value(args, "quiet")).stability()
    print(stab.to_json() if value(args, "json") else stab.table())
    _list_skipped(stab.skipped)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    opts, probe = command_options(args)
    res = compare(args.folder, args.others, opts, value(args, "names"), probe, progress=not value(args, "quiet"))
    print(res.to_json() if value(args, "json") else res.table())
    _list_skipped(res.skipped)
    return 0


def cmd_stills(args: argparse.Namespace) -> int:
    opts, _ = command_options(args)
    folder = args.folder if len(args.folder) > 1 else args.folder[0]
    res = stills(folder, args.out, value(args, "keyframes"), opts, progress=not value(args, "quiet"),
                 names=value(args, "names"))
    print(f"wrote {show(args.out)} (steps {', '.join(f'{s:,}' for s in res.steps)})", file=sys.stderr)
    for path in res.files[1:]:
        print(f"wrote {show(path)} (update ratio per block and step, from the optimizer state)", file=sys.stderr)
    for note in res.notes:
        print(f"note: {note}", file=sys.stderr)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    opts, probe = command_options(args)
    if len(args.folder) > 1:
        for name in ("film", "film_link", "lossless_film", "interactive"):
            if value(args, name):
                raise OptionsError(f"{name}={value(args, name)}: for the report of one run only")
        runs = report_runs(args.folder, args.out, opts, value(args, "names"), probe, progress=not value(args, "quiet"))
        print(f"wrote {', '.join(map(show, runs.files))}", file=sys.stderr)
        _list_skipped(runs.skipped)
        return 0
    if value(args, "names") is not None:
        raise OptionsError(f"names={value(args, 'names')}: for several runs only")
    res = report(args.folder[0], args.out, value(args, "film"), opts, progress=not value(args, "quiet"),
                 film_link=value(args, "film_link"), interactive=value(args, "interactive"),
                 lossless_film=value(args, "lossless_film"))
    print(f"wrote {', '.join(map(show, res.files))}", file=sys.stderr)
    for note in res.notes:
        print(f"note: {note}", file=sys.stderr)
    return 0


def cmd_view(args: argparse.Namespace) -> int:
    from layerfilm.reports.viewer import view, view_runs

    t0 = time.perf_counter()
    opts, _ = command_options(args)
    quiet = value(args, "quiet")
    if len(args.folder) > 1:
        res = view_runs(args.folder, args.out, opts, value(args, "names"), progress=not quiet)
    elif value(args, "names") is not None:
        raise OptionsError(f"names={value(args, 'names')}: for several runs only")
    else:
        res = view(args.folder[0], args.out, opts, progress=not quiet)
    coords = "float32, exact" if res.coords == "f32" else "16-bit"
    runs = f" x {res.runs} runs" if res.runs > 1 else ""
    print(f"wrote {show(res.out)} ({res.size / 1e6:.1f} MB: {res.keyframes} key frames x {res.blocks} blocks{runs} x "
          f"{res.points} points, {coords}) in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from layerfilm.reports.viewer import serve

    opts, _ = command_options(args)
    try:
        serve(args.folder, opts, value(args, "port"), progress=not value(args, "quiet"),
              ready=lambda url: print(f"serving the film of {show(args.folder)} on {url} (Ctrl-C: stop)", file=sys.stderr,
                                      flush=True))
    except KeyboardInterrupt as e:  # Ctrl-C is how a server stops; SIGTERM stays an exit 143
        if _terminated(e):
            raise
        print("stopped", file=sys.stderr)
    return 0


WATCH_HELP = """\
Film a training run while it trains: poll FOLDER every --interval seconds (polling, not file system
events: cluster file systems and object stores send none), and whenever new checkpoints are complete,
read each one once (its tracked rows only) and rewrite the film, and the --stills, --json and
--export-points asked for, each renamed into place whole: a browser or another program always finds a
complete file. One line per new key frame: its step and how many blocks still move.

A checkpoint is complete once every file of it kept its size and modification time across two polls,
or its trainer's completion marker exists (trainer_state.json in a Trainer checkpoint-N/); Trainer's
tmp-checkpoint-* folders and hidden temporaries are never read. Key frames are only appended: a
checkpoint whose step is not after the last key frame's is skipped (a render of the folder includes it).

--refit (pca): doubling (default) refits the basis on all key frames so far (render --fit all) at 2,
3, 5, 9, 17, ... key frames (amortised O(1) a key frame; the live timeline doubles then too), turned
onto the film's points so no axis flips, and says "new basis at step N" in the legend and the printed
line; never fits it on the first key frame and keeps it (render --fit first): old frames never move,
and the final live film equals `layerfilm render FOLDER --fit first` with the same options; always
refits on all key frames at every update (render --fit all); every=K every K new key frames. A refit
re-projects from the tracked rows kept on scratch disk ($TMPDIR), never from the old checkpoints; the
overlay's settled marks, --json and --export-points need those rows too (each key frame's distance to
the newest). --json also gives each block's explained_variance: the share of the newest key frame's
variance its 2-D points show. --projection procrustes and umap take --refit always.

--film-layout live (default): axes and colour scale change only when the data leave them, the timeline
spans the next power of two of key frames, no settled marks: an update encodes only the new key frames'
segments of the film (kept beside it until watch ends; .webm encoded with --preset realtime unless
given). A .gif has one palette: it is re-encoded whole. --film-layout fit re-fits and re-encodes all.

Several folders (the first the base; --names a,b,...): the film of all runs (see `layerfilm render
--help`), projected again from the kept rows and rewritten whole at every update (--refit always,
--film-layout fit), and with --json {"runs", "shared_init", "stability": {run: [as above]}}; lines
start with the run's name.

Ctrl-C or SIGTERM: the update under way is finished, then watch exits 0 with complete outputs (a second
Ctrl-C stops at once; the outputs of the last finished update stay). Film options are render's (see
`layerfilm render --help`); --features activations and --final-step are render's only. At exit the key
frames go into the cache (--refit never or always, unless --no-cache): a render of the same checkpoints
with the same options (--fit first for never) then reads no checkpoint.
"""


def _add_watch(sub) -> None:
    w = sub.add_parser("watch", help="keep a film of a training folder up to date while it trains", description=WATCH_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    w.add_argument("folder", nargs="+", help="the training run's checkpoint folder (may be empty or missing at first); "
                   "several: the film of all of them, the first the base")
    w.add_argument("--out", required=True, help="output: film.webm | film.gif | film.mp4 | frames/ (PNG folder)")
    add_options(w, "watch")


@contextmanager
def _stop_requests() -> Iterator[list[int]]:
    """SIGINT/SIGTERM noted instead of raised (main thread only), so that the update under way finishes;
    a second one raises as usual (the outputs of the last finished update stay)."""
    got: list[int] = []

    def note(signum: int, frame: object) -> None:
        if got:
            raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()
        got.append(signum)

    try:
        old = {s: signal.signal(s, note) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread
        yield got
        return
    try:
        yield got
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def cmd_watch(args: argparse.Namespace) -> int:
    from layerfilm.live.film import watch

    opts, live = command_options(args)
    if len(args.folder) > 1:
        from layerfilm.live.runs import watch_runs

        with _stop_requests() as got:
            runs = watch_runs(args.folder, args.out, opts, live, value(args, "names"), stop=lambda: bool(got),
                              progress=not value(args, "quiet"), echo=lambda line: print(line, flush=True))
        print(f"watched {len(args.folder)} runs: {runs.keyframes} key frame(s) in {show(args.out)}", file=sys.stderr)
        _list_skipped(tuple(runs.skipped))
        return 0
    if value(args, "names") is not None:
        raise OptionsError(f"names={value(args, 'names')}: for several runs only")
    with _stop_requests() as got:
        film = watch(args.folder[0], args.out, opts, live, stop=lambda: bool(got), progress=not value(args, "quiet"),
                     echo=lambda line: print(line, flush=True))
    if value(args, "stats") and film.traj is not None:
        print(stats_table(film.traj))
    print(f"watched {show(args.folder[0])}: {len(film.steps)} key frame(s) in {show(args.out)}", file=sys.stderr)
    _list_skipped(tuple(film.skipped))
    return 0


COMMANDS = {"render": cmd_render, "compare": cmd_compare, "scan": cmd_scan, "stability": cmd_stability,
            "stills": cmd_stills, "report": cmd_report, "watch": cmd_watch, "view": cmd_view, "serve": cmd_serve}


def _one_line_warnings(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {printable(to_flags(str(message)))}", file=sys.stderr)


class Terminated(KeyboardInterrupt):
    """SIGTERM (kill, timeout, docker stop), raised like Ctrl-C so that every output's cleanup runs."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated()


def _terminated(e: BaseException) -> bool:
    """A KeyboardInterrupt raised for SIGTERM, here or by the entry point (layerfilm_main)."""
    return type(e).__name__ == "Terminated"


@contextmanager
def _signals_as_interrupts() -> Iterator[None]:
    """SIGTERM handled as SIGINT for the length of a command (main thread only)."""
    try:
        old = signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _error(text: str) -> int:
    print(f"layerfilm: error: {printable(text)}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):  # undecodable file names print escaped, never raise
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    try:
        with _signals_as_interrupts():
            args = build_parser().parse_args(argv)  # option converters such as --size raise LayerfilmError
            warnings.showwarning = _one_line_warnings
            with session():  # one pool of worker processes for the whole command
                return COMMANDS[args.command](args)
    except LayerfilmError as e:
        return _error(to_flags(str(e)))
    except KeyboardInterrupt as e:
        what, code = ("terminated", 143) if _terminated(e) else ("interrupted", 130)
        print(f"layerfilm: {what}; nothing half-written was left", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
