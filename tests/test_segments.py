"""layerfilm.video.segments: a film drawn and encoded as segments by worker processes, joined in order, holds
the frames of the one-stream film (WebM and GIF bit for bit, PNG folders numbered globally, MP4 the
same count of close frames), and leaves nothing behind when a segment fails."""

from __future__ import annotations

import time
from dataclasses import replace

import imageio.v3 as iio
import numpy as np
import pytest

from layerfilm.draw.overlay import Overlay
from layerfilm.draw.raster import Style
from layerfilm.errors import OptionsError
from layerfilm.film import FilmFrames
from layerfilm.film_options import FilmOptions
from layerfilm.parallel.engines import LocalEngine
from layerfilm.points.weights import WeightSpec
from layerfilm.study import Study
from layerfilm.video.encode import EncodeOptions
from layerfilm.video.segments import encode_film, plan, spans
from test_render_encode import decode

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
    from test_hostile_outputs import dead_pid

    stale = tmp_path / f".film.webm.partial-{dead_pid()}.parts"
    stale.mkdir()
    (stale / "part_0000.webm").write_bytes(b"half a segment")
    encode_film(frames, tmp_path / "film.webm", SIZE, SHORT, 10)
    assert [p.name for p in tmp_path.iterdir()] == ["film.webm"]
