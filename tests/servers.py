"""Servers on 127.0.0.1 for the remote-storage tests and benchmarks (tests/test_remote.py,
benchmarks/bench_remote.py), each counting the object bytes it sends:

- :class:`CountingMoto`: moto's S3-compatible server (server mode, a real HTTP endpoint on a free port);
- :func:`http_folder`: a threaded HTTP server of a local folder with an index page (as ``python -m
  http.server``), either honouring ``Range: bytes=A-B`` (206 Partial Content) or ignoring it (200, the
  whole file), as some static servers do.
"""

from __future__ import annotations

import functools
import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from moto.moto_server.threaded_moto_server import ThreadedMotoServer
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import make_server

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


class _Folder(SimpleHTTPRequestHandler):
    """A folder with index pages; ``ranges``: whether ``Range: bytes=A-B`` is honoured."""

    ranges = True
    counter: dict = {}

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        path = Path(self.translate_path(self.path))
        m = _RANGE.match(self.headers.get("Range", ""))
        if not path.is_file():
            return super().do_GET()
        data = path.read_bytes()
        if self.ranges and m:
            start = int(m.group(1))
            end = min(int(m.group(2)) if m.group(2) else len(data) - 1, len(data) - 1)
            body = data[start:end + 1]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        else:  # the whole file, whatever was asked
            body = data
            self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Last-Modified", self.date_time_string(int(os.stat(path).st_mtime)))
        self.end_headers()
        self.wfile.write(body)
        self.counter["sent"] = self.counter.get("sent", 0) + len(body)


@contextmanager
def http_folder(folder: Path, ranges: bool = True) -> Iterator[tuple[str, dict]]:
    """Serve ``folder`` on a free port of 127.0.0.1; yields (its URL, a counter {"sent": bytes of files})."""
    counter: dict = {"sent": 0}
    handler = type("Handler", (_Folder,), {"ranges": ranges, "counter": counter})
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", counter
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
