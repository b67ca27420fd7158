"""Text fits at every accepted size (issue 26): the boxes of every text a frame may show, planned by
layerfilm.draw.frame_layout, lie inside the frame and overlap neither each other nor the colour bar, the
timeline or a panel's points and bar, from 320x180 to 8K with 4, 8 and 128 panels; the renderer draws no
text outside them; smaller frames are refused in one line."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from layerfilm.draw.fonts import Box
from layerfilm.draw.frame_layout import MIN_HEIGHT, MIN_WIDTH, plan_frame
from layerfilm.draw.overlay import MARKS
from layerfilm.draw.raster import BACKGROUND, Style
from layerfilm.errors import OptionsError
from layerfilm.film import film_frames, film_legend, widest_caption
from layerfilm.film_options import FilmOptions
from layerfilm.points import Subject
from layerfilm.projection import Trajectories

SIZES = [(320, 180), (640, 360), (1280, 720), (1920, 1080), (3840, 2160), (7680, 4320)]
ODD = [(360, 640), (7680, 180), (320, 4320), (1000, 1000)]  # portrait, a strip, a column, a square
T = 17


def trajectories(L: int, T: int = T, N: int = 200) -> Trajectories:
    """An exact synthetic film: round clouds shrinking over the key frames, a sampled subject, the stats
    the legend quotes (the legend's words are the film's own, as long as a real film's)."""
    rng = np.random.default_rng(L)
    xy = (rng.normal(0, 1, (T, L, N, 2)) * np.linspace(0.3, 1, T)[:, None, None, None]).astype(np.float32)
    subject = Subject("transformer.h.0.mlp.c_fc.weight", "weights", N, 3072, "output neurons",
                      f"PCA pooled over {T} key frames", "runs/a-run-with-a-long-name/checkpoints")
    stats = {"explained_variance": rng.uniform(0.1, 0.3, (L, 2)), "point_update": rng.uniform(1e-3, 0.1, (T, L)),
             "point_distance": np.linspace(1, 0, T)[:, None].repeat(L, 1)}
    return Trajectories(np.arange(T) * 12_500, np.arange(L), np.tile(np.arange(N), (L, 1)), xy, "pca", stats, subject)


def problems(texts: list[Box], graphics: list[Box], width: int, height: int) -> list[str]:
    """Texts outside the frame, empty, or overlapping another text or a graphic (a direct pairwise test)."""
    t = np.array([(b.x, b.y, b.x + b.w, b.y + b.h) for b in texts])
    g = np.array([(b.x, b.y, b.x + b.w, b.y + b.h) for b in graphics])
    out = [f"{b} outside {width}x{height}" for b, (x0, y0, x1, y1) in zip(texts, t)
           if x0 < 0 or y0 < 0 or x1 > width or y1 > height or x1 <= x0 or y1 <= y0]

    def hits(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return ((a[:, None, 0] < b[None, :, 2]) & (b[None, :, 0] < a[:, None, 2])
                & (a[:, None, 1] < b[None, :, 3]) & (b[None, :, 1] < a[:, None, 3]))

    tt = np.triu(hits(t, t), 1)

    def one_panel_marks(a: Box, b: Box) -> bool:  # a panel shows one of its marks at a time (right-aligned)
        return a.text in MARKS and b.text in MARKS and a.x + a.w == b.x + b.w and a.y == b.y

    out += [f"{texts[i]} overlaps {texts[j]}" for i, j in np.argwhere(tt) if not one_panel_marks(texts[i], texts[j])]
    out += [f"{texts[i]} crosses {graphics[j]}" for i, j in np.argwhere(hits(t, g))]
    return out


def plan(size: tuple[int, int], L: int, live: bool = False):
    traj = trajectories(L)
    opts = FilmOptions(style=Style(*size), film_layout="live" if live else "fit")
    legend = film_legend(traj, opts, bar=True)
    return plan_frame(*size, [f"L{b}" for b in traj.blocks], "layerfilm", legend.parts, legend.unit,
                      None if live else T, widest_caption(traj.steps, opts.time, not live), MARKS)


@pytest.mark.parametrize("L", [4, 8, 128])
@pytest.mark.parametrize("size", SIZES + ODD, ids=lambda s: f"{s[0]}x{s[1]}")
def test_no_text_overlaps_or_leaves_the_frame(size, L):
    for live in (False, True):
        lay = plan(size, L, live)
        for vmax, clipped in [(2.0, 0), (3.0, T), (7.0, 1), (12.0, 4), (1000.0, 0), (123_456.0, T)]:
            texts = lay.text_boxes(vmax, clipped, None if live else T)
            assert not problems(texts, lay.graphics(), *size), (size, L, live, vmax, problems(texts, lay.graphics(), *size)[:3])
            words = {b.text for b in texts}
            # what must always show: the step, the colour bar's unit and both ends, the legend's first row
            assert lay.caption.w >= 40 and lay.colour is not None and lay.colour.unit.text.startswith("points per bin")
            assert "1" in words and f"{'≥' if clipped else ''}{vmax:,.3g}" in words
            assert lay.rows and lay.rows[0].startswith("run: runs/a-run")
            assert lay.title is not None and lay.title.text == "layerfilm"
    # labels are hidden only where they do not fit a panel (128 panels of 40 x 30 pixels at 640x360)
    if L <= 8 or (size in SIZES and size[0] >= 1280):
        assert len(lay.labels) == L and "settled" in lay.marks
    if not lay.labels:
        assert any(f"panels L0…L{L - 1}" in r for r in lay.rows)  # the legend says how they run


def test_text_scales_with_the_frame():
    px = [plan(size, 8).text_px for size in SIZES]
    assert px == sorted(px) and px[-1] >= 10 * px[0]
    small, large = plan((320, 180), 8), plan((3840, 2160), 8)
    assert small.colour.note(4, T).text == f"clipped in 4 of {T}"  # shortened to fit 320 pixels
    assert small.colour.bar.y > small.caption.y + small.caption.h  # on a row of its own, under the step
    assert large.colour.unit.text == f"points per bin ({large.cell}x{large.cell} px), log"
    assert large.colour.note(4, T).text == f"denser bins clipped in 4 of {T} key frames"
    assert large.colour.bar.y < large.caption.y + large.caption.h


@pytest.mark.parametrize("size", [(320, 180), (640, 360)], ids=["320x180", "640x360"])
def test_the_renderer_draws_text_only_inside_its_boxes(size):
    """Every pixel a frame changes besides the background and the empty panels is in a text box, the colour
    bar (with its ticks), the timeline or a panel's points and bar: the boxes are where text really is."""
    traj = trajectories(8)
    update, distance = traj.stats["point_update"].copy(), traj.stats["point_distance"].copy()
    update[T // 2 :, ::2], distance[T // 2 :, ::2] = 0.0, 0.0  # the even blocks stop half way: they settle there
    traj = replace(traj, stats={**traj.stats, "point_update": update, "point_distance": distance})
    frames = film_frames(traj, FilmOptions(style=Style(*size)))
    r = frames.renderer
    lay = r.layout
    W, H = size
    inside = np.zeros((H, W), bool)
    for b in r.text_boxes() + lay.graphics():
        inside[b.y : b.y + b.h, b.x : b.x + b.w] = True
    bar = lay.colour.bar
    inside[bar.y + bar.h : lay.colour.label_y, bar.x : bar.x + bar.w] = True  # the ticks
    ink = (r.base != BACKGROUND).any(-1) & (r.base != r.lut[0]).any(-1)
    assert ink.sum() > 500 and not (ink & ~inside).any()
    img = frames.draw(T - 1, 0.0)  # every block settled: the overlay writes its marks
    assert frames.overlay is not None and frames.overlay.status(T - 1)[:2] == ["settled", "moving"]
    changed = (img != r.base).any(-1)
    assert changed[lay.caption.y : lay.caption.y + lay.caption.h].any() and not (changed & ~inside).any()
    assert "settled" in lay.marks and {b.text for b in r.text_boxes()} >= {"settled", "L0", "L7"}


@pytest.mark.parametrize("size", [(318, 180), (320, 178), (100, 100), (64, 64)])
def test_frames_too_small_for_their_words_are_refused(size):
    with pytest.raises(OptionsError, match=rf"^size={size[0]}x{size[1]}: at least {MIN_WIDTH}x{MIN_HEIGHT}, "):
        Style(*size)
    Style(MIN_WIDTH, MIN_HEIGHT)


@pytest.mark.parametrize("runs", [("base", "lr10x"), ("base", "a-run-with-a-rather-long-name-indeed", "seed1")])
@pytest.mark.parametrize("L", [8, 32])
@pytest.mark.parametrize("size", SIZES + ODD, ids=lambda s: f"{s[0]}x{s[1]}")
def test_a_film_of_several_runs_has_a_timeline_row_per_run_and_no_overlaps(size, L, runs):
    traj = trajectories(L)
    legend = film_legend(traj, FilmOptions(style=Style(*size)), bar=True)
    labels = [f"L{b} {n}" for b in traj.blocks for n in runs]
    lay = plan_frame(*size, labels, "layerfilm", legend.parts, legend.unit, T, widest_caption(traj.steps, "keys"),
                     MARKS, group=len(runs), runs=runs)
    texts = lay.text_boxes(12.0, 4, T)
    assert not problems(texts, lay.graphics(), *size), problems(texts, lay.graphics(), *size)[:3]
    assert [b.text for b in lay.runs][0] == "base" and len(lay.runs) == len(runs)
    assert lay.timeline_h == len(runs) * lay.run_h
    x0, _, y = lay.timeline
    assert all(b.x + b.w < x0 and y <= b.y and b.y + b.h <= y + lay.timeline_h for b in lay.runs)  # left of its row


def test_each_runs_ticks_are_drawn_in_its_row_and_colour():
    from layerfilm.draw.legend import Legend, run_colour
    from layerfilm.draw.raster import Renderer

    places = {"base": (0.0, 0.25, 0.5, 0.75, 1.0), "other": (0.0, 0.5, 1.0)}  # another save schedule
    legend = Legend(("two runs",), places["base"], runs=tuple(places.items()))
    r = Renderer(Style(640, 360), ["L0 base", "L0 other"], np.array([[-1, 1, -1, 1]] * 2), legend=legend, group=2)
    x0, x1, y = r.layout.timeline
    for k, (name, at) in enumerate(places.items()):
        row = r.base[y + k * r.layout.run_h]  # the row's top line
        drawn = np.flatnonzero((row[x0:x1] == run_colour(k)).all(-1)) + x0
        assert list(drawn) == [x0 + round(t * (x1 - x0 - 1)) for t in at], name
