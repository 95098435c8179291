"""A bundle of any size for speed tests: N random Gaussians shaped like a head, the real baked network
(export/onnx_graph.py, random weights), a raw torso track. No training, no dataset, no PyAV.

    python benchmarks/make_bench_bundle.py -o /tmp/bench50k.etk --gaussians 50000 --size 512

The frames are not a face, but every cost that matters for speed is the real one: the network's
shape (default DeformConfig: hidden 64, one trunk layer), the number of Gaussians and their
screen footprint (~4 tiles each at 512², as in trained avatars), the frame size.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from embedtalk_sdk.export.bundle import write_bundle
from embedtalk_sdk.export.onnx_graph import build_deform_onnx, io_spec
from embedtalk_sdk.model.deform import BakedDeform, DeformConfig, DeformNet
from embedtalk_sdk.runtime.audio.mel import MelSpec
from embedtalk_sdk.runtime.aus import AU_NAMES
from embedtalk_sdk.runtime.camera import intrinsics


def random_baked(n: int, cfg: DeformConfig, seed: int) -> BakedDeform:
    torch.manual_seed(seed)
    net = DeformNet(cfg)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.2)
        table = net.embedding_table(torch.randn(n, cfg.embed_dim))
    return BakedDeform(net.eval(), table).eval()


def head_gaussians(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """An ellipsoid shell of Gaussians (a 16 x 22 cm head) for a camera 0.5 m away; each Gaussian
    4 mm (1 sigma), ~10 px at 512²: the footprint is a fixed fraction of the frame at any size."""
    direction = rng.normal(size=(n, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    means = direction * np.array([0.08, 0.11, 0.09]) * rng.uniform(0.85, 1.0, (n, 1))
    scale = 0.004
    return {
        "means": means.astype(np.float32),
        "quats": rng.normal(size=(n, 4)).astype(np.float32),
        "scales": (scale * np.exp(rng.normal(0, 0.3, (n, 3)))).astype(np.float32),
        "opacity_logits": rng.normal(1.0, 1.0, n).astype(np.float32),
        "colors": rng.uniform(0.2, 0.9, (n, 3)).astype(np.float32),
    }


def make_bundle(out: Path, n: int, size: int, seed: int = 0, track_frames: int = 8) -> Path:
    rng = np.random.default_rng(seed)
    spec = MelSpec()
    cfg = DeformConfig(feature_dim=spec.n_mels)
    model = build_deform_onnx(random_baked(n, cfg, seed))
    viewmats = np.repeat(np.eye(4, dtype=np.float32)[None], track_frames, axis=0)
    viewmats[:, 0, 3] = np.linspace(-0.01, 0.01, track_frames)
    viewmats[:, 2, 3] = 0.5
    ramp = np.linspace(40, 200, size, dtype=np.float32)
    torso = np.broadcast_to(ramp[None, :, None, None], (track_frames, size, size, 3)).astype(np.uint8).copy()
    arrays = {**head_gaussians(rng, n), "viewmats": viewmats, "torso_bg": torso}
    focal = 1.2 * size
    manifest = {
        "fps": 25, "width": size, "height": size, "K": intrinsics(focal, focal, size / 2, size / 2),
        "audio": {"encoder": "mel", **spec.to_dict(), "window": cfg.window, "feature_dim": spec.n_mels, "rate": spec.rate},
        "aus": {"names": list(AU_NAMES), "neutral": [0.5, 0.2, 0.3, 0.1, 0.4, 0.0],
                "blink_peak": 3.0, "blink_period_s": 3.0, "blink_duration_s": 0.25},
        "network": cfg.to_dict(),
        "gaussians": {"count": n},
        "onnx": {"deform": {"file": "deform.onnx", **io_spec(model)}},
        "tracks": {"frames": track_frames, "torso_frames": track_frames, "torso": {"file": "torso_bg.npy", "codec": "raw"}},
        "engines": [],
    }  # fmt: skip
    return write_bundle(out, manifest, arrays, {"deform.onnx": model.SerializeToString()})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-o", "--out", type=Path, required=True)
    p.add_argument("--gaussians", type=int, default=50_000)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    print(make_bundle(args.out, args.gaussians, args.size, args.seed))


if __name__ == "__main__":
    main()
