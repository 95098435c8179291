"""Differentiable CPU rasteriser for training: the torch reference's projection (steps 1-5, O(N),
autograd) and the numba blend with its hand-written backward (steps 6-7, plugins/cpu/rasterize_grad.py).

Same image and gradients as `rasterize.rasterize` (tests/test_rasterize_grad.py) at a fraction of
the time and memory: the reference pads every tile of a block to its longest list and keeps
[tiles, pixels, M] tensors for autograd; this evaluates each Gaussian only on its own pixels.
"""
from __future__ import annotations

from functools import partial

import numpy as np
import torch
from torch import Tensor

from embedtalk_sdk.functional.rasterize import Projected, TileBins, bin_tiles, rasterize
from embedtalk_sdk.plugins.cpu.rasterize import TILE
from embedtalk_sdk.plugins.cpu.rasterize_grad import blend_backward, blend_forward


def _np32(x: Tensor) -> np.ndarray:
    return np.ascontiguousarray(x.detach().to(torch.float32).cpu().numpy())


class _NumbaBlend(torch.autograd.Function):
    @staticmethod
    def forward(ctx, mean2d: Tensor, conic: Tensor, opacities: Tensor, colors: Tensor, background: Tensor,
                bins: TileBins) -> tuple[Tensor, Tensor]:
        offsets, ids = bins.offsets.numpy(), bins.gauss_ids.numpy()
        inputs = tuple(_np32(x) for x in (mean2d, conic, opacities, colors, background))
        image, alpha, trans, stop, support = blend_forward(offsets, ids, *inputs)
        ctx.numba_state = (offsets, ids, inputs, (trans, stop, support))
        ctx.dtype = mean2d.dtype
        return torch.from_numpy(image).to(mean2d.dtype), torch.from_numpy(alpha).to(mean2d.dtype)

    @staticmethod
    def backward(ctx, grad_image: Tensor, grad_alpha: Tensor):
        offsets, ids, inputs, saved = ctx.numba_state
        grads = blend_backward(offsets, ids, *inputs, saved, _np32(grad_image), _np32(grad_alpha))
        grads = torch.from_numpy(grads).to(ctx.dtype)
        trans = torch.from_numpy(saved[0]).to(ctx.dtype)
        grad_background = grad_image * trans[..., None]
        return grads[:, 0:2], grads[:, 2:5], grads[:, 5], grads[:, 6:9], grad_background, None


def rasterize_projected_cpu(proj: Projected, opacities: Tensor, colors: Tensor, background: Tensor
                            ) -> tuple[Tensor, Tensor]:
    """Steps 6-7 on the CPU: as `rasterize.rasterize_projected`, differentiable in proj.mean2d,
    proj.conic, opacities, colors and background."""
    H, W = background.shape[:2]
    bins = bin_tiles(proj, W, H, TILE)
    return _NumbaBlend.apply(proj.mean2d, proj.conic, opacities * proj.valid, colors, background, bins)


# Drop-in for `rasterize.rasterize` on CPU tensors (arguments and outputs as there).
rasterize_cpu_autograd = partial(rasterize, blend=rasterize_projected_cpu)
