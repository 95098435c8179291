"""CUDA plugin: the GPU rasteriser (forward only). See plugins/cuda/design.md.

    from embedtalk_sdk.plugins.cuda import CudaRasterizer, rasterize_cuda, cuda_available

Nothing here imports cuda-python until a GPU function is called, so this package imports (and
its sources compile, `build.py`) on machines without a GPU or a driver.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from embedtalk_sdk.plugins.cuda.rasterizer import CudaRasterizer, rasterize_cuda

__all__ = ["CudaRasterizer", "rasterize_cuda", "cuda_available"]


def cuda_available() -> bool:
    """True when cuda-python, a driver and at least one GPU are present (never raises)."""
    from embedtalk_sdk.plugins.cuda.driver import cuda_device_count

    return cuda_device_count() > 0


def __getattr__(name: str) -> Any:
    if name in ("CudaRasterizer", "rasterize_cuda"):
        from embedtalk_sdk.plugins.cuda import rasterizer

        return getattr(rasterizer, name)
    raise AttributeError(name)
