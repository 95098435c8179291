"""How much of the mouth's motion the audio features can explain on a dataset's validation frames.

    python benchmarks/audio_mouth_ceiling.py DATASET [--seeds 3] [--steps 3000] [-o ceiling.json]

A render's held-out lip correlation (eval's `lip_corr_audio_only`) cannot exceed what the audio
features predict about the mouth. This fits predictors of the MediaPipe mouth opening directly on
the training frames' audio windows and scores them on the validation frames:
- ridge regression on the flattened 16-row window (the linear ceiling);
- the avatar's own `AudioNet` plus a linear head, trained by Adam on the opening itself, per seed.
Both are supervised by the very target the renderer only sees through pixels, so they bound what
the deformation network can reach with these features.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from embedtalk_sdk.audio.features import mel_features
from embedtalk_sdk.preprocess.face import mouth_opening
from embedtalk_sdk.metrics import pearson
from embedtalk_sdk.model.deform import AudioNet, DeformConfig
from embedtalk_sdk.runtime.audio.mel import frame_windows


def split_ids(dataset: Path) -> tuple[np.ndarray, np.ndarray]:
    """Frame ids of the training and validation splits."""
    ids = [np.array([f["img_id"] for f in json.loads((dataset / f"transforms_{s}.json").read_text())["frames"]])
           for s in ("train", "val")]
    return ids[0], ids[1]


def ridge_corr(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
               ridge: float = 300.0) -> float:
    """Validation correlation of a ridge fit on standardised flattened windows."""
    a, v = x_train.reshape(len(x_train), -1), x_val.reshape(len(x_val), -1)
    mean, std = a.mean(0), a.std(0) + 1e-6
    a, v = (a - mean) / std, (v - mean) / std
    w = np.linalg.solve(a.T @ a + ridge * np.eye(a.shape[1]), a.T @ (y_train - y_train.mean()))
    return pearson(v @ w, y_val)


def audio_net_corr(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
                   seed: int, steps: int) -> dict:
    """Validation correlation and amplitude ratio of AudioNet + linear head trained on the opening."""
    torch.manual_seed(seed)
    cfg = DeformConfig(feature_dim=x_train.shape[2], window=x_train.shape[1])
    net = AudioNet(cfg)
    net.set_feature_stats(torch.from_numpy(x_train.reshape(-1, x_train.shape[2])))
    head = torch.nn.Linear(cfg.audio_code, 1)
    params = [*net.parameters(), *head.parameters()]
    opt = torch.optim.Adam(params, lr=1e-3, weight_decay=1e-4)
    xt = torch.from_numpy(x_train)
    yt = torch.from_numpy(((y_train - y_train.mean()) / y_train.std()).astype(np.float32))
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(xt), (64,), generator=gen)
        loss = (head(net(xt[idx]))[:, 0] - yt[idx]).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        pred = head(net(torch.from_numpy(x_val)))[:, 0].numpy() * y_train.std()
    return {"seed": seed, "corr": round(pearson(pred, y_val), 4),
            "amplitude_ratio": round(float(pred.std() / y_val.std()), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--window", type=int, default=DeformConfig.window)
    parser.add_argument("-o", "--out", type=Path, default=None)
    args = parser.parse_args()
    track = np.load(args.dataset / "preprocess" / "face_track.npz")
    opening = mouth_opening(track["landmarks"])
    features = mel_features(args.dataset / "aud.wav")
    train, val = split_ids(args.dataset)
    # The windows training cuts for each frame (edges repeated).
    all_windows = frame_windows(features, len(opening), window=args.window).astype(np.float32)
    x_train, x_val = all_windows[train], all_windows[val]
    y_train, y_val = opening[train].astype(np.float64), opening[val].astype(np.float64)
    report = {"dataset": str(args.dataset), "train_frames": len(train), "val_frames": len(val),
              "ridge_corr": round(ridge_corr(x_train, y_train, x_val, y_val), 4),
              "audio_net": [audio_net_corr(x_train, y_train, x_val, y_val, s, args.steps) for s in range(args.seeds)]}
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
