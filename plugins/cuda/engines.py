"""TensorRT engines of a bundle's network, built ahead of time at export (no GPU needed for RTX).

    entries = build_rtx_engines(onnx_bytes, targets=["sm86", "sm89"])
    # -> [{"file": "engines/deform-sm86.trtrtx", "backend": "tensorrt-rtx", "compute_capability": "sm86",
    #      "trt_version": "1.7.1.116", "inputs": {...}, "outputs": {...}, "profile": {...},
    #      "data": b"..."}, ...]

`tensorrt-rtx` (consumer RTX GPUs): one engine per compute capability of the baked network
`deform.onnx` only; the runtime runs our CUDA rasteriser after it on the same stream
(runtime/backends/tensorrt_rtx.py). TensorRT-RTX builds for a chosen compute capability on a
machine without a GPU (`num_compute_capabilities = 1`, `set_compute_capability(SMxx, 0)`).

`tensorrt` (full TensorRT, data-centre GPUs; not installable on the development machines): one
engine holding the network *and* the rasteriser as the plugin node `EmbedTalkRasterizer`
(IPluginV3, plugins/cuda/trt_plugin.py), built on the target GPU. `rasterizer_graph` writes that
ONNX graph (checkable anywhere); `build_trt_engine` needs `tensorrt` and a GPU.

Engines are strongly typed: precision is whatever the ONNX says (fp32 here), no builder flags.
The batch is dynamic; the optimisation profile is BATCH_PROFILE (min, opt, max).
"""
from __future__ import annotations

import re
import time
from typing import Any, Callable, Iterable

import numpy as np

from embedtalk_sdk.runtime.backends.base import DEFAULT_BATCH
from embedtalk_sdk.runtime.errors import EmbedTalkError

BACKEND_RTX = "tensorrt-rtx"
BACKEND_TRT = "tensorrt"
BATCH_PROFILE = (1, DEFAULT_BATCH, 2 * DEFAULT_BATCH)  # min, opt, max frames per network call (opt: Avatar's batch)
PLUGIN_OP = "EmbedTalkRasterizer"
PLUGIN_DOMAIN = "embedtalk"
PLUGIN_VERSION = "1"


def version_key(version: str) -> tuple[str, ...]:
    """What must agree between an engine's TensorRT version and the installed one: major.minor.patch."""
    return tuple(str(version).split(".")[:3])


class EngineBuildError(EmbedTalkError, RuntimeError):
    """TensorRT(-RTX) is missing, or rejected the network; the message says which and why."""


def normalize_target(target: str) -> str:
    """"sm86", "sm_86", "86", "8.6" -> "sm86"."""
    t = str(target).strip().lower().replace("sm_", "").replace("sm", "").replace(".", "")
    if not re.fullmatch(r"\d{2,3}", t):
        raise ValueError(f"compute capability {target!r}: expected e.g. sm86, sm_89, 8.6, 120")
    return f"sm{t}"


def parse_targets(targets: str | Iterable[str]) -> list[str]:
    """"sm86,sm89" or ["sm86", "8.9"] -> ["sm86", "sm89"] (order kept, duplicates dropped)."""
    items = targets.split(",") if isinstance(targets, str) else list(targets)
    out: list[str] = []
    for item in items:
        if str(item).strip():
            t = normalize_target(item)
            if t not in out:
                out.append(t)
    return out


# ---------------------------------------------------------------- TensorRT-RTX


def import_rtx():
    """The TensorRT-RTX Python module, or EngineBuildError saying how to install it."""
    try:
        import tensorrt_rtx_bindings as trt  # the cu13 wheels' module name
    except ImportError:
        try:
            import tensorrt_rtx as trt  # older / other packagings
        except ImportError:
            raise EngineBuildError(
                "TensorRT-RTX is not installed: pip install 'embedtalk-sdk[gpu]' "
                "(tensorrt-rtx-cu13-libs + tensorrt-rtx-cu13-bindings)"
            ) from None
    return trt


def rtx_available() -> bool:
    try:
        import_rtx()
        return True
    except EngineBuildError:
        return False


def _shape(dims: Any) -> list:
    return [int(d) if int(d) >= 0 else "batch" for d in dims]


def _profile_shapes(dims: list, batch: int) -> tuple[int, ...]:
    return tuple(batch if d == "batch" else int(d) for d in dims)


class _Logger:
    """Collects the builder's errors so they end up in EngineBuildError messages."""

    def __init__(self, trt) -> None:
        outer = self
        self.messages: list[str] = []

        class Logger(trt.ILogger):
            def __init__(self) -> None:
                trt.ILogger.__init__(self)

            def log(self, severity, msg) -> None:
                if severity <= trt.ILogger.Severity.WARNING:
                    outer.messages.append(f"{severity.name}: {msg}")

        self.logger = Logger()


def parse_network(trt, builder, logger, onnx_bytes: bytes):
    """Parse ONNX into a (strongly typed) network; EngineBuildError with the parser's errors."""
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"the ONNX parser rejected the network: {errors}")
    return network, parser


def network_io(network) -> tuple[dict[str, list], dict[str, list]]:
    inputs = {network.get_input(i).name: _shape(network.get_input(i).shape) for i in range(network.num_inputs)}
    outputs = {network.get_output(i).name: _shape(network.get_output(i).shape) for i in range(network.num_outputs)}
    return inputs, outputs


def _build_serialized(builder, network, config, inputs: dict[str, list], batch: tuple[int, int, int], log: "_Logger",
                      failure: str) -> bytes:
    """The serialised engine of `network` with one optimisation profile over `batch`, or
    EngineBuildError(failure + the builder's last messages). Shared by both TensorRT flavours."""
    profile = builder.create_optimization_profile()
    for name, dims in inputs.items():
        profile.set_shape(name, *(_profile_shapes(dims, b) for b in batch))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"{failure}: " + " | ".join(log.messages[-5:]))
    return bytes(memoryview(serialized))


def _engine_entry(backend: str, cc: str, trt_version: str, inputs: dict, outputs: dict,
                  batch: tuple[int, int, int], t0: float, data: bytes) -> dict:
    """The built engine as `build_engines` returns it (manifest_entry drops `data`)."""
    return {"backend": backend, "compute_capability": cc, "trt_version": trt_version, "inputs": inputs,
            "outputs": outputs, "profile": {"batch": list(batch)},
            "build_seconds": round(time.perf_counter() - t0, 3), "data": data}


def build_rtx_engine(onnx_bytes: bytes, target: str | None, batch: tuple[int, int, int] = BATCH_PROFILE) -> dict:
    """One TensorRT-RTX engine of `onnx_bytes` for compute capability `target` ("sm86"), or for
    the GPU of this machine when target is None (ComputeCapability.CURRENT; needs a GPU).

    Returns the manifest entry (without "file") plus "data": the serialized engine."""
    trt = import_rtx()
    log = _Logger(trt)
    t0 = time.perf_counter()
    builder = trt.Builder(log.logger)
    network, _parser = parse_network(trt, builder, log.logger, onnx_bytes)
    inputs, outputs = network_io(network)
    config = builder.create_builder_config()
    if target is None:
        cc = trt.ComputeCapability.CURRENT
    else:
        name = "SM" + normalize_target(target)[2:]
        if not hasattr(trt.ComputeCapability, name):
            known = [m for m in dir(trt.ComputeCapability) if m.startswith("SM")]
            raise EngineBuildError(f"TensorRT-RTX {trt.__version__} cannot target {target} (knows {', '.join(known)})")
        cc = getattr(trt.ComputeCapability, name)
    config.num_compute_capabilities = 1
    config.set_compute_capability(cc, 0)
    data = _build_serialized(builder, network, config, inputs, batch, log,
                             f"TensorRT-RTX could not build for {target or 'this GPU'}")
    cc = normalize_target(target) if target else "current"
    return _engine_entry(BACKEND_RTX, cc, trt.__version__, inputs, outputs, batch, t0, data)


def engine_file(entry: dict) -> str:
    """Bundle path of an engine: engines/deform-sm86.trtrtx (one per backend and target)."""
    ext = "trtrtx" if entry["backend"] == BACKEND_RTX else "trt"
    return f"engines/deform-{entry['compute_capability']}.{ext}"


def build_rtx_engines(
    onnx_bytes: bytes,
    targets: Iterable[str] = ("sm86", "sm89"),
    batch: tuple[int, int, int] = BATCH_PROFILE,
    log: Callable[[str], None] | None = None,
) -> list[dict]:
    """TensorRT-RTX engines of the baked network for each compute capability in `targets`.

    Returns one dict per target: {file, backend: "tensorrt-rtx", compute_capability, trt_version,
    inputs, outputs (name -> shape, "batch" for the dynamic dim), profile, build_seconds, bytes
    (size), data (the engine)}. Raises EngineBuildError (not installed, parser/builder errors).
    """
    entries = []
    for target in parse_targets(targets):
        entry = build_rtx_engine(onnx_bytes, target, batch)
        entry["file"] = engine_file(entry)
        entry["bytes"] = len(entry["data"])
        if log:
            log(f"built {entry['file']} ({entry['bytes'] / 1e6:.2f} MB, TensorRT-RTX {entry['trt_version']}, "
                f"{entry['build_seconds']:.2f} s)")  # fmt: skip
        entries.append(entry)
    return entries


def manifest_entry(entry: dict) -> dict:
    """What the manifest's `engines` list records (everything but the engine bytes)."""
    return {k: v for k, v in entry.items() if k != "data"}


# ---------------------------------------------------------------- full TensorRT (plugin node)


def rasterizer_graph(deform_onnx: Any, gaussians: dict[str, np.ndarray], K: Any, width: int, height: int):
    """The deform network plus the rasteriser as one ONNX graph for full TensorRT.

    Adds inputs viewmat [B,4,4] float32 and background [B,H,W,3] uint8, the canonical Gaussians as
    initializers, and one `EmbedTalkRasterizer` node (domain "embedtalk", plugin_version "1",
    attributes fx, fy, cx, cy) with output frames [B,H,W,3] uint8. TensorRT's ONNX parser maps
    the unknown op to the registered IPluginV3 creator of that name (plugins/cuda/trt_plugin.py).
    deform_onnx: an onnx.ModelProto (e.g. build_deform_onnx's); it is copied, not changed.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.ModelProto()
    model.CopyFrom(deform_onnx)
    g = model.graph
    K = np.asarray(K, dtype=np.float64).reshape(3, 3)
    for name in ("means", "quats", "scales", "opacity_logits", "colors"):
        g.initializer.append(numpy_helper.from_array(np.ascontiguousarray(gaussians[name], np.float32), f"gaussians.{name}"))
    g.input.append(helper.make_tensor_value_info("viewmat", TensorProto.FLOAT, ["batch", 4, 4]))
    g.input.append(helper.make_tensor_value_info("background", TensorProto.UINT8, ["batch", height, width, 3]))
    g.node.append(
        helper.make_node(
            PLUGIN_OP,
            ["delta_means", "delta_opacity", "viewmat", "background",
             "gaussians.means", "gaussians.quats", "gaussians.scales", "gaussians.opacity_logits", "gaussians.colors"],
            ["frames"],
            name="rasterizer",
            domain=PLUGIN_DOMAIN,
            plugin_version=PLUGIN_VERSION,
            plugin_namespace="",
            fx=float(K[0, 0]), fy=float(K[1, 1]), cx=float(K[0, 2]), cy=float(K[1, 2]),
        )  # fmt: skip
    )
    del g.output[:]
    g.output.append(helper.make_tensor_value_info("frames", TensorProto.UINT8, ["batch", height, width, 3]))
    model.opset_import.append(helper.make_opsetid(PLUGIN_DOMAIN, 1))
    onnx.checker.check_model(model)
    return model


def import_trt():
    """Full TensorRT's module (`tensorrt`), or EngineBuildError. Its PyPI libs are download stubs
    on machines without NVIDIA's index, so an import that works but a builder that fails is
    reported the same way."""
    try:
        import tensorrt as trt
    except Exception as e:  # noqa: BLE001 - the stub packages raise at import in several ways
        raise EngineBuildError(f"full TensorRT is not installed ({type(e).__name__}: {e}); use --engine tensorrt-rtx") from None
    return trt


def build_trt_engine(model: Any, batch: tuple[int, int, int] = BATCH_PROFILE) -> dict:
    """One full-TensorRT engine of `rasterizer_graph(...)` for the GPU of this machine.

    Needs `tensorrt` and a GPU (the plugin's kernels are loaded at build time). Returns the
    manifest entry (without "file") plus "data"."""
    trt = import_trt()
    from embedtalk_sdk.plugins.cuda.trt_plugin import register_plugin

    register_plugin(trt)
    log = _Logger(trt)
    t0 = time.perf_counter()
    builder = trt.Builder(log.logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, log.logger)
    if not parser.parse(model.SerializeToString()):
        raise EngineBuildError("TensorRT's parser rejected the graph: "
                               + "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors)))  # fmt: skip
    inputs, outputs = network_io(network)
    config = builder.create_builder_config()
    config.plugins_to_serialize = []  # Python plugins are re-registered at load (register_plugin)
    data = _build_serialized(builder, network, config, inputs, batch, log, "TensorRT could not build the engine")
    from embedtalk_sdk.plugins.cuda.driver import get_device

    dev = get_device(0)
    return _engine_entry(BACKEND_TRT, dev.compute_capability, trt.__version__, inputs, outputs, batch, t0, data)


# ---------------------------------------------------------------- the exporter's entry point


def build_engines(
    kind: str,
    deform_onnx: Any,
    targets: Iterable[str] = ("sm86", "sm89"),
    gaussians: dict[str, np.ndarray] | None = None,
    K: Any = None,
    width: int = 0,
    height: int = 0,
    log: Callable[[str], None] | None = None,
) -> list[dict]:
    """Engines for `export_bundle(engine=kind)`: "tensorrt-rtx" (per target, no GPU needed) or
    "tensorrt" (one engine for this machine's GPU; targets are ignored). Entries carry "data"."""
    if kind == BACKEND_RTX:
        return build_rtx_engines(deform_onnx.SerializeToString(), targets, log=log)
    if kind == BACKEND_TRT:
        entry = build_trt_engine(rasterizer_graph(deform_onnx, gaussians, K, width, height))
        entry["file"] = engine_file(entry)
        entry["bytes"] = len(entry["data"])
        if log:
            log(f"built {entry['file']} ({entry['bytes'] / 1e6:.2f} MB, TensorRT {entry['trt_version']})")
        return [entry]
    raise ValueError(f"unknown engine kind {kind!r}: choose {BACKEND_RTX} or {BACKEND_TRT}")
