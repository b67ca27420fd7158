"""Checkpoint folders given as URLs (layerfilm.io.storage): a real S3-compatible server (moto's server mode)
and small HTTP servers on 127.0.0.1, started here; a tiny real training run uploaded to them."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from layerfilm.errors import OptionsError
from layerfilm.io.scan import scan
from layerfilm.io.storage import RemotePath, location
from layerfilm.points.weights import WeightSpec, plan
from servers import FAKE_AWS, CountingMoto, http_folder
from test_render_encode import decode

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
