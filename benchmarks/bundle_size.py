"""Small bundles (issue 11): what the torso-track codec and the table precision cost and save.

    python benchmarks/bundle_size.py RUN/ckpt.pt DATA -o OUT [--frames 200]

On a trained checkpoint and its dataset, in one run:
1. the torso track (the first 250 training frames, as export ships it) through H.264 4:4:4 at
   several quality factors: MB, PSNR and max error against the raw images, decode frames/s;
2. the per-Gaussian table as fp32, fp16, or z (fp16) + W_z baked at load in numpy: MB, load cost,
   onnxruntime session time, deform time per batch of 8;
3. the bundle as shipped (H.264 crf 10 + fp16 table) against the raw one (raw frames + fp32, the
   format-1 contents): size by part; Avatar.load + first frame in a fresh process (median of 3);
   CPU playback fps of the first clip after load (the track decoding beside it) and of later
   clips, raw and small alternated three times; PSNR against the ground truth on the
   validation split (dataset cameras and torso images: the table's effect) and on the track's own
   frames (training frames 0..K-1 rendered through speak's path, with the bundle's track: the
   codec's effect); mean abs difference between the two bundles' renders.
Writes OUT/bundle_size.json and prints the tables.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from embedtalk_sdk.data.dataset import TalkingDataset
from embedtalk_sdk.export.exporter import bake, export_bundle, tracks
from embedtalk_sdk.export.onnx_graph import build_deform_onnx
from embedtalk_sdk.functional.encoding import positional_encoding
from embedtalk_sdk.metrics import psnr
from embedtalk_sdk.model.checkpoint import Checkpoint
from embedtalk_sdk.runtime.audio.mel import frame_windows
from embedtalk_sdk.runtime.avatar import Avatar
from embedtalk_sdk.runtime.audio.speech import synthesize_speech
from embedtalk_sdk.runtime.bundle import Bundle, bundle_megabytes, bundle_parts
from embedtalk_sdk.runtime.track import VideoTrack, encode_track

CRFS = (4, 6, 8, 10, 12, 14, 18)
LOAD_SNIPPET = """
import sys, time
import numpy as np
if sys.argv[2] == "jit-started":  # numba's own start-up (import + typing registries), paid once per process
    import numba
    numba.njit(lambda x: x + 1)(1)
t0 = time.perf_counter()
from embedtalk_sdk.runtime.avatar import Avatar
t1 = time.perf_counter()
avatar = Avatar.load(sys.argv[1], backend="onnxruntime")
t2 = time.perf_counter()
next(avatar.frames(np.zeros(1600, np.float32), sample_rate=16000))
t3 = time.perf_counter()
print((t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t1) * 1e3)
"""


def track_sweep(images: np.ndarray, fps: float) -> list[dict]:
    rows = []
    for crf in CRFS:
        t = time.perf_counter()
        data = encode_track(images, crf=crf, fps=fps)
        encode_s = time.perf_counter() - t
        t = time.perf_counter()
        decoded = VideoTrack(data, f"crf{crf}", len(images), *images.shape[1:3]).wait()
        decode_fps = len(images) / (time.perf_counter() - t)
        diff = decoded.astype(np.int16) - images
        mse = float(np.mean(diff.astype(np.float64) ** 2))
        rows.append({"crf": crf, "mb": round(len(data) / 1e6, 3), "psnr_db": round(10 * np.log10(255**2 / mse), 2),
                     "mean_abs": round(float(np.abs(diff).mean()), 3), "max_abs": int(np.abs(diff).max()),
                     "encode_s": round(encode_s, 2), "decode_fps": round(decode_fps, 1)})
        print(f"  crf {crf}: {rows[-1]}", flush=True)
    return rows


def numpy_encoding(x: np.ndarray, n_freqs: int) -> np.ndarray:
    """gamma(x) in numpy, laid out as embedtalk_sdk.functional.encoding (checked against it)."""
    scaled = x[:, None, :] * (np.pi * 2.0 ** np.arange(n_freqs, dtype=np.float32))[None, :, None]
    sincos = np.stack([np.sin(scaled), np.cos(scaled)], axis=2).reshape(len(x), -1)
    return np.concatenate([x, sincos], axis=1)


def table_variants(ckpt: Checkpoint) -> list[dict]:
    import onnxruntime as ort
    import torch

    baked = bake(ckpt)
    net = baked.net
    rows = []
    rng = np.random.default_rng(0)
    windows = rng.standard_normal((8, net.cfg.window, net.cfg.feature_dim)).astype(np.float32)
    aus = rng.uniform(0, 0.6, (8, 6)).astype(np.float32)
    for dtype in ("float32", "float16"):
        model = build_deform_onnx(baked, dtype).SerializeToString()
        t = time.perf_counter()
        sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        session_s = time.perf_counter() - t
        sess.run(None, {"audio_window": windows, "aus": aus})
        t = time.perf_counter()
        for _ in range(10):
            sess.run(None, {"audio_window": windows, "aus": aus})
        rows.append({"table": dtype, "deform_onnx_mb": round(len(model) / 1e6, 3), "bake_at_load_ms": 0.0,
                     "session_ms": round(session_s * 1e3, 1), "deform_batch8_ms": round((time.perf_counter() - t) * 100, 2)})
    # z (fp16) + W_z: the file would hold z [N, embed_dim] fp16 + the small W_z; load bakes the table.
    z = ckpt.gaussians.embeddings.detach().numpy().astype(np.float16)
    w = net.embed_proj.weight.detach().numpy()
    b = net.embed_proj.bias.detach().numpy() if net.embed_proj.bias is not None else 0.0
    t = time.perf_counter()
    table = numpy_encoding(z.astype(np.float32), net.cfg.embed_freqs) @ w.T + b
    bake_ms = (time.perf_counter() - t) * 1e3
    want = positional_encoding(torch.as_tensor(z.astype(np.float32)), net.cfg.embed_freqs).numpy()
    assert np.allclose(numpy_encoding(z.astype(np.float32), net.cfg.embed_freqs), want, atol=1e-5)
    fp32_mb = rows[0]["deform_onnx_mb"] - baked.table.numel() * 4 / 1e6
    rows.append({"table": "z fp16 + W_z", "deform_onnx_mb": round(fp32_mb + z.nbytes / 1e6 + w.nbytes / 1e6, 3),
                 "bake_at_load_ms": round(bake_ms, 1), "session_ms": rows[0]["session_ms"],
                 "deform_batch8_ms": rows[0]["deform_batch8_ms"],
                 "note": f"table max |diff| vs the fp32 bake {float(np.abs(table - baked.table.numpy()).max()):.2e}"})
    return rows


def load_times(bundle: Path, runs: int = 5) -> dict:
    """Medians over fresh processes: cold (numba starting up inside Avatar.load and the first frame, as
    in an app's first avatar) and with numba already started (what the bundle itself costs)."""
    report = {}
    for mode in ("cold", "jit-started"):
        out = []
        for _ in range(runs):
            res = subprocess.run([sys.executable, "-c", LOAD_SNIPPET, str(bundle), mode], capture_output=True,
                                 text=True, check=True)  # fmt: skip
            out.append([float(x) for x in res.stdout.split()])
        imp, load, first = (statistics.median(v) for v in zip(*out))
        report[mode] = {"import_ms": round(imp, 1), "load_ms": round(load, 1), "load_and_first_frame_ms": round(first, 1)}
    return report


def playback_fps(bundle: Path, n_frames: int) -> tuple[float, float]:
    """speak's frames/s on a freshly loaded avatar (the track still decoding beside it), then on the
    same avatar again (the track decoded)."""
    avatar = Avatar.load(bundle, backend="onnxruntime")
    audio = synthesize_speech(n_frames / avatar.fps, seed=7).samples
    out = []
    for _ in range(2):
        t = time.perf_counter()
        frames = avatar.speak(audio, sample_rate=16000)
        out.append(round(len(frames) / (time.perf_counter() - t), 2))
    return out[0], out[1]


def val_renders(bundle: Path, data: Path) -> tuple[np.ndarray, float]:
    avatar = Avatar.load(bundle, backend="onnxruntime")
    ds = TalkingDataset(data, "val")
    windows = avatar.feature_windows(avatar.audio_features(ds.audio_path), ds.aud_ids)
    frames = np.stack(list(avatar.render_frames(windows, ds.aus, ds.viewmats, [ds.torso_bg(i) for i in range(len(ds))])))
    gt = np.stack([ds.image(i) for i in range(len(ds))])
    return frames, float(np.mean([psnr(f / 255.0, g) for f, g in zip(frames, gt)]))


def track_renders(bundle: Path, data: Path) -> tuple[np.ndarray, float]:
    """Training frames 0..K-1 through speak's path: the dataset's audio and AUs, the bundle's track."""
    avatar = Avatar.load(bundle, backend="onnxruntime")
    ds = TalkingDataset(data, "train")
    k = int(avatar.bundle.manifest["tracks"]["frames"])
    feats = avatar.audio_features(ds.audio_path)
    windows = frame_windows(feats, int(ds.aud_ids[:k].max()) + 1, avatar.fps, 50.0, avatar.bundle.manifest["audio"]["window"])
    views, backgrounds = avatar.track(k)
    frames = np.stack(list(avatar.render_frames(windows[ds.aud_ids[:k]], ds.aus[:k], views, backgrounds)))
    gt = np.stack([ds.image(i) for i in range(k)])
    return frames, float(np.mean([psnr(f / 255.0, g) for f, g in zip(frames, gt)]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ckpt", type=Path)
    ap.add_argument("data", type=Path)
    ap.add_argument("-o", "--out", type=Path, required=True)
    ap.add_argument("--frames", type=int, default=200, help="frames per fps measurement")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    ckpt = Checkpoint.load(args.ckpt)
    report: dict = {"ckpt": str(args.ckpt), "data": str(args.data)}

    print("track codec sweep", flush=True)
    _, images = tracks(TalkingDataset(args.data, "train"))
    report["track_images"] = list(images.shape)
    report["track_raw_mb"] = round(images.nbytes / 1e6, 3)
    report["track"] = track_sweep(images, float(ckpt.meta["fps"]))
    print("table variants", flush=True)
    report["table"] = table_variants(ckpt)

    print("bundles", flush=True)
    paths = {"raw": args.out / "raw.etk", "small": args.out / "small.etk"}
    export_bundle(args.ckpt, paths["raw"], args.data, track_quality=None, table_dtype="float32", log=lambda m: None)
    t = time.perf_counter()
    export_bundle(args.ckpt, paths["small"], args.data, log=print)
    report["small_export_s"] = round(time.perf_counter() - t, 1)
    bundles = {}
    for name, path in paths.items():
        bundles[name] = {"mb": round(bundle_megabytes(path), 3), "parts_bytes": bundle_parts(Bundle.open(path).manifest),
                         **load_times(path)}
    fps: dict[str, dict[str, list[float]]] = {name: {"first_clip": [], "later_clips": []} for name in paths}
    for _ in range(3):
        for name, path in paths.items():
            first, later = playback_fps(path, args.frames)
            fps[name]["first_clip"].append(first)
            fps[name]["later_clips"].append(later)
    renders = {}
    for name, path in paths.items():
        bundles[name]["cpu_fps"] = fps[name]
        val, bundles[name]["val_psnr_db"] = val_renders(path, args.data)
        trk, bundles[name]["track_frames_psnr_db"] = track_renders(path, args.data)
        renders[name] = (val, trk)
    report["bundles"] = bundles
    report["small_vs_raw_mean_abs_255"] = {
        "val": round(float(np.abs(renders["small"][0].astype(np.int16) - renders["raw"][0]).mean()), 3),
        "track_frames": round(float(np.abs(renders["small"][1].astype(np.int16) - renders["raw"][1]).mean()), 3),
    }
    (args.out / "bundle_size.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
