"""Rendering a deformed head over a frame's torso+background, on whichever rasteriser fits the device."""
from __future__ import annotations

import torch

from embedtalk_sdk.functional.rasterize import rasterize as rasterize_reference


def gsplat_available(device: torch.device) -> bool:
    if device.type != "cuda":
        return False
    try:
        import gsplat  # noqa: F401
    except ImportError:
        return False
    return True


def render(
    means: torch.Tensor,
    quats: torch.Tensor,
    scales: torch.Tensor,
    opacities: torch.Tensor,
    colors: torch.Tensor,
    viewmat: torch.Tensor,
    K: torch.Tensor,
    background: torch.Tensor,
    use_gsplat: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Head over `background` [H,W,3] -> (image [H,W,3], alpha [H,W]). Arguments as docs/interfaces.md.

    gsplat blends over black and returns the accumulated alpha, so the background goes in as
    colour + (1 - alpha) * background: the same blend as the reference (C + T * background).
    """
    if not use_gsplat:
        return rasterize_reference(means, quats, scales, opacities, colors, viewmat, K, background)
    from gsplat import rasterization

    h, w = background.shape[:2]
    colors_out, alphas, _ = rasterization(
        means, quats, scales, opacities, colors, viewmat[None], K[None], w, h, packed=False
    )
    alpha = alphas[0, ..., 0]
    return colors_out[0] + (1 - alpha)[..., None] * background, alpha
