"""Fast CPU blending with gradients (steps 6-7 of plugins/design.md): numba, numpy, no torch.

CPU training projects in torch (steps 1-5, cheap and differentiable) and blends here: the forward
is rasterize.py's tile kernel, which also records each pixel's final transmittance and the list
position where its early stop fired; the backward walks every tile's list back to front, recovers
each contributor's transmittance by division (T_k = T_{k+1} / (1 - alpha_k), alpha <= 0.99) and
writes one gradient row per (Gaussian, tile) pair, so threads never share a row; rows are then
summed per Gaussian. The skip and stop rules are constants, and the 0.99 clamp passes no gradient,
as in the torch reference (design.md, "Gradients"), which tests/test_rasterize_grad.py checks
this against.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from embedtalk_sdk.plugins.cpu.rasterize import (
    ALPHA_MAX, ALPHA_MIN, HALF, SIGMA_MARGIN, TILE, blend, row_range, row_span, sigma, tiles_one_at_a_time,
)

# Columns of a gradient row: d/d(mean2d.x, mean2d.y, A, B, C, opacity, r, g, b).
GRAD_COLUMNS = 9


@njit(parallel=True, fastmath=False, cache=True)
def support_from_conic(conic, opacities):
    """Row spans (rasterize._project_one's `support`) from conic [N,3] and opacities [N] -> f64[N,4].
    Rows of Gaussians that cannot reach 1/255 are zero (the caller bins none of them)."""
    n = conic.shape[0]
    support = np.zeros((n, 4), np.float64)
    for g in prange(n):
        A, B, C = np.float64(conic[g, 0]), np.float64(conic[g, 1]), np.float64(conic[g, 2])
        o = np.float64(opacities[g])
        det_c = A * C - B * B  # 1 / det(cov2d)
        if not (o >= 1.0 / 255.0 and A > 0.0 and det_c > 0.0):
            continue
        s_max = math.log(255.0 * o) + SIGMA_MARGIN
        support[g, 0] = -B / A
        support[g, 1] = 2.0 * s_max / A
        support[g, 2] = det_c / (A * A)
        support[g, 3] = math.sqrt(2.0 * s_max * A / det_c)
    return support


@njit(fastmath=False, cache=True)
def _backward_tile(t, offsets, ids, mean2d, conic, opacities, colors, support, background, trans, stop,
                   grad_image, grad_alpha, tiles_x, grad_pairs, T, behind):
    """Gradients of the pairs of tile t -> grad_pairs[offsets[t]:offsets[t + 1]].
    Scratch of this tile: T [256], the transmittance in front of the Gaussian being undone;
    behind [256,3], the colour of everything behind it, background included."""
    H, W = background.shape[0], background.shape[1]
    i0, j0 = (t // tiles_x) * TILE, (t % tiles_x) * TILE
    i1, j1 = min(i0 + TILE, H), min(j0 + TILE, W)
    last = offsets[t]  # one past the deepest list position any pixel of the tile reached
    for i in range(i0, i1):
        for j in range(j0, j1):
            c = (i - i0) * TILE + (j - j0)
            T[c] = trans[i, j]
            last = max(last, stop[i, j])
            for ch in range(3):
                behind[c, ch] = T[c] * background[i, j, ch]
    for k in range(last - 1, offsets[t] - 1, -1):
        g = ids[k]
        mx, my, A, B, C, o = mean2d[g, 0], mean2d[g, 1], conic[g, 0], conic[g, 1], conic[g, 2], opacities[g]
        my64 = np.float64(my)
        ia, ib = row_range(my64, support[g, 3], i0, i1)
        d_mx = d_my = d_A = d_B = d_C = d_o = d_r = d_g = d_b = 0.0
        for i in range(ia, ib + 1):
            py = np.float32(i) + HALF
            dy = py - my
            ja, jb = row_span(np.float64(py) - my64, np.float64(mx), support[g, 0], support[g, 1],
                               support[g, 2], j0, j1)
            for j in range(ja, jb + 1):
                c = (i - i0) * TILE + (j - j0)
                if k >= stop[i, j]:
                    continue
                dx = np.float32(j) + HALF - mx
                e = math.exp(-sigma(dx, dy, A, B, C))
                a_raw = o * e
                a = min(ALPHA_MAX, a_raw)
                if a < ALPHA_MIN:
                    continue
                a64 = np.float64(a)
                keep = 1.0 - a64
                T_k = T[c] / keep
                w = a64 * T_k
                dL_da = np.float64(grad_alpha[i, j]) * np.float64(trans[i, j]) / keep
                for ch in range(3):
                    col = np.float64(colors[g, ch])
                    dL_da += grad_image[i, j, ch] * (col * T_k - behind[c, ch] / keep)
                    behind[c, ch] += col * w
                d_r += grad_image[i, j, 0] * w
                d_g += grad_image[i, j, 1] * w
                d_b += grad_image[i, j, 2] * w
                T[c] = T_k
                if a_raw <= ALPHA_MAX:  # the clamp passes no gradient where it bites
                    d_o += dL_da * np.float64(e)
                    d_sigma = -dL_da * a64
                    dx64, dy64 = np.float64(dx), np.float64(dy)
                    d_mx -= d_sigma * (A * dx64 + B * dy64)
                    d_my -= d_sigma * (B * dx64 + C * dy64)
                    d_A += d_sigma * 0.5 * dx64 * dx64
                    d_B += d_sigma * dx64 * dy64
                    d_C += d_sigma * 0.5 * dy64 * dy64
        row = grad_pairs[k]
        row[0], row[1], row[2], row[3], row[4] = d_mx, d_my, d_A, d_B, d_C
        row[5], row[6], row[7], row[8] = d_o, d_r, d_g, d_b


@njit(parallel=True, fastmath=False, cache=True)
def _backward(offsets, ids, mean2d, conic, opacities, colors, support, background, trans, stop,
              grad_image, grad_alpha, tiles_x, grad_pairs, T, behind):
    """Every tile in parallel; T [n_tiles,256] and behind [n_tiles,256,3] are per-tile scratch
    (_backward_tile) allocated by the caller: allocating here would turn into parallel loops of their own."""
    for t in prange(offsets.shape[0] - 1):
        _backward_tile(t, offsets, ids, mean2d, conic, opacities, colors, support, background, trans, stop,
                       grad_image, grad_alpha, tiles_x, grad_pairs, T[t], behind[t])


@njit(fastmath=False, cache=True)
def _sum_pairs(ids, grad_pairs, n):
    """Rows per (Gaussian, tile) pair -> rows per Gaussian f64[n, GRAD_COLUMNS]."""
    grads = np.zeros((n, GRAD_COLUMNS), np.float64)
    for k in range(ids.shape[0]):
        g = ids[k]
        for col in range(GRAD_COLUMNS):
            grads[g, col] += grad_pairs[k, col]
    return grads


def blend_forward(
    offsets: np.ndarray,
    ids: np.ndarray,
    mean2d: np.ndarray,
    conic: np.ndarray,
    opacities: np.ndarray,
    colors: np.ndarray,
    background: np.ndarray,
) -> tuple[np.ndarray, ...]:
    """Steps 6-7 on projected Gaussians binned into 16x16 tiles.

    offsets i64[n_tiles+1], ids i64[pairs] (CSR, each tile's list in depth order), mean2d f32[N,2],
    conic f32[N,3], opacities f32[N] (0 where invalid), colors f32[N,3], background f32[H,W,3]
    -> (image f32[H,W,3], alpha f32[H,W], trans f32[H,W], stop i64[H,W], support f64[N,4]);
    the last three are what blend_backward needs.
    """
    tiles_x = -(-background.shape[1] // TILE)
    support = support_from_conic(conic, opacities)
    with tiles_one_at_a_time():
        image, alpha, trans, stop = blend(offsets, ids, mean2d, conic, opacities, colors, support, background,
                                           tiles_x)
    return image, alpha, trans, stop, support


def blend_backward(
    offsets: np.ndarray,
    ids: np.ndarray,
    mean2d: np.ndarray,
    conic: np.ndarray,
    opacities: np.ndarray,
    colors: np.ndarray,
    background: np.ndarray,
    saved: tuple[np.ndarray, np.ndarray, np.ndarray],
    grad_image: np.ndarray,
    grad_alpha: np.ndarray,
) -> np.ndarray:
    """Gradients of blend_forward's inputs given dL/dimage f32[H,W,3] and dL/dalpha f32[H,W];
    saved = (trans, stop, support) from blend_forward -> f64[N,9] with columns
    (mean2d.x, mean2d.y, A, B, C, opacity, r, g, b). dL/dbackground is grad_image * trans."""
    trans, stop, support = saved
    tiles_x = -(-background.shape[1] // TILE)
    n_tiles, n_pix = offsets.shape[0] - 1, TILE * TILE
    grad_pairs = np.zeros((ids.shape[0], GRAD_COLUMNS), np.float64)
    T, behind = np.empty((n_tiles, n_pix), np.float64), np.empty((n_tiles, n_pix, 3), np.float64)
    with tiles_one_at_a_time():
        _backward(offsets, ids, mean2d, conic, opacities, colors, support, background, trans, stop, grad_image,
                  grad_alpha, tiles_x, grad_pairs, T, behind)
    return _sum_pairs(ids, grad_pairs, mean2d.shape[0])
