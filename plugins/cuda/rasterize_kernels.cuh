// EmbedTalk Gaussian-splat rasteriser: the CUDA kernels (forward only).
//
// The maths is plugins/design.md, steps 1-7, and nothing else; every constant below is named
// there. This file is the one GPU source of the rasteriser. It is compiled three ways:
//   * by nvcc into a kernels-only fatbin (sm_75/80/86/89/120 + PTX), loaded with the driver API;
//   * by NVRTC at first use where no prebuilt fatbin fits the GPU;
//   * by nvcc into libembedtalk_raster.so together with rasterize.cu (the C ABI, CUB sort).
// So it includes nothing: NVRTC sees it alone, without the CUDA runtime or C library headers.
// Everything is `extern "C"`, so kernel names are stable for cuModuleGetFunction.
//
// Pipeline (plugins/cuda/design.md):
//   etk_project        per Gaussian: delta_mu / delta_alpha applied, steps 1-5, tile box, tile count
//   scan               inclusive prefix sum of the tile counts (CUB, or etk_scan_* below)
//   etk_emit_pairs     one 64-bit key (tile << 32 | depth bits) + Gaussian id per (Gaussian, tile)
//   sort               stable radix sort of the pairs (CUB, or etk_radix_* below)
//   etk_tile_ranges    [start, end) of each tile in the sorted pairs
//   etk_blend          step 7, one 16x16 thread block per tile, early termination
#ifndef EMBEDTALK_RASTERIZE_KERNELS_CUH
#define EMBEDTALK_RASTERIZE_KERNELS_CUH

#define ETK_TILE 16
#define ETK_TILE_PIXELS 256
#define ETK_NEAR 0.01f
#define ETK_EPS2D 0.3f
#define ETK_ALPHA_MIN (1.0f / 255.0f)
#define ETK_ALPHA_MAX 0.99f
#define ETK_T_MIN 1e-4f
// The radius is an upper bound on the pixel distance at which alpha >= 1/255 (design.md step
// 5). It is grown by this relative margin so float rounding here can only bin a Gaussian into
// *more* tiles than the exact value would (harmless), never fewer.
#define ETK_RADIUS_MARGIN 1e-5f

#define ETK_PROJECT_THREADS 256
#define ETK_SCAN_THREADS 256
#define ETK_SCAN_ITEMS 4  // per thread: a scan block covers 1024 values
#define ETK_SCAN_BLOCK (ETK_SCAN_THREADS * ETK_SCAN_ITEMS)
#define ETK_RADIX_BITS 8
#define ETK_RADIX_BUCKETS 256
#define ETK_RADIX_THREADS 256
#define ETK_RADIX_WARPS (ETK_RADIX_THREADS / 32)
#define ETK_RADIX_TILE 4096  // keys per radix block

typedef unsigned int etk_u32;
typedef unsigned long long etk_u64;

// Intrinsics and image size; passed by value (32 bytes, no padding: ctypes mirrors it).
struct EtkCamera {
    float fx, fy, cx, cy;
    int width, height;
    int tiles_x, tiles_y;
};

// ------------------------------------------------------------------ steps 1-5 + tile box

// viewmat: device pointer to the 4x4 world-to-camera matrix (OpenCV), row-major.
// delta_means / delta_opacity may be null (no deformation).
// Outputs per Gaussian g: mean2d, conic_opacity = (A, B, C, o), depth = camera z,
// tile_rect = (x0, x1, y0, y1) inclusive, tile_count = tiles touched (0: culled).
extern "C" __global__ void __launch_bounds__(ETK_PROJECT_THREADS) etk_project(
    int n, const float* __restrict__ means, const float* __restrict__ delta_means,
    const float* __restrict__ quats, const float* __restrict__ scales,
    const float* __restrict__ opacity_logits, const float* __restrict__ delta_opacity,
    const float* __restrict__ viewmat, EtkCamera cam,
    float2* __restrict__ mean2d, float4* __restrict__ conic_opacity, float* __restrict__ depth,
    int4* __restrict__ tile_rect, etk_u32* __restrict__ tile_count)
{
    const int g = blockIdx.x * blockDim.x + threadIdx.x;
    if (g >= n) return;
    tile_count[g] = 0u;
    tile_rect[g] = make_int4(0, -1, 0, -1);
    mean2d[g] = make_float2(0.f, 0.f);
    conic_opacity[g] = make_float4(0.f, 0.f, 0.f, 0.f);

    // Deformation: mu + delta_mu; o = sigmoid(logit + delta_alpha).
    float m0 = means[3 * g + 0], m1 = means[3 * g + 1], m2 = means[3 * g + 2];
    if (delta_means) {
        m0 += delta_means[3 * g + 0];
        m1 += delta_means[3 * g + 1];
        m2 += delta_means[3 * g + 2];
    }
    float logit = opacity_logits[g];
    if (delta_opacity) logit += delta_opacity[g];
    const float o = 1.0f / (1.0f + expf(-logit));

    // 1. Camera space.
    float V[12];
#pragma unroll
    for (int k = 0; k < 12; ++k) V[k] = viewmat[k];
    const float x = V[0] * m0 + V[1] * m1 + V[2] * m2 + V[3];
    const float y = V[4] * m0 + V[5] * m1 + V[6] * m2 + V[7];
    const float z = V[8] * m0 + V[9] * m1 + V[10] * m2 + V[11];
    depth[g] = z;
    if (!(z >= ETK_NEAR) || !(o >= ETK_ALPHA_MIN)) return;  // also rejects NaN

    // 2. R(q) of the normalised quaternion (w, x, y, z).
    float qw = quats[4 * g + 0], qx = quats[4 * g + 1], qy = quats[4 * g + 2], qz = quats[4 * g + 3];
    const float qn = sqrtf(qw * qw + qx * qx + qy * qy + qz * qz);
    qw /= qn; qx /= qn; qy /= qn; qz /= qn;
    const float Rq[9] = {
        1.f - 2.f * (qy * qy + qz * qz), 2.f * (qx * qy - qw * qz), 2.f * (qx * qz + qw * qy),
        2.f * (qx * qy + qw * qz), 1.f - 2.f * (qx * qx + qz * qz), 2.f * (qy * qz - qw * qx),
        2.f * (qx * qz - qw * qy), 2.f * (qy * qz + qw * qx), 1.f - 2.f * (qx * qx + qy * qy),
    };
    // Jacobian at the clamped direction (the clamp touches J only, never mean2d).
    const float W = (float)cam.width, H = (float)cam.height;
    const float tan_x = 0.5f * W / cam.fx, tan_y = 0.5f * H / cam.fy;
    const float lim_x_pos = (W - cam.cx) / cam.fx + 0.3f * tan_x, lim_x_neg = cam.cx / cam.fx + 0.3f * tan_x;
    const float lim_y_pos = (H - cam.cy) / cam.fy + 0.3f * tan_y, lim_y_neg = cam.cy / cam.fy + 0.3f * tan_y;
    const float tx = z * fminf(fmaxf(x / z, -lim_x_neg), lim_x_pos);
    const float ty = z * fminf(fmaxf(y / z, -lim_y_neg), lim_y_pos);
    const float j00 = cam.fx / z, j02 = -cam.fx * tx / (z * z);
    const float j11 = cam.fy / z, j12 = -cam.fy * ty / (z * z);

    // 3. cov2d = (J R_v R(q) diag(s)) (...)^T + 0.3 I, accumulated column by column.
    float a = ETK_EPS2D, b = 0.f, c = ETK_EPS2D;
#pragma unroll
    for (int k = 0; k < 3; ++k) {
        const float s = scales[3 * g + k];
        const float v0 = (V[0] * Rq[k] + V[1] * Rq[3 + k] + V[2] * Rq[6 + k]) * s;
        const float v1 = (V[4] * Rq[k] + V[5] * Rq[3 + k] + V[6] * Rq[6 + k]) * s;
        const float v2 = (V[8] * Rq[k] + V[9] * Rq[3 + k] + V[10] * Rq[6 + k]) * s;
        const float u0 = j00 * v0 + j02 * v2, u1 = j11 * v1 + j12 * v2;
        a += u0 * u0;
        b += u0 * u1;
        c += u1 * u1;
    }
    const float det = a * c - b * b;
    if (!(det > 0.f)) return;
    const float mx = cam.fx * x / z + cam.cx, my = cam.fy * y / z + cam.cy;

    // 5. Culling radius, exact for the 1/255 threshold (o >= 1/255 here, so log >= ~0).
    const float log_o = logf(fmaxf(255.0f * o, 1.0f));
    const float mid = 0.5f * (a + c);
    // mid^2 - det without its cancellation (float32 lost it for near-isotropic footprints)
    const float lam = mid + sqrtf(fmaxf(0.1f, 0.25f * (a - c) * (a - c) + b * b));
    const float r = ceilf(sqrtf(2.0f * log_o * lam) * (1.0f + ETK_RADIUS_MARGIN));

    // 6. Tile box, clamped in float first (mx can be huge next to the near plane).
    const float ftx = (float)cam.tiles_x, fty = (float)cam.tiles_y;
    const int x0 = max(0, (int)floorf(fminf(fmaxf((mx - r) / ETK_TILE, -1.f), ftx)));
    const int x1 = min(cam.tiles_x - 1, (int)floorf(fminf(fmaxf((mx + r) / ETK_TILE, -1.f), ftx)));
    const int y0 = max(0, (int)floorf(fminf(fmaxf((my - r) / ETK_TILE, -1.f), fty)));
    const int y1 = min(cam.tiles_y - 1, (int)floorf(fminf(fmaxf((my + r) / ETK_TILE, -1.f), fty)));
    if (x1 < x0 || y1 < y0) return;

    mean2d[g] = make_float2(mx, my);
    conic_opacity[g] = make_float4(c / det, -b / det, a / det, o);
    tile_rect[g] = make_int4(x0, x1, y0, y1);
    tile_count[g] = (etk_u32)((x1 - x0 + 1) * (y1 - y0 + 1));
}

// ------------------------------------------------------------------ step 6: (tile, depth) pairs

// offsets: inclusive prefix sum of tile_count. Gaussian g writes its pairs at
// [offsets[g] - count, offsets[g]), in index order, so a stable sort orders ties by index.
// Pairs past `capacity` are dropped (the caller sees the true total in pair_count and retries).
extern "C" __global__ void etk_emit_pairs(
    int n, const int4* __restrict__ tile_rect, const etk_u32* __restrict__ tile_count,
    const etk_u32* __restrict__ offsets, const float* __restrict__ depth, int tiles_x, etk_u32 capacity,
    etk_u64* __restrict__ keys, etk_u32* __restrict__ values)
{
    const int g = blockIdx.x * blockDim.x + threadIdx.x;
    if (g >= n) return;
    const etk_u32 count = tile_count[g];
    if (count == 0u) return;
    // depth >= NEAR > 0 here: its IEEE bits order like the float.
    const etk_u64 depth_bits = (etk_u64)__float_as_uint(depth[g]);
    const int4 r = tile_rect[g];
    etk_u32 k = offsets[g] - count;
    for (int ty = r.z; ty <= r.w; ++ty) {
        for (int tx = r.x; tx <= r.y; ++tx, ++k) {
            if (k >= capacity) return;
            keys[k] = ((etk_u64)(etk_u32)(ty * tiles_x + tx) << 32) | depth_bits;
            values[k] = (etk_u32)g;
        }
    }
}

// pair_count[0] = total pairs wanted (may exceed capacity). n >= 1.
extern "C" __global__ void etk_pair_count(int n, const etk_u32* __restrict__ offsets, etk_u32* __restrict__ pair_count)
{
    if (blockIdx.x == 0 && threadIdx.x == 0) pair_count[0] = offsets[n - 1];
}

// Keys past the pair count get all ones (tile field >= n_tiles): sorted past every real pair.
// Only the CUB path needs this (it sorts `capacity` keys; the host does not know the count).
extern "C" __global__ void etk_pad_keys(const etk_u32* __restrict__ pair_count, etk_u32 capacity, etk_u64* __restrict__ keys)
{
    const etk_u32 i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < capacity && i >= pair_count[0]) keys[i] = ~0ull;
}

// ranges[t] = [start, end) of tile t in the sorted pairs; ranges must be zeroed first.
extern "C" __global__ void etk_tile_ranges(
    const etk_u64* __restrict__ keys, const etk_u32* __restrict__ pair_count, etk_u32 capacity,
    uint2* __restrict__ ranges)
{
    const etk_u32 i = blockIdx.x * blockDim.x + threadIdx.x;
    const etk_u32 n = min(pair_count[0], capacity);
    if (i >= n) return;
    const etk_u32 tile = (etk_u32)(keys[i] >> 32);
    if (i == 0u || (etk_u32)(keys[i - 1] >> 32) != tile) ranges[tile].x = i;
    if (i == n - 1u || (etk_u32)(keys[i + 1] >> 32) != tile) ranges[tile].y = i + 1u;
}

// ------------------------------------------------------------------ step 7: blending

// One 16x16 block per tile, grid (tiles_x, tiles_y). The tile's Gaussians are staged through
// shared memory 256 at a time; a pixel stops at the first Gaussian that would take T below
// 1e-4, and the block stops when all its pixels have. Background: float [H,W,3] in [0,1], or
// uint8 [H,W,3] (x / 255, IEEE division: the CPU backends' rule); exactly one is non-null. Any of the
// outputs may be null: image float [H,W,3], alpha float [H,W], image uint8 [H,W,3]
// (clip to [0,1], * 255, round half to even).
extern "C" __global__ void __launch_bounds__(ETK_TILE_PIXELS) etk_blend(
    EtkCamera cam, const uint2* __restrict__ ranges, const etk_u32* __restrict__ sorted_ids,
    const float2* __restrict__ mean2d, const float4* __restrict__ conic_opacity, const float* __restrict__ colors,
    const float* __restrict__ background_f32, const unsigned char* __restrict__ background_u8,
    float* __restrict__ image_f32, float* __restrict__ alpha_out, unsigned char* __restrict__ image_u8)
{
    __shared__ float2 s_xy[ETK_TILE_PIXELS];
    __shared__ float4 s_conic[ETK_TILE_PIXELS];
    __shared__ float3 s_rgb[ETK_TILE_PIXELS];

    const int tid = threadIdx.y * ETK_TILE + threadIdx.x;
    const int i = blockIdx.y * ETK_TILE + threadIdx.y, j = blockIdx.x * ETK_TILE + threadIdx.x;
    const bool inside = i < cam.height && j < cam.width;
    const float px = (float)j + 0.5f, py = (float)i + 0.5f;
    const uint2 range = ranges[blockIdx.y * cam.tiles_x + blockIdx.x];

    float T = 1.f, r = 0.f, gr = 0.f, bl = 0.f;
    bool done = !inside;
    for (etk_u32 start = range.x; start < range.y; start += ETK_TILE_PIXELS) {
        if (__syncthreads_count(done) == ETK_TILE_PIXELS) break;  // also: shared is free again
        const etk_u32 idx = start + tid;
        if (idx < range.y) {
            const etk_u32 g = sorted_ids[idx];
            s_xy[tid] = mean2d[g];
            s_conic[tid] = conic_opacity[g];
            s_rgb[tid] = make_float3(colors[3 * g], colors[3 * g + 1], colors[3 * g + 2]);
        }
        __syncthreads();
        const int batch = (int)min((etk_u32)ETK_TILE_PIXELS, range.y - start);
        for (int k = 0; k < batch && !done; ++k) {
            const float4 q = s_conic[k];
            const float dx = px - s_xy[k].x, dy = py - s_xy[k].y;
            const float sigma = 0.5f * (q.x * dx * dx + q.z * dy * dy) + q.y * dx * dy;
            const float alpha = fminf(ETK_ALPHA_MAX, q.w * expf(-sigma));
            if (alpha < ETK_ALPHA_MIN) continue;
            const float T_next = T * (1.f - alpha);
            if (T_next < ETK_T_MIN) {
                done = true;  // this Gaussian is not added
                break;
            }
            const float w = alpha * T;
            const float3 col = s_rgb[k];
            r += col.x * w;
            gr += col.y * w;
            bl += col.z * w;
            T = T_next;
        }
    }
    if (!inside) return;
    const int p = i * cam.width + j;
    float bg[3];
#pragma unroll
    for (int ch = 0; ch < 3; ++ch)
        bg[ch] = background_f32 ? background_f32[3 * p + ch] : (float)background_u8[3 * p + ch] / 255.0f;
    const float out[3] = {r + T * bg[0], gr + T * bg[1], bl + T * bg[2]};
    if (image_f32) {
#pragma unroll
        for (int ch = 0; ch < 3; ++ch) image_f32[3 * p + ch] = out[ch];
    }
    if (alpha_out) alpha_out[p] = 1.f - T;
    if (image_u8) {
#pragma unroll
        for (int ch = 0; ch < 3; ++ch)
            image_u8[3 * p + ch] = (unsigned char)__float2int_rn(fminf(fmaxf(out[ch], 0.f), 1.f) * 255.f);
    }
}

// ------------------------------------------------------------------ device-wide scan (no CUB)
// Inclusive prefix sum of `count` u32 in three launches: etk_scan_blocks (each block scans 1024
// values and writes its total), etk_scan_totals (one block scans the totals), etk_scan_add.

__device__ __forceinline__ etk_u32 etk_block_inclusive_scan(etk_u32 v, etk_u32* s_warp /* [ETK_SCAN_THREADS/32] */)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int d = 1; d < 32; d <<= 1) {
        const etk_u32 u = __shfl_up_sync(0xffffffffu, v, d);
        if (lane >= d) v += u;
    }
    if (lane == 31) s_warp[warp] = v;
    __syncthreads();
    if (warp == 0) {
        etk_u32 w = lane < (int)(blockDim.x >> 5) ? s_warp[lane] : 0u;
#pragma unroll
        for (int d = 1; d < 32; d <<= 1) {
            const etk_u32 u = __shfl_up_sync(0xffffffffu, w, d);
            if (lane >= d) w += u;
        }
        if (lane < (int)(blockDim.x >> 5)) s_warp[lane] = w;
    }
    __syncthreads();
    if (warp > 0) v += s_warp[warp - 1];
    __syncthreads();  // s_warp may be reused by the caller
    return v;
}

extern "C" __global__ void __launch_bounds__(ETK_SCAN_THREADS) etk_scan_blocks(
    const etk_u32* __restrict__ in, etk_u32* __restrict__ out, etk_u32 count, etk_u32* __restrict__ block_totals)
{
    __shared__ etk_u32 s_warp[ETK_SCAN_THREADS / 32];
    const etk_u32 base = blockIdx.x * ETK_SCAN_BLOCK + threadIdx.x * ETK_SCAN_ITEMS;
    etk_u32 v[ETK_SCAN_ITEMS];
    etk_u32 sum = 0u;
#pragma unroll
    for (int k = 0; k < ETK_SCAN_ITEMS; ++k) {
        v[k] = base + k < count ? in[base + k] : 0u;
        sum += v[k];
        v[k] = sum;
    }
    const etk_u32 incl = etk_block_inclusive_scan(sum, s_warp);
    const etk_u32 before = incl - sum;
#pragma unroll
    for (int k = 0; k < ETK_SCAN_ITEMS; ++k)
        if (base + k < count) out[base + k] = v[k] + before;
    if (threadIdx.x == blockDim.x - 1) block_totals[blockIdx.x] = incl;
}

// One block; scans totals[0 .. n) in place, any n.
extern "C" __global__ void __launch_bounds__(ETK_SCAN_THREADS) etk_scan_totals(etk_u32* __restrict__ totals, etk_u32 n)
{
    __shared__ etk_u32 s_warp[ETK_SCAN_THREADS / 32];
    const etk_u32 per = (n + ETK_SCAN_THREADS - 1) / ETK_SCAN_THREADS;
    const etk_u32 lo = threadIdx.x * per, hi = min(lo + per, n);
    etk_u32 sum = 0u;
    for (etk_u32 k = lo; k < hi; ++k) sum += totals[k];
    const etk_u32 before = etk_block_inclusive_scan(sum, s_warp) - sum;
    etk_u32 run = before;
    for (etk_u32 k = lo; k < hi; ++k) {
        run += totals[k];
        totals[k] = run;
    }
}

extern "C" __global__ void __launch_bounds__(ETK_SCAN_THREADS) etk_scan_add(
    etk_u32* __restrict__ out, etk_u32 count, const etk_u32* __restrict__ totals_incl)
{
    if (blockIdx.x == 0) return;
    const etk_u32 add = totals_incl[blockIdx.x - 1];
    const etk_u32 base = blockIdx.x * ETK_SCAN_BLOCK + threadIdx.x * ETK_SCAN_ITEMS;
#pragma unroll
    for (int k = 0; k < ETK_SCAN_ITEMS; ++k)
        if (base + k < count) out[base + k] += add;
}

// ------------------------------------------------------------------ radix sort (no CUB)
// Stable LSD radix sort of (u64 key, u32 value) pairs, 8 bits per pass, for the NVRTC path
// (CUB's device-wide sort is host code that NVRTC cannot compile). The count is read on the
// device (min(*n_ptr, capacity)), so no host round trip is needed; blocks past it idle.
// Per pass: etk_radix_histogram -> inclusive scan of the digit-major histogram -> etk_radix_scatter.

extern "C" __global__ void __launch_bounds__(ETK_RADIX_THREADS) etk_radix_histogram(
    const etk_u64* __restrict__ keys, const etk_u32* __restrict__ n_ptr, etk_u32 capacity, int shift,
    etk_u32* __restrict__ hist /* [256][n_blocks] */, etk_u32 n_blocks)
{
    __shared__ etk_u32 s_hist[ETK_RADIX_BUCKETS];
    s_hist[threadIdx.x] = 0u;
    __syncthreads();
    const etk_u32 n = min(n_ptr[0], capacity);
    const etk_u32 begin = blockIdx.x * ETK_RADIX_TILE;
    const etk_u32 end = min(begin + ETK_RADIX_TILE, n);
    for (etk_u32 i = begin + threadIdx.x; i < end; i += ETK_RADIX_THREADS)
        atomicAdd(&s_hist[(etk_u32)(keys[i] >> shift) & (ETK_RADIX_BUCKETS - 1)], 1u);
    __syncthreads();
    hist[threadIdx.x * n_blocks + blockIdx.x] = s_hist[threadIdx.x];
}

// hist_incl: inclusive scan of hist (digit-major), so block b's first slot for digit d is
// hist_incl[d][b] - hist[d][b]. Within a block, keys are ranked 256 at a time in index order
// (warps in order, lanes in order via __match_any_sync), which keeps the sort stable.
extern "C" __global__ void __launch_bounds__(ETK_RADIX_THREADS) etk_radix_scatter(
    const etk_u64* __restrict__ keys_in, const etk_u32* __restrict__ values_in,
    etk_u64* __restrict__ keys_out, etk_u32* __restrict__ values_out,
    const etk_u32* __restrict__ n_ptr, etk_u32 capacity, int shift,
    const etk_u32* __restrict__ hist, const etk_u32* __restrict__ hist_incl, etk_u32 n_blocks)
{
    __shared__ etk_u32 s_next[ETK_RADIX_BUCKETS];                 // next output slot per digit
    __shared__ etk_u32 s_warp[ETK_RADIX_WARPS][ETK_RADIX_BUCKETS];  // per-warp digit counts -> offsets
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    {
        const etk_u32 h = tid * n_blocks + blockIdx.x;
        s_next[tid] = hist_incl[h] - hist[h];
    }
    const etk_u32 n = min(n_ptr[0], capacity);
    const etk_u32 begin = blockIdx.x * ETK_RADIX_TILE;
    const etk_u32 end = min(begin + ETK_RADIX_TILE, n);
    for (etk_u32 chunk = begin; chunk < end; chunk += ETK_RADIX_THREADS) {  // uniform in the block
#pragma unroll
        for (int w = 0; w < ETK_RADIX_WARPS; ++w) s_warp[w][tid] = 0u;
        __syncthreads();
        const etk_u32 i = chunk + tid;
        const bool valid = i < end;
        etk_u64 key = 0ull;
        etk_u32 value = 0u, digit = 0u, rank = 0u;
        const etk_u32 active = __ballot_sync(0xffffffffu, valid);
        if (valid) {
            key = keys_in[i];
            value = values_in[i];
            digit = (etk_u32)(key >> shift) & (ETK_RADIX_BUCKETS - 1);
            const etk_u32 peers = __match_any_sync(active, digit);
            rank = __popc(peers & ((1u << lane) - 1u));
            if (rank == 0u) s_warp[warp][digit] = __popc(peers);
        }
        __syncthreads();
        etk_u32 total = 0u;  // of digit `tid` in this chunk
#pragma unroll
        for (int w = 0; w < ETK_RADIX_WARPS; ++w) {
            const etk_u32 cnt = s_warp[w][tid];
            s_warp[w][tid] = total;
            total += cnt;
        }
        __syncthreads();
        if (valid) {
            const etk_u32 pos = s_next[digit] + s_warp[warp][digit] + rank;
            keys_out[pos] = key;
            values_out[pos] = value;
        }
        __syncthreads();
        s_next[tid] += total;
    }
}

#endif  // EMBEDTALK_RASTERIZE_KERNELS_CUH
