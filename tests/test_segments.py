"""Films drawn in segments and joined (layerfilm.video.segments, layerfilm.video.webm).

layerfilm.video.segments: a film drawn and encoded as segments by worker processes, joined in order, holds
the frames of the one-stream film (WebM and GIF bit for bit, PNG folders numbered globally, MP4 the
same count of close frames), and leaves nothing behind when a segment fails.

layerfilm.video.webm: WebM segments encoded by layerfilm's own encoder, joined at the EBML level, give the
frames of a one-segment encode and of ffmpeg's concat join, frame f at round(f * 1000 / fps) ms, the
film's duration, Cues that point at key frames, and seeking; parts that are not such segments raise
one line."""

from __future__ import annotations

import errno
import math
import os
import re
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from layerfilm.draw.overlay import Overlay
from layerfilm.draw.raster import Style
from layerfilm.errors import EncodeError, OptionsError
from layerfilm.film import FilmFrames
from layerfilm.film_options import FilmOptions
from layerfilm.parallel.engines import LocalEngine
from layerfilm.points.weights import WeightSpec
from layerfilm.study import Study
from layerfilm.video.encode import EncodeOptions, encoder, encoder_command, ffmpeg_exe, join
from layerfilm.video.segments import encode_film, plan, spans
from test_encode import decode

# ==== layerfilm.video.segments
SIZE = (320, 180)
SHORT = EncodeOptions(segment_seconds=0.5)  # 5 frames at 10 fps: small films still make several segments


@pytest.fixture(scope="module")
def frames(tiny_run) -> FilmFrames:
    """The film of the tiny run (7 key frames, 61 frames at 10 fps), overlay included."""
    opts = FilmOptions(weights=WeightSpec(points=32), style=Style(*SIZE), fps=10, jobs=1)
    traj = Study.open(tiny_run, opts, progress=False).trajectories()
    film = FilmFrames.of(traj, opts)
    return replace(film, overlay=Overlay.of_points(film.renderer, traj.stats, opts.settle_threshold))


@pytest.fixture(scope="module")
def drawn(frames) -> list[np.ndarray]:
    return [frames.frame(f) for f in range(frames.n_frames)]


def segmented(frames, out, kind_opts=SHORT, jobs=3, **kw) -> list[int]:
    """Encode with ``jobs`` workers; returns the progress counts the main process received."""
    counts: list[int] = []
    n = encode_film(frames, out, SIZE, kind_opts, 10, LocalEngine(jobs), counts.append, **kw)
    assert n == jobs  # really cut into that many segments
    return counts


def test_spans_cover_the_film_in_order_with_at_most_jobs_segments_of_at_least_min_frames():
    for n, jobs, least in [(61, 3, 5), (100, 16, 30), (29, 4, 30), (60, 4, 30), (1, 8, 1), (2671, 16, 30)]:
        s = spans(n, jobs, least)
        assert s[0][0] == 0 and s[-1][1] == n
        assert all(a < b and b == c for (a, b), (c, _) in zip(s, s[1:] + [(n, n)]))
        assert len(s) <= jobs
        assert len(s) == 1 or all(b - a >= least for a, b in s)
        assert len(s) == max(1, min(jobs, n // least))  # as many as the rules allow
    assert len(plan(61, 1, 10, SHORT)) == 1  # one job: one stream
    assert len(plan(61, 8, 10, EncodeOptions())) == 6  # 1 s at 10 fps: 10 frames each at least


def test_a_long_film_has_more_segments_than_jobs_for_the_workers_to_balance():
    """Up to SEGMENTS_PER_JOB per job, each at least BALANCE_SECONDS, only where the film is long enough."""
    from layerfilm.video.segments import BALANCE_SECONDS, SEGMENTS_PER_JOB

    least = int(BALANCE_SECONDS * 15)
    for n, jobs in [(2671, 16), (346, 16), (2671, 2), (241, 2), (100_000, 4), (2671, 1)]:
        s = plan(n, jobs, 15, EncodeOptions())
        assert s[0][0] == 0 and s[-1][1] == n and all(b == c for (_, b), (c, _) in zip(s, s[1:]))
        few = spans(n, jobs, 15)  # without balancing: at most one per job
        if jobs == 1:
            assert len(s) == 1
        elif len(s) > len(few):
            assert all(b - a >= least for a, b in s) and len(s) <= SEGMENTS_PER_JOB * jobs
            assert len(s) == min(SEGMENTS_PER_JOB * jobs, n // least)
        else:
            assert s == few
    assert len(plan(2671, 16, 15, EncodeOptions())) == 44 and len(plan(100_000, 4, 15, EncodeOptions())) == 12
    with pytest.raises(OptionsError, match="segment_seconds"):
        EncodeOptions(segment_seconds=0)


def test_a_segments_key_frames_draw_the_same_frames(frames, drawn):
    part = frames.keys(23, 41)
    assert part.xy.shape[0] < frames.xy.shape[0]  # only what the segment needs travels to its worker
    for f in range(23, 41):
        np.testing.assert_array_equal(part.frame(f), drawn[f])


def test_webm_segments_join_to_the_frames_of_one_stream_bit_for_bit(frames, drawn, tmp_path):
    one, joined = tmp_path / "one.webm", tmp_path / "joined.webm"
    assert encode_film(frames, one, SIZE, SHORT, 10) == 1
    counts = segmented(frames, joined)
    assert sum(counts) == frames.n_frames  # progress summed over the workers
    a, b = decode(one), decode(joined)
    assert len(a) == len(b) == frames.n_frames
    for x, y, z in zip(a, b, drawn):
        np.testing.assert_array_equal(x, y)
        np.testing.assert_array_equal(y, z)  # lossless: the drawn frames themselves
    assert sorted(p.name for p in tmp_path.iterdir()) == ["joined.webm", "one.webm"]  # no segment left


def test_gif_segments_share_one_palette_and_join_to_the_same_frames(frames, tmp_path):
    one, joined = tmp_path / "one.gif", tmp_path / "joined.gif"
    encode_film(frames, one, SIZE, SHORT, 10)
    segmented(frames, joined)
    a, b = decode(one), decode(joined)
    assert len(a) == len(b) == frames.n_frames
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert b"NETSCAPE2.0" in joined.read_bytes()  # still loops
    assert sorted(p.name for p in tmp_path.iterdir()) == ["joined.gif", "one.gif"]


def test_mp4_segments_join_in_order_to_close_frames(frames, drawn, tmp_path):
    """Not bitwise: each segment starts a new group of pictures, so H.264 (lossy) codes the frames
    around a cut from other references than the one-stream film does."""
    one, joined = tmp_path / "one.mp4", tmp_path / "joined.mp4"
    encode_film(frames, one, SIZE, SHORT, 10)
    segmented(frames, joined, jobs=2)
    a, b = decode(one), decode(joined)
    assert len(a) == len(b) == frames.n_frames

    def err(x, y):
        return np.abs(x.astype(int) - y).mean()

    for f, (x, y, z) in enumerate(zip(a, b, drawn)):
        assert err(y, z) <= 1.5 * err(x, z) + 0.5, f  # as close to the drawn frame as the one-stream film
        for g in (f - 5, f + 5):  # in order: nearer its own drawn frame than to those around it
            if 0 <= g < len(drawn) and not np.array_equal(drawn[g], z):
                assert err(y, z) < err(y, drawn[g]), (f, g)


def test_png_workers_number_their_frames_globally(frames, drawn, tmp_path):
    out = tmp_path / "frames"
    segmented(frames, out)
    names = sorted(p.name for p in out.iterdir())
    assert names == [f"frame_{f + 1:06d}.png" for f in range(frames.n_frames)]
    for f in (0, 20, 21, 40, 41, 60):  # on both sides of every cut
        np.testing.assert_array_equal(iio.imread(out / names[f]), drawn[f])
    assert [p.name for p in tmp_path.iterdir()] == ["frames"]


class Failing:
    """A film whose frame ``bad`` has the wrong shape (the encoder refuses it) and whose other
    frames are slow: the failure must stop the other segments, not wait for them."""

    def __init__(self, frames: FilmFrames, bad: int) -> None:
        self.inner, self.bad = frames, bad

    @property
    def n_frames(self) -> int:
        return 600

    def frame(self, f: int) -> np.ndarray:
        if f == self.bad:
            return np.zeros((2, 2, 3), np.uint8)
        time.sleep(0.1)  # 66-67 frames a segment: 6-7 s each, 60 s in all, if the failure did not cancel them
        return self.inner.frame(f % self.inner.n_frames)

    def keys(self, start: int, stop: int) -> Failing:
        return self

    def samples(self) -> list[np.ndarray]:
        return self.inner.samples()


def test_a_failing_segment_cancels_the_others_and_leaves_nothing(frames, tmp_path):
    out = tmp_path / "film.webm"
    counts: list[int] = []
    parts = plan(600, 3, 10, SHORT)  # 9 segments, 3 at a time
    bad = parts[1][0] + 5  # early in the second segment: the first three run at once
    with pytest.raises(ValueError, match=r"frame \(2, 2, 3\) uint8, expected \(180, 320, 3\)"):
        encode_film(Failing(frames, bad=bad), out, SIZE, SHORT, 10, LocalEngine(3), counts.append)
    assert list(tmp_path.iterdir()) == []
    assert len(parts) == 9 and sum(counts) < parts[3][0]  # the running segments stopped early, no later one ran


def test_render_jobs_2_and_jobs_1_write_the_same_film(tiny_run, tmp_path, run_cli):
    """Through the command line: 7 key frames at 15 fps are 6 s, two segments of at least 2 s."""
    assert len(plan(91, 2, 15, EncodeOptions())) == 2
    films = []
    for jobs in (1, 2):
        out = tmp_path / f"jobs{jobs}.webm"
        code, _, err = run_cli("render", tiny_run, "--out", out, "--size", "320x180", "--points", "16", "--quiet",
                               "--no-cache", "--jobs", jobs)
        assert code == 0, err
        films.append(decode(out))
    assert len(films[0]) == len(films[1]) == 91
    for x, y in zip(*films):
        np.testing.assert_array_equal(x, y)


def test_the_segments_folder_of_a_killed_render_is_removed_by_the_next(frames, tmp_path):
    from test_outputs import dead_pid

    stale = tmp_path / f".film.webm.partial-{dead_pid()}.parts"
    stale.mkdir()
    (stale / "part_0000.webm").write_bytes(b"half a segment")
    encode_film(frames, tmp_path / "film.webm", SIZE, SHORT, 10)
    assert [p.name for p in tmp_path.iterdir()] == ["film.webm"]


# ==== layerfilm.video.webm
FAST = EncodeOptions(preset="realtime", threads=1)


def film(n: int, size: tuple[int, int], seed: int = 0) -> list[np.ndarray]:
    """``n`` distinct (H, W, 3) frames: a square moving over a seeded noisy gradient."""
    w, h = size
    rng = np.random.default_rng(seed)
    base = (np.add.outer(np.arange(h), np.arange(w))[..., None] * [3, 5, 7] % 256).astype(np.uint8)
    out = []
    for f in range(n):
        img = base.copy()
        img[rng.random((h, w)) < 0.05] = rng.integers(0, 256, 3, dtype=np.uint8)
        y, x = (2 * f) % max(1, h - 6), (3 * f) % max(1, w - 6)
        img[y:y + 6, x:x + 6] = (255, 255 - 9 * f % 256, 0)
        out.append(img)
    return out


def encode(frames: list[np.ndarray], target: Path, fps: float, first: int = 0) -> Path:
    """The frames encoded as layerfilm encodes one segment of a film."""
    size = (frames[0].shape[1], frames[0].shape[0])
    with encoder(encoder_command("webm", size, FAST, fps, target, first=first), size) as writer:
        for img in frames:
            writer.write(img)
    return target


def segments(frames: list[np.ndarray], counts: list[int], folder: Path, fps: float) -> list[Path]:
    edges = np.cumsum([0, *counts])
    return [encode(frames[a:b], folder / f"part_{i:04d}.webm", fps, a) for i, (a, b) in enumerate(zip(edges, edges[1:]))]


def concat(parts: list[Path], counts: list[int], fps: float, dest: Path) -> Path:
    """ffmpeg's concat demuxer join, as layerfilm.video.encode.join did it before layerfilm.video.webm."""
    listing = dest.with_suffix(".txt")
    listing.write_text("".join(f"file '{p}'\nduration {n / fps:.6f}\n" for p, n in zip(parts, counts)))
    subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-f", "concat", "-safe", "0", "-i", str(listing), "-c", "copy",
                    "-f", "webm", str(dest)], check=True)
    return dest


def packet_times(path: Path) -> list[int]:
    """Each packet's pts in the file's own time base (ms for TimecodeScale 1e6), copied, not decoded;
    the demuxer must not warn about the file."""
    p = subprocess.run([ffmpeg_exe(), "-v", "warning", "-i", str(path), "-c", "copy", "-f", "framemd5", "-"],
                       check=True, capture_output=True, text=True)
    assert p.stderr == ""
    text = p.stdout
    return [int(line.split(",")[2]) for line in text.splitlines() if line and not line.startswith("#")]


def reported_duration(path: Path) -> float:
    err = subprocess.run([ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True, text=True).stderr
    h, m, s = re.search(r"Duration: (\d+):(\d+):([\d.]+)", err).groups()  # type: ignore[union-attr]
    return int(h) * 3600 + int(m) * 60 + float(s)


def frame_at(path: Path, seconds: str, size: tuple[int, int]) -> np.ndarray:
    raw = subprocess.run([ffmpeg_exe(), "-v", "error", "-ss", seconds, "-i", str(path), "-frames:v", "1", "-f", "rawvideo",
                          "-pix_fmt", "rgb24", "-"], check=True, capture_output=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(size[1], size[0], 3)


# An EBML reader of its own (not layerfilm.video.webm's), to check what the join wrote.
def vint(b: bytes, i: int, marker: bool = False) -> tuple[int, int]:
    n = 9 - b[i].bit_length()
    v = int.from_bytes(b[i:i + n], "big")
    return (v if marker else v & ((1 << (7 * n)) - 1)), n


def elements(b: bytes, start: int, end: int) -> dict[int, list[tuple[int, int]]]:
    """{id: [(element start, content start)]} of the elements between start and end, which they fill exactly."""
    out: dict[int, list[tuple[int, int]]] = {}
    while start < end:
        eid, a = vint(b, start, True)
        size, c = vint(b, start + a)
        out.setdefault(eid, []).append((start, start + a + c))
        start += a + c + size
    assert start == end
    return out


def content(b: bytes, at: int) -> tuple[int, int]:
    eid, a = vint(b, at, True)
    size, c = vint(b, at + a)
    return at + a + c, at + a + c + size


CASES = [((64, 48), 15.0, [5, 7, 1, 9]), ((37, 23), 10.0, [6, 6, 6]), ((50, 34), 24.0, [40, 3])]


@pytest.fixture(scope="module", params=CASES, ids=lambda c: f"{c[0][0]}x{c[0][1]}@{c[1]:g}fps")
def joined(request, tmp_path_factory):
    size, fps, counts = request.param
    folder = tmp_path_factory.mktemp("join")
    frames = film(sum(counts), size)
    parts = segments(frames, counts, folder, fps)
    join(parts, counts, fps, "webm", folder / "joined.webm")
    return {"size": size, "fps": fps, "counts": counts, "frames": frames, "parts": parts, "out": folder / "joined.webm",
            "one": encode(frames, folder / "one.webm", fps), "concat": concat(parts, counts, fps, folder / "concat.webm")}


def test_the_join_decodes_to_the_frames_of_one_stream_and_of_ffmpegs_concat(joined):
    got, one, cat = decode(joined["out"]), decode(joined["one"]), decode(joined["concat"])
    assert len(got) == len(one) == len(cat) == len(joined["frames"])
    for a, b, c, drawn in zip(got, one, cat, joined["frames"]):
        np.testing.assert_array_equal(a, drawn)  # lossless: the encoded frames themselves
        np.testing.assert_array_equal(b, drawn)
        np.testing.assert_array_equal(c, drawn)


def test_frame_f_is_at_round_f_over_fps_like_one_stream(joined):
    n, fps = len(joined["frames"]), joined["fps"]
    times = packet_times(joined["out"])
    assert times == [math.floor(f * 1000 / fps + 0.5) for f in range(n)]
    assert times == packet_times(joined["one"])
    cat = packet_times(joined["concat"])
    assert all(abs(a - b) <= 1 for a, b in zip(times, cat)) and len(cat) == n  # concat rounds twice at worst


def test_the_duration_is_the_films(joined):
    n, fps = len(joined["frames"]), joined["fps"]
    b = joined["out"].read_bytes()
    seg = elements(b, 0, len(b))[0x18538067][0][0]
    top = elements(b, *content(b, seg))
    info = elements(b, *content(b, top[0x1549A966][0][0]))
    start, end = content(b, info[0x4489][0][0])
    assert np.frombuffer(b[start:end], ">f8")[0] == n * 1000 / fps  # in ms: TimecodeScale 1e6
    assert abs(reported_duration(joined["out"]) - n / fps) <= 0.005  # ffmpeg prints centiseconds


def test_the_seekhead_and_cues_point_at_every_key_frame(joined):
    b = joined["out"].read_bytes()
    seg = elements(b, 0, len(b))[0x18538067][0][0]
    base, end = content(b, seg)
    assert end == len(b)  # known sizes: the Segment holds the rest of the file
    top = elements(b, base, end)
    seeks = {}
    for at, _ in elements(b, *content(b, top[0x114D9B74][0][0]))[0x4DBB]:
        kids = elements(b, *content(b, at))
        s, e = content(b, kids[0x53AB][0][0])
        p, q = content(b, kids[0x53AC][0][0])
        seeks[int.from_bytes(b[s:e], "big")] = base + int.from_bytes(b[p:q], "big")
    assert seeks == {k: top[k][0][0] for k in (0x1549A966, 0x1654AE6B, 0x1C53BB6B)}
    keys = []  # (time, cluster position, block position) of every key frame, read from the clusters
    for at, _ in top[0x1F43B675]:
        start, stop = content(b, at)
        kids = elements(b, start, stop)
        s, e = content(b, kids[0xE7][0][0])
        for block, data in kids[0xA3]:
            _, n = vint(b, data)
            if b[data + n + 2] & 0x80:
                keys.append((int.from_bytes(b[s:e], "big") + int.from_bytes(b[data + n:data + n + 2], "big", signed=True),
                             at - base, block - start))
    cues = []
    for at, _ in elements(b, *content(b, top[0x1C53BB6B][0][0]))[0xBB]:
        point = elements(b, *content(b, at))
        pos = elements(b, *content(b, point[0xB7][0][0]))
        cues.append(tuple(int.from_bytes(b[slice(*content(b, x[0][0]))], "big") for x in (point[0xB3], pos[0xF1], pos[0xF0])))
    assert cues == keys
    assert len(keys) >= len(joined["counts"])  # every part starts with a key frame


def test_seeking_gives_the_frame_at_that_time(joined):
    fps, counts = joined["fps"], joined["counts"]
    starts = np.cumsum([0, *counts])[:-1]
    for f in sorted({int(s) + d for s in starts for d in (0, 1)} | {sum(counts) - 1}):
        if f < sum(counts):
            seconds = f"{math.floor(f * 1000 / fps + 0.5) / 1000:.3f}"
            np.testing.assert_array_equal(frame_at(joined["out"], seconds, joined["size"]), joined["frames"][f], str(f))


def test_without_copy_file_range_the_same_bytes_are_written(joined, tmp_path, monkeypatch):
    """Another file system or an old kernel: the blocks are read and written in chunks instead."""
    import layerfilm.video.webm

    def refuse(*args):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "copy_file_range", refuse, raising=False)
    monkeypatch.setattr(layerfilm.video.webm, "CHUNK", 1000)  # several chunks a block
    join(joined["parts"], joined["counts"], joined["fps"], "webm", tmp_path / "chunked.webm")
    assert (tmp_path / "chunked.webm").read_bytes() == joined["out"].read_bytes()


def one_line_error(parts, counts, fps, dest, match):
    with pytest.raises(EncodeError, match=match) as info:
        join(parts, counts, fps, "webm", dest)
    assert "\n" not in str(info.value)
    assert not dest.exists() or dest.stat().st_size == 0  # nothing joined (the caller removes its temporary)


def test_a_part_of_another_frame_size_raises_one_line(tmp_path):
    a = encode(film(4, (64, 48)), tmp_path / "a.webm", 10)
    b = encode(film(4, (64, 50)), tmp_path / "b.webm", 10)
    one_line_error([a, b], [4, 4], 10, tmp_path / "out.webm", r"b\.webm: .*Tracks .* differ from those of .*a\.webm")


def test_a_truncated_part_raises_one_line(tmp_path):
    a = encode(film(6, (64, 48)), tmp_path / "a.webm", 10)
    whole = a.read_bytes()
    for cut in (10, 60, len(whole) // 2, len(whole) - 1):
        b = tmp_path / f"cut{cut}.webm"
        b.write_bytes(whole[:cut])
        one_line_error([a, b], [6, 6], 10, tmp_path / "out.webm", rf"cut{cut}\.webm: cannot join .*(truncated|overruns)")


def test_parts_that_are_not_layerfilms_segments_raise_one_line(tmp_path):
    a = encode(film(6, (64, 48)), tmp_path / "a.webm", 10)
    whole = a.read_bytes()
    seg = whole.index(b"\x18\x53\x80\x67")
    unknown = tmp_path / "unknown.webm"  # the Segment's size left unknown, as a muxer writing to a pipe does
    unknown.write_bytes(whole[:seg + 4] + b"\x01" + b"\xff" * 7 + whole[seg + 12:])
    one_line_error([a, unknown], [6, 6], 10, tmp_path / "out.webm", "unknown size")
    one_line_error([a, a], [6, 5], 10, tmp_path / "out.webm", "6 frames, expected 5")
    one_line_error([a, a], [6, 6], 20, tmp_path / "out.webm", "block 1 at time 100 is not frame 1 at 20 fps")
    doctype = tmp_path / "doctype.webm"
    doctype.write_bytes(whole[:seg].replace(b"webm", b"webx", 1) + whole[seg:])
    one_line_error([a, doctype], [6, 6], 10, tmp_path / "out.webm", "DocType 'webx', not WebM")
    other = tmp_path / "text.webm"
    other.write_bytes(b"not a film at all")
    one_line_error([a, other], [6, 6], 10, tmp_path / "out.webm", r"text\.webm: cannot join")


def test_unknown_segment_level_elements_are_skipped(tmp_path):
    frames = film(6, (64, 48))
    a = encode(frames, tmp_path / "a.webm", 10)
    whole = a.read_bytes()
    seg = whole.index(b"\x18\x53\x80\x67")
    size, n = vint(whole, seg + 4)
    assert n == 8  # ffmpeg writes the Segment's size in 8 bytes
    extra = b"\x1b\x53\x86\x67\x82\xab\xcd"  # an ID that no Matroska version defines, 2 bytes of content
    padded = tmp_path / "padded.webm"
    padded.write_bytes(whole[:seg + 4] + ((1 << 56) | (size + len(extra))).to_bytes(8, "big") + whole[seg + 12:] + extra)
    join([padded, a], [6, 6], 10, "webm", tmp_path / "out.webm")
    for x, y in zip(decode(tmp_path / "out.webm"), frames + frames):
        np.testing.assert_array_equal(x, y)
