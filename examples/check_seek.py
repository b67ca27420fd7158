"""Seek films in headless Chromium and compare the frames it shows: a film joined from segments
(``render --jobs N``) must seek like the same film encoded as one stream (``--jobs 1``).

Serves the films from a folder over HTTP on 127.0.0.1 (Range requests honoured, as a browser seeks
by them), opens a page that seeks each film to the middle of chosen frames, draws each shown frame on
a canvas and hashes its pixels, and prints, per time, whether every film shows the same picture.
Needs Debian's chromium (``apt-get install chromium``); not used by the tests (CI has no browser).

    python examples/check_seek.py outputs/one.webm outputs/joined.webm --fps 15 --frames 0,67,68,69,135
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

PAGE = """<!doctype html><meta charset="utf-8"><body><script>
const films = %s, times = %s;
async function shown(src) {
  const v = document.createElement("video");
  v.muted = true; v.preload = "auto"; v.src = src;
  await new Promise((ok, bad) => { v.onloadeddata = ok; v.onerror = () => bad(new Error("cannot load " + src)); });
  const c = document.createElement("canvas");
  c.width = v.videoWidth; c.height = v.videoHeight;
  const g = c.getContext("2d", {willReadFrequently: true});
  const rows = [];
  for (const t of times) {
    await new Promise(ok => { v.onseeked = ok; v.currentTime = t; });
    g.drawImage(v, 0, 0);
    const px = g.getImageData(0, 0, c.width, c.height).data;
    let h = 2166136261;
    for (let i = 0; i < px.length; i += 1) { h = Math.imul(h ^ px[i], 16777619) >>> 0; }
    rows.push([t, v.currentTime, h]);
  }
  return {src, duration: v.duration, rows};
}
(async () => {
  const out = [];
  try { for (const f of films) out.push(await shown(f)); }
  catch (e) { out.push({error: String(e)}); }
  await fetch("/result", {method: "POST", body: JSON.stringify(out)});
})();
</script>"""


class Quiet(SimpleHTTPRequestHandler):
    """Python's file server, with Range requests (a browser seeks a video by them) and no log lines;
    the page POSTs its result to /result."""

    result: list  # each server's own (seek_in_chromium makes a subclass per server)
    done: threading.Event

    def log_message(self, *args) -> None:
        pass

    def handle(self) -> None:
        try:
            super().handle()
        except ConnectionError:  # the browser dropped a range it no longer needed
            pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(204)
        self.end_headers()
        type(self).result.append(json.loads(body))
        type(self).done.set()

    def send_head(self):  # a single "bytes=a-b" range: 206 with those bytes; anything else: the whole file
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        path = Path(self.translate_path(self.path))
        if match is None or not path.is_file():
            return super().send_head()
        size = path.stat().st_size
        start, end = int(match[1]), min(int(match[2] or size - 1), size - 1)
        if start > end:
            self.send_error(416)
            return None
        f = path.open("rb")
        f.seek(start)
        self.send_response(206)
        self.send_header("Content-Type", self.guess_type(str(path)))
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        self.range_left = end - start + 1
        return f

    def copyfile(self, source, outputfile) -> None:
        left = getattr(self, "range_left", None)
        if left is None:
            return super().copyfile(source, outputfile)
        while left > 0:
            chunk = source.read(min(left, 1 << 16))
            if not chunk:
                break
            outputfile.write(chunk)
            left -= len(chunk)


def seek_in_chromium(films: list[Path], times: list[float], timeout: float = 180) -> list[dict]:
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if exe is None:
        sys.exit("chromium not found: apt-get install chromium")
    with tempfile.TemporaryDirectory(prefix="layerfilm-seek-") as tmp:
        root = Path(tmp)
        names = []
        for i, f in enumerate(films):
            name = f"{i}{f.suffix}"
            shutil.copyfile(f, root / name)
            names.append(name)
        (root / "index.html").write_text(PAGE % (json.dumps(names), json.dumps(times)))
        handler = type("Page", (Quiet,), {"result": [], "done": threading.Event()})
        server = ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(root)))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--autoplay-policy=no-user-gesture-required", "--no-first-run", f"--user-data-dir={root / 'profile'}",
               f"http://127.0.0.1:{server.server_port}/index.html"]
        browser = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            finished = handler.done.wait(timeout)
        finally:
            browser.kill()
            browser.wait()
            server.shutdown()
    if not finished:
        sys.exit(f"the page did not report within {timeout:.0f} s")
    return handler.result[0]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("films", type=Path, nargs="+", help="films of the same frames (the first is the reference)")
    p.add_argument("--fps", type=float, required=True, help="the films' frame rate")
    p.add_argument("--frames", required=True, help="frame numbers to seek to, e.g. 0,67,68,69,135")
    a = p.parse_args(argv)
    frames = [int(x) for x in a.frames.split(",")]
    results = seek_in_chromium(a.films, [(k + 0.5) / a.fps for k in frames])
    if any("error" in r for r in results):
        sys.exit(f"chromium: {results}")
    print("durations: " + ", ".join(f"{f.name} {r['duration']:.4f} s" for f, r in zip(a.films, results)))
    same_all = True
    for k, rows in zip(frames, zip(*(r["rows"] for r in results))):
        same = len({h for _, _, h in rows}) == 1
        same_all &= same
        print(f"frame {k:>5} (t={rows[0][0]:.4f} s): shown at " + ", ".join(f"{now:.4f}" for _, now, _ in rows)
              + f"; pixels {'the same' if same else 'DIFFER: ' + ' '.join(f'{h:08x}' for _, _, h in rows)}")
    print("every seek shows the same picture in every film" if same_all else "some seeks differ")
    sys.exit(0 if same_all else 1)


if __name__ == "__main__":
    main()
