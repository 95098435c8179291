// The `cuda` backend's network (runtime/backends/cuda.py): the per-Gaussian half of the baked
// deformation network, one thread per (frame, Gaussian). The per-frame vector (audio net + AU
// projection, a few hundred kFLOP) comes from the host (runtime/network.py: frame_vector); this is
// its `decode`:
//   h = relu(table[i] + frame[b]);  h = relu(h W_l + b_l) for each trunk layer;
//   delta_mu = bound * tanh((h W_mu + b_mu) / bound);  delta_alpha = h w_alpha + b_alpha.
// Weights are [in, out] row-major (the ONNX graph's `weight_t`), read by every thread of a warp at
// the same address (one broadcast load). The hidden width is a template parameter, so the
// accumulators live in registers; kernels exist for 32, 64 and 128, and a generic one for any
// width up to ETK_MAX_HIDDEN (slower: its 256 accumulators spill). Compiled by NVRTC (plugins/cuda/build.py); no headers, no CUB.
#ifndef ETK_DEFORM_KERNELS_CUH
#define ETK_DEFORM_KERNELS_CUH

#define ETK_MAX_HIDDEN 256

template <int H>
__device__ __forceinline__ void etk_dense_relu(const float* __restrict__ in, float* __restrict__ out,
                                               const float* __restrict__ w, const float* __restrict__ bias, int width) {
    // out = relu(in W + bias); k runs in order 0..width-1, as a matmul's reduction.
    float acc[H];
#pragma unroll
    for (int o = 0; o < H; ++o) acc[o] = o < width ? bias[o] : 0.0f;
    for (int k = 0; k < width; ++k) {
        const float x = in[k];
        const float* row = w + k * width;
#pragma unroll
        for (int o = 0; o < H; ++o) {
            if (o < width) acc[o] += x * row[o];
        }
    }
#pragma unroll
    for (int o = 0; o < H; ++o) {
        if (o < width) out[o] = fmaxf(acc[o], 0.0f);
    }
}

template <int H>
__device__ __forceinline__ void etk_deform_one(int n, int width, int trunk_layers, const float* __restrict__ table,
                                               const float* __restrict__ frame, const float* __restrict__ trunk_w,
                                               const float* __restrict__ trunk_b, const float* __restrict__ mu_w,
                                               const float* __restrict__ mu_b, const float* __restrict__ alpha_w,
                                               float alpha_b, float bound, float* __restrict__ delta_means,
                                               float* __restrict__ delta_opacity) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    const int b = blockIdx.y;
    if (i >= n) return;
    float h[H], t[H];
    const float* row = table + (size_t)i * width;
    const float* shared_row = frame + (size_t)b * width;
    for (int k = 0; k < width; ++k) h[k] = fmaxf(row[k] + shared_row[k], 0.0f);
    for (int l = 0; l < trunk_layers; ++l) {
        etk_dense_relu<H>(h, t, trunk_w + (size_t)l * width * width, trunk_b + (size_t)l * width, width);
        for (int k = 0; k < width; ++k) h[k] = t[k];
    }
    float mu0 = mu_b[0], mu1 = mu_b[1], mu2 = mu_b[2], alpha = alpha_b;
    for (int k = 0; k < width; ++k) {
        const float x = h[k];
        mu0 += x * mu_w[3 * k + 0];
        mu1 += x * mu_w[3 * k + 1];
        mu2 += x * mu_w[3 * k + 2];
        alpha += x * alpha_w[k];
    }
    const size_t g = (size_t)b * n + i;
    delta_means[3 * g + 0] = bound * tanhf(mu0 / bound);
    delta_means[3 * g + 1] = bound * tanhf(mu1 / bound);
    delta_means[3 * g + 2] = bound * tanhf(mu2 / bound);
    delta_opacity[g] = alpha;
}

// grid (ceil(n / blockDim.x), frames), any 1-D block. `width` must equal the kernel's H (the
// host checks); etk_deform_any takes any width <= ETK_MAX_HIDDEN. Written out (no macro) so the
// CPU emulation's signature scan (tests/cuda_emulation) sees every kernel.
extern "C" __global__ void etk_deform_h32(int n, int width, int trunk_layers, const float* __restrict__ table,
                                          const float* __restrict__ frame, const float* __restrict__ trunk_w,
                                          const float* __restrict__ trunk_b, const float* __restrict__ mu_w,
                                          const float* __restrict__ mu_b, const float* __restrict__ alpha_w,
                                          float alpha_b, float bound, float* __restrict__ delta_means,
                                          float* __restrict__ delta_opacity) {
    etk_deform_one<32>(n, 32, trunk_layers, table, frame, trunk_w, trunk_b, mu_w, mu_b, alpha_w, alpha_b, bound,
                       delta_means, delta_opacity);
}

extern "C" __global__ void etk_deform_h64(int n, int width, int trunk_layers, const float* __restrict__ table,
                                          const float* __restrict__ frame, const float* __restrict__ trunk_w,
                                          const float* __restrict__ trunk_b, const float* __restrict__ mu_w,
                                          const float* __restrict__ mu_b, const float* __restrict__ alpha_w,
                                          float alpha_b, float bound, float* __restrict__ delta_means,
                                          float* __restrict__ delta_opacity) {
    etk_deform_one<64>(n, 64, trunk_layers, table, frame, trunk_w, trunk_b, mu_w, mu_b, alpha_w, alpha_b, bound,
                       delta_means, delta_opacity);
}

extern "C" __global__ void etk_deform_h128(int n, int width, int trunk_layers, const float* __restrict__ table,
                                           const float* __restrict__ frame, const float* __restrict__ trunk_w,
                                           const float* __restrict__ trunk_b, const float* __restrict__ mu_w,
                                           const float* __restrict__ mu_b, const float* __restrict__ alpha_w,
                                           float alpha_b, float bound, float* __restrict__ delta_means,
                                           float* __restrict__ delta_opacity) {
    etk_deform_one<128>(n, 128, trunk_layers, table, frame, trunk_w, trunk_b, mu_w, mu_b, alpha_w, alpha_b, bound,
                        delta_means, delta_opacity);
}

extern "C" __global__ void etk_deform_any(int n, int width, int trunk_layers, const float* __restrict__ table,
                                          const float* __restrict__ frame, const float* __restrict__ trunk_w,
                                          const float* __restrict__ trunk_b, const float* __restrict__ mu_w,
                                          const float* __restrict__ mu_b, const float* __restrict__ alpha_w,
                                          float alpha_b, float bound, float* __restrict__ delta_means,
                                          float* __restrict__ delta_opacity) {
    etk_deform_one<ETK_MAX_HIDDEN>(n, width, trunk_layers, table, frame, trunk_w, trunk_b, mu_w, mu_b, alpha_w,
                                   alpha_b, bound, delta_means, delta_opacity);
}

#endif
