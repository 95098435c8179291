"""Canonical Gaussians {mu, q, log s, colour, opacity logit, z} (eq. 8) as one parameter container.

Every per-Gaussian tensor lives in `params` so that densification and pruning move all of them,
embeddings included, together with their optimiser state (see `embedtalk_sdk.train.strategy`).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

SH_C0 = 0.28209479177387814  # degree-0 spherical harmonic; colour = 0.5 + SH_C0 * sh0


def rgb_to_sh0(rgb: torch.Tensor) -> torch.Tensor:
    return (rgb - 0.5) / SH_C0


def _knn_mean_distance(points: torch.Tensor, k: int = 3) -> torch.Tensor:
    """Mean distance to the k nearest other points: [P] (chunked; P up to ~1e5 on a CPU)."""
    out = torch.empty(points.shape[0])
    for start in range(0, points.shape[0], 2048):
        d = torch.cdist(points[start : start + 2048], points)
        out[start : start + 2048] = d.topk(k + 1, largest=False).values[:, 1:].mean(1)
    return out


class GaussianModel(nn.Module):
    """N Gaussians with a learnable `embed_dim` embedding each.

    params: means [N,3], quats [N,4] (wxyz), log_scales [N,3], sh0 [N,3], opacity_logits [N],
    embeddings [N, embed_dim].
    """

    def __init__(self, params: dict[str, torch.Tensor]):
        super().__init__()
        self.params = nn.ParameterDict({k: nn.Parameter(v.detach().clone()) for k, v in params.items()})

    @classmethod
    def from_points(
        cls, points: np.ndarray, embed_dim: int = 32, max_points: int = 100_000, opacity: float = 0.5, seed: int = 0
    ) -> "GaussianModel":
        """Initialise from a dense point cloud [P, 6] (xyz, rgb in [0,1]), subsampled to <= max_points."""
        rng = np.random.default_rng(seed)
        if len(points) > max_points:
            points = points[rng.choice(len(points), max_points, replace=False)]
        xyz = torch.as_tensor(points[:, :3], dtype=torch.float32)
        rgb = torch.as_tensor(points[:, 3:6], dtype=torch.float32).clamp(0.0, 1.0)
        n = xyz.shape[0]
        scale = _knn_mean_distance(xyz).clamp_min(1e-5)
        quats = torch.zeros(n, 4)
        quats[:, 0] = 1.0
        gen = torch.Generator().manual_seed(seed)
        return cls(
            {
                "means": xyz,
                "quats": quats,
                "log_scales": scale.log()[:, None].repeat(1, 3),
                "sh0": rgb_to_sh0(rgb),
                "opacity_logits": torch.full((n,), math.log(opacity / (1 - opacity))),
                "embeddings": 0.1 * torch.randn(n, embed_dim, generator=gen),
            }
        )

    def __len__(self) -> int:
        return self.params["means"].shape[0]

    @property
    def means(self) -> torch.Tensor:
        return self.params["means"]

    @property
    def embeddings(self) -> torch.Tensor:
        return self.params["embeddings"]

    def scales(self) -> torch.Tensor:
        return self.params["log_scales"].exp()

    def colors(self) -> torch.Tensor:
        return (0.5 + SH_C0 * self.params["sh0"]).clamp_min(0.0)

    def opacities(self, delta_logit: torch.Tensor | None = None, ids: torch.Tensor | None = None) -> torch.Tensor:
        """sigmoid(logit + delta_logit), of the Gaussians `ids` only when given (delta_logit then per id)."""
        logit = self.params["opacity_logits"] if ids is None else self.params["opacity_logits"][ids]
        return torch.sigmoid(logit if delta_logit is None else logit + delta_logit)
