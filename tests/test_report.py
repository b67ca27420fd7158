"""Reports and sharing them (layerfilm.reports).

layerfilm.reports (document, figures): `layerfilm stills`, `layerfilm report`, the figures' data.

layerfilm.reports.document.media: the film in a report (embedded up to a size, else linked; room for the video
controls) and frames chosen in Python (arrays, files, Stills) put into HTML and Markdown reports.

`render --quality share`: a small lossy film every player plays (VP9 profile 0 / H.264, yuv420p), whose
legend and output line state its distance from the lossless frames, measured by decoding it."""

from __future__ import annotations

import base64
import io
import re
import subprocess

import imageio.v3 as iio
import numpy as np
import pytest

import layerfilm
from conftest import FROZEN_BLOCKS, FROZEN_STEP
from layerfilm.draw.raster import Style
from layerfilm.errors import OptionsError
from layerfilm.film import film_frames
from layerfilm.film_options import FilmOptions
from layerfilm.points.weights import WeightSpec
from layerfilm.reports import media as report_media
from layerfilm.reports.document import stills
from layerfilm.reports.figures import heatmap_figure, hot_figure, norm_figure, save_figure, settling_figure
from layerfilm.study import Study
from layerfilm.video.encode import ffmpeg_exe
from layerfilm.video.fidelity import decode, psnr

# ==== layerfilm.reports (document, figures)
SMALL = ("--size", "320x180", "--points", "64", "--quiet")
MAGIC = {"png": b"\x89PNG\r\n\x1a\n", "svg": b"<?xml", "pdf": b"%PDF"}


@pytest.mark.parametrize("ext", ["png", "svg", "pdf"])
def test_stills_cli_writes_each_format(frozen_run, run_cli, tmp_path, ext):
    out = tmp_path / f"before_after.{ext}"
    code, _, err = run_cli("stills", frozen_run, "--out", out, *SMALL)
    assert code == 0, err
    assert out.read_bytes().startswith(MAGIC[ext])
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temporary left behind
    if ext == "svg":
        assert b"<svg" in out.read_bytes()


def test_stills_keep_the_films_key_frames(frozen_run, run_cli, tmp_path):
    """``Stills.frames`` are the film's (lossless) key frames; the figure is the one still."""
    code, _, err = run_cli("render", frozen_run, "--out", tmp_path / "frames/", "--fps", "1", "--no-overlay", "--jobs", "1",
                           *SMALL)
    assert code == 0, err
    film = [iio.imread(p) for p in sorted((tmp_path / "frames").glob("*.png"))]
    opts = FilmOptions(weights=WeightSpec(points=64), style=Style(320, 180))
    res = stills(frozen_run, steps=[0, 30], opts=opts, progress=False)
    assert res.frames.shape == (2, 180, 320, 3) and res.steps == [0, 30]
    assert np.array_equal(res.frames[0], film[0]) and np.array_equal(res.frames[1], film[3])
    assert len(res.figure.axes) == 1 and res.image.shape == (180, 320, 3)
    one = stills(frozen_run, steps=[20], opts=opts, progress=False)
    assert one.frames.shape == (1, 180, 320, 3) and len(one.figure.axes) == 1


def test_a_still_is_one_picture(frozen_run, tmp_path):
    """Before and after of every block in one picture of the frame's size, written pixel for pixel: each
    block's two panels side by side (the film's axes: the frozen blocks look the same at 20 and 40), one
    header, a legend without the film's time."""
    from layerfilm.film import film_legend
    from layerfilm.study import Study

    opts = FilmOptions(weights=WeightSpec(points=64), style=Style(640, 360))
    res = stills(frozen_run, tmp_path / "s.png", steps=[FROZEN_STEP, 40], opts=opts, progress=False)
    assert res.image.shape == (360, 640, 3)
    np.testing.assert_array_equal(iio.imread(tmp_path / "s.png")[..., :3], res.image)
    traj = Study.open(frozen_run, opts, progress=False).trajectories()
    parts = film_legend(traj, opts, bar=False, still=True).parts
    assert parts and not any("time" in p or "tick" in p for p in parts)
    assert any("time" in p for p in film_legend(traj, opts, bar=False).parts)


def test_still_panels_come_in_groups():
    """A block's panels at the K steps of a still sit side by side in one row, in step order."""
    from layerfilm.draw.raster import Renderer

    for L, K in ((4, 2), (8, 2), (5, 3)):
        labels = [f"L{b} step {j}" for b in range(L) for j in range(K)]
        r = Renderer(Style(1280, 720), labels, np.tile([-1.0, 1.0, -1.0, 1.0], (L * K, 1)), group=K)
        for b in range(L):
            xs, ys = r.panels[b * K : (b + 1) * K].T
            assert len(set(ys)) == 1 and (np.diff(xs) > 0).all() and (np.diff(xs) < 2 * r.panel_bins[0]).all()


def test_stills_errors(frozen_run, run_cli, tmp_path):
    code, _, err = run_cli("stills", frozen_run, "--out", tmp_path / "x.png", "--steps", "0,15", *SMALL)
    assert (code, err) == (2, "layerfilm: error: --steps: 15 not a key frame; key frames are at steps 0, 10, 20, 30, 40\n")
    code, _, err = run_cli("stills", frozen_run, "--out", tmp_path / "x.jpg")
    assert (code, err) == (2, f"layerfilm: error: {tmp_path / 'x.jpg'}: unknown figure extension '.jpg'; use .png, .svg or "
                           f".pdf\n")
    code, _, err = run_cli("stills", frozen_run, "--out", tmp_path / "x.png", "--steps", "0,a")
    assert (code, err) == (2, "layerfilm: error: --steps '0,a': expected steps separated by commas, e.g. 0,2000\n")
    assert list(tmp_path.iterdir()) == []


def test_heatmap_shows_relative_updates_on_a_log_scale(frozen_stability):
    from matplotlib.colors import LogNorm

    st = frozen_stability
    fig = heatmap_figure(st)
    mesh = fig.axes[0].collections[0]
    assert isinstance(mesh.norm, LogNorm)
    data = mesh.get_array().reshape(len(st.blocks), len(st.steps) - 1)
    k = list(st.steps).index(FROZEN_STEP)
    frozen = [list(st.blocks).index(b) for b in FROZEN_BLOCKS]
    assert data.mask[frozen, k:].all()  # unchanged cells are masked (grey), not coloured
    np.testing.assert_allclose(data.filled(0), np.nan_to_num(st.relative_update[1:].T))
    # one settling tick per settled block, at its settling step
    ticks = [c for c in fig.axes[0].collections[1:]]
    assert sorted(float(t.get_segments()[0][0][0]) for t in ticks) == [FROZEN_STEP] * len(FROZEN_BLOCKS)


def test_hot_and_norm_figures_hold_the_measures(frozen_stability, tmp_path):
    st = frozen_stability
    hot = hot_figure(st)
    panels = [ax for ax in hot.axes if ax.collections and ax.get_title()]
    assert [ax.get_title() for ax in panels] == [f"L{b}" for b in st.blocks]
    for l, ax in enumerate(panels):
        np.testing.assert_allclose(ax.collections[0].get_array().reshape(-1), np.log1p(st.hist[:, l, :]).T.reshape(-1))
    norms = norm_figure(st)  # a panel per tensor, a line per block (no legend: a colour bar of depth)
    panels = [ax for ax in norms.axes if ax.get_lines()]
    assert [ax.get_title() for ax in panels] == list(st.components)
    for c, ax in enumerate(panels):
        assert [ln.get_label() for ln in ax.get_lines()] == [f"L{b}" for b in st.blocks]
        assert ax.get_yscale() == "linear" and ax.get_legend() is None
        for l, ln in enumerate(ax.get_lines()):
            np.testing.assert_allclose(ln.get_ydata(), st.param_norm[:, l, c])
    for fig, name in ((hot, "hot.pdf"), (norms, "norms.svg"), (settling_figure(st), "settling.png")):
        assert save_figure(fig, tmp_path / name).stat().st_size > 1000


def test_settling_markers_never_overlap(frozen_stability):
    """Blocks that settle at the same step (the frozen ones) get one marker each, in a row of their own."""
    st = frozen_stability
    fig = settling_figure(st)
    curves, strip = fig.axes[:2]
    assert [ln.get_label() for ln in curves.get_lines()][:len(st.blocks)] == [f"L{b}" for b in st.blocks]
    marks = [(float(ln.get_xdata()[0]), float(ln.get_ydata()[0])) for ln in strip.get_lines()]
    settled = [l for l, k in enumerate(st.settle_index) if k >= 0]
    assert len(settled) >= 2 and {st.steps[k] for k in st.settle_index if k >= 0} == {FROZEN_STEP}  # same step
    assert marks == [(float(st.steps[st.settle_index[l]]), float(l)) for l in settled]
    assert len(set(marks)) == len(marks)  # no two markers at one place
    assert [t.get_text() for t in strip.texts] == ["never settles"] * (len(st.blocks) - len(settled))


def test_stills_show_the_step_once(frozen_run):
    """The still's panels say their step; the figure adds no second "step N" title."""
    res = stills(frozen_run, steps=[0, 30], opts=FilmOptions(weights=WeightSpec(points=64), style=Style(320, 180)),
                 progress=False)
    assert [ax.get_title() for ax in res.figure.axes] == [""] and not res.figure.get_suptitle()
    from layerfilm.reports.figures import stills_figure
    assert [ax.get_title() for ax in stills_figure(res.frames, [0, 30]).axes] == ["step 0", "step 30"]


def _data_uris(text: str) -> list[tuple[str, bytes]]:
    return [(m, base64.b64decode(d)) for m, d in re.findall(r'src="data:([\w/+]+);base64,([A-Za-z0-9+/=]+)"', text)]


def test_html_report_is_self_contained(frozen_run, run_cli, tmp_path):
    film = tmp_path / "film.webm"
    assert run_cli("render", frozen_run, "--out", film, "--fps", "2", "--jobs", "1", *SMALL)[0] == 0
    out = tmp_path / "report.html"
    code, _, err = run_cli("report", frozen_run, "--out", out, "--film", film, *SMALL)
    assert code == 0, err
    text = out.read_text()
    assert not re.search(r'(src|href)\s*=\s*"(https?:)?//', text)  # nothing fetched
    assert "<script" not in text and "@import" not in text and "url(" not in text
    uris = _data_uris(text)
    assert [m for m, _ in uris] == ["video/webm"] + ["image/png"] * 5
    assert uris[0][1] == film.read_bytes()
    for _, png in uris[1:]:
        img = iio.imread(io.BytesIO(png))
        assert img.ndim == 3 and img.shape[0] > 100
    still = iio.imread(io.BytesIO(uris[1][1]))  # first the still: readable at the page's width though --size is 320x180
    assert still.shape[:2] == (720, 1280) and text.index("First and last key frame") < text.index("Which blocks still move")
    for heading in ("Settling table", "Which blocks still move", "Histograms over time", "Parameter norms",
                    "First and last key frame"):
        assert f"<h2>{heading}</h2>" in text
    rows = re.findall(r"<tr><td[^>]*>(\d+)</td><td[^>]*>(L\d+)</td><td[^>]*>([^<]+)</td>", text)
    assert {b for _, b, _ in rows[:2]} == {f"L{b}" for b in FROZEN_BLOCKS}
    assert [s for _, _, s in rows[2:]] == ["moving", "moving"]
    assert '<td class="settled">settled</td>' in text and "2 settled, 2 moving, 0 barely moved" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["film.webm", "report.html"]


def test_markdown_report_writes_pngs_beside_it(frozen_run, run_cli, tmp_path):
    out = tmp_path / "report.md"
    code, _, err = run_cli("report", frozen_run, "--out", out, *SMALL)
    assert code == 0, err
    text = out.read_text()
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert images == [f"./report_{n}.png" for n in ("stills", "heatmap", "settling", "hot", "norms")]
    for name in images:
        assert (tmp_path / name).read_bytes().startswith(MAGIC["png"])
    assert iio.imread(tmp_path / "report_stills.png").shape[:2] == (720, 1280)
    assert "| rank | block | status | settles at step |" in text and text.count("| moving |") == 2


def test_report_errors(frozen_run, run_cli, tmp_path):
    code, _, err = run_cli("report", frozen_run, "--out", tmp_path / "r.pdf")
    assert (code, err) == (2, f"layerfilm: error: {tmp_path / 'r.pdf'}: unknown report extension '.pdf'; use .html or .md\n")
    code, _, err = run_cli("report", frozen_run, "--out", tmp_path / "r.html", "--film", tmp_path / "none.webm")
    assert (code, err) == (2, f"layerfilm: error: --film {tmp_path / 'none.webm'}: no such file\n")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(OptionsError, match="folder .* does not exist"):
        from layerfilm.reports.document import report

        report(frozen_run, tmp_path / "missing" / "r.md", progress=False)


def test_python_api_returns_figures_and_frames(frozen_run, tmp_path):
    from matplotlib.figure import Figure

    import layerfilm

    opts = FilmOptions(weights=WeightSpec(points=16), style=Style(320, 180))
    res = layerfilm.report(frozen_run, tmp_path / "r.md", opts=opts, progress=False)
    assert list(res.figures) == ["stills", "heatmap", "settling", "hot", "norms"]
    assert all(isinstance(f, Figure) for f in res.figures.values())
    assert res.files == [tmp_path / "r.md", *(tmp_path / f"r_{n}.png" for n in res.figures)]
    assert res.stability.settle_steps == layerfilm.measure(layerfilm.scan(frozen_run), progress=False).settle_steps


HOSTILE_FOLDER = "<img src=x onerror=alert(1)> <svg onload=alert(2)> [x](javascript:alert(3)) *$a$*"


def test_markdown_names_are_text_and_links_are_relative_paths(frozen_run, run_cli, tmp_path):
    """A report named with spaces and parentheses, a folder named with HTML and Markdown, a film under a
    folder named ``javascript:...``: links CommonMark renders (percent-encoded, starting ./ or ../), names
    that stay text (no tag, no link, no emphasis), and no javascript: link in the Markdown or the HTML."""
    import shutil

    from PIL import Image

    folder = tmp_path / HOSTILE_FOLDER
    shutil.copytree(frozen_run, folder)
    film = tmp_path / "javascript:alert(4)" / "film (1).gif"
    film.parent.mkdir()
    Image.new("RGB", (32, 18)).save(film)
    out = tmp_path / "my report (v2).md"
    code, _, err = run_cli("report", folder, "--out", out, "--film", film, *SMALL)
    assert code == 0, err
    text = out.read_text()
    summary = text.splitlines()[2]
    assert summary.startswith("5 checkpoints in " + str(tmp_path).replace("_", "\\_") + "/&lt;img src=x onerror=alert(1)&gt; "
                              "&lt;svg onload=alert(2)&gt; \\[x\\](javascript:alert(3)) \\*\\$a\\$\\* (steps 0 to 40)")
    assert text.splitlines()[4] == "Film: [film (1).gif](./javascript%3Aalert%284%29/film%20%281%29.gif)"
    images = re.findall(r"!\[[^\]]*\]\(([^)]*)\)", text)
    assert images == [f"./my%20report%20%28v2%29_{n}.png" for n in ("stills", "heatmap", "settling", "hot", "norms")]
    assert "<" not in text and ">" not in text.replace("&gt;", "")  # no raw tag from a name
    for link in re.findall(r"(?<!\\)\]\(([^)]*)\)", text):  # each destination (\] ends no link): a plain relative path
        assert re.fullmatch(r"\.\.?/[A-Za-z0-9%._/-]+", link), link
    html_out = tmp_path / "r.html"
    code, _, err = run_cli("report", folder, "--out", html_out, "--film", film, "--film-link", *SMALL)
    assert code == 0, err
    page = html_out.read_text()
    urls = re.findall(r'(?:href|src)="([^"]*)"', page)
    assert urls and not [u for u in urls if re.match(r"[A-Za-z][A-Za-z0-9+.-]*:", u) and not u.startswith("data:")]
    assert '<a href="./javascript%3Aalert%284%29/film%20%281%29.gif">./javascript:alert(4)/film (1).gif</a>' in page
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [HOSTILE_FOLDER, "javascript:alert(4)", "my report (v2).md", "r.html"]
        + [f"my report (v2)_{n}.png" for n in ("stills", "heatmap", "settling", "hot", "norms")])


# ==== layerfilm.reports.document.media
OPTS = FilmOptions(weights=WeightSpec(points=64), style=Style(320, 180), jobs=1)


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
    from test_encode import decode

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


# ==== `render --quality share`
SHARE_SMALL = ("--size", "320x180", "--points", "64", "--quiet", "--fps", "4")


def _stream(path) -> str:
    out = subprocess.run([ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True, text=True).stderr
    return next(line for line in out.splitlines() if "Video:" in line)


@pytest.mark.parametrize("ext, codec", [("webm", "vp9 (Profile 0)"), ("mp4", "h264")])
def test_share_film_plays_everywhere_and_says_how_far_from_lossless(frozen_run, run_cli, tmp_path, monkeypatch, ext,
                                                                    codec):
    import layerfilm.film as film

    said: list[str] = []  # the legend's line, measured before the film is encoded (key frames encoded alone)
    real = film.share_legend
    monkeypatch.setattr(film, "share_legend", lambda est, kind: said.append(real(est, kind)) or said[-1])
    out = tmp_path / f"film.{ext}"
    code, _, err = run_cli("render", frozen_run, "--out", out, "--quality", "share", *SHARE_SMALL)
    assert code == 0, err
    stream = _stream(out)
    assert codec in stream and "yuv420p" in stream
    m = re.search(r"shareable film: PSNR (\d+\.\d) dB against the lossless frames \(lowest (\d+\.\d)\), mean "
                  r"\|difference\| (\d+\.\d\d) of 255, over 8 decoded frames", err)
    assert m, err
    # the printed numbers are the written film's against the frames drawn (with the same legend)
    opts = FilmOptions(weights=WeightSpec(points=64), style=Style(320, 180), fps=4.0)
    frames = film_frames(Study.open(frozen_run, opts, progress=False).trajectories(), opts, note=said[0])
    wanted = sorted({int(round(x)) for x in np.linspace(0, frames.n_frames - 1, 8)})
    got = decode(out, (320, 180), set(wanted))
    ours = [psnr(got[f], frames.frame(f)) for f in wanted]
    assert float(np.mean(ours)) == pytest.approx(float(m.group(1)), abs=0.051)
    assert min(ours) == pytest.approx(float(m.group(2)), abs=0.051)
    assert 25 < min(ours) < 60  # lossy, but close
    legend = float(re.search(r"PSNR about (\d+) dB against the lossless frames", said[0]).group(1))
    assert abs(legend - min(ours)) < 3
    assert out.stat().st_size * 20 < frames.n_frames * 320 * 180 * 3  # far smaller than the raw frames


def test_share_refuses_gif_and_png(frozen_run, run_cli, tmp_path):
    code, _, err = run_cli("render", frozen_run, "--out", tmp_path / "f.gif", "--quality", "share")
    assert (code, err) == (2, "layerfilm: error: --quality share: writes .webm or .mp4, not .gif\n")
    code, _, err = run_cli("render", frozen_run, "--out", f"{tmp_path / 'frames'}/", "--quality", "share")
    assert (code, err) == (2, "layerfilm: error: --quality share: writes .webm or .mp4, not PNG frames\n")
    assert list(tmp_path.iterdir()) == []


def test_report_embeds_the_shared_film_and_links_the_lossless_one(frozen_run, run_cli, tmp_path):
    share, exact = tmp_path / "share.webm", tmp_path / "film.webm"
    for path, quality in ((share, "share"), (exact, "lossless")):  # in this process: the report is the point
        code, _, err = run_cli("render", frozen_run, "--out", path, "--quality", quality, "--jobs", "1", *SHARE_SMALL)
        assert code == 0, err
    out = tmp_path / "report.html"
    code, _, err = run_cli("report", frozen_run, "--out", out, "--film", share, "--lossless-film", exact, *SHARE_SMALL[:4])
    assert code == 0, err
    text = out.read_text()
    assert '<video controls loop muted playsinline preload="auto" src="data:video/webm;base64,' in text
    assert 'The lossless film (the exact frames): <a href="./film.webm">./film.webm</a>' in text
    code, _, err = run_cli("report", frozen_run, "--out", tmp_path / "r2.html", "--lossless-film", exact)
    assert (code, err) == (2, "layerfilm: error: --lossless-film: it is linked under the film; give --film PATH (the "
                              "shareable one)\n")
