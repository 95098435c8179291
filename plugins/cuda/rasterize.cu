// EmbedTalk Gaussian-splat rasteriser: the C ABI (embedtalk_raster.h), built by nvcc into
// libembedtalk_raster.so. The kernels are rasterize_kernels.cuh (shared with the fatbin and
// NVRTC builds); here the prefix sum and the pair sort are CUB's device-wide algorithms
// (DeviceScan::InclusiveSum, DeviceRadixSort::SortPairs on the 64-bit (tile, depth) keys).
//
//   nvcc -O3 --fmad=false -shared -Xcompiler -fPIC -cudart static \
//        -gencode arch=compute_75,code=sm_75 ... -o libembedtalk_raster.so rasterize.cu
//
// Because CUB's sort takes its item count on the host and the pair count is only known on the
// device, the CUB path sorts `max_pairs` keys, with the unused tail padded to all-ones keys
// (they sort last and etk_tile_ranges ignores them). No host round trip, at the price of
// sorting the headroom; callers size max_pairs from the counts they read back with each frame.
#include <cuda_runtime.h>

#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_scan.cuh>

#include "embedtalk_raster.h"
#include "rasterize_kernels.cuh"

namespace {

thread_local int g_last_cuda_error = 0;

constexpr size_t kAlign = 256;

size_t align_up(size_t x) { return (x + kAlign - 1) / kAlign * kAlign; }

int tile_bits(int n_tiles) {
    int bits = 0;
    while ((1u << bits) <= (unsigned)n_tiles) ++bits;  // 2^bits > n_tiles: the all-ones pad sorts last
    return bits;
}

// The workspace, carved in this order (each region 256-byte aligned).
struct Layout {
    size_t mean2d, conic, depth, rect, count, offsets, ranges, keys, values, keys_alt, values_alt, temp;
    size_t temp_bytes, total;
};

int plan(int n, int width, int height, uint32_t max_pairs, Layout* L) {
    if (n < 0 || width <= 0 || height <= 0) return ETK_ERR_ARGUMENT;
    const int tiles_x = (width + ETK_TILE - 1) / ETK_TILE, tiles_y = (height + ETK_TILE - 1) / ETK_TILE;
    const size_t N = (size_t)(n > 0 ? n : 1), P = (size_t)(max_pairs > 0 ? max_pairs : 1);
    size_t off = 0;
    auto take = [&](size_t bytes) { const size_t at = off; off += align_up(bytes); return at; };
    L->mean2d = take(N * sizeof(float2));
    L->conic = take(N * sizeof(float4));
    L->depth = take(N * sizeof(float));
    L->rect = take(N * sizeof(int4));
    L->count = take(N * sizeof(etk_u32));
    L->offsets = take(N * sizeof(etk_u32));
    L->ranges = take((size_t)tiles_x * tiles_y * sizeof(uint2));
    L->keys = take(P * sizeof(etk_u64));
    L->values = take(P * sizeof(etk_u32));
    L->keys_alt = take(P * sizeof(etk_u64));
    L->values_alt = take(P * sizeof(etk_u32));

    size_t scan_bytes = 0, sort_bytes = 0;
    cudaError_t e = cub::DeviceScan::InclusiveSum(nullptr, scan_bytes, (etk_u32*)nullptr, (etk_u32*)nullptr, (int)N);
    if (e != cudaSuccess) { g_last_cuda_error = (int)e; return ETK_ERR_CUDA; }
    cub::DoubleBuffer<etk_u64> k(nullptr, nullptr);
    cub::DoubleBuffer<etk_u32> v(nullptr, nullptr);
    e = cub::DeviceRadixSort::SortPairs(nullptr, sort_bytes, k, v, (int)P, 0, 32 + tile_bits(tiles_x * tiles_y));
    if (e != cudaSuccess) { g_last_cuda_error = (int)e; return ETK_ERR_CUDA; }
    L->temp_bytes = scan_bytes > sort_bytes ? scan_bytes : sort_bytes;
    L->temp = take(L->temp_bytes);
    L->total = off;
    return ETK_OK;
}

int check(cudaError_t e) {
    if (e == cudaSuccess) return ETK_OK;
    g_last_cuda_error = (int)e;
    return ETK_ERR_CUDA;
}

unsigned blocks(size_t n, unsigned threads) { return (unsigned)((n + threads - 1) / threads); }

}  // namespace

extern "C" int etk_raster_workspace_size(int32_t n_gaussians, int32_t width, int32_t height, uint32_t max_pairs,
                                         size_t* bytes) {
    if (!bytes) return ETK_ERR_ARGUMENT;
    Layout L;
    const int rc = plan(n_gaussians, width, height, max_pairs, &L);
    if (rc == ETK_OK) *bytes = L.total;
    return rc;
}

extern "C" int etk_raster_forward(const EtkRasterArgs* a, void* workspace, size_t workspace_bytes, void* stream_ptr) {
    if (!a || !a->pair_count || !a->viewmat || (!a->background_f32 == !a->background_u8)) return ETK_ERR_ARGUMENT;
    if (a->n_gaussians > 0 && (!a->means || !a->quats || !a->scales || !a->opacity_logits || !a->colors))
        return ETK_ERR_ARGUMENT;
    if (a->max_pairs == 0u) return ETK_ERR_ARGUMENT;
    Layout L;
    int rc = plan(a->n_gaussians, a->width, a->height, a->max_pairs, &L);
    if (rc != ETK_OK) return rc;
    if (!workspace || workspace_bytes < L.total) return ETK_ERR_WORKSPACE;

    cudaStream_t stream = (cudaStream_t)stream_ptr;
    char* ws = (char*)workspace;
    float2* mean2d = (float2*)(ws + L.mean2d);
    float4* conic = (float4*)(ws + L.conic);
    float* depth = (float*)(ws + L.depth);
    int4* rect = (int4*)(ws + L.rect);
    etk_u32* count = (etk_u32*)(ws + L.count);
    etk_u32* offsets = (etk_u32*)(ws + L.offsets);
    uint2* ranges = (uint2*)(ws + L.ranges);

    EtkCamera cam;
    cam.fx = a->fx; cam.fy = a->fy; cam.cx = a->cx; cam.cy = a->cy;
    cam.width = a->width; cam.height = a->height;
    cam.tiles_x = (a->width + ETK_TILE - 1) / ETK_TILE;
    cam.tiles_y = (a->height + ETK_TILE - 1) / ETK_TILE;
    const size_t n_tiles = (size_t)cam.tiles_x * cam.tiles_y;
    const int n = a->n_gaussians;
    const uint32_t cap = a->max_pairs;

    if ((rc = check(cudaMemsetAsync(ranges, 0, n_tiles * sizeof(uint2), stream)))) return rc;
    if (n == 0) {
        if ((rc = check(cudaMemsetAsync(a->pair_count, 0, sizeof(uint32_t), stream)))) return rc;
    } else {
        etk_project<<<blocks(n, ETK_PROJECT_THREADS), ETK_PROJECT_THREADS, 0, stream>>>(
            n, a->means, a->delta_means, a->quats, a->scales, a->opacity_logits, a->delta_opacity, a->viewmat, cam,
            mean2d, conic, depth, rect, count);
        size_t temp_bytes = L.temp_bytes;
        if ((rc = check(cub::DeviceScan::InclusiveSum(ws + L.temp, temp_bytes, count, offsets, n, stream)))) return rc;
        etk_emit_pairs<<<blocks(n, 256), 256, 0, stream>>>(
            n, rect, count, offsets, depth, cam.tiles_x, cap, (etk_u64*)(ws + L.keys), (etk_u32*)(ws + L.values));
        etk_pair_count<<<1, 32, 0, stream>>>(n, offsets, a->pair_count);
        etk_pad_keys<<<blocks(cap, 256), 256, 0, stream>>>(a->pair_count, cap, (etk_u64*)(ws + L.keys));
        cub::DoubleBuffer<etk_u64> keys((etk_u64*)(ws + L.keys), (etk_u64*)(ws + L.keys_alt));
        cub::DoubleBuffer<etk_u32> values((etk_u32*)(ws + L.values), (etk_u32*)(ws + L.values_alt));
        temp_bytes = L.temp_bytes;
        if ((rc = check(cub::DeviceRadixSort::SortPairs(ws + L.temp, temp_bytes, keys, values, (int)cap, 0,
                                                        32 + tile_bits((int)n_tiles), stream))))
            return rc;
        etk_tile_ranges<<<blocks(cap, 256), 256, 0, stream>>>(keys.Current(), a->pair_count, cap, ranges);
        etk_blend<<<dim3(cam.tiles_x, cam.tiles_y), dim3(ETK_TILE, ETK_TILE), 0, stream>>>(
            cam, ranges, values.Current(), mean2d, conic, a->colors, a->background_f32, a->background_u8,
            a->image_f32, a->alpha, a->image_u8);
        return check(cudaGetLastError());
    }
    // No Gaussians: the background alone (empty ranges).
    etk_blend<<<dim3(cam.tiles_x, cam.tiles_y), dim3(ETK_TILE, ETK_TILE), 0, stream>>>(
        cam, ranges, nullptr, nullptr, nullptr, nullptr, a->background_f32, a->background_u8, a->image_f32, a->alpha,
        a->image_u8);
    return check(cudaGetLastError());
}

extern "C" int etk_raster_last_cuda_error(void) { return g_last_cuda_error; }

extern "C" const char* etk_raster_error_string(int code) {
    switch (code) {
        case ETK_OK: return "ok";
        case ETK_ERR_ARGUMENT: return "invalid argument";
        case ETK_ERR_WORKSPACE: return "workspace too small (see etk_raster_workspace_size)";
        case ETK_ERR_CUDA: return cudaGetErrorName((cudaError_t)g_last_cuda_error);
        default: return "unknown error";
    }
}

extern "C" int etk_raster_abi_version(void) { return ETK_RASTER_ABI_VERSION; }
