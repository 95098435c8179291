"""The CUDA rasteriser driven from Python through the driver API (cuLaunchKernel); no torch.

    rast = CudaRasterizer()                                   # kernels: prebuilt fatbin or NVRTC
    ws = DeviceBuffer(rast.workspace_size(n, W, H, max_pairs))
    rast.forward(stream, n=n, width=W, height=H, K=K, means=..., ..., workspace=ws, ...)

Same contract as the C ABI `etk_raster_forward` (embedtalk_raster.h): device pointers, sizes, a
scratch workspace whose size `workspace_size` tells, a stream; nothing synchronises, allocates
or copies. The differences: the prefix sums and the pair sort are this package's own kernels
(etk_scan_*, etk_radix_*) instead of CUB, which NVRTC cannot compile (plugins/cuda/design.md).

`rasterize_cuda(...)` is the numpy-in, numpy-out convenience with the signature of the other two
implementations (docs/interfaces.md), for tests and benchmarks.
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any

import numpy as np

from embedtalk_sdk.plugins.cuda.driver import DeviceBuffer, Stream, driver_api, check, download, get_device, ptr, upload
from embedtalk_sdk.plugins.cuda.loader import KernelModule, load_kernels

TILE = 16
PROJECT_THREADS = 256
SCAN_THREADS, SCAN_BLOCK = 256, 1024
RADIX_THREADS, RADIX_TILE, RADIX_BITS = 256, 4096, 8
ALIGN = 256


class EtkCamera(ctypes.Structure):
    """Mirror of `struct EtkCamera` in rasterize_kernels.cuh (passed by value)."""

    _fields_ = [
        ("fx", ctypes.c_float), ("fy", ctypes.c_float), ("cx", ctypes.c_float), ("cy", ctypes.c_float),
        ("width", ctypes.c_int32), ("height", ctypes.c_int32), ("tiles_x", ctypes.c_int32), ("tiles_y", ctypes.c_int32),
    ]  # fmt: skip


def tile_bits(n_tiles: int) -> int:
    """Bits of the tile field: 2**bits > n_tiles."""
    return int(n_tiles).bit_length()


def radix_shifts(n_tiles: int) -> range:
    """Bit offsets of the radix passes over (tile << 32 | depth) keys of the pairs themselves (no padding:
    the kernels read the pair count): 32 depth bits + the bits of the largest tile id, n_tiles - 1."""
    return range(0, 32 + (int(n_tiles) - 1).bit_length(), RADIX_BITS)


def _blocks(n: int, per: int) -> int:
    return (int(n) + per - 1) // per


@dataclass(frozen=True)
class Layout:
    """Byte offsets of the workspace regions (each 256-byte aligned) and the total size."""

    offsets: dict[str, int]
    total: int
    n_tiles: int
    radix_blocks: int


def plan(n: int, width: int, height: int, max_pairs: int) -> Layout:
    """The workspace layout for N Gaussians, a W x H image and `max_pairs` (Gaussian, tile) pairs."""
    if n < 0 or width <= 0 or height <= 0 or max_pairs <= 0:
        raise ValueError(f"bad sizes: n={n}, width={width}, height={height}, max_pairs={max_pairs}")
    N, P = max(int(n), 1), int(max_pairs)
    n_tiles = _blocks(width, TILE) * _blocks(height, TILE)
    radix_blocks = _blocks(P, RADIX_TILE)
    scan_totals = max(_blocks(N, SCAN_BLOCK), _blocks(256 * radix_blocks, SCAN_BLOCK))
    sizes = {
        "mean2d": 8 * N, "conic": 16 * N, "depth": 4 * N, "rect": 16 * N, "count": 4 * N, "offsets": 4 * N,
        "scan_totals": 4 * scan_totals, "ranges": 8 * n_tiles,
        "keys": 8 * P, "values": 4 * P, "keys_alt": 8 * P, "values_alt": 4 * P,
        "hist": 4 * 256 * radix_blocks, "hist_incl": 4 * 256 * radix_blocks,
    }  # fmt: skip
    offsets, off = {}, 0
    for name, size in sizes.items():
        offsets[name] = off
        off += (size + ALIGN - 1) // ALIGN * ALIGN
    return Layout(offsets, off, n_tiles, radix_blocks)


class CudaRasterizer:
    """plugins/design.md steps 1-7 on the GPU, launched from Python. Not thread-safe per stream."""

    def __init__(self, kernels: KernelModule | None = None) -> None:
        self.kernels = kernels or load_kernels()

    @property
    def origin(self) -> str:
        """Where the kernels came from ("fatbin:..." or "nvrtc:sm_XY:cubin")."""
        return self.kernels.origin

    @staticmethod
    def workspace_size(n: int, width: int, height: int, max_pairs: int) -> int:
        return plan(n, width, height, max_pairs).total

    def _scan(self, stream: Stream, src: int, dst: int, count: int, totals: int) -> None:
        """Inclusive prefix sum of `count` u32 at src into dst (three launches)."""
        k, u32 = self.kernels, ctypes.c_uint32
        nb = _blocks(count, SCAN_BLOCK)
        k.etk_scan_blocks((nb, 1, 1), (SCAN_THREADS, 1, 1), stream, ptr(src), ptr(dst), u32(count), ptr(totals))
        if nb > 1:
            k.etk_scan_totals((1, 1, 1), (SCAN_THREADS, 1, 1), stream, ptr(totals), u32(nb))
            k.etk_scan_add((nb, 1, 1), (SCAN_THREADS, 1, 1), stream, ptr(dst), u32(count), ptr(totals))

    def forward(
        self,
        stream: Stream,
        *,
        n: int,
        width: int,
        height: int,
        K: Any,
        means: Any,
        quats: Any,
        scales: Any,
        opacity_logits: Any,
        colors: Any,
        viewmat: Any,
        max_pairs: int,
        workspace: Any,
        workspace_bytes: int,
        pair_count: Any,
        delta_means: Any = None,
        delta_opacity: Any = None,
        background_f32: Any = None,
        background_u8: Any = None,
        image_f32: Any = None,
        alpha: Any = None,
        image_u8: Any = None,
    ) -> None:
        """Enqueue one frame on `stream`. Pointers are ints / DeviceBuffer / DeviceArray (device
        memory); K is the 3x3 intrinsics (host). viewmat: device [4,4] row-major. pair_count: a
        device u32 that receives the pairs needed; if it exceeds max_pairs once the stream is done,
        the frame is incomplete: grow max_pairs and the workspace, and render again."""
        if (background_f32 is None) == (background_u8 is None):
            raise ValueError("give exactly one of background_f32, background_u8")
        self.kernels.device.make_current()  # the caller's thread may not have our context current
        L = plan(n, width, height, max_pairs)
        if workspace_bytes < L.total:
            raise ValueError(f"workspace has {workspace_bytes} bytes, {L.total} needed")
        base = int(workspace.ptr if hasattr(workspace, "ptr") else workspace)
        at = {name: base + off for name, off in L.offsets.items()}
        K = np.asarray(K, dtype=np.float64).reshape(3, 3)
        tiles_x, tiles_y = _blocks(width, TILE), _blocks(height, TILE)
        cam = EtkCamera(K[0, 0], K[1, 1], K[0, 2], K[1, 2], width, height, tiles_x, tiles_y)
        k, u32, i32 = self.kernels, ctypes.c_uint32, ctypes.c_int32
        drv = driver_api()
        check(drv.cuMemsetD8Async(at["ranges"], 0, 8 * L.n_tiles, stream.handle))
        pc = int(pair_count.ptr if hasattr(pair_count, "ptr") else pair_count)
        ids = 0
        if n == 0:
            check(drv.cuMemsetD8Async(pc, 0, 4, stream.handle))
        else:
            k.etk_project(
                (_blocks(n, PROJECT_THREADS), 1, 1), (PROJECT_THREADS, 1, 1), stream,
                i32(n), ptr(means), ptr(delta_means), ptr(quats), ptr(scales), ptr(opacity_logits),
                ptr(delta_opacity), ptr(viewmat), cam,
                ptr(at["mean2d"]), ptr(at["conic"]), ptr(at["depth"]), ptr(at["rect"]), ptr(at["count"]),
            )  # fmt: skip
            self._scan(stream, at["count"], at["offsets"], n, at["scan_totals"])
            k.etk_emit_pairs(
                (_blocks(n, 256), 1, 1), (256, 1, 1), stream,
                i32(n), ptr(at["rect"]), ptr(at["count"]), ptr(at["offsets"]), ptr(at["depth"]), i32(tiles_x),
                u32(max_pairs), ptr(at["keys"]), ptr(at["values"]),
            )  # fmt: skip
            k.etk_pair_count((1, 1, 1), (32, 1, 1), stream, i32(n), ptr(at["offsets"]), ptr(pc))
            keys, values, keys_alt, values_alt = at["keys"], at["values"], at["keys_alt"], at["values_alt"]
            nb, hist_len = L.radix_blocks, 256 * L.radix_blocks
            for shift in radix_shifts(L.n_tiles):
                k.etk_radix_histogram(
                    (nb, 1, 1), (RADIX_THREADS, 1, 1), stream,
                    ptr(keys), ptr(pc), u32(max_pairs), i32(shift), ptr(at["hist"]), u32(nb),
                )  # fmt: skip
                self._scan(stream, at["hist"], at["hist_incl"], hist_len, at["scan_totals"])
                k.etk_radix_scatter(
                    (nb, 1, 1), (RADIX_THREADS, 1, 1), stream,
                    ptr(keys), ptr(values), ptr(keys_alt), ptr(values_alt), ptr(pc), u32(max_pairs), i32(shift),
                    ptr(at["hist"]), ptr(at["hist_incl"]), u32(nb),
                )  # fmt: skip
                keys, keys_alt, values, values_alt = keys_alt, keys, values_alt, values
            k.etk_tile_ranges(
                (_blocks(max_pairs, 256), 1, 1), (256, 1, 1), stream, ptr(keys), ptr(pc), u32(max_pairs), ptr(at["ranges"])
            )
            ids = values
        k.etk_blend(
            (tiles_x, tiles_y, 1), (TILE, TILE, 1), stream,
            cam, ptr(at["ranges"]), ptr(ids), ptr(at["mean2d"]), ptr(at["conic"]), ptr(colors),
            ptr(background_f32), ptr(background_u8), ptr(image_f32), ptr(alpha), ptr(image_u8),
        )  # fmt: skip


def estimate_pairs(n: int, width: int, height: int) -> int:
    """A first guess at the (Gaussian, tile) pairs of a frame: 4 per Gaussian, at least 64k."""
    return max(65536, 4 * int(n), _blocks(width, TILE) * _blocks(height, TILE))


def rasterize_cuda(
    means: np.ndarray,
    quats: np.ndarray,
    scales: np.ndarray,
    opacities: np.ndarray,
    colors: np.ndarray,
    viewmat: np.ndarray,
    K: np.ndarray,
    background: np.ndarray,
    rasterizer: CudaRasterizer | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw Gaussians over a background on the GPU (plugins/design.md, steps 1-7).

    Same arguments and results as `rasterize_cpu` (docs/interfaces.md): means [N,3], quats [N,4]
    wxyz, scales [N,3], opacities [N] in (0,1), colors [N,3], viewmat [4,4], K [3,3],
    background [H,W,3] float -> (image f32 [H,W,3], alpha f32 [H,W]). The opacities enter the
    kernel as logits (the kernel applies the sigmoid, as the runtime needs), which reproduces
    them to float32 rounding. Synchronous; allocates per call (a test and benchmark helper).
    """
    rast = rasterizer or CudaRasterizer()
    get_device(rast.kernels.device.ordinal)
    f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)  # noqa: E731
    o = np.clip(np.asarray(opacities, np.float64), 1e-12, 1 - 1e-7)
    host = {
        "means": f32(means), "quats": f32(quats), "scales": f32(scales),
        "opacity_logits": f32(np.log(o) - np.log1p(-o)), "colors": f32(colors),
        "viewmat": f32(viewmat), "background_f32": f32(background),
    }  # fmt: skip
    n = host["means"].shape[0]
    H, W = host["background_f32"].shape[:2]
    stream = Stream()
    bufs = {k: DeviceBuffer(v.nbytes) for k, v in host.items()}
    for k, v in host.items():
        upload(bufs[k].ptr, v, stream)
    image, alpha = np.empty((H, W, 3), np.float32), np.empty((H, W), np.float32)
    d_image, d_alpha, d_count = DeviceBuffer(image.nbytes), DeviceBuffer(alpha.nbytes), DeviceBuffer(4)
    max_pairs = estimate_pairs(n, W, H)
    count = np.zeros(1, np.uint32)
    while True:
        ws_bytes = rast.workspace_size(n, W, H, max_pairs)
        ws = DeviceBuffer(ws_bytes)
        rast.forward(
            stream, n=n, width=W, height=H, K=K, max_pairs=max_pairs, workspace=ws, workspace_bytes=ws_bytes,
            pair_count=d_count, image_f32=d_image, alpha=d_alpha, **bufs,
        )  # fmt: skip
        download(count, d_count.ptr, stream)
        if int(count[0]) <= max_pairs:
            break
        max_pairs = int(count[0] * 1.25) + 1
    download(image, d_image.ptr, stream)
    download(alpha, d_alpha.ptr, stream)
    stream.close()
    return image, alpha
