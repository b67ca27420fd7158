"""Checks shared by the option classes of several stages (each class checks its own fields in
``__post_init__``; a rule that two classes share lives here, once)."""

from __future__ import annotations

from layerfilm.errors import OptionsError

MAX_SEED = 2**32 - 1  # NumPy's and umap's seeds are 32-bit


def check_seed(seed: int, option: str = "--seed") -> None:
    if not 0 <= seed <= MAX_SEED:
        raise OptionsError(f"{option} {seed}: must be from 0 to {MAX_SEED}")
