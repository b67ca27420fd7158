"""layerfilm.reports.viewer (`layerfilm view`, `report --interactive`): the interactive film in one HTML file,
checked in a real headless Chromium (tests/browser.py) against the film's own lossless frames."""

from __future__ import annotations

import re

import imageio.v3 as iio
import numpy as np
import pytest

from browser import chromium, console_errors, missing, open_viewer, panel_bins
from layerfilm.draw.raster import Style, colormap_lut
from layerfilm.film import film_frames
from layerfilm.film_options import FilmOptions
from layerfilm.points.weights import WeightSpec
from layerfilm.reports.viewer import U16_MAX, decode_xy, encode_xy, write_viewer
from layerfilm.study import Study

SMALL = ("--size", "320x180", "--points", "64", "--quiet")
OPTS = FilmOptions(weights=WeightSpec(points=64), style=Style(320, 180))
U16_OFF = 0.005  # u16 coordinates: at most this fraction of a panel's bins more than one colour step off


def _walk(T=9, L=3, N=50, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.cumsum(rng.normal(size=(T, L, N, 2)), axis=0).astype(np.float32) * np.float32(1e-3)


def test_f32_coordinates_round_trip_exactly():
    xy = _walk()
    blob, how = encode_xy(xy, "f32")
    assert np.array_equal(decode_xy(blob, how, xy.shape), xy)


def test_u16_coordinates_within_half_a_step():
    xy = _walk()
    blob, how = encode_xy(xy, "u16")
    back = decode_xy(blob, how, xy.shape)
    span = xy.max(axis=(0, 2)) - xy.min(axis=(0, 2))  # (L, 2)
    err = np.abs(back - xy).max(axis=(0, 2))
    assert (err <= span / U16_MAX * 0.51 + 1e-12).all() and (err > 0).any()
    assert len(blob) < xy.size * 2  # deltas of a smooth walk deflate below 16 bits a coordinate


def test_view_cli_writes_one_self_contained_file(frozen_run, run_cli, tmp_path):
    out = tmp_path / "film.html"
    code, _, err = run_cli("view", frozen_run, "--out", out, *SMALL)
    assert code == 0, err
    assert re.fullmatch(rf"wrote {re.escape(str(out))} \(0\.\d MB: 5 key frames x 4 blocks x 64 points, float32, exact\) "
                        r"in \d+\.\d s\n", err)
    text = out.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["film.html"]
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", text) and "http://" not in text.replace(
        "http://www.w3.org", "")
    code, _, err = run_cli("view", frozen_run, "--out", tmp_path / "film.webm")
    assert (code, err) == (2, f"layerfilm: error: {tmp_path / 'film.webm'}: the interactive film is one .html file\n")


def test_report_interactive_links_the_viewer(frozen_run, run_cli, tmp_path):
    out = tmp_path / "report.html"
    code, _, err = run_cli("report", frozen_run, "--out", out, "--interactive", *SMALL)
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "report_view.html"]
    assert 'href="./report_view.html"' in out.read_text()
    assert '"T":5,"L":4,"N":64' in (tmp_path / "report_view.html").read_text()


# ---------------------------------------------------------------- in a real browser

needs_browser = pytest.mark.skipif(missing() is not None, reason=str(missing()))


@pytest.fixture(scope="module")
def film(frozen_run, tmp_path_factory):
    """The film's lossless key frames (PNG, --fps 1: frame k is key frame k), its trajectories and renderer."""
    from layerfilm.cli.commands import main

    out = tmp_path_factory.mktemp("viewer_film")
    assert main(["render", str(frozen_run), "--out", str(out / "frames/"), "--fps", "1", *SMALL]) == 0
    frames = [iio.imread(p) for p in sorted((out / "frames").glob("*.png"))]
    traj = Study.open(frozen_run, OPTS, progress=False).trajectories()
    return out, frames, traj, film_frames(traj, OPTS).renderer


@pytest.fixture(scope="module")
def browser():
    with chromium() as driver:
        yield driver


def _film_bins(frame: np.ndarray, r, l: int) -> np.ndarray:
    """Panel l's drawing area of a film frame, one pixel per bin (each bin is cell x cell pixels)."""
    c, (bw, bh) = r.cell, r.bins
    x0, y0 = r.origin[l] * c
    return frame[y0 : y0 + bh * c : c, x0 : x0 + bw * c : c]


def _lut_index(img: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """The colour-table index of every pixel (each must be one of the table's colours)."""
    codes = {tuple(int(v) for v in rgb): i for i, rgb in reversed(list(enumerate(lut)))}
    flat = img.reshape(-1, 3)
    return np.array([codes[tuple(int(v) for v in p)] for p in flat]).reshape(img.shape[:2])


@needs_browser
@pytest.mark.parametrize("coords", ["f32", "u16"])
def test_key_frames_equal_the_films(film, browser, coords):
    """At key frame k every panel's bins are the film's drawing area at k: exactly with float32 coordinates;
    with 16-bit ones within one colour step, but for at most U16_OFF of the bins (a point within 1/65535 of
    its block's range of a bin edge may fall on the other side)."""
    out, frames, traj, r = film
    page = write_viewer(traj, out / f"view_{coords}.html", OPTS, coords=coords).out
    open_viewer(browser, page)
    assert console_errors(browser) == []
    lut = colormap_lut(OPTS.style.cmap)
    off = []
    for k in range(len(traj.steps)):
        browser.execute_script("layerfilm.go(layerfilm.keyFrames[arguments[0]])", k)
        for l in range(len(traj.blocks)):
            want, got = _film_bins(frames[k], r, l), panel_bins(browser, l)
            assert got.shape == want.shape
            if coords == "f32":
                assert np.array_equal(got, want), (k, l)
            else:
                step = np.abs(_lut_index(got, lut) - _lut_index(want, lut))
                off.append(float((step > 1).mean()))
    if coords == "u16":
        assert max(off) <= U16_OFF


@needs_browser
def test_plays_hovers_and_enlarges(film, browser):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    out, _, traj, r = film
    page = write_viewer(traj, out / "view.html", OPTS).out
    open_viewer(browser, page)
    js = browser.execute_script
    assert js("return layerfilm.frame") == 0 and console_errors(browser) == []
    # play advances the step (and the caption with it); space pauses
    browser.find_element(By.ID, "play").click()
    WebDriverWait(browser, 20).until(lambda d: js("return layerfilm.frame") >= 2)
    browser.find_element(By.TAG_NAME, "body").send_keys(" ")
    assert js("return layerfilm.playing") is False
    key1 = js("layerfilm.go(layerfilm.keyFrames[1]); return layerfilm.frame")
    assert browser.find_element(By.ID, "caption").text == f"step {traj.steps[1]:,}   key 2/{len(traj.steps)}"
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ARROW_RIGHT)
    assert js("return layerfilm.frame") == key1 + 1
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.SHIFT, Keys.ARROW_RIGHT)
    assert js("return [layerfilm.frame, layerfilm.key, layerfilm.a]") == [js("return layerfilm.keyFrames[2]"), 2, 0]
    # hover a point: the tooltip names its neuron; the point is the one farthest from its nearest neighbour
    l = 1
    u = traj.xy[2, l] * r._scale32[l] + r._shift32[l]  # key frame 2, where the page is now
    gap = np.linalg.norm(u[:, None] - u[None], axis=-1) + np.eye(len(u)) * 1e9
    n = int(gap.min(axis=1).argmax())
    x, y = js("return layerfilm.where(arguments[0], arguments[1])", l, n)
    canvas = browser.find_element(By.ID, f"p{l}")
    rect = js("const r = arguments[0].getBoundingClientRect(); return [r.left, r.top, r.width, r.height]", canvas)
    ActionChains(browser).move_to_element_with_offset(canvas, x - rect[0] - rect[2] / 2,
                                                      y - rect[1] - rect[3] / 2).perform()
    tip = browser.find_element(By.ID, "tip")
    assert tip.is_displayed()
    assert tip.text == f"L{traj.blocks[l]} · neuron {traj.point_ids[l][n]} (mlp.c_fc.weight)"
    # a click enlarges the panel (the others hide, its block's curve is picked); another click goes back
    width = rect[2]
    canvas.click()
    assert js("return [layerfilm.big, layerfilm.sel]") == [l, l]
    assert js("return arguments[0].getBoundingClientRect().width", canvas) > 1.5 * width
    assert not browser.find_element(By.ID, "p0").is_displayed()
    canvas.click()
    assert js("return layerfilm.big") == -1 and browser.find_element(By.ID, "p0").is_displayed()
    # the chart's cursor follows the film
    before = js("return layerfilm.cursorX")
    js("layerfilm.go(layerfilm.keyFrames[3])")
    assert js("return layerfilm.cursorX") > before
    assert console_errors(browser) == []


def test_serve_answers_on_loopback_only_with_the_page_and_its_coordinates(frozen_run):
    import threading
    import urllib.error
    import urllib.request

    from layerfilm.reports.viewer import viewer_server

    traj = Study.open(frozen_run, OPTS, progress=False).trajectories()
    server = viewer_server(traj, OPTS, port=0)
    host, port = server.server_address[:2]
    assert host == "127.0.0.1"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        page = urllib.request.urlopen(f"http://127.0.0.1:{port}/").read().decode()
        blob = urllib.request.urlopen(f"http://127.0.0.1:{port}/xy.bin").read()
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/../etc/passwd")
    finally:
        server.shutdown()
        server.server_close()
    assert '"src":"xy.bin"' in page and '<script id="xy" type="application/octet-stream"></script>' in page
    assert np.array_equal(decode_xy(blob, {"coords": "f32"}, traj.xy.shape), traj.xy)
