"""The pixel rules: how a uint8 image becomes the rasteriser's float background, and how a float
image becomes uint8. One rule each, shared by every backend and by the training, evaluation,
demo and export code that must produce the same bytes (no torch here).
"""
from __future__ import annotations

import numpy as np


def background_to_float(background: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """uint8 [H,W,3] -> float32 [H,W,3] in [0,1]: x / 255, correctly rounded in float32.

    The one rule for the rasteriser's background (the training side reads images the same way;
    the CUDA kernel divides likewise). Not x * float32(1/255), which differs for 126 of 256 values."""
    if background.dtype != np.uint8:
        raise TypeError(f"background must be uint8 [H,W,3], got {background.dtype}")
    if out is None:
        out = np.empty(background.shape, dtype=np.float32)
    np.divide(background, np.float32(255.0), out=out, dtype=np.float32)
    return out


def to_uint8(image: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """float [H,W,3] -> uint8: clip to [0,1], scale, round half to even. `image` is clobbered."""
    if out is None:
        out = np.empty(image.shape, dtype=np.uint8)
    np.clip(image, 0.0, 1.0, out=image)
    np.multiply(image, 255.0, out=image)
    np.rint(image, out=image)
    np.copyto(out, image, casting="unsafe")
    return out
