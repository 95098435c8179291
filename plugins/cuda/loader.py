"""Loading the rasteriser kernels onto a GPU: a prebuilt nvcc fatbin if one fits, else NVRTC.

Search order (the first image the driver accepts wins):
  1. $EMBEDTALK_CUDA_FATBIN (a path), for packagers and tests;
  2. `plugins/cuda/prebuilt/<fatbin>` shipped inside the package (built by `build.py --out`);
  3. `<user cache>/cuda/<fatbin>` (built by `python -m embedtalk_sdk.plugins.cuda.build`);
  4. NVRTC for the GPU's arch, cached per arch in the user cache (first use ~1-2 s).
Fatbin names carry the sha256 of the source and flags, so an image of other sources is never
found. A fatbin without SASS for the GPU and whose PTX the driver cannot JIT fails to load
(CUDA_ERROR_NO_BINARY_FOR_GPU / UNSUPPORTED_PTX_VERSION) and the next source is tried.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from embedtalk_sdk.plugins.cuda import build
from embedtalk_sdk.plugins.cuda.driver import CudaError, Device, Kernel, driver_api, check, get_device

log = logging.getLogger("embedtalk_sdk.plugins.cuda")

RASTER_KERNELS = (
    "etk_project", "etk_emit_pairs", "etk_pair_count", "etk_pad_keys", "etk_tile_ranges", "etk_blend",
    "etk_scan_blocks", "etk_scan_totals", "etk_scan_add", "etk_radix_histogram", "etk_radix_scatter",
)  # fmt: skip
DEFORM_KERNELS = ("etk_deform_h32", "etk_deform_h64", "etk_deform_h128", "etk_deform_any")
# source file -> (environment variable naming a fatbin, kernel names)
SOURCES = {
    build.KERNELS: ("EMBEDTALK_CUDA_FATBIN", RASTER_KERNELS),
    build.DEFORM_KERNELS: ("EMBEDTALK_CUDA_DEFORM_FATBIN", DEFORM_KERNELS),
}


@dataclass
class KernelModule:
    """The loaded module and its kernels by name; `origin` says where the image came from."""

    device: Device
    module: Any
    kernels: dict[str, Kernel]
    origin: str

    def __getattr__(self, name: str) -> Kernel:
        try:
            return self.kernels[name]
        except KeyError:
            raise AttributeError(name) from None


def fatbin_candidates(source: Path = build.KERNELS) -> list[Path]:
    name, env = build.fatbin_name(source), SOURCES[source][0]
    paths = []
    if os.environ.get(env):
        paths.append(Path(os.environ[env]))
    paths += [build.HERE / "prebuilt" / name, build.cache_dir() / name]
    return [p for p in paths if p.is_file()]


def _load_image(device: Device, image: bytes, origin: str, names: tuple[str, ...]) -> KernelModule:
    device.make_current()
    module = check(driver_api().cuModuleLoadData(image))
    kernels = {name: Kernel(module, name) for name in names}
    return KernelModule(device, module, kernels, origin)


_MODULES: dict[tuple[int, bool, bool, Path], KernelModule] = {}


def load_kernels(device: Device | None = None, allow_nvrtc: bool = True, allow_prebuilt: bool = True,
                 source: Path = build.KERNELS) -> KernelModule:  # fmt: skip
    """The kernels of `source` (default: the rasteriser's; `build.DEFORM_KERNELS`: the `cuda`
    backend's network) on `device` (default: GPU 0), loaded once per device.

    Raises CudaError if no GPU is usable or no image could be loaded (the message lists why each
    source failed)."""
    device = device or get_device(0)
    key = (device.ordinal, allow_nvrtc, allow_prebuilt, source)
    if key in _MODULES:
        return _MODULES[key]
    names = SOURCES[source][1]
    failures = []
    if allow_prebuilt:
        for path in fatbin_candidates(source):
            try:
                mod = _load_image(device, path.read_bytes(), f"fatbin:{path}", names)
                break
            except CudaError as e:
                failures.append(f"{path}: {e}")
        else:
            mod = None
    else:
        mod = None
    if mod is None and allow_nvrtc:
        try:
            image, kind = build.nvrtc_cached(device.arch, source)
            mod = _load_image(device, image, f"nvrtc:{device.arch}:{kind}", names)
        except (build.BuildError, CudaError) as e:
            failures.append(f"NVRTC: {e}")
    if mod is None:
        raise CudaError(
            f"could not load the {source.stem} on {device.name} ({device.arch}): "
            + ("; ".join(failures) or "no prebuilt fatbin and NVRTC disabled")
        )
    log.info("%s on %s (%s) from %s", source.stem, device.name, device.arch, mod.origin)
    _MODULES[key] = mod
    return mod
