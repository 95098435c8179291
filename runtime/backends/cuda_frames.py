"""Frames on an NVIDIA GPU: the bundle's Gaussians, the CUDA rasteriser and the uint8 frame, on
one stream. The render half that the `tensorrt-rtx` and `cuda` backends share (they differ in
how the network runs). Never imports torch.

Per frame, `render` uploads the viewmat and the uint8 background through pinned buffers (the blend
kernel converts the background, x / 255), enqueues the rasteriser on the network's outputs (device
rows, no host round trip) and copies back only the finished frame, with the 4-byte pair count in
the same synchronisation. A frame that needed more (Gaussian, tile) pairs than the workspace holds
grows it and is drawn again (first frames only). `render_device` leaves the frame on the GPU.
Every entry point makes the device's context current: a backend may be called from any thread.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np

from embedtalk_sdk.runtime.bundle import Bundle, BundleError

log = logging.getLogger("embedtalk_sdk.runtime")

GAUSSIAN_ARRAYS = ("means", "quats", "scales", "opacity_logits", "colors")


class CudaFrames:
    """The rasteriser side of a GPU backend.

    Args:
        bundle: the open bundle (Gaussians, K, frame size).
        device: a `plugins.cuda.driver.Device` (its context is made current on every call).
        stream: the backend's work stream; everything here is ordered on it.
        name: the backend's name, for log lines.
    """

    def __init__(self, bundle: Bundle, device: Any, stream: Any, name: str) -> None:
        from embedtalk_sdk.plugins.cuda.driver import DeviceBuffer, PinnedBuffer, upload
        from embedtalk_sdk.plugins.cuda.loader import load_kernels
        from embedtalk_sdk.plugins.cuda.rasterizer import CudaRasterizer, estimate_pairs

        self.device, self.stream, self.name = device, stream, name
        device.make_current()
        m = bundle.manifest
        self.n = n = int(m["gaussians"]["count"])
        self.width, self.height = int(m["width"]), int(m["height"])
        self.K = np.asarray(m["K"], dtype=np.float64).reshape(3, 3)
        shapes = {"means": (n, 3), "quats": (n, 4), "scales": (n, 3), "opacity_logits": (n,), "colors": (n, 3)}
        self.gaussians: dict[str, Any] = {}
        for key in GAUSSIAN_ARRAYS:
            arr = np.ascontiguousarray(bundle.array(key), dtype=np.float32)
            if arr.shape != shapes[key]:
                raise BundleError(f"{bundle.path}/{key}.npy has shape {arr.shape}, expected {shapes[key]}")
            self.gaussians[key] = DeviceBuffer(arr.nbytes)
            upload(self.gaussians[key].ptr, arr, stream)  # pageable: staged by the driver, ordered on the stream
        self.rasterizer = CudaRasterizer(load_kernels(device))
        self.max_pairs = estimate_pairs(n, self.width, self.height)
        self._alloc_workspace()
        hw3 = (self.height, self.width, 3)
        self._pair_count = DeviceBuffer(4)
        self._pair_count_host = PinnedBuffer((1,), np.uint32)
        self._frame = DeviceBuffer(int(np.prod(hw3)))
        self._frame_host = PinnedBuffer(hw3, np.uint8)
        self._bg = DeviceBuffer(int(np.prod(hw3)))  # uint8: the kernel converts it (x / 255)
        self._bg_host = PinnedBuffer(hw3, np.uint8)
        self._viewmat = DeviceBuffer(64)
        self._viewmat_host = PinnedBuffer((4, 4), np.float32)
        self._scratch: dict[str, Any] = {}  # device copies of host-side deltas handed to render()
        stream.synchronize()

    @property
    def origin(self) -> str:
        """Where the rasteriser kernels came from (fatbin or NVRTC)."""
        return self.rasterizer.origin

    def _alloc_workspace(self) -> None:
        from embedtalk_sdk.plugins.cuda.driver import DeviceBuffer

        self._ws_bytes = self.rasterizer.workspace_size(self.n, self.width, self.height, self.max_pairs)
        self._ws = DeviceBuffer(self._ws_bytes)

    def _device_ptr(self, x: Any, shape: tuple[int, ...], slot: str) -> int:
        """A device pointer for delta input `x`: a device array as is, a host array uploaded."""
        from embedtalk_sdk.plugins.cuda.driver import DeviceBuffer, upload

        if hasattr(x, "__cuda_array_interface__") and hasattr(x, "ptr"):
            if tuple(x.shape) != shape:
                raise ValueError(f"{slot} has shape {tuple(x.shape)}, expected {shape}")
            return int(x.ptr)
        host = np.ascontiguousarray(x, dtype=np.float32)
        if host.shape != shape:
            raise ValueError(f"{slot} has shape {host.shape}, expected {shape}")
        buf = self._scratch.get(slot)
        if buf is None or buf.nbytes < host.nbytes:
            buf = self._scratch[slot] = DeviceBuffer(host.nbytes)
        upload(buf.ptr, host, self.stream)
        return buf.ptr

    def enqueue(self, delta_means: Any, delta_opacity: Any, viewmat: np.ndarray, background: np.ndarray) -> None:
        """Draw one frame into the device frame buffer; returns once it is finished."""
        from embedtalk_sdk.plugins.cuda.driver import check, driver_api

        self.device.make_current()
        drv, h = driver_api(), self.stream.handle
        self.stream.synchronize()  # the pinned staging buffers may still feed the previous frame's copies
        dm = self._device_ptr(delta_means, (self.n, 3), "delta_means")
        do = self._device_ptr(delta_opacity, (self.n,), "delta_opacity")
        np.copyto(self._viewmat_host.array, viewmat, casting="same_kind")
        np.copyto(self._bg_host.array, background, casting="no")  # uint8 only (Backend.render)
        check(drv.cuMemcpyHtoDAsync(self._viewmat.ptr, self._viewmat_host.ptr, 64, h))
        check(drv.cuMemcpyHtoDAsync(self._bg.ptr, self._bg_host.ptr, self._bg_host.nbytes, h))
        g = self.gaussians
        while True:
            self.rasterizer.forward(
                self.stream, n=self.n, width=self.width, height=self.height, K=self.K,
                means=g["means"], quats=g["quats"], scales=g["scales"], opacity_logits=g["opacity_logits"],
                colors=g["colors"], delta_means=dm, delta_opacity=do, viewmat=self._viewmat, background_u8=self._bg,
                image_u8=self._frame, max_pairs=self.max_pairs, workspace=self._ws, workspace_bytes=self._ws_bytes,
                pair_count=self._pair_count,
            )  # fmt: skip
            check(drv.cuMemcpyDtoHAsync(self._pair_count_host.ptr, self._pair_count.ptr, 4, h))
            self.stream.synchronize()
            needed = int(self._pair_count_host.array[0])
            if needed <= self.max_pairs:
                return
            log.info("%s: frame needs %d tile pairs (room for %d): growing and redrawing", self.name, needed, self.max_pairs)
            self.max_pairs = int(needed * 1.25) + 1
            self._alloc_workspace()

    def render(self, delta_means: Any, delta_opacity: Any, viewmat: np.ndarray, background: np.ndarray,
               out: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
        """See `Backend.render`; the deltas may be device rows or host arrays."""
        from embedtalk_sdk.plugins.cuda.driver import check, driver_api

        self.enqueue(delta_means, delta_opacity, viewmat, background)
        check(driver_api().cuMemcpyDtoHAsync(self._frame_host.ptr, self._frame.ptr, self._frame_host.nbytes,
                                             self.stream.handle))  # fmt: skip
        self.stream.synchronize()
        if out is None:
            return self._frame_host.array.copy()
        np.copyto(out, self._frame_host.array)
        return out

    def render_device(self, delta_means: Any, delta_opacity: Any, viewmat: np.ndarray, background: np.ndarray,
                      owner: Any = None):  # fmt: skip
        """The uint8 [H,W,3] frame as a `DeviceArray` on the GPU (DLPack, `__cuda_array_interface__`,
        `.ptr`); finished when this returns, overwritten by the next render."""
        from embedtalk_sdk.plugins.cuda.driver import DeviceArray

        self.enqueue(delta_means, delta_opacity, viewmat, background)
        return DeviceArray(self._frame.ptr, (self.height, self.width, 3), np.uint8, owner=owner or self,
                           stream=self.stream, device_id=self.device.ordinal)  # fmt: skip

    def close(self) -> None:
        """Free the GPU memory now (otherwise when garbage-collected)."""
        self.device.make_current()
        self.stream.synchronize()
        for value in [*vars(self).values(), *self.gaussians.values(), *self._scratch.values()]:
            if hasattr(value, "free"):
                value.free()


class RenderOnGpu:
    """`render` and `render_device` of a backend whose `frames` is a `CudaFrames`."""

    frames: CudaFrames

    def render(self, delta_means: Any, delta_opacity: Any, viewmat: np.ndarray, background: np.ndarray,
               out: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
        """See `Backend.render`; the deltas may be `deform`'s device rows or host arrays."""
        return self.frames.render(delta_means, delta_opacity, viewmat, background, out)

    def render_device(self, delta_means: Any, delta_opacity: Any, viewmat: np.ndarray, background: np.ndarray):
        """Like `render`, but the uint8 [H,W,3] frame stays on the GPU: a `DeviceArray`
        (`torch.from_dlpack(frame)`, `cupy.asarray(frame)`, `frame.ptr`). Finished when this
        returns; overwritten by the next render."""
        return self.frames.render_device(delta_means, delta_opacity, viewmat, background, owner=self)
