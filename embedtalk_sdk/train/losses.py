"""Loss terms of eq. 12 other than LPIPS (see `lpips.py`)."""
from __future__ import annotations

import torch


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
