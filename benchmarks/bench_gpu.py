"""Backend-level GPU timing: network + rasteriser + frame, per backend, in one run, as ratios.

    python benchmarks/bench_gpu.py AVATAR.etk [--backends cuda,tensorrt-rtx,gsplat-torch,torch]
                                   [--frames 400] [-o gpu_bench.json]

`embedtalk-sdk bench` times Avatar end to end (audio features, AUs, tracks, Python per frame);
this times what the GPU backends do: `deform` on batches of 8 frames and `render` of each frame
(uint8 frame back on the host), and `render_device` (frame left on the GPU) where a backend has
it. Inputs are fixed random audio windows and AUs, the bundle's viewmats and torso track, so every
backend draws the same frames. GPU memory is the device's used memory after the backend is made
and has drawn, minus before (cuMemGetInfo). The ratio is against gsplat-torch when it runs, else
the torch or onnxruntime backend, timed in the same process. Each backend and mode stops after
`--max-seconds` with the frames it has.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from embedtalk_sdk.runtime.backends.registry import create_backend
from embedtalk_sdk.runtime.bundle import Bundle
from embedtalk_sdk.runtime.track import open_track

BATCH = 8
BASELINES = ("gsplat-torch", "torch", "onnxruntime")


def device_used_mb() -> float | None:
    """Used memory of GPU 0 in MB (whole device), or None without cuda-python / a GPU."""
    try:
        from embedtalk_sdk.plugins.cuda.driver import check, driver_api, get_device

        get_device(0)
        free, total = check(driver_api().cuMemGetInfo())
        return (int(total) - int(free)) / 2**20
    except Exception:  # noqa: BLE001 - no GPU: no memory figure
        return None


def inputs(bundle: Bundle, seed: int = 0) -> dict:
    m = bundle.manifest
    rng = np.random.default_rng(seed)
    w, f = int(m["audio"]["window"]), int(m["audio"]["feature_dim"])
    kb = int(m["tracks"]["torso_frames"])
    track = open_track(bundle, m["tracks"]["torso"], kb, int(m["height"]), int(m["width"]))
    torso = np.stack([track.frame(i) for i in range(min(kb, BATCH))])
    return {
        "windows": rng.normal(0, 1, (BATCH, w, f)).astype(np.float32),
        "aus": rng.uniform(0, 1, (BATCH, 6)).astype(np.float32),
        "viewmats": np.asarray(bundle.array("viewmats"), np.float32),
        "torso": np.ascontiguousarray(torso, np.uint8),
    }


def time_backend(path: Path, name: str, frames: int, warmup: int = 16, max_seconds: float = 20.0) -> dict:
    bundle = Bundle.open(path)
    data = inputs(bundle)
    before = device_used_mb()
    t0 = time.perf_counter()
    backend = create_backend(name, bundle)
    load_ms = (time.perf_counter() - t0) * 1e3
    n_views, n_torso = len(data["viewmats"]), len(data["torso"])
    out = np.empty(data["torso"].shape[1:], np.uint8)

    def one_batch(render) -> list[float]:
        lat = []
        t = time.perf_counter()
        dm, do = backend.deform(data["windows"], data["aus"])
        for i in range(BATCH):
            render(dm[i], do[i], data["viewmats"][i % n_views], data["torso"][i % n_torso])
            now = time.perf_counter()
            lat.append(now - t)  # the first frame of a batch carries the network
            t = now
        return lat

    def run(render, count: int) -> np.ndarray:
        for _ in range(max(warmup // BATCH, 1)):
            one_batch(render)
        lat: list[float] = []
        deadline = time.perf_counter() + max_seconds
        while len(lat) < count and time.perf_counter() < deadline:
            lat += one_batch(render)
        return np.asarray(lat)

    result = {"backend": name, "load_ms": round(load_ms, 1)}
    lat = run(lambda *a: backend.render(*a, out=out), frames)
    result.update(frames=len(lat), fps=round(len(lat) / lat.sum(), 1), latency_ms_p50=round(float(np.percentile(lat, 50)) * 1e3, 3),
                  latency_ms_p99=round(float(np.percentile(lat, 99)) * 1e3, 3))  # fmt: skip
    if hasattr(backend, "render_device"):
        lat_dev = run(backend.render_device, frames)
        result["fps_frame_on_gpu"] = round(len(lat_dev) / lat_dev.sum(), 1)
    after = device_used_mb()
    if before is not None and after is not None:
        result["gpu_memory_mb"] = round(after - before, 1)
    result["checksum"] = int(out.astype(np.int64).sum())  # same inputs: close sums across backends
    if hasattr(backend, "close"):
        backend.close()
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle", type=Path)
    p.add_argument("--backends", default="cuda,tensorrt-rtx,gsplat-torch,onnxruntime")
    p.add_argument("--frames", type=int, default=400)
    p.add_argument("--max-seconds", type=float, default=20.0, help="per backend and mode")
    p.add_argument("-o", "--out", type=Path, default=None)
    args = p.parse_args()
    m = Bundle.open(args.bundle).manifest
    report = {"bundle": str(args.bundle), "gaussians": m["gaussians"]["count"], "width": m["width"],
              "height": m["height"], "results": []}  # fmt: skip
    for name in [b.strip() for b in args.backends.split(",") if b.strip()]:
        print(f"timing {name} ...", flush=True)
        try:
            r = time_backend(args.bundle, name, args.frames, max_seconds=args.max_seconds)
        except Exception as e:  # noqa: BLE001 - report and go on
            r = {"backend": name, "error": f"{type(e).__name__}: {e}"}
        print(json.dumps(r), flush=True)
        report["results"].append(r)
    base = next((r for b in BASELINES for r in report["results"] if r["backend"] == b and "fps" in r), None)
    if base:
        report["baseline"] = base["backend"]
        for r in report["results"]:
            if "fps" in r:
                r["speedup_vs_baseline"] = round(r["fps"] / base["fps"], 2)
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
