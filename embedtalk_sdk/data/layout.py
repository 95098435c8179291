"""Writer for the TalkingGaussian / ER-NeRF dataset folder (numpy only; layout in
docs/interfaces.md). The one place that knows the files' formats on the writing side: the
synthetic speaker (`embedtalk_sdk.synthetic`) and real-video preprocessing
(`embedtalk_sdk.preprocess`) both write through it; `dataset.TalkingDataset` reads them back.

The folder-wide files (transforms, au.csv, .npy) are written atomically, so a re-run that fails
midway leaves the old file whole; per-frame files, images and wavs are plain writes (a caller that
needs more wraps them, as preprocess does aud.wav and bc.jpg).
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image

from embedtalk_sdk.runtime.aus import CSV_COLUMNS
from embedtalk_sdk.runtime.fileio import atomic_write

VAL_SHARE = 1.0 / 11.0  # the last 1/11 of frames is the validation split
# JPEG images (ori_imgs, gt_imgs, bc.jpg): quality 95 with full-resolution chroma (4:4:4), so the
# lips' red keeps its edges; PNGs (torso_imgs, parsing) are lossless at zlib level PNG_LEVEL.
JPEG_QUALITY = 95
PNG_LEVEL = 1  # fast: preprocessing writes two PNGs per frame


def _save_options(suffix: str, quality: int, png_level: int) -> dict:
    if suffix == ".jpg":
        return {"format": "JPEG", "quality": quality, "subsampling": 0}
    if suffix == ".png":
        return {"format": "PNG", "compress_level": png_level}
    raise ValueError(f"{suffix!r}: a dataset image is .jpg or .png")


def write_image(path: str | Path, image: np.ndarray | Image.Image, quality: int = JPEG_QUALITY,
                png_level: int = PNG_LEVEL) -> None:
    """A dataset image, by its suffix: .jpg (ori_imgs, gt_imgs, bc.jpg) or .png (torso_imgs,
    parsing); image: uint8 [H,W,3] RGB or [H,W,4] RGBA, or a PIL image."""
    im = image if isinstance(image, Image.Image) else Image.fromarray(image)
    im.save(path, **_save_options(Path(path).suffix, quality, png_level))


def encode_image(image: np.ndarray | Image.Image, suffix: str, quality: int = JPEG_QUALITY,
                 png_level: int = PNG_LEVEL) -> bytes:
    """The bytes `write_image` would write to a file with this suffix (for an image written to many frames)."""
    im = image if isinstance(image, Image.Image) else Image.fromarray(image)
    buf = io.BytesIO()
    im.save(buf, **_save_options(suffix, quality, png_level))
    return buf.getvalue()


def write_wav(path: str | Path, samples: np.ndarray, sample_rate: int = 16000) -> Path:
    """Mono PCM16 wav (aud.wav, or any test sentence); samples [S] float, clipped to [-1, 1]."""
    sf.write(str(path), np.clip(samples, -1, 1), sample_rate, subtype="PCM_16")
    return Path(path)


def write_transforms(out: str | Path, c2w_gl: np.ndarray, focal: float, cx: float, cy: float,
                     width: int, height: int, fps: float) -> int:
    """transforms_train.json (the first 10/11 of frames) and transforms_val.json (the rest).

    c2w_gl: [n,4,4] OpenGL camera-to-world of frames 0..n-1 (img_id = aud_id = frame index).
    Returns the number of training frames.
    """
    out = Path(out)
    n = len(c2w_gl)
    n_train = int(n * (1 - VAL_SHARE))
    for split, ids in (("train", range(n_train)), ("val", range(n_train, n))):
        meta = {"focal_len": float(focal), "cx": cx, "cy": cy, "w": width, "h": height, "fps": fps,
                "frames": [{"img_id": i, "aud_id": i, "transform_matrix": np.round(c2w_gl[i], 8).tolist()}
                           for i in ids]}
        atomic_write(out / f"transforms_{split}.json", json.dumps(meta, indent=1).encode())
    return n_train


def write_au_csv(path: str | Path, aus: np.ndarray, fps: float,
                 columns: tuple[str, ...] = CSV_COLUMNS, found: np.ndarray | None = None) -> None:
    """OpenFace-style au.csv: 1-based frame, timestamp, one column per AU, ", " separators.

    aus: [n, len(columns)] intensities 0..5, row k = frame k. found: [n] bool, a face tracked in
    frame k; when given, OpenFace's face_id / confidence / success columns are written too.
    """
    head = ["frame", "timestamp"] if found is None else ["frame", "face_id", "timestamp", "confidence", "success"]
    lines = [", ".join([*head, *columns])]
    for i, row in enumerate(aus):
        if found is None:
            meta = [str(i + 1), f"{i / fps:.3f}"]
        else:
            meta = [str(i + 1), "0", f"{i / fps:.3f}", "0.98" if found[i] else "0.00", "1" if found[i] else "0"]
        lines.append(", ".join([*meta, *(f"{v:.2f}" for v in row)]))
    atomic_write(path, ("\n".join(lines) + "\n").encode())


def write_landmarks(path: str | Path, lms: np.ndarray) -> None:
    """ori_imgs/{i}.lms: [68,2] pixel (x, y), one "x y" line per landmark."""
    Path(path).write_text("".join(f"{x:.2f} {y:.2f}\n" for x, y in lms))


def write_npy(path: str | Path, arr: np.ndarray) -> None:
    """points3d.npy ([P,6] float32 xyz + rgb in [0,1]) or aud_hu.npy ([M,2,1024] float32)."""
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    atomic_write(path, buf.getvalue())
