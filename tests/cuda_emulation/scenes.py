"""Scenes of the emulated kernel tests, built identically in the test process (for the torch
reference) and in the emulated subprocess (for the kernels): a spec is a small dict."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

TESTS = Path(__file__).resolve().parents[1]


def make_scene(spec: dict) -> dict:
    """float64 arrays means, quats, scales, opacities, colors, viewmat, K, background for
    spec = {"seed", "n", "H", "W", "kind": "random" | "culled" | "empty", "u8": bool}."""
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))
    from test_rasterize import random_scene

    n, H, W = int(spec["n"]), int(spec["H"]), int(spec["W"])
    kind = spec.get("kind", "random")
    scene = random_scene(np.random.default_rng(int(spec["seed"])), max(n, 12), H, W)
    if kind == "empty":
        for key, width in (("means", 3), ("quats", 4), ("scales", 3), ("colors", 3)):
            scene[key] = np.zeros((0, width))
        scene["opacities"] = np.zeros(0)
    elif kind == "culled":  # every Gaussian culled: half below 1/255, half at the camera centre (z = 0)
        R, t = scene["viewmat"][:3, :3], scene["viewmat"][:3, 3]
        scene["opacities"][0::2] = 0.003
        scene["means"][1::2] = -R.T @ t
    if spec.get("u8"):  # a background a uint8 image can carry exactly
        scene["background"] = np.round(scene["background"] * 255.0) / 255.0
    return scene


def opacities_through_logits(o: np.ndarray) -> np.ndarray:
    """What the kernel's sigmoid(logit) gives back for `o` (rasterize_cuda feeds float32 logits)."""
    o = np.clip(np.asarray(o, np.float64), 1e-12, 1 - 1e-7)
    logit = (np.log(o) - np.log1p(-o)).astype(np.float32).astype(np.float64)
    return 1.0 / (1.0 + np.exp(-logit))


def reference(scene: dict) -> tuple[np.ndarray, np.ndarray]:
    """The torch reference (embedtalk_sdk.functional.rasterize) in float64 on the CPU."""
    import torch

    from embedtalk_sdk.functional.rasterize import rasterize

    args = {k: torch.tensor(np.asarray(v, np.float64)) for k, v in scene.items()}
    args["opacities"] = torch.tensor(opacities_through_logits(scene["opacities"]))
    with torch.no_grad():
        img, alpha = rasterize(**args)
    return img.numpy(), alpha.numpy()


def to_u8(image: np.ndarray) -> np.ndarray:
    """The kernel's float -> uint8 rule: clip to [0, 1], * 255 in float32, round half to even."""
    x = np.clip(np.asarray(image, np.float32), np.float32(0), np.float32(1)) * np.float32(255)
    return np.rint(x).astype(np.uint8)
