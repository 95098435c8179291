"""CPU backend: the bundle's network on the CPU, frames by the CPU rasteriser (`CpuRenderer`).

The network: deform.onnx through onnxruntime, or (`decode="auto"` where it can, plugins/cpu/decode.py)
its per-frame half in numpy and its per-Gaussian half compiled, ~2x faster at 15k Gaussians
(runtime/design.md). onnxruntime's tensors are bound by name (never by position) and their shapes
checked against the manifest when the session is created. Outputs go into preallocated buffers
(an IOBinding for onnxruntime), so a steady-state `deform` call allocates no per-Gaussian arrays.
"""
from __future__ import annotations

import os

import numpy as np
import onnxruntime as ort

from embedtalk_sdk.plugins.cpu import decode as compiled
from embedtalk_sdk.runtime.backends.base import (
    DEFAULT_BATCH,
    DEFORM_INPUTS,
    DEFORM_OUTPUTS,
    BackendError,
    check_shape,
    deform_io,
)
from embedtalk_sdk.runtime.backends.cpu import CpuRenderer
from embedtalk_sdk.runtime.bundle import Bundle, BundleError
from embedtalk_sdk.runtime.deform_schema import network_config
from embedtalk_sdk.runtime.network import BakedNetwork
from embedtalk_sdk.runtime.onnx_check import check_self_contained
from embedtalk_sdk.runtime.onnx_weights import FLOAT, graph_io
from embedtalk_sdk.runtime.stages import add_stage, stage_clock


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # respects taskset / cgroup pinning
    except AttributeError:
        return os.cpu_count() or 1


def _ort_shape(shape: list) -> list:
    # onnxruntime reports symbolic dims as strings and unknown ones as None.
    return [d if isinstance(d, int) else None for d in shape]


def _as_session_reports(io: dict[str, tuple[int, list]]) -> dict[str, tuple[str, list]]:
    """`graph_io`'s {name: (element type, dims)} as onnxruntime's session reports them: (type, dims)."""
    return {k: ("tensor(float)" if elem == FLOAT else f"element type {elem}", dims) for k, (elem, dims) in io.items()}


DECODES = ("auto", "compiled", "onnxruntime")


class OnnxRuntimeBackend:
    """`Backend` on any CPU: the network (onnxruntime, or half numpy and half compiled), then
    `CpuRenderer` for the pixels.

    Args:
        bundle: an open Bundle whose manifest declares `onnx.deform`.
        threads: onnxruntime intra-op threads (default: the cores this process may use); the compiled
            decode, like the rasteriser, uses OpenMP's threads (`OMP_NUM_THREADS`).
        max_batch: output buffers are preallocated for this many frames (they grow if needed).
        decode: "auto" (the compiled decode where it runs, else onnxruntime), "compiled" (BackendError
            saying why where it cannot run) or "onnxruntime" (deform.onnx whole, as before).
    """

    name = "onnxruntime"

    def __init__(self, bundle: Bundle, threads: int | None = None, max_batch: int = DEFAULT_BATCH,
                 decode: str = "auto") -> None:
        if decode not in DECODES:
            raise BackendError(f"decode must be one of {DECODES}, got {decode!r}")
        self.io = deform_io(bundle)
        self._decode = self._compiled_decode(bundle, decode)
        self.decode = "compiled" if self._decode is not None else "onnxruntime"
        self._alloc(max_batch)
        self._renderer = CpuRenderer(bundle)
        if self._decode is None:
            self._open_session(bundle, threads)

    def _compiled_decode(self, bundle: Bundle, decode: str) -> "tuple[BakedNetwork, compiled.CompiledDecode] | None":
        """The numpy frame vectors and the compiled decode, or None for onnxruntime."""
        if decode == "onnxruntime":
            return None
        where, data = f"{bundle.path}/{self.io.file}", bundle.bytes_of(self.io.file)
        try:
            net = BakedNetwork.from_onnx(data, where, network_config(bundle.manifest, where))
        except BundleError:
            if decode == "compiled":
                raise
            return None  # a graph that is not export's: onnxruntime runs it (or says what is wrong)
        try:  # onnxruntime's session would have checked the graph's interface: the same check
            inputs, outputs = graph_io(data)
        except ValueError as e:
            raise BundleError(f"{where}: {e}") from None
        self._check_interface(bundle, _as_session_reports(inputs), _as_session_reports(outputs))
        why = compiled.unavailable(net)
        if why is None and net.table.shape[0] != self.io.n_gaussians:
            why = f"{where} holds {net.table.shape[0]} Gaussians, the manifest {self.io.n_gaussians}"
        if why is not None:
            if decode == "compiled":
                raise BackendError(f"decode='compiled' cannot run {bundle.path}: {why}")
            return None
        return net, compiled.CompiledDecode(net)

    def _open_session(self, bundle: Bundle, threads: int | None) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or _cores()
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3  # errors only: ORT's warnings are not actionable for users
        # ORT's idle workers spin after each run; the numba rasteriser runs right after on the
        # same cores, so spinning would only steal its time.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            model = check_self_contained(bundle.bytes_of(self.io.file), f"{bundle.path}/{self.io.file}")
            self.session = ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - ORT raises its own exception types
            raise BundleError(f"{bundle.path}/{self.io.file} is not a usable ONNX model: {e}") from None
        self._check_session(bundle)
        self._binding = self.session.io_binding()

    def _check_session(self, bundle: Bundle) -> None:
        self._check_interface(bundle, {v.name: (v.type, v.shape) for v in self.session.get_inputs()},
                              {v.name: (v.type, v.shape) for v in self.session.get_outputs()})

    def _check_interface(self, bundle: Bundle, inputs: dict[str, tuple[str, list]],
                         outputs: dict[str, tuple[str, list]]) -> None:
        """The graph's inputs and outputs ({name: (type, dims)}, as onnxruntime's session reports them,
        or `graph_io` reads them for the compiled decode, which runs no session) against the manifest."""
        if set(inputs) != set(DEFORM_INPUTS) or not set(DEFORM_OUTPUTS) <= set(outputs):
            raise BundleError(
                f"{bundle.path}/{self.io.file} has inputs {sorted(inputs)} and outputs {sorted(outputs)}; "
                f"expected inputs {list(DEFORM_INPUTS)} and outputs {list(DEFORM_OUTPUTS)}"
            )
        expected = self.io.expected()
        for name, (kind, dims) in {**inputs, **outputs}.items():
            if name not in expected:
                continue
            if kind != "tensor(float)":
                raise BundleError(f"{bundle.path}/{self.io.file}: {name} is {kind}, expected tensor(float)")
            check_shape(f"{self.io.file} {name}", _ort_shape(dims), expected[name], bundle)

    def _alloc(self, batch: int) -> None:
        n = self.io.n_gaussians
        self._delta_means = np.empty((batch, n, 3), dtype=np.float32)
        self._delta_opacity = np.empty((batch, n), dtype=np.float32)

    @property
    def stages(self) -> dict[str, float] | None:
        """None, or a dict to which `deform` adds its [wall, CPU] seconds ("network") and `render`
        its stages' (`CpuRenderer.stages`): `embedtalk-sdk bench --profile`."""
        return self._renderer.stages

    @stages.setter
    def stages(self, stages: dict[str, float] | None) -> None:
        self._renderer.stages = stages

    def deform(self, audio_window: np.ndarray, aus: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """See `Backend.deform`; returns views of buffers reused by the next call."""
        t0 = stage_clock(self._renderer.stages)
        dm, do = self._deform(audio_window, aus)
        add_stage(self._renderer.stages, "network", t0)
        return dm, do

    def _deform(self, audio_window: np.ndarray, aus: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        b = self.io.batch_of(audio_window, aus)
        if b > self._delta_means.shape[0]:
            self._alloc(b)
        dm, do = self._delta_means[:b], self._delta_opacity[:b]  # leading slices stay contiguous
        if self._decode is not None:
            net, decode = self._decode
            # one frame per numpy call: BLAS picks other kernels (other roundings) for other batch
            # sizes, and speak and stream batch differently but must give the same frames
            vectors = [net.frame_vector(audio_window[i:i + 1], aus[i:i + 1]) for i in range(b)]
            decode(np.concatenate(vectors), dm, do)
            return dm, do
        binding = self._binding
        binding.bind_cpu_input("audio_window", np.ascontiguousarray(audio_window, dtype=np.float32))
        binding.bind_cpu_input("aus", np.ascontiguousarray(aus, dtype=np.float32))
        binding.bind_output("delta_means", "cpu", 0, np.float32, list(dm.shape), dm.ctypes.data)
        binding.bind_output("delta_opacity", "cpu", 0, np.float32, list(do.shape), do.ctypes.data)
        self.session.run_with_iobinding(binding)
        return dm, do

    def render(
        self,
        delta_means: np.ndarray,
        delta_opacity: np.ndarray,
        viewmat: np.ndarray,
        background: np.ndarray,
        out: np.ndarray | None = None,
        threads: int = 0,
    ) -> np.ndarray:
        """See `Backend.render` and `CpuRenderer.render` (thread-safe; `threads`)."""
        return self._renderer.render(delta_means, delta_opacity, viewmat, background, out, threads)

    @property
    def render_workers(self) -> int:
        """See `CpuRenderer.render_workers`: offline clips render this many frames side by side."""
        return self._renderer.render_workers
