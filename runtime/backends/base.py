"""The backend contract, the shared CPU renderer, and the backend registry (no torch here).

A backend turns per-frame audio windows and AUs into Gaussian offsets (`deform`) and offsets
into a uint8 frame (`render`). `Avatar` does everything else (audio, AUs, batching, tracks).
Backends are imported lazily by `create_backend`, so a missing optional dependency (torch,
TensorRT) only matters to the backend that needs it.
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
import threading
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from embedtalk_sdk.plugins.cpu import playback
from embedtalk_sdk.runtime.aus import N_AUS
from embedtalk_sdk.runtime.bundle import Bundle, BundleError
from embedtalk_sdk.runtime.errors import EmbedTalkError
from embedtalk_sdk.runtime.stages import add_stage, stage_clock

log = logging.getLogger("embedtalk_sdk.runtime")

DEFORM_INPUTS = ("audio_window", "aus")
DEFORM_OUTPUTS = ("delta_means", "delta_opacity")


@runtime_checkable
class Backend(Protocol):
    """What `Avatar` needs from a backend. Built as `SomeBackend(bundle)`."""

    name: str

    def deform(self, audio_window: np.ndarray, aus: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """audio_window float32 [B,W,F], aus float32 [B,6] (AU intensity / 5)
        -> (delta_means float32 [B,N,3], delta_opacity float32 [B,N]).

        The returned arrays may be buffers that the next `deform` call overwrites."""
        ...

    def render(
        self,
        delta_means: np.ndarray,
        delta_opacity: np.ndarray,
        viewmat: np.ndarray,
        background: np.ndarray,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """One frame: delta_means [N,3], delta_opacity [N], viewmat [4,4] (w2c, OpenCV),
        background uint8 [H,W,3] (the torso/background track as stored) -> uint8 [H,W,3]
        (written into `out` if given).

        The backend converts the background where it uses it, by `background_to_float`'s rule."""
        ...


# ---------------------------------------------------------------- the deform graph's I/O


@dataclass(frozen=True)
class DeformIO:
    """The baked network's interface as the manifest declares it (`onnx.deform`)."""

    file: str
    window: int
    feature_dim: int
    n_gaussians: int
    inputs: dict[str, list]  # name -> shape, symbolic dims as strings
    outputs: dict[str, list]

    def batch_of(self, audio_window: np.ndarray, aus: np.ndarray) -> int:
        """The batch size B of `deform`'s inputs; ValueError unless they are [B, W, F] and [B, 6]."""
        b = int(audio_window.shape[0])
        if tuple(audio_window.shape[1:]) != (self.window, self.feature_dim):
            raise ValueError(f"audio_window has shape {audio_window.shape}, expected (B, {self.window}, {self.feature_dim})")
        if tuple(aus.shape) != (b, N_AUS):
            raise ValueError(f"aus has shape {aus.shape}, expected ({b}, {N_AUS})")
        return b

    def expected(self) -> dict[str, list]:
        """Shapes the rest of the manifest implies (None = any size, the batch)."""
        w, f, n = self.window, self.feature_dim, self.n_gaussians
        return {
            "audio_window": [None, w, f],
            "aus": [None, N_AUS],
            "delta_means": [None, n, 3],
            "delta_opacity": [None, n],
        }


def _shape(value: Any) -> list:
    return list(value["shape"] if isinstance(value, dict) else value)


def deform_io(bundle: Bundle) -> DeformIO:
    """Read and cross-check the deform graph's declared I/O against the manifest."""
    m = bundle.manifest
    try:
        spec = m["onnx"]["deform"]
        io = DeformIO(
            file=spec["file"],
            window=int(m["audio"]["window"]),
            feature_dim=int(m["audio"]["feature_dim"]),
            n_gaussians=int(m["gaussians"]["count"]),
            inputs={k: _shape(v) for k, v in spec["inputs"].items()},
            outputs={k: _shape(v) for k, v in spec["outputs"].items()},
        )
    except KeyError as e:
        raise BundleError(f"bundle {bundle.path}: manifest lacks {e} (in onnx.deform, audio or gaussians)") from None
    except (TypeError, ValueError) as e:
        raise BundleError(f"bundle {bundle.path}: malformed onnx.deform, audio or gaussians block: {e}") from None
    declared = {**io.inputs, **io.outputs}
    for name, want in io.expected().items():
        if name not in declared:
            raise BundleError(f"bundle {bundle.path}: onnx.deform declares no tensor {name!r}")
        check_shape(f"manifest onnx.deform {name}", declared[name], want, bundle)
    return io


def check_shape(what: str, got: list, want: list, bundle: Bundle) -> None:
    """Raise BundleError unless `got` matches `want` (ints must agree; None/strings match any)."""
    ok = len(got) == len(want) and all(
        not isinstance(g, int) or not isinstance(w, int) or g == w for g, w in zip(got, want)
    )
    if not ok:
        raise BundleError(f"bundle {bundle.path}: {what} has shape {got}, expected {want}")


# ---------------------------------------------------------------- rendering on the CPU


class _Warmup:
    """The CPU rasteriser loading in a daemon thread. The compiled one (plugins/cpu/playback.py) takes
    ~1 ms; numba's fallback takes ~0.7 s of a cold process (numba's import, its typing and lowering
    registries, the cached kernels): `Avatar.load` starts this first, so it overlaps the bundle's
    verification, the ONNX sessions and the track, and `CpuRenderer` waits for it at its first frame."""

    def __init__(self) -> None:
        self.plugin: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="embedtalk-cpu-warmup", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            playback.warm_up()  # compiled: nothing to do; numba's kernels: loaded from its cache
            if not playback.COMPILED:
                log.warning("CPU rasteriser: %s; frames are the same, the first one ~0.7 s later. Install a "
                            "C++ compiler (g++) and reinstall embedtalk-sdk to build it.", playback.describe())
            self.plugin = playback
        except BaseException as e:  # noqa: BLE001 - raised in the thread that renders
            self.error = e

    def result(self) -> Any:
        self.thread.join()
        if self.error is not None:
            raise self.error
        return self.plugin


_warmup: _Warmup | None = None
_warmup_lock = threading.Lock()


def warm_cpu_renderer() -> None:
    """Start loading the CPU rasteriser in the background (once per process; cheap after that)."""
    global _warmup
    with _warmup_lock:
        if _warmup is None or _warmup.error is not None:
            _warmup = _Warmup()


def _cpu_plugin():
    warm_cpu_renderer()
    assert _warmup is not None
    return _warmup.result()


class CpuRenderer:
    """The canonical Gaussians of a bundle plus the CPU rasteriser; any backend may use it.

    Holds preallocated per-Gaussian buffers, so `render` allocates only what the rasteriser
    itself allocates. Set `stages` to a dict to have `render` add its [wall, process CPU] seconds
    per stage to it ("gaussians": offsets and sigmoid; the rasteriser's "projection", "binning",
    "blending"): `embedtalk-sdk bench --profile`.
    """

    stages: dict[str, float] | None = None

    def __init__(self, bundle: Bundle) -> None:
        n = int(bundle.manifest["gaussians"]["count"])
        self.means = self._load(bundle, "means", (n, 3))
        self.quats = self._load(bundle, "quats", (n, 4))
        self.scales = self._load(bundle, "scales", (n, 3))
        self.opacity_logits = self._load(bundle, "opacity_logits", (n,))
        self.colors = self._load(bundle, "colors", (n, 3))
        self.K = np.ascontiguousarray(np.asarray(bundle.manifest["K"], dtype=np.float32).reshape(3, 3))
        self._means = np.empty_like(self.means)
        self._opacity = np.empty_like(self.opacity_logits)
        self._rasterize = None  # the plugin, once the warm-up thread has loaded it (first render)
        warm_cpu_renderer()

    @staticmethod
    def _load(bundle: Bundle, name: str, shape: tuple[int, ...]) -> np.ndarray:
        arr = bundle.array(name)
        if arr.shape != shape:
            raise BundleError(f"{bundle.path}/{name}.npy has shape {arr.shape}, expected {shape}")
        if not np.issubdtype(arr.dtype, np.floating) or not np.isfinite(arr).all():
            raise BundleError(f"{bundle.path}/{name}.npy must hold finite floats ({arr.dtype}, "
                              f"{int(np.count_nonzero(~np.isfinite(arr))) if np.issubdtype(arr.dtype, np.floating) else 'n/a'} "
                              "non-finite)")
        return np.ascontiguousarray(arr, dtype=np.float32)

    def render(
        self,
        delta_means: np.ndarray,
        delta_opacity: np.ndarray,
        viewmat: np.ndarray,
        background: np.ndarray,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """See `Backend.render`."""
        if background.dtype != np.uint8:
            raise TypeError(f"background must be uint8 [H,W,3], got {background.dtype}")
        if self._rasterize is None:
            self._rasterize = _cpu_plugin().rasterize_u8
        t0 = stage_clock(self.stages)
        np.add(self.means, delta_means, out=self._means)
        np.add(self.opacity_logits, delta_opacity, out=self._opacity)
        playback.sigmoid_(self._opacity)
        add_stage(self.stages, "gaussians", t0)
        # one pass: blend, composite over background / 255 (background_to_float's rule), round to uint8
        return self._rasterize(self._means, self.quats, self.scales, self._opacity, self.colors,
                               np.ascontiguousarray(viewmat, dtype=np.float32), self.K, background, out,
                               self.stages)


def background_to_float(background: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """uint8 [H,W,3] -> float32 [H,W,3] in [0,1]: x / 255, correctly rounded in float32.

    The one rule for the rasteriser's background (the training side reads images the same way;
    the CUDA kernel divides likewise). Not x * float32(1/255), which differs for 126 of 256 values."""
    if background.dtype != np.uint8:
        raise TypeError(f"background must be uint8 [H,W,3], got {background.dtype}")
    if out is None:
        out = np.empty(background.shape, dtype=np.float32)
    np.divide(background, np.float32(255.0), out=out, dtype=np.float32)
    return out


def to_uint8(image: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """float [H,W,3] -> uint8: clip to [0,1], scale, round half to even. `image` is clobbered."""
    if out is None:
        out = np.empty(image.shape, dtype=np.uint8)
    np.clip(image, 0.0, 1.0, out=image)
    np.multiply(image, 255.0, out=image)
    np.rint(image, out=image)
    np.copyto(out, image, casting="unsafe")
    return out


# ---------------------------------------------------------------- registry


@dataclass(frozen=True)
class _Entry:
    module: str
    cls: str
    requires: tuple[str, ...]  # import names that must be installed
    install: str  # how to get them


_REGISTRY: dict[str, _Entry] = {
    "onnxruntime": _Entry(
        "embedtalk_sdk.runtime.backends.onnxruntime", "OnnxRuntimeBackend", ("onnxruntime",), "pip install onnxruntime"
    ),
    # GPU backends (runtime/backends/tensorrt*.py, plugins/cuda/design.md); they fail fast without a GPU.
    "tensorrt-rtx": _Entry("embedtalk_sdk.runtime.backends.tensorrt_rtx", "TensorRTRTXBackend",
                           ("tensorrt_rtx_bindings", "cuda.bindings"), "pip install 'embedtalk-sdk[gpu]'"),
    "tensorrt": _Entry("embedtalk_sdk.runtime.backends.tensorrt", "TensorRTBackend",
                       ("tensorrt", "cuda.bindings"), "install TensorRT 10+ and pip install cuda-python"),
    # Any NVIDIA GPU without TensorRT: our deform kernel + rasteriser (runtime/backends/cuda.py).
    "cuda": _Entry("embedtalk_sdk.runtime.backends.cuda", "CudaBackend", ("cuda.bindings",),
                   "pip install 'embedtalk-sdk[gpu]'"),
}
# Fastest first; `auto` takes the first that loads, then the plugged-in backends in their order.
# tensorrt-rtx refuses GPUs it does not support (Hopper), which then get `cuda`.
AUTO_ORDER = ("tensorrt", "tensorrt-rtx", "cuda", "onnxruntime")
# Backends other packages provide (the training side's `torch` reference and `gsplat-torch` bench
# baseline): entry points naming a class with REQUIRES and INSTALL, so the runtime never names them.
ENTRY_POINT_GROUP = "embedtalk_sdk.backends"
_plugged_in = False


def register_backend(name: str, module: str, cls: str, requires: tuple[str, ...] = (), install: str = "") -> None:
    """Make a backend class creatable by name (it is imported only when created)."""
    _REGISTRY[name] = _Entry(module, cls, tuple(requires), install)


def _registry() -> dict[str, _Entry]:
    global _plugged_in
    if not _plugged_in:
        _plugged_in = True
        from importlib.metadata import entry_points

        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in _REGISTRY:
                continue
            try:  # the module is imported to read REQUIRES; such modules import their heavy deps lazily
                cls = ep.load()
            except Exception as e:  # noqa: BLE001 - a broken plug-in must not break the others
                log.warning("backend %s (%s) could not be imported: %s", ep.name, ep.value, e)
                continue
            register_backend(ep.name, ep.module, ep.attr, tuple(getattr(cls, "REQUIRES", ())), getattr(cls, "INSTALL", ""))
    return _REGISTRY


def _installed(module: str) -> bool:
    # find_spec, not import: probing must not import torch into a torch-free app.
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def available_backends() -> list[str]:
    """Names of registered backends whose dependencies are installed, fastest first.

    Cheap: nothing is imported. A listed backend can still fail to load (e.g. no GPU)."""
    registry = _registry()
    order = [n for n in AUTO_ORDER if n in registry] + [n for n in registry if n not in AUTO_ORDER]
    return [n for n in order if all(_installed(r) for r in registry[n].requires) and _installed(registry[n].module)]


class BackendError(EmbedTalkError, RuntimeError):
    """No backend of the requested kind could be created."""


def create_backend(name: str, bundle: Bundle) -> Backend:
    """Create backend `name` ("auto", "onnxruntime", "torch", ...) for an open bundle.

    "auto" tries the available backends fastest first and logs which one it picked (logger
    "embedtalk_sdk.runtime", INFO; failures of faster ones at WARNING).
    Raises ValueError for an unknown name, BackendError if the backend cannot run here,
    BundleError if the bundle does not fit the backend.
    """
    if name == "auto":
        return _create_auto(bundle)
    registry = _registry()
    if name not in registry:
        choices = ", ".join(["auto", *registry])
        raise ValueError(f"unknown backend {name!r}; choose one of: {choices}")
    entry = registry[name]
    missing = [r for r in entry.requires if not _installed(r)]
    if missing:
        raise BackendError(f"backend {name!r} needs {', '.join(missing)}, which is not installed: {entry.install}")
    cls = getattr(importlib.import_module(entry.module), entry.cls)
    return cls(bundle)


def _create_auto(bundle: Bundle) -> Backend:
    failures = []
    for name in available_backends():
        try:
            backend = create_backend(name, bundle)
        except BundleError:
            raise  # the bundle is wrong; another backend will not fix that
        except Exception as e:  # noqa: BLE001 - any failure means: try the next one
            log.warning("backend %s unavailable (%s: %s); trying the next", name, type(e).__name__, e)
            failures.append(f"{name}: {e}")
            continue
        log.info("backend auto -> %s", name)
        return backend
    detail = "; ".join(failures) or "none of " + ", ".join(_registry()) + " is installed"
    raise BackendError(f"no backend could run bundle {bundle.path} ({detail})")
