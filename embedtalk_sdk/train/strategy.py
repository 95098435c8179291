"""Adaptive density control (3DGS): clone, split and prune, keeping optimiser state in step.

Every per-Gaussian parameter (embeddings included) follows each topology change, and Adam's
moments follow their rows: new rows start with zero moments, removed rows take theirs along.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from embedtalk_sdk.functional.rasterize import quat_to_rotmat
from embedtalk_sdk.model.gaussians import GaussianModel


@dataclass
class DensifyConfig:
    """Densify (and prune) at the steps start <= step < stop that are multiples of `every`."""

    start: int = 200
    stop: int = 3000
    every: int = 100
    grad_threshold: float = 2e-4  # mean |d loss / d mean2d| in normalised image units
    split_scale: float = 0.01  # world units: larger Gaussians split, smaller ones clone
    prune_opacity: float = 0.01
    max_gaussians: int = 60_000

    @classmethod
    def for_run(cls, iterations: int, device: torch.device, max_gaussians: int | None = None) -> DensifyConfig:
        """The schedule of a run of `iterations` steps on `device`, for the CLI and the Python API
        alike: from min(200, N / 5) to 0.7 N every max(50, N / 30) steps, capped at max_gaussians
        (default: `default_max_gaussians(device)`)."""
        cap = default_max_gaussians(device) if max_gaussians is None else max_gaussians
        return cls(start=min(200, iterations // 5), stop=int(iterations * 0.7), every=max(50, iterations // 30),
                   max_gaussians=cap)


CPU_MAX_GAUSSIANS = 15_000  # ~0.25 s a step at 256^2 on 2 cores (numba rasteriser)
GPU_MAX_GAUSSIANS = 60_000


def default_max_gaussians(device: torch.device) -> int:
    """The densification cap a run on `device` affords by default."""
    return GPU_MAX_GAUSSIANS if device.type == "cuda" else CPU_MAX_GAUSSIANS


class GradStats:
    """Accumulates the view-space positional gradient per Gaussian between densification steps."""

    def __init__(self, n: int):
        self.reset(n)

    def reset(self, n: int) -> None:
        self.grad_sum = torch.zeros(n)
        self.count = torch.zeros(n)

    def add(self, grad2d_norm: torch.Tensor, visible: torch.Tensor) -> None:
        self.grad_sum += torch.where(visible, grad2d_norm, torch.zeros_like(grad2d_norm))
        self.count += visible.float()

    def mean(self) -> torch.Tensor:
        return self.grad_sum / self.count.clamp_min(1)


def _replace_rows(optimizer: torch.optim.Optimizer, model: GaussianModel, new: dict[str, torch.Tensor], rows_fn) -> None:
    """Swap every per-Gaussian parameter for `new[name]`, mapping Adam state rows with `rows_fn`."""
    for group in optimizer.param_groups:
        old = group["params"][0]
        name = group["name"]
        if name not in new:
            continue
        param = torch.nn.Parameter(new[name])
        state = optimizer.state.pop(old, None)
        if state:
            for key in ("exp_avg", "exp_avg_sq"):
                state[key] = rows_fn(state[key])
            optimizer.state[param] = state
        group["params"][0] = param
        model.params[name] = param


def prune(model: GaussianModel, optimizer: torch.optim.Optimizer, keep: torch.Tensor) -> None:
    """Keep the Gaussians where `keep` [N] is True."""
    new = {k: v.detach()[keep] for k, v in model.params.items()}
    _replace_rows(optimizer, model, new, lambda s: s[keep])


def grow(model: GaussianModel, optimizer: torch.optim.Optimizer, clone: torch.Tensor, split: torch.Tensor) -> None:
    """Clone small Gaussians in place and split large ones into two samples of themselves (3DGS)."""
    p = {k: v.detach() for k, v in model.params.items()}
    idx_c = clone.nonzero()[:, 0]
    idx_s = split.nonzero()[:, 0]
    scales = p["log_scales"][idx_s].exp()
    q = p["quats"][idx_s]
    offsets = torch.randn(2, len(idx_s), 3) * scales
    samples = torch.einsum("sij,ksj->ksi", quat_to_rotmat(q), offsets)  # [2, S, 3]: in each one's frame
    shrink = torch.log(torch.tensor(1.6))
    added = {}
    for k, v in p.items():
        split_rows = v[idx_s]
        if k == "log_scales":
            split_rows = split_rows - shrink
        pair = [split_rows + samples[0], split_rows + samples[1]] if k == "means" else [split_rows, split_rows]
        added[k] = torch.cat([v[idx_c], pair[1]])
        p[k] = v.clone()
        p[k][idx_s] = pair[0]
    new = {k: torch.cat([p[k], added[k]]) for k in p}
    n_added = len(idx_c) + len(idx_s)

    def rows(s: torch.Tensor) -> torch.Tensor:
        s = s.clone()
        s[idx_s] = 0
        return torch.cat([s, s.new_zeros((n_added,) + s.shape[1:])])

    _replace_rows(optimizer, model, new, rows)


def densify_and_prune(
    model: GaussianModel, optimizer: torch.optim.Optimizer, stats: GradStats, cfg: DensifyConfig
) -> dict[str, int]:
    """One densification step; returns counts of what happened."""
    grads = stats.mean()
    big = model.scales().max(-1).values > cfg.split_scale
    hot = grads > cfg.grad_threshold
    room = cfg.max_gaussians - len(model)
    clone, split = hot & ~big, hot & big
    if room <= 0:
        clone, split = torch.zeros_like(hot), torch.zeros_like(hot)
    elif int(clone.sum() + split.sum()) > room:  # the hottest first
        order = grads.argsort(descending=True)[:room]
        chosen = torch.zeros_like(hot)
        chosen[order] = True
        clone, split = clone & chosen, split & chosen
    n_clone, n_split = int(clone.sum()), int(split.sum())
    grow(model, optimizer, clone, split)
    keep = model.opacities().detach() > cfg.prune_opacity
    n_pruned = int((~keep).sum())
    prune(model, optimizer, keep)
    stats.reset(len(model))
    return {"cloned": n_clone, "split": n_split, "pruned": n_pruned, "total": len(model)}
