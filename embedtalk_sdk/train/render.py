"""Rendering a deformed head over a frame's torso+background, on whichever rasteriser fits the device;
the one render path of training, validation and `eval` on checkpoints (`FrameData`, `render_frame`).

Rasterisers (all the maths of plugins/design.md, differentiable):
- "gsplat": CUDA tensors, gsplat installed;
- "numba": CPU; torch projection + numba blending with its own backward (functional/rasterize_cpu.py);
- "torch": the torch reference (functional/rasterize.py), any device; the oracle, slow.
"""
from __future__ import annotations

import numpy as np
import torch

from embedtalk_sdk.data.dataset import TalkingDataset
from embedtalk_sdk.functional.rasterize import project
from embedtalk_sdk.functional.rasterize import rasterize as rasterize_reference
from embedtalk_sdk.model.deform import DeformNet
from embedtalk_sdk.model.gaussians import GaussianModel
from embedtalk_sdk.runtime.audio.mel import frame_windows
from embedtalk_sdk.runtime.aus import AU_SCALE

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


class FrameData:
    """A dataset's per-frame tensors on `device`: audio windows [n,window,F], AUs / AU_SCALE [n,6],
    viewmats [n,4,4], K [3,3]; images and torso backgrounds [H,W,3] read when asked for."""

    def __init__(self, dataset: TalkingDataset, features: np.ndarray, window: int, device: torch.device):
        self.dataset = dataset
        self.device = device
        aud_ids = np.asarray(dataset.aud_ids)
        windows = frame_windows(features, int(aud_ids.max()) + 1, fps=dataset.fps, window=window)
        self.windows = torch.as_tensor(windows[aud_ids], device=device)
        self.aus = torch.as_tensor(dataset.aus / AU_SCALE, dtype=torch.float32, device=device)
        self.viewmats = torch.as_tensor(dataset.viewmats, device=device)
        self.K = torch.as_tensor(dataset.K, device=device)

    def __len__(self) -> int:
        return len(self.dataset)

    def image(self, i: int) -> torch.Tensor:
        return torch.as_tensor(self.dataset.image(i), device=self.device)

    def torso_bg(self, i: int) -> torch.Tensor:
        return torch.as_tensor(self.dataset.torso_bg(i), device=self.device)


def render_frame(
    gaussians: GaussianModel, deform: DeformNet, frames: FrameData, i: int, rasterizer: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Frame i of `frames`: the deformed head over its torso+background (`rasterizer` as `render`)
    -> (image [H,W,3], alpha [H,W], deformed means [N,3])."""
    g = gaussians
    dmu, dalpha = deform(g.embeddings, frames.windows[i : i + 1], frames.aus[i : i + 1])
    means = g.means + dmu[0]
    image, alpha = render(
        means, g.params["quats"], g.scales(), g.opacities(dalpha[0]), g.colors(),
        frames.viewmats[i], frames.K, frames.torso_bg(i), rasterizer,
    )  # fmt: skip
    return image, alpha, means
