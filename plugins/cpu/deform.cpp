// The per-Gaussian half of the baked deformation network on a CPU (runtime/network.py:decode; the
// CUDA kernel etk_deform_* of plugins/cuda/deform_kernels.cuh on a GPU): per frame b, Gaussian i,
//   h = relu(table[i] + frame[b]); h = relu(h W_l + b_l) for each trunk layer;
//   delta_means[b, i] = bound tanh((h W_mu + b_mu) / bound); delta_opacity[b, i] = h w_alpha + b_alpha.
// onnxruntime runs this as whole-tensor ops over [frames, N, hidden] (tens of MB a batch, so every op
// streams memory); here BLOCK Gaussians at a time stay in registers through every layer.
// Not bit for bit onnxruntime's (another summation order, fused multiply-adds, tanh through an exp
// polynomial): tests/test_cpu_decode.py holds it to the numpy decode.
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define DEFORM_X86 1
#endif

namespace {

constexpr int MAX_HIDDEN = 256;
constexpr int BLOCK = 4;    // Gaussians through the trunk together: their accumulators fill the registers
constexpr int64_t SPAN = 256;  // Gaussians per parallel work item

struct Net {
    int64_t n;
    int width, trunk_layers;
    const float *table, *trunk_w, *trunk_b, *mu_wt, *mu_b, *alpha_w;
    float alpha_b, bound;
};

// exp(-s) for s >= 0: a Cody-Waite reduction and Cephes' expf polynomial (the rasteriser's exp_neg);
// 0 past s = 87 where 2^-n would leave the normal floats.
inline float exp_neg(float s) {
    s = std::min(s, 87.0f);
    const float nf = static_cast<float>(static_cast<int32_t>(s * 1.44269504088896341f + 0.5f));
    const float x = (nf * 0.693359375f - s) + nf * -2.12194440e-4f;
    const float p = ((((1.9875691500e-4f * x + 1.3981999507e-3f) * x + 8.3334519073e-3f) * x + 4.1665795894e-2f) * x +
                     1.6666665459e-1f) * x + 5.0000001201e-1f;
    const int32_t bits = (127 - static_cast<int32_t>(nf)) << 23;
    float pow2;
    std::memcpy(&pow2, &bits, sizeof pow2);
    return (p * (x * x) + x + 1.0f) * pow2;
}

// bound tanh(v / bound), tanh(y) = sign(y) (1 - e) / (1 + e) with e = exp(-2|y|).
inline float bounded_tanh(float v, float bound) {
    const float y = v / bound;
    const float e = exp_neg(2.0f * std::fabs(y));
    const float t = (1.0f - e) / (1.0f + e);
    return bound * (y < 0.0f ? -t : t);
}

// The heads of one Gaussian's last hidden vector h, into output row `out`.
inline void heads(const Net& net, const float* h, int64_t out, float* delta_means, float* delta_opacity) {
    const int w = net.width;
    float mu[3] = {net.mu_b[0], net.mu_b[1], net.mu_b[2]}, alpha = net.alpha_b;
    for (int c = 0; c < 3; ++c)
        for (int k = 0; k < w; ++k) mu[c] += h[k] * net.mu_wt[c * w + k];
    for (int k = 0; k < w; ++k) alpha += h[k] * net.alpha_w[k];
    for (int c = 0; c < 3; ++c) delta_means[3 * out + c] = bounded_tanh(mu[c], net.bound);
    delta_opacity[out] = alpha;
}

// Gaussians [i0, i1) of one frame, outputs from row out0: any width, any CPU.
void decode_span_scalar(const Net& net, const float* frame, int64_t i0, int64_t i1, int64_t out0, float* delta_means,
                        float* delta_opacity) {
    float h[MAX_HIDDEN], t[MAX_HIDDEN];
    const int w = net.width;
    for (int64_t i = i0; i < i1; ++i) {
        for (int k = 0; k < w; ++k) h[k] = std::max(net.table[i * w + k] + frame[k], 0.0f);
        for (int l = 0; l < net.trunk_layers; ++l) {
            const float* W = net.trunk_w + static_cast<int64_t>(l) * w * w;
            for (int j = 0; j < w; ++j) t[j] = net.trunk_b[l * w + j];
            for (int k = 0; k < w; ++k)
                for (int j = 0; j < w; ++j) t[j] += h[k] * W[k * w + j];
            for (int j = 0; j < w; ++j) h[j] = std::max(t[j], 0.0f);
        }
        heads(net, h, out0 + (i - i0), delta_means, delta_opacity);
    }
}

#ifdef DEFORM_X86
#if !defined(__clang__)  // GCC 12's avx512fintrin.h warns of its own undefined placeholders
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
// The same with AVX-512 for widths that are multiples of 16: the trunk's output columns in slices of
// up to 4 registers, BLOCK Gaussians' accumulators together (16 of the 32 registers), so each row of
// a weight matrix is loaded once per block.
__attribute__((target("avx512f,fma"))) void decode_span_avx512(const Net& net, const float* frame, int64_t i0,
                                                                int64_t i1, int64_t out0, float* delta_means,
                                                                float* delta_opacity) {
    alignas(64) float buf[2][BLOCK][MAX_HIDDEN];
    const int w = net.width, regs = w / 16;
    for (int64_t base = i0; base < i1; base += BLOCK) {
        const int count = static_cast<int>(std::min<int64_t>(BLOCK, i1 - base));
        float(*h)[MAX_HIDDEN] = buf[0];
        float(*t)[MAX_HIDDEN] = buf[1];
        for (int g = 0; g < BLOCK; ++g) {
            const float* row = net.table + (base + std::min(g, count - 1)) * w;  // a short block repeats its last
            for (int r = 0; r < regs; ++r)
                _mm512_store_ps(&h[g][16 * r], _mm512_max_ps(_mm512_add_ps(_mm512_loadu_ps(row + 16 * r),
                                                                          _mm512_loadu_ps(frame + 16 * r)),
                                                            _mm512_setzero_ps()));
        }
        for (int l = 0; l < net.trunk_layers; ++l) {
            const float* W = net.trunk_w + static_cast<int64_t>(l) * w * w;
            const float* bias = net.trunk_b + static_cast<int64_t>(l) * w;
            for (int r0 = 0; r0 < regs; r0 += 4) {
                const int nr = std::min(4, regs - r0);
                __m512 acc[BLOCK][4];
                for (int g = 0; g < BLOCK; ++g)
                    for (int r = 0; r < nr; ++r) acc[g][r] = _mm512_loadu_ps(bias + 16 * (r0 + r));
                for (int k = 0; k < w; ++k) {
                    __m512 wk[4];
                    for (int r = 0; r < nr; ++r) wk[r] = _mm512_loadu_ps(W + static_cast<int64_t>(k) * w + 16 * (r0 + r));
                    for (int g = 0; g < BLOCK; ++g) {
                        const __m512 x = _mm512_set1_ps(h[g][k]);
                        for (int r = 0; r < nr; ++r) acc[g][r] = _mm512_fmadd_ps(x, wk[r], acc[g][r]);
                    }
                }
                for (int g = 0; g < BLOCK; ++g)
                    for (int r = 0; r < nr; ++r)
                        _mm512_store_ps(&t[g][16 * (r0 + r)], _mm512_max_ps(acc[g][r], _mm512_setzero_ps()));
            }
            std::swap(h, t);
        }
        // heads: four dot products per Gaussian, then the bounded tanh of its three means
        for (int g = 0; g < count; ++g) {
            __m512 m0 = _mm512_setzero_ps(), m1 = m0, m2 = m0, a = m0;
            for (int r = 0; r < regs; ++r) {
                const __m512 x = _mm512_load_ps(&h[g][16 * r]);
                m0 = _mm512_fmadd_ps(x, _mm512_loadu_ps(net.mu_wt + 16 * r), m0);
                m1 = _mm512_fmadd_ps(x, _mm512_loadu_ps(net.mu_wt + w + 16 * r), m1);
                m2 = _mm512_fmadd_ps(x, _mm512_loadu_ps(net.mu_wt + 2 * w + 16 * r), m2);
                a = _mm512_fmadd_ps(x, _mm512_loadu_ps(net.alpha_w + 16 * r), a);
            }
            const int64_t out = out0 + (base - i0) + g;
            delta_means[3 * out] = bounded_tanh(_mm512_reduce_add_ps(m0) + net.mu_b[0], net.bound);
            delta_means[3 * out + 1] = bounded_tanh(_mm512_reduce_add_ps(m1) + net.mu_b[1], net.bound);
            delta_means[3 * out + 2] = bounded_tanh(_mm512_reduce_add_ps(m2) + net.mu_b[2], net.bound);
            delta_opacity[out] = _mm512_reduce_add_ps(a) + net.alpha_b;
        }
    }
}
#if !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#endif

using DecodeSpan = void (*)(const Net&, const float*, int64_t, int64_t, int64_t, float*, float*);

bool has_avx512() {
#ifdef DEFORM_X86
    const char* cap = std::getenv("EMBEDTALK_CPU_SIMD");  // "avx2" or "0": the scalar loop (as splat.cpp)
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma") && !(cap && *cap);
#else
    return false;
#endif
}

const bool AVX512 = has_avx512();

// A C-contiguous float32 buffer of n items, writable if asked; false with an error set.
bool get_floats(PyObject* obj, Py_buffer* view, Py_ssize_t n, bool writable, const char* name) {
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0)) != 0)
        return false;
    if (view->itemsize != 4 || !view->format || std::strcmp(view->format, "f") != 0 || view->len != n * 4) {
        PyErr_Format(PyExc_ValueError, "%s: expected %zd float32 values, got %zd bytes of format %s", name, n,
                     view->len, view->format ? view->format : "?");
        PyBuffer_Release(view);
        return false;
    }
    return true;
}

PyObject* decode(PyObject*, PyObject* args) {
    Py_ssize_t n, frames;
    int width, layers;
    float alpha_b, bound;
    PyObject *o_table, *o_frame, *o_tw, *o_tb, *o_muwt, *o_mub, *o_aw, *o_dm, *o_do;
    if (!PyArg_ParseTuple(args, "nniiOOOOOOOffOO", &n, &frames, &width, &layers, &o_table, &o_frame, &o_tw, &o_tb,
                          &o_muwt, &o_mub, &o_aw, &alpha_b, &bound, &o_dm, &o_do))
        return nullptr;
    if (n < 0 || frames < 0 || width < 1 || width > MAX_HIDDEN || layers < 0) {
        PyErr_Format(PyExc_ValueError, "decode: n %zd, frames %zd, width %d (1..%d), layers %d", n, frames, width,
                     MAX_HIDDEN, layers);
        return nullptr;
    }
    const Py_ssize_t lw = std::max(layers, 1);  // no trunk layers: 1-item placeholders
    const struct {
        PyObject* obj;
        Py_ssize_t n;
        bool writable;
        const char* name;
    } specs[9] = {{o_table, n * width, false, "table"},        {o_frame, frames * width, false, "frames"},
                  {o_tw, layers ? lw * width * width : 1, false, "trunk_w"},
                  {o_tb, layers ? lw * width : 1, false, "trunk_b"}, {o_muwt, 3 * width, false, "mu_wt"},
                  {o_mub, 3, false, "mu_b"},                       {o_aw, width, false, "alpha_w"},
                  {o_dm, frames * n * 3, true, "delta_means"},     {o_do, frames * n, true, "delta_opacity"}};
    Py_buffer views[9];
    int got = 0;
    for (; got < 9; ++got)
        if (!get_floats(specs[got].obj, &views[got], specs[got].n, specs[got].writable, specs[got].name)) break;
    if (got < 9) {
        for (int i = 0; i < got; ++i) PyBuffer_Release(&views[i]);
        return nullptr;
    }
    const Net net{n, width, layers,
                  static_cast<const float*>(views[0].buf), static_cast<const float*>(views[2].buf),
                  static_cast<const float*>(views[3].buf), static_cast<const float*>(views[4].buf),
                  static_cast<const float*>(views[5].buf), static_cast<const float*>(views[6].buf), alpha_b, bound};
    const float* frame = static_cast<const float*>(views[1].buf);
    float* dm = static_cast<float*>(views[7].buf);
    float* dop = static_cast<float*>(views[8].buf);
    const DecodeSpan span = (AVX512 && width % 16 == 0) ? decode_span_avx512 : decode_span_scalar;
    const int64_t spans = (n + SPAN - 1) / SPAN;
    Py_BEGIN_ALLOW_THREADS
#pragma omp parallel for schedule(static)
    for (int64_t job = 0; job < frames * spans; ++job) {
        const int64_t b = job / spans, i0 = (job % spans) * SPAN, i1 = std::min<int64_t>(n, i0 + SPAN);
        span(net, frame + b * width, i0, i1, b * n + i0, dm, dop);
    }
    Py_END_ALLOW_THREADS
    for (auto& v : views) PyBuffer_Release(&v);
    Py_RETURN_NONE;
}

PyObject* simd(PyObject*, PyObject*) { return PyUnicode_FromString(AVX512 ? "avx512" : "scalar"); }

#ifndef DEFORM_SOURCE_SHA256
#define DEFORM_SOURCE_SHA256 "unknown"
#endif

PyObject* source_sha256(PyObject*, PyObject*) { return PyUnicode_FromString(DEFORM_SOURCE_SHA256); }

PyMethodDef methods[] = {
    {"decode", decode, METH_VARARGS,
     "decode(n, frames, width, trunk_layers, table, frames_vectors, trunk_w, trunk_b, mu_wt, mu_b, alpha_w, "
     "alpha_b, bound, delta_means, delta_opacity) -> None: the per-Gaussian half of the network (float32)"},
    {"simd", simd, METH_NOARGS, "the vector path this CPU gets: avx512 or scalar"},
    {"source_sha256", source_sha256, METH_NOARGS, "sha256 of the deform.cpp this module was built from"},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module = {PyModuleDef_HEAD_INIT, "deform_ext", "The per-Gaussian decode, compiled (plugins/cpu/deform.cpp).",
                      -1, methods};

}  // namespace

PyMODINIT_FUNC PyInit_deform_ext() { return PyModule_Create(&module); }
