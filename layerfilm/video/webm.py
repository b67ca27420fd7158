"""Joining WebM segments at the EBML level, without ffmpeg (layerfilm.video.encode.join for .webm).

Why not ffmpeg's concat demuxer: it opens every part as a new input and probes it, which decodes the
first lossless frame of each, where a plain copy of the bytes would do (benchmarks/bench_join.py). A
live film (layerfilm.video.segments.SegmentStore) joins all its segments at every update, so that cost
grew with the film.

What a join is here: the parts were written by ONE ffmpeg command line (same codec parameters), so
the output takes the first part's EBML header, Info (its Duration rewritten) and Tracks, then every
part's Clusters in order, their SimpleBlocks copied byte for byte (``os.copy_file_range`` where the
system has it, chunks of a few MiB otherwise: never a whole part in memory) except the timestamps:
frame ``f`` of the film, part ``i``'s frame ``f - s_i`` (``s_i``: the earlier parts' frames), gets
``round(f / fps)`` in TimecodeScale units, as a one-stream encode gives it, not the sum of two
rounded numbers. New SeekHead and Cues (one CuePoint per key frame, as ffmpeg's webm muxer writes
them) let browsers and ffmpeg seek; the parts' Tags (ffmpeg's per-file DURATION) are left out. Every
size is computed before the first byte is written, so each element has a known size.

Parts are parsed defensively: an unknown-size element, a truncated part, Tracks that differ from the
first part's (other than the random TrackUID), laced or grouped blocks, a part whose blocks are not
its frames in order, or a part that does not start with a key frame raise :class:`EncodeError` with
one line, never a wrong film. Unknown elements at Segment level are skipped.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from layerfilm.errors import EncodeError, OutputError
from layerfilm.text import show

EBML, DOCTYPE, SEGMENT, SEEKHEAD, SEEK, SEEK_ID, SEEK_POS = 0x1A45DFA3, 0x4282, 0x18538067, 0x114D9B74, 0x4DBB, 0x53AB, 0x53AC
INFO, SCALE, DURATION, TRACKS, TRACK, TRACK_UID = 0x1549A966, 0x2AD7B1, 0x4489, 0x1654AE6B, 0xAE, 0x73C5
CLUSTER, TIMECODE, SIMPLE_BLOCK, BLOCK_GROUP, VOID = 0x1F43B675, 0xE7, 0xA3, 0xA0, 0xEC
POSITION, PREV_SIZE, CRC32 = 0xA7, 0xAB, 0xBF
CUES, CUE_POINT, CUE_TIME, CUE_POSITIONS, CUE_TRACK, CUE_CLUSTER, CUE_RELATIVE = (
    0x1C53BB6B, 0xBB, 0xB3, 0xB7, 0xF7, 0xF1, 0xF0)
HEAD_MAX = 1 << 20  # the largest EBML header, Info or Tracks read into memory (ffmpeg's are ~100 bytes)
CHUNK = 4 << 20  # bytes per read when copy_file_range is not available


class _Part:
    """One part: its path and size, opened for bounds-checked reads one part at a time (a long film
    has more parts than a process may hold open)."""

    def __init__(self, path: Path) -> None:
        self.path, self.fd, self.size = path, -1, -1

    @contextmanager
    def opened(self) -> Iterator[_Part]:
        try:
            self.fd = os.open(self.path, os.O_RDONLY)
        except OSError as e:
            raise self.fail(f"cannot read it ({e.strerror or e})") from None
        try:
            size = os.fstat(self.fd).st_size
            if self.size >= 0 and size != self.size:
                raise self.fail(f"its size changed while it was joined ({self.size} -> {size} bytes)")
            self.size = size
            yield self
        finally:
            os.close(self.fd)
            self.fd = -1

    def fail(self, what: str) -> EncodeError:
        return EncodeError(f"{show(self.path)}: cannot join this WebM segment: {what}")

    def read(self, pos: int, n: int) -> bytes:
        data = os.pread(self.fd, n, pos)
        if len(data) != n:
            raise self.fail(f"truncated ({self.size} bytes, needs {pos + n})")
        return data


@dataclass(frozen=True)
class _Element:
    id: int
    start: int  # of its header
    data: int  # of its content
    end: int


def _vint(buf: bytes, pos: int, keep_marker: bool = False) -> tuple[int, int]:
    """An EBML variable-length integer at ``buf[pos]``: (value, length); -1 for the all-ones value
    (unknown size). IDs keep their length marker, sizes do not."""
    first = buf[pos] if pos < len(buf) else 0
    if first == 0:
        raise ValueError("bad variable-length integer")
    n = 9 - first.bit_length()
    if pos + n > len(buf):
        raise ValueError("variable-length integer cut short")
    value = int.from_bytes(buf[pos:pos + n], "big")
    if keep_marker:
        return value, n
    value &= (1 << (7 * n)) - 1
    return (-1 if value == (1 << (7 * n)) - 1 else value), n


def _elements(part: _Part, start: int, end: int) -> Iterator[_Element]:
    """The elements between ``start`` and ``end`` of ``part`` (their headers only are read)."""
    pos = start
    while pos < end:
        head = part.read(pos, min(12, end - pos))
        try:
            eid, a = _vint(head, 0, keep_marker=True)
            size, b = _vint(head, a)
        except ValueError as e:
            raise part.fail(f"{e} at byte {pos}") from None
        if size < 0:
            raise part.fail(f"element 0x{eid:X} of unknown size at byte {pos} (written to a pipe?)")
        element = _Element(eid, pos, pos + a + b, pos + a + b + size)
        if element.end > end:
            raise part.fail(f"element 0x{eid:X} at byte {pos} overruns its parent or the file (truncated?)")
        yield element
        pos = element.end


def _children(buf: bytes) -> list[tuple[int, bytes]]:
    """The (id, whole element bytes) children of a master element's content held in memory."""
    out, pos = [], 0
    while pos < len(buf):
        eid, a = _vint(buf, pos, keep_marker=True)
        size, b = _vint(buf, pos + a)
        if size < 0 or pos + a + b + size > len(buf):
            raise ValueError(f"element 0x{eid:X} of unknown size or overrunning its parent")
        out.append((eid, buf[pos:pos + a + b + size]))
        pos += a + b + size
    return out


def _uint(value: int) -> bytes:
    return value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")


def _size(n: int, width: int = 0) -> bytes:
    """``n`` as an EBML size: the shortest encoding, or exactly ``width`` bytes."""
    width = width or next(w for w in range(1, 9) if n < (1 << (7 * w)) - 1)
    return ((1 << (7 * width)) | n).to_bytes(width, "big")


def _element(eid: int, payload: bytes) -> bytes:
    return _uint(eid) + _size(len(payload)) + payload


@dataclass
class _Block:
    start: int  # of the SimpleBlock element in its part
    head: bytes  # its element header and track number (copied), before the 2-byte timestamp
    track: int
    flags: int
    end: int
    key: bool
    time: int = 0  # in the part as read; in the film once planned


@dataclass
class _Cluster:
    part: _Part
    blocks: list[_Block]
    time: int = 0  # the film's
    size: int = 0  # of its content, as written


@dataclass
class _Segment:
    part: _Part
    ebml: bytes
    scale: int
    info: list[tuple[int, bytes]]
    tracks: bytes
    clusters: list[_Cluster]


def _track_key(part: _Part, tracks: bytes) -> list[tuple[int, bytes]]:
    """What must be equal in every part's Tracks: each TrackEntry's fields but its random UID and padding."""
    try:
        entries = _children(tracks[len(_head(tracks)):])
        key = [(eid, data) for _, entry in entries for eid, data in _children(entry[len(_head(entry)):])
               if eid not in (TRACK_UID, VOID)]
    except ValueError as e:
        raise part.fail(f"bad Tracks ({e})") from None
    if [eid for eid, _ in entries] != [TRACK]:
        raise part.fail(f"{len(entries)} tracks, expected one video track")
    return key


def _head(element: bytes) -> bytes:
    """The ID and size bytes of a whole element held in memory."""
    _, a = _vint(element, 0, keep_marker=True)
    _, b = _vint(element, a)
    return element[:a + b]


def _small(part: _Part, e: _Element, what: str) -> bytes:
    if e.end - e.data > HEAD_MAX:
        raise part.fail(f"{what} of {e.end - e.data} bytes")
    return part.read(e.data, e.end - e.data)


def _cluster(part: _Part, c: _Element) -> _Cluster:
    blocks, base = [], None
    for e in _elements(part, c.data, c.end):
        if e.id == TIMECODE:
            base = int.from_bytes(part.read(e.data, e.end - e.data), "big")
        elif e.id == SIMPLE_BLOCK:
            raw = part.read(e.start, min(e.end, e.data + 12) - e.start)  # the element's header and the block's
            head = raw[e.data - e.start:]
            try:
                track, n = _vint(head, 0)
            except ValueError:
                track, n = 0, len(head)
            if e.data + n + 3 > e.end:
                raise part.fail(f"SimpleBlock at byte {e.start} too short")
            time, flags = struct.unpack(">hB", head[n:n + 3])
            if flags & 0x06:
                raise part.fail(f"laced SimpleBlock at byte {e.start}")
            if base is None:
                raise part.fail(f"Cluster at byte {c.start} has a block before its Timecode")
            blocks.append(_Block(e.start, raw[:e.data - e.start + n], track, flags, e.end, bool(flags & 0x80),
                                 base + time))
        elif e.id == BLOCK_GROUP:
            raise part.fail(f"BlockGroup at byte {e.start} (layerfilm's segments hold SimpleBlocks only)")
        elif e.id not in (VOID, POSITION, PREV_SIZE, CRC32):  # positions and sizes change: not copied
            raise part.fail(f"unexpected element 0x{e.id:X} in the Cluster at byte {c.start}")
    return _Cluster(part, blocks)


def _parse(part: _Part) -> _Segment:
    top = _elements(part, 0, part.size)
    ebml = next(top, None)
    if ebml is None or ebml.id != EBML:
        raise part.fail("not an EBML file")
    try:
        doctype = next((d[len(_head(d)):] for eid, d in _children(_small(part, ebml, "EBML header")) if eid == DOCTYPE), b"")
    except ValueError as err:
        raise part.fail(f"bad EBML header ({err})") from None
    if doctype not in (b"webm", b"matroska"):
        raise part.fail(f"DocType {doctype.decode(errors='replace')!r}, not WebM")
    seg = next(top, None)
    if seg is None or seg.id != SEGMENT:
        raise part.fail("no Segment after the EBML header")
    info = tracks = None
    clusters = []
    for e in _elements(part, seg.data, seg.end):
        if e.id == INFO:
            try:
                info = _children(_small(part, e, "Info"))
            except ValueError as err:
                raise part.fail(f"bad Info ({err})") from None
        elif e.id == TRACKS:
            tracks = part.read(e.start, e.data - e.start) + _small(part, e, "Tracks")
        elif e.id == CLUSTER:
            clusters.append(_cluster(part, e))
    if info is None or tracks is None:
        raise part.fail("no Info or no Tracks")
    scale = next((int.from_bytes(d[len(_head(d)):], "big") for eid, d in info if eid == SCALE), 1_000_000)
    if scale <= 0:
        raise part.fail("TimecodeScale 0")
    return _Segment(part, part.read(0, ebml.end), scale, info, tracks, [c for c in clusters if c.blocks])


def _ticks(frame: int, fps: Fraction, scale: int) -> int:
    """Frame ``frame``'s time in TimecodeScale units, rounded half up as ffmpeg rescales timestamps."""
    return int(frame * Fraction(10**9) / (fps * scale) + Fraction(1, 2))


def _plan(segments: list[_Segment], frames: list[int], fps: Fraction) -> list[_Cluster]:
    """Check every part against the first and give each block and cluster its time in the film."""
    first, done, out = segments[0], 0, []
    tracks = _track_key(first.part, first.tracks)
    for seg, count in zip(segments, frames):
        part = seg.part
        if seg.ebml != first.ebml:
            raise part.fail(f"its EBML header differs from that of {show(first.part.path)}")
        if seg is not first and _track_key(part, seg.tracks) != tracks:
            raise part.fail(f"its Tracks (codec, frame size) differ from those of {show(first.part.path)}")
        if seg.scale != first.scale:
            raise part.fail(f"TimecodeScale {seg.scale}, {show(first.part.path)} has {first.scale}")
        blocks = [b for c in seg.clusters for b in c.blocks]
        if len(blocks) != count:
            raise part.fail(f"{len(blocks)} frames, expected {count}")
        if not blocks or not blocks[0].key:
            raise part.fail("its first frame is not a key frame")
        half = Fraction(10**9) / (fps * seg.scale) / 2
        for j, b in enumerate(blocks):
            if abs(b.time - _ticks(j, fps, seg.scale)) >= half:
                raise part.fail(f"block {j} at time {b.time} is not frame {j} at {float(fps):g} fps")
            b.time = _ticks(done + j, fps, seg.scale)
        done += count
        for c in seg.clusters:
            c.time = c.blocks[0].time
            if not all(b.time - c.time < (1 << 15) for b in c.blocks):
                raise part.fail("a Cluster longer than its blocks' 16-bit timestamps reach")
            c.size = len(_element(TIMECODE, _uint(c.time))) + sum(b.end - b.start for b in c.blocks)
        out += seg.clusters
    return out


def _seekhead(info: int, tracks: int, cues: int) -> bytes:
    """Positions as 8-byte integers: the SeekHead's size does not depend on them."""
    return _element(SEEKHEAD, b"".join(
        _element(SEEK, _element(SEEK_ID, _uint(eid)) + _element(SEEK_POS, pos.to_bytes(8, "big")))
        for eid, pos in ((INFO, info), (TRACKS, tracks), (CUES, cues))))


class _Out:
    """The destination: small writes buffered, block payloads copied from the parts kernel-side."""

    def __init__(self, path: Path) -> None:
        self.path, self.buf, self.written = path, bytearray(), 0
        self.ranged = hasattr(os, "copy_file_range")
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)

    def write(self, data: bytes) -> None:
        self.buf += data
        if len(self.buf) >= CHUNK:
            self.flush()

    def flush(self) -> None:
        view = memoryview(self.buf)
        while view:
            view = view[os.write(self.fd, view):]
        self.written += len(self.buf)
        self.buf = bytearray()

    def copy(self, part: _Part, offset: int, count: int) -> None:
        self.flush()
        self.written += count
        while count:
            n = 0
            if self.ranged:
                try:
                    n = os.copy_file_range(part.fd, self.fd, min(count, 1 << 30), offset)
                except OSError:  # another file system, an old kernel: plain reads and writes
                    self.ranged = False
                    continue
            else:
                data = part.read(offset, min(count, CHUNK))
                view = memoryview(data)
                while view:
                    view = view[os.write(self.fd, view):]
                n = len(data)
            if n == 0:
                raise part.fail(f"shorter than when it was read (byte {offset})")
            offset, count = offset + n, count - n


def join_webm(parts: list[Path], frames: list[int], fps: float, dest: Path) -> None:
    """Write the WebM segments ``parts`` (``frames[i]`` frames each, encoded at ``fps`` by one ffmpeg
    command line) to ``dest`` as one film whose frame ``f`` is at ``f / fps`` seconds.

    ``fps`` is read as the encoder was given it (``f"{fps}"``), so that the times are the encoder's.
    Raises EncodeError for a part that is not such a segment, OutputError if ``dest`` cannot be written."""
    assert parts and len(parts) == len(frames), "one frame count per part"
    rate = Fraction(f"{fps}")
    segments = []
    for path in parts:
        with _Part(path).opened() as part:
            segments.append(_parse(part))
    clusters = _plan(segments, frames, rate)
    _write(segments[0], clusters, sum(frames), rate, dest)


def _write(first: _Segment, clusters: list[_Cluster], n_frames: int, fps: Fraction, dest: Path) -> None:
    duration = float(n_frames * Fraction(10**9) / (fps * first.scale))
    info = _element(INFO, b"".join(d for eid, d in first.info if eid not in (DURATION, VOID, CRC32))
                    + _element(DURATION, struct.pack(">d", duration)))
    at_info = len(_seekhead(0, 0, 0))
    at_tracks = at_info + len(info)
    pos, cues = at_tracks + len(first.tracks), []
    for c in clusters:  # where each cluster and key frame will be: the Cues
        rel = len(_element(TIMECODE, _uint(c.time)))
        for b in c.blocks:
            if b.key:
                where = _element(CUE_TRACK, _uint(b.track)) + _element(CUE_CLUSTER, _uint(pos)) \
                    + _element(CUE_RELATIVE, _uint(rel))
                cues.append(_element(CUE_POINT, _element(CUE_TIME, _uint(b.time)) + _element(CUE_POSITIONS, where)))
            rel += b.end - b.start
        pos += len(_uint(CLUSTER)) + 8 + c.size
    index = _element(CUES, b"".join(cues))
    total = pos + len(index)
    try:
        out = _Out(dest)
    except OSError as e:
        raise OutputError(f"{show(dest)}: cannot write ({e.strerror or e})") from None
    part = ExitStack()
    try:
        out.write(first.ebml + _uint(SEGMENT) + _size(total, 8) + _seekhead(at_info, at_tracks, pos) + info + first.tracks)
        for c in clusters:
            if c.part.fd < 0:  # the next part: the previous one closed
                part.close()
                part.enter_context(c.part.opened())
            out.write(_uint(CLUSTER) + _size(c.size, 8) + _element(TIMECODE, _uint(c.time)))
            for b in c.blocks:
                out.write(b.head + struct.pack(">hB", b.time - c.time, b.flags))
                body = b.start + len(b.head) + 3
                out.copy(c.part, body, b.end - body)
        out.write(index)
        out.flush()
    except OSError as e:
        raise OutputError(f"{show(dest)}: cannot write ({e.strerror or e})") from None
    finally:
        part.close()
        os.close(out.fd)
    assert out.written == len(first.ebml) + 12 + total, "the planned sizes are those written"
