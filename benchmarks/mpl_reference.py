"""The straightforward matplotlib way to draw layerfilm's frames, as a speed reference.

One figure of the film's size, one axes per block in the same grid, each an ``imshow`` of the
block's 2-D histogram with the same log colour scale and extent; per frame: a histogram per block,
``set_data``, the caption, ``canvas.draw()`` and a copy of the RGB buffer. It renders only (no
encoding), exactly what ``Renderer.frame`` does for layerfilm.
"""

from __future__ import annotations

import numpy as np


class MplFrames:
    """Call with (L, N, 2) points and a caption; returns an (H, W, 3) uint8 frame."""

    def __init__(self, width: int, height: int, labels: list[str], extent: np.ndarray, vmax: float,
                 bins: int = 110, cmap: str = "magma", title: str = "layerfilm") -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.colors import LogNorm

        from layerfilm.draw.raster import grid_shape

        rows, cols = grid_shape(len(labels), width, height)
        self.fig = plt.figure(figsize=(width / 100, height / 100), dpi=100, facecolor="#0c0c0e")
        self.title = self.fig.suptitle(title, x=0.01, ha="left", color="w")
        self.caption = self.fig.text(0.99, 0.98, "", ha="right", va="top", color="w")
        self.extent, self.bins, self.images = np.asarray(extent), bins, []
        norm = LogNorm(vmin=0.25, vmax=max(vmax, 1.0))
        for i, label in enumerate(labels):
            ax = self.fig.add_subplot(rows, cols, i + 1)
            ax.set_axis_off()
            ax.text(0.02, 0.98, label, transform=ax.transAxes, va="top", color="w", fontsize=7)
            x0, x1, y0, y1 = self.extent[i]
            self.images.append(ax.imshow(np.zeros((bins, bins)), cmap=cmap, norm=norm, origin="lower",
                                         extent=(x0, x1, y0, y1), interpolation="nearest", aspect="auto"))
        self.fig.subplots_adjust(0, 0, 1, 0.94, 0.02, 0.02)

    def __call__(self, pts: np.ndarray, caption: str) -> np.ndarray:
        for i, im in enumerate(self.images):
            x0, x1, y0, y1 = self.extent[i]
            h, _, _ = np.histogram2d(pts[i, :, 1], pts[i, :, 0], bins=self.bins, range=[[y0, y1], [x0, x1]])
            im.set_data(np.ma.masked_equal(h, 0) + 0.25)
        self.caption.set_text(caption)
        self.fig.canvas.draw()
        return np.asarray(self.fig.canvas.buffer_rgba())[..., :3].copy()
