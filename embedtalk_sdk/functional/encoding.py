"""Positional encoding gamma(.) of the paper (eq. 9); its width is `runtime/deform_schema.encoded_dim`."""
from __future__ import annotations

import torch


def positional_encoding(x: torch.Tensor, n_freqs: int) -> torch.Tensor:
    """gamma(x) = [x, sin(2^k pi x), cos(2^k pi x)] for k < n_freqs, per feature.

    Args:
        x: [..., D]
    Returns:
        [..., D * (1 + 2 * n_freqs)], laid out as [x, sin(f0 x), cos(f0 x), sin(f1 x), ...].
    """
    if n_freqs == 0:
        return x
    freqs = (2.0 ** torch.arange(n_freqs, dtype=x.dtype, device=x.device)) * torch.pi
    scaled = x[..., None, :] * freqs[:, None]  # [..., F, D]
    parts = torch.stack([torch.sin(scaled), torch.cos(scaled)], dim=-2)  # [..., F, 2, D]
    return torch.cat([x, parts.flatten(-3)], dim=-1)

