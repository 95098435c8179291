"""`embedtalk-sdk demo` end to end with a small configuration (the README's first command, shrunk)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import model_or_skip
from embedtalk_sdk.cli import app
from embedtalk_sdk.demo import SENTENCE_SECONDS
from embedtalk_sdk.runtime.bundle import Bundle
from embedtalk_sdk.runtime.video import read_audio_track, read_video


@pytest.mark.slow
def test_demo_writes_video_bundle_metrics_and_strip(tmp_path):
    model_or_skip("lpips_alexnet_features.pth")  # the demo trains with LPIPS, its backbone found as a user's run finds it
    out = tmp_path / "demo"
    args = ["demo", "-o", str(out), "--seconds", "6", "--size", "64", "--iterations", "40", "--init-points", "1500"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("psnr_val", "lpips_val", "bundle_mb", "cpu_fps", "train_seconds", "mouth_sync_corr",
                "mouth_psnr", "mouth_psnr_silent", "mouth_audio_response"):
        assert key in metrics
    assert metrics["psnr_val"] > 20 and metrics["cpu_fps"] > 0 and metrics["bundle_mb"] > 0
    assert metrics["lpips_val"] is not None
    frames, fps = read_video(out / "demo.mp4")
    assert len(frames) == round(SENTENCE_SECONDS * fps) and frames.shape[1:3] == (64, 64)
    samples, rate = read_audio_track(out / "demo.mp4")
    assert abs(len(samples) / rate - SENTENCE_SECONDS) < 0.1
    assert (out / "mouth_strip.png").stat().st_size > 1000 and (out / "run" / "loss.png").exists()
    Bundle.open(out / "avatar.etk")  # verifies every hash


def test_sentence_ground_truth_reproduces_the_training_frames(tiny_dataset):
    """The demo's ground truth for a new sentence, given the training sentence's mouth openings and
    cameras, equals the training frames' mouth boxes (up to their JPEG error); and mouth_scores
    ranks a matching video above a mismatched one."""
    from embedtalk_sdk.data.dataset import TalkingDataset
    from embedtalk_sdk.runtime.audio.speech import synthesize_speech
    from embedtalk_sdk.demo import mouth_opening_per_frame, mouth_scores, sentence_ground_truth

    ds = TalkingDataset(tiny_dataset, "all")
    speech = synthesize_speech(4.4, seed=3)  # the fixture's sentence
    track = np.arange(len(ds))
    opening = mouth_opening_per_frame(speech, len(ds), ds.fps)
    assert opening.max() > 0.5 and opening.min() < 0.1
    boxes, truth = sentence_ground_truth(ds, track, opening)
    frames = np.stack([np.clip(np.round(ds.image(i) * 255), 0, 255).astype(np.uint8) for i in track])
    for f, (x0, y0, x1, y1), t in zip(frames, boxes, truth):
        assert np.abs(f[y0:y1, x0:x1].astype(int) - t).mean() < 4
    scores = mouth_scores(frames, frames[::-1], truth, boxes)
    assert scores["mouth_sync_corr"] > 0.9 and scores["mouth_psnr"] > scores["mouth_psnr_silent"] + 3
