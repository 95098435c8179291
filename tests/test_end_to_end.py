"""The chain on a tiny synthetic speaker: train -> checkpoint -> export -> runtime, CLI included."""
from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import torch
from typer.testing import CliRunner

from embedtalk_sdk.audio.features import mel_features
from embedtalk_sdk.runtime.audio.mel import frame_windows
from embedtalk_sdk.cli import app
from embedtalk_sdk.data.dataset import TalkingDataset
from embedtalk_sdk.runtime.audio.speech import synthesize_speech
from embedtalk_sdk.model.checkpoint import Checkpoint
from embedtalk_sdk.runtime.aus import AU_SCALE
from embedtalk_sdk.runtime.avatar import Avatar
from embedtalk_sdk.runtime.bundle import Bundle
from embedtalk_sdk.runtime.video import read_audio_track, read_video


def test_training_writes_checkpoint_plot_and_learns(trained_avatar):
    ckpt_path = trained_avatar["ckpt"]
    assert (ckpt_path.parent / "loss.png").stat().st_size > 1000
    ckpt = Checkpoint.load(ckpt_path)
    torch.load(ckpt_path, weights_only=True)  # plain tensors and strings only
    assert ckpt.meta["width"] == 64 and len(ckpt.gaussians) == trained_avatar["metrics"]["gaussians"]
    # 60 iterations from the dense cloud already put the head in place (an empty head scores ~19 dB).
    assert trained_avatar["metrics"]["psnr_val"] > 24


def test_deform_onnx_equals_pytorch_model_on_real_audio(trained_avatar):
    ckpt = Checkpoint.load(trained_avatar["ckpt"])
    ds = TalkingDataset(trained_avatar["data"], "all")
    windows = frame_windows(mel_features(ds.audio_path), len(ds), window=ckpt.deform.cfg.window)[:12]
    aus = (ds.aus[:12] / AU_SCALE).astype(np.float32)
    with torch.no_grad():
        ref_mu, ref_alpha = ckpt.deform(ckpt.gaussians.embeddings, torch.as_tensor(windows), torch.as_tensor(aus))
    bundle = Bundle.open(trained_avatar["bundle"])
    sess = ort.InferenceSession(bundle.bytes_of("deform.onnx"), providers=["CPUExecutionProvider"])
    mu, alpha = sess.run(["delta_means", "delta_opacity"], {"audio_window": windows, "aus": aus})
    assert np.abs(ref_mu.numpy()).max() > 0  # trained heads: the comparison is not between zeros
    assert np.abs(mu - ref_mu.numpy()).max() <= 1e-4
    assert np.abs(alpha - ref_alpha.numpy()).max() <= 1e-4


def test_onnxruntime_frames_equal_torch_backend(trained_avatar):
    audio = synthesize_speech(1.2, seed=11).samples
    fast = Avatar.load(trained_avatar["bundle"], backend="onnxruntime").speak(audio, sample_rate=16000)
    ref = Avatar.load(trained_avatar["bundle"], backend="torch").speak(audio, sample_rate=16000)
    assert fast.shape == ref.shape == (30, 64, 64, 3)
    assert np.abs(fast.astype(np.float64) - ref).mean() <= 1.0  # 1/255 in [0,1] units


def test_cli_export_speak_bench(trained_avatar, tmp_path):
    runner = CliRunner()
    bundle = tmp_path / "cli.etk"
    result = runner.invoke(app, ["export", str(trained_avatar["ckpt"]), "-o", str(bundle)])
    assert result.exit_code == 0, result.output
    wav = tmp_path / "hello.wav"
    import soundfile as sf

    sf.write(wav, synthesize_speech(2.0, seed=4).samples, 16000)
    out = tmp_path / "hello.mp4"
    result = runner.invoke(app, ["speak", str(bundle), str(wav), "-o", str(out)])
    assert result.exit_code == 0, result.output
    frames, fps = read_video(out)
    assert fps == 25 and len(frames) == 50
    samples, rate = read_audio_track(out)
    assert abs(len(samples) / rate - 2.0) < 0.1
    report_path = tmp_path / "bench.json"
    result = runner.invoke(app, ["bench", str(bundle), "--frames", "5", "-o", str(report_path)])
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    by_name = {r["backend"]: r for r in report["results"]}
    assert by_name["onnxruntime"]["fps"] > 0 and by_name["torch"]["speedup_vs_baseline"] == 1.0
    assert report_path.with_suffix(".png").exists()


def test_cli_refuses_bad_inputs_with_one_clear_line(trained_avatar, tmp_path):
    runner = CliRunner()
    truncated = tmp_path / "ckpt.pt"
    truncated.write_bytes(trained_avatar["ckpt"].read_bytes()[:1000])
    result = runner.invoke(app, ["export", str(truncated), "-o", str(tmp_path / "x.etk")])
    assert result.exit_code == 2 and "truncated or corrupt" in result.output
    not_audio = tmp_path / "notes.wav"
    not_audio.write_text("this is not audio")
    result = runner.invoke(app, ["speak", str(trained_avatar["bundle"]), str(not_audio), "-o", str(tmp_path / "o.mp4")])
    assert result.exit_code == 2 and "notes.wav" in result.output
