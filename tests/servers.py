"""Servers on 127.0.0.1 for the remote-storage tests and benchmarks (tests/test_remote.py,
benchmarks/bench_remote.py), each counting the object bytes it sends:

- :class:`CountingMoto`: moto's S3-compatible server (server mode, a real HTTP endpoint on a free port);
- :func:`http_folder`: a threaded HTTP server of a local folder with an index page (as ``python -m
  http.server``), either honouring ``Range: bytes=A-B`` (206 Partial Content) or ignoring it (200, the
  whole file), as some static servers do; optionally requiring HTTP basic auth, or answering ranged GETs
  as a hostile or broken server does (``HOSTILE``). Files are streamed from disk (a sparse file of
  gigabytes costs the server nothing), and every slow answer's loop is bounded and ends at shutdown;
- :func:`delayed_folder`: a folder served as object storage far away is: every request waits ``delay``
  seconds before its answer, and at most ``connections`` requests are served at once (the rest queue);
  a request for several ranges is answered per RFC 7233 (``multipart/byteranges``) or, to test the
  fallbacks, with the first range alone or the whole file (``MULTI``),
  by an aiohttp server in its own process (``python tests/servers.py FOLDER``), so that its work does
  not share the client's cores or GIL.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

try:
    from moto.moto_server.threaded_moto_server import ThreadedMotoServer
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server
except ImportError:  # a benchmark host without moto still serves folders (delayed_folder)
    ThreadedMotoServer = MotoRequestHandler = object  # type: ignore[misc,assignment]

FAKE_AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


class _QuietMoto(MotoRequestHandler):
    def log_request(self, *args, **kwargs) -> None:  # one line per request would flood the test output
        pass


class CountingMoto(ThreadedMotoServer):
    """moto's threaded server on a free port of 127.0.0.1; ``sent``: bytes of object bodies sent (GET of
    a key; listings not counted), ``gets``: how many such GETs."""

    def __init__(self) -> None:
        super().__init__(ip_address="127.0.0.1", port=0, verbose=False)
        self.sent = 0
        self.gets = 0
        self._count = threading.Lock()

    @property
    def endpoint(self) -> str:
        host, port = self.get_host_and_port()
        return f"http://{host}:{port}"

    def _server_entry(self) -> None:
        app = DomainDispatcherApplication(create_backend_app)

        def counting(environ, start_response):
            body = app(environ, start_response)
            key = environ["REQUEST_METHOD"] == "GET" and environ.get("PATH_INFO", "").strip("/").count("/") >= 1 \
                and "list-type" not in environ.get("QUERY_STRING", "")
            if key:
                with self._count:
                    self.gets += 1
            for chunk in body:
                if key:
                    with self._count:
                        self.sent += len(chunk)
                yield chunk

        self._server = make_server(self._ip_address, self._port, counting, True, request_handler=_QuietMoto)
        self._server_ready_event.set()
        self._server.serve_forever()

    def reset(self) -> None:
        with self._count:
            self.sent = self.gets = 0

    def upload(self, folder: Path, bucket: str, prefix: str) -> str:
        """Upload every file under ``folder`` to ``s3://bucket/prefix/`` (the bucket made if needed); returns the URL."""
        import boto3

        s3 = boto3.client("s3", endpoint_url=self.endpoint, **_credentials())
        if bucket not in [b["Name"] for b in s3.list_buckets().get("Buckets", [])]:
            s3.create_bucket(Bucket=bucket)
        for f in sorted(p for p in folder.rglob("*") if p.is_file()):
            s3.upload_file(str(f), bucket, f"{prefix}/{f.relative_to(folder).as_posix()}")
        return f"s3://{bucket}/{prefix}"


def _credentials() -> dict:
    return {"aws_access_key_id": FAKE_AWS["AWS_ACCESS_KEY_ID"], "aws_secret_access_key": FAKE_AWS["AWS_SECRET_ACCESS_KEY"],
            "region_name": FAKE_AWS["AWS_DEFAULT_REGION"]}


_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


# how a hostile or broken server answers a ranged GET (its headers right unless said otherwise):
HOSTILE = {
    "trickle": "one byte every half second (slow loris)",
    "stall": "the headers, then nothing",
    "short": "half the body its Content-Length tells, then nothing (the connection held open)",
    "shifted": "the right length from 64 bytes before the offset asked, with a Content-Range saying so",
    "trickle-index": "an index page of one byte every half second (any GET of a folder)",
}
SLOW_FOR = 60.0  # seconds at most that a slow answer lasts (shutdown ends it sooner)


class _Folder(SimpleHTTPRequestHandler):
    """A folder with index pages; ``ranges``: whether ``Range: bytes=A-B`` is honoured; ``auth``: the
    Authorization header required (else 401); ``hostile``: a key of HOSTILE."""

    ranges = True
    counter: dict = {}
    auth: str | None = None
    hostile: str | None = None
    stop = threading.Event()

    def log_message(self, *args) -> None:
        pass

    def _allowed(self) -> bool:
        if self.auth is None or self.headers.get("Authorization") == self.auth:
            return True
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="runs"')
        self.send_header("Content-Length", "0")
        self.end_headers()
        return False

    def do_HEAD(self) -> None:
        if self._allowed():
            super().do_HEAD()

    def do_GET(self) -> None:
        if not self._allowed():
            return
        path = Path(self.translate_path(self.path))
        m = _RANGE.match(self.headers.get("Range", ""))
        if not path.is_file():
            if self.hostile == "trickle-index":
                return self._answer(200, {"Content-Type": "text/html", "Content-Length": "1000"}, b"<" * 1000, 0.5)
            return super().do_GET()
        size = path.stat().st_size
        head = {"Content-Type": "application/octet-stream",
                "Last-Modified": self.date_time_string(int(os.stat(path).st_mtime))}
        if not (self.ranges and m):  # the whole file, whatever was asked
            return self._answer(200, {**head, "Content-Length": str(size)}, path)
        start = int(m.group(1))
        end = min(int(m.group(2)) if m.group(2) else size - 1, size - 1)
        if self.hostile == "shifted":
            start, end = max(start - 64, 0), end - (start - max(start - 64, 0))
        head.update({"Content-Range": f"bytes {start}-{end}/{size}", "Content-Length": str(end + 1 - start)})
        with path.open("rb") as f:
            f.seek(start)
            body = f.read(end + 1 - start)
        if self.hostile in ("trickle", "stall", "short"):
            body = {"trickle": body, "stall": b"", "short": body[:len(body) // 2]}[self.hostile]
            return self._answer(206, head, body, 0.5 if self.hostile == "trickle" else 0.0, hold=True)
        self._answer(206, head, body)

    def _answer(self, status: int, headers: dict, body: bytes | Path, pace: float = 0.0, hold: bool = False) -> None:
        """Send ``body`` (bytes, or a file streamed from disk), one byte per ``pace`` seconds if given;
        with ``hold``, keep the connection open afterwards. Both end at SLOW_FOR or at shutdown."""
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        deadline = time.monotonic() + SLOW_FOR
        try:
            if isinstance(body, Path):
                with body.open("rb") as f:
                    while chunk := f.read(1 << 16):
                        self.wfile.write(chunk)
                        self.counter["sent"] = self.counter.get("sent", 0) + len(chunk)
            elif pace:
                for i in range(len(body)):
                    if self.stop.wait(pace) or time.monotonic() > deadline:
                        return
                    self.wfile.write(body[i:i + 1])
                    self.wfile.flush()
            else:
                self.wfile.write(body)
                self.counter["sent"] = self.counter.get("sent", 0) + len(body)
            if hold:
                self.wfile.flush()
                self.stop.wait(max(deadline - time.monotonic(), 0))
        except (BrokenPipeError, ConnectionResetError):  # the client stopped reading: what layerfilm should do
            pass


def basic_auth(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@contextmanager
def http_folder(folder: Path, ranges: bool = True, auth: tuple[str, str] | None = None,
                hostile: str | None = None) -> Iterator[tuple[str, dict]]:
    """Serve ``folder`` on a free port of 127.0.0.1; yields (its URL, a counter {"sent": bytes of files}).
    ``auth``: (user, password) of the HTTP basic auth it requires; ``hostile``: a key of HOSTILE."""
    counter: dict = {"sent": 0}
    assert hostile is None or hostile in HOSTILE
    handler = type("Handler", (_Folder,), {"ranges": ranges, "counter": counter, "hostile": hostile,
                                           "auth": basic_auth(*auth) if auth else None, "stop": threading.Event()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", counter
    finally:
        handler.stop.set()  # ends the slow answers still running
        server.shutdown()
        server.server_close()
        thread.join()


# how delayed_folder answers a request for several ranges (RFC 7233 multi-range):
MULTI = {
    "parts": "206 multipart/byteranges, one part per range (as nginx and Apache)",
    "first": "206 of the first range alone (as some servers and proxies)",
    "whole": "200 with the whole file (as S3 and servers that ignore Range)",
    "shifted": "parts of the right lengths from 64 bytes before each range asked, with Content-Ranges saying so",
}
_SPEC = re.compile(r"(\d*)-(\d*)$")


def byte_ranges(header: str, size: int) -> list[tuple[int, int]] | None:
    """RFC 7233's ``Range: bytes=...`` of a file of ``size`` bytes: the satisfiable ranges as (first, last)
    in the order asked ([] if none is: 416), or None where the header is absent or malformed (ignored:
    the whole file). ``A-B`` (B clipped to the end), ``A-`` (to the end), ``-N`` (the last N bytes)."""
    unit, _, specs = header.partition("=")
    if unit.strip().lower() != "bytes" or not specs.strip():
        return None
    out = []
    for spec in specs.split(","):
        m = _SPEC.match(spec.strip())
        if m is None or m.group(1) == m.group(2) == "" or (m.group(1) and m.group(2) and int(m.group(2)) < int(m.group(1))):
            return None
        if m.group(1) == "":  # a suffix
            if int(m.group(2)) > 0 and size > 0:
                out.append((max(size - int(m.group(2)), 0), size - 1))
        elif int(m.group(1)) < size:
            out.append((int(m.group(1)), min(int(m.group(2)), size - 1) if m.group(2) else size - 1))
    return out


async def _serve(folder: Path, delay: float, connections: int, port: int, stats_file: Path, multi: str = "parts") -> None:
    """Serve ``folder`` on ``port`` (shared by the other server processes: SO_REUSEPORT) until killed: index
    pages, and ranged GETs (RFC 7233: one range, or several answered as ``multi`` says, a key of MULTI)
    answered after ``delay`` seconds, at most ``connections`` at once in this process. Every 0.2 s,
    {"requests", "ranges", "bytes"} of the ranged GETs served (ranges sent, file bytes in them) is written
    to ``stats_file``."""
    import asyncio
    import html
    import json
    import secrets

    from aiohttp import web

    slots = asyncio.Semaphore(connections)
    stats = {"requests": 0, "ranges": 0, "bytes": 0}

    async def handle(request: web.Request) -> web.StreamResponse:
        path = (folder / request.path.lstrip("/")).resolve()
        if folder.resolve() not in (path, *path.parents) or not path.exists():
            raise web.HTTPNotFound()
        async with slots:  # one of `connections` requests in service, for at least `delay` seconds
            await asyncio.sleep(delay)
            if path.is_dir():
                names = [p.name + "/" * p.is_dir() for p in sorted(path.iterdir())]
                links = "".join(f'<a href="{html.escape(n)}">{html.escape(n)}</a>\n' for n in names)
                return web.Response(text=f"<html><body>{links}</body></html>", content_type="text/html")
            size = path.stat().st_size
            spans = byte_ranges(request.headers.get("Range", ""), size) if request.method == "GET" else None
            if spans is None:
                return web.FileResponse(path)  # HEAD: the size and date; a GET without Range: the whole file
            if len(spans) > 1 and multi == "whole":  # streamed until the client hangs up
                whole = web.StreamResponse(headers={"Content-Length": str(size)})
                await whole.prepare(request)
                with path.open("rb") as f, contextlib.suppress(ConnectionError):
                    while chunk := f.read(1 << 20):
                        await whole.write(chunk)
                return whole
            if not spans:
                raise web.HTTPRequestRangeNotSatisfiable(headers={"Content-Range": f"bytes */{size}"})
            spans = spans[:1] if multi == "first" else spans
            if multi == "shifted" and len(spans) > 1:
                spans = [(max(first - 64, 0), max(last - 64, 0)) for first, last in spans]
            with path.open("rb") as f:
                data = [os.pread(f.fileno(), last + 1 - first, first) for first, last in spans]
            stats["requests"] += 1
            stats["ranges"] += len(spans)
            stats["bytes"] += sum(map(len, data))
            if len(spans) == 1:
                return web.Response(body=data[0], status=206, content_type="application/octet-stream",
                                    headers={"Content-Range": f"bytes {spans[0][0]}-{spans[0][1]}/{size}"})
            boundary = secrets.token_hex(12).encode()  # each part: CRLF --boundary, its headers, CRLF, its bytes
            body = b"".join(b"\r\n--%s\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes %d-%d/%d\r\n"
                            b"\r\n%s" % (boundary, first, last, size, d) for (first, last), d in zip(spans, data))
            body += b"\r\n--%s--\r\n" % boundary
            return web.Response(body=body, status=206,
                                headers={"Content-Type": f"multipart/byteranges; boundary={boundary.decode()}"})

    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=1024, reuse_port=True).start()
    while True:  # whole, or not at all: a reader never finds it half written
        part = stats_file.with_suffix(".part")
        part.write_text(json.dumps(stats))
        part.replace(stats_file)
        await asyncio.sleep(0.2)


@contextmanager
def delayed_folder(folder: Path, delay: float = 0.02, connections: int = 128, cores: str | None = None,
                   processes: int = 1, multi: str = "parts") -> Iterator[tuple[str, Callable[[], dict]]]:
    """Serve ``folder`` from ``processes`` other processes sharing a free port of 127.0.0.1, every request
    answered after ``delay`` seconds and at most ``connections`` in service at once (split between the
    processes); ``cores``: pin the server there (e.g. "2-15"); ``multi``: how a request for several ranges
    is answered (a key of MULTI). Yields (its URL, stats(): {"requests", "ranges", "bytes"} of the ranged
    GETs served before the call)."""
    assert multi in MULTI
    import json
    import socket
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory(prefix="delayed-folder-") as work, socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        files = [Path(work) / f"stats.{i}" for i in range(processes)]
        servers = [subprocess.Popen((["taskset", "-c", cores] if cores else [])
                                    + [sys.executable, __file__, str(folder), str(delay),
                                       str(max(1, connections // processes)), str(port), str(f), multi]) for f in files]
        try:
            deadline = time.monotonic() + 30
            while not all(f.exists() for f in files):
                if any(s.poll() is not None for s in servers) or time.monotonic() > deadline:
                    raise RuntimeError("the delayed server did not start")
                time.sleep(0.05)

            def stats() -> dict:  # as written after this call: every request served before it counted
                asked, wait_until = time.time(), time.monotonic() + 30
                while any(f.stat().st_mtime <= asked for f in files) and time.monotonic() < wait_until:
                    time.sleep(0.05)
                got = [json.loads(f.read_text()) for f in files]
                return {k: sum(g.get(k, 0) for g in got) for k in ("requests", "ranges", "bytes")}

            yield f"http://127.0.0.1:{port}", stats
        finally:
            for server in servers:
                server.kill()
                server.wait()


if __name__ == "__main__":  # python tests/servers.py FOLDER DELAY CONNECTIONS PORT STATS MULTI (delayed_folder)
    import asyncio
    import sys

    asyncio.run(_serve(Path(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), Path(sys.argv[5]),
                       sys.argv[6]))
