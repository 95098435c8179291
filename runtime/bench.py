"""`embedtalk-sdk bench`: frames per second and latency per backend, measured in one run.

Speed goals are ratios against a baseline timed in the same process (the torch backend: the
training-side model and reference rasteriser; onnxruntime where torch is not installed), never
absolute numbers in tests.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import numpy as np

from embedtalk_sdk.runtime.audio.speech import synthesize_speech
from embedtalk_sdk.runtime.bundle import bundle_megabytes, bundle_parts, format_parts
from embedtalk_sdk.runtime.backends.base import available_backends

BASELINES = ("torch", "onnxruntime")  # the first one installed


def time_backend(bundle: str | Path, backend: str, n_frames: int, warmup: int = 3, max_seconds: float = 30.0) -> dict:
    """Time `n_frames` frames of `backend` on a synthetic sentence; per-frame latency of the
    frame generator (network + rasteriser + uint8), after `warmup` frames (JIT, allocations).
    Also `load_ms` (Avatar.load) and `first_frame_ms` (load to the first frame; in a process that
    already ran another backend, JIT caches are warm). A backend still timing after `max_seconds`
    stops there with the frames it has (`frames` says how many; the slow reference backends on a
    large avatar), timed from the warm-up frames if it got no further."""
    from embedtalk_sdk.runtime.avatar import Avatar

    t_start = time.perf_counter()
    avatar = Avatar.load(bundle, backend=backend)
    t_loaded = time.perf_counter()
    seconds = (n_frames + warmup) / avatar.fps + 0.5
    audio = synthesize_speech(seconds, seed=7).samples
    latencies, warm = [], []
    gen = avatar.frames(audio, sample_rate=16000)
    t_prev = first = time.perf_counter()
    deadline = t_loaded + max_seconds
    for n, _ in enumerate(gen):
        now = time.perf_counter()
        if n == 0:
            first = now
        (latencies if n >= warmup else warm).append(now - t_prev)
        t_prev = now
        if len(latencies) >= n_frames or now > deadline:
            break
    lat = np.asarray(latencies or warm[1:] or warm)
    return {
        "backend": backend,
        "frames": len(lat),
        "fps": round(float(len(lat) / lat.sum()), 2),
        "latency_ms_p50": round(float(np.percentile(lat, 50) * 1e3), 2),
        "latency_ms_p99": round(float(np.percentile(lat, 99) * 1e3), 2),
        "load_ms": round((t_loaded - t_start) * 1e3, 1),
        "first_frame_ms": round((first - t_start) * 1e3, 1),
    }


def run_bench(bundle: str | Path, backend: str = "all", n_frames: int = 50, log: Callable[[str], None] = print,
              max_seconds: float = 30.0) -> dict:  # fmt: skip
    """Report {bundle, size, baseline, results: [... speedup_vs_baseline]} for one or all backends."""
    from embedtalk_sdk.runtime.bundle import Bundle

    installed = available_backends()
    baseline = next((b for b in BASELINES if b in installed), None)
    names = list(installed) if backend == "all" else [backend]
    if baseline and baseline not in names:
        names.append(baseline)
    manifest = Bundle.open(bundle).manifest
    parts = bundle_parts(manifest)
    log(f"{bundle}: {bundle_megabytes(bundle):.2f} MB ({format_parts(parts)})")
    results = []
    for name in names:
        log(f"timing {name} ...")
        try:
            results.append(time_backend(bundle, name, n_frames, max_seconds=max_seconds))
        except Exception as e:  # noqa: BLE001 - a backend that cannot run here is reported, not fatal
            results.append({"backend": name, "error": f"{type(e).__name__}: {e}"})
    base = next((r for r in results if r["backend"] == baseline and "fps" in r), None)
    for r in results:
        if base and "fps" in r:
            r["speedup_vs_baseline"] = round(r["fps"] / base["fps"], 2)
    return {
        "bundle": str(bundle),
        "bundle_mb": round(bundle_megabytes(bundle), 3),
        "bundle_parts_bytes": parts,
        "width": manifest["width"],
        "height": manifest["height"],
        "gaussians": manifest["gaussians"]["count"],
        "baseline": baseline,
        "results": results,
    }


def save_chart(report: dict, path: str | Path) -> None:
    """Bar chart of frames per second per backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["results"] if "fps" in r]
    fig, ax = plt.subplots(figsize=(5, 3), dpi=110)
    ax.bar([r["backend"] for r in rows], [r["fps"] for r in rows], color="#4477aa")
    ax.axhline(25, ls="--", c="grey", lw=1, label="25 fps (real time)")
    ax.set_ylabel("frames / s")
    ax.set_title(f"{report['width']}x{report['height']}, {report['gaussians']} Gaussians")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(report: dict, out_dir: str | Path) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench.json").write_text(json.dumps(report, indent=2))
    save_chart(report, out_dir / "bench.png")
    return out_dir / "bench.json"
