"""Fast CPU plugin (numba; no torch): the runtime's rasteriser."""
from embedtalk_sdk.plugins.cpu.rasterize import rasterize_cpu

__all__ = ["rasterize_cpu"]
