"""Remote checkpoint folders as a hostile or broken server serves them (tests/servers.py, 127.0.0.1 only):
credentials in the URL or in --storage-options are never shown nor written; a slow server is stopped by
the timeouts with one line; a server ignoring Range is never buffered; a wrong Content-Range is refused.
Sharded indexes naming shards outside the checkpoint folder are refused, local and remote."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from servers import http_folder

USER, SECRET = "alice", "S3CRETPW"
FAST = ("--size", "320x180", "--fps", "1", "--jobs", "1", "--quiet")
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
