"""layerfilm.reports.viewer (`layerfilm view`, `report --interactive`): the interactive film in one HTML file,
checked in a real headless Chromium (tests/browser.py) against the film's own lossless frames."""

from __future__ import annotations

import re
import shutil
from dataclasses import replace

import imageio.v3 as iio
import numpy as np
import pytest

from browser import (
    canvas_pixels,
    chromium,
    console_errors,
    firefox,
    firefox_eval,
    firefox_missing,
    firefox_open,
    firefox_screenshot,
    missing,
    open_viewer,
    panel_bins,
)
from layerfilm.compare import open_runs, runs_frames
from layerfilm.draw.curves import Strip
from layerfilm.draw.frame_layout import note_text
from layerfilm.draw.raster import Style, colormap_lut
from layerfilm.film import film_frames
from layerfilm.film_options import FilmOptions
from layerfilm.io.logs import Curve, read_logs
from layerfilm.points.weights import WeightSpec
from layerfilm.reports.viewer import CURVE_POINTS, U16_MAX, decode_xy, encode_xy, thin, write_viewer
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


def test_long_curves_travel_thinned_to_each_runs_extremes():
    """A curve of 10,007 logged steps (an exact construction) travels as its first and last points and each of
    CURVE_POINTS runs' lowest and highest: every run's range is kept, in step order."""
    steps = np.arange(1, 10_008, dtype=np.int64)
    values = np.sin(steps / 37.0) + 1e-4 * steps
    got = thin(Curve("loss", steps, values))
    assert len(got["steps"]) <= 2 * CURVE_POINTS + 2 and got["steps"] == sorted(got["steps"])
    assert got["steps"][0] == 1 and got["steps"][-1] == 10_007
    kept = dict(zip(got["steps"], got["values"]))
    for run in np.array_split(np.arange(len(steps)), CURVE_POINTS):
        assert kept[int(steps[run][values[run].argmin()])] == values[run].min()
        assert kept[int(steps[run][values[run].argmax()])] == values[run].max()
    short = Curve("lr", steps[:50], values[:50])
    assert thin(short) == {"name": "lr", "steps": steps[:50].tolist(), "values": values[:50].tolist()}


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


def _frames(run_cli, folders, out, *more) -> list[np.ndarray]:
    """The lossless key frames of ``render FOLDERS`` (PNG, --fps 1: frame k is key frame k)."""
    code, _, err = run_cli("render", *folders, "--out", f"{out}/", "--fps", "1", "--jobs", "1", *SMALL, *more)
    assert code == 0, err
    return [iio.imread(p) for p in sorted(out.glob("*.png"))]


def _loss(step: int) -> float:  # logged_run's metrics.csv, by construction
    return 5.0 / (1.0 + step / 10.0)


def _lr(step: int) -> float:
    return 1e-3 * min(step / 20.0, 1.0)


@pytest.fixture(scope="module")
def logged_run(frozen_run, tmp_path_factory):
    """`frozen_run`'s checkpoints with a metrics.csv beside them as the example writes it (step,train_loss,
    lr-AdamW for steps 1..40): loss 5 / (1 + step / 10), lr warming up linearly to 1e-3 over 20 steps."""
    out = tmp_path_factory.mktemp("logged_run")
    for p in frozen_run.glob("*.safetensors"):
        shutil.copy(p, out / p.name)
    rows = [f"{s},{_loss(s)!r},{_lr(s)!r}" for s in range(1, 41)]
    (out / "metrics.csv").write_text("step,train_loss,lr-AdamW\n" + "\n".join(rows) + "\n")
    return out


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


@needs_browser
def test_loss_and_lr_strip_with_the_cursor(logged_run, browser, run_cli, tmp_path):
    """Under the slider: the run's logged loss and lr with the film's words, their values at the cursor's
    step; and the panels still equal the film's key frames (the film's strip takes room in its layout)."""
    from selenium.webdriver.common.by import By

    frames = _frames(run_cli, [logged_run], tmp_path / "frames")
    page = tmp_path / "view.html"
    code, _, err = run_cli("view", logged_run, "--out", page, *SMALL)
    assert code == 0, err
    open_viewer(browser, page)
    js = browser.execute_script
    traj = Study.open(logged_run, OPTS, progress=False).trajectories()
    r = film_frames(traj, OPTS, read_logs(logged_run)).renderer
    assert r.strip is not None
    words = ", ".join(t for t, _ in Strip.of(read_logs(logged_run), traj.steps).labels())
    assert words == (f"loss {_loss(1):.3g} → {_loss(40):.3g} (min {_loss(40):.3g}), "  # the construction's range
                     f"learning rate 0 – {_lr(40):.2g}")
    for k, step in enumerate(traj.steps):
        js("layerfilm.go(layerfilm.keyFrames[arguments[0]])", k)
        text = js("return layerfilm.stripText")
        assert text.startswith(words + "; here loss ")
        loss, lr = re.fullmatch(r".*; here loss (\S+), lr (\S+)", text).groups()
        if step == 0:  # logged from step 1 on
            assert (loss, lr) == ("-", "-")
        else:
            assert abs(float(loss) - _loss(step)) <= 5e-3 * _loss(step) and abs(float(lr) - _lr(step)) <= 5e-3 * _lr(step)
        for l in range(len(traj.blocks)):
            assert np.array_equal(panel_bins(browser, l), _film_bins(frames[k], r, l)), (k, l)
    # the strip draws both curves and the cursor (the film's colours)
    img = canvas_pixels(browser, "strip").astype(int)
    for colour in ((250, 130, 110), (90, 215, 200), (255, 200, 60)):
        assert (np.abs(img - colour).max(axis=-1) < 30).sum() > img.shape[0] // 2, colour
    assert browser.find_element(By.ID, "strip").is_displayed() and console_errors(browser) == []


@needs_browser
def test_clipped_note_as_the_films(film, browser):
    """A key frame where all of L0's neurons sit in one bin (a collapsed init, by construction) is denser than
    the colour scale's top: the page says in how many key frames, as the film's colour bar does, and when
    the frame shown is one of them."""
    out, _, traj, _ = film
    xy = traj.xy.copy()
    xy[0, 0] = xy[0, 0].mean(axis=0)
    collapsed = replace(traj, xy=xy)
    r = film_frames(collapsed, OPTS).renderer
    maxima = r.key_maxima(r.place(xy, k, 0.0) for k in range(len(traj.steps)))
    assert r.clipped == 1 and maxima[0] > r.vmax >= maxima[1:].max()
    note = note_text(0, r.clipped, len(traj.steps))
    assert note == f"denser bins clipped in 1 of {len(traj.steps)} key frames"
    open_viewer(browser, write_viewer(collapsed, out / "clipped.html", OPTS).out)
    for k in range(len(traj.steps)):
        browser.execute_script("layerfilm.go(layerfilm.keyFrames[arguments[0]])", k)
        assert browser.execute_script("return document.getElementById('clip').textContent") == (
            note + (" · this frame too" if maxima[k] > r.vmax else ""))
    open_viewer(browser, write_viewer(traj, out / "unclipped.html", OPTS).out)
    assert film_frames(traj, OPTS).renderer.clipped == 0
    assert browser.execute_script("return document.getElementById('clip').textContent") == ""


@needs_browser
def test_several_runs_side_by_side_and_toggled(logged_run, tiny_run, browser, run_cli, tmp_path):
    """`view BASE OTHER` draws the film of `render BASE OTHER` (each block's runs side by side, one basis per
    block, one clock), a check box hides a run's panels, and each run's logged curves are drawn."""
    from selenium.webdriver.common.by import By

    folders, names = [logged_run, tiny_run], ("base", "tiny")
    frames = _frames(run_cli, folders, tmp_path / "frames", "--names", ",".join(names))
    page = tmp_path / "cmp.html"
    code, _, err = run_cli("view", *folders, "--out", page, "--names", ",".join(names), *SMALL)
    assert code == 0, err
    assert re.search(r"\(0\.\d MB: 7 key frames x 4 blocks x 2 runs x 64 points, float32, exact\)", err)
    panels, film_ = runs_frames(open_runs(folders, OPTS, progress=False), names, OPTS)
    r = film_.renderer
    open_viewer(browser, page)
    js = browser.execute_script
    for k in range(len(panels.steps)):
        js("layerfilm.go(layerfilm.keyFrames[arguments[0]])", k)
        for l in range(len(panels.blocks)):
            assert np.array_equal(panel_bins(browser, l), _film_bins(frames[k], r, l)), (k, l)
    assert js("return layerfilm.stripText").startswith("base (solid): loss ")  # tiny_run logged nothing
    shown = lambda: [browser.find_element(By.ID, f"p{l}").is_displayed() for l in range(8)]  # noqa: E731
    assert all(shown())
    browser.find_element(By.ID, "run1").click()
    assert shown() == [True, False] * 4
    browser.find_element(By.ID, "run0").click()  # the last run shown stays shown
    assert shown() == [True, False] * 4 and js("return document.getElementById('run0').checked")
    browser.find_element(By.ID, "run1").click()
    assert all(shown()) and console_errors(browser) == []
    code, _, err = run_cli("view", tiny_run, "--out", tmp_path / "one.html", "--names", "a")
    assert code == 2 and err.startswith("layerfilm: error: --names") and err.endswith(": for several runs only\n")


@pytest.mark.skipif(firefox_missing() is not None, reason=str(firefox_missing()))
def test_firefox_draws_the_films_key_frame(film):
    """Firefox opens the page from file:// without a console error and draws the film: at #key=2 with #bins
    (the panels alone, one pixel per bin at the film's own places) its screenshot's panels equal the film's
    key frame 2."""
    out, frames, traj, r = film
    page = write_viewer(traj, out / "firefox.html", OPTS, coords="f32").out
    k = 2
    with firefox() as (bidi, tab):
        firefox_open(bidi, tab, f"{page.as_uri()}#key={k}&bins")
        assert firefox_eval(bidi, tab, "document.getElementById('msg').textContent") == ""
        assert firefox_eval(bidi, tab, "layerfilm.key") == k
        shot = firefox_screenshot(bidi, tab)
        assert bidi.errors() == []
    (bw, bh) = r.bins
    for l in range(len(traj.blocks)):
        x0, y0 = r.origin[l]
        assert np.array_equal(shot[y0 : y0 + bh, x0 : x0 + bw], _film_bins(frames[k], r, l)), l
    assert not np.array_equal(_film_bins(frames[k], r, 0), _film_bins(frames[0], r, 0))  # key 2 is not key 0


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
