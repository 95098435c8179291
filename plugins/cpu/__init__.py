"""Fast CPU plugin (numba; no torch): the runtime's rasteriser."""
import os

# numba's OpenMP workers spin while waiting; on a shared 2-core laptop that costs 3-5x per frame
# (plugins/design.md). Passive waiting must be chosen before the OpenMP runtime starts.
os.environ.setdefault("OMP_WAIT_POLICY", "passive")

from embedtalk_sdk.plugins.cpu.rasterize import rasterize_cpu, rasterize_u8  # noqa: E402

__all__ = ["rasterize_cpu", "rasterize_u8"]
