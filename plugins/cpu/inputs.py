"""The CPU rasterisers' input rules (shapes, float32, contiguity), shared by the numba kernels
(rasterize.py) and the compiled playback rasteriser (playback.py); imports neither."""
from __future__ import annotations

import numpy as np


def float32_array(x: np.ndarray, shape: tuple, name: str) -> np.ndarray:
    """x as contiguous float32 of `shape` (-1: any size), or a ValueError naming it."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != len(shape) or any(s != -1 and s != d for s, d in zip(shape, x.shape)):
        raise ValueError(f"{name}: expected shape {shape} (-1: any), got {x.shape}")
    return x


def gaussian_arrays(means, quats, scales, opacities, colors, viewmat, K) -> tuple[np.ndarray, ...]:
    """The Gaussians and the camera as contiguous float32, their shapes checked against means' N."""
    means = float32_array(means, (-1, 3), "means")
    n = means.shape[0]
    quats, scales = float32_array(quats, (n, 4), "quats"), float32_array(scales, (n, 3), "scales")
    opacities, colors = float32_array(opacities, (n,), "opacities"), float32_array(colors, (n, 3), "colors")
    return (means, quats, scales, opacities, colors, float32_array(viewmat, (4, 4), "viewmat"),
            float32_array(K, (3, 3), "K"))


def u8_canvas(background: np.ndarray, out: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(background, out): a contiguous uint8 [H,W,3] background and an output of its shape (new if None)."""
    background = np.asarray(background)
    if background.dtype != np.uint8 or background.ndim != 3 or background.shape[2] != 3:
        raise ValueError(f"background: expected uint8 [H,W,3], got {background.dtype} {background.shape}")
    background = np.ascontiguousarray(background)
    H, W = background.shape[:2]
    if out is None:
        out = np.empty((H, W, 3), np.uint8)
    elif out.shape != (H, W, 3) or out.dtype != np.uint8 or not out.flags.c_contiguous:
        raise ValueError(f"out: expected contiguous uint8 {(H, W, 3)}, got {out.dtype} {out.shape}")
    return background, out
