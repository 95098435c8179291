"""Rendering a deformed head over a frame's torso+background, on whichever rasteriser fits the device.

Rasterisers (all the maths of plugins/design.md, differentiable):
- "gsplat": CUDA tensors, gsplat installed;
- "numba": CPU; torch projection + numba blending with its own backward (functional/rasterize_cpu.py);
- "torch": the torch reference (functional/rasterize.py), any device; the oracle, slow.
"""
from __future__ import annotations

import torch

from embedtalk_sdk.functional.rasterize import project
from embedtalk_sdk.functional.rasterize import rasterize as rasterize_reference

RASTERIZERS = ("auto", "gsplat", "numba", "torch")


def gsplat_available(device: torch.device) -> bool:
    if device.type != "cuda":
        return False
    try:
        import gsplat  # noqa: F401
    except ImportError:
        return False
    return True


def pick_rasterizer(name: str, device: torch.device) -> str:
    """Resolve "auto" (gsplat on CUDA when installed, numba on the CPU, else torch) and check the choice."""
    if name not in RASTERIZERS:
        raise ValueError(f"rasterizer {name!r}: choose one of {', '.join(RASTERIZERS)}")
    if name == "auto":
        if gsplat_available(device):
            return "gsplat"
        return "numba" if device.type == "cpu" else "torch"
    if name == "gsplat" and not gsplat_available(device):
        raise ValueError("rasterizer 'gsplat' needs a CUDA device and `pip install gsplat`")
    if name == "numba" and device.type != "cpu":
        raise ValueError(f"rasterizer 'numba' runs on the CPU, not on {device}")
    return name


def render(
    means: torch.Tensor,
    quats: torch.Tensor,
    scales: torch.Tensor,
    opacities: torch.Tensor,
    colors: torch.Tensor,
    viewmat: torch.Tensor,
    K: torch.Tensor,
    background: torch.Tensor,
    rasterizer: str = "torch",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Head over `background` [H,W,3] -> (image [H,W,3], alpha [H,W]). Arguments as docs/interfaces.md;
    `rasterizer` one of "gsplat", "numba", "torch" (see pick_rasterizer).

    gsplat blends over black and returns the accumulated alpha, so the background goes in as
    colour + (1 - alpha) * background: the same blend as the reference (C + T * background).
    """
    if rasterizer == "torch":
        return rasterize_reference(means, quats, scales, opacities, colors, viewmat, K, background)
    if rasterizer == "numba":
        from embedtalk_sdk.functional.rasterize_cpu import rasterize_cpu_autograd

        return rasterize_cpu_autograd(means, quats, scales, opacities, colors, viewmat, K, background)
    from gsplat import rasterization

    h, w = background.shape[:2]
    colors_out, alphas, _ = rasterization(
        means, quats, scales, opacities, colors, viewmat[None], K[None], w, h, packed=False
    )
    alpha = alphas[0, ..., 0]
    return colors_out[0] + (1 - alpha)[..., None] * background, alpha


def crop_intrinsics(K: torch.Tensor, x0: int, y0: int) -> torch.Tensor:
    """The intrinsics of the pixel window whose top-left corner is (x0, y0) of K's image."""
    out = K.clone()
    out[0, 2] -= x0
    out[1, 2] -= y0
    return out


@torch.no_grad()
def gaussians_touching(
    means: torch.Tensor,
    quats: torch.Tensor,
    scales: torch.Tensor,
    opacities: torch.Tensor,
    viewmat: torch.Tensor,
    K: torch.Tensor,
    width: int,
    height: int,
) -> torch.Tensor:
    """Indices (ascending) of the Gaussians whose culling-radius box overlaps the width x height image.

    Rendering only these gives the same image as rendering all of them: the others add alpha < 1/255
    to every pixel, which the blend skips, and a subset in index order keeps the depth order's ties.
    """
    proj = project(means, quats, scales, opacities, viewmat, K, width, height)
    r = proj.radius.to(proj.mean2d.dtype)
    x, y = proj.mean2d[:, 0], proj.mean2d[:, 1]
    hit = proj.valid & (x + r >= 0) & (x - r < width) & (y + r >= 0) & (y - r < height)
    return hit.nonzero()[:, 0]
