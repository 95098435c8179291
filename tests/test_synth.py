"""Synthetic speaker: speech, dataset layout, reader, and that the pictures mean what they say."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from scipy import signal

from embedtalk_sdk.synthetic import synth
from embedtalk_sdk.data.dataset import DatasetError, TalkingDataset
from embedtalk_sdk.runtime.audio.speech import OPENNESS_RATE, synthesize_speech

SECONDS, SIZE, FPS = 3.0, 96, 25


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    calls = []
    out = synth.synthesize_dataset(tmp_path_factory.mktemp("synth") / "spk", seconds=SECONDS,
                                   size=SIZE, fps=FPS, seed=3,
                                   progress=lambda d, t: calls.append((d, t)))
    n = int(round(SECONDS * FPS))
    assert calls[0] == (0, n) and calls[-1] == (n, n)
    return out


def _frame_rms(samples: np.ndarray, n: int, sr: int = 16000, win: float = 0.04) -> np.ndarray:
    """RMS of the audio in a `win`-second window centred on each frame's time n / FPS."""
    out = np.zeros(n)
    for i in range(n):
        a, b = int((i / FPS - win / 2) * sr), int((i / FPS + win / 2) * sr)
        seg = samples[max(a, 0):max(b, 1)]
        out[i] = np.sqrt(np.mean(seg ** 2))
    return out


def test_layout_is_complete_and_readable(data_dir: Path) -> None:
    n = int(round(SECONDS * FPS))
    for name in ("aud.wav", "bc.jpg", "au.csv", "transforms_train.json",
                 "transforms_val.json", "points3d.npy"):
        assert (data_dir / name).is_file(), name
    for sub, ext in (("gt_imgs", "jpg"), ("ori_imgs", "lms"), ("torso_imgs", "png")):
        assert sorted(p.name for p in (data_dir / sub).iterdir()) == sorted(
            f"{i}.{ext}" for i in range(n))
    info = sf.info(str(data_dir / "aud.wav"))
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
    assert info.frames == int(SECONDS * 16000)
    header = (data_dir / "au.csv").read_text().splitlines()[0]
    assert header == "frame, timestamp, AU01_r, AU04_r, AU05_r, AU06_r, AU07_r, AU45_r"

    ds = TalkingDataset(data_dir, "all")
    assert len(ds) == n and (ds.width, ds.height, ds.fps) == (SIZE, SIZE, FPS)
    assert ds.K.dtype == np.float32 and ds.K[0, 2] == SIZE / 2 and ds.K[1, 2] == SIZE / 2
    assert ds.viewmats.shape == (n, 4, 4) and ds.aus.shape == (n, 6)
    assert 0.0 <= ds.aus.min() and ds.aus.max() <= 5.0
    img = ds.image(0)
    assert img.shape == (SIZE, SIZE, 3) and img.dtype == np.float32
    assert ds.torso_bg(0).shape == (SIZE, SIZE, 3)
    x0, y0, x1, y1 = ds.mouth_box(0)
    assert 0 <= x0 < x1 <= SIZE and 0 <= y0 < y1 <= SIZE
    pts = ds.points3d
    assert pts.dtype == np.float32 and pts.shape[1] == 6 and 20000 <= len(pts) <= 40000
    r = np.linalg.norm(pts[:, :3] / synth.HEAD_RADII, axis=1)
    surface = len(pts) - len(pts) // 40  # the rest lie on the mouth's back wall, inside the head
    assert np.all(np.abs(r[:surface] - 1) < 0.1) and np.all(r[surface:] < 0.97 + 0.02)  # inside, up to the 0.8 mm jitter
    assert 0 <= pts[:, 3:].min() and pts[:, 3:].max() <= 1


def test_val_split_is_last_eleventh(data_dir: Path) -> None:
    n = int(round(SECONDS * FPS))
    train, val = TalkingDataset(data_dir, "train"), TalkingDataset(data_dir, "val")
    n_train = int(n * 10 / 11)
    assert list(train.frame_ids) == list(range(n_train))
    assert list(val.frame_ids) == list(range(n_train, n))
    assert len(val) == n - n_train >= 1


def test_cameras_match_landmarks(data_dir: Path) -> None:
    """The reader's K and viewmats project the head's 3D nose landmarks onto the .lms rows."""
    ds = TalkingDataset(data_dir, "all")
    nose = synth.landmarks_3d(synth.FaceState())[27:36]  # independent of expression
    for i in (0, len(ds) // 2, len(ds) - 1):
        cam = nose @ ds.viewmats[i, :3, :3].T + ds.viewmats[i, :3, 3]
        uv = (cam @ ds.K.T)[:, :2] / cam[:, 2:3]
        np.testing.assert_allclose(uv, ds.landmarks(i)[27:36], atol=0.02)


def test_points_have_the_head_colours(data_dir: Path) -> None:
    """Point colours match the frame pixels they project to (camera-facing points)."""
    ds = TalkingDataset(data_dir, "all")
    pts = ds.points3d
    cam = pts[:, :3] @ ds.viewmats[0, :3, :3].T + ds.viewmats[0, :3, 3]
    uv = (cam @ ds.K.T)[:, :2] / cam[:, 2:3]
    normal = pts[:, :3] / synth.HEAD_RADII ** 2
    centre = -ds.viewmats[0, :3, :3].T @ ds.viewmats[0, :3, 3]
    to_cam = centre - pts[:, :3]
    facing = np.einsum("ij,ij->i", normal, to_cam) / (
        np.linalg.norm(normal, axis=1) * np.linalg.norm(to_cam, axis=1)) > 0.6
    px = np.clip(uv[facing].astype(int), 0, SIZE - 1)
    seen = ds.image(0)[px[:, 1], px[:, 0]]
    assert np.median(np.abs(seen - pts[facing, 3:])) < 0.05


def test_mouth_darkness_follows_audio(data_dir: Path) -> None:
    ds = TalkingDataset(data_dir, "all")
    samples, _ = sf.read(str(ds.audio_path), dtype="float32")
    dark = []
    for i in range(len(ds)):
        x0, y0, x1, y1 = ds.mouth_box(i)
        dark.append(1.0 - ds.image(i)[y0:y1, x0:x1].mean())
    rms = _frame_rms(samples, len(ds))
    assert np.corrcoef(dark, rms)[0, 1] > 0.6


def test_blinks_close_the_eyes(data_dir: Path) -> None:
    ds = TalkingDataset(data_dir, "all")
    au45 = ds.aus[:, 5]
    shut = int(np.argmax(au45))
    assert au45[shut] > 3.0 and np.median(au45) < 0.5
    opened = np.nonzero(au45 < 0.5)[0]
    ref = int(opened[np.argmin(np.abs(opened - shut))])  # nearest open-eyed frame
    lm = ds.landmarks(ref)[36:48]
    x0, y0 = np.floor(lm.min(0)).astype(int) - 1
    x1, y1 = np.ceil(lm.max(0)).astype(int) + 2
    h = y1 - y0

    def change(dy: int) -> float:
        a, b = ds.image(shut)[y0 + dy:y1 + dy, x0:x1], ds.image(ref)[y0 + dy:y1 + dy, x0:x1]
        return float(np.abs(a - b).mean())

    # The eyes change far more than the cheeks below them over the same frames.
    assert change(0) > 3.0 * change(int(1.5 * h)) and change(0) > 0.03


def test_composite_is_head_over_torso_bg(data_dir: Path) -> None:
    """Away from the head, a frame is exactly torso_bg (up to JPEG error)."""
    ds = TalkingDataset(data_dir, "all")
    focal = float(ds.K[0, 0])
    for i in (0, len(ds) - 1):
        view = synth.View(ds.c2w_gl[i].astype(np.float64), focal, SIZE)
        _, alpha = synth.render_head(view, synth.FaceState())
        # Far from the head: dilate the head's footprint by one JPEG block.
        near = alpha > 0
        for _ in range(8):
            near = near | np.roll(near, 1, 0) | np.roll(near, -1, 0) \
                | np.roll(near, 1, 1) | np.roll(near, -1, 1)
        diff = np.abs(ds.image(i) - ds.torso_bg(i))[~near]
        assert diff.mean() < 0.006 and np.percentile(diff, 99.9) < 0.05
        assert np.abs(ds.image(i) - ds.torso_bg(i))[alpha > 0.99].mean() > 0.05  # head shows


def test_audio_is_speech_not_silence_or_noise(data_dir: Path) -> None:
    samples, sr = sf.read(str(data_dir / "aud.wav"), dtype="float32")
    assert np.sqrt(np.mean(samples ** 2)) > 0.02
    f, _, z = signal.stft(samples, sr, nperseg=512)
    power = np.abs(z) ** 2 + 1e-12
    energy = power.sum(0)
    active = energy > np.percentile(energy, 50)
    flatness = np.exp(np.log(power).mean(0)) / power.mean(0)
    assert np.median(flatness[active]) < 0.1  # harmonic: white noise is ~0.56
    band = (f > 200) & (f < 3500)  # F1..F3
    assert power[band].sum() / power.sum() > 0.7
    frame_rms = _frame_rms(samples, int(SECONDS * FPS), win=0.02)
    assert np.percentile(frame_rms, 10) < 0.1 * np.percentile(frame_rms, 90)  # pauses


def test_speech_is_seeded_and_mouth_curve_sane() -> None:
    a, b, a2 = synthesize_speech(2.0, 0), synthesize_speech(2.0, 1), synthesize_speech(2.0, 0)
    assert a.text != b.text and not np.allclose(a.samples[:8000], b.samples[:8000])
    np.testing.assert_array_equal(a.samples, a2.samples)
    assert a.samples.dtype == np.float32 and a.samples.shape == (32000,)
    assert len(a.openness) >= 2.0 * OPENNESS_RATE
    assert 0.0 <= a.openness.min() and a.openness.max() <= 1.0 and a.openness.max() > 0.3
    assert a.mouth_open(0.05) < 0.05  # leading silence: mouth closed
    assert a.mouth_open(np.array([0.5, 1.0])).shape == (2,)


def test_sentence_wav_is_fresh(tmp_path: Path, data_dir: Path) -> None:
    path = synth.synthesize_sentence_wav(tmp_path / "s.wav", seconds=1.5, seed=3)
    s, sr = sf.read(str(path), dtype="float32")
    assert sr == 16000 and len(s) == 24000 and sf.info(str(path)).subtype == "PCM_16"
    train, _ = sf.read(str(data_dir / "aud.wav"), dtype="float32")
    assert not np.allclose(s, train[:24000], atol=1e-3)


def test_reader_handles_real_layouts_and_errors(tmp_path: Path, data_dir: Path) -> None:
    root = tmp_path / "real"
    shutil.copytree(data_dir, root)
    meta = json.loads((root / "transforms_train.json").read_text())
    for key in ("w", "h", "fps"):
        meta.pop(key)
    (root / "transforms_train.json").write_text(json.dumps(meta))
    n = int(round(SECONDS * FPS))
    (root / "au.csv").write_text("frame,face_id,  AU45_r\n"
                                 + "".join(f"{i + 1},0,  {i % 5}.0\n" for i in range(n)))
    (root / "points3d.npy").unlink()
    ds = TalkingDataset(root, "train")
    assert (ds.width, ds.height, ds.fps) == (SIZE, SIZE, 25.0) and ds.points3d is None
    assert np.all(ds.aus[:, :5] == 0) and list(ds.aus[:7, 5]) == [0, 1, 2, 3, 4, 0, 1]

    (root / "aud.wav").unlink()
    with pytest.raises(FileNotFoundError, match="aud.wav"):
        TalkingDataset(root, "train")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TalkingDataset(tmp_path / "nowhere")
    shutil.copy(data_dir / "aud.wav", root / "aud.wav")
    (root / "gt_imgs" / "1.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"gt_imgs/1\.jpg"):
        TalkingDataset(root, "train").image(1)
    (root / "au.csv").write_text("frame, AU01_r\n1, 0.0\n")
    with pytest.raises(DatasetError, match="AU45_r"):
        TalkingDataset(root, "train")
