"""Fast CPU Gaussian-splat rasteriser: forward only, numba, numpy float32 in/out, no torch.

The maths is plugins/design.md (steps 1-7); tests/test_rasterize.py checks this against the torch
reference and a plain per-pixel oracle. Pipeline: project (parallel over Gaussians) -> one stable
depth sort -> bin into 16x16 tiles in depth order (count, prefix sum, fill; each tile's list comes
out sorted) -> blend (parallel over tiles; each Gaussian only over the row spans of its support,
each pixel front to back with the early stop; see design.md, "Implementation notes").
Projection runs in float64; blending in float32 with float32 constants, so the threshold tests
round as in the float32 torch reference and a CUDA kernel.
Two blends: `blend` (libm's exp, one pixel at a time; also records what the backward in
rasterize_grad.py needs) and `blend_fast` / `blend_u8`, the playback path: 8 pixels per SIMD
step with a float32 exp of its own (`exp_neg`, <= 1e-7 relative error, libm's expf is ~1.8e-7),
no backward records, and `blend_u8` composites over the uint8 background and rounds to uint8 in
the same pass. The first call compiles (~10 s);
cache=True keeps the machine code next to this file (or in numba's user cache dir) for later runs.
"""
from __future__ import annotations

import math
import time

import numpy as np
from numba import get_parallel_chunksize, njit, prange, set_parallel_chunksize
from numba.core import types
from numba.extending import intrinsic

from embedtalk_sdk.plugins.cpu.inputs import float32_array, gaussian_arrays, u8_canvas
from embedtalk_sdk.runtime.stages import add_stage, stage_clock

TILE = 16
NEAR = 0.01
EPS2D = 0.3
ALPHA_MIN = np.float32(1.0 / 255.0)
ALPHA_MAX = np.float32(0.99)
T_MIN = np.float32(1e-4)
HALF = np.float32(0.5)
ONE = np.float32(1.0)
ZERO = np.float32(0.0)
U8_MAX = np.float32(255.0)
# Pixels with sigma > log(255 o) + margin have alpha < 1/255 whatever the float32 rounding: the
# row spans (row_span) leave them out; the exact alpha test runs on the rest.
SIGMA_MARGIN = 1e-2


@njit(fastmath=False, cache=True)
def _project_one(g, means, quats, scales, opacities, viewmat, K, width, height, mean2d, conic, depth, rect, support):
    """Steps 1-5 and the tile box (step 6) for Gaussian g; writes row g of the outputs.
    rect[g] = (x0, x1, y0, y1) inclusive tile ranges; empty (x1 < x0) when culled.
    support[g] = (kB, P, Q, y_reach): where sigma <= log(255 o) + margin, pixel centres lie at
    |dy| <= y_reach and x in mean.x + kB dy +- sqrt(P - Q dy^2)."""
    rect[g, 0], rect[g, 1], rect[g, 2], rect[g, 3] = 0, -1, 0, -1
    m0, m1, m2 = np.float64(means[g, 0]), np.float64(means[g, 1]), np.float64(means[g, 2])
    x = viewmat[0, 0] * m0 + viewmat[0, 1] * m1 + viewmat[0, 2] * m2 + viewmat[0, 3]
    y = viewmat[1, 0] * m0 + viewmat[1, 1] * m1 + viewmat[1, 2] * m2 + viewmat[1, 3]
    z = viewmat[2, 0] * m0 + viewmat[2, 1] * m1 + viewmat[2, 2] * m2 + viewmat[2, 3]
    depth[g] = z
    o = np.float64(opacities[g])
    if not (z >= NEAR and o >= 1.0 / 255.0):  # NaN-proof
        return

    # Sigma = M M^T with M = R(q) diag(s).
    w, qx, qy, qz = (np.float64(quats[g, 0]), np.float64(quats[g, 1]),
                     np.float64(quats[g, 2]), np.float64(quats[g, 3]))
    qn = math.sqrt(w * w + qx * qx + qy * qy + qz * qz)
    w, qx, qy, qz = w / qn, qx / qn, qy / qn, qz / qn
    # columns of R(q) (no array: this runs per Gaussian in a parallel loop)
    r00, r01, r02 = 1 - 2 * (qy * qy + qz * qz), 2 * (qx * qy - w * qz), 2 * (qx * qz + w * qy)
    r10, r11, r12 = 2 * (qx * qy + w * qz), 1 - 2 * (qx * qx + qz * qz), 2 * (qy * qz - w * qx)
    r20, r21, r22 = 2 * (qx * qz - w * qy), 2 * (qy * qz + w * qx), 1 - 2 * (qx * qx + qy * qy)
    # U = J R_v R(q) diag(s) [2,3]; cov2d = U U^T + 0.3 I.
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    tan_x, tan_y = 0.5 * width / fx, 0.5 * height / fy
    tx = z * min(max(x / z, -(cx / fx + 0.3 * tan_x)), (width - cx) / fx + 0.3 * tan_x)
    ty = z * min(max(y / z, -(cy / fy + 0.3 * tan_y)), (height - cy) / fy + 0.3 * tan_y)
    j00, j02, j11, j12 = fx / z, -fx * tx / (z * z), fy / z, -fy * ty / (z * z)
    a, b, c = EPS2D, 0.0, EPS2D
    for k in range(3):
        rk0, rk1, rk2 = (r00, r10, r20) if k == 0 else ((r01, r11, r21) if k == 1 else (r02, r12, r22))
        s_k = np.float64(scales[g, k])
        # column k of R_v R(q), times s_k
        v0 = (viewmat[0, 0] * rk0 + viewmat[0, 1] * rk1 + viewmat[0, 2] * rk2) * s_k
        v1 = (viewmat[1, 0] * rk0 + viewmat[1, 1] * rk1 + viewmat[1, 2] * rk2) * s_k
        v2 = (viewmat[2, 0] * rk0 + viewmat[2, 1] * rk1 + viewmat[2, 2] * rk2) * s_k
        u0, u1 = j00 * v0 + j02 * v2, j11 * v1 + j12 * v2
        a += u0 * u0
        b += u0 * u1
        c += u1 * u1
    det = a * c - b * b
    if not det > 0.0:  # also culls NaN (e.g. a zero quaternion), as the torch reference does
        return
    mx, my = fx * x / z + cx, fy * y / z + cy
    mean2d[g, 0], mean2d[g, 1] = mx, my
    conic[g, 0], conic[g, 1], conic[g, 2] = c / det, -b / det, a / det
    log_o = math.log(255.0 * o)
    # 0.5 A dx^2 + B dx dy + 0.5 C dy^2 <= s_max, solved for dx (A = c/det, B = -b/det, C = a/det)
    s_max = log_o + SIGMA_MARGIN
    support[g, 0] = b / c  # -B/A
    support[g, 1] = 2.0 * s_max * det / c  # 2 s_max / A
    support[g, 2] = det / (c * c)  # (AC - B^2) / A^2
    support[g, 3] = math.sqrt(2.0 * s_max * c)  # sqrt(P/Q): the largest |dy|

    mid = 0.5 * (a + c)
    lam = mid + math.sqrt(max(0.1, 0.25 * (a - c) * (a - c) + b * b))  # mid^2 - det, no cancellation
    r = math.ceil(math.sqrt(2.0 * log_o * lam))
    tiles_x, tiles_y = (width + TILE - 1) // TILE, (height + TILE - 1) // TILE
    # clamp in float first: mx can be huge next to the near plane
    rect[g, 0] = max(0, int(math.floor(min(max((mx - r) / TILE, -1.0), tiles_x))))
    rect[g, 1] = min(tiles_x - 1, int(math.floor(min(max((mx + r) / TILE, -1.0), tiles_x))))
    rect[g, 2] = max(0, int(math.floor(min(max((my - r) / TILE, -1.0), tiles_y))))
    rect[g, 3] = min(tiles_y - 1, int(math.floor(min(max((my + r) / TILE, -1.0), tiles_y))))


@njit(parallel=True, fastmath=False, cache=True)
def project(means, quats, scales, opacities, viewmat, K, width, height):
    """Steps 1-5 for all Gaussians (float32 in, float64 maths).
    -> mean2d f32[N,2], conic f32[N,3], depth f64[N], rect i32[N,4], support f64[N,4]
    (see _project_one)."""
    n = means.shape[0]
    mean2d = np.zeros((n, 2), np.float32)
    conic = np.zeros((n, 3), np.float32)
    depth = np.empty(n, np.float64)
    rect = np.empty((n, 4), np.int32)
    support = np.zeros((n, 4), np.float64)
    vm, k = viewmat.astype(np.float64), K.astype(np.float64)
    for g in prange(n):
        _project_one(g, means, quats, scales, opacities, vm, k, width, height, mean2d, conic, depth, rect, support)
    return mean2d, conic, depth, rect, support


@njit(fastmath=False, cache=True)
def bin_tiles(depth, rect, tiles_x, tiles_y):
    """Step 6: CSR of Gaussian ids per tile, each tile's list in (depth, index) order.
    depth f64[N], rect i32[N,4] -> offsets i64[n_tiles+1], ids i32[pairs]."""
    order = np.argsort(depth)  # quicksort (numba's mergesort took 3x as long), then ties by index:
    i, n = 0, order.shape[0]
    while i < n:  # runs of equal depth sorted by index: the stable order, whatever the sort did
        j = i + 1
        while j < n and depth[order[j]] == depth[order[i]]:
            j += 1
        if j - i > 1:
            order[i:j] = np.sort(order[i:j])
        i = j
    n_tiles = tiles_x * tiles_y
    offsets = np.zeros(n_tiles + 1, np.int64)
    for g in order:
        for ty in range(rect[g, 2], rect[g, 3] + 1):
            for tx in range(rect[g, 0], rect[g, 1] + 1):
                offsets[ty * tiles_x + tx + 1] += 1
    for t in range(n_tiles):
        offsets[t + 1] += offsets[t]
    fill = offsets[:-1].copy()
    ids = np.empty(offsets[n_tiles], np.int32)
    for g in order:  # depth order, so every tile's slice comes out sorted
        for ty in range(rect[g, 2], rect[g, 3] + 1):
            for tx in range(rect[g, 0], rect[g, 1] + 1):
                t = ty * tiles_x + tx
                ids[fill[t]] = g
                fill[t] += 1
    return offsets, ids


@njit(fastmath=False, cache=True)
def row_span(dy, mx, kB, P, Q, j0, j1):
    """Columns j in [j0, j1) of a pixel row at dy from a Gaussian whose centre j + 0.5 lies in its
    support (see _project_one) -> (ja, jb), empty if ja > jb. Float64: the rounding here is far
    smaller than the pixel distance SIGMA_MARGIN puts between this and the exact alpha test."""
    h2 = P - Q * dy * dy
    if h2 < 0.0:
        return 1, 0
    xc, hw = mx + kB * dy - 0.5, math.sqrt(h2)
    xa = min(max(xc - hw, j0 - 1.0), j1 + 1.0)  # clamp before int(): spans can be huge
    xb = min(max(xc + hw, j0 - 1.0), j1 + 1.0)
    return max(j0, int(math.ceil(xa))), min(j1 - 1, int(math.floor(xb)))


@njit(fastmath=False, cache=True)
def row_range(my64, reach, i0, i1):
    """Rows i in [i0, i1) whose pixel centre lies within `reach` of the centre row my64 -> (ia, ib)
    inclusive, empty if ia > ib."""
    ia = max(i0, int(math.ceil(max(my64 - reach - 0.5, i0 - 1.0))))
    ib = min(i1 - 1, int(math.floor(min(my64 + reach - 0.5, i1 + 1.0))))
    return ia, ib


@njit(fastmath=False, cache=True)
def sigma(dx, dy, A, B, C):
    """Step 4's exponent in float32; the backward recomputes it with this same function."""
    return HALF * (A * dx * dx + C * dy * dy) + B * dx * dy


@njit(fastmath=False, cache=True)
def _blend_tile(t, offsets, ids, mean2d, conic, opacities, colors, support, background, tiles_x, image, alpha,
                trans, stop):
    """Step 7 for the pixels of tile t; writes them into image [H,W,3] and alpha [H,W], and for the
    backward pass (rasterize_grad.py) the final transmittance trans [H,W] and stop [H,W]: the list
    position of the Gaussian that ended the pixel (offsets[t + 1] if none did).

    Gaussian by Gaussian in depth order, each over just the pixels of its support (row spans):
    every pixel still sees its Gaussians in order; the break is kept per pixel (`live`)."""
    H, W = background.shape[0], background.shape[1]
    i0, j0 = (t // tiles_x) * TILE, (t % tiles_x) * TILE
    i1, j1 = min(i0 + TILE, H), min(j0 + TILE, W)
    T = np.ones(TILE * TILE, np.float32)
    rgb = np.zeros((TILE * TILE, 3), np.float32)
    live = np.ones(TILE * TILE, np.bool_)
    n_live = (i1 - i0) * (j1 - j0)
    stop[i0:i1, j0:j1] = offsets[t + 1]
    for k in range(offsets[t], offsets[t + 1]):
        g = ids[k]
        mx, my, A, B, C, o = mean2d[g, 0], mean2d[g, 1], conic[g, 0], conic[g, 1], conic[g, 2], opacities[g]
        my64 = np.float64(my)
        ia, ib = row_range(my64, support[g, 3], i0, i1)
        for i in range(ia, ib + 1):
            py = np.float32(i) + HALF
            dy = py - my
            ja, jb = row_span(np.float64(py) - my64, np.float64(mx), support[g, 0], support[g, 1],
                               support[g, 2], j0, j1)
            for j in range(ja, jb + 1):
                c = (i - i0) * TILE + (j - j0)
                if not live[c]:
                    continue
                dx = np.float32(j) + HALF - mx
                a = min(ALPHA_MAX, o * math.exp(-sigma(dx, dy, A, B, C)))
                if a < ALPHA_MIN:
                    continue
                T_next = T[c] * (ONE - a)
                if T_next < T_MIN:  # the break, for this pixel
                    live[c] = False
                    stop[i, j] = k
                    n_live -= 1
                    continue
                w = a * T[c]
                rgb[c, 0] += colors[g, 0] * w
                rgb[c, 1] += colors[g, 1] * w
                rgb[c, 2] += colors[g, 2] * w
                T[c] = T_next
        if n_live == 0:
            break
    for i in range(i0, i1):
        for j in range(j0, j1):
            c = (i - i0) * TILE + (j - j0)
            for ch in range(3):
                image[i, j, ch] = rgb[c, ch] + T[c] * background[i, j, ch]
            alpha[i, j] = ONE - T[c]
            trans[i, j] = T[c]


@njit(parallel=True, fastmath=False, cache=True)
def blend(offsets, ids, mean2d, conic, opacities, colors, support, background, tiles_x):
    """Step 7 for every tile, in parallel.
    -> image f32[H,W,3], alpha f32[H,W], trans f32[H,W], stop i64[H,W] (see _blend_tile)."""
    H, W = background.shape[0], background.shape[1]
    image = np.empty((H, W, 3), np.float32)
    alpha = np.empty((H, W), np.float32)
    trans = np.empty((H, W), np.float32)
    stop = np.empty((H, W), np.int64)
    n_tiles = offsets.shape[0] - 1
    for t in prange(n_tiles):
        _blend_tile(t, offsets, ids, mean2d, conic, opacities, colors, support, background, tiles_x, image, alpha,
                    trans, stop)
    return image, alpha, trans, stop


# ---------------------------------------------------------------- the fast (SIMD) blend

# exp(-s) = 2^-n exp(-r), r = s - n ln2 in [-ln2/2, ln2/2]; ln2 in two parts so n ln2_hi is exact
# (Cody-Waite), Cephes' expf polynomial for exp(r) (1 ulp). s is capped where alpha is far below
# 1/255 for any opacity, so 2^-n stays a normal float.
LN2_HI = np.float32(0.693359375)
LN2_LO = np.float32(-2.12194440e-4)
LOG2E = np.float32(1.44269504088896341)
EXP_S_MAX = np.float32(20.0)
EXP_P = tuple(np.float32(v) for v in (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2,
                                      1.6666665459e-1, 5.0000001201e-1))
LANES = 8  # AVX2: 8 float32; a tile's state is two halves of 16 rows x 8 columns


@intrinsic
def _pow2_neg(typingctx, nf):
    """2^-n as float32 for an integer-valued float32 n in [0, 126]: the exponent bits built in 32-bit
    integers (numba would widen integer arithmetic to 64 bits and halve the SIMD width)."""
    sig = types.float32(types.float32)

    def codegen(context, builder, signature, args):
        n = builder.fptosi(args[0], context.get_value_type(types.int32))
        bits = builder.shl(builder.sub(context.get_constant(types.int32, 127), n), context.get_constant(types.int32, 23))
        return builder.bitcast(bits, context.get_value_type(types.float32))

    return sig, codegen


@njit(fastmath=False, cache=True)
def exp_neg(s):
    """exp(-s) in float32 for s >= -0.34 (the blend's sigma >= 0), <= 1e-7 relative error for
    s <= 20 (larger s is taken as 20: alpha <= 2e-9, far below 1/255). Branch-free, so a loop of
    these vectorises (numba has no vector exp without Intel's SVML)."""
    s = min(s, EXP_S_MAX)
    nf = np.float32(np.int32(s * LOG2E + HALF))
    x = (nf * LN2_HI - s) + nf * LN2_LO  # -(s - n ln2)
    p0, p1, p2, p3, p4, p5 = EXP_P
    p = ((((p0 * x + p1) * x + p2) * x + p3) * x + p4) * x + p5
    return (p * (x * x) + x + ONE) * _pow2_neg(nf)


@njit(fastmath=False, cache=True)
def _accumulate_tile(t, offsets, ids, mean2d, conic, opacities, colors, support, H, W, tiles_x):
    """Step 7 for tile t without the background -> state [6, 256] float32: rows T, R, G, B, and
    scratch (pixel centres), lane c = half * 128 + row * 8 + col for the two 8-column halves.
    T < 0 marks a pixel that stopped (-T is its transmittance): one array fewer to load and store.

    Each Gaussian runs over the rows of its support (row_range) and the halves its x-extent
    touches, 8 lanes per step; the exact alpha test decides every lane, so the result is the
    pixel-by-pixel step 7 (with exp_neg for exp)."""
    i0, j0 = (t // tiles_x) * TILE, (t % tiles_x) * TILE
    i1, j1 = min(i0 + TILE, H), min(j0 + TILE, W)
    state = np.empty((6, TILE * TILE), np.float32)  # here, not in the prange body (design.md)
    T, R, G, B, px, py = state[0], state[1], state[2], state[3], state[4], state[5]
    for h in range(TILE // LANES):
        for r in range(TILE):
            for col in range(LANES):
                c = h * TILE * LANES + r * LANES + col
                px[c] = np.float32(j0 + h * LANES + col) + HALF
                py[c] = np.float32(i0 + r) + HALF
                T[c] = ONE if (i0 + r < i1 and j0 + h * LANES + col < j1) else -ONE  # outside: stopped
                R[c], G[c], B[c] = ZERO, ZERO, ZERO
    open_rows = np.ones(TILE // LANES * TILE, np.bool_)  # [half, row]: a pixel there still open
    for k in range(offsets[t], offsets[t + 1]):
        g = ids[k]
        ia, ib = row_range(np.float64(mean2d[g, 1]), support[g, 3], i0, i1)
        kB, P, Q = support[g, 0], support[g, 1], support[g, 2]
        # the support's x-extent: max over dy of |kB dy| + sqrt(P - Q dy^2) (row_span's spans)
        xr = math.sqrt(P * (Q + kB * kB) / Q)
        mx64 = np.float64(mean2d[g, 0])
        ja = max(j0, int(math.ceil(max(mx64 - xr - 0.5, j0 - 1.0))))
        jb = min(j1 - 1, int(math.floor(min(mx64 + xr - 0.5, j1 + 1.0))))
        if ia > ib or ja > jb:
            continue
        mx, my, A, Bq, C, o = mean2d[g, 0], mean2d[g, 1], conic[g, 0], conic[g, 1], conic[g, 2], opacities[g]
        cr, cg, cb = colors[g, 0], colors[g, 1], colors[g, 2]
        for h in range((ja - j0) // LANES, (jb - j0) // LANES + 1):
            ra, rb = ia - i0, ib - i0
            while ra <= rb and not open_rows[h * TILE + ra]:  # rows whose pixels all stopped
                ra += 1
            while rb >= ra and not open_rows[h * TILE + rb]:
                rb -= 1
            lo = h * TILE * LANES + ra * LANES
            for c in range(lo, lo + (rb - ra + 1) * LANES):
                c = np.uint64(c)  # unsigned: no negative-index wraparound, so the loop vectorises
                dx, dy = px[c] - mx, py[c] - my
                a = min(ALPHA_MAX, o * exp_neg(sigma(dx, dy, A, Bq, C)))
                Tc = T[c]
                T_next = Tc * (ONE - a)
                ok = (Tc > ZERO) & (a >= ALPHA_MIN)
                stop_here = ok & (T_next < T_MIN)  # the break, for this pixel
                add = ok & (not stop_here)
                w = a * Tc if add else ZERO
                R[c] += cr * w
                G[c] += cg * w
                B[c] += cb * w
                T[c] = T_next if add else (-Tc if stop_here else Tc)
        if (k - offsets[t]) % 16 == 15:  # now and then: which rows still have an open pixel?
            open_pixels = False
            for hr in range(TILE // LANES * TILE):
                row_open = False
                for c in range(hr * LANES, hr * LANES + LANES):
                    row_open |= T[c] > ZERO
                open_rows[hr] = row_open
                open_pixels |= row_open
            if not open_pixels:
                break
    return state


@njit(fastmath=False, cache=True)
def _lane(i, j, i0, j0):
    return ((j - j0) // LANES) * TILE * LANES + (i - i0) * LANES + (j - j0) % LANES


@njit(parallel=True, fastmath=False, cache=True)
def blend_fast(offsets, ids, mean2d, conic, opacities, colors, support, background, tiles_x):
    """Step 7 for every tile, in parallel, forward only (SIMD, exp_neg).
    background f32[H,W,3] -> image f32[H,W,3], alpha f32[H,W]."""
    H, W = background.shape[0], background.shape[1]
    image = np.empty((H, W, 3), np.float32)
    alpha = np.empty((H, W), np.float32)
    n_tiles = offsets.shape[0] - 1
    for t in prange(n_tiles):
        state = _accumulate_tile(t, offsets, ids, mean2d, conic, opacities, colors, support, H, W, tiles_x)
        i0, j0 = (t // tiles_x) * TILE, (t % tiles_x) * TILE
        for i in range(i0, min(i0 + TILE, H)):
            for j in range(j0, min(j0 + TILE, W)):
                c = _lane(i, j, i0, j0)
                T = abs(state[0, c])
                for ch in range(3):
                    image[i, j, ch] = state[1 + ch, c] + T * background[i, j, ch]
                alpha[i, j] = ONE - T
    return image, alpha


@njit(parallel=True, fastmath=False, cache=True)
def blend_u8(offsets, ids, mean2d, conic, opacities, colors, support, background, tiles_x, out):
    """blend_fast over a uint8 background [H,W,3] straight into uint8 `out` [H,W,3], in one pass:
    the background as x / 255 in float32 (runtime/pixels.py:background_to_float's rule),
    then clip to [0,1], x 255 and round half to even (to_uint8's)."""
    H, W = background.shape[0], background.shape[1]
    n_tiles = offsets.shape[0] - 1
    for t in prange(n_tiles):
        state = _accumulate_tile(t, offsets, ids, mean2d, conic, opacities, colors, support, H, W, tiles_x)
        i0, j0 = (t // tiles_x) * TILE, (t % tiles_x) * TILE
        for i in range(i0, min(i0 + TILE, H)):
            for j in range(j0, min(j0 + TILE, W)):
                c = _lane(i, j, i0, j0)
                T = abs(state[0, c])
                for ch in range(3):
                    v = state[1 + ch, c] + T * (np.float32(background[i, j, ch]) / U8_MAX)
                    out[i, j, ch] = np.uint8(np.rint(min(max(v, ZERO), ONE) * U8_MAX))


class tiles_one_at_a_time:
    """Context: numba's parallel loops hand out one iteration at a time (tiles differ a lot in work)."""

    def __enter__(self) -> None:
        self.old = get_parallel_chunksize()
        set_parallel_chunksize(1)

    def __exit__(self, *exc) -> None:
        set_parallel_chunksize(self.old)


def rasterize_cpu(
    means: np.ndarray,
    quats: np.ndarray,
    scales: np.ndarray,
    opacities: np.ndarray,
    colors: np.ndarray,
    viewmat: np.ndarray,
    K: np.ndarray,
    background: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw Gaussians over a background (plugins/design.md, steps 1-7), forward only.

    means [N,3], quats [N,4] wxyz, scales [N,3] (activated), opacities [N] in (0,1),
    colors [N,3], viewmat [4,4] w2c OpenCV, K [3,3], background [H,W,3]
    -> (image f32[H,W,3], alpha f32[H,W]). Inputs are converted to contiguous float32.
    """
    means, quats, scales, opacities, colors, viewmat, K = gaussian_arrays(means, quats, scales, opacities, colors,
                                                                          viewmat, K)
    background = float32_array(background, (-1, -1, 3), "background")
    H, W = background.shape[:2]
    tiles_x, tiles_y = -(-W // TILE), -(-H // TILE)

    mean2d, conic, depth, rect, support = project(means, quats, scales, opacities, viewmat, K, W, H)
    offsets, ids = bin_tiles(depth, rect, tiles_x, tiles_y)
    with tiles_one_at_a_time():
        return blend_fast(offsets, ids, mean2d, conic, opacities, colors, support, background, tiles_x)


def rasterize_u8(
    means: np.ndarray,
    quats: np.ndarray,
    scales: np.ndarray,
    opacities: np.ndarray,
    colors: np.ndarray,
    viewmat: np.ndarray,
    K: np.ndarray,
    background: np.ndarray,
    out: np.ndarray | None = None,
    stages: dict[str, float] | None = None,
) -> np.ndarray:
    """`rasterize_cpu` over a uint8 background [H,W,3] -> uint8 [H,W,3] (into `out` if given): the
    same pixels as to_uint8(rasterize_cpu(..., background / 255)[0]), bit for bit, in one pass
    (the playback path: runtime/backends/cpu.py:CpuRenderer). With `stages` (a dict), adds the
    [wall, process CPU] seconds of "projection" (steps 1-5), "binning" (step 6: depth sort, tile
    lists) and "blending" (step 7, compositing and uint8 rounding included) to it."""
    means, quats, scales, opacities, colors, viewmat, K = gaussian_arrays(means, quats, scales, opacities, colors,
                                                                          viewmat, K)
    background, out = u8_canvas(background, out)
    H, W = background.shape[:2]
    tiles_x, tiles_y = -(-W // TILE), -(-H // TILE)
    t0 = stage_clock(stages)
    mean2d, conic, depth, rect, support = project(means, quats, scales, opacities, viewmat, K, W, H)
    t0 = add_stage(stages, "projection", t0)
    offsets, ids = bin_tiles(depth, rect, tiles_x, tiles_y)
    t0 = add_stage(stages, "binning", t0)
    with tiles_one_at_a_time():
        blend_u8(offsets, ids, mean2d, conic, opacities, colors, support, background, tiles_x, out)
    add_stage(stages, "blending", t0)
    return out


def warm_up() -> None:
    """Load the playback kernels (rasterize_u8's) into this process: numba's first call of a cached
    kernel sets up its registries (~0.3 s); a first call ever compiles them into the cache."""
    n = 2
    means = np.array([[0.0, 0.0, 1.0], [0.01, 0.0, 1.1]], np.float32)
    ones = np.ones((n, 4), np.float32)
    K = np.array([[16.0, 0, 8], [0, 16.0, 8], [0, 0, 1]], np.float32)
    rasterize_u8(means, ones, ones[:, :3] * 0.05, np.full(n, 0.5, np.float32), ones[:, :3] * 0.5,
                 np.eye(4, dtype=np.float32), K, np.zeros((16, 16, 3), np.uint8))
