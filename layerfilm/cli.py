"""The command line. Parses options, calls the API, and turns LayerfilmError into one line (exit 2)."""

from __future__ import annotations

import argparse
import sys
import time
import warnings

from .encode import EncodeOptions
from .errors import LayerfilmError, OptionsError
from .features.weights import LAYOUTS, WeightSpec
from .film import FilmOptions, render
from .project import PROJECTIONS
from .render import Style, parse_size
from .scan import parse_steps

RENDER_HELP = """\
Render a film of how every decoder block's weights (or activations) move over training.

Checkpoints: *.safetensors files whose names hold the step (step_000100.safetensors,
step-100.safetensors, 100.safetensors) or Hugging Face Trainer folders (checkpoint-N/model.safetensors),
sorted by step numerically. Blocks are found by their names (transformer.h.N., model.layers.N.,
gpt_neox.layers.N., blocks.N., layers.N., ...).

Points are the output neurons of one matrix per block (--param): rows of an nn.Linear weight stored
[out, in]; columns of a GPT-2 Conv1D weight stored [in, out] (detected when c_attn is [d, 3d];
force with --layout). Each block's points are projected to 2-D with one PCA basis shared by all key
frames, so the axes never flip or jump; points move in straight lines between key frames.

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


def _size(text: str) -> tuple[int, int]:
    return parse_size(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="layerfilm", description="Films of neural network layers evolving over training.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    r = sub.add_parser("render", help="render a film from a folder of checkpoints", description=RENDER_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("folder", help="folder that holds the checkpoints")
    r.add_argument("--out", required=True, help="output: film.webm | film.gif | film.mp4 | frames/ (PNG folder)")
    g = r.add_argument_group("which checkpoints")
    g.add_argument("--every", type=int, default=1, metavar="K", help="keep every K-th checkpoint (default 1: all)")
    g.add_argument("--steps", default=None, metavar="A:B", help="keep steps A..B inclusive; either side may be empty (e.g. 1000:)")
    g = r.add_argument_group("what to film")
    g.add_argument("--features", choices=("weights", "activations"), default="weights",
                   help="points are weight rows (default) or block outputs on a probe batch (activations)")
    g.add_argument("--param", default=None, help="matrix inside each block, e.g. mlp.c_fc.weight or attn.c_attn "
                   "('.weight' optional); default: the MLP's input projection")
    g.add_argument("--points", type=int, default=512, metavar="N", help="at most N neurons (or probe tokens) per block, chosen once with --seed and tracked at every step (default 512)")
    g.add_argument("--seed", type=int, default=0, help="seed for choosing the points (default 0)")
    g.add_argument("--blocks", default=None, metavar="REGEX", help="override block detection: a regex whose first group is the block index, e.g. 'net\\.stage(\\d+)\\.'")
    g.add_argument("--layout", choices=LAYOUTS, default="auto", help="storage of the matrix: out-in (nn.Linear), in-out (GPT-2 Conv1D) or auto (default)")
    g = r.add_argument_group("activations (with --features activations)")
    g.add_argument("--model", default=None, metavar="MODULE:FN", help="build the model with this function: package.module:make_model or "
                   "path/file.py:make_model, returning a torch.nn.Module (given the first checkpoint's path if it takes an "
                   "argument); default: from config.json beside the checkpoints, with transformers")
    g.add_argument("--probe", default=None, metavar="FILE", help="probe batch: a UTF-8 text file (tokenised with the checkpoint's "
                   "tokenizer files when present, else as bytes), or a .pt/.npy of token ids, 1-D or (sequences, tokens); "
                   "default: a short bundled text")
    g.add_argument("--seq-len", type=int, default=None, metavar="T", help="tokens per probe sequence (default: 128, or the model's context if shorter)")
    g.add_argument("--batch-size", type=int, default=8, metavar="B", help="probe sequences per forward pass (default 8); memory is one model + one batch")
    g.add_argument("--device", default="auto", help="auto (default: cuda when available), cpu or cuda")
    g.add_argument("--dtype", default="float32", help="float32 (default), bfloat16 or float16")
    g.add_argument("--near-zero", type=float, default=0.05, metavar="X", help="activations with |a| < X count as near zero (default 0.05)")
    g = r.add_argument_group("projection and time")
    g.add_argument("--projection", default="pca", choices=PROJECTIONS.names(), help="2-D projection aligned over time (default pca: one basis per block for all key frames)")
    g.add_argument("--fps", type=float, default=15.0, help="frames per second (default 15)")
    g.add_argument("--seconds-per-keyframe", type=float, default=1.0, metavar="S", help="seconds between key frames (default 1)")
    g = r.add_argument_group("look and encoding")
    g.add_argument("--size", type=_size, default=(1280, 720), metavar="WxH", help="frame size in pixels, even numbers (default 1280x720)")
    g.add_argument("--cmap", default="magma", help="matplotlib colormap for density, log(1+count) scaled (default magma)")
    g.add_argument("--crf", type=int, default=18, help="quality of lossy .mp4 output, 0-51, lower is better (default 18); .webm is always lossless")
    g.add_argument("--encoder-threads", type=int, default=0, metavar="N", help="ffmpeg encoder threads (default 0: ffmpeg decides)")
    g.add_argument("--export-points", default=None, metavar="FILE.npz", help="also write key-frame coordinates: steps (T), blocks (L), point_ids (L,N), xy (T,L,N,2)")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def _activation_spec(args: argparse.Namespace):
    """The ActivationSpec of --features activations, or None (imported only then: it needs torch)."""
    if args.features != "activations":
        return None
    if args.param is not None or args.layout != "auto":
        raise OptionsError("--param and --layout choose weights; they do nothing with --features activations")
    from .features.activations import ActivationSpec

    return ActivationSpec(model=args.model, probe=args.probe, points=args.points, seed=args.seed, seq_len=args.seq_len,
                          batch_size=args.batch_size, device=args.device, dtype=args.dtype, near_zero=args.near_zero,
                          blocks_regex=args.blocks)


def _film_options(args: argparse.Namespace) -> FilmOptions:
    w, h = args.size
    return FilmOptions(
        weights=WeightSpec(param=args.param, points=args.points, seed=args.seed, blocks_regex=args.blocks, layout=args.layout),
        activations=_activation_spec(args),
        projection=args.projection,
        fps=args.fps,
        seconds_per_keyframe=args.seconds_per_keyframe,
        style=Style(width=w, height=h, cmap=args.cmap),
        encode=EncodeOptions(fps=args.fps, crf=args.crf, threads=args.encoder_threads),
        every=args.every,
        steps=parse_steps(args.steps) if args.steps else (None, None),
    )


def cmd_render(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    res = render(args.folder, args.out, _film_options(args), export=args.export_points, progress=not args.quiet)
    print(f"wrote {res.out} ({res.frames} frames from {res.keyframes} key frames) in {time.perf_counter() - t0:.1f} s",
          file=sys.stderr)
    if "act_norm" in res.trajectories.stats and not args.quiet:
        from .features.act_stats import ActivationStats

        traj = res.trajectories
        print(ActivationStats.from_arrays(traj.steps, traj.blocks, traj.stats).table(), file=sys.stderr)
    return 0


COMMANDS = {"render": cmd_render}


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
