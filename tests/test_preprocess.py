"""`preprocess` on a real clip (a 2 s cut of ../shared/data/real/may_5s.mp4, made here), its refusals,
and reading a dataset in the exact TalkingGaussian / ER-NeRF layout (`--audio-encoder features`)."""
from __future__ import annotations

import json
import shutil
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import SHARED, model_or_skip
from embedtalk_sdk.data.dataset import TalkingDataset
from embedtalk_sdk.model_files import FACE_LANDMARKER, SELFIE_SEGMENTATION, model_file

REAL = SHARED / "data" / "real"
MAY = REAL / "may_5s.mp4"


def _need_real() -> None:
    if not MAY.is_file():
        pytest.skip(f"no real test clips: {REAL} is absent")
    _need_models()


def _need_models() -> None:
    model_or_skip(FACE_LANDMARKER)
    model_or_skip(SELFIE_SEGMENTATION)
    pytest.importorskip("mediapipe", reason="preprocessing needs mediapipe (the [preprocess] extra)")


def _options(**kw):
    from embedtalk_sdk.preprocess.preprocess import PreprocessOptions

    return PreprocessOptions(points=6000, **kw)  # the models: found through $EMBEDTALK_MODELS, as a user's run finds them


def _write_video(path: Path, frames: list[np.ndarray], times: list[float] | None = None,
                 audio: np.ndarray | None = None, fps: int = 25) -> Path:
    """H.264 (+ AAC) with the given presentation times (seconds); variable rates allowed."""
    import av

    with av.open(str(path), "w", format="mp4") as out:
        v = out.add_stream("libx264", rate=fps)
        v.width, v.height, v.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        v.codec_context.time_base = v.time_base = Fraction(1, 1000)  # millisecond time stamps, kept as given
        v.options = {"crf": "18", "bf": "0"}
        a = None
        if audio is not None:
            a = out.add_stream("aac", rate=16000, layout="mono")
        for k, img in enumerate(frames):
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts = int(round((times[k] if times else k / fps) * 1000))
            f.time_base = Fraction(1, 1000)
            for p in v.encode(f):
                out.mux(p)
        for p in v.encode(None):
            out.mux(p)
        if a is not None:
            af = av.AudioFrame.from_ndarray(audio[None].astype(np.float32), format="fltp", layout="mono")
            af.sample_rate, af.pts = 16000, 0
            for p in a.encode(af):
                out.mux(p)
            for p in a.encode(None):
                out.mux(p)
    return path


def _may_frames(n: int) -> tuple[list[np.ndarray], np.ndarray]:
    import soundfile as sf

    from embedtalk_sdk.runtime.video import read_video

    video, _ = read_video(MAY)
    audio, _ = sf.read(str(REAL / "may_5s_16k.wav"), dtype="float32")
    return list(video[:n]), audio[: n * 640]


@pytest.fixture(scope="session")
def may_cut(tmp_path_factory) -> Path:
    """The first 2 s of may_5s.mp4, re-encoded with its audio (the real clips stay out of the repo)."""
    _need_real()
    frames, audio = _may_frames(50)
    return _write_video(tmp_path_factory.mktemp("clips") / "may_2s.mp4", frames, audio=audio)


@pytest.fixture(scope="session")
def may_dataset(may_cut, tmp_path_factory) -> tuple[Path, dict]:
    from embedtalk_sdk.preprocess.preprocess import preprocess

    out = tmp_path_factory.mktemp("pre") / "may"
    return out, preprocess(may_cut, out, _options())


# ---------------------------------------------------------------------------------------------
# A real clip.


def test_layout_is_a_talking_dataset(may_dataset):
    root, record = may_dataset
    assert [s["status"] for s in record["steps"].values()] == ["done"] * 7
    for rel in ("aud.wav", "bc.jpg", "au.csv", "points3d.npy", "transforms_train.json", "transforms_val.json",
                "gt_imgs/0.jpg", "torso_imgs/49.png", "ori_imgs/0.lms", "ori_imgs/0.jpg", "parsing/0.png",
                "preprocess_log.json"):
        assert (root / rel).is_file(), rel
    train, val = TalkingDataset(root, "train"), TalkingDataset(root, "val")
    assert (len(train), len(val)) == (45, 5) and (train.width, train.height, train.fps) == (512, 512, 25.0)
    assert train.aus.shape == (45, 6) and 0 <= train.aus.min() and train.aus.max() <= 5
    assert train.landmarks(0).shape == (68, 2) and train.torso_bg(3).shape == (512, 512, 3)
    x0, y0, x1, y1 = train.mouth_box(0)
    assert 100 < x0 < x1 < 420 and 200 < y0 < y1 < 500  # May's mouth, lower middle of the frame
    import soundfile as sf

    info = sf.info(str(root / "aud.wav"))
    assert (info.samplerate, info.channels, info.frames) == (16000, 1, 50 * 640)
    # metres: a head-sized cloud around the origin, the camera a few tens of cm in front (+z)
    pts = train.points3d
    assert pts.shape[1] == 6 and 3000 < len(pts) <= 6000 and np.abs(pts[:, :3]).max() < 0.3
    cam = train.c2w_gl[:, :3, 3]
    assert np.all((cam[:, 2] > 0.15) & (np.linalg.norm(cam, axis=1) < 0.8))
    log = json.loads((root / "preprocess_log.json").read_text())
    assert log["steps"]["cameras"]["found"]["reprojection_px"] < 3.0
    assert log["steps"]["decode"]["found"]["variable_rate"] is False


def test_cameras_project_the_face_onto_its_landmarks(may_dataset):
    """The head frame, the camera convention and the intrinsics agree: the fitted face template, in
    world metres, lands on the frame's 2D landmarks through the dataset's own cameras."""
    from embedtalk_sdk.preprocess.face import IBUG68_FROM_MEDIAPIPE
    from embedtalk_sdk.preprocess.headpose import canonical_to_world

    root, _ = may_dataset
    ds = TalkingDataset(root, "all")
    with np.load(root / "preprocess" / "head_poses.npz") as z:
        world = canonical_to_world(z["template"])
    errors = []
    for i in (0, 20, 49):
        vm = ds.viewmats[i].astype(np.float64)
        cam = world @ vm[:3, :3].T + vm[:3, 3]
        uv = cam[:, :2] / cam[:, 2:] @ ds.K[:2, :2].T + ds.K[:2, 2]
        ibug = [k for k, m in enumerate(IBUG68_FROM_MEDIAPIPE) if m < 468 and k < 48]  # rigid-ish rows
        errors.append(np.linalg.norm(uv[IBUG68_FROM_MEDIAPIPE[ibug]] - ds.landmarks(i)[ibug], axis=1).mean())
    assert max(errors) < 6.0, errors  # pixels at 512x512


def test_blink_and_mouth_signals(may_dataset):
    root, record = may_dataset
    ds = TalkingDataset(root, "all")
    blink = ds.aus[:, 5]
    # May blinks around frame 7 of the clip: AU45 peaks there, and the eyelid gap closes
    peak = int(np.argmax(blink))
    assert 3 <= peak <= 12 and blink[peak] > 2.5 and np.median(blink) < 1.5
    lms = ds.landmarks(peak), ds.landmarks(30)
    gap = [np.linalg.norm(m[37] - m[41]) + np.linalg.norm(m[44] - m[46]) for m in lms]
    assert gap[0] < 0.5 * gap[1]
    found = record["steps"]["landmarks"]["found"]
    assert found["frames_with_face"] == 50
    sync = record["steps"]["sync"]["found"]
    assert -15 <= sync["best_offset_frames"] <= 15 and "too short to judge" in sync["reason"]
    assert sync["audio_shift_applied_s"] == 0.0  # 2 s say nothing about sync: the sound is kept


def test_rerun_resumes_and_option_changes_rerun_what_depends_on_them(may_cut, may_dataset, tmp_path):
    from embedtalk_sdk.preprocess.preprocess import preprocess

    root, _ = may_dataset
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    again = preprocess(may_cut, copy, _options())
    assert {s["status"] for s in again["steps"].values()} == {"skipped (already done)"}
    changed = preprocess(may_cut, copy, _options(pose_smoothing=2.0))
    ran = {k for k, s in changed["steps"].items() if s["status"] == "done"}
    assert ran == {"cameras", "points"}


@pytest.mark.slow
def test_train_reads_the_preprocessed_folder(may_dataset, tmp_path):
    from embedtalk_sdk.train.strategy import DensifyConfig
    from embedtalk_sdk.train.trainer import TrainConfig, Trainer

    root, _ = may_dataset
    cfg = TrainConfig(iterations=3, init_points=1500, lpips_every=0, densify=DensifyConfig(start=100, stop=200))
    result = Trainer(root, cfg, log=lambda m: None).run(tmp_path / "run")
    assert (tmp_path / "run" / "ckpt.pt").is_file() and result.metrics["val_frames"] == 5
    assert np.isfinite(result.metrics["psnr_val"])


# ---------------------------------------------------------------------------------------------
# Inputs that cannot work, and one that needs resampling.


def _preprocess_error(video: Path, out: Path) -> str:
    from embedtalk_sdk.preprocess.preprocess import PreprocessError, preprocess

    with pytest.raises(PreprocessError) as err:
        preprocess(video, out, _options())
    message = str(err.value)
    assert "\n" not in message and str(video) in message
    return message


def test_video_without_a_face(tmp_path):
    _need_real()
    from embedtalk_sdk.runtime.video import write_mp4

    yy, xx = np.mgrid[0:96, 0:128]
    frames = [np.stack([(xx + 3 * k) % 256, yy * 2, np.full_like(xx, 90)], -1).astype(np.uint8) for k in range(30)]
    tone = 0.3 * np.sin(2 * np.pi * 220 * np.arange(30 * 640) / 16000)
    video = tmp_path / "gradient.mp4"
    write_mp4(video, frames, audio=tone)
    assert "no face found" in _preprocess_error(video, tmp_path / "out")
    assert (tmp_path / "out" / "preprocess" / "steps" / "decode.json").is_file()  # decoding is kept for a rerun


def test_video_without_audio(tmp_path):
    _need_real()
    frames, _ = _may_frames(30)
    video = _write_video(tmp_path / "silent.mp4", frames)
    message = _preprocess_error(video, tmp_path / "out")
    assert "no audio track" in message and "--audio" in message


def test_corrupt_and_missing_files(tmp_path):
    _need_real()
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 20000, dtype=np.uint8).tobytes())
    assert "not a readable video" in _preprocess_error(junk, tmp_path / "a")
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(MAY.read_bytes()[:3000])  # the header only: no decodable frame
    message = _preprocess_error(cut, tmp_path / "b")
    assert "re-export" in message or "copy it again" in message
    runner = CliRunner()
    from embedtalk_sdk.cli import app

    result = runner.invoke(app, ["preprocess", str(junk), "-o", str(tmp_path / "c"),
                                 "--face-model", str(model_file(FACE_LANDMARKER))])
    assert result.exit_code == 2 and "not a readable video" in result.output


@pytest.mark.slow
def test_several_faces_use_the_largest_with_a_warning(tmp_path):
    _need_real()
    from embedtalk_sdk.preprocess.preprocess import preprocess

    frames, audio = _may_frames(30)
    small = [np.asarray(Image.fromarray(f).resize((256, 256))) for f in frames]
    # May at full size on the left, a half-size copy of her on the right
    both = [np.concatenate([f, np.pad(s, ((128, 128), (0, 0), (0, 0)))], axis=1) for f, s in zip(frames, small)]
    video = _write_video(tmp_path / "two.mp4", both, audio=audio)
    with pytest.warns(UserWarning, match="more than one face"):
        record = preprocess(video, tmp_path / "out", _options())
    assert record["steps"]["landmarks"]["found"]["frames_with_several_faces"] >= 25
    lms = TalkingDataset(tmp_path / "out", "all").landmarks(0)
    assert lms[:, 0].max() < 512  # the landmarks are on the large face, on the left


def test_audio_is_cut_to_the_frames_and_can_be_shifted(may_cut):
    from embedtalk_sdk.preprocess.preprocess import decode_audio_track

    base, found = decode_audio_track(may_cut, None, 0.0, 50)
    assert len(base) == 50 * 640 and found["audio_offset_s"] == 0.0
    earlier, _ = decode_audio_track(may_cut, None, 0.0, 50, shift=-0.1)  # the sound 0.1 s earlier
    np.testing.assert_array_equal(earlier[:-1600], base[1600:])
    later, _ = decode_audio_track(may_cut, None, 0.0, 50, shift=0.05)
    np.testing.assert_array_equal(later[800:], base[:-800])
    assert not later[:800].any()


# ---------------------------------------------------------------------------------------------
# Mouth-sound sync: a clip whose sound is clearly shifted is corrected (issue 21).


def _peak_curve(peak: float, height: float = 0.56) -> dict[int, float]:
    """A correlation curve over offsets -15..15 shaped like Ted's (r 0.56 at its peak, ~0.3 at 2.5
    frames from it, 0.08 far off)."""
    return {d: round(0.08 + (height - 0.08) * float(np.exp(-(((d - peak) / 2.8) ** 2))), 4) for d in range(-15, 16)}


def test_judge_sync_moves_only_clearly_shifted_sound():
    from embedtalk_sdk.preprocess.preprocess import SYNC_TARGET, judge_sync, peak_offset

    assert peak_offset(_peak_curve(-7.6)) == pytest.approx(-7.6, abs=0.1)
    natural = judge_sync(_peak_curve(-2.6), 1500)  # Ted as recorded
    assert not natural["out_of_sync"] and natural["shift_s"] == 0.0 and "in natural sync" in natural["reason"]
    late = judge_sync(_peak_curve(-7.6), 1500)  # its sound 0.2 s late: -8, inside the old band (-8, 2)
    assert late["out_of_sync"] and late["best_offset_frames"] == -8 and "0.20 s late" in late["reason"]
    assert late["shift_s"] == pytest.approx((-7.6 - SYNC_TARGET) / 25, abs=0.01)  # ~0.2 s earlier
    early = judge_sync(_peak_curve(2.4), 1500)  # 0.2 s early: +2, also inside the old band
    assert early["out_of_sync"] and early["shift_s"] == pytest.approx(0.2, abs=0.01) and "early" in early["reason"]
    assert not judge_sync(_peak_curve(-7.6), 125)["out_of_sync"]  # 5 s: too noisy to decide
    assert not judge_sync(_peak_curve(-7.6, height=0.25), 1500)["out_of_sync"]  # the sound hardly predicts the mouth
    assert not judge_sync(_peak_curve(1.2), 1500)["out_of_sync"]  # just outside, not clearly better than inside
    assert not judge_sync({}, 10)["out_of_sync"]


SYNC_CLIP_SHIFT = 0.2  # seconds the test clip's sound comes early


@pytest.fixture(scope="session")
def early_sound_clip(tmp_path_factory) -> dict:
    """11 s of the synthetic speaker at 128² as a video without sound, its speech (wav) and the same
    speech 0.2 s early (the synthetic mouth follows its sound at offset 0)."""
    _need_models()
    import soundfile as sf

    from embedtalk_sdk.runtime.video import write_mp4
    from embedtalk_sdk.synthetic.synth import synthesize_dataset

    root = tmp_path_factory.mktemp("sync")
    data = synthesize_dataset(root / "synth", seconds=11.0, size=128, seed=1, n_points=1000)
    n = len(list((data / "gt_imgs").glob("*.jpg")))
    video = root / "speaker.mp4"
    write_mp4(video, (np.asarray(Image.open(data / "gt_imgs" / f"{i}.jpg").convert("RGB")) for i in range(n)))
    speech, sr = sf.read(str(data / "aud.wav"), dtype="float32")
    k = int(SYNC_CLIP_SHIFT * sr)
    early = np.concatenate([speech[k:], np.zeros(k, np.float32)])
    sf.write(str(root / "early.wav"), early, sr, subtype="PCM_16")
    return {"video": video, "early": root / "early.wav", "frames": n}


@pytest.fixture(scope="session")
def early_sound_dataset(early_sound_clip, tmp_path_factory) -> tuple[Path, dict]:
    from embedtalk_sdk.preprocess.preprocess import preprocess

    out = tmp_path_factory.mktemp("pre") / "early"
    with pytest.warns(UserWarning, match="moved the sound"):
        record = preprocess(early_sound_clip["video"], out, _options(audio=str(early_sound_clip["early"])))
    return out, record


def _wav(path: Path) -> np.ndarray:
    import soundfile as sf

    return sf.read(str(path), dtype="float32")[0]


def _moved(samples: np.ndarray, shift: float) -> np.ndarray:
    """samples moved by `shift` seconds at 16 kHz (later when > 0), zero-padded, same length."""
    k = int(round(shift * 16000))
    out = np.zeros_like(samples)
    if k >= 0:
        out[k:] = samples[:len(samples) - k]
    else:
        out[:k] = samples[-k:]
    return out


@pytest.mark.slow
def test_sound_out_of_sync_is_moved_back(early_sound_clip, early_sound_dataset):
    # Before: a warning (best offset +5, outside the old band (-8, 2)), and the sound stayed 0.2 s early.
    from embedtalk_sdk.audio.features import mel_features
    from embedtalk_sdk.metrics import audio_predicts_mouth
    from embedtalk_sdk.preprocess.face import FaceTrack, mouth_opening
    from embedtalk_sdk.preprocess.preprocess import SYNC_NATURAL, SYNC_TARGET

    root, record = early_sound_dataset
    sync = record["steps"]["sync"]["found"]
    assert sync["out_of_sync"] and sync["best_offset_frames"] >= 4 and "early" in sync["reason"]
    shift = sync["audio_shift_applied_s"]
    # the sound goes back 0.2 s, plus the natural lead of a real mouth (SYNC_TARGET) that the synthetic lacks
    assert shift == pytest.approx(SYNC_CLIP_SHIFT - SYNC_TARGET / 25, abs=0.04)
    assert any("moved the sound" in w for w in record["warnings"])
    logged = json.loads((root / "preprocess_log.json").read_text())["steps"]["sync"]["found"]
    assert "moved the sound" in logged["action"] and logged["audio_shift_applied_s"] == shift
    early = _wav(early_sound_clip["early"])[: early_sound_clip["frames"] * 640]
    np.testing.assert_allclose(_wav(root / "aud.wav"), _moved(early, shift), atol=1e-4)
    # measured again on what was written: now in natural sync
    mouth = mouth_opening(FaceTrack.load(root / "preprocess" / "face_track.npz").landmarks)
    after = audio_predicts_mouth(mel_features(root / "aud.wav"), mouth)
    assert SYNC_NATURAL[0] <= after["offset_frames"] <= SYNC_NATURAL[1], after


@pytest.mark.slow
def test_keep_audio_sync_keeps_the_sound_and_reruns_never_move_it_twice(early_sound_clip, early_sound_dataset,
                                                                        tmp_path):
    from embedtalk_sdk.cli import app
    from embedtalk_sdk.preprocess.preprocess import preprocess

    root, record = early_sound_dataset
    corrected = _wav(root / "aud.wav")
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    video, early = early_sound_clip["video"], early_sound_clip["early"]
    again = preprocess(video, copy, _options(audio=str(early)))
    assert {s["status"] for s in again["steps"].values()} == {"skipped (already done)"}
    np.testing.assert_array_equal(_wav(copy / "aud.wav"), corrected)
    with pytest.warns(UserWarning, match="kept as it is"):
        result = CliRunner().invoke(app, ["preprocess", str(video), "-o", str(copy), "--audio", str(early),
                                          "--keep-audio-sync", "--points", "6000",
                                          "--face-model", str(model_file(FACE_LANDMARKER)),
                                          "--segmentation-model", str(model_file(SELFIE_SEGMENTATION))])
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())  # the console wraps long lines
    assert "s early against the mouth; kept as it is (--keep-audio-sync" in said
    log = json.loads((copy / "preprocess_log.json").read_text())
    assert {k for k, s in log["steps"].items() if s["status"] == "done"} == {"sync"}
    found = log["steps"]["sync"]["found"]
    assert found["out_of_sync"] and found["audio_shift_applied_s"] == 0.0 and "kept" in found["action"]
    np.testing.assert_allclose(_wav(copy / "aud.wav"), _wav(early)[: early_sound_clip["frames"] * 640], atol=1e-4)
    with pytest.warns(UserWarning, match="moved the sound"):
        back = preprocess(video, copy, _options(audio=str(early)))  # without the option: moved once, not twice
    applied = [r["steps"]["sync"]["found"]["audio_shift_applied_s"] for r in (back, record)]
    assert applied[0] == applied[1]
    np.testing.assert_array_equal(_wav(copy / "aud.wav"), corrected)


def test_resample_times_nearest_frame():
    from embedtalk_sdk.preprocess.preprocess import resample_times

    assert resample_times(np.arange(10) / 25).tolist() == list(range(10))  # 25 fps: identity
    idx = resample_times(np.arange(60) / 50)  # 50 fps: every other frame
    assert idx.tolist() == list(range(0, 60, 2))
    idx = resample_times(np.arange(36) / 30)  # 30 fps -> 25 fps: 30 frames, nearest in time
    t_src, t_out = np.arange(36) / 30, np.arange(30) / 25
    assert len(idx) == 30 and np.all(np.abs(t_src[idx] - t_out) <= 0.5 / 30 + 1e-9)


@pytest.mark.slow
def test_variable_frame_rate_clip_is_resampled_and_logged(tmp_path):
    _need_real()
    from embedtalk_sdk.preprocess.preprocess import preprocess, resample_times

    frames, audio = _may_frames(40)
    # a phone-like clip: frame intervals wander between 20 and 60 ms (1.56 s in all)
    gaps = np.resize([0.02, 0.06, 0.04, 0.03, 0.05], 39)
    times = np.concatenate([[0.0], np.cumsum(gaps)]).tolist()
    for k, f in enumerate(frames):  # a frame-number marker in the corner, to check which frame was taken
        f[:16, :16] = 6 * k
    video = _write_video(tmp_path / "vfr.mp4", frames, times=times, audio=audio[: int((times[-1] + 0.04) * 16000)])
    with pytest.warns(UserWarning, match="variable frame rate"):
        record = preprocess(video, tmp_path / "out", _options())
    found = record["steps"]["decode"]["found"]
    assert found["variable_rate"] and found["resampled"]
    expect = resample_times(np.array(times))
    assert found["frames"] == len(expect) == 40
    for k in (0, 7, 21, 39):
        marker = np.asarray(Image.open(tmp_path / "out" / "ori_imgs" / f"{k}.jpg"))[4:12, 4:12].mean()
        assert abs(marker - 6 * expect[k]) < 4, (k, marker, expect[k])
    assert any("variable frame rate" in w for w in record["warnings"])


# ---------------------------------------------------------------------------------------------
# A folder exactly as TalkingGaussian / ER-NeRF preprocessing leaves it.

_OPENFACE_AUS = ("AU01", "AU02", "AU04", "AU06", "AU09", "AU10", "AU12", "AU14", "AU15", "AU17", "AU20",
                 "AU23", "AU25", "AU26", "AU45")  # no AU05 / AU07 columns in this one


def _talkinggaussian_folder(src: Path, dst: Path, hubert_rows: int) -> np.ndarray:
    """Rewrite a synthetic dataset the way ER-NeRF's process.py + OpenFace + hubert.py leave it:
    transforms with focal_len/cx/cy only, ori_imgs/*.jpg + .lms, parsing/*.png, OpenFace au.csv
    (all OpenFace columns, ", "-separated, here without AU05/AU07), aud_hu.npy [M, 2, 1024], no
    points3d.npy. Returns the AU table written, [n, len(_OPENFACE_AUS)]."""
    shutil.copytree(src, dst)
    (dst / "points3d.npy").unlink()
    (dst / "parsing").mkdir()
    for split in ("train", "val"):
        meta = json.loads((dst / f"transforms_{split}.json").read_text())
        slim = {"focal_len": meta["focal_len"], "cx": meta["cx"], "cy": meta["cy"],
                "frames": [{"img_id": f["img_id"], "aud_id": f["aud_id"], "transform_matrix": f["transform_matrix"]}
                           for f in meta["frames"]]}
        (dst / f"transforms_{split}.json").write_text(json.dumps(slim, indent=2, separators=(",", ": ")))
    n = len(list((dst / "gt_imgs").glob("*.jpg")))
    for i in range(n):
        shutil.copy(dst / "gt_imgs" / f"{i}.jpg", dst / "ori_imgs" / f"{i}.jpg")
        Image.new("RGB", (64, 64), (255, 255, 255)).save(dst / "parsing" / f"{i}.png")
    rng = np.random.default_rng(5)
    aus = np.round(rng.uniform(0, 3, (n, len(_OPENFACE_AUS))), 2)
    header = ["frame", "face_id", "timestamp", "confidence", "success", *(f"{a}_r" for a in _OPENFACE_AUS),
              *(f"{a}_c" for a in _OPENFACE_AUS)]
    lines = [", ".join(header)]
    for i in range(n):
        lines.append(", ".join([str(i + 1), "0", f"{i * 0.04:.3f}", "0.98", "1", *(f"{v:.2f}" for v in aus[i]),
                                *("1.00" if v > 1 else "0.00" for v in aus[i])]))
    (dst / "au.csv").write_text("\n".join(lines) + "\n")
    np.save(dst / "aud_hu.npy", rng.standard_normal((hubert_rows, 2, 1024)).astype(np.float32))
    return aus


def test_talkinggaussian_folder_trains_with_its_hubert_features(tiny_dataset, tmp_path):
    from embedtalk_sdk.train.strategy import DensifyConfig
    from embedtalk_sdk.train.trainer import TrainConfig, Trainer

    root = tmp_path / "tg"
    n = len(TalkingDataset(tiny_dataset, "all"))
    aus = _talkinggaussian_folder(tiny_dataset, root, hubert_rows=n)
    ds = TalkingDataset(root, "all")
    assert (ds.width, ds.height, ds.fps, ds.points3d) == (64, 64, 25.0, None)  # size from cx, cy
    col = {a: k for k, a in enumerate(_OPENFACE_AUS)}
    np.testing.assert_allclose(ds.aus[:, 0], aus[:, col["AU01"]], atol=1e-6)
    np.testing.assert_allclose(ds.aus[:, 5], aus[:, col["AU45"]], atol=1e-6)
    assert np.all(ds.aus[:, [2, 4]] == 0)  # AU05 / AU07 absent: read as 0
    cfg = TrainConfig(iterations=3, init_points=800, lpips_every=0, audio_encoder="features",
                      densify=DensifyConfig(start=100, stop=200))
    trainer = Trainer(root, cfg, log=lambda m: None)
    assert trainer.features.shape == (2 * n, 1024)  # [M, 2, 1024] -> two 50 Hz rows per video frame
    assert trainer.deform.cfg.feature_dim == 1024 and len(trainer.gaussians) == 800  # random init: no cloud
    result = trainer.run(tmp_path / "run")
    assert result.checkpoint.meta["audio"]["encoder"] == "features" and np.isfinite(result.losses).all()


def test_truncated_faststart_video_is_refused(tmp_path):
    # Before: a faststart mp4 cut at half gave a dataset of 51 of 125 frames, exit 0, no warning.
    from embedtalk_sdk.preprocess.preprocess import PreprocessError, decode_video
    from embedtalk_sdk.runtime.video import write_mp4

    yy, xx = np.mgrid[0:64, 0:80]
    frames = [np.stack([(xx + 5 * k) % 256, (yy * 3 + k) % 256, np.full_like(xx, 90)], -1).astype(np.uint8)
              for k in range(125)]
    whole = tmp_path / "whole.mp4"
    write_mp4(whole, frames, audio=0.3 * np.sin(np.arange(125 * 640) / 9.0))  # faststart: the index comes first
    assert decode_video(whole, tmp_path / "a", 90, None).frames == 125
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(PreprocessError, match=r"only \d+ of the 125 frames the file declares could be decoded"):
        decode_video(cut, tmp_path / "b", 90, None)
