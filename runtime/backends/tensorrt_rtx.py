"""GPU backend for consumer RTX GPUs: a TensorRT-RTX engine of the network, then the CUDA
rasteriser, on one CUDA stream. Never imports torch.

Per batch, `deform` copies the audio windows and AUs to the GPU and enqueues the engine; its
outputs stay on the device (returned as `DeviceArray`s). The engine always runs at one batch size
(the profile's optimum, `FIXED_BATCH`; a shorter last batch is padded, a longer one chunked), so
TensorRT-RTX specialises its kernels for one shape only. Those JIT-compiled kernels are kept in a
runtime cache beside the engine cache, so a second process start compiles nothing. Per frame,
`render` is `CudaFrames` (runtime/backends/cuda_frames.py), shared with the `cuda` backend.

Engine choice: the bundle's `engines` entry whose backend is "tensorrt-rtx", whose
compute_capability is this GPU's and whose trt_version is the installed TensorRT-RTX's, if its
header is VALID for this GPU; otherwise (and it says why, at WARNING) an engine is built from
deform.onnx for this GPU and cached in the user cache dir. A GPU that TensorRT-RTX does not
support at all (Hopper, sm_90; Blackwell datacentre, sm_100) fails at once with BackendError
saying so, and `auto` moves on to the `cuda` backend.
"""
from __future__ import annotations

import hashlib
import logging
from typing import Any

import numpy as np

from embedtalk_sdk.runtime.backends.base import DEFORM_INPUTS, DEFORM_OUTPUTS, BackendError, check_shape
from embedtalk_sdk.plugins.cuda.engines import import_rtx, version_key
from embedtalk_sdk.runtime.backends.cuda_frames import CudaFrames, RenderOnGpu
from embedtalk_sdk.runtime.backends.gpu import open_gpu
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


def supported_compute_capabilities(trt) -> list[str]:
    """The GPUs this TensorRT-RTX builds for, as "sm86" (from its ComputeCapability enum)."""
    return sorted((m.lower() for m in dir(trt.ComputeCapability) if m.startswith("SM")), key=lambda c: int(c[2:]))


class TensorRTRTXBackend(RenderOnGpu):
    """`Backend` on an NVIDIA GPU with TensorRT-RTX and our CUDA rasteriser.

    Args:
        bundle: an open Bundle.
        device: CUDA device ordinal.
    """

    name = BACKEND

    def __init__(self, bundle: Bundle, device: int = 0) -> None:
        from embedtalk_sdk.plugins.cuda.driver import Stream

        self.io, self.device, self.trt = open_gpu(BACKEND, bundle, device, import_rtx)
        trt = self.trt
        supported = supported_compute_capabilities(trt)
        if self.device.compute_capability not in supported:
            raise BackendError(
                f"backend {BACKEND}: TensorRT-RTX {trt.__version__} does not support {self.device.name} "
                f"({self.device.compute_capability}; it supports {', '.join(supported)}); the cuda backend runs it"
            )
        self.stream = Stream()
        self._logger = _TrtLogger(trt).logger
        self.runtime = trt.Runtime(self._logger)
        self.engine, self.engine_origin, engine_key = self._load_engine(bundle)
        self._check_engine(bundle)
        self.context = self._create_context(engine_key)
        self._setup_buffers()
        self.frames = CudaFrames(bundle, self.device, self.stream, BACKEND)
        log.info("%s on %s (%s): engine %s, batch %d, runtime cache %s, rasteriser kernels %s", BACKEND,
                 self.device.name, self.device.compute_capability, self.engine_origin, self.batch,
                 self._cache_path, self.frames.origin)  # fmt: skip

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

    def _load_engine(self, bundle: Bundle) -> tuple[Any, str, str]:
        """(engine, where it came from, a key naming its runtime cache)."""
        cc, version = self.device.compute_capability, self.trt.__version__
        entry, reasons = select_engine(list(bundle.manifest.get("engines") or []), cc, version)
        if entry is not None:
            data = bundle.bytes_of(entry["file"])
            ok, why = self._valid(data)
            engine = self.runtime.deserialize_cuda_engine(data) if ok else None
            if engine is not None:
                return engine, entry["file"], hashlib.sha256(data).hexdigest()[:16]
            reasons.append(f"{entry['file']} does not load here ({why})")
        log.warning("%s: no usable engine in %s (%s); building one from %s for %s (TensorRT-RTX %s)",
                    BACKEND, bundle.path, "; ".join(reasons), self.io.file, cc, version)  # fmt: skip
        return self._engine_from_onnx(bundle)

    def _engine_dir(self):
        from embedtalk_sdk.plugins.cuda.build import cache_dir

        return cache_dir().parent / "engines"

    def _engine_from_onnx(self, bundle: Bundle) -> tuple[Any, str, str]:
        from embedtalk_sdk.plugins.cuda.engines import EngineBuildError, build_rtx_engine
        from embedtalk_sdk.runtime.fileio import atomic_write

        onnx_bytes = check_self_contained(bundle.bytes_of(self.io.file), f"{bundle.path}/{self.io.file}")
        cc, version = self.device.compute_capability, self.trt.__version__
        key = hashlib.sha256(onnx_bytes).hexdigest()[:16]
        path = self._engine_dir() / f"deform-{key}-{cc}-trtrtx{version}.engine"
        if path.is_file():
            engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
            if engine is not None:
                return engine, f"cache:{path}", key
        try:
            data = build_rtx_engine(onnx_bytes, cc)["data"]
        except EngineBuildError as e:
            raise BackendError(f"backend {BACKEND}: cannot build an engine for {cc}: {e}") from None
        engine = self.runtime.deserialize_cuda_engine(data)
        if engine is None:
            raise BackendError(f"backend {BACKEND}: an engine just built for {cc} does not load")
        try:
            atomic_write(path, data)
        except OSError as e:  # a read-only home is no reason to fail
            log.warning("%s: could not cache the engine at %s (%s)", BACKEND, path, e)
        return engine, f"built:{cc}", key

    def _create_context(self, engine_key: str):
        """An execution context with a runtime cache loaded from (and later saved to) the user cache."""
        cc, version = self.device.compute_capability, self.trt.__version__
        self._cache_path = self._engine_dir() / f"deform-{engine_key}-{cc}-trtrtx{version}.runtime-cache"
        self._runtime_cache = None
        config = self.engine.create_runtime_config()
        cache = config.create_runtime_cache()
        if cache is not None:
            if self._cache_path.is_file():
                try:
                    loaded = cache.deserialize(self._cache_path.read_bytes())
                except Exception as e:  # noqa: BLE001 - a damaged cache is rebuilt
                    loaded, why = False, str(e)
                else:
                    why = "another GPU, driver or TensorRT-RTX, or damaged"
                if not loaded:  # the cache stays empty and is overwritten after the first batch
                    log.warning("%s: ignoring the runtime cache %s (%s)", BACKEND, self._cache_path, why)
            config.set_runtime_cache(cache)
            self._runtime_cache = cache
        self._cache_saved = False
        context = self.engine.create_execution_context(runtime_config=config)
        if context is None:
            raise BackendError(f"backend {BACKEND}: TensorRT-RTX could not create an execution context")
        return context

    def save_runtime_cache(self) -> None:
        """Write the kernels TensorRT-RTX compiled so far to the runtime cache file (done after the
        first batch and at close; a failure to write is logged, not raised)."""
        from embedtalk_sdk.runtime.fileio import atomic_write

        if self._runtime_cache is None:
            return
        try:
            blob = self._runtime_cache.serialize()
            atomic_write(self._cache_path, bytes(memoryview(blob)))
            self._cache_saved = True
        except Exception as e:  # noqa: BLE001 - a read-only home is no reason to fail
            log.warning("%s: could not save the runtime cache %s (%s)", BACKEND, self._cache_path, e)

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
        _, opt, _ = (int(d[0]) for d in e.get_tensor_profile_shape("audio_window", 0))
        self.batch = opt  # the one shape the engine runs at

    # ------------------------------------------------------------ buffers

    def _setup_buffers(self) -> None:
        from embedtalk_sdk.plugins.cuda.driver import DeviceBuffer, PinnedBuffer

        w, f, b = self.io.window, self.io.feature_dim, self.batch
        self._in_audio = DeviceBuffer(b * w * f * 4)
        self._in_aus = DeviceBuffer(b * 6 * 4)
        self._stage_audio = PinnedBuffer((b, w, f), np.float32)
        self._stage_aus = PinnedBuffer((b, 6), np.float32)
        self._stage_audio.array[:] = 0
        self._stage_aus.array[:] = 0
        self._batch_cap = 0
        self._alloc_outputs(b)
        ctx = self.context
        ctx.set_input_shape("audio_window", (b, w, f))
        ctx.set_input_shape("aus", (b, 6))
        ctx.set_tensor_address("audio_window", self._in_audio.ptr)
        ctx.set_tensor_address("aus", self._in_aus.ptr)

    def _alloc_outputs(self, frames: int) -> None:
        """Room for `frames` rounded up to whole engine batches (a padded last batch writes there too)."""
        from embedtalk_sdk.plugins.cuda.driver import DeviceBuffer

        rows = -(-frames // self.batch) * self.batch
        self._out_dm = DeviceBuffer(rows * self.io.n_gaussians * 3 * 4)
        self._out_do = DeviceBuffer(rows * self.io.n_gaussians * 4)
        self._batch_cap = rows

    # ------------------------------------------------------------ Backend

    def deform(self, audio_window: np.ndarray, aus: np.ndarray):
        """See `Backend.deform`. Returns `DeviceArray`s [B,N,3], [B,N] on the GPU (valid until the
        next call); `np.asarray` on them copies to the host."""
        from embedtalk_sdk.plugins.cuda.driver import DeviceArray, driver_api, check

        b = self.io.batch_of(audio_window, aus)
        self.device.make_current()
        if b > self._batch_cap:
            self._alloc_outputs(b)
        drv, n, ctx = driver_api(), self.io.n_gaussians, self.context
        for s in range(0, b, self.batch):
            c = min(self.batch, b - s)
            self.stream.synchronize()  # the staging buffers may still feed the previous copy
            np.copyto(self._stage_audio.array[:c], audio_window[s:s + c], casting="same_kind")
            np.copyto(self._stage_aus.array[:c], aus[s:s + c], casting="same_kind")
            # Rows past c hold an earlier chunk's inputs: their outputs land in padding nobody reads.
            check(drv.cuMemcpyHtoDAsync(self._in_audio.ptr, self._stage_audio.ptr, self._stage_audio.nbytes, self.stream.handle))
            check(drv.cuMemcpyHtoDAsync(self._in_aus.ptr, self._stage_aus.ptr, self._stage_aus.nbytes, self.stream.handle))
            ctx.set_tensor_address("delta_means", self._out_dm.ptr + s * n * 12)
            ctx.set_tensor_address("delta_opacity", self._out_do.ptr + s * n * 4)
            if not ctx.execute_async_v3(int(self.stream)):
                raise RuntimeError(f"{BACKEND}: TensorRT-RTX failed to enqueue the network")
        if not self._cache_saved:
            self.stream.synchronize()
            self.save_runtime_cache()
        dm = DeviceArray(self._out_dm.ptr, (b, n, 3), np.float32, owner=self, stream=self.stream, device_id=self.device.ordinal)
        do = DeviceArray(self._out_do.ptr, (b, n), np.float32, owner=self, stream=self.stream, device_id=self.device.ordinal)
        return dm, do

    def close(self) -> None:
        """Save the runtime cache and free the GPU memory now (otherwise at garbage collection)."""
        self.device.make_current()
        self.stream.synchronize()
        self.save_runtime_cache()
        self.frames.close()
        for value in (self._in_audio, self._in_aus, self._stage_audio, self._stage_aus, self._out_dm, self._out_do):
            value.free()
