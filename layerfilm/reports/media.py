"""What a report shows besides its figures: the film (embedded or linked) and frames chosen in Python.

Why a module of its own: both decide how bytes from outside the measures get into the report (a
data: URI in the HTML, or a relative link / a PNG beside it), and both are checked before any
checkpoint is read, so a bad film or frame fails in a second, not after the measures.
"""

from __future__ import annotations

import html
import io
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Union
from urllib.parse import quote, unquote

import numpy as np

from layerfilm.errors import OptionsError
from layerfilm.text import show

if TYPE_CHECKING:
    from matplotlib.figure import Figure

@dataclass(frozen=True)
class Stills:
    """Key frames chosen by step (layerfilm.stills): the still that shows them (one picture, each block's
    panels at those steps side by side) and its figure, and the film's own frames at those steps."""

    steps: list[int]  # (K,)
    frames: np.ndarray  # (K, H, W, 3) uint8, the film's frames at those steps
    figure: Figure  # the still, at its own size in pixels (layerfilm.reports.figures.image_figure)
    image: np.ndarray  # (H, W, 3) uint8, the still (layerfilm.film.still_frame)
    update_ratio: Figure | None = None  # the update-ratio heatmap, when the run has optimizer state
    files: tuple[Path, ...] = ()  # what was written: the still, and the heatmap beside it
    notes: tuple[str, ...] = ()  # what the reader should know, e.g. why there is no heatmap


FILM_TYPES = {".webm": "video/webm", ".mp4": "video/mp4", ".gif": "image/gif"}
IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
               ".webp": "image/webp", ".svg": "image/svg+xml"}
EMBED_MAX_BYTES = 8_000_000  # an HTML report embeds a film up to this size (8 MB) and links a larger one
CONTROLS_PX = 72  # room below the picture for the browser's video controls (they overlay the element's bottom)

# A frame for the report: an (H, W, 3) or (H, W) uint8 array, (K, H, W, 3) frames shown side by
# side, an image file (.png, .jpg, .gif, .webp, .svg), or the Stills of layerfilm.stills (its still).
FrameSource = Union[np.ndarray, str, Path, "Stills"]


@dataclass(frozen=True)
class Film:
    """The film as the report shows it: embedded (``data``) or linked (``link``, relative to the report)."""

    path: Path
    mime: str
    data: bytes | None  # the film's bytes when embedded
    link: str  # the path from the report's folder to the film, as a link (relative_link)
    size: tuple[int, int]  # (width, height) of the picture, for the room left to the controls
    note: str = ""  # why a film was linked although embedding was not turned off
    lossless: str = ""  # a link to the lossless film, when this one is a shareable (lossy) one

    def html(self, uri: str | None) -> str:
        src = html.escape(uri if uri is not None else self.link, quote=True)
        if self.mime.startswith("image/"):
            tag = f'<img alt="film" src="{src}">'
        else:  # the picture at the top of a box CONTROLS_PX taller than it: the controls cover no bar
            w, h = self.size
            tag = (f'<div class="film"><video controls loop muted playsinline preload="auto" src="{src}" '
                   f'style="height:calc(100cqw * {h} / {w} + {CONTROLS_PX}px)"></video></div>')
        note = f'<p class="note">{html.escape(self.note)}</p>' if self.note else ""
        link = "" if self.data is not None else \
            f'<p class="note">Film: <a href="{html.escape(self.link, quote=True)}">{html.escape(unquote(self.link))}</a></p>'
        if self.lossless:
            link += (f'<p class="note">The lossless film (the exact frames): <a href="{html.escape(self.lossless, quote=True)}">'
                     f"{html.escape(unquote(self.lossless))}</a></p>")
        return tag + note + link


def relative_link(path: Path, out: Path) -> str:
    """``path`` as a link from the folder of the report ``out``: relative, percent-encoded (the spaces,
    parentheses, ``<>``, ``#`` and ``:`` of names), and starting with ``./`` or ``../``, so that a name
    breaks no link in Markdown and no folder (``javascript:...``) reads as a URL scheme."""
    rel = quote(os.path.relpath(path.resolve(), out.resolve().parent).replace(os.sep, "/"), safe="/")
    return rel if rel.startswith("../") else "./" + rel


def _film_file(film: str | Path, name: str) -> Path:
    path = Path(film)
    if not path.is_file():
        raise OptionsError(f"{name}={show(path)}: no such file")
    if path.suffix.lower() not in FILM_TYPES:
        raise OptionsError(f"{name}={show(path)}: a report shows a .webm, .mp4 or .gif film")
    return path


def film_for(film: str | Path, out: Path, link: bool, fallback_size: tuple[int, int],
             lossless: str | Path | None = None) -> Film:
    """Check ``film`` and decide how an HTML report at ``out`` shows it: embedded when ``link`` is off
    and it is at most EMBED_MAX_BYTES, else by a link relative to the report's folder; ``lossless``:
    the lossless film of a shareable ``film`` (``render --quality share``), linked under it."""
    path = _film_file(film, "film")
    mime = FILM_TYPES[path.suffix.lower()]
    exact = relative_link(_film_file(lossless, "lossless_film"), out) if lossless is not None else ""
    rel = relative_link(path, out)
    size = path.stat().st_size
    embed = not link and size <= EMBED_MAX_BYTES
    note = "" if embed or link else (f"The film ({size / 1e6:.1f} MB) is linked, not embedded (a report embeds a film "
                                     f"of at most {EMBED_MAX_BYTES / 1e6:g} MB): keep it beside the report.")
    return Film(path, mime, path.read_bytes() if embed else None, rel, _picture_size(path, fallback_size), note, exact)


def _picture_size(path: Path, fallback: tuple[int, int]) -> tuple[int, int]:
    """(width, height) from the film's header (ffmpeg), else ``fallback`` (the report's frame size)."""
    if path.suffix.lower() == ".gif":
        return fallback
    try:
        import imageio_ffmpeg

        frames = imageio_ffmpeg.read_frames(str(path))
        try:
            meta = next(frames)
        finally:
            frames.close()
        w, h = meta["size"]
        return (int(w), int(h)) if w > 0 and h > 0 else fallback
    except (OSError, RuntimeError, StopIteration, KeyError, TypeError, ValueError):
        return fallback


@dataclass(frozen=True)
class Picture:
    """One image of a frames section: PNG bytes made from an array, or a file's bytes."""

    data: bytes
    mime: str
    file: Path | None = None  # the image file it came from (Markdown links it instead of writing a copy)


def png_bytes(image: np.ndarray) -> bytes:
    import imageio.v3 as iio

    buf = io.BytesIO()
    iio.imwrite(buf, image, extension=".png")
    return buf.getvalue()


def _array(title: str, a: np.ndarray) -> np.ndarray:
    """(H, W, 3|4) or (H, W) uint8; (K, H, W, 3) frames joined side by side with a 4-pixel white gap."""
    a = np.asarray(a)
    if a.ndim == 4:
        gap = np.full((a.shape[1], 4, a.shape[3]), 255, a.dtype)
        a = np.concatenate([x for f in a for x in (f, gap)][:-1], axis=1)
    if a.dtype != np.uint8 or not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))) or 0 in a.shape:
        raise OptionsError(f"frames[{title!r}]: expected uint8 (H, W, 3), (H, W) or (K, H, W, 3) frames, got "
                           f"{a.dtype} {a.shape}")
    return a


def pictures(frames: Mapping[str, FrameSource] | None) -> dict[str, Picture]:
    """Title -> the image of each chosen frame, checked (and files read) before any checkpoint is."""
    out: dict[str, Picture] = {}
    for title, source in (frames or {}).items():
        if not isinstance(title, str) or not title.strip():
            raise OptionsError(f"frames: each title must be a non-empty string, not {title!r}")
        if isinstance(source, Stills):
            source = source.image
        if isinstance(source, (str, Path)):
            path = Path(source)
            mime = IMAGE_TYPES.get(path.suffix.lower())
            if mime is None:
                raise OptionsError(f"frames[{title!r}]: {show(path)} is not a .png, .jpg, .gif, .webp or .svg image")
            if not path.is_file():
                raise OptionsError(f"frames[{title!r}]: {show(path)}: no such file")
            out[title] = Picture(path.read_bytes(), mime, path)
        else:
            out[title] = Picture(png_bytes(_array(title, source)), "image/png")
    return out
