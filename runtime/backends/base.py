"""The backend contract: the `Backend` protocol, the deform graph's I/O spec, `BackendError`.

A backend turns per-frame audio windows and AUs into Gaussian offsets (`deform`) and offsets
into a uint8 frame (`render`). `Avatar` does everything else (audio, AUs, batching, tracks).
Backends are created by name through runtime/backends/registry.py, which imports them lazily, so a
missing optional dependency (torch, TensorRT) only matters to the backend that needs it. The CPU
renderer any backend may use is runtime/backends/cpu.py; the pixel rules are runtime/pixels.py.
(No torch here.)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from embedtalk_sdk.runtime.aus import N_AUS
from embedtalk_sdk.runtime.bundle import Bundle, BundleError
from embedtalk_sdk.runtime.errors import EmbedTalkError

DEFORM_INPUTS = ("audio_window", "aus")
DEFORM_OUTPUTS = ("delta_means", "delta_opacity")
# Frames per `deform` call unless the caller says otherwise: Avatar's batch, the onnxruntime
# backend's preallocated buffers, the TensorRT engines' optimum batch, the server's cost probe.
DEFAULT_BATCH = 8


@runtime_checkable
class Backend(Protocol):
    """What `Avatar` needs from a backend. Built as `SomeBackend(bundle, **options)`; raises
    `BackendError` when it cannot run here (no GPU, a library missing), `BundleError` when the
    bundle does not fit it."""

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

        The backend converts the background where it uses it, by `background_to_float`'s rule.

        Optional: a backend with a `render_workers` attribute > 1 takes `render(..., out=,
        threads=1)` from that many threads at once, and `speak` / `frames` then render frames
        side by side (runtime/frame_pipeline.py)."""
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


class BackendError(EmbedTalkError, RuntimeError):
    """No backend of the requested kind could be created."""
