"""`embedtalk-sdk demo`: synth -> train -> export -> speak a fresh sentence, with metrics and a look.

Writes DIR/demo.mp4, DIR/avatar.etk, DIR/metrics.json, DIR/mouth_strip.png and the run folder (loss
curve, checkpoint).

The new sentence has a ground truth: the synthetic speaker saying it, ray-cast from the cameras the
avatar plays back. The mouth is judged on that: mouth_sync_corr is the correlation over frames of
the mouth box's darkness in the avatar's frames and in the ground truth; mouth_psnr the PSNR over
the mouth boxes, next to mouth_psnr_silent, the same avatar driven by silence (a mouth that ignores
the sentence). mouth_strip.png shows ground truth over render where the sentence opens the mouth
most and least.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import numpy as np

from embedtalk_sdk.runtime.audio.io import load_audio
from embedtalk_sdk.runtime.camera import pingpong
from embedtalk_sdk.data.dataset import TalkingDataset
from embedtalk_sdk.data.layout import write_wav
from embedtalk_sdk.runtime.audio.speech import synthesize_speech
from embedtalk_sdk.synthetic.synth import synthesize_dataset
from embedtalk_sdk.export.exporter import export_bundle
from embedtalk_sdk.runtime.bundle import bundle_megabytes
from embedtalk_sdk.runtime.pixels import to_uint8
from embedtalk_sdk.runtime.video import write_mp4
from embedtalk_sdk.mouth_strip import save_mouth_strip

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
    wav = write_wav(out / "sentence.wav", sentence.samples)
    samples = load_audio(wav)
    avatar = Avatar.load(bundle, backend="onnxruntime")
    # The silent run first: it also compiles numba's kernels, which cpu_fps must not count.
    frames_silent = avatar.speak(write_wav(out / "silence.wav", np.zeros_like(sentence.samples)))
    start = time.perf_counter()
    frames = avatar.speak(wav)
    cpu_fps = len(frames) / (time.perf_counter() - start)
    write_mp4(out / "demo.mp4", frames, fps=avatar.fps, audio=samples)
    opening = mouth_opening_per_frame(sentence, len(frames), avatar.fps)
    dataset = TalkingDataset(data, "train")
    track = pingpong(np.arange(len(frames)), len(np.asarray(avatar.bundle.array("viewmats"))))
    boxes, truth = sentence_ground_truth(dataset, track, opening)
    mouth = mouth_scores(frames, frames_silent, truth, boxes)
    save_mouth_strip(frames, truth, boxes, opening, out / "mouth_strip.png")
    metrics = {
        "psnr_val": train_metrics["psnr_val"],
        "lpips_val": train_metrics["lpips_val"],
        "bundle_mb": round(bundle_megabytes(bundle), 3),
        "cpu_fps": round(cpu_fps, 2),
        "train_seconds": train_metrics["train_seconds"],
        "gaussians": train_metrics["gaussians"],
        **mouth,
        "mouth_audio_response": train_metrics["audio_health"]["mouth_audio_response"],
        "frames": len(frames),
        "audio_seconds": round(len(samples) / 16000, 3),
        "total_seconds": round(time.perf_counter() - t0, 1),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def mouth_opening_per_frame(track, n_frames: int, fps: float) -> np.ndarray:
    """The synthetic sentence's true mouth opening at each video frame's time: [n_frames]."""
    return np.array([track.mouth_open(n / fps) for n in range(n_frames)], dtype=np.float32)


def sentence_ground_truth(dataset: TalkingDataset, track: np.ndarray, opening: np.ndarray
                          ) -> tuple[list[tuple[int, int, int, int]], list[np.ndarray]]:
    """The synthetic speaker saying the sentence, seen from the avatar's camera track.

    track [T]: the training frame whose camera (and torso) each output frame uses; opening [T]: the
    sentence's mouth opening. -> (mouth box (x0, y0, x1, y1) per frame, wide enough for the fully open
    mouth; ground-truth uint8 crop of that box per frame).
    """
    from embedtalk_sdk.synthetic.synth import FaceState, View, landmarks_3d, project, render_head

    focal, size = float(dataset.K[0, 0]), dataset.width
    boxes, crops = [], []
    for k, m in zip(track, opening):
        view = View(dataset.c2w_gl[int(k)].astype(np.float64), focal, size)
        lips = project(view, landmarks_3d(FaceState(mouth_open=1.0)))[48:68]
        (x0, y0), (x1, y1) = np.floor(lips.min(0)).astype(int) - 2, np.ceil(lips.max(0)).astype(int) + 3
        box = (max(int(x0), 0), max(int(y0), 0), min(int(x1), size), min(int(y1), size))
        rgb, alpha = render_head(view, FaceState(mouth_open=float(m)))
        image = rgb + dataset.torso_bg(int(k)) * (1.0 - alpha[..., None])
        crop = image[box[1]:box[3], box[0]:box[2]]
        boxes.append(box)
        crops.append(to_uint8(crop))
    return boxes, crops


def mouth_scores(frames: np.ndarray, frames_silent: np.ndarray, truth: list[np.ndarray],
                 boxes: list[tuple[int, int, int, int]]) -> dict:
    """mouth_sync_corr, mouth_psnr and mouth_psnr_silent (see the module docstring)."""
    from embedtalk_sdk.metrics import psnr

    def crops(video: np.ndarray) -> list[np.ndarray]:
        return [f[y0:y1, x0:x1].astype(np.float64) / 255 for f, (x0, y0, x1, y1) in zip(video, boxes)]

    gt = [t.astype(np.float64) / 255 for t in truth]
    spoken, silent = crops(frames), crops(frames_silent)
    dark_gt = [1 - g.mean() for g in gt]
    dark = [1 - c.mean() for c in spoken]
    return {
        "mouth_sync_corr": round(float(np.corrcoef(dark_gt, dark)[0, 1]), 3),
        "mouth_psnr": round(float(np.mean([psnr(c, g) for c, g in zip(spoken, gt)])), 2),
        "mouth_psnr_silent": round(float(np.mean([psnr(c, g) for c, g in zip(silent, gt)])), 2),
    }
