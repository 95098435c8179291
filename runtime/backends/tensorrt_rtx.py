"""GPU backend for consumer RTX GPUs: a TensorRT-RTX engine of the network, then the CUDA
rasteriser, on one CUDA stream. Never imports torch.

Per batch, `deform` copies the audio windows and AUs to the GPU and enqueues the engine; its
outputs stay on the device (returned as `DeviceArray`s). Per frame, `render` uploads the viewmat
and the uint8 background (the blend kernel converts it, x / 255), enqueues the rasteriser on the
engine's outputs (no host round trip in between) and copies back only the finished uint8 frame
(plus the 4-byte pair count, in the same synchronisation). `render_device` leaves the frame on
the GPU (DLPack / __cuda_array_interface__).

Engine choice: the bundle's `engines` entry whose backend is "tensorrt-rtx", whose
compute_capability is this GPU's and whose trt_version is the installed TensorRT-RTX's, if its
header is VALID for this GPU; otherwise (and it says why, at WARNING) an engine is built from
deform.onnx for this GPU and cached in the user cache dir. If that fails too, the backend fails
with BackendError and `auto` moves on to the next backend (onnxruntime).
"""
from __future__ import annotations

import hashlib
import logging
from typing import Any

import numpy as np

from embedtalk_sdk.runtime.backends.base import (
    DEFORM_INPUTS,
    DEFORM_OUTPUTS,
    BackendError,
    check_shape,
    deform_io,
)
from embedtalk_sdk.plugins.cuda.engines import version_key
from embedtalk_sdk.runtime.bundle import Bundle, BundleError
from embedtalk_sdk.runtime.onnx_check import check_self_contained

log = logging.getLogger("embedtalk_sdk.runtime")

BACKEND = "tensorrt-rtx"


def select_engine(entries: list[dict], compute_capability: str, trt_version: str) -> tuple[dict | None, list[str]]:
    """The manifest entry that fits this GPU and TensorRT-RTX, and why the others do not."""
    reasons = []
    for e in entries:
        if e.get("backend") != BACKEND:
            continue
        if e.get("compute_capability") != compute_capability:
            reasons.append(f"{e.get('file')} is for {e.get('compute_capability')}, this GPU is {compute_capability}")
        elif version_key(e.get("trt_version", "")) != version_key(trt_version):
            reasons.append(f"{e.get('file')} was built by TensorRT-RTX {e.get('trt_version')}, {trt_version} is installed")
        else:
            return e, reasons
    if not reasons:
        reasons.append("the bundle has no tensorrt-rtx engine")
    return None, reasons


class _TrtLogger:
    def __init__(self, trt) -> None:
        class Logger(trt.ILogger):
            def __init__(self) -> None:
                trt.ILogger.__init__(self)

            def log(self, severity, msg) -> None:
                if int(severity) <= int(trt.ILogger.Severity.WARNING):
                    log.warning("TensorRT-RTX: %s", msg)

        self.logger = Logger()


class TensorRTRTXBackend:
    """`Backend` on an NVIDIA GPU with TensorRT-RTX and our CUDA rasteriser.

    Args:
        bundle: an open Bundle.
        device: CUDA device ordinal.
    """

    name = BACKEND

    def __init__(self, bundle: Bundle, device: int = 0) -> None:
        self.io = deform_io(bundle)
        from embedtalk_sdk.plugins.cuda.engines import EngineBuildError, import_rtx  # numpy only, no torch
        from embedtalk_sdk.plugins.cuda.driver import CudaError, Stream, get_device

        try:
            self.device = get_device(device)  # first: cheap, and the usual failure (no GPU)
            self.trt = trt = import_rtx()
        except (EngineBuildError, CudaError) as e:
            raise BackendError(f"backend {BACKEND}: {e}") from None
        self.stream = Stream()
        self._logger = _TrtLogger(trt).logger
        self.runtime = trt.Runtime(self._logger)
        self.engine, self.engine_origin = self._load_engine(bundle)
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise BackendError(f"backend {BACKEND}: TensorRT-RTX could not create an execution context")
        self._check_engine(bundle)
        self._setup_buffers(bundle)
        log.info("%s on %s (%s): engine %s, rasteriser kernels %s", BACKEND, self.device.name,
                 self.device.compute_capability, self.engine_origin, self.rasterizer.origin)  # fmt: skip

    # ------------------------------------------------------------ engines

    def _valid(self, data: bytes) -> tuple[bool, str]:
        try:
            validity, diag = self.runtime.get_engine_validity(data[: self.runtime.engine_header_size])
        except Exception as e:  # noqa: BLE001 - older bindings: trust the manifest
            return True, f"validity check unavailable ({e})"
        ok = validity != self.trt.EngineValidity.INVALID
        flags = [m for m in dir(self.trt.EngineInvalidityDiagnostics) if m.isupper()
                 and int(diag) & int(getattr(self.trt.EngineInvalidityDiagnostics, m))]  # fmt: skip
        return ok, f"{validity.name}{' (' + ', '.join(flags) + ')' if flags else ''}"

    def _load_engine(self, bundle: Bundle) -> tuple[Any, str]:
        cc, version = self.device.compute_capability, self.trt.__version__
        entry, reasons = select_engine(list(bundle.manifest.get("engines") or []), cc, version)
        if entry is not None:
            data = bundle.bytes_of(entry["file"])
            ok, why = self._valid(data)
            engine = self.runtime.deserialize_cuda_engine(data) if ok else None
            if engine is not None:
                return engine, entry["file"]
            reasons.append(f"{entry['file']} does not load here ({why})")
        log.warning("%s: no usable engine in %s (%s); building one from %s for %s (TensorRT-RTX %s)",
                    BACKEND, bundle.path, "; ".join(reasons), self.io.file, cc, version)  # fmt: skip
        return self._engine_from_onnx(bundle)

    def _engine_from_onnx(self, bundle: Bundle) -> tuple[Any, str]:
        from embedtalk_sdk.plugins.cuda.engines import EngineBuildError, build_rtx_engine
        from embedtalk_sdk.runtime.fileio import atomic_write
        from embedtalk_sdk.plugins.cuda.build import cache_dir

        onnx_bytes = check_self_contained(bundle.bytes_of(self.io.file), f"{bundle.path}/{self.io.file}")
        cc, version = self.device.compute_capability, self.trt.__version__
        key = hashlib.sha256(onnx_bytes).hexdigest()[:16]
        path = cache_dir().parent / "engines" / f"deform-{key}-{cc}-trtrtx{version}.engine"
        if path.is_file():
            engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
            if engine is not None:
                return engine, f"cache:{path}"
        try:
            known = hasattr(self.trt.ComputeCapability, "SM" + cc[2:])
            data = build_rtx_engine(onnx_bytes, cc if known else None)["data"]
        except EngineBuildError as e:
            raise BackendError(f"backend {BACKEND}: cannot build an engine for {cc}: {e}") from None
        engine = self.runtime.deserialize_cuda_engine(data)
        if engine is None:
            raise BackendError(f"backend {BACKEND}: an engine just built for {cc} does not load")
        try:
            atomic_write(path, data)
        except OSError as e:  # a read-only home is no reason to fail
            log.warning("%s: could not cache the engine at %s (%s)", BACKEND, path, e)
        return engine, f"built:{cc}"

    def _check_engine(self, bundle: Bundle) -> None:
        trt, e = self.trt, self.engine
        names = {e.get_tensor_name(i): e.get_tensor_mode(e.get_tensor_name(i)) for i in range(e.num_io_tensors)}
        inputs = {n for n, m in names.items() if m == trt.TensorIOMode.INPUT}
        outputs = {n for n, m in names.items() if m == trt.TensorIOMode.OUTPUT}
        if inputs != set(DEFORM_INPUTS) or not set(DEFORM_OUTPUTS) <= outputs:
            raise BundleError(f"{bundle.path}: engine {self.engine_origin} has inputs {sorted(inputs)}, outputs "
                              f"{sorted(outputs)}; expected {list(DEFORM_INPUTS)} -> {list(DEFORM_OUTPUTS)}")  # fmt: skip
        expected = self.io.expected()
        for name in (*DEFORM_INPUTS, *DEFORM_OUTPUTS):
            if e.get_tensor_dtype(name) != trt.DataType.FLOAT:
                raise BundleError(f"{bundle.path}: engine tensor {name} is {e.get_tensor_dtype(name)}, expected float32")
            shape = [d if d >= 0 else None for d in e.get_tensor_shape(name)]
            check_shape(f"engine {self.engine_origin} {name}", shape, expected[name], bundle)
        self.max_batch = int(e.get_tensor_profile_shape("audio_window", 0)[2][0])

    # ------------------------------------------------------------ buffers

    def _setup_buffers(self, bundle: Bundle) -> None:
        from embedtalk_sdk.plugins.cuda.driver import DeviceBuffer, PinnedBuffer, upload
        from embedtalk_sdk.plugins.cuda.loader import load_kernels
        from embedtalk_sdk.plugins.cuda.rasterizer import CudaRasterizer, estimate_pairs

        m = bundle.manifest
        n, w, f = self.io.n_gaussians, self.io.window, self.io.feature_dim
        self.width, self.height = int(m["width"]), int(m["height"])
        self.K = np.asarray(m["K"], dtype=np.float64).reshape(3, 3)
        self.n = n
        # The canonical Gaussians, uploaded once.
        self._gauss = {}
        for name, shape in (("means", (n, 3)), ("quats", (n, 4)), ("scales", (n, 3)), ("opacity_logits", (n,)),
                            ("colors", (n, 3))):  # fmt: skip
            arr = np.ascontiguousarray(bundle.array(name), dtype=np.float32)
            if arr.shape != shape:
                raise BundleError(f"{bundle.path}/{name}.npy has shape {arr.shape}, expected {shape}")
            self._gauss[name] = DeviceBuffer(arr.nbytes)
            upload(self._gauss[name].ptr, arr)
        # Network I/O for up to max_batch frames per launch (larger batches run in chunks).
        self._batch_cap = 0
        self._in_audio = DeviceBuffer(self.max_batch * w * f * 4)
        self._in_aus = DeviceBuffer(self.max_batch * 6 * 4)
        self._stage_audio = PinnedBuffer((self.max_batch, w, f), np.float32)
        self._stage_aus = PinnedBuffer((self.max_batch, 6), np.float32)
        self._alloc_outputs(self.max_batch)
        # Rasteriser state.
        self.rasterizer = CudaRasterizer(load_kernels(self.device))
        self._max_pairs = estimate_pairs(n, self.width, self.height)
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
        self._scratch_dm: Any = None  # for host-side delta arrays handed to render()

    def _alloc_outputs(self, batch: int) -> None:
        from embedtalk_sdk.plugins.cuda.driver import DeviceBuffer

        self._out_dm = DeviceBuffer(batch * self.io.n_gaussians * 3 * 4)
        self._out_do = DeviceBuffer(batch * self.io.n_gaussians * 4)
        self._batch_cap = batch

    def _alloc_workspace(self) -> None:
        from embedtalk_sdk.plugins.cuda.driver import DeviceBuffer

        self._ws_bytes = self.rasterizer.workspace_size(self.n, self.width, self.height, self._max_pairs)
        self._ws = DeviceBuffer(self._ws_bytes)

    # ------------------------------------------------------------ Backend

    def deform(self, audio_window: np.ndarray, aus: np.ndarray):
        """See `Backend.deform`. Returns `DeviceArray`s [B,N,3], [B,N] on the GPU (valid until the
        next call); `np.asarray` on them copies to the host."""
        from embedtalk_sdk.plugins.cuda.driver import DeviceArray, driver_api, check

        b = int(audio_window.shape[0])
        if aus.shape != (b, 6):
            raise ValueError(f"aus has shape {aus.shape}, expected ({b}, 6)")
        if audio_window.shape[1:] != (self.io.window, self.io.feature_dim):
            raise ValueError(f"audio_window has shape {audio_window.shape}, expected (B, {self.io.window}, {self.io.feature_dim})")
        if b > self._batch_cap:
            self._alloc_outputs(b)
        drv, n = driver_api(), self.io.n_gaussians
        for s in range(0, b, self.max_batch):
            c = min(self.max_batch, b - s)
            self.stream.synchronize()  # the staging buffers may still feed the previous copy
            np.copyto(self._stage_audio.array[:c], audio_window[s:s + c], casting="same_kind")
            np.copyto(self._stage_aus.array[:c], aus[s:s + c], casting="same_kind")
            check(drv.cuMemcpyHtoDAsync(self._in_audio.ptr, self._stage_audio.ptr, self._stage_audio.array[:c].nbytes, self.stream.handle))
            check(drv.cuMemcpyHtoDAsync(self._in_aus.ptr, self._stage_aus.ptr, c * 24, self.stream.handle))
            ctx = self.context
            ctx.set_input_shape("audio_window", (c, self.io.window, self.io.feature_dim))
            ctx.set_input_shape("aus", (c, 6))
            ctx.set_tensor_address("audio_window", self._in_audio.ptr)
            ctx.set_tensor_address("aus", self._in_aus.ptr)
            ctx.set_tensor_address("delta_means", self._out_dm.ptr + s * n * 12)
            ctx.set_tensor_address("delta_opacity", self._out_do.ptr + s * n * 4)
            if not ctx.execute_async_v3(int(self.stream)):
                raise RuntimeError(f"{BACKEND}: TensorRT-RTX failed to enqueue the network")
        dm = DeviceArray(self._out_dm.ptr, (b, n, 3), np.float32, owner=self, stream=self.stream, device_id=self.device.ordinal)
        do = DeviceArray(self._out_do.ptr, (b, n), np.float32, owner=self, stream=self.stream, device_id=self.device.ordinal)
        return dm, do

    def _device_ptr(self, x: Any, shape: tuple[int, ...], slot: str) -> int:
        """A device pointer for delta input `x`: a DeviceArray as is, a host array uploaded."""
        from embedtalk_sdk.plugins.cuda.driver import DeviceBuffer, upload

        if hasattr(x, "__cuda_array_interface__") and hasattr(x, "ptr"):
            if tuple(x.shape) != shape:
                raise ValueError(f"{slot} has shape {tuple(x.shape)}, expected {shape}")
            return int(x.ptr)
        host = np.ascontiguousarray(x, dtype=np.float32)
        if host.shape != shape:
            raise ValueError(f"{slot} has shape {host.shape}, expected {shape}")
        buf = getattr(self, f"_scratch_{slot}", None)
        if buf is None or buf.nbytes < host.nbytes:
            buf = DeviceBuffer(host.nbytes)
            setattr(self, f"_scratch_{slot}", buf)
        upload(buf.ptr, host)
        return buf.ptr

    def _enqueue_frame(self, delta_means: Any, delta_opacity: Any, viewmat: np.ndarray, background: np.ndarray) -> None:
        """Upload viewmat + background, run the rasteriser into the device frame, fetch the pair
        count; grows the pair capacity and redraws while a frame needed more pairs."""
        from embedtalk_sdk.plugins.cuda.driver import driver_api, check

        drv, h = driver_api(), self.stream.handle
        dm = self._device_ptr(delta_means, (self.n, 3), "dm")
        do = self._device_ptr(delta_opacity, (self.n,), "do")
        self.stream.synchronize()  # staging buffers are free
        np.copyto(self._viewmat_host.array, viewmat, casting="same_kind")
        np.copyto(self._bg_host.array, background, casting="no")  # uint8 only (Backend.render)
        check(drv.cuMemcpyHtoDAsync(self._viewmat.ptr, self._viewmat_host.ptr, 64, h))
        check(drv.cuMemcpyHtoDAsync(self._bg.ptr, self._bg_host.ptr, self._bg_host.nbytes, h))
        while True:
            self.rasterizer.forward(
                self.stream, n=self.n, width=self.width, height=self.height, K=self.K,
                means=self._gauss["means"], quats=self._gauss["quats"], scales=self._gauss["scales"],
                opacity_logits=self._gauss["opacity_logits"], colors=self._gauss["colors"],
                delta_means=dm, delta_opacity=do, viewmat=self._viewmat, background_u8=self._bg,
                image_u8=self._frame, max_pairs=self._max_pairs, workspace=self._ws,
                workspace_bytes=self._ws_bytes, pair_count=self._pair_count,
            )  # fmt: skip
            check(drv.cuMemcpyDtoHAsync(self._pair_count_host.ptr, self._pair_count.ptr, 4, h))
            self.stream.synchronize()
            needed = int(self._pair_count_host.array[0])
            if needed <= self._max_pairs:
                return
            log.info("%s: frame needs %d tile pairs (room for %d): growing and redrawing", BACKEND, needed, self._max_pairs)
            self._max_pairs = int(needed * 1.25) + 1
            self._alloc_workspace()

    def render(
        self,
        delta_means: Any,
        delta_opacity: Any,
        viewmat: np.ndarray,
        background: np.ndarray,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """See `Backend.render`; the deltas may be `deform`'s device rows or host arrays."""
        from embedtalk_sdk.plugins.cuda.driver import driver_api, check

        self._enqueue_frame(delta_means, delta_opacity, viewmat, background)
        check(driver_api().cuMemcpyDtoHAsync(self._frame_host.ptr, self._frame.ptr, self._frame_host.nbytes, self.stream.handle))
        self.stream.synchronize()
        if out is None:
            return self._frame_host.array.copy()
        np.copyto(out, self._frame_host.array)
        return out

    def render_device(self, delta_means: Any, delta_opacity: Any, viewmat: np.ndarray, background: np.ndarray):
        """Like `render`, but the uint8 [H,W,3] frame stays on the GPU: a `DeviceArray`
        (`torch.from_dlpack(frame)`, `cupy.asarray(frame)`, `frame.ptr`). Finished when this
        returns; overwritten by the next render."""
        from embedtalk_sdk.plugins.cuda.driver import DeviceArray

        self._enqueue_frame(delta_means, delta_opacity, viewmat, background)
        return DeviceArray(self._frame.ptr, (self.height, self.width, 3), np.uint8, owner=self, stream=self.stream,
                           device_id=self.device.ordinal)  # fmt: skip

    def close(self) -> None:
        """Free the GPU memory now (otherwise when the backend is garbage-collected)."""
        self.stream.synchronize()
        for name, value in list(vars(self).items()):
            if hasattr(value, "free"):
                value.free()
        for buf in self._gauss.values():
            buf.free()
