"""Screenshot an HTML report in headless Chromium, offline, to check how it looks in a real browser.

Needs Debian's chromium (``apt-get install chromium``); not used by the tests (CI has no browser).
Network is switched off for the page (``--proxy-server`` to nowhere, background networking off), so a
report that tried to fetch anything would show broken images in the screenshot.

    python examples/screenshot_report.py outputs/report.html outputs/report.png
    python examples/screenshot_report.py outputs/report.html outputs/report.png --size 1280x6000
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def screenshot(html: Path, png: Path, size: str = "1280x5000", timeout: float = 120) -> Path:
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if exe is None:
        sys.exit("chromium not found: apt-get install chromium")
    with tempfile.TemporaryDirectory(prefix="layerfilm-chromium-") as profile:
        cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
               "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>",  # no network for the page
               f"--user-data-dir={profile}", f"--window-size={size.replace('x', ',')}",
               "--virtual-time-budget=5000", f"--screenshot={png.resolve()}", html.resolve().as_uri()]
        subprocess.run(cmd, check=True, timeout=timeout, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return png


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("html", type=Path, help="the report to open")
    p.add_argument("png", type=Path, help="where to write the screenshot")
    p.add_argument("--size", default="1280x5000", help="window size WxH (default 1280x5000: the whole report)")
    a = p.parse_args(argv)
    print(screenshot(a.html, a.png, a.size), file=sys.stderr)


if __name__ == "__main__":
    main()
