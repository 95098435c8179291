"""The `cuda` backend: any NVIDIA GPU (sm_75 .. sm_120, Hopper included), no TensorRT. Never
imports torch.

The baked network runs in two halves (runtime/network.py): the per-frame vector (audio net + AU
projection: a few hundred kFLOP per frame) in numpy on the host, and the per-Gaussian decode
(table row + frame vector -> ReLU -> trunk -> heads -> bounded delta_mu, delta_alpha: N x hidden^2
per frame) as one CUDA kernel, `etk_deform_h{32,64,128}` / `etk_deform_any`
(plugins/cuda/deform_kernels.cuh, NVRTC or a prebuilt fatbin, launched through cuda-python). Its
outputs stay on the GPU and the rasteriser (`CudaFrames`, shared with `tensorrt-rtx`) reads them
on the same stream; only the finished frame comes back.

The table is widened to float32 once at load (fp16 bundles: exactly), so the kernel reads one
layout; for 50k Gaussians x 64 that is 12.8 MB of GPU memory.
"""
from __future__ import annotations

import ctypes
import logging
from typing import Any

import numpy as np

from embedtalk_sdk.runtime.backends.base import BackendError
from embedtalk_sdk.runtime.backends.cuda_frames import CudaFrames, RenderOnGpu
from embedtalk_sdk.runtime.backends.gpu import open_gpu
from embedtalk_sdk.runtime.bundle import Bundle, BundleError
from embedtalk_sdk.runtime.deform_schema import network_config
from embedtalk_sdk.runtime.network import BakedNetwork, decode_weights

log = logging.getLogger("embedtalk_sdk.runtime")

BACKEND = "cuda"
THREADS = 128  # per block of the deform kernel
SPECIALISED = {32: "etk_deform_h32", 64: "etk_deform_h64", 128: "etk_deform_h128"}
MAX_HIDDEN = 256  # ETK_MAX_HIDDEN in deform_kernels.cuh


def deform_kernel_name(hidden: int) -> str:
    """The kernel for a network of this width; ValueError past the generic kernel's limit."""
    if hidden in SPECIALISED:
        return SPECIALISED[hidden]
    if not 0 < hidden <= MAX_HIDDEN:
        raise ValueError(f"hidden width {hidden} is outside 1..{MAX_HIDDEN}, which the cuda deform kernel handles")
    return "etk_deform_any"


class DeformKernel:
    """The per-Gaussian decode on the GPU: frame vectors [B, hidden] (device) -> delta_means
    [B, N, 3], delta_opacity [B, N] (device). Weights uploaded once, on `stream`."""

    def __init__(self, net: BakedNetwork, device: Any, stream: Any) -> None:
        from embedtalk_sdk.plugins.cuda import build
        from embedtalk_sdk.plugins.cuda.driver import DeviceBuffer, upload
        from embedtalk_sdk.plugins.cuda.loader import load_kernels

        self.net, self.device, self.stream = net, device, stream
        self.n, self.hidden = int(net.table.shape[0]), net.hidden
        host = decode_weights(net)  # first: a network the kernel does not compute needs no compiler
        self.alpha_b = float(host.pop("alpha_b")[0])  # a scalar argument, not a buffer
        self.module = load_kernels(device, source=build.DEFORM_KERNELS)
        self.kernel = self.module.kernels[deform_kernel_name(self.hidden)]
        self.buffers = {}
        for key, arr in host.items():
            self.buffers[key] = DeviceBuffer(arr.nbytes)
            upload(self.buffers[key].ptr, arr, stream)
        stream.synchronize()

    @property
    def origin(self) -> str:
        return f"{self.kernel.name} from {self.module.origin}"

    def __call__(self, frames: int, frame_vectors: Any, delta_means: Any, delta_opacity: Any) -> None:
        """Enqueue the decode of `frames` frame vectors into the device outputs (no synchronisation)."""
        from embedtalk_sdk.plugins.cuda.driver import ptr

        b, i32, f32 = self.buffers, ctypes.c_int32, ctypes.c_float
        self.kernel(
            (-(-self.n // THREADS), int(frames), 1), (THREADS, 1, 1), self.stream,
            i32(self.n), i32(self.hidden), i32(self.net.n_trunk), ptr(b["table"]), ptr(frame_vectors),
            ptr(b["trunk_w"]), ptr(b["trunk_b"]), ptr(b["mu_w"]), ptr(b["mu_b"]), ptr(b["alpha_w"]),
            f32(self.alpha_b), f32(self.net.bound), ptr(delta_means), ptr(delta_opacity),
        )  # fmt: skip

    def free(self) -> None:
        for buf in self.buffers.values():
            buf.free()


class CudaBackend(RenderOnGpu):
    """`Backend` on any NVIDIA GPU: our deform kernel and our rasteriser, no TensorRT.

    Args:
        bundle: an open Bundle.
        device: CUDA device ordinal.
    """

    name = BACKEND

    def __init__(self, bundle: Bundle, device: int = 0) -> None:
        from embedtalk_sdk.plugins.cuda.driver import CudaError, Stream

        self.io, self.device, _ = open_gpu(BACKEND, bundle, device)
        data = bundle.bytes_of(self.io.file)
        try:
            # A graph of another exporter may run on onnxruntime: not the bundle's fault, so BackendError.
            config = network_config(bundle.manifest, bundle.path)
            net = BakedNetwork.from_onnx(data, f"{bundle.path}/{self.io.file}", config)
        except BundleError as e:
            raise BackendError(f"backend {BACKEND} runs only the exporter's deform graph: {e}") from None
        if net.table.shape[0] != self.io.n_gaussians:
            raise BundleError(f"{bundle.path}/{self.io.file}: table has {net.table.shape[0]} rows, "
                              f"the manifest {self.io.n_gaussians} Gaussians")  # fmt: skip
        try:
            self.stream = Stream()
            self.kernel = DeformKernel(net, self.device, self.stream)
            self.frames = CudaFrames(bundle, self.device, self.stream, BACKEND)
        except (CudaError, ValueError) as e:
            raise BackendError(f"backend {BACKEND}: {e}") from None
        self.net = net
        self._stage: Any = None
        self._vectors: Any = None
        self._out_dm: Any = None
        self._out_do: Any = None
        self._cap = 0
        log.info("%s on %s (%s): %s, rasteriser kernels %s", BACKEND, self.device.name,
                 self.device.compute_capability, self.kernel.origin, self.frames.origin)  # fmt: skip

    def _reserve(self, frames: int) -> None:
        from embedtalk_sdk.plugins.cuda.driver import DeviceBuffer, PinnedBuffer

        if frames <= self._cap:
            return
        self.stream.synchronize()
        for buf in (self._vectors, self._out_dm, self._out_do, self._stage):
            if buf is not None:
                buf.free()
        n, h = self.io.n_gaussians, self.net.hidden
        self._stage = PinnedBuffer((frames, h), np.float32)
        self._vectors = DeviceBuffer(frames * h * 4)
        self._out_dm = DeviceBuffer(frames * n * 12)
        self._out_do = DeviceBuffer(frames * n * 4)
        self._cap = frames

    def deform(self, audio_window: np.ndarray, aus: np.ndarray):
        """See `Backend.deform`. Returns `DeviceArray`s [B,N,3], [B,N] on the GPU (valid until the
        next call); `np.asarray` on them copies to the host."""
        from embedtalk_sdk.plugins.cuda.driver import DeviceArray, check, driver_api

        b = self.io.batch_of(audio_window, aus)
        vectors = self.net.frame_vector(audio_window, aus)  # host work first: overlaps the GPU's last frame
        self.device.make_current()
        self._reserve(b)
        self.stream.synchronize()  # the pinned stage may still feed the previous batch's copy
        self._stage.array[:b] = vectors
        check(driver_api().cuMemcpyHtoDAsync(self._vectors.ptr, self._stage.ptr, vectors.nbytes, self.stream.handle))
        self.kernel(b, self._vectors, self._out_dm, self._out_do)
        n, dev = self.io.n_gaussians, self.device.ordinal
        dm = DeviceArray(self._out_dm.ptr, (b, n, 3), np.float32, owner=self, stream=self.stream, device_id=dev)
        do = DeviceArray(self._out_do.ptr, (b, n), np.float32, owner=self, stream=self.stream, device_id=dev)
        return dm, do

    def close(self) -> None:
        """Free the GPU memory now (otherwise at garbage collection)."""
        self.device.make_current()
        self.stream.synchronize()
        self.frames.close()
        self.kernel.free()
        for buf in (self._vectors, self._out_dm, self._out_do, self._stage):
            if buf is not None:
                buf.free()
