"""layerfilm.video.webm: WebM segments encoded by layerfilm's own encoder, joined at the EBML level, give the
frames of a one-segment encode and of ffmpeg's concat join, frame f at round(f * 1000 / fps) ms, the
film's duration, Cues that point at key frames, and seeking; parts that are not such segments raise
one line."""

from __future__ import annotations

import errno
import math
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from layerfilm.errors import EncodeError
from layerfilm.video.encode import EncodeOptions, encoder, encoder_command, ffmpeg_exe, join
from test_render_encode import decode

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
