"""The vectorised renderer against constructions whose answer is known: a per-point reference count,
lone points in a bin, only touched pixels written, the label layer equal to drawing labels one by one."""

from __future__ import annotations

import numpy as np
import pytest

from layerfilm.draw.legend import Legend
from layerfilm.draw.raster import BACKGROUND, FLOOR, Renderer, Style, draw_text


def reference_density(r: Renderer, pts: np.ndarray) -> np.ndarray:
    """Count one point at a time, in float64: each in the bin its position falls in, none outside its panel."""
    bw, bh = r.bins
    sh, sw = r.small
    d = np.zeros(sh * sw)
    for l in range(pts.shape[0]):
        for x, y in pts[l].astype(np.float64):
            i = int(np.floor((x - r.offset[l, 0]) * r.scale[l, 0]))
            j = int(np.floor((y - r.offset[l, 1]) * r.scale[l, 1]))
            if 0 <= i < bw and 0 <= j < bh:
                d[(j + r.origin[l, 1]) * sw + i + r.origin[l, 0]] += 1
    return d.reshape(sh, sw)


@pytest.fixture(params=[(1920, 1080, 128, 0), (320, 240, 4, 0), (640, 360, 6, 3)], ids=["1080p-128", "small-4", "cell3-6"])
def renderer(request):
    w, h, L, cell = request.param
    extent = np.tile([-1.0, 1.0, -1.0, 1.0], (L, 1)) * np.linspace(1, 2, L)[:, None]
    return Renderer(Style(w, h, cell=cell), [f"L{i}" for i in range(L)], extent)


def test_density_matches_the_per_point_reference(renderer):
    rng = np.random.default_rng(0)
    L = len(renderer.labels)
    pts = rng.normal(0, 0.8, (L, 40, 2)).astype(np.float32)  # some fall outside their panel
    pts[:, 0] = [5.0, -5.0]
    got = renderer.density(pts)
    want = reference_density(renderer, pts)
    assert got.dtype == np.int64 and np.array_equal(got, want)  # whole counts of points
    assert got.sum() < L * 40  # the points outside are not counted


@pytest.mark.parametrize("where", [(0.5, 0.5), (0.01, 0.99), (0.99, 0.02)], ids=["centre", "corner", "other-corner"])
def test_a_lone_point_anywhere_in_a_bin_fills_exactly_that_bin_in_the_colour_of_the_bars_1(renderer, where):
    L = len(renderer.labels)
    bw, bh = renderer.bins
    c = renderer.cell
    # bin (bw - 4, bh - 3) of the last panel (away from its label): a place in it in projection coordinates
    i, j = bw - 4, bh - 3
    x = renderer.offset[-1, 0] + (i + where[0]) / renderer.scale[-1, 0]
    y = renderer.offset[-1, 1] + (j + where[1]) / renderer.scale[-1, 1]
    pts = np.full((L, 1, 2), 1e6, np.float32)  # every other panel's point is far outside: not counted
    pts[-1, 0] = [x, y]
    d = renderer.density(pts)
    oy, ox = renderer.origin[-1, 1] + j, renderer.origin[-1, 0] + i
    assert d[oy, ox] == 1 and d.sum() == 1
    renderer.vmax = 7.0
    img = renderer.frame(pts, "step 0")
    changed = np.argwhere((img != renderer.base).any(-1))
    # pixels outside the header and the labels that changed: exactly the bin's c x c block, in the colour
    # of one point per bin, the colour bar's left end (FLOOR up the colour table)
    labels = np.zeros(img.shape[:2], bool)
    labels.ravel()[renderer.labels_at] = True
    changed = [(i, j) for i, j in changed if i >= renderer.header and not labels[i, j]]
    assert sorted(changed) == [(oy * c + a, ox * c + b) for a in range(c) for b in range(c)]
    assert (img[oy * c, ox * c] == renderer.lut[int(FLOOR * 255)]).all()


def test_label_layer_equals_drawing_each_label_in_turn():
    r = Renderer(Style(640, 360), [f"L{i}" for i in range(24)], np.tile([-1.0, 1.0, -1.0, 1.0], (24, 1)))
    r.vmax = 2.0
    img = r.frame(np.full((24, 3, 2), 1e6, np.float32), "step 7")  # no point inside any panel
    want = r.base.copy()
    title = r.layout.title
    draw_text(want, title.text, title.x, title.y, r.text_px)
    assert len(r.layout.labels) == 24
    for (ox, oy), (_, top), box in zip(r.panels, r.origin, r.layout.labels):  # at the panel's corner, above its points
        assert (box.x, box.y) == (ox * r.cell + 3, oy * r.cell + 2) and box.y + box.h <= top * r.cell
        draw_text(want, box.text, box.x, box.y, r.label_px)
    cap = img[: r.header, r.style.width // 2 :]
    assert cap.max() > BACKGROUND.max() + 100  # the caption is there
    img[: r.header, r.style.width // 2 :] = want[: r.header, r.style.width // 2 :]
    assert np.abs(img.astype(int) - want).max() <= 1
    assert (img != r.base).any(-1).sum() > 24 * 10  # labels were drawn at all


def test_frames_are_new_arrays_and_the_static_frame_is_untouched(renderer):
    L = len(renderer.labels)
    base = renderer.base.copy()
    pts = np.random.default_rng(1).normal(0, 0.5, (L, 30, 2)).astype(np.float32)
    a = renderer.frame(pts, "step 1")
    b = renderer.frame(pts, "step 1")
    assert a is not b and np.array_equal(a, b)
    assert np.array_equal(renderer.base, base)
    assert a.shape == (renderer.style.height, renderer.style.width, 3) and a.dtype == np.uint8


def test_one_renderer_draws_the_same_frames_from_several_threads_at_once(renderer):
    """Frames drawn by threads sharing one renderer (Dask workers inside one process share the film they
    were sent) equal the frames drawn one after another: a frame keeps no scratch state in the renderer."""
    from concurrent.futures import ThreadPoolExecutor

    L = len(renderer.labels)
    rng = np.random.default_rng(5)
    clouds = [rng.normal(0, s, (L, 200, 2)).astype(np.float32) for s in np.linspace(0.05, 1.5, 24)]
    alone = [renderer.frame(p, "step") for p in clouds]
    with ThreadPoolExecutor(4) as pool:
        for _ in range(3):
            together = list(pool.map(lambda p: renderer.frame(p, "step"), clouds))
            assert all(np.array_equal(a, b) for a, b in zip(alone, together))


@pytest.mark.parametrize("size, L", [((1280, 720), 4), ((640, 360), 2), ((320, 180), 16)], ids=["4-tall", "2-wide", "16"])
def test_a_round_cloud_is_drawn_round_whatever_the_panel_shape(size, L):
    """One data unit is the same number of pixels on both axes (issue 26: with 4 blocks at 1280x720 the
    panels are tall, and a cloud of x/y spread 1.05 was drawn at 0.52)."""
    r = Renderer(Style(*size), [f"L{i}" for i in range(L)], np.tile([-3.0, 3.0, -3.0, 3.0], (L, 1)))
    assert r.scale[:, 0] == pytest.approx(r.scale[:, 1])
    pts = np.random.default_rng(1).normal(0, 1, (L, 20000, 2)).astype(np.float32)
    d = r.density(pts)
    bw, bh = r.bins
    for l in range(L):
        ox, oy = r.origin[l]
        panel = d[oy: oy + bh, ox: ox + bw]
        w = panel / panel.sum()
        y, x = np.mgrid[:bh, :bw]
        sx = np.sqrt((w * (x - (w * x).sum()) ** 2).sum())
        sy = np.sqrt((w * (y - (w * y).sum()) ** 2).sum())
        assert sx / sy == pytest.approx(1.0, abs=0.05), (l, sx, sy)
        # the extent's centre is the drawing area's centre, and all of the extent is inside it
        cx, cy = (0 - r.offset[l, 0]) * r.scale[l, 0], (0 - r.offset[l, 1]) * r.scale[l, 1]
        assert (cx, cy) == pytest.approx((bw / 2, bh / 2))
        assert 6 * r.scale[l, 0] <= min(bw, bh) + 1e-9


def test_the_colour_of_k_points_in_a_bin_is_the_colour_bars_at_k():
    """Issue 26: the colour bar said "points per bin" while points were splatted bilinearly. Now bin i
    of a panel holds exactly k_i points (k = 1 .. 15, anywhere inside it), and its colour is the colour
    bar's at the tick of k: exactly at the ends (1; the top and above, clipped), within the bar's
    column rounding between them."""
    L = 4
    r = Renderer(Style(1280, 720), [f"L{i}" for i in range(L)], np.tile([-1.0, 1.0, -1.0, 1.0], (L, 1)),
                 legend=Legend(("what is drawn",), (0.0, 1.0)))
    vmax = 12.0
    r.set_scale(vmax, clipped=1, keyframes=2)
    rng = np.random.default_rng(3)
    j = r.bins[1] // 2
    pts = []
    for k in range(1, 16):  # k points in bin (3k, j) of panel 0, at random places inside it
        inner = rng.uniform(0.05, 0.95, (k, 2)) + [3 * k, j]
        pts.append(r.offset[0] + inner / r.scale[0])
    cloud = np.concatenate(pts)
    xy = np.full((L, len(cloud), 2), 1e6, np.float32)
    xy[0] = cloud
    d = r.density(xy)
    img = r.frame(xy, "step 1")
    bar = r.layout.colour.bar
    row = r.base[bar.y + bar.h // 2, bar.x : bar.x + bar.w]  # the bar's colours, left to right
    ticks = {box.text: tx - bar.x for tx, box in r.layout.colour.ticks(vmax, True)}
    assert ticks["1"] == 0 and ticks["≥12"] == bar.w - 1 and ticks["2"] > 0
    assert r.layout.colour.unit.text == f"points per bin ({r.cell}x{r.cell} px), log"
    c = r.cell
    for k in range(1, 16):
        by, bx = r.origin[0, 1] + j, r.origin[0, 0] + 3 * k
        assert d[by, bx] == k
        drawn = img[by * c + c // 2, bx * c + c // 2]
        if k == 1:
            assert (drawn == row[0]).all()  # a lone point sits at the bar's "1"
        elif k >= vmax:
            assert (drawn == row[-1]).all()  # the top colour, for the top count and the clipped ones
        else:  # the column where the count lies on the bar's log scale, within rounding, has the bin's colour
            at = np.log(k) / np.log(vmax) * (bar.w - 1)
            near = row[max(0, int(at) - 1) : int(at) + 3]
            assert (near == drawn).all(-1).any(), k
        if str(k) in ticks:  # and the tick labelled k is at that column
            assert abs(ticks[str(k)] - np.log(k) / np.log(vmax) * (bar.w - 1)) <= 0.5
