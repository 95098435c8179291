"""The loss terms of eq. 12 (and the mouth-box L1 beside it), each a function; `Trainer.loss` weighs
and sums them. Images are [H,W,3] in [0,1]; boxes are pixel (x0, y0, x1, y1), end-exclusive. The
LPIPS network itself is `lpips.py`.
"""
from __future__ import annotations

import torch

from embedtalk_sdk.train.lpips import LPIPS

Box = tuple[int, int, int, int]


def l1(image: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over all pixels and channels: scalar."""
    return (image - gt).abs().mean()


def box_l1(image: torch.Tensor, gt: torch.Tensor, box: Box) -> torch.Tensor:
    """L1 on the pixels of `box` alone (the mouth: ~0.5% of a frame's pixels)."""
    x0, y0, x1, y1 = box
    return l1(image[y0:y1, x0:x1], gt[y0:y1, x0:x1])


def _mouth_crop(img: torch.Tensor, box: Box, size: int = 64) -> torch.Tensor:
    """[H,W,3] -> [1,3,size,size] crop of the mouth box, resized so AlexNet sees enough pixels."""
    x0, y0, x1, y1 = box
    crop = img[y0:y1, x0:x1].permute(2, 0, 1)[None]
    return torch.nn.functional.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False)


def lpips_face(metric: LPIPS, image: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """L_lpips of the whole frame: scalar."""
    return metric(image.permute(2, 0, 1)[None], gt.permute(2, 0, 1)[None]).mean()


def lpips_mouth(metric: LPIPS, image: torch.Tensor, gt: torch.Tensor, box: Box) -> torch.Tensor:
    """L_lpips of the mouth box, both crops resized to 64x64: scalar."""
    return metric(_mouth_crop(image, box), _mouth_crop(gt, box)).mean()


def opacity_mean(opacities: torch.Tensor) -> torch.Tensor:
    """The opacity regulariser: mean activated opacity [N] -> scalar."""
    return opacities.mean()


def knn_indices(means: torch.Tensor, k: int = 20, chunk: int = 4096) -> torch.Tensor:
    """Indices of each Gaussian's k nearest other Gaussians: [N, k] (recomputed after densification only)."""
    n = means.shape[0]
    k = min(k, n - 1)
    out = torch.empty(n, k, dtype=torch.long)
    pts = means.detach()
    for start in range(0, n, chunk):
        d = torch.cdist(pts[start : start + chunk], pts)
        d[torch.arange(d.shape[0]), torch.arange(start, start + d.shape[0])] = float("inf")
        out[start : start + chunk] = d.topk(k, largest=False).indices
    return out


def embedding_rows(n: int, max_rows: int, device: torch.device) -> torch.Tensor | None:
    """Gaussians i (uniform, with replacement) for an `embedding_smoothness` estimate: [max_rows], or
    None (all of them) when max_rows is 0 or n <= max_rows. Draws from torch's global generator."""
    if not max_rows or n <= max_rows:
        return None
    return torch.randint(n, (max_rows,), device=device)


def embedding_smoothness(
    embeddings: torch.Tensor,
    means: torch.Tensor,
    neighbours: torch.Tensor,
    lambda_w: float = 2000.0,
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """L_emb_reg of eq. 11: mean over i and its k neighbours j of w_ij ||z_i - z_j||_2.

    w_ij = exp(-lambda_w ||mu_i - mu_j||^2) is a weight, not a path for gradients into the means.
    rows: evaluate the mean over these i only (an unbiased estimate when drawn uniformly; the full
    [N, k, 32] gather cost a third of a CPU training step).
    """
    if rows is not None:
        embeddings_i, means_i, neighbours = embeddings[rows], means[rows], neighbours[rows]
    else:
        embeddings_i, means_i = embeddings, means
    mu = means.detach()
    w = torch.exp(-lambda_w * (means_i.detach()[:, None] - mu[neighbours]).pow(2).sum(-1))  # [n, k]
    dist = (embeddings_i[:, None] - embeddings[neighbours]).pow(2).sum(-1).add(1e-12).sqrt()
    return (w * dist).mean()
