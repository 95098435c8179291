"""Gaussian-splat rasteriser: the torch reference (differentiable).

The maths is defined once in `plugins/design.md` (steps 1-7); argument shapes and units in
docs/interfaces.md. This module is the oracle the fast implementations are tested against and the
renderer used for CPU training.

    proj = project(means, quats, scales, opacities, viewmat, K, width, height)   # steps 1-5
    image, alpha = rasterize_projected(proj, opacities, colors, background)      # steps 6-7
    # == rasterize(means, quats, scales, opacities, colors, viewmat, K, background)
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch
from torch import Tensor

TILE = 16  # the contract's tile (CUDA, numba)
EVAL_TILE = 8  # what this reference evaluates at: less padding waste, same image (design.md)
NEAR = 0.01
EPS2D = 0.3
ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.99
T_MIN = 1e-4
MAX_BLOCK_ELEMENTS = 1 << 24  # [tiles, pixels, M] elements per block: bounds autograd memory


class Projected(NamedTuple):
    """Per-Gaussian screen-space quantities (steps 1-5). Entries of invalid Gaussians are finite
    placeholders and must not be drawn."""

    mean2d: Tensor  # [N,2] pixels, differentiable
    conic: Tensor  # [N,3] (A, B, C) of inverse(cov2d), differentiable
    depth: Tensor  # [N] camera z
    radius: Tensor  # [N] int64 pixels; 0 where invalid
    valid: Tensor  # [N] bool


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """quats [N,4] (w,x,y,z), any norm -> rotation matrices [N,3,3]."""
    w, x, y, z = torch.unbind(quats / quats.norm(dim=-1, keepdim=True), dim=-1)
    R = torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    )
    return R.reshape(quats.shape[:-1] + (3, 3))


def covariance_3d(quats: Tensor, scales: Tensor) -> Tensor:
    """Sigma = R diag(s)^2 R^T. quats [N,4], scales [N,3] -> [N,3,3]."""
    M = quat_to_rotmat(quats) * scales[:, None, :]  # R diag(s)
    return M @ M.transpose(-1, -2)


def projection_jacobian(p: Tensor, K: Tensor, width: int, height: int) -> Tensor:
    """Jacobian of the pinhole projection at camera points p [N,3] with gsplat's clamp -> [N,2,3].

    Rows of points behind the near plane are garbage; callers mask them."""
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    x, y, z = p.unbind(-1)
    tan_fovx, tan_fovy = 0.5 * width / fx, 0.5 * height / fy
    lim_x_pos, lim_x_neg = (width - cx) / fx + 0.3 * tan_fovx, cx / fx + 0.3 * tan_fovx
    lim_y_pos, lim_y_neg = (height - cy) / fy + 0.3 * tan_fovy, cy / fy + 0.3 * tan_fovy
    tx = z * torch.clamp(x / z, min=-lim_x_neg, max=lim_x_pos)
    ty = z * torch.clamp(y / z, min=-lim_y_neg, max=lim_y_pos)
    zero = torch.zeros_like(z)
    J = torch.stack(
        [fx / z, zero, -fx * tx / (z * z), zero, fy / z, -fy * ty / (z * z)], dim=-1
    )
    return J.reshape(-1, 2, 3)


@torch.no_grad()
def culling_radius(cov2d: Tensor, det: Tensor, opacities: Tensor) -> Tensor:
    """Step 5: integer pixel radius outside which alpha < 1/255. cov2d [N,2,2], det, opacities [N]
    -> radius [N] int64 (garbage where o < 1/255 or det <= 0; callers mask)."""
    a, b, c = cov2d[:, 0, 0], cov2d[:, 0, 1], cov2d[:, 1, 1]
    mid = 0.5 * (a + c)
    # mid^2 - det written without the cancellation (float32 lost it for near-isotropic footprints)
    lam = mid + torch.sqrt(torch.clamp(0.25 * (a - c) ** 2 + b * b, min=0.1))
    log_term = torch.log(torch.clamp(255.0 * opacities, min=1.0))
    return torch.ceil(torch.sqrt(2.0 * log_term * lam)).to(torch.int64)


def project(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    viewmat: Tensor,
    K: Tensor,
    width: int,
    height: int,
) -> Projected:
    """Steps 1-5 of plugins/design.md.

    means [N,3], quats [N,4] wxyz, scales [N,3], opacities [N], viewmat [4,4] (w2c OpenCV),
    K [3,3] -> Projected(mean2d [N,2], conic [N,3], depth [N], radius [N], valid [N]).
    """
    R_v, t_v = viewmat[:3, :3], viewmat[:3, 3]
    p = means @ R_v.T + t_v  # [N,3]
    depth = p[:, 2]
    in_front = depth.detach() >= NEAR
    # Culled Gaussians get z = 1 so no inf/nan reaches the (masked) gradient.
    z = torch.where(in_front, depth, torch.ones_like(depth))
    p_safe = torch.cat([p[:, :2], z[:, None]], dim=-1)

    J = projection_jacobian(p_safe, K, width, height)  # [N,2,3]
    JR = J @ R_v  # [N,2,3]
    cov2d = JR @ covariance_3d(quats, scales) @ JR.transpose(-1, -2)
    cov2d = cov2d + EPS2D * torch.eye(2, dtype=cov2d.dtype, device=cov2d.device)
    a, b, c = cov2d[:, 0, 0], 0.5 * (cov2d[:, 0, 1] + cov2d[:, 1, 0]), cov2d[:, 1, 1]
    det = a * c - b * b
    det_ok = det.detach() > 0
    det_safe = torch.where(det_ok, det, torch.ones_like(det))
    conic = torch.stack([c / det_safe, -b / det_safe, a / det_safe], dim=-1)

    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    mean2d = torch.stack([fx * p_safe[:, 0] / z + cx, fy * p_safe[:, 1] / z + cy], dim=-1)

    valid = in_front & det_ok & (opacities.detach() >= ALPHA_MIN)
    radius = torch.where(valid, culling_radius(cov2d.detach(), det.detach(), opacities.detach()), 0)
    return Projected(mean2d, conic, depth, radius, valid)


class TileBins(NamedTuple):
    """(gaussian, tile) pairs sorted by (tile, depth rank), as CSR over tiles."""

    gauss_ids: Tensor  # [P] int64 Gaussian index of each pair, sorted
    offsets: Tensor  # [n_tiles + 1] int64: pairs of tile t are gauss_ids[offsets[t]:offsets[t+1]]
    tiles_x: int
    tiles_y: int
    tile_size: int


@torch.no_grad()
def bin_tiles(proj: Projected, width: int, height: int, tile_size: int = TILE) -> TileBins:
    """Step 6: bin valid Gaussians into the square tiles their radius box touches."""
    ts = tile_size
    tiles_x, tiles_y = -(-width // ts), -(-height // ts)
    mean2d, r = proj.mean2d.detach(), proj.radius.to(proj.mean2d.dtype)

    def tile_range(centre: Tensor, n: int) -> tuple[Tensor, Tensor]:
        # Clamp in float first: mean2d can be huge near the near plane.
        lo = torch.floor(((centre - r) / ts).clamp(-1, n)).to(torch.int64)
        hi = torch.floor(((centre + r) / ts).clamp(-1, n)).to(torch.int64)
        return lo.clamp(min=0), hi.clamp(max=n - 1)

    x0, x1 = tile_range(mean2d[:, 0], tiles_x)
    y0, y1 = tile_range(mean2d[:, 1], tiles_y)
    nx, ny = (x1 - x0 + 1).clamp(min=0), (y1 - y0 + 1).clamp(min=0)
    count = torch.where(proj.valid, nx * ny, 0)  # [N]

    N, dev = count.shape[0], count.device
    gid = torch.repeat_interleave(torch.arange(N, device=dev), count)  # [P]
    k = torch.arange(gid.shape[0], device=dev) - (torch.cumsum(count, 0) - count)[gid]  # index within gaussian
    tile = (y0[gid] + k // nx[gid]) * tiles_x + x0[gid] + k % nx[gid]

    rank = torch.empty(N, dtype=torch.int64, device=dev)
    rank[torch.sort(proj.depth.detach(), stable=True).indices] = torch.arange(N, device=dev)
    order = torch.argsort(tile * N + rank[gid])
    per_tile = torch.bincount(tile, minlength=tiles_x * tiles_y)
    offsets = torch.cat([per_tile.new_zeros(1), torch.cumsum(per_tile, 0)])
    return TileBins(gid[order], offsets, tiles_x, tiles_y, ts)


@torch.no_grad()
def tile_blocks(bins: TileBins, max_elements: int = MAX_BLOCK_ELEMENTS) -> list[Tensor]:
    """Group non-empty tiles into blocks of similar Gaussian count -> list of tile-id tensors [B].
    A block pads to its largest count, so it stops where padding would more than double its
    work or its [B, pixels, M] evaluation would exceed max_elements."""
    counts = bins.offsets[1:] - bins.offsets[:-1]
    tiles = torch.nonzero(counts > 0).squeeze(1)
    tiles = tiles[torch.argsort(counts[tiles], descending=True, stable=True)]
    c, pixels = counts[tiles].tolist(), bins.tile_size**2
    blocks, start = [], 0
    for i in range(1, len(c) + 1):
        if i == len(c) or 2 * c[i] < c[start] or (i - start + 1) * c[start] * pixels > max_elements:
            blocks.append(tiles[start:i])
            start = i
    return blocks


def blend_tiles(
    tiles: Tensor,
    bins: TileBins,
    mean2d: Tensor,
    conic: Tensor,
    opacities: Tensor,
    colors: Tensor,
    bg_tiles: Tensor,
) -> tuple[Tensor, Tensor]:
    """Steps 4 and 7 for a block of B tiles of P = tile_size^2 pixels.

    tiles [B] tile ids; mean2d [N+1,2], conic [N+1,3], opacities [N+1], colors [N+1,3]
    (row N: padding, opacity 0); bg_tiles [B,P,3] -> (color [B,P,3], transmittance [B,P]).
    """
    ts = bins.tile_size
    start, count = bins.offsets[tiles], bins.offsets[tiles + 1] - bins.offsets[tiles]
    M = int(count.max())
    slot = torch.arange(M, device=tiles.device)
    pos = (start[:, None] + slot).clamp(max=bins.gauss_ids.shape[0] - 1)
    idx = torch.where(slot < count[:, None], bins.gauss_ids[pos], mean2d.shape[0] - 1)  # [B,M]

    pix = torch.arange(ts * ts, device=tiles.device)
    px = ((tiles % bins.tiles_x)[:, None] * ts + pix % ts).to(mean2d.dtype) + 0.5  # [B,P]
    py = ((tiles // bins.tiles_x)[:, None] * ts + pix // ts).to(mean2d.dtype) + 0.5
    m, q = mean2d[idx], conic[idx]  # [B,M,2], [B,M,3]
    dx = px[:, :, None] - m[:, None, :, 0]  # [B,P,M]
    dy = py[:, :, None] - m[:, None, :, 1]
    # sigma = 0.5 A dx^2 + B dx dy + 0.5 C dy^2, factored to save passes over [B,P,M]
    qa, qb, qc = (0.5 * q[:, None, :, 0]), q[:, None, :, 1], (0.5 * q[:, None, :, 2])
    sigma = dx * (qa * dx + qb * dy) + qc * dy * dy
    alpha = torch.clamp(opacities[idx][:, None, :] * torch.exp(-sigma), max=ALPHA_MAX)

    with torch.no_grad():  # the skip and stop rules: constant masks
        hit = alpha >= ALPHA_MIN
        keep = hit & (torch.cumprod(1.0 - alpha * hit, dim=-1) >= T_MIN)
    a = alpha * keep
    T_incl = torch.cumprod(1.0 - a, dim=-1)  # [B,P,M]
    T_excl = torch.cat([torch.ones_like(T_incl[..., :1]), T_incl[..., :-1]], dim=-1)
    color = torch.bmm(a * T_excl, colors[idx])  # [B,P,3]
    T = T_incl[..., -1]
    return color + T[..., None] * bg_tiles, T


def rasterize_projected(
    proj: Projected,
    opacities: Tensor,
    colors: Tensor,
    background: Tensor,
    tile_size: int = EVAL_TILE,
    max_block_elements: int = MAX_BLOCK_ELEMENTS,
) -> tuple[Tensor, Tensor]:
    """Steps 6-7. proj from `project`; opacities [N], colors [N,3], background [H,W,3]
    -> (image [H,W,3], alpha [H,W]). tile_size does not change the result (design.md, step 6)."""
    H, W = background.shape[:2]
    bins = bin_tiles(proj, W, H, tile_size)
    ty, tx, ts = bins.tiles_y, bins.tiles_x, tile_size
    bg = torch.nn.functional.pad(background, (0, 0, 0, tx * ts - W, 0, ty * ts - H))
    bg_tiles = bg.reshape(ty, ts, tx, ts, 3).permute(0, 2, 1, 3, 4).reshape(ty * tx, ts * ts, 3)

    def ext(x: Tensor) -> Tensor:  # append the padding row (opacity 0)
        return torch.cat([x, torch.zeros_like(x[:1])], dim=0)

    mean2d, conic = ext(proj.mean2d), ext(proj.conic)
    opac, col = ext(opacities * proj.valid), ext(colors)
    out, T = bg_tiles, bg_tiles.new_ones(ty * tx, ts * ts)
    for tiles in tile_blocks(bins, max_block_elements):
        c, t = blend_tiles(tiles, bins, mean2d, conic, opac, col, bg_tiles[tiles])
        out, T = out.index_copy(0, tiles, c), T.index_copy(0, tiles, t)

    image = out.reshape(ty, tx, ts, ts, 3).permute(0, 2, 1, 3, 4).reshape(ty * ts, tx * ts, 3)
    T_img = T.reshape(ty, tx, ts, ts).permute(0, 2, 1, 3).reshape(ty * ts, tx * ts)
    return image[:H, :W], 1.0 - T_img[:H, :W]


def rasterize(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    viewmat: Tensor,
    K: Tensor,
    background: Tensor,
    blend: Callable[[Projected, Tensor, Tensor, Tensor], tuple[Tensor, Tensor]] | None = None,
) -> tuple[Tensor, Tensor]:
    """Draw Gaussians over a background (plugins/design.md, steps 1-7).

    means [N,3], quats [N,4] wxyz, scales [N,3] (activated), opacities [N] in (0,1),
    colors [N,3], viewmat [4,4] w2c OpenCV, K [3,3], background [H,W,3]
    -> (image [H,W,3], alpha [H,W]), in the inputs' dtype. Gradients reach means, quats, scales,
    opacities, colors and background (tested), and viewmat and K (untested). For screen-space
    gradients (densification), call `project` and `rasterize_projected` and retain_grad() on
    `proj.mean2d`. blend: steps 6-7 (default `rasterize_projected`; the CPU training rasteriser
    passes its numba blend, functional/rasterize_cpu.py).
    """
    H, W = background.shape[:2]
    proj = project(means, quats, scales, opacities, viewmat, K, W, H)
    return (blend or rasterize_projected)(proj, opacities, colors, background)
