"""Fast CPU plugin (no torch): the runtime's rasteriser. `rasterize_u8` (playback) is compiled
(splat.cpp) where the install built it, numba's otherwise; `rasterize_cpu` (float, any background)
is numba's. Attributes load on first use, so importing the package does not start numba."""
import os

# OpenMP workers spin while waiting; on a shared 2-core laptop that costs 3-5x per frame
# (plugins/design.md). Passive waiting must be chosen before the OpenMP runtime starts.
os.environ.setdefault("OMP_WAIT_POLICY", "passive")

__all__ = ["rasterize_cpu", "rasterize_u8"]


def __getattr__(name: str):
    if name == "rasterize_u8":
        from embedtalk_sdk.plugins.cpu.playback import rasterize_u8

        return rasterize_u8
    if name == "rasterize_cpu":
        from embedtalk_sdk.plugins.cpu.rasterize import rasterize_cpu

        return rasterize_cpu
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
