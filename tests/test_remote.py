"""Checkpoint folders given as URLs (layerfilm.io.storage): a real S3-compatible server (moto's server mode)
and small HTTP servers on 127.0.0.1, started here; a tiny real training run uploaded to them.

Remote checkpoint folders as a hostile or broken server serves them (tests/servers.py, 127.0.0.1 only):
credentials in the URL or in --storage-options are never shown nor written; a slow server is stopped by
the timeouts with one line; a server ignoring Range is never buffered; a wrong Content-Range is refused.
Sharded indexes naming shards outside the checkpoint folder are refused, local and remote."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from layerfilm.errors import OptionsError
from layerfilm.io.scan import scan
from layerfilm.io.storage import RemotePath, location
from layerfilm.points.weights import WeightSpec, plan
from servers import FAKE_AWS, CountingMoto, http_folder
from test_encode import decode

# ==== Checkpoint folders given as URLs (layerfilm.io.storage)
FAST = ("--size", "320x180", "--fps", "1", "--jobs", "1", "--quiet")


@pytest.fixture(scope="module")
def moto():
    """moto's S3 server on a free port; fake credentials in the environment (workers inherit them)."""
    with pytest.MonkeyPatch.context() as mp:
        for k, v in FAKE_AWS.items():
            mp.setenv(k, v)
        mp.delenv("AWS_ENDPOINT_URL", raising=False)
        mp.delenv("AWS_PROFILE", raising=False)
        server = CountingMoto()
        server.start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture(scope="module")
def local_film(tiny_run, tmp_path_factory):
    """The tiny run rendered from its local folder: (film, exported points)."""
    from layerfilm.cli.commands import main

    out = tmp_path_factory.mktemp("local_film")
    assert main(["render", str(tiny_run), "--out", str(out / "film.webm"), "--export-points", str(out / "points.npz"),
                 "--no-cache", *FAST]) == 0
    return out / "film.webm", out / "points.npz"


def header_and_rows(folder: Path) -> tuple[int, int]:
    """(bytes of every file's 8-byte length and JSON header, bytes of the rows a film tracks) of the
    safetensors in ``folder``, computed from the headers and the film's plan (the default points)."""
    series = scan(folder, warn=False)
    wp = plan(series, WeightSpec())
    heads = rows = 0
    for c in series.checkpoints:
        raw = Path(c.path).read_bytes()
        (n,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8:8 + n])
        heads += 8 + n
        for i, name in enumerate(wp.tensor_names):
            start, end = header[name]["data_offsets"]
            per_row = (end - start) // header[name]["shape"][0]
            rows += (end - start) if wp.transpose else len(wp.point_ids[i]) * per_row
    return heads, rows


def test_s3_render_equals_local_and_fetches_only_headers_and_rows(moto, tiny_run, local_film, tmp_path, run_cli, monkeypatch):
    url = moto.upload(tiny_run, "tiny", tiny_run.name)  # the folder's name as local: the legend names the run
    moto.reset()
    code, _, err = run_cli("render", url + "/", "--out", tmp_path / "film.webm", "--export-points", tmp_path / "points.npz",
                           "--no-cache", "--storage-options", json.dumps({"endpoint_url": moto.endpoint}), *FAST)
    assert code == 0, err
    film, points = local_film
    assert (tmp_path / "points.npz").read_bytes() == points.read_bytes()
    # a WebM carries a random segment UID, so two renders of one folder differ there: compare what it decodes to
    assert np.array_equal(np.stack(decode(tmp_path / "film.webm")), np.stack(decode(film)))
    heads, rows = header_and_rows(tiny_run)
    assert moto.sent == heads + rows  # exactly: each header once, each tracked row once, nothing else


def test_s3_in_worker_processes_with_storage_options(moto, tiny_run, local_film, tmp_path, run_cli, monkeypatch):
    """Block tasks in spawned workers re-open the remote files themselves: the storage options travel
    with the checkpoints (no AWS_ENDPOINT_URL here), and the points are the same."""
    import layerfilm.study

    monkeypatch.setattr(layerfilm.study, "IN_PROCESS_BYTES", 0)  # the tiny run would otherwise stay in-process
    url = moto.upload(tiny_run, "workers", tiny_run.name)
    code, _, err = run_cli("render", url, "--out", tmp_path / "film.webm", "--export-points", tmp_path / "points.npz",
                           "--no-cache", "--storage-options", json.dumps({"endpoint_url": moto.endpoint}),
                           *FAST[:4], "--jobs", "2", "--quiet")
    assert code == 0, err
    assert (tmp_path / "points.npz").read_bytes() == local_film[1].read_bytes()


def test_s3_sharded_folders_give_the_local_points(moto, pythia_run, tmp_path, run_cli, monkeypatch):
    """Pythia-style step folders of bf16 shards with an index: listed, indexed and read by ranges."""
    url = moto.upload(pythia_run, "pythia", pythia_run.name)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto.endpoint)
    for where, name in ((url, "s3"), (pythia_run, "local")):
        code, _, err = run_cli("render", where, "--out", tmp_path / f"{name}.webm", "--export-points",
                               tmp_path / f"{name}.npz", "--no-cache", *FAST)
        assert code == 0, err
    assert (tmp_path / "s3.npz").read_bytes() == (tmp_path / "local.npz").read_bytes()


def test_s3_endpoint_from_environment_and_scan(moto, tiny_run, run_cli, monkeypatch):
    url = moto.upload(tiny_run, "runs", "scan")
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto.endpoint)  # s3fs (botocore) honours it
    code, out, err = run_cli("scan", url, "--json")
    assert code == 0, err
    found = json.loads(out)
    local = json.loads(run_cli("scan", tiny_run, "--json")[1])
    assert [(c["step"], c["size"], c["blocks"], c["dtype"]) for c in found] == \
        [(c["step"], c["size"], c["blocks"], c["dtype"]) for c in local]
    assert [c["path"] for c in found] == [f"{url}/{Path(c['path']).name}" for c in local]


def test_s3_cache_keyed_by_etag(moto, tiny_run, tmp_path, run_cli, monkeypatch):
    url = moto.upload(tiny_run, "runs", "cached")
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto.endpoint)
    cache = tmp_path / "cache"
    heads, rows = header_and_rows(tiny_run)

    def render(name: str) -> int:
        moto.reset()
        code, _, err = run_cli("render", url, "--out", tmp_path / f"{name}.webm", "--cache", cache, *FAST)
        assert code == 0, err
        return moto.sent

    assert render("first") == heads + rows
    assert render("second") <= heads  # headers at most (this process keeps them): no tensor bytes
    entries = set(cache.glob("*.npz"))
    changed = tmp_path / "changed"  # step 30 rewritten with step 40's weights: a new ETag, same size
    changed.mkdir()
    shutil.copy(tiny_run / "step_000040.safetensors", changed / "step_000030.safetensors")
    moto.upload(changed, "runs", "cached")
    assert render("third") > rows // 2  # the key frames are read again
    assert len(set(cache.glob("*.npz")) - entries) == 1


def test_s3_stability_and_stills_equal_local(moto, tiny_run, tmp_path, run_cli, monkeypatch):
    """The study commands read whole block tensors by ranges: the same measures as the local folder."""
    url = moto.upload(tiny_run, "runs", "study")
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto.endpoint)
    remote = run_cli("stability", url, "--json", "--no-cache", "--quiet")
    assert remote[0] == 0, remote[2]
    assert json.loads(remote[1]) == json.loads(run_cli("stability", tiny_run, "--json", "--no-cache", "--quiet")[1])
    code, _, err = run_cli("stills", url, "--out", tmp_path / "stills.png", "--no-cache", "--quiet")
    assert code == 0 and (tmp_path / "stills.png").stat().st_size > 0, err


def test_http_with_ranges_renders_like_local(tiny_run, local_film, tmp_path, run_cli):
    with http_folder(tiny_run.parent, ranges=True) as (base, counter):
        code, _, err = run_cli("render", f"{base}/{tiny_run.name}/", "--out", tmp_path / "film.webm",
                               "--export-points", tmp_path / "points.npz", "--no-cache", *FAST)
    assert code == 0, err
    assert (tmp_path / "points.npz").read_bytes() == local_film[1].read_bytes()
    heads, rows = header_and_rows(tiny_run)
    assert counter["sent"] == heads + rows


def test_http_server_ignoring_range_is_one_clear_error(tiny_run, tmp_path, run_cli):
    with http_folder(tiny_run.parent, ranges=False) as (base, counter):
        code, out, err = run_cli("render", f"{base}/{tiny_run.name}", "--out", tmp_path / "film.webm", "--no-cache", *FAST)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("layerfilm: error: ")
    assert "ignores Range requests" in err and "step_000000.safetensors" in err
    assert list(tmp_path.iterdir()) == []  # nothing written, no partial left
    assert counter["sent"] <= (tiny_run / "step_000000.safetensors").stat().st_size  # stopped at the first answer


def test_pickles_over_a_url_are_refused_naming_safetensors(moto, tmp_path, run_cli, monkeypatch):
    import torch

    folder = tmp_path / "pickles"
    folder.mkdir()
    for step in (0, 10):
        torch.save({"transformer.h.0.mlp.c_fc.weight": torch.zeros(8, 4)}, folder / f"step_{step}.pt")
    url = moto.upload(folder, "runs", "pickles")
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto.endpoint)
    code, _, err = run_cli("render", url, "--out", tmp_path / "film.webm", *FAST)
    assert code == 2 and "safetensors" in err and "byte ranges" in err


def test_storage_options_checked_before_any_work(tiny_run, run_cli, tmp_path):
    code, _, err = run_cli("scan", "s3://runs/x", "--storage-options", "[1]")
    assert code == 2 and "--storage-options" in err and "JSON object" in err
    code, _, err = run_cli("scan", tiny_run, "--storage-options", '{"anon": true}')
    assert code == 2 and "local folder" in err


def test_remote_paths_pickle_with_what_the_listing_said(moto, tiny_run, monkeypatch):
    import pickle

    url = moto.upload(tiny_run, "runs", "pickled")
    root = location(url, json.dumps({"endpoint_url": moto.endpoint}))
    assert isinstance(root, RemotePath)
    first = sorted(root.iterdir())[0]
    twin = pickle.loads(pickle.dumps(first))
    assert twin == first and twin.entry == first.entry and twin.stat() == first.stat()
    assert location(f"file://{tiny_run}") == tiny_run
    with pytest.raises(OptionsError, match="nosuchproto:// URLs: Protocol not known"):
        location("nosuchproto://x/y").is_dir()


def test_merged_ranges_give_back_each_range_within_the_budget():
    from layerfilm.io.storage import merge_gaps

    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, 1 << 16, dtype=np.uint8).tobytes()
    rows = np.sort(rng.choice(512, 128, replace=False))
    ranges = [(int(r) * 100, 100) for r in rows] + [(60_000, 0)]  # one range per row of 100 bytes, and an empty one
    for budget in (0.0, 0.2, 10.0):
        merged, parts = merge_gaps(ranges, budget)
        got = [data[o:o + n] for o, n in merged]
        assert [got[i][s:s + n] for i, s, n in parts] == [data[o:o + n] for o, n in ranges]
        assert sum(n for _, n in merged) - sum(n for _, n in ranges) <= budget * sum(n for _, n in ranges)
        assert len(merged) <= len(ranges)
    assert len(merge_gaps(ranges, 0.0)[0]) == len(ranges) - sum(np.diff(rows) == 1)  # only touching rows join


def test_http_with_latency_and_few_connections_renders_the_local_film(tiny_run, local_film, tmp_path, run_cli):
    """A server 20 ms away that serves 4 requests at once (tests/servers.py delayed_folder): the rows are
    read by concurrent, merged ranged GETs, and the film and its points are the local ones."""
    from servers import delayed_folder

    with delayed_folder(tiny_run.parent, delay=0.02, connections=4) as (base, stats):
        code, _, err = run_cli("render", f"{base}/{tiny_run.name}", "--out", tmp_path / "film.webm",
                               "--export-points", tmp_path / "points.npz", "--no-cache", *FAST)
        served = stats()
    assert code == 0, err
    assert (tmp_path / "points.npz").read_bytes() == local_film[1].read_bytes()
    assert np.array_equal(decode(tmp_path / "film.webm"), decode(local_film[0]))
    heads, rows = header_and_rows(tiny_run)
    assert heads + rows <= served["bytes"] <= 1.3 * (heads + rows)


@pytest.fixture(scope="module")
def sparse_points_film(tiny_run, tmp_path_factory):
    """The tiny run rendered from its local folder with 24 of each block's 128 rows: many ranges a key frame."""
    from layerfilm.cli.commands import main

    out = tmp_path_factory.mktemp("sparse_points_film")
    assert main(["render", str(tiny_run), "--out", str(out / "film.webm"), "--export-points", str(out / "points.npz"),
                 "--no-cache", "--points", "24", *FAST]) == 0
    return out / "film.webm", out / "points.npz"


@pytest.mark.parametrize("multi", ["parts", "first", "whole"])
def test_http_multi_range_requests_and_their_fallbacks_render_the_local_film(multi, tiny_run, sparse_points_film,
                                                                             tmp_path, run_cli):
    """A server that answers a request for many ranges with them all (multipart/byteranges), with the
    first alone, or with the whole file (tests/servers.py MULTI): the film is the local one, and only the
    first kind of server is asked for many ranges at once (the others, after their first answers, one
    range a request)."""
    from servers import delayed_folder

    with delayed_folder(tiny_run.parent, delay=0.02, connections=4, multi=multi) as (base, stats):
        code, _, err = run_cli("render", f"{base}/{tiny_run.name}", "--out", tmp_path / "film.webm", "--points", "24",
                               "--export-points", tmp_path / "points.npz", "--no-cache", *FAST)
        served = stats()
    assert code == 0, err
    assert (tmp_path / "points.npz").read_bytes() == sparse_points_film[1].read_bytes()
    assert np.array_equal(decode(tmp_path / "film.webm"), decode(sparse_points_film[0]))
    if multi == "parts":
        assert served["ranges"] >= 8 * served["requests"]  # 476 ranges in 42 requests
    else:
        assert served["ranges"] == served["requests"] > 100


# ==== Remote checkpoint folders as a hostile or broken server serves them (tests/servers.py, 127.0.0.1 only)
USER, SECRET = "alice", "S3CRETPW"

TIMEOUTS = ("(timeouts: connect 3 s, read 3 s; set LAYERFILM_CONNECT_TIMEOUT or LAYERFILM_READ_TIMEOUT, in seconds, "
            "to wait longer)")


def snapshot(folder: Path) -> dict:
    """Every file under ``folder`` with its size and mtime: what the commands must leave as it is."""
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def assert_no_secret(texts: list[str], folder: Path, *secrets: str) -> None:
    """None of ``secrets`` in ``texts`` nor in any file under ``folder`` (bytes: PNG metadata, npz, cache)."""
    for secret in secrets:
        assert not [t for t in texts if secret in t], secret
        assert not [p for p in folder.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()], secret


@pytest.fixture
def served(tiny_run, tmp_path):
    """tmp/served/run: the tiny run and a corrupt checkpoint (a skip warning that names its URL)."""
    run = tmp_path / "served" / "run"
    shutil.copytree(tiny_run, run)
    (run / "step_000070.safetensors").write_bytes(b"\x10" + b"\0" * 7 + b"not json" * 4)
    return run


@pytest.fixture
def short_timeouts(monkeypatch):
    monkeypatch.setenv("LAYERFILM_CONNECT_TIMEOUT", "3")  # 1 s failed once on 2 busy cores
    monkeypatch.setenv("LAYERFILM_READ_TIMEOUT", "3")


@pytest.mark.slow
def test_credentials_in_a_url_are_shown_redacted_and_written_nowhere(served, tmp_path, run_cli):
    out, cache = tmp_path / "out", tmp_path / "cache"
    out.mkdir()
    before = snapshot(served)
    texts = []
    with http_folder(served.parent, auth=(USER, SECRET)) as (base, _):
        url = base.replace("http://", f"http://{USER}:{SECRET}@") + "/run/"
        shown = base.replace("http://", "http://***@") + "/run"
        for argv in (("scan", url), ("scan", url, "--json"),
                     ("render", url, "--out", out / "film.webm", "--export-points", out / "points.npz", "--cache", cache, *FAST),
                     ("report", url, "--out", out / "report.html", "--cache", cache, "--quiet"),
                     ("report", url, "--out", out / "report.md", "--cache", cache, "--quiet"),
                     ("stability", url, "--json", "--cache", cache, "--quiet")):
            code, stdout, stderr = run_cli(*argv)
            assert code == 0, stderr
            texts += [stdout, stderr]
        assert f"{shown}/step_000070.safetensors" in texts[0]  # scan names the skipped checkpoint by its redacted URL
        assert json.loads(texts[2])[0]["path"] == f"{shown}/step_000000.safetensors"
        assert f"checkpoints in {shown.replace('*', chr(92) + '*')}/ (steps" in (out / "report.md").read_text()  # *: Markdown
        code, _, err = run_cli("scan", url + "nope/")
        assert (code, err) == (2, f"layerfilm: error: {shown}/nope: no such folder\n")
        code, _, err = run_cli("scan", url.replace(SECRET, "WR0NGPW"))
        assert (code, err) == (2, f"layerfilm: error: {shown[:-4]}: cannot read from http:// (ClientResponseError: 401, "
                                  f"message='Unauthorized', url='{base}')\n")  # its host, listed first
        texts.append(err)
    names = {p.name for p in out.iterdir()}
    assert {"film.webm", "points.npz", "report.html", "report.md", "report_heatmap.png"} <= names  # all checked below
    assert list(cache.glob("*.npz"))  # the cache was written (and holds no secret either)
    assert_no_secret(texts, tmp_path, SECRET, "WR0NGPW", f"{USER}:")
    assert snapshot(served) == before


def test_invalid_storage_options_are_never_echoed(run_cli, tmp_path):
    text = '{"key": "AKIAEXAMPLEKEY", "secret": "' + SECRET + '", "token": "TOKENVALUE",'
    code, out, err = run_cli("scan", "s3://bucket/run/", "--storage-options", text)
    assert (code, out) == (2, "")
    assert err == ("layerfilm: error: --storage-options: not JSON (Expecting property name enclosed in double quotes: "
                   f"line 1 column {len(text) + 1} (char {len(text)})); give a JSON object\n")
    code, _, err = run_cli("scan", "s3://bucket/run/", "--storage-options", f'["{SECRET}"]')
    assert code == 2 and SECRET not in err and "must be a JSON object" in err
    assert list(tmp_path.iterdir()) == []


def test_secret_storage_options_redacted_from_storage_errors():
    from layerfilm.io.storage import redact

    options = json.dumps({"key": "AKIAEXAMPLEKEY", "client_kwargs": {"aws_session_token": "TOKENVALUE"},
                          "endpoint_url": "http://u:PASSWORD@127.0.0.1:9"})
    text = "denied for AKIAEXAMPLEKEY with TOKENVALUE at http://u:PASSWORD@127.0.0.1:9/x and s3://k:s@b/"
    assert redact(text, options) == "denied for *** with *** at http://***@127.0.0.1:9/x and s3://***@b/"


@pytest.mark.parametrize("hostile, what", [
    ("trickle", "the answer for bytes 0-7 brought less than 64 KiB (or the rest) in one read timeout"),
    ("stall", "the answer for bytes 0-7 brought less than 64 KiB (or the rest) in one read timeout"),
    ("short", "the answer for bytes 0-7 brought less than 64 KiB (or the rest) in one read timeout"),
    ("trickle-index", "no answer in time"),
])
def test_slow_servers_stop_with_one_line_within_bounded_time(hostile, what, served, run_cli, tmp_path, short_timeouts):
    before = snapshot(served)
    with http_folder(served.parent, hostile=hostile) as (base, _):
        start = time.monotonic()
        for argv in (("scan", f"{base}/run/"), ("render", f"{base}/run/", "--out", tmp_path / "film.webm", "--no-cache", *FAST)):
            code, out, err = run_cli(*argv)
            assert code == 2 and err.startswith("layerfilm: error: ") and err.count("\n") == 1, err
            where = base if hostile == "trickle-index" else f"{base}/run/step_000000.safetensors"
            assert err.startswith(f"layerfilm: error: {where}: {what}") and err.endswith(f" {TIMEOUTS}\n"), err
        assert time.monotonic() - start < 30  # each alone would hang until the server's 60 s bound
    assert sorted(p.name for p in tmp_path.iterdir()) == ["served"]  # no film, no partial
    assert snapshot(served) == before


def test_wrong_content_range_is_refused(served, run_cli, tmp_path):
    """A server answering each range from 64 bytes earlier, with the right length and a Content-Range
    that says so, gave a wrong film: the Content-Range must name the range asked for."""
    with http_folder(served.parent, hostile="shifted") as (base, _):
        code, _, err = run_cli("render", f"{base}/run", "--out", tmp_path / "film.webm", "--no-cache", *FAST)
    size = (served / "step_000000.safetensors").stat().st_size
    n = int.from_bytes((served / "step_000000.safetensors").read_bytes()[:8], "little")
    assert code == 2
    assert err == (f"layerfilm: error: {base}/run/step_000000.safetensors: asked the server for bytes 8-{n + 7:,} and it "
                   f"answered Content-Range 'bytes 0-{n - 1}/{size}'; layerfilm reads only the range it asks for\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["served"]


def test_multi_range_parts_not_asked_for_are_refused(tiny_run, run_cli, tmp_path):
    """A server answering a request for many ranges with parts from 64 bytes earlier (their Content-Ranges
    saying so, tests/servers.py MULTI "shifted"): one line naming the file and the part, exit 2."""
    from servers import delayed_folder

    with delayed_folder(tiny_run.parent, delay=0.0, connections=8, multi="shifted") as (base, _):
        code, _, err = run_cli("render", f"{base}/{tiny_run.name}", "--out", tmp_path / "film.webm", "--points", "24",
                               "--no-cache", *FAST)
    assert code == 2
    assert re.fullmatch(rf"layerfilm: error: {base}/{tiny_run.name}/step_\d{{6}}\.safetensors: asked the server for "
                        r"bytes [\d,]+-[\d,]+ \(\d+ ranges\) and it answered a part with Content-Range "
                        r"'bytes \d+-\d+/\d+'; layerfilm reads only the ranges it asks for\n", err), err
    assert not (tmp_path / "film.webm").exists()


# runs a command and prints its peak RSS (KB): measured from this small process, not from pytest's fork
# (a child forked from pytest counts pytest's pages until it execs)
PEAK_RSS = ("import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(code)")


def _peak_rss_mb(argv: list[str], env: dict, timeout: float) -> tuple[int, str, float]:
    """(exit code, stderr, peak RSS in MB) of a command, killed past ``timeout`` seconds."""
    done = subprocess.run([sys.executable, "-c", PEAK_RSS, *argv], env=env, timeout=timeout, capture_output=True, text=True)
    err, _, rss = done.stderr.rstrip("\n").rpartition("\n")
    return done.returncode, err + "\n", int(rss) / 1024


def test_a_server_ignoring_range_is_never_buffered(tmp_path):
    """A 400 MB checkpoint (sparse: zeros streamed by the server) on a server that sends the whole file
    for every range: the answer is refused from its headers, and the child never holds it."""
    run = tmp_path / "served" / "run"
    run.mkdir(parents=True)
    size = 400 * 2**20
    for step in (0, 10):
        with open(run / f"step_{step:06d}.safetensors", "wb") as f:
            f.truncate(size)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    with http_folder(run.parent, ranges=False) as (base, counter):
        code, err, rss = _peak_rss_mb([sys.executable, "-m", "layerfilm", "scan", f"{base}/run"], env, 120)
    assert code == 2
    assert err == (f"layerfilm: error: {base}/run/step_000000.safetensors: asked the server for bytes 0-7 (8 bytes) and "
                   f"got {size:,} in its answer; the server ignores Range requests (or the file changed), and layerfilm "
                   "reads remote files by byte ranges only\n")
    assert rss < 200, rss  # the old code buffered the whole answer: over 400 MB
    assert counter["sent"] < size // 4
    assert sorted(p.name for p in run.iterdir()) == ["step_000000.safetensors", "step_000010.safetensors"]


# ------------------------------------------------------------ sharded indexes
def _index(step: Path) -> Path:
    return step / "model.safetensors.index.json"


def _point_shard(step: Path, shard: str) -> str:
    """Rewrite ``step``'s index so its first tensor names ``shard``; returns that tensor's name."""
    index = json.loads(_index(step).read_text())
    name = sorted(index["weight_map"])[0]
    index["weight_map"][name] = shard
    _index(step).write_text(json.dumps(index))
    return name


@pytest.fixture
def sharded(pythia_run, tmp_path):
    """tmp/place/run: a copy of the sharded Pythia run, and tmp/place/elsewhere.safetensors a real shard
    outside it (the old code read it)."""
    run = tmp_path / "place" / "run"
    shutil.copytree(pythia_run, run)
    first = sorted((run / "step3").glob("model-*.safetensors"))[0]
    shutil.copy(first, tmp_path / "place" / "elsewhere.safetensors")
    return run


@pytest.mark.parametrize("shard", ["../../elsewhere.safetensors", "ABSOLUTE", "sub/model.safetensors"])
def test_shards_outside_the_checkpoint_folder_are_refused(shard, sharded, run_cli, tmp_path):
    shard = str(sharded.parent / "elsewhere.safetensors") if shard == "ABSOLUTE" else shard
    _point_shard(sharded / "step3", shard)
    before = snapshot(tmp_path)
    problem = (f"weight_map names shard {shard!r}, which is not a file beside the index; layerfilm reads no shard "
               "outside the checkpoint folder or in a sub-folder")
    code, out, err = run_cli("scan", sharded, "--json")
    assert code == 0, err
    bad = [c for c in json.loads(out) if c.get("problem")]
    assert [(c["step"], c.get("problem")) for c in bad] == [(3, f"model.safetensors.index.json: {problem}")]
    code, _, err = run_cli("render", sharded, "--out", tmp_path / "film.webm", "--no-cache", "--strict", *FAST)
    assert code == 2 and err.count("\n") == 1 and problem in err, err
    with http_folder(sharded.parent) as (base, counter):  # over a URL: the server would resolve ../ for us
        code, out, err = run_cli("scan", f"{base}/run", "--json")
    assert code == 0, err
    assert [c.get("problem") for c in json.loads(out) if c.get("problem")] == [f"model.safetensors.index.json: {problem}"]
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("shard", [".", "", ".."])
def test_a_shard_that_is_no_file_name_gets_a_clear_line(shard, sharded, run_cli):
    name = _point_shard(sharded / "step3", shard)
    code, out, err = run_cli("scan", sharded, "--json")
    assert code == 0, err
    assert [c.get("problem") for c in json.loads(out) if c.get("problem")] == [
        f"model.safetensors.index.json: weight_map gives tensor {name!r} the shard {shard!r}, which is not a file name; "
        "name the shard file beside the index"]
