"""`render --quality share`: a small lossy film every player plays (VP9 profile 0 / H.264, yuv420p), whose
legend and output line state its distance from the lossless frames, measured by decoding it."""

from __future__ import annotations

import re
import subprocess

import numpy as np
import pytest

from layerfilm.draw.raster import Style
from layerfilm.film import film_frames
from layerfilm.film_options import FilmOptions
from layerfilm.points.weights import WeightSpec
from layerfilm.study import Study
from layerfilm.video.encode import ffmpeg_exe
from layerfilm.video.fidelity import decode, psnr

SHARE_SMALL = ("--size", "320x180", "--points", "64", "--quiet", "--fps", "4")


def _stream(path) -> str:
    out = subprocess.run([ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True, text=True).stderr
    return next(line for line in out.splitlines() if "Video:" in line)


@pytest.mark.parametrize("ext, codec", [("webm", "vp9 (Profile 0)"), ("mp4", "h264")])
def test_share_film_plays_everywhere_and_says_how_far_from_lossless(frozen_run, run_cli, tmp_path, monkeypatch, ext,
                                                                    codec):
    import layerfilm.film as film

    said: list[str] = []  # the legend's line, measured before the film is encoded (key frames encoded alone)
    real = film.share_legend
    monkeypatch.setattr(film, "share_legend", lambda est, kind: said.append(real(est, kind)) or said[-1])
    out = tmp_path / f"film.{ext}"
    code, _, err = run_cli("render", frozen_run, "--out", out, "--quality", "share", *SHARE_SMALL)
    assert code == 0, err
    stream = _stream(out)
    assert codec in stream and "yuv420p" in stream
    m = re.search(r"shareable film: PSNR (\d+\.\d) dB against the lossless frames \(lowest (\d+\.\d)\), mean "
                  r"\|difference\| (\d+\.\d\d) of 255, over 8 decoded frames", err)
    assert m, err
    # the printed numbers are the written film's against the frames drawn (with the same legend)
    opts = FilmOptions(weights=WeightSpec(points=64), style=Style(320, 180), fps=4.0)
    frames = film_frames(Study.open(frozen_run, opts, progress=False).trajectories(), opts, note=said[0])
    wanted = sorted({int(round(x)) for x in np.linspace(0, frames.n_frames - 1, 8)})
    got = decode(out, (320, 180), set(wanted))
    ours = [psnr(got[f], frames.frame(f)) for f in wanted]
    assert float(np.mean(ours)) == pytest.approx(float(m.group(1)), abs=0.051)
    assert min(ours) == pytest.approx(float(m.group(2)), abs=0.051)
    assert 25 < min(ours) < 60  # lossy, but close
    legend = float(re.search(r"PSNR about (\d+) dB against the lossless frames", said[0]).group(1))
    assert abs(legend - min(ours)) < 3
    assert out.stat().st_size * 20 < frames.n_frames * 320 * 180 * 3  # far smaller than the raw frames


def test_share_refuses_gif_and_png(frozen_run, run_cli, tmp_path):
    code, _, err = run_cli("render", frozen_run, "--out", tmp_path / "f.gif", "--quality", "share")
    assert (code, err) == (2, "layerfilm: error: --quality share: writes .webm or .mp4, not .gif\n")
    code, _, err = run_cli("render", frozen_run, "--out", f"{tmp_path / 'frames'}/", "--quality", "share")
    assert (code, err) == (2, "layerfilm: error: --quality share: writes .webm or .mp4, not PNG frames\n")
    assert list(tmp_path.iterdir()) == []


def test_report_embeds_the_shared_film_and_links_the_lossless_one(frozen_run, run_cli, tmp_path):
    share, exact = tmp_path / "share.webm", tmp_path / "film.webm"
    for path, quality in ((share, "share"), (exact, "lossless")):  # in this process: the report is the point
        code, _, err = run_cli("render", frozen_run, "--out", path, "--quality", quality, "--jobs", "1", *SHARE_SMALL)
        assert code == 0, err
    out = tmp_path / "report.html"
    code, _, err = run_cli("report", frozen_run, "--out", out, "--film", share, "--lossless-film", exact, *SHARE_SMALL[:4])
    assert code == 0, err
    text = out.read_text()
    assert '<video controls loop muted playsinline preload="auto" src="data:video/webm;base64,' in text
    assert 'The lossless film (the exact frames): <a href="./film.webm">./film.webm</a>' in text
    code, _, err = run_cli("report", frozen_run, "--out", tmp_path / "r2.html", "--lossless-film", exact)
    assert (code, err) == (2, "layerfilm: error: --lossless-film: it is linked under the film; give --film PATH (the "
                              "shareable one)\n")
