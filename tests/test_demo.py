"""`embedtalk-sdk demo` end to end with a small configuration (the README's first command, shrunk)."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from embedtalk_sdk.cli import app
from embedtalk_sdk.demo import SENTENCE_SECONDS
from embedtalk_sdk.runtime.bundle import Bundle
from embedtalk_sdk.video import read_audio_track, read_video


@pytest.mark.slow
def test_demo_writes_video_bundle_metrics_and_strip(tmp_path):
    out = tmp_path / "demo"
    args = ["demo", "-o", str(out), "--seconds", "6", "--size", "64", "--iterations", "40", "--init-points", "1500"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("psnr_val", "lpips_val", "bundle_mb", "cpu_fps", "train_seconds", "mouth_sync_corr"):
        assert key in metrics
    assert metrics["psnr_val"] > 20 and metrics["cpu_fps"] > 0 and metrics["bundle_mb"] > 0
    frames, fps = read_video(out / "demo.mp4")
    assert len(frames) == round(SENTENCE_SECONDS * fps) and frames.shape[1:3] == (64, 64)
    samples, rate = read_audio_track(out / "demo.mp4")
    assert abs(len(samples) / rate - SENTENCE_SECONDS) < 0.1
    assert (out / "mouth_strip.png").stat().st_size > 1000 and (out / "run" / "loss.png").exists()
    Bundle.open(out / "avatar.etk")  # verifies every hash
