"""The CPU playback rasteriser: `rasterize_u8` through the compiled extension (splat.cpp) when the
install built it, else through numba's kernels (rasterize.py). Both give the same frames bit for bit
(tests/test_splat_ext.py); the compiled one imports in ~1 ms where numba's start-up costs a cold
process ~0.7 s before its first frame. This module imports numba only for the fallback."""
from __future__ import annotations

import numpy as np

from embedtalk_sdk.plugins.cpu.inputs import gaussian_arrays, u8_canvas
from embedtalk_sdk.runtime.stages import add_seconds

try:
    from embedtalk_sdk.plugins.cpu import splat_ext
except ImportError:  # no C++ compiler at install time (setup.py: the extension is optional)
    splat_ext = None

COMPILED = splat_ext is not None
STAGES = ("projection", "binning", "blending")


def rasterize_u8(
    means: np.ndarray,
    quats: np.ndarray,
    scales: np.ndarray,
    opacities: np.ndarray,
    colors: np.ndarray,
    viewmat: np.ndarray,
    K: np.ndarray,
    background: np.ndarray,
    out: np.ndarray | None = None,
    stages: dict[str, list[float]] | None = None,
    threads: int = 0,
) -> np.ndarray:
    """Gaussians over a uint8 background [H,W,3] -> uint8 [H,W,3] (into `out` if given): rasterize.py's
    `rasterize_u8` (same arguments, same pixels), compiled when available. With `stages` (a dict), adds
    the [wall, process CPU] seconds of "projection", "binning" and "blending" to it. threads > 0: the
    compiled rasteriser's OpenMP threads for this and later calls from the calling thread (numba's
    kernels keep theirs); 0 leaves them."""
    if splat_ext is None:
        from embedtalk_sdk.plugins.cpu import rasterize

        return rasterize.rasterize_u8(means, quats, scales, opacities, colors, viewmat, K, background, out, stages)
    means, quats, scales, opacities, colors, viewmat, K = gaussian_arrays(means, quats, scales, opacities, colors,
                                                                          viewmat, K)
    background, out = u8_canvas(background, out)
    H, W = background.shape[:2]
    times = splat_ext.rasterize_u8(means.shape[0], means, quats, scales, opacities, colors, viewmat, K, H, W,
                                background, out, threads)
    for name, (wall, cpu) in zip(STAGES, times):
        add_seconds(stages, name, wall, cpu)
    return out


def describe() -> str:
    """Which CPU rasteriser plays frames here, e.g. "compiled (avx2, 2 threads)"."""
    if splat_ext is None:
        return "numba's kernels (the compiled rasteriser was not built: no C++ compiler at install)"
    return f"compiled ({splat_ext.simd()}, {splat_ext.threads()} threads)"


def parallel_frames() -> int:
    """Frames worth rendering side by side, one thread each (runtime/frame_pipeline.py): the compiled
    rasteriser's OpenMP threads (the cores, or OMP_NUM_THREADS); 1 for numba's kernels, whose
    threads cannot be set per calling thread."""
    return splat_ext.threads() if splat_ext is not None else 1


def warm_up() -> None:
    """Make the first frame fast: nothing to do for the compiled rasteriser; numba's kernels are
    loaded (a first call ever compiles them into numba's cache)."""
    if splat_ext is None:
        from embedtalk_sdk.plugins.cpu import rasterize

        rasterize.warm_up()


def sigmoid_(x: np.ndarray) -> np.ndarray:
    """x <- 1 / (1 + exp(-x)) in place, for a C-contiguous float32 array: scipy.special.expit's values
    bit for bit (the same libm expf), without importing scipy.special (~0.2 s of a cold process)."""
    if x.dtype != np.float32 or not x.flags.c_contiguous or not x.flags.writeable:
        raise ValueError(f"sigmoid_: expected a writable C-contiguous float32 array, got {x.dtype}")
    if splat_ext is None:
        from scipy.special import expit

        return expit(x, out=x)
    splat_ext.sigmoid_(x.size, x)
    return x
