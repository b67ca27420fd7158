"""The interactive film: one self-contained HTML file (``layerfilm view``, ``report --interactive``).

The page draws the film's frames itself, in a canvas per panel, from the exported key-frame
coordinates (``Trajectories.xy``, what ``--export-points`` writes), with the film's own renderer
numbers: each panel's bins, the projection -> bin mapping (float32, ``Renderer.bin_mapping``), the
bilinear splat, the log colour scale with its fixed top and the colormap's table, the per-key-frame
zoom of activation films, the timeline and the overlay's bars. So at a key frame a panel's bins are the
film's drawing area at that key (tested in a browser: exact with float32 coordinates; with 16-bit
coordinates within the tolerance stated in the README), and between key frames points move on the
film's straight lines.

Besides the film's own numbers the page gets each run's logged loss and learning rate (the film's strip,
layerfilm.draw.curves, drawn under the slider with the cursor) and, for a film of several runs
(:func:`view_runs`), the runs' names: it is ``render BASE OTHER``'s film (layerfilm.compare.runs_frames),
and a check box per run shows or hides its panels.

Nothing is fetched: the coordinates travel inside the file as base64 of deflated bytes (the browser's
``DecompressionStream`` inflates them), either float32 (exact) or, for large films, 16-bit quantised
per block and axis over the block's range, delta-coded along time (smooth motion deflates well): 128
blocks x 179 key frames x 512 points fit in tens of MB (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import base64
import json
import zlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from layerfilm.compare import check_runs_film, open_runs, run_names, runs_frames
from layerfilm.draw.curves import Strip
from layerfilm.draw.frame_layout import note_text
from layerfilm.draw.raster import FLOOR, Renderer
from layerfilm.errors import OptionsError
from layerfilm.film import FilmFrames, caption, film_frames
from layerfilm.film_options import ViewOptions
from layerfilm.io.logs import Curve, RunLogs
from layerfilm.io.outputs import atomic_output, check_output_path
from layerfilm.io.storage import local_inputs
from layerfilm.parallel.engines import session
from layerfilm.projection import Trajectories
from layerfilm.study import Study

COORDS = ("auto", "f32", "u16")
EXACT_MAX_BYTES = 16 << 20  # "auto" keeps float32 coordinates (exact) up to this many raw bytes
U16_MAX = 65535
MARK = "/*LAYERFILM_DATA*/"  # where the template takes the film's numbers
BLOB = "LAYERFILM_XY"  # and its coordinates
CURVE_POINTS = 2000  # a logged curve longer than this travels as each of this many runs' lowest and highest


@dataclass(frozen=True)
class Shown:
    """What a page shows: the key frames ``traj`` as the film ``frames`` draws them; the loss and learning
    rate each run logged (``logs``, one per run, None: none found); for a film of several runs their
    names (``runs``: panel l is run ``l % len(runs)``, as the film's cells hold a block's runs side by side)."""

    traj: Trajectories
    frames: FilmFrames
    logs: tuple[RunLogs | None, ...] = ()
    runs: tuple[str, ...] = ()

    @classmethod
    def of(cls, traj: Trajectories, opts: ViewOptions, logs: RunLogs | None = None) -> Shown:
        """One run's film as ``render`` draws it (with the strip of ``logs``, which takes its room in the layout)."""
        return cls(traj, film_frames(traj, opts, logs if opts.curves else None), (logs if opts.curves else None,))


@dataclass(frozen=True)
class ViewResult:
    out: Path
    size: int  # bytes written
    coords: str  # f32 (exact) or u16 (quantised)
    keyframes: int
    blocks: int
    points: int
    runs: int = 1


def check_coords(coords: str) -> None:
    if coords not in COORDS:
        raise OptionsError(f"coords={coords!r}: choose one of {', '.join(COORDS)}")


def pick_coords(traj: Trajectories, coords: str = "auto") -> str:
    """f32 or u16: ``coords``, or for "auto" f32 up to EXACT_MAX_BYTES of float32 coordinates."""
    check_coords(coords)
    if coords != "auto":
        return coords
    return "f32" if traj.xy.size * 4 <= EXACT_MAX_BYTES else "u16"


def encode_xy(xy: np.ndarray, coords: str) -> tuple[bytes, dict]:
    """(deflated bytes, how to read them) of key frames ``xy`` (T, L, N, 2).

    f32: the float32 values, their 4 bytes split into 4 planes (similar bytes together deflate better).
    u16: per block and axis, ``round((x - lo) / (hi - lo) * 65535)`` over the block's range [lo, hi],
    then the difference to the previous key frame (mod 2^16), in 2 byte planes (low, high)."""
    xy = np.ascontiguousarray(xy, np.float32)
    if coords == "f32":
        planes = xy.view(np.uint8).reshape(-1, 4).T
        return zlib.compress(np.ascontiguousarray(planes).tobytes(), 6), {"coords": "f32"}
    lo = xy.min(axis=(0, 2)).astype(np.float64)  # (L, 2)
    hi = xy.max(axis=(0, 2)).astype(np.float64)
    span = np.where(hi > lo, hi - lo, 1.0)
    q = np.rint((xy - lo[None, :, None]) / span[None, :, None] * U16_MAX).astype(np.uint16)
    delta = q.copy()
    delta[1:] -= q[:-1]  # uint16 wraps: the browser adds them back mod 2^16
    planes = delta.reshape(-1).view(np.uint8).reshape(-1, 2).T
    step = span / U16_MAX
    return zlib.compress(np.ascontiguousarray(planes).tobytes(), 6), {"coords": "u16", "lo": lo.tolist(),
                                                                       "step": step.tolist()}


def decode_xy(blob: bytes, how: dict, shape: tuple[int, ...]) -> np.ndarray:
    """What the page decodes from :func:`encode_xy` (for tests and tools; the page does the same in JS)."""
    raw = np.frombuffer(zlib.decompress(blob), np.uint8)
    if how["coords"] == "f32":
        return np.ascontiguousarray(raw.reshape(4, -1).T).view(np.float32).reshape(shape)
    q = np.ascontiguousarray(raw.reshape(2, -1).T).view(np.uint16).reshape(shape)
    q = np.cumsum(q, axis=0, dtype=np.uint16)
    lo, step = np.asarray(how["lo"]), np.asarray(how["step"])
    return (lo[None, :, None] + q * step[None, :, None]).astype(np.float32)


def _f32(a: np.ndarray) -> list:
    """float32 values as JSON numbers that read back to the same float32 (Math.fround in the page)."""
    return np.asarray(a, np.float32).astype(np.float64).tolist()


def _grid(r: Renderer) -> tuple[int, int]:
    cols = len(np.unique(r.panels[:, 0]))
    return -(-len(r.panels) // cols), cols


def _labels(traj: Trajectories) -> dict:
    """How the page names a point on hover: a neuron (its row/column in the filmed matrix) or a probe token."""
    subject = traj.subject
    if subject is not None and subject.kind == "activations":
        return {"unit": "probe token", "what": "block output"}
    what = subject.what if subject is not None else "the filmed matrix"
    return {"unit": "neuron", "what": what}


def thin(c: Curve) -> dict:
    """A curve as the page draws it: every point, or past CURVE_POINTS the first, the last, and the lowest
    and highest of each of CURVE_POINTS runs of points (a polyline through them covers the same pixels)."""
    steps, values = c.steps, c.values
    if len(steps) > CURVE_POINTS:
        runs = np.array_split(np.arange(len(steps)), CURVE_POINTS)
        keep = np.unique([0, len(steps) - 1, *(i for r in runs for i in (r[values[r].argmin()], r[values[r].argmax()]))])
        steps, values = steps[keep], values[keep]
    return {"name": c.name, "steps": steps.tolist(), "values": np.asarray(values, np.float64).tolist()}


def curves_data(shown: Shown) -> list[dict]:
    """Each run's loss and learning rate over the film's steps (cut as the film's strip cuts them), with
    the strip's words for them; runs without logs are left out."""
    out = []
    for name, logs in zip(shown.runs or ("",), shown.logs):
        strip = Strip.of(logs, shown.traj.steps)
        if strip is not None:
            out.append({"run": name, "labels": [t for t, _ in strip.labels()],
                        **{k: None if c is None else thin(c) for k, c in (("loss", strip.loss), ("lr", strip.lr))}})
    return out


def viewer_data(shown: Shown, opts: ViewOptions, tokens: list[str] | None = None) -> dict:
    """The film's numbers the page draws from (everything but the coordinates)."""
    traj, frames = shown.traj, shown.frames
    r = frames.renderer
    rows, cols = _grid(r)
    tl = frames.timeline
    T = len(traj.steps)
    o = frames.overlay
    dist = traj.stats.get("point_distance")
    return {
        "title": r.style.title,
        "T": T, "L": len(traj.blocks), "N": int(traj.xy.shape[2]),
        "steps": [int(s) for s in traj.steps],
        "captions": [caption(traj.steps, k, 0.0, frames.time, frames.key_of) for k in range(T)],
        "time": frames.time,
        "key_of": frames.key_of,
        "blocks": [int(b) for b in traj.blocks],
        "labels": r.labels,
        "point_ids": np.asarray(traj.point_ids).tolist(),
        "point": _labels(traj),
        "tokens": tokens,
        "bins": list(r.bins),
        "cell": r.cell,
        "grid": [rows, cols],
        "size": [r.style.width, r.style.height],
        "scale": _f32(r.bin_mapping()[0]),  # (L, 2) float32, exactly the film's
        "shift": _f32(r.bin_mapping()[1]),
        "zoom": None if r.zoom is None else np.asarray(r.zoom, np.float64).tolist(),
        "vmax": float(r.vmax if r.vmax is not None else 2.0),
        "clipped": int(r.clipped),
        "clip_note": note_text(0, r.clipped, r.keyframes) if r.clipped else "",
        "origin": np.asarray(r.origin).tolist(),
        "curves": curves_data(shown),
        "runs": list(shown.runs),
        "floor": FLOOR,
        "lut": base64.b64encode(r.lut.tobytes()).decode("ascii"),
        "unit": r.legend.unit if r.legend is not None else "points per bin",
        "legend": list(r.legend.parts) if r.legend is not None else [],
        "key_frames": [int(f) for f in tl.key_frames],
        "n_frames": tl.n_frames,
        "span": tl.span or tl.n_frames - 1,
        "fps": opts.fps,
        "level": None if o is None else np.asarray(o.level, np.float64).round(5).tolist(),
        "settle": None if o is None or o.settling is None else
        [int(i) if st == "settled" else -1 for i, st in zip(o.settling.index, o.settling.status())],
        "barely": None if o is None or o.settling is None else [bool(b) for b in o.settling.barely],
        "distance": None if dist is None else np.asarray(dist, np.float64).tolist(),
        "settle_threshold": opts.settle_threshold,
    }


def viewer_html(traj: Trajectories, opts: ViewOptions = ViewOptions(), coords: str = "auto",
                tokens: list[str] | None = None, served: bool = False, logs: RunLogs | None = None) -> tuple[str, str]:
    """(the page, the coordinates' encoding): the film of ``traj`` as ``opts`` draws it (``film_frames``);
    ``tokens``: a label per point (N), e.g. the probe tokens' text, shown on hover after the index;
    ``served``: the page fetches its coordinates from ``SERVED_XY`` beside it (:func:`serve`) instead of
    holding them; ``logs``: the run's loss and learning rate, drawn under the slider with its cursor."""
    page, coords, _ = _page(Shown.of(traj, opts, logs), opts, coords, tokens, served)
    return page, coords


SERVED_XY = "xy.bin"


def _page(shown: Shown, opts: ViewOptions, coords: str, tokens: list[str] | None,
          served: bool) -> tuple[str, str, bytes]:
    coords = pick_coords(shown.traj, coords)
    blob, how = encode_xy(shown.traj.xy, coords)
    data = viewer_data(shown, opts, tokens) | how | {"src": SERVED_XY if served else None}
    text = json.dumps(data, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")
    template = resources.files("layerfilm").joinpath("data/viewer.html").read_text(encoding="utf-8")
    held = "" if served else base64.b64encode(blob).decode("ascii")
    return template.replace(MARK, text, 1).replace(BLOB, held, 1), coords, blob


def write_viewer(traj: Trajectories, out: str | Path, opts: ViewOptions = ViewOptions(), coords: str = "auto",
                 inputs: tuple[Path, ...] = (), logs: RunLogs | None = None) -> ViewResult:
    """Write the interactive film of ``traj`` (and the strip of ``logs``) to ``out`` (.html), whole or not at all."""
    return write_page(Shown.of(traj, opts, logs), out, opts, coords, inputs)


def write_page(shown: Shown, out: str | Path, opts: ViewOptions = ViewOptions(), coords: str = "auto",
               inputs: tuple[Path, ...] = ()) -> ViewResult:
    """Write the page of ``shown`` to ``out`` (.html), whole or not at all."""
    out = check_view_path(out, inputs)
    page, coords, _ = _page(shown, opts, coords, None, False)
    with atomic_output(out, suffix=".html") as tmp:
        tmp.write_text(page, encoding="utf-8")
    T, L, N = shown.traj.xy.shape[:3]
    R = max(len(shown.runs), 1)
    return ViewResult(out, out.stat().st_size, coords, T, L // R, N, R)


def check_view_path(out: str | Path, inputs: tuple[Path, ...] = ()) -> Path:
    out = Path(out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise OptionsError(f"{out}: the interactive film is one .html file")
    return check_output_path(out, (out.suffix.lower(),), inputs)


def view(folder: str | Path, out: str | Path, opts: ViewOptions = ViewOptions(), progress: bool = True,
         coords: str = "auto") -> ViewResult:
    """The interactive film of the checkpoints in ``folder``, written to ``out`` (one .html file), with
    the loss and learning rate the run logged beside them (``opts.curves``).

    Example:
        >>> view("ckpts/", "film.html").size  # doctest: +SKIP
    """
    inputs = local_inputs(folder)
    check_view_path(out, inputs)  # a bad output fails before any checkpoint is read
    check_coords(coords)
    study = Study.open(folder, opts, progress)
    traj = study.trajectories()
    return write_viewer(traj, out, opts, coords, inputs, study.logs() if opts.curves else None)


def view_runs(folders: list[str | Path], out: str | Path, opts: ViewOptions = ViewOptions(),
              names: list[str] | str | None = None, progress: bool = True, coords: str = "auto") -> ViewResult:
    """The interactive film of several runs (the first the base), as ``render BASE OTHER ...`` draws it:
    each block's runs side by side on the block's one basis, one clock by step; the page toggles runs,
    and draws each run's logged loss and learning rate.

    Example:
        >>> view_runs(["base/", "lr10x/"], "cmp.html", names="base,lr10x")  # doctest: +SKIP
    """
    check_runs_film(opts)
    labels = run_names(folders, names)
    inputs = tuple(p for f in folders for p in local_inputs(f))
    check_view_path(out, inputs)
    check_coords(coords)
    with session():
        studies = open_runs(folders, opts, progress)
        panels, frames = runs_frames(studies, labels, opts)
    logs = tuple(s.logs() if opts.curves else None for s in studies)
    return write_page(Shown(panels, frames, logs, labels), out, opts, coords, inputs)


def viewer_server(traj: Trajectories, opts: ViewOptions = ViewOptions(), port: int = 8000, coords: str = "auto",
                  logs: RunLogs | None = None):
    """An HTTP server on 127.0.0.1 only (never another interface) that serves the interactive film of
    ``traj`` (and the strip of ``logs``): the page at ``/`` and its deflated coordinates at ``/xy.bin``, both from memory, nothing
    else. For films too large for one file; ``serve_forever()`` it (port 0: any free port)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    page, _, blob = _page(Shown.of(traj, opts, logs), opts, coords, None, served=True)
    files = {"/": (page.encode("utf-8"), "text/html; charset=utf-8"), f"/{SERVED_XY}": (blob, "application/octet-stream")}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            body, mime = files.get(self.path.split("?")[0], (b"not found", "text/plain"))
            self.send_response(200 if self.path.split("?")[0] in files else 404)
            self.send_header("Content-Type", mime)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args) -> None:  # quiet: the command prints its one line
            pass

    return ThreadingHTTPServer(("127.0.0.1", port), Handler)


def serve(folder: str | Path, opts: ViewOptions = ViewOptions(), port: int = 8000, progress: bool = True,
          ready=None) -> None:
    """Serve the interactive film of the checkpoints in ``folder`` on http://127.0.0.1:PORT/ until interrupted;
    ``ready(url)`` is called once it listens."""
    study = Study.open(folder, opts, progress)
    traj = study.trajectories()
    try:
        server = viewer_server(traj, opts, port, logs=study.logs() if opts.curves else None)
    except OSError as e:
        raise OptionsError(f"port={port}: cannot listen on 127.0.0.1 ({e.strerror or e})") from None
    with server:
        if ready is not None:
            ready(f"http://127.0.0.1:{server.server_address[1]}/")
        server.serve_forever()
