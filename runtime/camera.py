"""Camera conventions (numpy only; the runtime uses this).

Datasets store OpenGL camera-to-world matrices; the rasterisers take OpenCV world-to-camera
`viewmat` and an intrinsics matrix `K` (see docs/interfaces.md).
"""
from __future__ import annotations

import numpy as np

_GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])


def viewmat_from_c2w_gl(c2w: np.ndarray) -> np.ndarray:
    """OpenGL camera-to-world [..., 4, 4] -> OpenCV world-to-camera [..., 4, 4] (float32)."""
    c2w_cv = np.asarray(c2w, dtype=np.float64) @ _GL_TO_CV
    return np.linalg.inv(c2w_cv).astype(np.float32)


def intrinsics(fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    """K [3,3] float32."""
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=np.float32)


def pingpong(n: int | np.ndarray, length: int) -> np.ndarray:
    """Index into a track of `length` frames that runs forward, then backward, forever.

    0, 1, ..., length-1, length-2, ..., 1, 0, 1, ... so a clip longer than the track never jumps.
    """
    n = np.asarray(n)
    if length <= 1:
        return np.zeros_like(n)
    period = 2 * (length - 1)
    m = n % period
    return np.where(m < length, m, period - m)
