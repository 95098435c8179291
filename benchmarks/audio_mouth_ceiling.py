"""How much of the mouth's motion each audio encoder's features can explain, on a dataset.

    python benchmarks/audio_mouth_ceiling.py DATASET [--encoders mel,phonetic-posteriors,phonetic]
        [--seeds 3] [--steps 3000] [--oof-net] [-o ceiling.json] [--plot folds.png]

A render's held-out lip correlation (eval's `lip_corr_audio_only`) cannot exceed what the audio
features predict about the mouth. This fits predictors of the MediaPipe mouth opening
(DATASET/preprocess/face_track.npz) directly on each frame's window of feature rows (`frame_windows`,
16 rows at 50 Hz by default) and scores them:
- ridge regression on the flattened window, standardised with the training part's statistics (the
  linear ceiling);
- the avatar's own `AudioNet` plus a linear head, trained by Adam on the opening itself.
Both are supervised by the very target the renderer only sees through pixels, so they bound what
the deformation network can reach with these features.

Encoders: `--encoders` is a comma list of the names `dataset_features` knows (embedtalk_sdk/audio/
features.py); `a+b` concatenates two encoders' rows along the feature axis (same rate, cut to the
shorter clip); "phonetic" is already posteriors + log-mel, "phonetic-posteriors" the posteriors
alone. The default is every registered encoder that computes its features from audio (`from_audio`),
HuBERT only with `--hubert-path`.

The numbers, per encoder:
- val: the dataset's train/val split (transforms_{train,val}.json), as eval uses it.
  `ridge_corr` / `ridge_amp`: Pearson correlation with the truth and amplitude ratio
  std(prediction) / std(truth) of ridge at the harness's fixed lambda 300; `ridge_cv_*` the same with
  lambda chosen by contiguous CV inside the training frames; `audio_net`: corr and amplitude ratio
  per seed. The split is small (137 frames on ted_lieu_hdtf_60s): its correlations move by +-0.05.
- oof: 5-fold contiguous out-of-fold over all frames, the steadier number. Each fold is a contiguous
  block of frames; its training part is every other frame except `--gap` (8) frames on each side of
  the block, so no training window overlaps a test window (16 rows at 50 Hz span 8 frames). Ridge's
  lambda is chosen inside each training part (inner contiguous folds, same gap; grid `--lambdas`).
  `corr` / `amp` are those of all folds' predictions concatenated; `fold_corr` each fold's own
  correlation (how stable); `fold_lambda` each fold's chosen lambda. `--oof-net` adds AudioNet out-of-fold (seed 0: five
  trainings of `--steps`).
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from embedtalk_sdk.audio.features import FeatureSource, dataset_features
from embedtalk_sdk.metrics import pearson
from embedtalk_sdk.model.deform import AudioNet, DeformConfig
from embedtalk_sdk.preprocess.face import mouth_opening
from embedtalk_sdk.runtime.audio.encoders import ENCODERS, HubertEncoder
from embedtalk_sdk.runtime.audio.mel import frame_windows

HARNESS_LAMBDA = 300.0
LAMBDAS = (1.0, 10.0, 100.0, 300.0, 1000.0, 3000.0, 10000.0)
FOLDS = 5
GAP = 8

# (training frame ids, test frame ids) -> predictions [len(test)] of the opening on the test frames.
Fit = Callable[[np.ndarray, np.ndarray], np.ndarray]


def split_ids(dataset: Path) -> tuple[np.ndarray, np.ndarray]:
    """Frame ids of the training and validation splits."""
    ids = [np.array([f["img_id"] for f in json.loads((dataset / f"transforms_{s}.json").read_text())["frames"]])
           for s in ("train", "val")]
    return ids[0], ids[1]


def audio_encoders(with_hubert: bool) -> list[str]:
    """The registered encoders that compute features from audio (HuBERT only if a checkpoint is given)."""
    return [name for name, cls in ENCODERS.items()
            if cls.from_audio and (with_hubert or name != HubertEncoder.name)]


def encoder_rows(spec: str, src: FeatureSource) -> tuple[np.ndarray, float]:
    """(rows float32 [M, F], rows per second) of an encoder name or a `a+b` concatenation."""
    parts = [dataset_features(name, src) for name in spec.split("+")]
    rates = {float(enc.rate) for enc, _ in parts}
    if len(rates) != 1:
        raise ValueError(f"{spec}: encoders at different rates {sorted(rates)} cannot be concatenated")
    m = min(len(rows) for _, rows in parts)
    return np.concatenate([rows[:m] for _, rows in parts], axis=1).astype(np.float32), rates.pop()


class Ridge:
    """Ridge regression on features standardised with the training rows' statistics; one SVD serves
    every lambda. x: [N, D], y: [N]."""

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        self.mean, self.std = x.mean(0), x.std(0) + 1e-6
        self.y_mean = float(y.mean())
        u, self.s, self.vt = np.linalg.svd((x - self.mean) / self.std, full_matrices=False)
        self.uty = u.T @ (y - self.y_mean)

    def predict(self, x: np.ndarray, lam: float) -> np.ndarray:
        """Predictions [len(x)] at ridge penalty `lam`."""
        w = self.vt.T @ (self.s / (self.s ** 2 + lam) * self.uty)
        return (x - self.mean) / self.std @ w + self.y_mean


def contiguous_folds(ids: np.ndarray, k: int) -> list[np.ndarray]:
    """`ids` (sorted) cut into k contiguous blocks of near-equal size."""
    return np.array_split(np.asarray(ids), k)


def train_part(ids: np.ndarray, test: np.ndarray, gap: int) -> np.ndarray:
    """The ids farther than `gap` frames from the test block [test.min(), test.max()]."""
    return ids[(ids < test.min() - gap) | (ids > test.max() + gap)]


def choose_lambda(x: np.ndarray, y: np.ndarray, ids: np.ndarray, lambdas: tuple[float, ...] = LAMBDAS,
                  folds: int = FOLDS, gap: int = GAP) -> float:
    """The lambda whose contiguous out-of-fold predictions inside `ids` correlate best with y.

    Each inner fold's predictions are centred before pooling, so a fold's offset does not count.
    """
    pooled = {lam: [] for lam in lambdas}
    tests = contiguous_folds(ids, folds)
    for test in tests:
        ridge = Ridge(x[train_part(ids, test, gap)], y[train_part(ids, test, gap)])
        for lam in lambdas:
            p = ridge.predict(x[test], lam)
            pooled[lam].append(p - p.mean())
    truth = np.concatenate([y[t] for t in tests])
    scores = {lam: pearson(np.concatenate(p), truth) for lam, p in pooled.items()}
    return max(scores, key=scores.get)


@dataclass
class RidgeCV:
    """A `Fit`: ridge with lambda chosen inside the training ids; records each call's lambda.
    x: [N, D] flattened windows, y: [N] opening, both over all frames."""

    x: np.ndarray
    y: np.ndarray
    lambdas: tuple[float, ...] = LAMBDAS
    folds: int = FOLDS
    gap: int = GAP
    chosen: list[float] = field(default_factory=list)

    def __call__(self, train: np.ndarray, test: np.ndarray) -> np.ndarray:
        lam = choose_lambda(self.x, self.y, train, self.lambdas, self.folds, self.gap)
        self.chosen.append(lam)
        return Ridge(self.x[train], self.y[train]).predict(self.x[test], lam)


def out_of_fold(n: int, fit: Fit, folds: int = FOLDS, gap: int = GAP) -> tuple[np.ndarray, list[np.ndarray]]:
    """(predictions [n] for every frame, each made by a fit that did not see its contiguous fold nor
    `gap` frames either side of it; the folds' frame ids)."""
    ids = np.arange(n)
    tests = contiguous_folds(ids, folds)
    pred = np.empty(n)
    for test in tests:
        pred[test] = fit(train_part(ids, test, gap), test)
    return pred, tests


def scores(pred: np.ndarray, truth: np.ndarray, tests: list[np.ndarray] | None = None) -> dict:
    """{"corr", "amp" (std pred / std truth)[, "fold_corr" per test block]}, rounded."""
    out = {"corr": round(pearson(pred, truth), 4), "amp": round(float(pred.std() / truth.std()), 4)}
    if tests is not None:
        out["fold_corr"] = [round(pearson(pred[t], truth[t]), 4) for t in tests]
    return out


def train_audio_net(windows: np.ndarray, y: np.ndarray, seed: int, steps: int) -> Callable[[np.ndarray], np.ndarray]:
    """AudioNet + linear head trained by Adam on the standardised opening; returns windows
    [B, W, F] -> predicted opening [B] (training mean and scale restored)."""
    torch.manual_seed(seed)
    cfg = DeformConfig(feature_dim=windows.shape[2], window=windows.shape[1])
    net = AudioNet(cfg)
    net.set_feature_stats(torch.from_numpy(windows.reshape(-1, windows.shape[2])))
    head = torch.nn.Linear(cfg.audio_code, 1)
    opt = torch.optim.Adam([*net.parameters(), *head.parameters()], lr=1e-3, weight_decay=1e-4)
    xt = torch.from_numpy(windows)
    mean, std = float(y.mean()), float(y.std())
    yt = torch.from_numpy(((y - mean) / std).astype(np.float32))
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(xt), (64,), generator=gen)
        loss = (head(net(xt[idx]))[:, 0] - yt[idx]).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    def predict(w: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return head(net(torch.from_numpy(w)))[:, 0].numpy().astype(np.float64) * std + mean

    return predict


def audio_net_fit(windows: np.ndarray, y: np.ndarray, seed: int, steps: int) -> Fit:
    """A `Fit` training AudioNet on the training ids' windows [N, W, F]."""
    return lambda train, test: train_audio_net(windows[train], y[train], seed, steps)(windows[test])


def val_split(windows: np.ndarray, y: np.ndarray, train: np.ndarray, val: np.ndarray,
              args: argparse.Namespace) -> dict:
    """The val numbers (module docstring): windows [N, W, F] and opening [N] over all frames."""
    x = windows.reshape(len(windows), -1).astype(np.float64)
    fixed = scores(Ridge(x[train], y[train]).predict(x[val], HARNESS_LAMBDA), y[val])
    cv = RidgeCV(x, y, tuple(args.lambdas), args.folds, args.gap)
    chosen = scores(cv(train, val), y[val])
    nets = [{"seed": s, **scores(train_audio_net(windows[train], y[train], s, args.steps)(windows[val]), y[val])}
            for s in range(args.seeds)]
    return {"ridge_corr": fixed["corr"], "ridge_amp": fixed["amp"], "ridge_cv_lambda": cv.chosen[0],
            "ridge_cv_corr": chosen["corr"], "ridge_cv_amp": chosen["amp"], "audio_net": nets}


def oof_split(windows: np.ndarray, y: np.ndarray, args: argparse.Namespace) -> dict:
    """The oof numbers (module docstring): ridge, and AudioNet with `--oof-net`."""
    cv = RidgeCV(windows.reshape(len(windows), -1).astype(np.float64), y, tuple(args.lambdas), args.folds, args.gap)
    pred, tests = out_of_fold(len(y), cv, args.folds, args.gap)
    out = {"ridge": {**scores(pred, y, tests), "fold_lambda": cv.chosen}}
    if args.oof_net:
        pred, tests = out_of_fold(len(y), audio_net_fit(windows, y, 0, args.steps), args.folds, args.gap)
        out["audio_net"] = {"seed": 0, **scores(pred, y, tests)}
    return out


def table(report: dict) -> str:
    """The report as readable text: one line per encoder for the val split, one for the OOF."""
    lines = [f"validation split ({report['val_frames']} frames; trained on {report['train_frames']})",
             f"{'encoder':<22}{'dim':>6}{'ridge λ300':>12}{'amp':>6}{'ridge λcv':>11}{'λ':>7}{'amp':>6}"
             f"   AudioNet corr (amp) per seed"]
    for name, r in report["encoders"].items():
        v = r["val"]
        nets = "  ".join(f"{n['corr']:.3f} ({n['amp']:.2f})" for n in v["audio_net"])
        lines.append(f"{name:<22}{r['dim']:>6}{v['ridge_corr']:>12.3f}{v['ridge_amp']:>6.2f}{v['ridge_cv_corr']:>11.3f}"
                     f"{v['ridge_cv_lambda']:>7g}{v['ridge_cv_amp']:>6.2f}   {nets}")
    lines += ["", f"{report['folds']}-fold contiguous out-of-fold ({report['frames']} frames, gap {report['gap']})",
              f"{'encoder':<22}{'model':<10}{'corr':>7}{'amp':>6}   per-fold corr [λ per fold]"]
    for name, r in report["encoders"].items():
        for model, o in r["oof"].items():
            folds = " ".join(f"{c:.3f}" for c in o["fold_corr"])
            lams = f"  [{' '.join(f'{lam:g}' for lam in o['fold_lambda'])}]" if "fold_lambda" in o else ""
            lines.append(f"{name:<22}{model:<10}{o['corr']:>7.3f}{o['amp']:>6.2f}   {folds}{lams}")
    return "\n".join(lines)


def plot_folds(report: dict, path: Path) -> None:
    """Per-fold OOF correlation per encoder (ridge solid, AudioNet dashed) to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (name, r) in enumerate(report["encoders"].items()):
        for model, o in r["oof"].items():
            ax.plot(range(1, len(o["fold_corr"]) + 1), o["fold_corr"], "o-" if model == "ridge" else "s--",
                    color=f"C{i}", label=f"{name} {model} (OOF {o['corr']:.3f})")
    ax.set_xticks(range(1, report["folds"] + 1))
    ax.set_xlabel("fold (contiguous block of frames)")
    ax.set_ylabel("corr with the mouth opening")
    ax.set_title(f"{Path(report['dataset']).name}: out-of-fold per fold")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--encoders", default=None,
                        help="comma list of encoder names, `a+b` concatenates (default: every audio encoder)")
    parser.add_argument("--hubert-path", default=None, help="a local HuBERT checkpoint (adds `hubert` to the default)")
    parser.add_argument("--seeds", type=int, default=3, help="AudioNet seeds on the val split")
    parser.add_argument("--steps", type=int, default=3000, help="AudioNet training steps")
    parser.add_argument("--oof-net", action="store_true",
                        help="also AudioNet out-of-fold (seed 0, one training per fold)")
    parser.add_argument("--window", type=int, default=DeformConfig.window)
    parser.add_argument("--folds", type=int, default=FOLDS)
    parser.add_argument("--gap", type=int, default=GAP, help="frames dropped on each side of a test block")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (the nets are small: more threads mostly contend)")
    parser.add_argument("--lambdas", type=float, nargs="+", default=list(LAMBDAS))
    parser.add_argument("-o", "--out", type=Path, default=None, help="JSON report")
    parser.add_argument("--plot", type=Path, default=None, help="PNG of the per-fold OOF correlations")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    track = np.load(args.dataset / "preprocess" / "face_track.npz")
    y = mouth_opening(track["landmarks"]).astype(np.float64)
    train, val = split_ids(args.dataset)
    src = FeatureSource(args.dataset / "aud.wav", hubert_path=args.hubert_path)
    names = args.encoders.split(",") if args.encoders else audio_encoders(args.hubert_path is not None)
    report = {"dataset": str(args.dataset), "frames": len(y), "train_frames": len(train), "val_frames": len(val),
              "window": args.window, "folds": args.folds, "gap": args.gap, "lambdas": args.lambdas,
              "steps": args.steps, "encoders": {}}
    for name in names:
        start = time.perf_counter()
        rows, rate = encoder_rows(name, src)
        # The windows training cuts for each frame (edges repeated).
        windows = frame_windows(rows, len(y), rate=rate, window=args.window).astype(np.float32)
        report["encoders"][name] = {"dim": rows.shape[1], "rows": len(rows),
                                    "val": val_split(windows, y, train, val, args), "oof": oof_split(windows, y, args),
                                    "seconds": round(time.perf_counter() - start, 1)}
        print(f"{name}: done in {report['encoders'][name]['seconds']} s", flush=True)
    print(table(report))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    if args.plot:
        plot_folds(report, args.plot)


if __name__ == "__main__":
    main()
