"""Drawing frames: the film's timeline, layout, legend, raster and per-panel overlay."""
