"""Evaluation metrics (numpy; LPIPS needs torch). Images are float [H, W, 3] in [0, 1].

- `psnr`: 10 log10(1 / MSE) over all pixels and channels.
- `ssim`: Wang et al. 2004 with an 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, data
  range 1, computed per channel over the 'valid' window positions (no padding) and averaged: the
  definition of the reference MATLAB ssim_index and of skimage's structural_similarity(...,
  gaussian_weights=True, use_sample_covariance=False, data_range=1, channel_axis=-1).
- `lpips_distance`: LPIPS v0.1 AlexNet (Zhang et al. 2018) via `embedtalk_sdk.train.lpips`.
- `lmd`: landmark distance on the mouth: mean over frames and the 20 iBUG mouth landmarks (48-67,
  from MediaPipe's mesh) of the L2 distance in pixels between ground-truth and rendered frames;
  `lmd_norm` divides each frame's distance by the ground truth's outer-eye-corner distance
  (x 100: percent of the eye span), which makes it comparable across resolutions.
- `lip_motion`: how the render's mouth opening follows the truth's on the same frames: the inner-lip
  gap (MediaPipe landmarks 13/14) over the outer-eye-corner distance, per frame, for both; their
  Pearson correlation and the amplitude ratio std(render) / std(truth). Truth vs itself: 1 and 1; a
  mouth that does not move: 0 and 0.
- `av_sync`: an offline audio-visual sync measure. NOT SyncNet's Sync-C / offset (no SyncNet
  weights are available offline): the Pearson correlation between the audio envelope (log RMS per
  video frame) and the mouth-opening signal (inner-lip gap over the eye span, from landmarks), both
  high-passed (1 s Gaussian trend removed), at offsets of -15..15 frames. offset_frames > 0 means
  the mouth lags the audio; confidence = best correlation - median correlation over the offsets.
- `audio_predicts_mouth`: the same question asked the way the avatar learns it: a ridge regression
  from the audio features around each frame (4 rows = 80 ms, short so that the best offset is
  sharp; shifted by -15..15 frames) to its mouth opening, scored by the Pearson correlation of
  out-of-fold predictions (5 contiguous folds). The loudness envelope alone is a weak proxy on real
  speech (ted_lieu_hdtf_60s: 0.21 at a wrong -10 frames, -0.19 at 0); the log-mel rows are not
  (0.56 at -3 frames, i.e. the mouth leads by 0.12 s as in natural speech).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy.ndimage import gaussian_filter1d

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03
SYNC_MAX_OFFSET = 15
SYNC_HIGHPASS_FRAMES = 25.0


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of images in [0, 1] (inf for identical images)."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(1.0 / mse)


@lru_cache(maxsize=4)
def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """1-D normalised Gaussian taps [size] (the 2-D window is its outer product)."""
    x = np.arange(size) - (size - 1) / 2.0
    g = np.exp(-0.5 * (x / sigma) ** 2)
    return g / g.sum()


def _filter_valid(img: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable 'valid' correlation of [H, W] with the window g x g -> [H-k+1, W-k+1]."""
    k = len(g)
    h, w = img.shape
    rows = sum(g[i] * img[i:h - k + 1 + i, :] for i in range(k))
    return sum(g[j] * rows[:, j:w - k + 1 + j] for j in range(k))


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 1.0) -> float:
    """Mean SSIM of two images [H, W] or [H, W, C] (see the module docstring)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"ssim: shapes differ {a.shape} vs {b.shape}")
    if a.ndim == 2:
        a, b = a[..., None], b[..., None]
    if min(a.shape[:2]) < SSIM_WINDOW:
        raise ValueError(f"ssim: images must be at least {SSIM_WINDOW}x{SSIM_WINDOW}, got {a.shape[:2]}")
    g = gaussian_window()
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    vals = []
    for c in range(a.shape[2]):
        x, y = a[..., c], b[..., c]
        mx, my = _filter_valid(x, g), _filter_valid(y, g)
        sxx = _filter_valid(x * x, g) - mx * mx
        syy = _filter_valid(y * y, g) - my * my
        sxy = _filter_valid(x * y, g) - mx * my
        m = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
        vals.append(m.mean())
    return float(np.mean(vals))


def lpips_distance(model, a: np.ndarray, b: np.ndarray) -> float:
    """LPIPS between two images [H, W, 3] in [0, 1] with a loaded `embedtalk_sdk.train.lpips.LPIPS`."""
    import torch

    device = next(model.parameters()).device
    ta = torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32, device=device).permute(2, 0, 1)[None]
    tb = torch.as_tensor(np.ascontiguousarray(b), dtype=torch.float32, device=device).permute(2, 0, 1)[None]
    with torch.no_grad():
        return float(model(ta, tb)[0])


def lmd(gt: np.ndarray, pred: np.ndarray, eye_span: np.ndarray | None = None) -> dict:
    """Mouth landmark distance. gt, pred: [T, K, 2] pixels; eye_span: [T] ground-truth eye spans.

    Returns {"lmd": mean px, "lmd_norm": mean of per-frame distance / eye span x 100 (or None)}.
    """
    gt, pred = np.asarray(gt, np.float64), np.asarray(pred, np.float64)
    if gt.shape != pred.shape or gt.ndim != 3:
        raise ValueError(f"lmd: need matching [T, K, 2] arrays, got {gt.shape} and {pred.shape}")
    per_frame = np.linalg.norm(gt - pred, axis=-1).mean(axis=1)
    out = {"lmd": float(per_frame.mean()), "lmd_norm": None}
    if eye_span is not None:
        out["lmd_norm"] = float((per_frame / np.maximum(np.asarray(eye_span, np.float64), 1e-6)).mean() * 100)
    return out


def audio_envelope(samples: np.ndarray, n_frames: int, fps: float = 25.0, sample_rate: int = 16000) -> np.ndarray:
    """Log RMS (dB) of the samples of each video frame [n * S/fps, (n+1) * S/fps), floored 60 dB
    below the loudest frame. [n_frames] float64."""
    hop = sample_rate / fps
    x = np.asarray(samples, np.float64)
    out = np.empty(n_frames)
    for n in range(n_frames):
        seg = x[int(round(n * hop)):int(round((n + 1) * hop))]
        out[n] = np.sqrt(np.mean(seg * seg)) if len(seg) else 0.0
    db = 20 * np.log10(np.maximum(out, 1e-8))
    return np.maximum(db, db.max() - 60.0)


def _highpass(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x - gaussian_filter1d(x, SYNC_HIGHPASS_FRAMES, mode="nearest")


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two series; 0 when either is constant."""
    a, b = a - a.mean(), b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else 0.0


def audio_predicts_mouth(features: np.ndarray, mouth: np.ndarray, rows_per_frame: int = 2, window: int = 4,
                         max_offset: int = SYNC_MAX_OFFSET, folds: int = 5, ridge: float = 300.0) -> dict:
    """How well the audio around each frame predicts its mouth opening, per offset (module docstring).

    features: [R, F] audio rows, `rows_per_frame` per video frame; mouth: [T]. Offset d uses the
    window centred on frame i - d for frame i (d > 0: the mouth lags the audio, as in `av_sync`).
    Returns {"offset_frames", "correlation" (at that offset), "correlation_at_zero", "curve"}.
    """
    feats, y_all = np.asarray(features, np.float64), np.asarray(mouth, np.float64)
    half = window // 2
    curve: dict[int, float] = {}
    for d in range(-max_offset, max_offset + 1):
        centres = (np.arange(len(y_all)) - d) * rows_per_frame
        keep = np.flatnonzero((centres - half >= 0) & (centres + half <= len(feats)))
        if len(keep) < 4 * folds:
            continue
        x = np.stack([feats[c - half:c + half].ravel() for c in centres[keep]])
        x = (x - x.mean(0)) / (x.std(0) + 1e-6)
        y = y_all[keep]
        pred = np.empty_like(y)
        bounds = np.linspace(0, len(y), folds + 1).astype(int)
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            train = np.r_[0:lo, hi:len(y)]
            a, b = x[train], y[train] - y[train].mean()
            w = np.linalg.solve(a.T @ a + ridge * np.eye(a.shape[1]), a.T @ b)
            pred[lo:hi] = x[lo:hi] @ w + y[train].mean()
        curve[d] = round(pearson(pred, y), 4)
    if not curve:
        return {"offset_frames": 0, "correlation": 0.0, "correlation_at_zero": 0.0, "curve": {}}
    best = max(curve, key=curve.get)
    return {"offset_frames": int(best), "correlation": curve[best], "correlation_at_zero": curve.get(0, 0.0),
            "curve": curve}


def lip_motion(truth: np.ndarray, render: np.ndarray) -> dict:
    """{"lip_corr", "lip_amplitude_ratio"} of two mouth-opening series [T] (see the module docstring)."""
    t, r = np.asarray(truth, np.float64), np.asarray(render, np.float64)
    if t.shape != r.shape or t.ndim != 1:
        raise ValueError(f"lip_motion: expected two series of one length, got {t.shape} and {r.shape}")
    spread = t.std()
    return {"lip_corr": round(pearson(t, r), 4),
            "lip_amplitude_ratio": round(float(r.std() / spread), 4) if spread > 0 else None}


def av_sync(mouth: np.ndarray, envelope: np.ndarray, max_offset: int = SYNC_MAX_OFFSET) -> dict:
    """Normalised cross-correlation of mouth opening and audio envelope (NOT SyncNet; see above).

    mouth, envelope: [T] per video frame. Returns {"offset_frames", "correlation" (at that offset),
    "correlation_at_zero", "confidence", "curve" ({offset: correlation})}.
    """
    m, e = _highpass(mouth), _highpass(envelope)
    t = min(len(m), len(e))
    m, e = m[:t], e[:t]
    curve = {}
    for d in range(-max_offset, max_offset + 1):
        if t - abs(d) < 8:
            continue
        # offset d: mouth[i] against envelope[i - d] (d > 0: the mouth lags the audio)
        a = m[d:] if d >= 0 else m[:t + d]
        b = e[:t - d] if d >= 0 else e[-d:]
        curve[d] = pearson(a, b)
    if not curve:
        return {"offset_frames": 0, "correlation": 0.0, "correlation_at_zero": 0.0, "confidence": 0.0, "curve": {}}
    best = max(curve, key=curve.get)
    vals = np.array(list(curve.values()))
    return {"offset_frames": int(best), "correlation": round(curve[best], 4),
            "correlation_at_zero": round(curve.get(0, 0.0), 4),
            "confidence": round(float(curve[best] - np.median(vals)), 4),
            "curve": {int(k): round(v, 4) for k, v in curve.items()}}
