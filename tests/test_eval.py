"""Metrics against references computed independently, `Avatar.render_frames`, and `eval` on a tiny
trained checkpoint and its bundle."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import find_model, model_or_skip
from embedtalk_sdk import metrics
from embedtalk_sdk.model_files import FACE_LANDMARKER, LPIPS_BACKBONE


# ---------------------------------------------------------------------------------------------
# PSNR / SSIM / LPIPS / LMD / sync.


def test_psnr_matches_its_definition():
    rng = np.random.default_rng(0)
    a = rng.uniform(0.2, 0.8, (20, 30, 3))
    assert metrics.psnr(a, a + 0.1) == pytest.approx(20.0)  # MSE 0.01
    b = a + rng.normal(0, 0.05, a.shape)
    mse = sum(float(((x - y) ** 2)) for x, y in zip(a.ravel(), b.ravel())) / a.size
    assert metrics.psnr(a, b) == pytest.approx(10 * np.log10(1 / mse), rel=1e-9)
    assert metrics.psnr(a, a) == float("inf")


def _ssim_direct(x: np.ndarray, y: np.ndarray) -> float:
    """Wang et al. 2004 window by window: weighted statistics of every 11x11 patch, looped."""
    t = np.arange(11) - 5.0
    w = np.exp(-(t[:, None] ** 2 + t[None, :] ** 2) / (2 * 1.5 ** 2))
    w /= w.sum()
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    vals = []
    for ch in range(x.shape[2]):
        for i in range(x.shape[0] - 10):
            for j in range(x.shape[1] - 10):
                p, q = x[i:i + 11, j:j + 11, ch], y[i:i + 11, j:j + 11, ch]
                mp, mq = (w * p).sum(), (w * q).sum()
                vp, vq = (w * (p - mp) ** 2).sum(), (w * (q - mq) ** 2).sum()
                cov = (w * (p - mp) * (q - mq)).sum()
                vals.append((2 * mp * mq + c1) * (2 * cov + c2) / ((mp ** 2 + mq ** 2 + c1) * (vp + vq + c2)))
    return float(np.mean(vals))


def test_ssim_matches_the_direct_formula():
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, (17, 19, 3))
    y = np.clip(0.8 * x + 0.1 + rng.normal(0, 0.08, x.shape), 0, 1)
    assert metrics.ssim(x, y) == pytest.approx(_ssim_direct(x, y), abs=1e-9)
    assert metrics.ssim(x, x) == pytest.approx(1.0)
    assert metrics.ssim(x, 1 - x) < 0  # anticorrelated structure
    with pytest.raises(ValueError):
        metrics.ssim(x[:8], y[:8])


def _lpips_functional(a: torch.Tensor, b: torch.Tensor) -> float:
    """LPIPS v0.1 (alex) written out with conv2d calls on the raw weights (Zhang et al. 2018)."""
    from embedtalk_sdk.train.lpips import LINEAR_WEIGHTS

    sd = torch.load(model_or_skip(LPIPS_BACKBONE), map_location="cpu", weights_only=True)
    lin = np.load(LINEAR_WEIGHTS)
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    F = torch.nn.functional

    def taps(x):
        x = ((2 * x - 1) - shift) / scale
        x = F.relu(F.conv2d(x, sd["0.weight"], sd["0.bias"], stride=4, padding=2))
        out = [x]
        x = F.relu(F.conv2d(F.max_pool2d(x, 3, 2), sd["3.weight"], sd["3.bias"], padding=2))
        out.append(x)
        x = F.relu(F.conv2d(F.max_pool2d(x, 3, 2), sd["6.weight"], sd["6.bias"], padding=1))
        out.append(x)
        x = F.relu(F.conv2d(x, sd["8.weight"], sd["8.bias"], padding=1))
        out.append(x)
        out.append(F.relu(F.conv2d(x, sd["10.weight"], sd["10.bias"], padding=1)))
        return out

    total = 0.0
    for k, (fa, fb) in enumerate(zip(taps(a), taps(b))):
        fa = fa / (fa.norm(dim=1, keepdim=True) + 1e-10)
        fb = fb / (fb.norm(dim=1, keepdim=True) + 1e-10)
        wk = torch.from_numpy(lin[f"lin{k}"]).view(-1)
        total += float(((fa - fb) ** 2 * wk.view(1, -1, 1, 1)).sum(1).mean())
    return total


def test_lpips_matches_a_functional_reference():
    backbone = model_or_skip(LPIPS_BACKBONE)
    from embedtalk_sdk.train.lpips import LPIPS

    rng = np.random.default_rng(2)
    a = rng.uniform(0, 1, (64, 64, 3)).astype(np.float32)
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1).astype(np.float32)
    model = LPIPS(backbone)
    got = metrics.lpips_distance(model, a, b)
    ref = _lpips_functional(*(torch.from_numpy(x).permute(2, 0, 1)[None] for x in (a, b)))
    assert got == pytest.approx(ref, rel=1e-4) and got > 0.01
    assert metrics.lpips_distance(model, a, a) == pytest.approx(0.0, abs=1e-6)


def test_lmd_is_the_mean_mouth_landmark_distance():
    gt = np.zeros((2, 20, 2))
    pred = gt.copy()
    pred[0, :, 0] = 3.0  # frame 0: every landmark 3 px off
    pred[1, :10, 1] = 4.0  # frame 1: half of them 4 px off
    out = metrics.lmd(gt, pred, eye_span=np.array([100.0, 50.0]))
    assert out["lmd"] == pytest.approx((3.0 + 2.0) / 2)
    assert out["lmd_norm"] == pytest.approx((3.0 / 100 + 2.0 / 50) / 2 * 100)
    with pytest.raises(ValueError):
        metrics.lmd(gt, pred[:, :10])


def test_audio_envelope_and_sync_recover_a_known_shift():
    sr, fps, n = 16000, 25, 250
    env = np.abs(np.convolve(np.random.default_rng(3).standard_normal(n + 20), np.ones(4) / 4, "same"))[10:-10]
    samples = np.concatenate([a * np.sin(2 * np.pi * 200 * np.arange(640) / sr) for a in 0.05 + env])
    db = metrics.audio_envelope(samples, n, fps)
    rms = (0.05 + env) / np.sqrt(2)
    np.testing.assert_allclose(db, 20 * np.log10(rms), atol=0.05)
    for shift in (-4, 0, 3):
        mouth = np.roll(0.05 + env, shift)  # the mouth `shift` frames after the sound
        out = metrics.av_sync(mouth, db)
        assert out["offset_frames"] == shift and out["correlation"] > 0.9 and out["confidence"] > 0.5
    noise = metrics.av_sync(np.random.default_rng(4).standard_normal(n), db)
    assert noise["correlation"] < 0.4



def test_audio_predicts_mouth_finds_the_lag_the_mouth_was_made_with():
    rng = np.random.default_rng(5)
    n, f = 300, 6
    feats = rng.standard_normal((2 * n, f))
    weights = rng.standard_normal(4 * f)
    for lag in (-4, 0, 3):  # the mouth `lag` frames after the sound that drives it
        centres = np.clip(2 * (np.arange(n) - lag), 2, 2 * n - 2)
        mouth = np.array([feats[c - 2:c + 2].ravel() @ weights for c in centres])
        mouth += 0.3 * mouth.std() * rng.standard_normal(n)
        out = metrics.audio_predicts_mouth(feats, mouth)
        assert out["offset_frames"] == lag and out["correlation"] > 0.8, out
        assert out["curve"][lag + 8] < 0.3  # far from the lag nothing predicts the mouth
    noise = metrics.audio_predicts_mouth(feats, rng.standard_normal(n))
    assert noise["correlation"] < 0.3

# ---------------------------------------------------------------------------------------------
# Rendering with explicit inputs; eval end to end.


def test_render_frames_equals_speak_on_the_same_inputs(trained_avatar):
    from embedtalk_sdk.runtime.audio.mel import frame_windows
    from embedtalk_sdk.runtime.audio.speech import synthesize_speech
    from embedtalk_sdk.runtime.avatar import Avatar

    avatar = Avatar.load(trained_avatar["bundle"], backend="onnxruntime")
    audio = synthesize_speech(0.8, seed=4).samples
    aus = np.tile(np.array([0.5, 0.2, 0.1, 0.3, 0.4, 1.0], np.float32), (20, 1))
    spoken = avatar.speak(audio, sample_rate=16000, aus=aus)
    views, torso = avatar.track(len(spoken))
    windows = frame_windows(avatar.audio_features(audio, 16000), len(spoken), avatar.fps, 50.0, 16)
    frames = list(avatar.render_frames(windows, aus, views, torso))
    assert len(frames) == len(spoken) == 20
    assert np.abs(np.stack(frames).astype(int) - spoken).max() <= 1
    with pytest.raises(ValueError):
        next(avatar.render_frames(windows, aus[:5], views[:20], torso[:20]))


@pytest.fixture(scope="module")
def ckpt_eval(trained_avatar, tmp_path_factory):
    model_or_skip(FACE_LANDMARKER)
    pytest.importorskip("mediapipe")
    from embedtalk_sdk.eval import evaluate

    out = tmp_path_factory.mktemp("eval")
    return evaluate(trained_avatar["ckpt"], out=out, stills=2), out


def test_eval_checkpoint_writes_json_video_and_stills(ckpt_eval, trained_avatar):
    report, out = ckpt_eval
    saved = json.loads((out / "eval.json").read_text())
    m = saved["metrics"]
    assert saved["kind"] == "checkpoint" and saved["frames"] == 10 and saved["split"] == "val"
    assert m["psnr"] > 24 and 0 < m["ssim"] <= 1
    assert m["psnr"] == pytest.approx(trained_avatar["metrics"]["psnr_val"], abs=0.01)  # trainer: same frames, same maths
    assert (m["lpips"] is None) == (find_model(LPIPS_BACKBONE) is None)
    assert "NOT SyncNet" in saved["notes"]["sync"] and -15 <= m["sync_offset_frames"] <= 15
    assert len(saved["per_frame"]["psnr"]) == 10 and len(list((out / "frames").glob("*.png"))) == 2
    opening = saved["mouth_opening"]
    assert len(opening["truth"]) == len(opening["render"]) == 10
    lips = metrics.lip_motion(np.array(opening["truth"]), np.array(opening["render"]))
    assert m["lip_corr"] == pytest.approx(lips["lip_corr"], abs=1e-3) and -1 <= m["lip_corr"] <= 1
    assert (out / "lip_motion.png").stat().st_size > 1000
    # The truth's widest / most closed mouths above the audio-only render's, where a face was found.
    assert (m["lmd_frames"] > 0) == ("mouth_strip" in saved["files"]) == (out / "mouth_strip.png").is_file()
    from embedtalk_sdk.runtime.video import read_audio_track, read_video

    video, fps = read_video(out / "side_by_side.mp4")
    assert video.shape == (10, 64, 128, 3) and fps == 25
    audio, rate = read_audio_track(out / "side_by_side.mp4")
    assert abs(len(audio) / rate - 0.4) < 0.1  # the val frames' own 0.4 s of speech


def test_eval_bundle_matches_checkpoint(ckpt_eval, trained_avatar, tmp_path):
    from embedtalk_sdk.eval import EvalError, evaluate

    report, _ = ckpt_eval
    with pytest.raises(EvalError, match="--data"):
        evaluate(trained_avatar["bundle"], out=tmp_path / "x")
    runner = CliRunner()
    from embedtalk_sdk.cli import app

    result = runner.invoke(app, ["eval", str(trained_avatar["bundle"]), "--data", str(trained_avatar["data"]),
                                 "-o", str(tmp_path / "b"), "--backend", "onnxruntime"])
    assert result.exit_code == 0, result.output
    bundle = json.loads((tmp_path / "b" / "eval.json").read_text())
    assert bundle["kind"] == "bundle" and bundle["backend"] == "onnxruntime"
    assert bundle["metrics"]["psnr"] == pytest.approx(report["metrics"]["psnr"], abs=0.2)
    assert bundle["metrics"]["ssim"] == pytest.approx(report["metrics"]["ssim"], abs=0.01)
