"""`CpuRenderer`: a bundle's canonical Gaussians drawn by the CPU rasteriser (plugins/cpu), for any
backend whose network runs elsewhere; and the warm-up that loads the rasteriser in the background.
"""
from __future__ import annotations

import logging
import threading
from typing import Any

import numpy as np

from embedtalk_sdk.plugins.cpu import playback
from embedtalk_sdk.runtime.bundle import Bundle, BundleError
from embedtalk_sdk.runtime.stages import add_stage, stage_clock

log = logging.getLogger("embedtalk_sdk.runtime")


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
        self._scratch = threading.local()  # per rendering thread: the offset means and opacities
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

    @property
    def render_workers(self) -> int:
        """Frames `render` draws well side by side, each called from its own thread with threads=1
        (runtime/frame_pipeline.py): the compiled rasteriser's threads, 1 with numba's kernels."""
        return _cpu_plugin().parallel_frames()

    def render(
        self,
        delta_means: np.ndarray,
        delta_opacity: np.ndarray,
        viewmat: np.ndarray,
        background: np.ndarray,
        out: np.ndarray | None = None,
        threads: int = 0,
    ) -> np.ndarray:
        """See `Backend.render`. Safe to call from several threads at once (each with its own `out`).
        threads > 0: the rasteriser's threads for this thread's frames (`playback.rasterize_u8`)."""
        if background.dtype != np.uint8:
            raise TypeError(f"background must be uint8 [H,W,3], got {background.dtype}")
        if self._rasterize is None:
            self._rasterize = _cpu_plugin().rasterize_u8
        scratch = self._scratch
        if not hasattr(scratch, "means"):
            scratch.means, scratch.opacity = np.empty_like(self.means), np.empty_like(self.opacity_logits)
        t0 = stage_clock(self.stages)
        np.add(self.means, delta_means, out=scratch.means)
        np.add(self.opacity_logits, delta_opacity, out=scratch.opacity)
        playback.sigmoid_(scratch.opacity)
        add_stage(self.stages, "gaussians", t0)
        # one pass: blend, composite over background / 255 (background_to_float's rule), round to uint8
        return self._rasterize(scratch.means, self.quats, self.scales, scratch.opacity, self.colors,
                               np.ascontiguousarray(viewmat, dtype=np.float32), self.K, background, out,
                               self.stages, threads)
