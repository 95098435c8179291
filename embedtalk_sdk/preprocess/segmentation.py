"""Person / background separation and the head / torso split (offline; mediapipe for the person mask).

- Person: MediaPipe selfie segmentation (`selfie_segmentation.tflite` through `vision.ImageSegmenter`
  with confidence masks), a soft mask in [0, 1].
- Head vs torso: from the face landmarks. The boundary is the lower face oval from one jaw angle
  over the chin to the other (MediaPipe 132 ... 152 ... 361), pushed down by `chin_margin` of the
  face height, and continued horizontally to the image edges from the jaw angles. Person pixels above
  it are head (face, hair, ears), below it torso (neck, shoulders; hair falling below the jaw angles
  too).
- Parsing labels in the ER-NeRF colours (RGB): head (0,0,255), neck (0,255,0), torso (255,0,0),
  background (255,255,255). Neck = torso pixels between the jaw angles.
- Background: per-pixel temporal median over frames where the pixel is surely background (person
  confidence < 0.1 after dilation); pixels never seen (behind the head) are filled from the nearest
  seen pixels and smoothed (`inpaint`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from embedtalk_sdk.preprocess.face import JAW_CHAIN, check_model, load_mediapipe

PARSING_COLOURS = {"head": (0, 0, 255), "neck": (0, 255, 0), "torso": (255, 0, 0), "background": (255, 255, 255)}


class PersonSegmenter:
    """Selfie segmentation: `mask(frame)` -> person confidence [H, W] float32. A context manager.

    Frames are independent (the model has no temporal state), so any frame order works."""

    def __init__(self, model_path: str | Path) -> None:
        mp, base_options, vision = load_mediapipe()
        self._mp = mp
        path = check_model(model_path, "selfie segmentation", "--segmentation-model")
        opts = vision.ImageSegmenterOptions(
            base_options=base_options(model_asset_path=str(path)), running_mode=vision.RunningMode.IMAGE,
            output_confidence_masks=True, output_category_mask=False,
        )  # fmt: skip
        try:
            self._task = vision.ImageSegmenter.create_from_options(opts)
        except Exception as e:
            raise ValueError(f"{path}: not a usable segmentation model ({e}); give selfie_segmentation.tflite") from e

    def __enter__(self) -> "PersonSegmenter":
        return self

    def __exit__(self, *exc) -> None:
        if self._task is not None:
            self._task.close()
            self._task = None

    def close(self) -> None:
        self.__exit__()

    def mask(self, frame: np.ndarray) -> np.ndarray:
        image = self._mp.Image(image_format=self._mp.ImageFormat.SRGB, data=np.ascontiguousarray(frame))
        res = self._task.segment(image)
        m = res.confidence_masks[-1].numpy_view()  # person confidence (the last / only category)
        return np.clip(np.asarray(m, np.float32).reshape(frame.shape[:2]), 0.0, 1.0)


def head_region(landmarks: np.ndarray, width: int, height: int, chin_margin: float = 0.03) -> np.ndarray:
    """bool [H, W]: pixels above the head / neck boundary (see the module docstring).

    landmarks: [478, >=2] pixel landmarks of the frame.
    """
    jaw = landmarks[JAW_CHAIN, :2].astype(np.float64)
    face_h = float(np.ptp(landmarks[:, 1]))
    jaw = jaw + np.array([0.0, chin_margin * face_h])
    left, right = jaw[0], jaw[-1]
    if left[0] > right[0]:  # subject's right jaw angle is on the image left unless the face is mirrored
        jaw, left, right = jaw[::-1], right, left
    poly = [(-1.0, float(left[1])), *map(tuple, jaw.tolist()), (width + 1.0, float(right[1])),
            (width + 1.0, -1.0), (-1.0, -1.0)]
    img = Image.new("L", (width, height), 0)
    ImageDraw.Draw(img).polygon(poly, fill=1)
    return np.asarray(img, dtype=bool)


_LABEL_LUT = np.array([PARSING_COLOURS[k] for k in ("background", "head", "torso", "neck")], np.uint8)


def split_person(person: np.ndarray, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Soft person mask [H,W] + landmarks -> (head alpha, torso alpha, labels uint8 [H,W]: 0 background,
    1 head, 2 torso, 3 neck; `parsing_image` turns them into the ER-NeRF colours)."""
    h, w = person.shape
    head = head_region(landmarks, w, h)
    head_a = person * head
    torso_a = person - head_a
    lab = (person > 0.5).view(np.uint8) * np.uint8(2)  # 2: torso
    lab[head & (lab > 0)] = 1  # 1: head
    jaw = landmarks[JAW_CHAIN, 0]
    x0, x1 = max(int(np.ceil(jaw.min())), 0), min(int(np.floor(jaw.max())) + 1, w)
    y1 = min(max(int(landmarks[:, 1].max() + 0.6 * np.ptp(landmarks[:, 1])), 0), h)
    sub = lab[:y1, x0:x1]
    sub[sub == 2] = 3  # 3: neck, torso between the jaw angles down to 0.6 face heights below the chin
    return head_a, torso_a, lab


def parsing_image(labels: np.ndarray) -> Image.Image:
    """Labels [H,W] (0..3) -> a palette PNG image whose RGB is the ER-NeRF parsing colours."""
    lab = np.ascontiguousarray(labels, dtype=np.uint8)
    im = Image.frombytes("P", (lab.shape[1], lab.shape[0]), lab.tobytes())
    im.putpalette(_LABEL_LUT.reshape(-1).tolist())
    return im


def extend_neck(rgb: np.ndarray, torso_a: np.ndarray, head_a: np.ndarray, landmarks: np.ndarray,
                length: float = 0.12) -> tuple[np.ndarray, np.ndarray]:
    """Continue the neck upwards under the head (as ER-NeRF's torso images do).

    In each column between the jaw angles, the topmost torso pixel's colour (slightly darkened) is
    copied up to `length` x face height into the head region, with alpha 1. Training never sees
    these pixels (the head covers them); at playback they fill the gap when a rendered jaw sits
    higher than the torso frame's. Returns new (rgb uint8 [H,W,3], torso alpha [H,W]).
    """
    h, w = torso_a.shape
    jaw = landmarks[JAW_CHAIN, 0]
    x0, x1 = max(int(np.ceil(jaw.min())), 0), min(int(np.floor(jaw.max())), w - 1)
    run = int(round(length * float(np.ptp(landmarks[:, 1]))))
    if x1 <= x0 or run < 1:
        return rgb, torso_a
    rgb, alpha = rgb.copy(), torso_a.copy()
    solid = torso_a[:, x0:x1 + 1] > 0.5
    cols = np.flatnonzero(solid.any(axis=0))
    if len(cols) == 0:
        return rgb, alpha
    top = np.argmax(solid, axis=0)[cols]  # first torso row per column
    xs = x0 + cols
    up = np.arange(1, run + 1)[:, None]  # [run, 1]
    ks = top[None, :] - up  # rows above the neck's top, [run, m]
    xx = np.broadcast_to(xs[None, :], ks.shape)
    ok = ks >= 0
    ok[ok] = head_a[ks[ok], xx[ok]] > 0.05
    shade = np.broadcast_to(0.985 ** up, ks.shape)[ok]
    src = rgb[top, xs].astype(np.float32)  # [m, 3]
    src = np.broadcast_to(src[None], ks.shape + (3,))[ok]
    rgb[ks[ok], xx[ok]] = np.clip(src * shade[:, None], 0, 255).astype(np.uint8)
    alpha[ks[ok], xx[ok]] = 1.0
    return rgb, alpha


def background_from_frames(frames: np.ndarray, person: np.ndarray, threshold: float = 0.1,
                           grow: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Clean background from sample frames.

    frames: [k, H, W, 3] uint8, person: [k, H, W] confidences. A pixel counts as background in a
    frame when the person confidence, dilated by `grow` pixels, is below `threshold`.
    Returns (background uint8 [H,W,3], seen bool [H,W]); unseen pixels are inpainted.
    """
    k, h, w, _ = frames.shape
    near = np.stack([ndimage.maximum_filter((p >= threshold).view(np.uint8), size=2 * grow + 1) for p in person])
    bg_mask = near == 0
    seen = bg_mask.any(axis=0)
    count = bg_mask.sum(axis=0)
    out = np.zeros((h, w, 3), np.float32)
    for r0 in range(0, h, 64):  # rows in blocks: bounded memory for long clips / big frames
        block = frames[:, r0:r0 + 64].astype(np.float32)
        block[~bg_mask[:, r0:r0 + 64]] = np.nan
        block.sort(axis=0)  # NaNs (person pixels) sort last
        c = count[r0:r0 + 64][None, :, :, None]
        lo = np.take_along_axis(block, np.maximum((c - 1) // 2, 0), axis=0)[0]
        hi = np.take_along_axis(block, np.maximum(c // 2, 0).clip(max=k - 1), axis=0)[0]
        out[r0:r0 + 64] = np.nan_to_num((lo + hi) / 2.0)
    out[~seen] = 0.0
    return inpaint(np.clip(np.round(out), 0, 255).astype(np.uint8), seen), seen


def inpaint(image: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Fill pixels where ~known smoothly from the known ones (push-pull: average the known pixels
    down an image pyramid until every cell has some, then fill each level's holes from the coarser
    level, upsampled bilinearly). image: uint8 [H,W,3]. Known pixels are unchanged."""
    if known.all():
        return image
    if not known.any():
        return np.full_like(image, 128)
    w0 = known.astype(np.float64)
    levels = [(image.astype(np.float64) * w0[..., None], w0)]
    while levels[-1][1].shape[0] > 1 or levels[-1][1].shape[1] > 1:
        c, w = levels[-1]
        h2, w2 = (c.shape[0] + 1) // 2, (c.shape[1] + 1) // 2
        cp = np.zeros((2 * h2, 2 * w2, 3))
        wp = np.zeros((2 * h2, 2 * w2))
        cp[:c.shape[0], :c.shape[1]], wp[:w.shape[0], :w.shape[1]] = c, w
        cs = cp.reshape(h2, 2, w2, 2, 3).sum(axis=(1, 3))
        ws = wp.reshape(h2, 2, w2, 2).sum(axis=(1, 3))
        levels.append((cs, ws))
        if (ws > 0).all():
            break
    c, w = levels[-1]
    fill = c / np.maximum(w, 1e-12)[..., None]
    for c, w in reversed(levels[:-1]):
        h, wd = w.shape
        zoom = (h / fill.shape[0], wd / fill.shape[1], 1)
        up = ndimage.zoom(fill, zoom, order=1, mode="nearest", grid_mode=True)[:h, :wd]
        mean = c / np.maximum(w, 1e-12)[..., None]
        a = np.clip(w, 0, 1)[..., None]  # cells with any known pixel keep their own mean
        fill = mean * a + up * (1 - a)
    out = image.copy()
    out[~known] = np.clip(np.round(fill[~known]), 0, 255).astype(np.uint8)
    return out
