"""layerfilm.reports.document.media: the film in a report (embedded up to a size, else linked; room for the video
controls) and frames chosen in Python (arrays, files, Stills) put into HTML and Markdown reports."""

from __future__ import annotations

import base64
import io
import re

import imageio.v3 as iio
import numpy as np
import pytest

import layerfilm
from layerfilm.draw.raster import Style
from layerfilm.errors import OptionsError
from layerfilm.film_options import FilmOptions
from layerfilm.points.weights import WeightSpec
from layerfilm.reports import media as report_media

SMALL = ("--size", "320x180", "--points", "64", "--quiet")
OPTS = FilmOptions(weights=WeightSpec(points=64), style=Style(320, 180), jobs=1)


def _data_uris(text: str) -> list[tuple[str, bytes]]:
    return [(m, base64.b64decode(d)) for m, d in re.findall(r'src="data:([\w/+]+);base64,([A-Za-z0-9+/=]+)"', text)]


@pytest.fixture(scope="module")
def film(frozen_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("film") / "film.webm"
    layerfilm.render(frozen_run, out, FilmOptions(weights=WeightSpec(points=64), style=Style(320, 180), fps=2, jobs=1),
                     progress=False)
    return out


def _video(text: str) -> tuple[str, str]:
    """(src, style) of the report's one <video>."""
    (src, style), = re.findall(r'<video [^>]*src="([^"]+)" style="([^"]+)"></video>', text)
    return src, style


def test_film_embedded_up_to_the_limit_and_linked_above_it(frozen_run, film, run_cli, tmp_path, monkeypatch):
    dest = tmp_path / "film.webm"
    dest.write_bytes(film.read_bytes())
    size = dest.stat().st_size
    assert size <= report_media.EMBED_MAX_BYTES  # the default: a small film is embedded
    code, _, err = run_cli("report", frozen_run, "--out", tmp_path / "a.html", "--film", dest, *SMALL)
    assert code == 0 and "note:" not in err, err
    src, _ = _video((tmp_path / "a.html").read_text())
    assert src.startswith("data:video/webm;base64,") and base64.b64decode(src.split(",", 1)[1]) == dest.read_bytes()
    monkeypatch.setattr(report_media, "EMBED_MAX_BYTES", size - 1)  # one byte over the limit: linked, with a note
    code, _, err = run_cli("report", frozen_run, "--out", tmp_path / "b.html", "--film", dest, *SMALL)
    assert code == 0, err
    text = (tmp_path / "b.html").read_text()
    assert _video(text)[0] == "./film.webm" and "data:video" not in text and '<a href="./film.webm">' in text
    note = f"The film ({size / 1e6:.1f} MB) is linked, not embedded (a report embeds a film of at most {(size - 1) / 1e6:g} MB)"
    assert note in text and f"note: {note}" in err and err.count("\n") == 2  # the files written, then the note


def test_film_link_links_any_film_relative_to_the_report(frozen_run, film, run_cli, tmp_path):
    (tmp_path / "films").mkdir()
    (tmp_path / "reports").mkdir()
    dest = tmp_path / "films" / "film.webm"
    dest.write_bytes(film.read_bytes())
    out = tmp_path / "reports" / "r.html"
    code, _, err = run_cli("report", frozen_run, "--out", out, "--film", dest, "--film-link", *SMALL)
    assert code == 0 and "note:" not in err, err
    text = out.read_text()
    assert _video(text)[0] == "../films/film.webm" and "data:video" not in text
    assert not re.search(r'(src|href)\s*=\s*"(https?:)?//', text)  # still nothing fetched from a host
    code, _, err = run_cli("report", frozen_run, "--out", tmp_path / "x.html", "--film-link", *SMALL)
    assert (code, err) == (2, "layerfilm: error: --film-link: there is no film to link; give --film PATH\n")


def test_video_controls_get_room_below_the_picture(frozen_run, film, tmp_path):
    """The browser draws its controls over the bottom of the <video> box; the box is the picture's
    height (from the film's own size) plus CONTROLS_PX, the picture at its top, so no bar is covered."""
    from test_render_encode import decode

    h, w, _ = decode(film)[0].shape
    layerfilm.report(frozen_run, tmp_path / "r.html", film=film, opts=OPTS, progress=False)
    text = (tmp_path / "r.html").read_text()
    assert _video(text)[1] == f"height:calc(100cqw * {h} / {w} + {report_media.CONTROLS_PX}px)"
    assert report_media.CONTROLS_PX >= 64 and "object-position:top" in text and "container-type:inline-size" in text


def test_frames_from_python_in_html_and_markdown(frozen_run, tmp_path):
    """Arrays (one frame, K frames side by side), Stills and image files become sections of the report:
    embedded in HTML (pixels unchanged), PNGs beside Markdown (arrays) or linked (files)."""
    st = layerfilm.stills(frozen_run, tmp_path / "before_after.png", opts=OPTS, progress=False)
    chosen = {"Last key frame": st.frames[-1], "Both": st.frames, "As stills": st,
              "Before and after": tmp_path / "before_after.png"}
    res = layerfilm.report(frozen_run, tmp_path / "r.html", opts=OPTS, progress=False, frames=chosen)
    text = res.out.read_text()
    for title in chosen:
        assert f"<h2>{title}</h2>" in text
    images = [iio.imread(io.BytesIO(d)) for m, d in _data_uris(text)[:4]]
    np.testing.assert_array_equal(images[0], st.frames[-1])
    np.testing.assert_array_equal(images[1][:, :320], st.frames[0])
    np.testing.assert_array_equal(images[1][:, -320:], st.frames[1])
    np.testing.assert_array_equal(images[2], st.image)  # Stills: the still
    assert _data_uris(text)[3][1] == (tmp_path / "before_after.png").read_bytes()
    md = layerfilm.report(frozen_run, tmp_path / "r.md", opts=OPTS, progress=False, frames=chosen)
    links = re.findall(r"!\[([^\]]*)\]\(([^)]+)\)", md.out.read_text())[:4]
    assert links == [("Last key frame", "./r_frame_0.png"), ("Both", "./r_frame_1.png"), ("As stills", "./r_frame_2.png"),
                     ("Before and after", "./before_after.png")]
    np.testing.assert_array_equal(iio.imread(tmp_path / "r_frame_0.png"), st.frames[-1])
    assert {tmp_path / f"r_frame_{i}.png" for i in range(3)} <= set(md.files)


@pytest.mark.parametrize("frames, message", [
    ({"x": np.zeros((4, 4, 3), np.float32)},
     "frames['x']: expected uint8 (H, W, 3), (H, W) or (K, H, W, 3) frames, got float32 (4, 4, 3)"),
    ({"x": "notes.txt"}, "frames['x']: notes.txt is not a .png, .jpg, .gif, .webp or .svg image"),
    ({"x": "missing.png"}, "frames['x']: missing.png: no such file"),
    ({"": np.zeros((4, 4, 3), np.uint8)}, "frames: each title must be a non-empty string, not ''"),
])
def test_bad_frames_fail_before_any_work(frozen_run, tmp_path, monkeypatch, frames, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(layerfilm.Study, "open", lambda *a, **k: pytest.fail("read checkpoints"))
    with pytest.raises(OptionsError) as e:
        layerfilm.report(frozen_run, tmp_path / "r.html", opts=OPTS, progress=False, frames=frames)
    assert str(e.value) == message
    assert list(tmp_path.iterdir()) == []
