"""The backend registry: a name -> the backend class, imported only when created; and `auto`'s pick.

The runtime's own backends are listed here. Other packages plug theirs in through entry points
(group `ENTRY_POINT_GROUP`) naming a class with `REQUIRES` (import names it needs), `INSTALL` (how
to get them) and `AUTO_PICK` (whether `auto` may choose it; False unless it says so), so the
runtime never names them. A backend's options are its constructor's keyword parameters after the
bundle (`create_backend(name, bundle, {"device": 1})`).
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import logging
from dataclasses import dataclass
from typing import Any, Mapping

from embedtalk_sdk.runtime.backends.base import Backend, BackendError
from embedtalk_sdk.runtime.bundle import Bundle, BundleError

log = logging.getLogger("embedtalk_sdk.runtime")


@dataclass(frozen=True)
class _Entry:
    module: str
    cls: str
    requires: tuple[str, ...]  # import names that must be installed
    install: str  # how to get them
    auto_pick: bool  # whether `auto` may choose it


_REGISTRY: dict[str, _Entry] = {
    "onnxruntime": _Entry("embedtalk_sdk.runtime.backends.onnxruntime", "OnnxRuntimeBackend", ("onnxruntime",),
                          "pip install onnxruntime", auto_pick=True),
    # GPU backends (runtime/backends/tensorrt*.py, plugins/cuda/design.md); they fail fast without a GPU.
    "tensorrt-rtx": _Entry("embedtalk_sdk.runtime.backends.tensorrt_rtx", "TensorRTRTXBackend",
                           ("tensorrt_rtx_bindings", "cuda.bindings"), "pip install 'embedtalk-sdk[gpu]'",
                           auto_pick=True),
    "tensorrt": _Entry("embedtalk_sdk.runtime.backends.tensorrt", "TensorRTBackend",
                       ("tensorrt", "cuda.bindings"), "install TensorRT 10+ and pip install cuda-python",
                       auto_pick=True),
    # Any NVIDIA GPU without TensorRT: our deform kernel + rasteriser (runtime/backends/cuda.py).
    "cuda": _Entry("embedtalk_sdk.runtime.backends.cuda", "CudaBackend", ("cuda.bindings",),
                   "pip install 'embedtalk-sdk[gpu]'", auto_pick=True),
}
# Fastest first; `auto` takes the first that loads, then the plugged-in backends that allow it, in
# their order. tensorrt-rtx refuses GPUs it does not support (Hopper), which then get `cuda`.
AUTO_ORDER = ("tensorrt", "tensorrt-rtx", "cuda", "onnxruntime")
# Backends other packages provide (the training side's `torch` reference and `gsplat-torch` bench
# baseline), declared as entry points of this group.
ENTRY_POINT_GROUP = "embedtalk_sdk.backends"
_plugged_in = False


def register_backend(name: str, module: str, cls: str, requires: tuple[str, ...] = (), install: str = "",
                     auto_pick: bool = False) -> None:
    """Make a backend class creatable by name (it is imported only when created); `auto` considers
    it, after the built-in backends, only with `auto_pick`."""
    _REGISTRY[name] = _Entry(module, cls, tuple(requires), install, bool(auto_pick))


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
            register_backend(ep.name, ep.module, ep.attr, tuple(getattr(cls, "REQUIRES", ())),
                             getattr(cls, "INSTALL", ""), getattr(cls, "AUTO_PICK", False) is True)
    return _REGISTRY


def _installed(module: str) -> bool:
    # find_spec, not import: probing must not import torch into a torch-free app.
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _usable(entry: _Entry) -> bool:
    return all(_installed(r) for r in entry.requires) and _installed(entry.module)


def available_backends() -> list[str]:
    """Names of registered backends whose dependencies are installed: `auto`'s candidates in its
    order, then the others (bench baselines) in registration order.

    Cheap: nothing is imported. A listed backend can still fail to load (e.g. no GPU)."""
    registry = _registry()
    auto = auto_backends()
    return auto + [n for n, e in registry.items() if n not in auto and _usable(e)]


def auto_backends() -> list[str]:
    """The installed backends `auto` may pick, in the order it tries them (nothing is imported)."""
    registry = _registry()
    order = [n for n in AUTO_ORDER if n in registry] + [n for n in registry if n not in AUTO_ORDER]
    return [n for n in order if registry[n].auto_pick and _usable(registry[n])]


def _backend_class(name: str) -> type:
    """Import backend `name`'s class; ValueError if unknown, BackendError if not installed."""
    registry = _registry()
    if name not in registry:
        choices = ", ".join(["auto", *registry])
        raise ValueError(f"unknown backend {name!r}; choose one of: {choices}")
    entry = registry[name]
    missing = [r for r in entry.requires if not _installed(r)]
    if missing:
        raise BackendError(f"backend {name!r} needs {', '.join(missing)}, which is not installed: {entry.install}")
    return getattr(importlib.import_module(entry.module), entry.cls)


def backend_options(cls: type) -> list[str]:
    """The options a backend class takes: its constructor's keyword parameters after the bundle."""
    params = list(inspect.signature(cls).parameters.values())[1:]
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in params if p.kind in kinds]


def _describe_options(name: str, accepted: list[str]) -> str:
    return f"{name} ({', '.join(accepted) or 'no options'})"


def create_backend(name: str, bundle: Bundle, options: Mapping[str, Any] | None = None) -> Backend:
    """Create backend `name` ("auto", "onnxruntime", "torch", ...) for an open bundle.

    options: keyword arguments for the backend's constructor, e.g. {"device": 1} (GPU backends) or
        {"threads": 4} (onnxruntime). With "auto", only backends that take every given option are
        tried (a GPU ordinal rules out the CPU backend).
    "auto" tries the backends that allow it fastest first and logs which one it picked (logger
    "embedtalk_sdk.runtime", INFO; failures of faster ones at WARNING).
    Raises ValueError for an unknown name or an option the backend does not take (naming the ones it
    does), BackendError if the backend cannot run here, BundleError if the bundle does not fit it.
    """
    options = dict(options or {})
    if name == "auto":
        return _create_auto(bundle, options)
    cls = _backend_class(name)
    accepted = backend_options(cls)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"backend {name!r} takes no option {', '.join(unknown)}; "
                         f"it takes: {', '.join(accepted) or 'none'}")
    return cls(bundle, **options)


def _create_auto(bundle: Bundle, options: dict[str, Any]) -> Backend:
    failures, refused = [], []
    for name in auto_backends():
        try:
            cls = _backend_class(name)
            accepted = backend_options(cls)
            if not set(options) <= set(accepted):
                refused.append(_describe_options(name, accepted))
                log.info("backend %s skipped: it takes none of %s", name, ", ".join(sorted(set(options) - set(accepted))))
                continue
            backend = cls(bundle, **options)
        except BundleError:
            raise  # the bundle is wrong; another backend will not fix that
        except Exception as e:  # noqa: BLE001 - any failure means: try the next one
            log.warning("backend %s unavailable (%s: %s); trying the next", name, type(e).__name__, e)
            failures.append(f"{name}: {e}")
            continue
        log.info("backend auto -> %s", name)
        return backend
    if refused and not failures:
        raise ValueError(f"no backend auto may pick takes the options {', '.join(sorted(options))}; "
                         f"they take: {'; '.join(refused)}")
    detail = "; ".join(failures) or "no backend auto may pick is installed"
    if refused:
        detail += f"; skipped, taking other options: {'; '.join(refused)}"
    raise BackendError(f"no backend could run bundle {bundle.path} ({detail})")
