"""ctypes binding of libembedtalk_raster (the C ABI in embedtalk_raster.h, CUB sort).

The Python runtime uses `CudaRasterizer` (driver API, no CUB); this binding exists so that the
GPU tests check the C ABI that native hosts (a TensorRT C++ plugin, apps) link against, and so
a Python host that prefers CUB's sort can use it. Loading needs no GPU (cudart is static and
finds libcuda lazily); calling it does.
"""
from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

from embedtalk_sdk.plugins.cuda import build
from embedtalk_sdk.runtime.errors import EmbedTalkError


class EtkRasterArgs(ctypes.Structure):
    """Mirror of `EtkRasterArgs` in embedtalk_raster.h."""

    _fields_ = [
        ("n_gaussians", ctypes.c_int32), ("width", ctypes.c_int32), ("height", ctypes.c_int32),
        ("fx", ctypes.c_float), ("fy", ctypes.c_float), ("cx", ctypes.c_float), ("cy", ctypes.c_float),
        ("means", ctypes.c_void_p), ("delta_means", ctypes.c_void_p), ("quats", ctypes.c_void_p),
        ("scales", ctypes.c_void_p), ("opacity_logits", ctypes.c_void_p), ("delta_opacity", ctypes.c_void_p),
        ("colors", ctypes.c_void_p), ("viewmat", ctypes.c_void_p),
        ("background_f32", ctypes.c_void_p), ("background_u8", ctypes.c_void_p),
        ("image_f32", ctypes.c_void_p), ("alpha", ctypes.c_void_p), ("image_u8", ctypes.c_void_p),
        ("max_pairs", ctypes.c_uint32), ("pair_count", ctypes.c_void_p),
    ]  # fmt: skip


class RasterLibraryError(EmbedTalkError, RuntimeError):
    """The rasteriser library is not built, or one of its calls failed; the message says which."""


def find_library() -> Path | None:
    """The built library for the current sources: package `prebuilt/`, then the user cache."""
    name = build.prebuilt_names()[1]
    for path in (build.HERE / "prebuilt" / name, build.cache_dir() / name):
        if path.is_file():
            return path
    return None


class RasterLibrary:
    """`etk_raster_workspace_size` / `etk_raster_forward` with Python-friendly errors."""

    def __init__(self, path: str | Path | None = None) -> None:
        path = path or find_library()
        if path is None:
            raise RasterLibraryError("libembedtalk_raster is not built: python -m embedtalk_sdk.plugins.cuda.build")
        self.path = Path(path)
        lib = ctypes.CDLL(str(self.path))
        lib.etk_raster_workspace_size.argtypes = [ctypes.c_int32, ctypes.c_int32, ctypes.c_int32, ctypes.c_uint32,
                                                  ctypes.POINTER(ctypes.c_size_t)]  # fmt: skip
        lib.etk_raster_workspace_size.restype = ctypes.c_int
        lib.etk_raster_forward.argtypes = [ctypes.POINTER(EtkRasterArgs), ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
        lib.etk_raster_forward.restype = ctypes.c_int
        lib.etk_raster_error_string.argtypes = [ctypes.c_int]
        lib.etk_raster_error_string.restype = ctypes.c_char_p
        lib.etk_raster_abi_version.restype = ctypes.c_int
        self.lib = lib
        self.abi_version = lib.etk_raster_abi_version()

    def _check(self, rc: int, what: str) -> None:
        if rc != 0:
            raise RasterLibraryError(f"{what}: {self.lib.etk_raster_error_string(rc).decode()} (code {rc})")

    def workspace_size(self, n: int, width: int, height: int, max_pairs: int) -> int:
        out = ctypes.c_size_t()
        self._check(self.lib.etk_raster_workspace_size(n, width, height, max_pairs, ctypes.byref(out)), "workspace_size")
        return int(out.value)

    def forward(self, stream: Any, workspace: Any, workspace_bytes: int, **fields: Any) -> None:
        """fields: the EtkRasterArgs members; pointers as ints or objects with `.ptr`; `K` (3x3)
        may replace fx, fy, cx, cy."""
        if "K" in fields:
            K = fields.pop("K")
            fields.update(fx=float(K[0][0]), fy=float(K[1][1]), cx=float(K[0][2]), cy=float(K[1][2]))
        args = EtkRasterArgs()
        for name, value in fields.items():
            if value is not None and hasattr(value, "ptr"):
                value = value.ptr
            setattr(args, name, value)
        ws = workspace.ptr if hasattr(workspace, "ptr") else workspace
        self._check(self.lib.etk_raster_forward(ctypes.byref(args), ws, workspace_bytes, int(stream)), "forward")
