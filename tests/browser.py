"""Headless Chromium from the system packages (Debian's chromium and chromium-driver), driven by selenium:
no browser is downloaded (selenium is given the system's chromedriver, so Selenium Manager never runs).
Headless Firefox (Debian's firefox-esr; there is no geckodriver to drive it): its own --screenshot of a
page. Used by the viewer's tests and benchmarks/bench_viewer.py."""

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


def firefox_screenshot(url: str, out: Path, width: int = 1400, height: int = 900, timeout: float = 120.0):
    """(H, W, 3) uint8: headless Firefox's screenshot of ``url`` (taken once the page has loaded and
    painted), in a fresh profile folder (removed after)."""
    import imageio.v3 as iio

    profile = tempfile.mkdtemp(prefix="layerfilm-firefox-")
    try:
        Path(profile, "user.js").write_text("".join(f"user_pref({json.dumps(k)}, {json.dumps(v)});\n"
                                                    for k, v in FIREFOX_PREFS.items()))
        done = subprocess.run([FIREFOX, "--headless", "--no-remote", "-profile", profile, f"--window-size={width},{height}",
                               "--screenshot", str(out), url], capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "MOZ_HEADLESS": "1"})
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert Path(out).exists(), f"firefox wrote no screenshot (exit {done.returncode}): {done.stderr[-2000:]}"
    return iio.imread(out)[..., :3]


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
