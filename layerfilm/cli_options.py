"""The command line's shared options: the flags of render, watch and the study commands (stills,
stability, report), and how they become the API's option objects (FilmOptions, WeightSpec,
ActivationSpec). layerfilm.cli builds the commands from them."""

from __future__ import annotations

import argparse

from .animate import TIMES
from .encode import EncodeOptions
from .engine import ENGINES, check_jobs
from .errors import OptionsError
from .features.weights import LAYOUTS, WeightSpec
from .film import FilmOptions
from .layout import LAYOUTS as FILM_LAYOUTS
from .legend import VMAX_PERCENTILE
from .projection import FITS, PROJECTIONS, UmapOptions
from .raster import Style, parse_size
from .scan import parse_steps


def frame_size(text: str) -> tuple[int, int]:
    return parse_size(text)


def add_film_options(r: argparse.ArgumentParser) -> None:
    """The options of a film: one definition for render and watch."""
    g = r.add_argument_group("which checkpoints")
    add_selection(g)
    checkpoint_options(g)
    g = r.add_argument_group("what to film")
    g.add_argument("--features", choices=("weights", "activations"), default="weights",
                   help="points are weight rows (default) or block outputs on a probe batch (activations)")
    add_points(g)
    add_activations(r.add_argument_group("activations (with --features activations)"))
    g = r.add_argument_group("projection and time")
    add_projection_details(g)
    g.add_argument("--fps", type=float, default=15.0, help="frames per second (default 15)")
    g.add_argument("--seconds-per-keyframe", type=float, default=1.0, metavar="S", help="seconds between key frames with "
                   "--time keys (default 1); the film has (T-1) x round(fps x S) + 1 frames whatever --time says")
    g.add_argument("--time", choices=TIMES, default="keys", help="where key frames fall in the film: keys (default) = one "
                   "every --seconds-per-keyframe; steps = film time proportional to the step; log-steps = proportional to "
                   "log(1 + step - first step) (Pythia-style 0, 1, 2, 4, ..., 512, 1000, 2000 spread evenly); every key "
                   "frame keeps a frame of its own; the legend's timeline marks them")
    g = r.add_argument_group("look and encoding")
    add_look(g)
    add_no_legend(g)
    g.add_argument("--film-layout", choices=FILM_LAYOUTS, default="fit", help="axes, colour scale, legend and timeline: "
                   "fit (render's default) = fitted to the whole film; live (watch's default) = changes only rarely as key "
                   "frames are added (axes and colour scale on a coarse grid, only widened; the timeline spans the next power "
                   "of two of key frames; no counts of key frames in the legend), so a live film re-encodes only the new "
                   "frames; `render --film-layout live` draws the frames of the live film")
    g.add_argument("--no-overlay", action="store_true", help="no per-panel overlay; by default a bar along the bottom "
                   "of each panel shows how much the block still moves (relative update of the filmed points, log scale "
                   "over 3 decades below the film's fastest) and the panel says 'settled' in green from its settling "
                   "step on; measured on the film's own points (no extra reading; `layerfilm stability` measures "
                   "whole blocks)")
    add_settle(g)
    g.add_argument("--crf", type=int, default=18, help="quality of lossy .mp4 output, 0-51, lower is better (default 18); .webm "
                   "is always lossless")
    g.add_argument("--encoder-threads", type=int, default=0, metavar="N", help="ffmpeg encoder threads (default 0: ffmpeg "
                   "decides, one per core; when --jobs encodes several film segments at once, they share the cores); fewer "
                   "leaves cores to other work, the film takes longer")
    g.add_argument("--preset", default="", metavar="NAME", help="encoder speed against file size: .webm good or realtime "
                   "(still lossless, ~5x faster to encode, ~20%% larger; default: good when its estimated encoding time for "
                   "the film's frames on this machine's cores is at most 20 s, else realtime, said in the output line); .mp4 "
                   "an x264 preset, ultrafast..veryslow (default medium)")
    g.add_argument("--export-points", default=None, metavar="FILE.npz", help="also write key-frame coordinates: steps (T), "
                   "blocks (L), point_ids (L,N), xy (T,L,N,2)")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    add_engine(r)
    add_cache(r)


def add_cache(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("cache", "What is computed from the checkpoints (the film's key frames, the whole-block\n"
                             "measures) is kept on disk, keyed by each checkpoint's path, size and modification\n"
                             "time and by the options that change it, so a re-render with another --cmap, --size,\n"
                             "--fps or output, and stills, report or stability after a render, do not read the\n"
                             "checkpoints again.")
    g.add_argument("--cache", default=None, metavar="DIR", help="cache folder (default $LAYERFILM_CACHE, else "
                   "~/.cache/layerfilm; trimmed to $LAYERFILM_CACHE_MAX_MB, default 4096)")
    g.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")


def add_activations(g) -> None:
    """The options that build the model and the probe batch (render, stability, report)."""
    g.add_argument("--model", default=None, metavar="MODULE:FN", help="build the model with this function: "
                   "package.module:make_model or path/file.py:make_model, returning a torch.nn.Module (given the first "
                   "checkpoint's path if it takes an argument); default: from config.json beside the checkpoints (a Llama by "
                   "layerfilm's own forward pass, any other architecture with transformers)")
    g.add_argument("--probe", default=None, metavar="FILE", help="probe batch: a UTF-8 text file (tokenised with the "
                   "checkpoint's tokenizer files when present, else as bytes), or a .pt/.npy of token ids, 1-D or (sequences, "
                   "tokens); default: a short bundled text")
    g.add_argument("--seq-len", type=int, default=None, metavar="T", help="tokens per probe sequence (default: 128, or the "
                   "model's context if shorter)")
    g.add_argument("--batch-size", type=int, default=8, metavar="B", help="probe sequences per forward pass (default 8); memory "
                   "is one model + one batch")
    g.add_argument("--device", default="auto", help="auto (default: cuda when available), cpu or cuda")
    g.add_argument("--devices", default=None, metavar="LIST", help="spread the checkpoints over one long-lived worker per "
                   "device (a process each; with --engine dask a worker holding a GPU resource), each building the model "
                   "once: GPU indices, e.g. 0,1,2,3 (or cuda:0,cuda:1), or cpu,cpu for two CPU workers standing in for "
                   "devices; the points and statistics are the same as on one device. Default: with a CUDA device and "
                   "several visible GPUs, all of them; else one. With --engine dask --address: that many workers of the "
                   "cluster, each on its own GPU (or CPU); without it the pass runs here")
    g.add_argument("--dtype", default="float32", help="float32 (default), bfloat16 or float16")
    g.add_argument("--near-zero", type=float, default=0.05, metavar="X", help="activations with |a| < X count as near zero "
                   "(default 0.05)")


def add_study_features(p: argparse.ArgumentParser, what: str) -> None:
    g = p.add_argument_group("activations (with --features activations)")
    g.add_argument("--features", choices=("weights", "activations"), default="weights",
                   help=f"weights (default): {what} from the weights only; activations: also run the probe batch through "
                   "every checkpoint and add each block's output statistics per step (mean token norm, mean, std, "
                   "fraction near zero, histograms, growth of the norm with depth)")
    add_activations(g)


def add_selection(g) -> None:
    g.add_argument("--every", type=int, default=1, metavar="K", help="keep every K-th checkpoint (default 1: all)")
    g.add_argument("--steps", default=None, metavar="A:B", help="keep steps A..B inclusive; either side may be empty (e.g. "
                   "1000:)")


def add_points(g) -> None:
    g.add_argument("--param", default=None, help="matrix inside each block, e.g. mlp.c_fc.weight, attn.c_attn or "
                   "self_attn.in_proj ('.weight' / '_weight' optional); default: the MLP's input projection (by its usual "
                   "names, linear1 of nn.TransformerEncoderLayer included; else the up matrix [h, d] of the block's one "
                   "up/down pair of linears)")
    g.add_argument("--points", type=int, default=512, metavar="N", help="at most N neurons per block, chosen once with --seed "
                   "and tracked at every step (default 512)")
    g.add_argument("--seed", type=int, default=0, help="seed for choosing the points and for umap (default 0)")
    blocks_option(g)
    g.add_argument("--layout", choices=LAYOUTS, default="auto", help="storage of the matrix: out-in (nn.Linear), in-out (GPT-2 "
                   "Conv1D) or auto (default)")
    g.add_argument("--projection", default="pca", choices=PROJECTIONS.names(),
                   help="2-D projection aligned over time: pca (default) = one basis per block shared by all key frames; "
                   "procrustes = each key frame's own PCA, rotated/mirrored onto the previous frame (orthogonal Procrustes); "
                   "umap = AlignedUMAP over the key frames (identity relation: the same neurons), seeded by --seed")


def add_engine(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("where the work runs", "The weights are read and projected in tasks of a few blocks each (all key\n"
                             "frames); the results do not depend on where or in how many tasks they run.")
    g.add_argument("--jobs", type=int, default=0, metavar="N", help="tasks at once for the whole run: block chunks of the "
                   "weights, umap layouts, and a film's segments (a film of at least 4 s is cut into up to N segments, each "
                   "drawn and encoded by its own worker, then joined without re-encoding: a .webm, .gif or PNG film has the "
                   "same frames whatever N, an .mp4 close ones); default 0: one per core this process may use (with --engine "
                   "dask --address, the cluster's threads); with --engine local a small run stays in this process; the "
                   "points do not depend on it")
    g.add_argument("--engine", choices=ENGINES.names(), default="local", help="local (default): worker processes on this "
                   "machine; dask: a Dask cluster (pip install 'layerfilm[dask]'), the one at --address or else a LocalCluster "
                   "of --jobs processes; its workers must see the checkpoints under the same path")
    g.add_argument("--address", default=None, metavar="URL", help="--engine dask: the scheduler, e.g. tcp://HOST:8786 (start "
                   "one with `dask scheduler` and workers with `dask worker tcp://HOST:8786`); default: a LocalCluster")


def add_look(g) -> None:
    g.add_argument("--size", type=frame_size, default=(1280, 720), metavar="WxH",
                   help="frame size in pixels, even numbers (default 1280x720)")
    g.add_argument("--cmap", default="magma", help="matplotlib colormap for density (default magma), on a log(1 + count) "
                   f"scale whose top is fixed for the film: the {VMAX_PERCENTILE:g}th percentile of the key frames' densest "
                   "bins, so that every key frame uses most of it; denser bins take the top colour (the colour bar says in "
                   "how many key frames)")


def add_no_legend(g) -> None:
    g.add_argument("--no-legend", action="store_true", help="no legend; by default the frame says what is filmed (matrix, "
                   "neurons sampled of how many, weights or activations), the projection and the variance its axes "
                   "explain, the run's folder, a colour bar (points per bin, log scale, absolute counts), what the bottom "
                   "bar measures, and a timeline of the key frames")


def add_settle(g) -> None:
    g.add_argument("--settle-threshold", type=float, default=0.1, metavar="F",
                   help="a block has settled from the first step after which its distance to the final checkpoint "
                   "stays below F times its distance at the first key frame (default 0.1)")


def weight_spec(args: argparse.Namespace) -> WeightSpec:
    return WeightSpec(param=args.param, points=args.points, seed=args.seed, blocks_regex=args.blocks, layout=args.layout)


def checkpoint_options(g) -> None:
    g.add_argument("--storage-options", default=None, metavar="JSON",
                   help="for a URL folder: a JSON object passed to fsspec, e.g. '{\"endpoint_url\": "
                   "\"http://127.0.0.1:9000\"}' for an S3-compatible server, '{\"anon\": true}', or credentials "
                   "(s3fs also honours AWS_ENDPOINT_URL and the usual AWS variables)")
    g.add_argument("--final-step", type=int, default=None, metavar="N",
                   help="use a final model saved at the folder's root (no step in its name) as step N")
    g.add_argument("--strict", action="store_true", help="an unusable checkpoint is an error (exit 2) instead of a skip")


def blocks_option(g) -> None:
    g.add_argument("--blocks", default=None, metavar="REGEX", help="override block detection: a regex whose first "
                   "group is the block index, e.g. 'net\\.stage(\\d+)\\.'")


def add_projection_details(g) -> None:
    g.add_argument("--fit", default="all", choices=FITS, help="pca only: fit the basis on all key frames pooled (default), the "
                   "first or the last")
    g.add_argument("--umap-neighbors", type=int, default=15, metavar="K", help="umap: n_neighbors of each key frame's graph "
                   "(default 15)")
    g.add_argument("--umap-min-dist", type=float, default=0.1, metavar="D", help="umap: min_dist, how tightly points pack "
                   "(default 0.1)")
    g.add_argument("--umap-alignment", type=float, default=0.01, metavar="W", help="umap: alignment_regularisation, pull of a "
                   "point to its place in nearby key frames (default 0.01)")
    g.add_argument("--umap-stride", type=int, default=0, metavar="K", help="umap: fit AlignedUMAP jointly on every K-th key "
                   "frame (and the last) and place the frames between by a short aligned optimisation anchored to both; 1 = "
                   "every key frame jointly; default 0 = auto (at most 8 jointly fitted)")
    g.add_argument("--stats", action="store_true", help="print a per-block table to stdout: mean and max displacement of points "
                   "between consecutive key frames relative to the cloud's RMS spread, and for pca/procrustes the variance "
                   "explained by the two axes (also in --export-points)")
def activation_spec(args: argparse.Namespace, weights_too: bool = False):
    """The ActivationSpec of --features activations, or None (imported only then: it needs torch).
    weights_too: the command also measures the weights, so --param and --layout still mean something."""
    if getattr(args, "features", "weights") != "activations":
        return None
    if not weights_too and (args.param is not None or args.layout != "auto"):
        raise OptionsError("--param and --layout choose weights; they do nothing with --features activations")
    from .features.activations import ActivationSpec

    return ActivationSpec(model=args.model, probe=args.probe, points=args.points, seed=args.seed, seq_len=args.seq_len,
                          batch_size=args.batch_size, device=args.device, devices=args.devices or (), dtype=args.dtype,
                          near_zero=args.near_zero,
                          blocks_regex=args.blocks)


def film_options(args: argparse.Namespace) -> FilmOptions:
    w, h = args.size
    check_jobs(args.jobs)  # before UmapOptions, which takes it too
    return FilmOptions(
        weights=weight_spec(args),
        activations=activation_spec(args),
        projection=args.projection,
        fit=args.fit,
        umap=UmapOptions(neighbors=args.umap_neighbors, min_dist=args.umap_min_dist, alignment=args.umap_alignment,
                         stride=args.umap_stride, jobs=args.jobs, seed=args.seed),
        fps=args.fps,
        seconds_per_keyframe=args.seconds_per_keyframe,
        time=args.time,
        legend=not args.no_legend,
        style=Style(width=w, height=h, cmap=args.cmap),
        encode=EncodeOptions(crf=args.crf, threads=args.encoder_threads, preset=args.preset),
        every=args.every,
        steps=parse_steps(args.steps) if args.steps else (None, None),
        final_step=args.final_step,
        strict=args.strict,
        cache=not args.no_cache,
        cache_dir=args.cache,
        overlay=not args.no_overlay,
        settle_threshold=args.settle_threshold,
        jobs=args.jobs,
        engine=args.engine,
        address=args.address,
        storage_options=args.storage_options,
        film_layout=args.film_layout,
    )
