"""Headless Chromium from the system packages (Debian's chromium and chromium-driver), driven by selenium:
no browser is downloaded (selenium is given the system's chromedriver, so Selenium Manager never runs).
Headless Firefox (Debian's firefox-esr; there is no geckodriver): driven over WebDriver BiDi, which
Firefox speaks itself, through selenium's websocket-client. Used by the viewer's tests and benchmarks/bench_viewer.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--force-device-scale-factor=1",
         "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>")  # no network: a fetch would fail


FIREFOX = "/usr/bin/firefox-esr"
# a fresh profile that reaches nothing: every connection goes to a closed port, no update, telemetry or
# safe-browsing download, no first-run page
FIREFOX_PREFS = {"network.proxy.type": 1, "network.proxy.http": "127.0.0.1", "network.proxy.http_port": 9,
                 "network.proxy.ssl": "127.0.0.1", "network.proxy.ssl_port": 9, "network.proxy.share_proxy_settings": True,
                 "app.update.enabled": False, "app.normandy.enabled": False, "datareporting.policy.dataSubmissionEnabled": False,
                 "toolkit.telemetry.enabled": False, "browser.safebrowsing.downloads.enabled": False,
                 "browser.safebrowsing.malware.enabled": False, "browser.safebrowsing.phishing.enabled": False,
                 "extensions.update.enabled": False, "browser.shell.checkDefaultBrowser": False,
                 "browser.startup.homepage_override.mstone": "ignore", "layout.css.devPixelsPerPx": "1.0"}


def firefox_missing() -> str | None:
    """Why the Firefox test cannot run here (None: it can). In CI (``CI`` set) Firefox is installed
    (.ci/run), so the test runs there and fails if it is missing, never skipped."""
    if Path(FIREFOX).exists() or os.environ.get("CI"):
        return None
    return f"{FIREFOX} is missing (apt-get install firefox-esr)"


class BiDi:
    """A WebDriver BiDi session with Firefox over its own websocket (Firefox speaks BiDi itself; no geckodriver):
    ``bidi(method, **params)`` sends one command and returns its result; console entries collect in ``logs``."""

    def __init__(self, ws) -> None:
        self.ws, self.n, self.logs = ws, 0, []

    def __call__(self, method: str, **params):
        self.n += 1
        self.ws.send(json.dumps({"id": self.n, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("type") == "event" and msg.get("method") == "log.entryAdded":
                self.logs.append(msg["params"])
            elif msg.get("id") == self.n:
                if msg.get("type") == "error":
                    raise RuntimeError(f"{method}: {msg.get('error')}: {msg.get('message')}")
                return msg["result"]

    def errors(self) -> list[str]:
        return [e.get("text", "") for e in self.logs if e.get("level") == "error"]


@contextmanager
def firefox(width: int = 1400, height: int = 900, timeout: float = 60.0) -> Iterator[tuple[BiDi, str]]:
    """(a BiDi session, its tab's context id) of a fresh headless Firefox (its own profile folder, removed after)."""
    import threading

    import websocket

    profile = tempfile.mkdtemp(prefix="layerfilm-firefox-")
    Path(profile, "user.js").write_text("".join(f"user_pref({json.dumps(k)}, {json.dumps(v)});\n"
                                                for k, v in FIREFOX_PREFS.items()))
    proc = subprocess.Popen([FIREFOX, "--headless", "--no-remote", "-profile", profile, f"--window-size={width},{height}",
                             "--remote-debugging-port=0"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "MOZ_HEADLESS": "1"})
    found: list[str] = []
    ready = threading.Event()

    def read() -> None:  # the listening line, then drain stderr so Firefox never blocks on it
        assert proc.stderr is not None
        for line in proc.stderr:
            if "WebDriver BiDi listening on " in line and not found:
                found.append(line.split("listening on ", 1)[1].strip())
                ready.set()
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    ws = None
    try:
        assert ready.wait(timeout) and found, f"firefox did not listen for WebDriver BiDi (exit {proc.poll()})"
        ws = websocket.create_connection(f"{found[0]}/session", timeout=timeout, suppress_origin=True)
        bidi = BiDi(ws)
        bidi("session.new", capabilities={})
        bidi("session.subscribe", events=["log.entryAdded"])
        context = bidi("browsingContext.getTree")["contexts"][0]["context"]
        bidi("browsingContext.setViewport", context=context, viewport={"width": width, "height": height},
             devicePixelRatio=1)
        yield bidi, context
    finally:
        if ws is not None:
            ws.close()
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(profile, ignore_errors=True)


def firefox_open(bidi: BiDi, context: str, url: str, timeout: float = 60.0) -> None:
    """Load ``url`` and wait until the viewer has drawn its first frame (or shown why it could not)."""
    import time

    bidi("browsingContext.navigate", context=context, url=url, wait="complete")
    end = time.monotonic() + timeout
    while not firefox_eval(bidi, context, "!!(window.layerfilm && window.layerfilm.ready) || "
                                          "!!document.getElementById('msg').textContent"):
        assert time.monotonic() < end, f"{url}: the viewer did not draw in {timeout:.0f} s"
        time.sleep(0.1)


def firefox_eval(bidi: BiDi, context: str, expression: str):
    """The value of a JS expression (a primitive) in the page."""
    res = bidi("script.evaluate", expression=expression, target={"context": context}, awaitPromise=True)
    assert res["type"] == "success", res
    return res["result"].get("value")


def firefox_screenshot(bidi: BiDi, context: str):
    """(H, W, 3) uint8: the tab's viewport as Firefox painted it."""
    import base64

    import imageio.v3 as iio

    return iio.imread(base64.b64decode(bidi("browsingContext.captureScreenshot", context=context)["data"]))[..., :3]


def missing() -> str | None:
    """Why no browser test can run here (None: they can)."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium)"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists():
            return f"{path} is missing (apt-get install chromium chromium-driver)"
    return None


@contextmanager
def chromium(width: int = 1400, height: int = 900) -> Iterator:
    """A selenium driver of a fresh headless Chromium (its own profile folder, removed after)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="layerfilm-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def open_viewer(driver, path: Path, timeout: float = 60.0) -> None:
    """Load the viewer at ``path`` from disk (file://) and wait until it has drawn its first frame."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(Path(path).resolve().as_uri())
    WebDriverWait(driver, timeout).until(
        lambda d: d.execute_script("return !!(window.layerfilm && window.layerfilm.ready) || "
                                   "!!document.getElementById('msg').textContent"))


def console_errors(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]


def canvas_pixels(driver, canvas_id: str):
    """(H, W, 3) uint8: the canvas ``canvas_id`` as the page drew it (its own pixels), by getImageData."""
    import base64

    import numpy as np

    w, h, b64 = driver.execute_script(
        "const c = document.getElementById(arguments[0]);"
        "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        "let s = ''; for (let i = 0; i < d.length; i += 8192) s += String.fromCharCode.apply(null, d.subarray(i, i + 8192));"
        "return [c.width, c.height, btoa(s)];", canvas_id)
    return np.frombuffer(base64.b64decode(b64), np.uint8).reshape(h, w, 4)[..., :3]


def panel_bins(driver, l: int):
    """(BH, BW, 3) uint8: panel ``l``'s canvas as the page drew it (one pixel per bin)."""
    return canvas_pixels(driver, f"p{l}")
