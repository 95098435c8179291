"""`embedtalk-sdk eval`: a trained avatar against its dataset's held-out frames.

Renders the validation split (the last 1/11 of frames) with the dataset's own cameras, torso images,
AUs and audio, from a checkpoint (the training-side torch model, on the device and rasteriser training
would pick) or from a bundle (through `Avatar.render_frames`, any runtime backend; needs no PyTorch,
LPIPS is then null), and compares with the ground truth:
PSNR, SSIM, LPIPS, LMD on mouth landmarks and an offline audio-visual sync measure
(`embedtalk_sdk.metrics`; the sync measure is NOT SyncNet's Sync-C, see there). The same sync
measure on the ground-truth frames is reported beside it as the reference.

Writes OUT/eval.json (summary + per-frame values), OUT/side_by_side.mp4 (ground truth | render,
with the clip's audio), OUT/lip_motion.png (mouth opening of both over time), OUT/mouth_strip.png
(the truth's widest and most closed mouths above the audio-only render's) and OUT/frames/*.png (a
few side-by-side stills).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from embedtalk_sdk.data.dataset import TalkingDataset
from embedtalk_sdk.mouth_strip import box_around, save_mouth_strip, strip_picks
from embedtalk_sdk.metrics import audio_envelope, av_sync, lip_motion, lmd, lpips_distance, psnr, ssim
from embedtalk_sdk.model_files import FACE_LANDMARKER, ModelFileError, model_file
from embedtalk_sdk.runtime.errors import EmbedTalkError
from embedtalk_sdk.runtime.pixels import to_uint8

SYNC_NOTE = ("offline audio-visual sync: correlation of audio log-RMS and landmark mouth opening over offsets "
             "of +-15 frames; NOT SyncNet Sync-C (no SyncNet weights offline)")
STILLS = 4


class EvalError(EmbedTalkError, ValueError):
    """Inputs eval cannot use; the message names the file and what to do."""


def _is_bundle(path: Path) -> bool:
    return path.suffix in (".etk", ".zip") or (path.is_dir() and (path / "manifest.json").exists())


# ---------------------------------------------------------------------------------------------
# Rendering the validation split.


def _checkpoint_frames(ckpt_path: Path, data: Path | None,
                       neutral_aus: bool = False) -> tuple[TalkingDataset, Iterator[np.ndarray], dict]:
    """The validation frames of a checkpoint, driven by their own AUs or (neutral_aus) by the
    model's neutral AUs, as `speak` drives it."""
    import torch

    from embedtalk_sdk.audio.features import FeatureSource, dataset_features
    from embedtalk_sdk.model.checkpoint import Checkpoint
    from embedtalk_sdk.runtime.aus import AU_SCALE
    from embedtalk_sdk.train.render import FrameData, pick_rasterizer, render_frame
    from embedtalk_sdk.train.trainer import pick_device

    ckpt = Checkpoint.load(ckpt_path)
    meta = ckpt.require_meta(ckpt_path, ("aus",))
    root = Path(data) if data else Path(meta.get("data_dir", ""))
    if not root.is_dir():
        raise EvalError(f"{ckpt_path}: its dataset {root} is not there; pass --data DATASET")
    ds = TalkingDataset(root, "val")
    if (ds.width, ds.height) != (meta.get("width", ds.width), meta.get("height", ds.height)):
        raise EvalError(f"{root}: frames are {ds.width}x{ds.height}, the checkpoint was trained on "
                        f"{meta['width']}x{meta['height']}; pass the dataset it was trained on")
    encoder = meta.get("audio", {}).get("encoder", "mel")
    hubert = meta.get("train", {}).get("hubert_path")
    _, feats = dataset_features(encoder, FeatureSource(ds.audio_path, hubert, root / "aud_hu.npy", meta.get("audio")))
    device = pick_device("auto")  # and the rasteriser for it, as training picks them
    rasterizer = pick_rasterizer("auto", device)
    frames = FrameData(ds, feats, ckpt.deform.cfg.window, device)
    if neutral_aus:
        frames.aus[:] = torch.as_tensor(meta["aus"]["neutral"]) / AU_SCALE
    g, net = ckpt.gaussians.to(device).eval(), ckpt.deform.to(device).eval()

    def gen() -> Iterator[np.ndarray]:
        with torch.no_grad():
            for i in range(len(ds)):
                image, _, _ = render_frame(g, net, frames, i, rasterizer)
                yield to_uint8(image.cpu().numpy())

    return ds, gen(), {"kind": "checkpoint", "audio_encoder": encoder, "gaussians": len(g), "rasterizer": rasterizer}


def _bundle_frames(bundle_path: Path, data: Path | None, backend: str,
                   neutral_aus: bool = False) -> tuple[TalkingDataset, Iterator[np.ndarray], dict]:
    """The validation frames of a bundle, driven by their own AUs or (neutral_aus) by its neutral AUs."""
    from embedtalk_sdk.runtime.avatar import Avatar

    if data is None:
        raise EvalError(f"{bundle_path}: a bundle does not name its dataset; pass --data DATASET")
    avatar = Avatar.load(bundle_path, backend=backend)
    ds = TalkingDataset(data, "val")
    if (ds.width, ds.height) != (avatar.width, avatar.height):
        raise EvalError(f"{data}: frames are {ds.width}x{ds.height}, the bundle renders "
                        f"{avatar.width}x{avatar.height}; pass the dataset it was trained on")
    encoder = avatar.audio_encoder
    if encoder.from_audio:
        feats = avatar.audio_features(ds.audio_path)
    else:
        from embedtalk_sdk.audio.features import precomputed_features

        path = Path(data) / "aud_hu.npy"
        if not path.is_file():
            raise EvalError(f"{bundle_path}: uses {encoder.name} features; the dataset has no aud_hu.npy")
        feats = precomputed_features(path)
    windows = avatar.feature_windows(feats, ds.aud_ids)
    backgrounds = _LazyBackgrounds(ds)
    aus = ds.aus
    if neutral_aus:
        aus = np.broadcast_to(np.asarray(avatar.bundle.manifest["aus"]["neutral"], np.float32), ds.aus.shape)
    frames = avatar.render_frames(windows, aus, ds.viewmats, backgrounds)
    return ds, frames, {"kind": "bundle", "backend": avatar.backend_name, "audio_encoder": encoder.name}


def _lpips_metric(weights: str | None) -> tuple[object | None, str]:
    """(LPIPS network or None, the note eval.json gives for it). LPIPS needs PyTorch and its
    backbone file: without either, eval goes on with lpips null and the note says why (a
    `weights` path that is not a file raises ModelFileError)."""
    try:
        from embedtalk_sdk.train.lpips import load_lpips
    except ImportError as e:
        return None, f"LPIPS off: it needs PyTorch ({e}); pip install 'embedtalk-sdk[train]'"
    try:
        return load_lpips(weights), "LPIPS v0.1 AlexNet"
    except ModelFileError as e:
        if weights is not None:  # a path the user gave: a typo is an error, not a missing metric
            raise
        return None, f"LPIPS off: {e}"  # a metric, not the model: the report says why it is null


class _LazyBackgrounds:
    """ds.torso_bg(i) as a sequence, read when asked for."""

    def __init__(self, ds: TalkingDataset) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.ds.torso_bg(i)


# ---------------------------------------------------------------------------------------------
# Landmarks of ground truth and renders.


def _mouth_landmarks(landmarker, frame: np.ndarray) -> np.ndarray | None:
    faces = landmarker.detect(frame)
    return faces[0]["landmarks"] if faces else None


def _landmarks_of(face_model: Path, frames: Iterator[np.ndarray], n: int,
                  keep: Iterable[int] = ()) -> tuple[list[np.ndarray | None], dict[int, np.ndarray]]:
    """Face landmarks of the first n frames (None where no face is found), and the frames `keep` names."""
    from embedtalk_sdk.preprocess.face import FaceLandmarker

    wanted, kept, marks = set(keep), {}, []
    with FaceLandmarker(face_model, num_faces=1, video=False) as landmarker:
        for i, frame in zip(range(n), frames):
            marks.append(_mouth_landmarks(landmarker, frame))
            if i in wanted:
                kept[i] = frame
    return marks, kept


def _save_audio_only_strip(ds: Any, frames: dict[int, np.ndarray], landmarks: dict[int, np.ndarray],
                           opening: np.ndarray, path: Path) -> None:
    """mouth_strip.png: the truth's widest and most closed mouths above the audio-only render's."""
    from embedtalk_sdk.preprocess.face import MOUTH_IBUG, to_ibug68

    if not frames:
        return
    boxes = {k: box_around(to_ibug68(lm[None])[0, MOUTH_IBUG, :2], ds.width, ds.height) for k, lm in landmarks.items()}
    truth = {k: to_uint8(ds.image(k))[y0:y1, x0:x1] for k, (x0, y0, x1, y1) in boxes.items()}
    save_mouth_strip(frames, truth, boxes, opening, path, picks=list(frames), label="audio only")


def _fill(values: list[float | None]) -> np.ndarray:
    x = np.array([np.nan if v is None else v for v in values], np.float64)
    ok = np.isfinite(x)
    if not ok.any():
        return np.zeros_like(x)
    return np.interp(np.arange(len(x)), np.flatnonzero(ok), x[ok])


def _openings(landmarks: list[np.ndarray | None]) -> np.ndarray:
    """The inner-lip gap over the eye span per frame, frames without a face interpolated."""
    from embedtalk_sdk.preprocess.face import mouth_opening

    return _fill([None if x is None else float(mouth_opening(x)) for x in landmarks])


# ---------------------------------------------------------------------------------------------
# evaluate, step by step.

RenderFn = Callable[[bool], tuple[TalkingDataset, Iterator[np.ndarray], dict]]


def _renderer(model: Path, data: Path | None, out: str | Path | None, backend: str) -> tuple[RenderFn, Path]:
    """render(neutral_aus) of the validation split for a checkpoint or a bundle, and the output folder
    (OUT, or RUN/eval for a checkpoint, <bundle>_eval beside a bundle)."""
    if _is_bundle(model):
        return (lambda neutral_aus: _bundle_frames(model, data, backend, neutral_aus),
                Path(out) if out else model.with_name(model.stem + "_eval"))
    return lambda neutral_aus: _checkpoint_frames(model, data, neutral_aus), Path(out) if out else model.parent / "eval"


def _speech(ds: TalkingDataset, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The dataset's 16 kHz speech, and the part under the first n validation frames."""
    from embedtalk_sdk.runtime.audio.io import load_audio

    samples = load_audio(ds.audio_path, 16000)
    hop = 16000 / ds.fps
    return samples, samples[int(round(ds.aud_ids[0] * hop)):int(round((ds.aud_ids[n - 1] + 1) * hop))]


@dataclass
class _FrameMeasures:
    """What the pass over the rendered frames measures: per-frame metrics and both sides' landmarks."""

    per: dict[str, list]
    lm_gt: list[np.ndarray | None] = field(default_factory=list)
    lm_pred: list[np.ndarray | None] = field(default_factory=list)


def _side_by_side(ds: TalkingDataset, frames: Iterator[np.ndarray], n: int, landmarker, lp: object | None,
                  measures: _FrameMeasures, stills: set[int], stills_dir: Path,
                  progress: Callable[[int, int], None] | None) -> Iterator[np.ndarray]:
    """Ground truth | render per frame, measuring each as the video encoder pulls it (frames are
    never all in memory); writes the `stills` frames as PNGs."""
    from PIL import Image

    per = measures.per
    for i, render in zip(range(n), frames):
        gt8 = to_uint8(ds.image(i))
        gt, pred = gt8.astype(np.float32) / 255, render.astype(np.float32) / 255
        per["psnr"].append(round(psnr(pred, gt), 4))
        per["ssim"].append(round(ssim(pred, gt), 5))
        per["lpips"].append(round(lpips_distance(lp, pred, gt), 5) if lp is not None else None)
        measures.lm_gt.append(_mouth_landmarks(landmarker, gt8))
        measures.lm_pred.append(_mouth_landmarks(landmarker, render))
        pair = np.concatenate([gt8, render], axis=1)
        if i in stills:
            Image.fromarray(pair).save(stills_dir / f"val_{i:04d}.png")
        if progress:
            progress(i + 1, n)
        yield pair


def _measure_and_write_video(ds: TalkingDataset, frames: Iterator[np.ndarray], n: int, face_model: Path,
                             lp: object | None, clip: np.ndarray, out: Path, stills: int,
                             progress: Callable[[int, int], None] | None) -> _FrameMeasures:
    """OUT/side_by_side.mp4 (with the clip's speech) and OUT/frames/*.png; the frames' measures."""
    from embedtalk_sdk.preprocess.face import FaceLandmarker
    from embedtalk_sdk.runtime.video import write_mp4

    measures = _FrameMeasures({"psnr": [], "ssim": [], "lpips": [], "lmd": [None] * n})
    still_ids = set(np.linspace(0, n - 1, min(stills, n)).round().astype(int).tolist())
    with FaceLandmarker(face_model, num_faces=1, video=False) as landmarker:
        pairs = _side_by_side(ds, frames, n, landmarker, lp, measures, still_ids, out / "frames", progress)
        write_mp4(out / "side_by_side.mp4", pairs, fps=ds.fps, audio=clip if len(clip) else None)
    return measures


def _mouth_distance(measures: _FrameMeasures) -> tuple[dict, int]:
    """LMD over the frames where both sides have a face (fills per_frame["lmd"]), and their count."""
    from embedtalk_sdk.preprocess.face import MOUTH_IBUG, interocular, to_ibug68

    lm_gt, lm_pred = measures.lm_gt, measures.lm_pred
    both = [k for k in range(len(lm_gt)) if lm_gt[k] is not None and lm_pred[k] is not None]
    if not both:
        return {"lmd": None, "lmd_norm": None}, 0
    g = to_ibug68(np.stack([lm_gt[k] for k in both]))[:, MOUTH_IBUG, :2]
    p = to_ibug68(np.stack([lm_pred[k] for k in both]))[:, MOUTH_IBUG, :2]
    mouth = lmd(g, p, interocular(np.stack([lm_gt[k] for k in both])))
    for k, d in zip(both, np.linalg.norm(g - p, axis=-1).mean(axis=1)):
        measures.per["lmd"][k] = round(float(d), 4)
    return mouth, len(both)


def _audio_only(render: RenderFn, face_model: Path, n: int, ds: TalkingDataset, lm_gt: list[np.ndarray | None],
                open_gt: np.ndarray, strip: Path) -> np.ndarray:
    """The mouth opening of the same frames driven by the audio alone (neutral AUs, as `speak`
    renders: the ground-truth AUs can carry mouth motion that no application has, issue 9); writes
    `strip` (mouth_strip.png) where a face was found."""
    picks = [k for k in strip_picks(open_gt) if lm_gt[k] is not None]
    lm_audio, audio_frames = _landmarks_of(face_model, render(True)[1], n, keep=picks)
    strip.unlink(missing_ok=True)  # an earlier eval's, for other frames
    _save_audio_only_strip(ds, audio_frames, {k: lm_gt[k] for k in picks}, open_gt, strip)
    return _openings(lm_audio)


def _summary(per: dict[str, list], mouth: dict, lmd_frames: int, lips: dict, sync: dict, sync_gt: dict) -> dict:
    """eval.json's "metrics": means of the per-frame values, LMD, lip motion and sync."""

    def mean(key: str) -> float | None:
        vals = [v for v in per[key] if v is not None]
        return round(float(np.mean(vals)), 4) if vals else None

    return {
        "psnr": mean("psnr"), "ssim": mean("ssim"), "lpips": mean("lpips"),
        "lmd": None if mouth["lmd"] is None else round(mouth["lmd"], 4),
        "lmd_norm": None if mouth["lmd_norm"] is None else round(mouth["lmd_norm"], 4),
        "lmd_frames": lmd_frames, **lips,
        "sync_offset_frames": sync["offset_frames"], "sync_correlation": sync["correlation"],
        "sync_confidence": sync["confidence"], "sync_correlation_at_zero": sync["correlation_at_zero"],
        "gt_sync_offset_frames": sync_gt["offset_frames"], "gt_sync_correlation": sync_gt["correlation"],
        "gt_sync_confidence": sync_gt["confidence"],
    }  # fmt: skip


def _notes(lpips_note: str) -> dict:
    return {
        "sync": SYNC_NOTE,
        "lmd": "mean L2 (pixels) over the 20 iBUG mouth landmarks 48-67 from MediaPipe, GT vs render; "
               "lmd_norm = per-frame distance / GT outer-eye-corner distance x 100",
        "lips": "lip_corr / lip_amplitude_ratio: inner-lip gap (landmarks 13/14) over the eye span, render vs "
                "ground truth on the same frames: Pearson r and std(render) / std(truth); 1 / 1 is perfect. "
                "*_audio_only: the frames rendered with the neutral AUs, as speak() drives the avatar",
        "ssim": "Gaussian 11x11, sigma 1.5, K1=0.01, K2=0.03, valid window positions, mean over RGB",
        "lpips": lpips_note,
    }


def evaluate(
    model: str | Path, data: str | Path | None = None, out: str | Path | None = None,
    face_model: str | Path | None = None, lpips_weights: str | None = None, backend: str = "auto",
    max_frames: int = 0, progress: Callable[[int, int], None] | None = None, stills: int = STILLS,
) -> dict:
    """Evaluate a checkpoint (RUN/ckpt.pt) or a bundle (with data=) on the validation split.

    Returns the report written to OUT/eval.json. OUT defaults to RUN/eval (checkpoint) or
    <bundle>_eval beside the bundle. face_model / lpips_weights: None finds them as every model
    file is found (embedtalk_sdk.model_files); a missing face model raises ModelFileError, a
    missing LPIPS backbone leaves lpips null with the reason in the report's notes.
    """
    model = Path(model)
    if not model.exists():
        raise EvalError(f"{model}: no such checkpoint or bundle")
    render, out = _renderer(model, Path(data) if data else None, out, backend)
    ds, frames, info = render(False)
    face_model = model_file(FACE_LANDMARKER, face_model, "--face-model")
    out.mkdir(parents=True, exist_ok=True)
    (out / "frames").mkdir(exist_ok=True)
    n = len(ds) if max_frames <= 0 else min(max_frames, len(ds))
    lp, lpips_note = _lpips_metric(lpips_weights)
    samples, clip = _speech(ds, n)
    t0 = time.perf_counter()
    measures = _measure_and_write_video(ds, frames, n, face_model, lp, clip, out, stills, progress)
    render_seconds = time.perf_counter() - t0
    mouth, lmd_frames = _mouth_distance(measures)
    env = audio_envelope(samples, int(ds.aud_ids.max()) + 1, ds.fps)[ds.aud_ids[:n]]
    open_pred, open_gt = _openings(measures.lm_pred), _openings(measures.lm_gt)
    sync, sync_gt = av_sync(open_pred, env), av_sync(open_gt, env)
    open_audio = _audio_only(render, face_model, n, ds, measures.lm_gt, open_gt, out / "mouth_strip.png")
    lips = {**lip_motion(open_gt, open_pred),
            **{f"{k}_audio_only": v for k, v in lip_motion(open_gt, open_audio).items()}}
    report = {
        "model": str(model), "data": str(ds.root), "split": "val", "frames": n,
        "size": [ds.width, ds.height], **info,
        "metrics": _summary(measures.per, mouth, lmd_frames, lips, sync, sync_gt),
        "notes": _notes(lpips_note),
        "sync_curve": sync["curve"], "gt_sync_curve": sync_gt["curve"],
        "per_frame": measures.per, "seconds": round(render_seconds, 1),
        "mouth_opening": {"truth": open_gt.round(5).tolist(), "render": open_pred.round(5).tolist(),
                          "render_audio_only": open_audio.round(5).tolist()},
        "files": {"json": str(out / "eval.json"), "video": str(out / "side_by_side.mp4"),
                  "frames": str(out / "frames")},
    }  # fmt: skip
    save_lip_plot(open_gt, open_pred, open_audio, ds.fps, lips, out / "lip_motion.png")
    report["files"]["lip_plot"] = str(out / "lip_motion.png")
    if (out / "mouth_strip.png").is_file():
        report["files"]["mouth_strip"] = str(out / "mouth_strip.png")
    (out / "eval.json").write_text(json.dumps(report, indent=1))
    return report


def save_lip_plot(truth: np.ndarray, render: np.ndarray, audio_only: np.ndarray, fps: float, lips: dict,
                  path: Path) -> None:
    """PNG: the mouth opening of ground truth, render and audio-only render over the held-out frames."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def fmt(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.2f}"

    t = np.arange(len(truth)) / fps
    fig, ax = plt.subplots(figsize=(8, 3.3), dpi=100)
    ax.plot(t, truth, lw=1.4, color="k", label="ground truth")
    ax.plot(t, render, lw=1.1, label=f"render (r {fmt(lips['lip_corr'])}, amplitude {fmt(lips['lip_amplitude_ratio'])})")
    ax.plot(t, audio_only, lw=1.1, label=f"audio only, neutral AUs (r {fmt(lips['lip_corr_audio_only'])}, "
                                          f"amplitude {fmt(lips['lip_amplitude_ratio_audio_only'])})")
    ax.set_xlabel("seconds (validation split)")
    ax.set_ylabel("inner-lip gap / eye span")
    ax.set_title("mouth opening on the held-out frames", fontsize=9)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3, frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
