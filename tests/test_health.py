"""The training health check (train/health.py), the audio path's initialisation, `--seed`, and the
eval lip-motion metric."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from embedtalk_sdk import metrics
from embedtalk_sdk.audio.features import mel_features
from embedtalk_sdk.runtime.audio.mel import frame_windows
from embedtalk_sdk.model.deform import DeformConfig, DeformNet
from embedtalk_sdk.train.health import MIN_AUDIO_RESPONSE, audio_ignored, quietest_frame
from embedtalk_sdk.train.strategy import DensifyConfig
from embedtalk_sdk.train.trainer import TrainConfig, Trainer


@pytest.fixture(scope="module")
def talking_trainer(tiny_dataset, tmp_path_factory):
    """A Trainer after 300 steps on the tiny synthetic speaker: enough for its mouth to follow audio."""
    cfg = TrainConfig(iterations=300, init_points=1500, lpips_every=0, val_every=150, health_frames=16, seed=1,
                      densify=DensifyConfig(start=60, stop=210, every=50, max_gaussians=4000))
    trainer = Trainer(tiny_dataset, cfg, log=lambda m: None)
    run = tmp_path_factory.mktemp("health_run")
    result = trainer.run(run)
    return trainer, result, run


@pytest.mark.slow
def test_health_passes_a_trained_model_and_flags_a_cut_audio_path(talking_trainer):
    trainer, result, run = talking_trainer
    written = json.loads((run / "train_metrics.json").read_text())
    assert written["finished"] and [v["step"] for v in written["validations"]] == [150, 300]
    health = written["audio_health"]
    assert health["mouth_audio_response"] >= MIN_AUDIO_RESPONSE and not audio_ignored(health), health
    state = {k: v.clone() for k, v in trainer.deform.state_dict().items()}
    try:
        with torch.no_grad():
            trainer.deform.audio_proj.weight.zero_()  # the audio code no longer reaches the trunk
        with pytest.warns(UserWarning, match="ignores the audio"):
            cut = trainer.check_health()
    finally:
        trainer.deform.load_state_dict(state)
    assert cut["mouth_audio_response"] == 0.0 and cut["mouth_offset_audio_mm"] == 0.0
    assert cut["mouth_psnr"] == cut["mouth_psnr_silent"] and audio_ignored(cut)


def test_audio_code_varies_over_frames_at_initialisation(tiny_dataset):
    """Before the fix the default init gave a code spread of ~0.002 over frames (~200x below the
    per-Gaussian table's), and the network found the audio only for lucky seeds."""
    feats = mel_features(tiny_dataset / "aud.wav")
    windows = torch.as_tensor(frame_windows(feats, 100, fps=25, window=16))
    for seed in range(3):
        torch.manual_seed(seed)
        net = DeformNet(DeformConfig(feature_dim=feats.shape[1]))
        net.audio_net.set_feature_stats(torch.as_tensor(feats))
        with torch.no_grad():
            audio_part = net.audio_proj(net.audio_net(windows)).std(0).mean()
            table = net.embedding_table(0.1 * torch.randn(500, 32)).std(0).mean()
        assert audio_part > 0.2 * table, (seed, float(audio_part), float(table))


def test_quietest_frame_finds_the_silence():
    rng = np.random.default_rng(0)
    audio = rng.normal(0, 0.3, 16000 * 2).astype(np.float32)
    audio[640 * 30:640 * 31] *= 1e-3  # frame 30 of 50 is nearly silent
    aud_ids = np.arange(10, 50)
    assert aud_ids[quietest_frame(audio, aud_ids, 25.0)] == 30


def test_lip_motion_scores_truth_one_and_a_frozen_mouth_zero():
    t = np.linspace(0, 8, 200)
    truth = 0.05 + 0.04 * np.clip(np.sin(2 * np.pi * 1.3 * t), 0, None)
    assert metrics.lip_motion(truth, truth) == {"lip_corr": 1.0, "lip_amplitude_ratio": 1.0}
    frozen = metrics.lip_motion(truth, np.full_like(truth, truth.mean()))
    assert frozen == {"lip_corr": 0.0, "lip_amplitude_ratio": 0.0}
    rng = np.random.default_rng(0)
    lazy = metrics.lip_motion(truth, truth.mean() + 0.3 * (truth - truth.mean()) + rng.normal(0, 1e-3, t.shape))
    assert lazy["lip_corr"] > 0.9 and lazy["lip_amplitude_ratio"] == pytest.approx(0.3, abs=0.05)
    assert metrics.lip_motion(np.ones(5), truth[:5])["lip_amplitude_ratio"] is None
    with pytest.raises(ValueError):
        metrics.lip_motion(truth, truth[:-1])


def test_train_and_demo_take_a_seed():
    from typer.testing import CliRunner

    from embedtalk_sdk.cli import app

    for command in ("train", "demo"):
        result = CliRunner().invoke(app, [command, "--help"])
        assert result.exit_code == 0 and "--seed" in result.output


def test_mouth_crop_loss_is_the_full_frames_loss_on_the_crop(talking_trainer):
    """The crop renders from the Gaussians that touch it, with shifted intrinsics and the cropped
    torso/background: the same pixels as the full frame's crop (up to the projection's clamp)."""
    trainer, _, _ = talking_trainer
    frames = trainer.train
    with torch.no_grad():
        for i in (0, 7, 23):
            image, _, _ = trainer.render_frame(frames, i)
            x0, y0, x1, y1 = frames.dataset.mouth_box(i, margin=trainer.cfg.mouth_crop_margin)
            full = (image[y0:y1, x0:x1] - frames.image(i)[y0:y1, x0:x1]).abs().mean()
            assert float(trainer.mouth_crop_l1(i)) == pytest.approx(float(full), rel=1e-3, abs=1e-5)
            shuffled = trainer.mouth_crop_l1(i, au_frame=(i + 40) % len(frames))
            assert torch.isfinite(shuffled)
