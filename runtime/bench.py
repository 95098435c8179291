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

from embedtalk_sdk.plugins.cpu import playback
from embedtalk_sdk.runtime.audio.speech import synthesize_speech
from embedtalk_sdk.runtime.bundle import bundle_megabytes, bundle_parts, format_parts
from embedtalk_sdk.runtime.fileio import atomic_path
from embedtalk_sdk.runtime.backends.registry import available_backends

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


# The per-frame stages `profile_backend` reports, in pipeline order (the backend's own timers:
# OnnxRuntimeBackend.stages / CpuRenderer.stages).
STAGES = ("network", "gaussians", "projection", "binning", "blending")
STAGE_NAMES = {
    "audio features": "audio features (the bundle's encoder; the whole clip, timed apart)",
    "network": "network (batches of 8: frame vectors + compiled decode, or deform.onnx in onnxruntime)",
    "gaussians": "offsets + sigmoid",
    "projection": "projection + culling",
    "binning": "depth sort + tile binning",
    "blending": "blending + compositing over the track + uint8",
    "other": "frame loop (the audio features as they stream, windows, AUs, track lookup, copies)",
}


def profile_backend(bundle: str | Path, backend: str = "onnxruntime", n_frames: int = 200, warmup: int = 16) -> dict:
    """Where a frame's time goes: per stage (STAGES, the frame loop's time outside the backend,
    and the clip's audio features) ms of wall time and of CPU time (all of this process's threads:
    core-ms, which other work on a busy machine disturbs less) per frame; and the torso track's
    decoding (once per load, in a worker thread), ms per track image. Needs a backend with stage
    timers (`stages`: the CPU backend)."""
    from embedtalk_sdk.runtime.avatar import Avatar
    from embedtalk_sdk.runtime.track import VideoTrack

    avatar = Avatar.load(bundle, backend=backend)
    if not hasattr(avatar.backend, "stages"):
        raise ValueError(f"backend {avatar.backend_name!r} has no stage timers; profile the CPU backend (onnxruntime)")
    audio = synthesize_speech((n_frames + warmup) / avatar.fps + 0.1, seed=7).samples
    clock = (time.perf_counter(), time.process_time())
    avatar.audio_features(audio, 16000)
    features = (time.perf_counter() - clock[0], time.process_time() - clock[1])
    # Timers on before the clip starts: the frames then render one at a time (Avatar._pipeline),
    # as the stages are per frame. The warm-up's times go to a dict that is dropped.
    avatar.backend.stages = {}
    frames = avatar.frames(audio, sample_rate=16000)
    for n, _ in enumerate(frames):  # compile, allocate, fill the track cache
        if n + 1 == warmup:
            break
    stages: dict[str, list[float]] = {}
    avatar.backend.stages = stages
    clock = (time.perf_counter(), time.process_time())
    done = sum(1 for _ in frames)
    loop = (time.perf_counter() - clock[0], time.process_time() - clock[1])
    avatar.backend.stages = None
    rows = {k: [v * 1e3 / done for v in stages.get(k, (0.0, 0.0))] for k in STAGES}
    rows["other"] = [max(0.0, loop[i] * 1e3 / done - sum(r[i] for r in rows.values())) for i in (0, 1)]
    rows = {"audio features": [v * 1e3 / avatar.n_frames(audio.shape[0]) for v in features], **rows}
    entry = avatar.bundle.manifest["tracks"]["torso"]
    kb = int(avatar.bundle.manifest["tracks"]["torso_frames"])
    decode_ms = 0.0
    if entry["codec"] == "h264":
        t0 = time.perf_counter()
        VideoTrack(avatar.bundle.bytes_of(entry["file"]), entry["file"], kb, avatar.height, avatar.width).wait()
        decode_ms = (time.perf_counter() - t0) * 1e3 / kb
    return {
        "bundle": str(bundle), "backend": avatar.backend_name,
        "rasteriser": playback.describe() if avatar.backend_name == "onnxruntime" else "the backend's",
        "network": getattr(avatar.backend, "decode", "the backend's"),
        "width": avatar.width, "height": avatar.height,
        "gaussians": int(avatar.bundle.manifest["gaussians"]["count"]), "frames": done,
        "fps": round(done / loop[0], 2), "ms_per_frame": round(loop[0] * 1e3 / done, 2),
        "cpu_ms_per_frame": round(loop[1] * 1e3 / done, 2),
        "stages_ms": {k: round(v[0], 3) for k, v in rows.items()},
        "stages_cpu_ms": {k: round(v[1], 3) for k, v in rows.items()},
        "track": {"codec": entry["codec"], "images": kb, "decode_ms_per_image": round(decode_ms, 3)},
    }


def format_profile(report: dict) -> str:
    """A profile as a markdown table: per stage ms per frame (wall, and CPU over all threads)."""
    wall, cpu = report["ms_per_frame"], report["cpu_ms_per_frame"]
    lines = [f"{report['bundle']}: {report['width']}x{report['height']}, {report['gaussians']} Gaussians, "
             f"{report['backend']} ({report['network']} decode, {report['rasteriser']} rasteriser), "
             f"{report['frames']} frames: "
             f"{report['fps']} fps, {wall} ms/frame "
             f"({cpu} CPU ms/frame)", "", "| stage | wall ms / frame | share | CPU ms / frame |", "|---|---|---|---|"]
    for k, v in report["stages_ms"].items():
        share = "(also in the loop)" if k == "audio features" else f"{100 * v / wall:.0f}%"
        lines.append(f"| {STAGE_NAMES[k]} | {v:.2f} | {share} | {report['stages_cpu_ms'][k]:.2f} |")
    t = report["track"]
    lines.append(f"| torso track decoding ({t['codec']}, {t['images']} images; once per load, worker thread) | "
                 f"{t['decode_ms_per_image']:.2f} per image | - | - |")
    return "\n".join(lines)


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
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp)
    plt.close(fig)


def write_report(report: dict, out_dir: str | Path) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "bench.json") as tmp:
        tmp.write_text(json.dumps(report, indent=2))
    save_chart(report, out_dir / "bench.png")
    return out_dir / "bench.json"
