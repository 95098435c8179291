"""GPU backend for full TensorRT: one engine = network + `EmbedTalkRasterizer` plugin node.
Never imports torch. Untested on the development machines (full TensorRT does not install
there); the plugin's kernels and the engine graph are tested (plugins/cuda/design.md).

The engine (export --engine tensorrt) takes audio_window [B,W,F], aus [B,6], viewmat [B,4,4],
background [B,H,W,3] uint8 and gives frames [B,H,W,3] uint8. Avatar asks for the network per
batch and for pixels per frame, so `deform` only stages the batch's inputs and `render(i)` runs
the engine for frame i (batch 1): the network output never leaves the GPU, and only the frame
comes back. A bundle without an engine for this GPU and TensorRT version fails with
BackendError saying so, and `auto` moves on (tensorrt-rtx, then onnxruntime).
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np

from embedtalk_sdk.runtime.backends.base import BackendError
from embedtalk_sdk.runtime.backends.gpu import open_gpu
from embedtalk_sdk.runtime.bundle import Bundle

log = logging.getLogger("embedtalk_sdk.runtime")

BACKEND = "tensorrt"


class _Row:
    """Frame i of the staged batch (what Avatar indexes out of `deform`'s results)."""

    def __init__(self, index: int) -> None:
        self.index = index


class _Staged:
    def __init__(self, n: int) -> None:
        self.n = n

    def __getitem__(self, i: int) -> _Row:
        return _Row(int(i))

    def __len__(self) -> int:
        return self.n


class TensorRTBackend:
    name = BACKEND

    def __init__(self, bundle: Bundle, device: int = 0) -> None:
        from embedtalk_sdk.plugins.cuda.driver import DeviceBuffer, PinnedBuffer, Stream
        from embedtalk_sdk.plugins.cuda.engines import import_trt, version_key
        from embedtalk_sdk.plugins.cuda.trt_plugin import register_plugin

        self.io, self.device, self.trt = open_gpu(BACKEND, bundle, device, import_trt)
        trt = self.trt
        register_plugin(trt)
        cc = self.device.compute_capability
        entries = [e for e in bundle.manifest.get("engines") or [] if e.get("backend") == BACKEND]
        fit = [e for e in entries if e.get("compute_capability") == cc
               and version_key(e.get("trt_version", "")) == version_key(trt.__version__)]  # fmt: skip
        if not fit:
            have = ", ".join(f"{e.get('compute_capability')}/TensorRT {e.get('trt_version')}" for e in entries) or "none"
            raise BackendError(f"backend {BACKEND}: no engine for {cc}/TensorRT {trt.__version__} in {bundle.path} "
                               f"(has: {have}); re-export with --engine tensorrt on this machine")  # fmt: skip
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(bundle.bytes_of(fit[0]["file"]))
        if self.engine is None:
            raise BackendError(f"backend {BACKEND}: {fit[0]['file']} does not load on this GPU")
        self.context = self.engine.create_execution_context()
        self.stream = Stream()
        m = bundle.manifest
        self.width, self.height = int(m["width"]), int(m["height"])
        w, f, hw3 = self.io.window, self.io.feature_dim, (self.height, self.width, 3)
        self._buf = {
            "audio_window": DeviceBuffer(w * f * 4), "aus": DeviceBuffer(24), "viewmat": DeviceBuffer(64),
            "background": DeviceBuffer(int(np.prod(hw3))), "frames": DeviceBuffer(int(np.prod(hw3))),
        }  # fmt: skip
        self._host = {
            "audio_window": PinnedBuffer((1, w, f), np.float32), "aus": PinnedBuffer((1, 6), np.float32),
            "viewmat": PinnedBuffer((1, 4, 4), np.float32), "background": PinnedBuffer((1, *hw3), np.uint8),
            "frames": PinnedBuffer(hw3, np.uint8),
        }  # fmt: skip
        for name, buf in self._buf.items():
            self.context.set_tensor_address(name, buf.ptr)
        self.context.set_input_shape("audio_window", (1, w, f))
        self.context.set_input_shape("aus", (1, 6))
        self.context.set_input_shape("viewmat", (1, 4, 4))
        self.context.set_input_shape("background", (1, *hw3))
        self._windows: np.ndarray | None = None
        self._aus: np.ndarray | None = None
        log.info("%s on %s (%s): engine %s", BACKEND, self.device.name, cc, fit[0]["file"])

    def deform(self, audio_window: np.ndarray, aus: np.ndarray) -> tuple[Any, Any]:
        """Stages the batch; the network runs inside `render` (one engine holds both)."""
        self._windows = np.ascontiguousarray(audio_window, np.float32)
        self._aus = np.ascontiguousarray(aus, np.float32)
        b = self._windows.shape[0]
        return _Staged(b), _Staged(b)

    def render(self, delta_means: Any, delta_opacity: Any, viewmat: np.ndarray, background: np.ndarray,
               out: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
        from embedtalk_sdk.plugins.cuda.driver import driver_api, check

        if not isinstance(delta_means, _Row) or self._windows is None:
            raise ValueError(f"backend {BACKEND} renders only rows of its own deform() results")
        i, drv, h = delta_means.index, driver_api(), self.stream.handle
        self.device.make_current()  # TensorRT and the plugin's launches need our context on this thread
        self.stream.synchronize()
        self._host["audio_window"].array[0] = self._windows[i]
        self._host["aus"].array[0] = self._aus[i]
        self._host["viewmat"].array[0] = viewmat
        np.copyto(self._host["background"].array[0], background, casting="no")  # uint8, as the engine takes it
        for name in ("audio_window", "aus", "viewmat", "background"):
            check(drv.cuMemcpyHtoDAsync(self._buf[name].ptr, self._host[name].ptr, self._host[name].nbytes, h))
        if not self.context.execute_async_v3(int(self.stream)):
            raise RuntimeError(f"{BACKEND}: TensorRT failed to enqueue the engine")
        check(drv.cuMemcpyDtoHAsync(self._host["frames"].ptr, self._buf["frames"].ptr, self._host["frames"].nbytes, h))
        self.stream.synchronize()
        frame = self._host["frames"].array
        if out is None:
            return frame.copy()
        np.copyto(out, frame)
        return out
