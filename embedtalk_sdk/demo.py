"""`embedtalk-sdk demo`: synth -> train -> export -> speak a fresh sentence, with metrics and a look.

Writes DIR/demo.mp4, DIR/avatar.etk, DIR/metrics.json, DIR/mouth_strip.png (rendered frames where
the new sentence's mouth is most open vs closed) and the run folder (loss curve, checkpoint).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import numpy as np

from embedtalk_sdk.audio.io import load_audio
from embedtalk_sdk.camera import pingpong
from embedtalk_sdk.data.dataset import TalkingDataset
from embedtalk_sdk.data.speech import synthesize_speech
from embedtalk_sdk.data.synth import synthesize_dataset
from embedtalk_sdk.export.exporter import bundle_megabytes, export_bundle

SENTENCE_SEED = 20261124  # a sentence the speaker never said in training (training uses seed 0)
SENTENCE_SECONDS = 8.0


def run_demo(
    out: str | Path,
    seconds: float,
    size: int,
    train_config,
    progress_bar: Callable,
    train_fn: Callable,
    log: Callable[[str], None] = print,
) -> dict:
    """Run the whole chain into `out`; returns (and writes) metrics.json's content."""
    from embedtalk_sdk.runtime.avatar import Avatar

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data = out / "data"
    with progress_bar("synth", int(seconds * 25)) as update:
        synthesize_dataset(data, seconds=seconds, size=size, seed=0, progress=lambda d, t: update(d, t))
    train_metrics = train_fn(data, out / "run", train_config)
    bundle = export_bundle(out / "run" / "ckpt.pt", out / "avatar.etk", data, log=log)

    sentence = synthesize_speech(SENTENCE_SECONDS, seed=SENTENCE_SEED)
    wav = out / "sentence.wav"
    _write_wav(wav, sentence.samples)
    avatar = Avatar.load(bundle, backend="onnxruntime")
    start = time.perf_counter()
    frames = avatar.speak(wav)
    cpu_fps = len(frames) / (time.perf_counter() - start)
    avatar.speak(wav, out=out / "demo.mp4")

    opening = mouth_opening_per_frame(sentence, len(frames), avatar.fps)
    dataset = TalkingDataset(data, "train")
    darkness = mouth_darkness(frames, dataset, len(np.asarray(avatar.bundle.array("viewmats"))))
    save_mouth_strip(frames, opening, out / "mouth_strip.png")
    metrics = {
        "psnr_val": train_metrics["psnr_val"],
        "lpips_val": train_metrics["lpips_val"],
        "bundle_mb": round(bundle_megabytes(bundle), 3),
        "cpu_fps": round(cpu_fps, 2),
        "train_seconds": train_metrics["train_seconds"],
        "gaussians": train_metrics["gaussians"],
        "mouth_sync_corr": round(float(np.corrcoef(opening, darkness)[0, 1]), 3),
        "frames": len(frames),
        "audio_seconds": round(len(load_audio(wav)) / 16000, 3),
        "total_seconds": round(time.perf_counter() - t0, 1),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def _write_wav(path: Path, samples: np.ndarray) -> None:
    import soundfile as sf

    sf.write(path, samples, 16000, subtype="PCM_16")


def mouth_opening_per_frame(track, n_frames: int, fps: float) -> np.ndarray:
    """The synthetic sentence's true mouth opening at each video frame's time: [n_frames]."""
    return np.array([track.mouth_open(n / fps) for n in range(n_frames)], dtype=np.float32)


def mouth_darkness(frames: np.ndarray, dataset: TalkingDataset, track_len: int) -> np.ndarray:
    """1 - mean brightness in each rendered frame's mouth box (the box of the track frame it used)."""
    out = np.empty(len(frames), dtype=np.float32)
    for n, frame in enumerate(frames):
        x0, y0, x1, y1 = dataset.mouth_box(int(pingpong(n, track_len)))
        out[n] = 1.0 - frame[y0:y1, x0:x1].mean() / 255.0
    return out


def save_mouth_strip(frames: np.ndarray, opening: np.ndarray, path: Path, per_row: int = 4) -> None:
    """PNG: top row the frames where the sentence's mouth is most open, bottom row most closed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = np.argsort(opening)
    rows = [("open", order[::-1][:per_row]), ("closed", order[:per_row])]
    fig, axes = plt.subplots(2, per_row, figsize=(2.2 * per_row, 4.8), dpi=110)
    for r, (label, idx) in enumerate(rows):
        for c, n in enumerate(sorted(idx)):
            ax = axes[r, c]
            ax.imshow(frames[n])
            ax.set_title(f"{label}: frame {n}\nopening {opening[n]:.2f}", fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
