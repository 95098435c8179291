// The playback rasteriser (plugins/design.md, steps 1-7, forward only) compiled ahead of time: the
// same operations, in the same order and precision, as rasterize.py's numba kernels behind
// rasterize_u8 (project, bin_tiles, blend_u8 with exp_neg), so the frames are bit for bit the same
// (tests/test_splat_ext.py). It exists for the cold start: a process imports it in ~1 ms, where numba
// needs ~0.7 s of import and registry set-up before the first frame (runtime/design.md).
// Built with -ffp-contract=off and without fast-math: no fused multiply-adds, no reassociation.
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#endif

namespace {

constexpr int TILE = 16;
constexpr int LANES = 8;  // a tile's state: two halves of 16 rows x 8 columns
constexpr int HALVES = TILE / LANES;
constexpr int PIXELS = TILE * TILE;
constexpr double NEAR = 0.01;
constexpr double EPS2D = 0.3;
constexpr double SIGMA_MARGIN = 1e-2;
// float32 constants rounded from the double literals, as np.float32(...) rounds them
const float ALPHA_MIN = static_cast<float>(1.0 / 255.0);
const float ALPHA_MAX = static_cast<float>(0.99);
const float T_MIN = static_cast<float>(1e-4);
const float HALF = 0.5f;
const float ONE = 1.0f;
const float ZERO = 0.0f;
const float U8_MAX = 255.0f;
const float LN2_HI = static_cast<float>(0.693359375);
const float LN2_LO = static_cast<float>(-2.12194440e-4);
const float LOG2E = static_cast<float>(1.44269504088896341);
const float EXP_S_MAX = 20.0f;
const float P0 = static_cast<float>(1.9875691500e-4), P1 = static_cast<float>(1.3981999507e-3),
            P2 = static_cast<float>(8.3334519073e-3), P3 = static_cast<float>(4.1665795894e-2),
            P4 = static_cast<float>(1.6666665459e-1), P5 = static_cast<float>(5.0000001201e-1);

// Python's (and numba's) min/max of two values: the first unless the second is strictly beyond it.
template <typename T> inline T py_min(T a, T b) { return b < a ? b : a; }
template <typename T> inline T py_max(T a, T b) { return b > a ? b : a; }

struct Projected {
    std::vector<float> mean2d, conic;
    std::vector<double> depth, support;
    std::vector<int32_t> rect;
    explicit Projected(size_t n) : mean2d(2 * n, 0.f), conic(3 * n, 0.f), depth(n), support(4 * n, 0.0), rect(4 * n) {}
};

// Steps 1-5 and the tile box for Gaussian g (rasterize.py:_project_one, line for line).
void project_one(int64_t g, const float* means, const float* quats, const float* scales, const float* opacities,
                 const double* vm, const double* K, int width, int height, Projected& p) {
    int32_t* rect = &p.rect[4 * g];
    rect[0] = 0; rect[1] = -1; rect[2] = 0; rect[3] = -1;
    const double m0 = means[3 * g], m1 = means[3 * g + 1], m2 = means[3 * g + 2];
    const double x = vm[0] * m0 + vm[1] * m1 + vm[2] * m2 + vm[3];
    const double y = vm[4] * m0 + vm[5] * m1 + vm[6] * m2 + vm[7];
    const double z = vm[8] * m0 + vm[9] * m1 + vm[10] * m2 + vm[11];
    p.depth[g] = z;
    const double o = opacities[g];
    if (!(z >= NEAR && o >= 1.0 / 255.0)) return;  // NaN-proof

    double w = quats[4 * g], qx = quats[4 * g + 1], qy = quats[4 * g + 2], qz = quats[4 * g + 3];
    const double qn = std::sqrt(w * w + qx * qx + qy * qy + qz * qz);
    w = w / qn; qx = qx / qn; qy = qy / qn; qz = qz / qn;
    const double r00 = 1 - 2 * (qy * qy + qz * qz), r01 = 2 * (qx * qy - w * qz), r02 = 2 * (qx * qz + w * qy);
    const double r10 = 2 * (qx * qy + w * qz), r11 = 1 - 2 * (qx * qx + qz * qz), r12 = 2 * (qy * qz - w * qx);
    const double r20 = 2 * (qx * qz - w * qy), r21 = 2 * (qy * qz + w * qx), r22 = 1 - 2 * (qx * qx + qy * qy);
    const double fx = K[0], fy = K[4], cx = K[2], cy = K[5];
    const double tan_x = 0.5 * width / fx, tan_y = 0.5 * height / fy;
    const double tx = z * py_min(py_max(x / z, -(cx / fx + 0.3 * tan_x)), (width - cx) / fx + 0.3 * tan_x);
    const double ty = z * py_min(py_max(y / z, -(cy / fy + 0.3 * tan_y)), (height - cy) / fy + 0.3 * tan_y);
    const double j00 = fx / z, j02 = -fx * tx / (z * z), j11 = fy / z, j12 = -fy * ty / (z * z);
    double a = EPS2D, b = 0.0, c = EPS2D;
    const double cols[3][3] = {{r00, r10, r20}, {r01, r11, r21}, {r02, r12, r22}};
    for (int k = 0; k < 3; ++k) {
        const double rk0 = cols[k][0], rk1 = cols[k][1], rk2 = cols[k][2];
        const double s_k = scales[3 * g + k];
        const double v0 = (vm[0] * rk0 + vm[1] * rk1 + vm[2] * rk2) * s_k;
        const double v1 = (vm[4] * rk0 + vm[5] * rk1 + vm[6] * rk2) * s_k;
        const double v2 = (vm[8] * rk0 + vm[9] * rk1 + vm[10] * rk2) * s_k;
        const double u0 = j00 * v0 + j02 * v2, u1 = j11 * v1 + j12 * v2;
        a += u0 * u0;
        b += u0 * u1;
        c += u1 * u1;
    }
    const double det = a * c - b * b;
    if (!(det > 0.0)) return;
    const double mx = fx * x / z + cx, my = fy * y / z + cy;
    p.mean2d[2 * g] = static_cast<float>(mx);
    p.mean2d[2 * g + 1] = static_cast<float>(my);
    p.conic[3 * g] = static_cast<float>(c / det);
    p.conic[3 * g + 1] = static_cast<float>(-b / det);
    p.conic[3 * g + 2] = static_cast<float>(a / det);
    const double log_o = std::log(255.0 * o);
    const double s_max = log_o + SIGMA_MARGIN;
    double* support = &p.support[4 * g];
    support[0] = b / c;
    support[1] = 2.0 * s_max * det / c;
    support[2] = det / (c * c);
    support[3] = std::sqrt(2.0 * s_max * c);

    const double mid = 0.5 * (a + c);
    const double lam = mid + std::sqrt(py_max(0.1, 0.25 * (a - c) * (a - c) + b * b));
    const double r = std::ceil(std::sqrt(2.0 * log_o * lam));
    const int tiles_x = (width + TILE - 1) / TILE, tiles_y = (height + TILE - 1) / TILE;
    auto tile_of = [](double v, int n) {  // clamp in float first: v can be huge next to the near plane
        return static_cast<int64_t>(std::floor(py_min(py_max(v / TILE, -1.0), static_cast<double>(n))));
    };
    rect[0] = static_cast<int32_t>(py_max<int64_t>(0, tile_of(mx - r, tiles_x)));
    rect[1] = static_cast<int32_t>(py_min<int64_t>(tiles_x - 1, tile_of(mx + r, tiles_x)));
    rect[2] = static_cast<int32_t>(py_max<int64_t>(0, tile_of(my - r, tiles_y)));
    rect[3] = static_cast<int32_t>(py_min<int64_t>(tiles_y - 1, tile_of(my + r, tiles_y)));
}

// The drawn Gaussians (non-empty rect) in (depth, index) order. Their depths are >= NEAR > 0 (a NaN
// or nearer one is culled), and positive doubles order like their bit patterns as integers, so a
// stable LSD radix sort of the bits (11-bit digits, digits all keys share skipped) starting from
// index order gives exactly numba's order: depth, then index.
std::vector<int32_t> depth_order(const Projected& p, int64_t n) {
    std::vector<uint64_t> key, key_tmp;
    std::vector<int32_t> id, id_tmp;
    key.reserve(n);
    id.reserve(n);
    for (int64_t g = 0; g < n; ++g)
        if (p.rect[4 * g + 1] >= p.rect[4 * g]) {
            uint64_t bits;
            std::memcpy(&bits, &p.depth[g], sizeof bits);
            key.push_back(bits);
            id.push_back(static_cast<int32_t>(g));
        }
    const size_t m = key.size();
    key_tmp.resize(m);
    id_tmp.resize(m);
    constexpr int DIGIT = 11, BUCKETS = 1 << DIGIT;
    std::vector<uint32_t> count(BUCKETS);
    for (int shift = 0; shift < 64; shift += DIGIT) {
        std::fill(count.begin(), count.end(), 0u);
        for (uint64_t k : key) ++count[(k >> shift) & (BUCKETS - 1)];
        if (m == 0 || count[(key[0] >> shift) & (BUCKETS - 1)] == m) continue;  // one digit for all
        uint32_t sum = 0;
        for (uint32_t& c : count) { const uint32_t here = c; c = sum; sum += here; }
        for (size_t i = 0; i < m; ++i) {
            const uint32_t at = count[(key[i] >> shift) & (BUCKETS - 1)]++;
            key_tmp[at] = key[i];
            id_tmp[at] = id[i];
        }
        key.swap(key_tmp);
        id.swap(id_tmp);
    }
    return id;
}

// floor and ceil of a double within a tile's reach, as int64 (without a libm call per Gaussian
// where the build targets no SSE4.1): the truncation, one step down or up when it moved x.
inline int64_t floor_int(double x) {
    const int64_t i = static_cast<int64_t>(x);
    return i - (x < static_cast<double>(i));
}
inline int64_t ceil_int(double x) {
    const int64_t i = static_cast<int64_t>(x);
    return i + (x > static_cast<double>(i));
}

// The support's dy range over the column strip u0 <= dx <= u1 (a band's pixel centres, relative to
// the mean): rows outside it have no pixel of the support in the strip, so the blend leaves them out
// (their lanes would all fail the alpha test: frames unchanged). The support (rasterize.py:
// _project_one) is (dx - kB dy)^2 + Q dy^2 <= P; for a given dx its dy lie between
// (kB dx -+ sqrt(Q (xr^2 - dx^2))) / S, S = kB^2 + Q, xr^2 = P S / Q: the upper bound is concave with
// its top (dy = reach) at dx = kB reach, the lower one convex with its bottom at dx = -kB reach, so
// each extreme is taken at that dx clamped into the strip (sqrt_q = sqrt(Q), inv_s = 1 / S). STRIP_SLACK px keeps it a superset
// whatever the rounding. False when the strip misses the support.
constexpr double STRIP_SLACK = 1e-3;
inline bool strip_rows(double kB, double sqrt_q, double inv_s, double reach, double xr, double u0, double u1,
                       double& dy_lo, double& dy_hi) {
    const double v0 = py_max(u0, -xr), v1 = py_min(u1, xr);
    if (!(v0 <= v1)) return false;
    const double top = py_min(py_max(kB * reach, v0), v1), bottom = py_min(py_max(-kB * reach, v0), v1);
    dy_hi = (kB * top + sqrt_q * std::sqrt(py_max(0.0, (xr - top) * (xr + top)))) * inv_s + STRIP_SLACK;
    dy_lo = (kB * bottom - sqrt_q * std::sqrt(py_max(0.0, (xr - bottom) * (xr + bottom)))) * inv_s - STRIP_SLACK;
    return true;
}

// What the blend reads of one drawn Gaussian, in one cache line: a tile's list then costs one line
// per Gaussian instead of five scattered rows. Its support is cut into 8-column bands (a tile's
// halves): bands [band0, band0 + bands), each band's first and last pixel row at
// Packed::band_rows[2 (rows_at + b)], 2 (rows_at + b) + 1] (empty: first > last).
struct alignas(64) Splat {
    float mx, my, A, B, C, o, cr, cg, cb;
    int32_t band0, bands, rows_at;
};

struct Packed {
    std::vector<Splat> splats;
    std::vector<int32_t> band_rows;
    std::vector<int32_t> rect;  // per splat: the tiles of its bands' rows, x0, x1, y0, y1 inclusive
};

// The drawn Gaussians in depth order, with the rows of their support in each band, computed once
// per Gaussian and band instead of once per tile and half.
Packed pack(const Projected& p, const std::vector<int32_t>& order, const float* opacities, const float* colors,
            int H, int W) {
    const int64_t m = static_cast<int64_t>(order.size());
    Packed out{std::vector<Splat>(m), {}, std::vector<int32_t>(4 * m)};
    std::vector<Splat>& splats = out.splats;
    struct Support { double kB, Q, reach, xr; };
    std::vector<Support> support(m);  // k's support, in depth order: the second pass reads it forward
#pragma omp parallel for schedule(static)
    for (int64_t k = 0; k < m; ++k) {
        const int64_t g = order[k];
        const double* sup = &p.support[4 * g];
        const double kB = sup[0], P = sup[1], Q = sup[2];
        Splat& sp = splats[k];
        sp.mx = p.mean2d[2 * g];
        sp.my = p.mean2d[2 * g + 1];
        sp.A = p.conic[3 * g];
        sp.B = p.conic[3 * g + 1];
        sp.C = p.conic[3 * g + 2];
        sp.o = opacities[g];
        sp.cr = colors[3 * g];
        sp.cg = colors[3 * g + 1];
        sp.cb = colors[3 * g + 2];
        const double xr = std::sqrt(P * (Q + kB * kB) / Q), mx = sp.mx;
        support[k] = {kB, Q, sup[3], xr};
        const int64_t col0 = py_max<int64_t>(0, ceil_int(py_max(mx - xr - 0.5, -1.0)));
        const int64_t col1 = py_min<int64_t>(W - 1, floor_int(py_min(mx + xr - 0.5, W + 1.0)));
        sp.band0 = static_cast<int32_t>(col0 / LANES);
        sp.bands = col0 <= col1 ? static_cast<int32_t>(col1 / LANES - col0 / LANES + 1) : 0;
    }
    int64_t total = 0;
    for (Splat& sp : splats) {
        sp.rows_at = static_cast<int32_t>(total);
        total += sp.bands;
    }
    out.band_rows.resize(2 * total);
    int32_t* band_rows = out.band_rows.data();
#pragma omp parallel for schedule(static)
    for (int64_t k = 0; k < m; ++k) {
        const Splat& sp = splats[k];
        const double kB = support[k].kB, Q = support[k].Q, reach = support[k].reach, xr = support[k].xr;
        const double mx = sp.mx, my = sp.my, sqrt_q = std::sqrt(Q), inv_s = 1.0 / (Q + kB * kB);
        const int64_t row0 = py_max<int64_t>(0, ceil_int(py_max(my - reach - 0.5, -1.0)));
        const int64_t row1 = py_min<int64_t>(H - 1, floor_int(py_min(my + reach - 0.5, H + 1.0)));
        int32_t* rect = &out.rect[4 * k];
        rect[0] = 0; rect[1] = -1; rect[2] = 0; rect[3] = -1;
        int64_t top = H, bottom = -1;
        for (int32_t b = 0; b < sp.bands; ++b) {
            const double u0 = (sp.band0 + b) * LANES + 0.5 - mx;
            double dy_lo, dy_hi;
            int64_t first = 1, last = 0;
            if (strip_rows(kB, sqrt_q, inv_s, reach, xr, u0, u0 + (LANES - 1), dy_lo, dy_hi)) {
                first = py_max<int64_t>(row0, ceil_int(py_max(my + dy_lo - 0.5, -1.0)));
                last = py_min<int64_t>(row1, floor_int(py_min(my + dy_hi - 0.5, H + 1.0)));
            }
            band_rows[2 * (sp.rows_at + b)] = static_cast<int32_t>(first);
            band_rows[2 * (sp.rows_at + b) + 1] = static_cast<int32_t>(last);
            if (first <= last) {
                if (rect[1] < rect[0]) rect[0] = (sp.band0 + b) / HALVES;
                rect[1] = (sp.band0 + b) / HALVES;
                top = std::min(top, first);
                bottom = std::max(bottom, last);
            }
        }
        if (rect[1] >= rect[0]) {
            rect[2] = static_cast<int32_t>(top / TILE);
            rect[3] = static_cast<int32_t>(bottom / TILE);
        }
    }
    return out;
}

inline float pow2_neg(float nf) {  // 2^-n for an integer-valued n in [0, 126], from its exponent bits
    const int32_t bits = (127 - static_cast<int32_t>(nf)) << 23;
    float out;
    std::memcpy(&out, &bits, sizeof out);
    return out;
}

inline float exp_neg(float s) {  // rasterize.py:exp_neg
    s = py_min(s, EXP_S_MAX);
    const float nf = static_cast<float>(static_cast<int32_t>(s * LOG2E + HALF));
    const float x = (nf * LN2_HI - s) + nf * LN2_LO;
    const float p = ((((P0 * x + P1) * x + P2) * x + P3) * x + P4) * x + P5;
    return (p * (x * x) + x + ONE) * pow2_neg(nf);
}

inline float sigma(float dx, float dy, float A, float B, float C) {
    return HALF * (A * dx * dx + C * dy * dy) + B * dx * dy;
}

// Step 7 runs group by group: a group is two rows of one 8-column half, 16 lanes, and its Gaussians
// (the tile's, in depth order, less those whose support misses the group's rows) blend over it one
// after another with the group's T, R, G, B held in registers. Each lane makes rasterize.py's
// _accumulate_tile operations in the same order, so the pixels are the same bit for bit; the loop is
// long and regular, so successive Gaussians' exp chains overlap (a Gaussian at a time over its own
// rows was bound by those chains' latency and its short loops' exits, plugins/design.md).
constexpr int GROUP = 2 * LANES;
constexpr int GROUPS = PIXELS / GROUP;
constexpr int CHUNK = 64;  // a tile's Gaussians listed into its groups at a time

// One group's lanes: px, py, T, R, G, B at the group's first lane (64-byte aligned); list[0..count),
// the group's Gaussians in depth order. T < 0 marks a lane that stopped (-T is its transmittance).
using BlendGroup = bool (*)(float* T, float* R, float* G, float* B, const float* px, const float* py,
                            const Splat* const* list, int count);

// One lane at a time: for CPUs without AVX2.
bool blend_group_scalar(float* T, float* R, float* G, float* B, const float* px, const float* py,
                        const Splat* const* list, int count) {
    for (int k = 0; k < count; ++k) {
        const Splat& sp = *list[k];
        bool open = false;
        for (int c = 0; c < GROUP; ++c) {
            const float dx = px[c] - sp.mx, dy = py[c] - sp.my;
            const float a = py_min(ALPHA_MAX, sp.o * exp_neg(sigma(dx, dy, sp.A, sp.B, sp.C)));
            const float Tc = T[c];
            const float T_next = Tc * (ONE - a);
            const bool ok = (Tc > ZERO) & (a >= ALPHA_MIN);
            const bool stop_here = ok & (T_next < T_MIN);
            const bool add = ok & !stop_here;
            const float w = add ? a * Tc : ZERO;
            R[c] += sp.cr * w;
            G[c] += sp.cg * w;
            B[c] += sp.cb * w;
            T[c] = add ? T_next : (stop_here ? -Tc : Tc);
            open |= T[c] > ZERO;
        }
        if (!open) return false;
    }
    bool open = false;
    for (int c = 0; c < GROUP; ++c) open |= T[c] > ZERO;
    return open;
}

#if defined(__GNUC__) && defined(__x86_64__)
#define SPLAT_AVX2 1
constexpr int BATCH = 4;  // alphas computed ahead of the T chain (4 and 8 measured alike, 16 slower)
// exp_neg's operations on 8 lanes: min_ps(a, b) is (a < b ? a : b) like py_min(b, a), cvtt truncates
// like the int32 cast.
__attribute__((target("avx2"))) inline __m256 exp_neg_avx2(__m256 s) {
    s = _mm256_min_ps(_mm256_set1_ps(EXP_S_MAX), s);
    const __m256i n = _mm256_cvttps_epi32(_mm256_add_ps(_mm256_mul_ps(s, _mm256_set1_ps(LOG2E)), _mm256_set1_ps(HALF)));
    const __m256 nf = _mm256_cvtepi32_ps(n);
    const __m256 x = _mm256_add_ps(_mm256_sub_ps(_mm256_mul_ps(nf, _mm256_set1_ps(LN2_HI)), s),
                                   _mm256_mul_ps(nf, _mm256_set1_ps(LN2_LO)));
    __m256 p = _mm256_add_ps(_mm256_mul_ps(_mm256_set1_ps(P0), x), _mm256_set1_ps(P1));
    p = _mm256_add_ps(_mm256_mul_ps(p, x), _mm256_set1_ps(P2));
    p = _mm256_add_ps(_mm256_mul_ps(p, x), _mm256_set1_ps(P3));
    p = _mm256_add_ps(_mm256_mul_ps(p, x), _mm256_set1_ps(P4));
    p = _mm256_add_ps(_mm256_mul_ps(p, x), _mm256_set1_ps(P5));
    const __m256 pow2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_sub_epi32(_mm256_set1_epi32(127), n), 23));
    return _mm256_mul_ps(_mm256_add_ps(_mm256_add_ps(_mm256_mul_ps(p, _mm256_mul_ps(x, x)), x), _mm256_set1_ps(ONE)),
                         pow2);
}

// One Gaussian's alpha on 8 lanes (the scalar lane's operations).
__attribute__((target("avx2"))) inline __m256 alpha_avx2(__m256 px, __m256 py, const Splat& sp) {
    const __m256 dx = _mm256_sub_ps(px, _mm256_set1_ps(sp.mx)), dy = _mm256_sub_ps(py, _mm256_set1_ps(sp.my));
    const __m256 quad = _mm256_add_ps(_mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(sp.A), dx), dx),
                                      _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(sp.C), dy), dy));
    const __m256 s_ = _mm256_add_ps(_mm256_mul_ps(_mm256_set1_ps(HALF), quad),
                                    _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(sp.B), dx), dy));
    return _mm256_min_ps(_mm256_mul_ps(_mm256_set1_ps(sp.o), exp_neg_avx2(s_)), _mm256_set1_ps(ALPHA_MAX));
}

// One Gaussian of alpha `a` over 8 lanes held in registers (ordered compares are false on NaN like C's).
struct Lanes8 {
    __m256 T, R, G, B;
};
__attribute__((target("avx2"))) inline void splat_lanes8(Lanes8& s, __m256 a, const Splat& sp) {
    const __m256 T_next = _mm256_mul_ps(s.T, _mm256_sub_ps(_mm256_set1_ps(ONE), a));
    const __m256 ok = _mm256_and_ps(_mm256_cmp_ps(s.T, _mm256_setzero_ps(), _CMP_GT_OQ),
                                    _mm256_cmp_ps(a, _mm256_set1_ps(ALPHA_MIN), _CMP_GE_OQ));
    const __m256 stop_here = _mm256_and_ps(ok, _mm256_cmp_ps(T_next, _mm256_set1_ps(T_MIN), _CMP_LT_OQ));
    const __m256 add = _mm256_andnot_ps(stop_here, ok);
    const __m256 w = _mm256_and_ps(add, _mm256_mul_ps(a, s.T));
    s.R = _mm256_add_ps(s.R, _mm256_mul_ps(_mm256_set1_ps(sp.cr), w));
    s.G = _mm256_add_ps(s.G, _mm256_mul_ps(_mm256_set1_ps(sp.cg), w));
    s.B = _mm256_add_ps(s.B, _mm256_mul_ps(_mm256_set1_ps(sp.cb), w));
    const __m256 kept = _mm256_blendv_ps(s.T, _mm256_xor_ps(s.T, _mm256_set1_ps(-0.0f)), stop_here);
    s.T = _mm256_blendv_ps(kept, T_next, add);
}

// Alphas BATCH Gaussians ahead of the T chain, as blend_group_avx512 (below) explains.
__attribute__((target("avx2"))) bool blend_group_avx2(float* T, float* R, float* G, float* B, const float* px,
                                                        const float* py, const Splat* const* list, int count) {
    Lanes8 lo{_mm256_load_ps(T), _mm256_load_ps(R), _mm256_load_ps(G), _mm256_load_ps(B)};
    Lanes8 hi{_mm256_load_ps(T + LANES), _mm256_load_ps(R + LANES), _mm256_load_ps(G + LANES), _mm256_load_ps(B + LANES)};
    const __m256 px_lo = _mm256_load_ps(px), py_lo = _mm256_load_ps(py);
    const __m256 px_hi = _mm256_load_ps(px + LANES), py_hi = _mm256_load_ps(py + LANES);
    for (int k0 = 0; k0 < count; k0 += BATCH) {
        const int n = std::min(BATCH, count - k0);
        __m256 a_lo[BATCH], a_hi[BATCH];
#pragma GCC unroll 4
        for (int j = 0; j < BATCH; ++j) {
            const Splat& sp = *list[k0 + std::min(j, n - 1)];
            a_lo[j] = alpha_avx2(px_lo, py_lo, sp);
            a_hi[j] = alpha_avx2(px_hi, py_hi, sp);
        }
#pragma GCC unroll 4
        for (int j = 0; j < BATCH; ++j) {
            if (j == n) break;
            const __m256 open = _mm256_or_ps(_mm256_cmp_ps(lo.T, _mm256_setzero_ps(), _CMP_GT_OQ),
                                             _mm256_cmp_ps(hi.T, _mm256_setzero_ps(), _CMP_GT_OQ));
            if (_mm256_movemask_ps(open) == 0) goto done;  // every lane stopped: the rest change nothing
            splat_lanes8(lo, a_lo[j], *list[k0 + j]);
            splat_lanes8(hi, a_hi[j], *list[k0 + j]);
        }
    }
done:
    _mm256_store_ps(T, lo.T); _mm256_store_ps(R, lo.R); _mm256_store_ps(G, lo.G); _mm256_store_ps(B, lo.B);
    _mm256_store_ps(T + LANES, hi.T); _mm256_store_ps(R + LANES, hi.R);
    _mm256_store_ps(G + LANES, hi.G); _mm256_store_ps(B + LANES, hi.B);
    return _mm256_movemask_ps(_mm256_or_ps(_mm256_cmp_ps(lo.T, _mm256_setzero_ps(), _CMP_GT_OQ),
                                           _mm256_cmp_ps(hi.T, _mm256_setzero_ps(), _CMP_GT_OQ))) != 0;
}

#if !defined(__clang__)  // GCC 12's avx512fintrin.h warns of its own undefined placeholders
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
// exp_neg's operations on 16 lanes (exp_neg_avx2's).
__attribute__((target("avx512f,avx2"))) inline __m512 exp_neg_avx512(__m512 s) {
    s = _mm512_min_ps(_mm512_set1_ps(EXP_S_MAX), s);
    const __m512i n = _mm512_cvttps_epi32(_mm512_add_ps(_mm512_mul_ps(s, _mm512_set1_ps(LOG2E)), _mm512_set1_ps(HALF)));
    const __m512 nf = _mm512_cvtepi32_ps(n);
    const __m512 x = _mm512_add_ps(_mm512_sub_ps(_mm512_mul_ps(nf, _mm512_set1_ps(LN2_HI)), s),
                                   _mm512_mul_ps(nf, _mm512_set1_ps(LN2_LO)));
    __m512 p = _mm512_add_ps(_mm512_mul_ps(_mm512_set1_ps(P0), x), _mm512_set1_ps(P1));
    p = _mm512_add_ps(_mm512_mul_ps(p, x), _mm512_set1_ps(P2));
    p = _mm512_add_ps(_mm512_mul_ps(p, x), _mm512_set1_ps(P3));
    p = _mm512_add_ps(_mm512_mul_ps(p, x), _mm512_set1_ps(P4));
    p = _mm512_add_ps(_mm512_mul_ps(p, x), _mm512_set1_ps(P5));
    const __m512 pow2 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_sub_epi32(_mm512_set1_epi32(127), n), 23));
    return _mm512_mul_ps(_mm512_add_ps(_mm512_add_ps(_mm512_mul_ps(p, _mm512_mul_ps(x, x)), x), _mm512_set1_ps(ONE)),
                         pow2);
}

// One Gaussian's alpha on 16 lanes (the scalar lane's operations).
__attribute__((target("avx512f,avx2"))) inline __m512 alpha_avx512(__m512 vpx, __m512 vpy, const Splat& sp) {
    const __m512 dx = _mm512_sub_ps(vpx, _mm512_set1_ps(sp.mx));
    const __m512 dy = _mm512_sub_ps(vpy, _mm512_set1_ps(sp.my));
    const __m512 quad = _mm512_add_ps(_mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(sp.A), dx), dx),
                                      _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(sp.C), dy), dy));
    const __m512 s = _mm512_add_ps(_mm512_mul_ps(_mm512_set1_ps(HALF), quad),
                                   _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(sp.B), dx), dy));
    return _mm512_min_ps(_mm512_mul_ps(_mm512_set1_ps(sp.o), exp_neg_avx512(s)), _mm512_set1_ps(ALPHA_MAX));
}

// The same on 16 lanes in one register each. An alpha's chain (~30 dependent operations through
// exp_neg) is far longer than the T chain between Gaussians, and the CPU's window holds only a few
// Gaussians' chains: so BATCH alphas are computed side by side first, then blended in depth order
// (the same operations per lane, so the same pixels). The masked forms stand for the AVX2
// and/andnot/blendv: a lane outside `add` gets w = +0.0, as and_ps gives.
__attribute__((target("avx512f,avx2"))) bool blend_group_avx512(float* T, float* R, float* G, float* B,
                                                                const float* px, const float* py,
                                                                const Splat* const* list, int count) {
    __m512 vT = _mm512_load_ps(T), vR = _mm512_load_ps(R), vG = _mm512_load_ps(G), vB = _mm512_load_ps(B);
    const __m512 vpx = _mm512_load_ps(px), vpy = _mm512_load_ps(py);
    const __m512 one = _mm512_set1_ps(ONE), zero = _mm512_setzero_ps();
    const __m512i sign = _mm512_set1_epi32(INT32_MIN);
    for (int k0 = 0; k0 < count; k0 += BATCH) {
        const int n = std::min(BATCH, count - k0);
        __m512 a[BATCH];
#pragma GCC unroll 4
        for (int j = 0; j < BATCH; ++j) a[j] = alpha_avx512(vpx, vpy, *list[k0 + std::min(j, n - 1)]);
#pragma GCC unroll 4
        for (int j = 0; j < BATCH; ++j) {
            if (j == n) break;
            const __mmask16 open = _mm512_cmp_ps_mask(vT, zero, _CMP_GT_OQ);
            if (open == 0) goto done;  // every lane stopped: the rest change nothing
            const Splat& sp = *list[k0 + j];
            const __m512 T_next = _mm512_mul_ps(vT, _mm512_sub_ps(one, a[j]));
            const __mmask16 ok = open & _mm512_cmp_ps_mask(a[j], _mm512_set1_ps(ALPHA_MIN), _CMP_GE_OQ);
            const __mmask16 stop_here = ok & _mm512_cmp_ps_mask(T_next, _mm512_set1_ps(T_MIN), _CMP_LT_OQ);
            const __mmask16 add = ok & static_cast<__mmask16>(~stop_here);
            const __m512 w = _mm512_maskz_mul_ps(add, a[j], vT);
            vR = _mm512_add_ps(vR, _mm512_mul_ps(_mm512_set1_ps(sp.cr), w));
            vG = _mm512_add_ps(vG, _mm512_mul_ps(_mm512_set1_ps(sp.cg), w));
            vB = _mm512_add_ps(vB, _mm512_mul_ps(_mm512_set1_ps(sp.cb), w));
            const __m512 negated = _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(vT), sign));
            vT = _mm512_mask_blend_ps(add, _mm512_mask_blend_ps(stop_here, vT, negated), T_next);
        }
    }
done:
    _mm512_store_ps(T, vT); _mm512_store_ps(R, vR); _mm512_store_ps(G, vG); _mm512_store_ps(B, vB);
    return _mm512_cmp_ps_mask(vT, zero, _CMP_GT_OQ) != 0;
}
#if !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#endif

// The widest the CPU has (AVX-512, AVX2, scalar); EMBEDTALK_CPU_SIMD=avx2 or =0 caps it (the tests
// run every path that way).
BlendGroup pick_blend_group() {
#ifdef SPLAT_AVX2
    const char* cap = std::getenv("EMBEDTALK_CPU_SIMD");
    const bool scalar_only = cap && std::strcmp(cap, "0") == 0;
    const bool avx2_only = cap && std::strcmp(cap, "avx2") == 0;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx2") && !scalar_only && !avx2_only)
        return blend_group_avx512;
    if (__builtin_cpu_supports("avx2") && !scalar_only) return blend_group_avx2;
#endif
    return blend_group_scalar;
}

const BlendGroup blend_group = pick_blend_group();


// nearbyint for 0 <= x < 2^23 in the default rounding mode (half to even), without a libm call:
// adding 2^23 leaves no fraction bits, so the addition itself rounds (strict IEEE float, which the
// build asks for, never folds (x + c) - c).
inline float round_half_even(float x) { return (x + 8388608.0f) - 8388608.0f; }

// py_min(py_max(v, 0), 1) without a branch: maxss(a, b) is (a > b ? a : b), minss(a, b) (a < b ? a : b),
// as py_max(v, 0) and py_min(x, 1) are, NaN and signed zeros included (GCC compiles the ternaries to jumps).
inline float clamp01(float v) {
#if defined(__x86_64__)
    return _mm_cvtss_f32(_mm_min_ss(_mm_set_ss(ONE), _mm_max_ss(_mm_set_ss(ZERO), _mm_set_ss(v))));
#else
    return py_min(py_max(v, ZERO), ONE);
#endif
}

inline int lane(int i, int j, int i0, int j0) {
    return ((j - j0) / LANES) * TILE * LANES + (i - i0) * LANES + (j - j0) % LANES;
}

// level / 255 for every uint8 level: the division the blend's last step makes, made once.
struct BackgroundLevels {
    float of[256];
    BackgroundLevels() {
        for (int level = 0; level < 256; ++level) of[level] = static_cast<float>(level) / U8_MAX;
    }
};
const BackgroundLevels BACKGROUND_LEVELS;

#ifdef SPLAT_AVX2
// The blend's last step on 8 pixels of a row (one row of a tile's half, lanes in a line), the
// scalar loop's operations lane for lane: |T|, + T * BACKGROUND_LEVELS (gathered), clamp01
// (max_ps(0, v) and min_ps(1, x) are maxss/minss with the same operands), * 255, round half to
// even by 2^23, truncate. Bytes in and out are interleaved RGB.
__attribute__((target("avx2"))) void composite8_avx2(const float* T, const float* R, const float* G, const float* B,
                                                      const uint8_t* background, uint8_t* out) {
    const __m256 Tf = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), _mm256_load_ps(T));
    const float* rgb[3] = {R, G, B};
    alignas(32) int32_t level[LANES], value[3][LANES];
    for (int ch = 0; ch < 3; ++ch) {
        for (int k = 0; k < LANES; ++k) level[k] = background[3 * k + ch];
        const __m256 bg = _mm256_i32gather_ps(BACKGROUND_LEVELS.of,
                                              _mm256_load_si256(reinterpret_cast<const __m256i*>(level)), 4);
        const __m256 v = _mm256_add_ps(_mm256_load_ps(rgb[ch]), _mm256_mul_ps(Tf, bg));
        const __m256 clamped = _mm256_min_ps(_mm256_set1_ps(ONE), _mm256_max_ps(_mm256_setzero_ps(), v));
        const __m256 big = _mm256_set1_ps(8388608.0f);
        const __m256 rounded = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(clamped, _mm256_set1_ps(U8_MAX)), big), big);
        _mm256_store_si256(reinterpret_cast<__m256i*>(value[ch]), _mm256_cvttps_epi32(rounded));
    }
    for (int k = 0; k < LANES; ++k)
        for (int ch = 0; ch < 3; ++ch) out[3 * k + ch] = static_cast<uint8_t>(value[ch][k]);
}
const bool composite_avx2 = blend_group != blend_group_scalar;
#endif

// Bit g set: the support has rows in group g of the tile at (i0, j0) (rows [i0, i1)).
inline uint32_t group_mask(const Splat& sp, const int32_t* band_rows, int i0, int i1, int j0) {
    uint32_t mask = 0;
    for (int h = 0; h < HALVES; ++h) {
        const int32_t b = j0 / LANES + h - sp.band0;
        const bool in = static_cast<uint32_t>(b) < static_cast<uint32_t>(sp.bands);
        const int32_t* rows = band_rows + 2 * (sp.rows_at + (in ? b : 0));
        const int ra = std::max(rows[0], i0) - i0, rb = std::min(rows[1], i1 - 1) - i0;
        // row pairs ra / 2 .. rb / 2 of this half
        const uint32_t pairs = (0xFFu >> (7 - std::max(rb, 0) / 2)) & (0xFFu << (std::max(ra, 0) / 2)) & 0xFFu;
        mask |= (in && ra <= rb) ? pairs << (h * TILE / 2) : 0u;
    }
    return mask;
}

// Step 6: each tile's Gaussian ids in (depth, index) order, as CSR. The depth order is cut into one
// run per thread; each run's tile counts come from a 2D difference array (four writes per Gaussian,
// then prefix sums), and each run fills its own slice of every tile's list, after the slices of the
// runs in front of it, so every list comes out sorted without a merge.
// ids hold positions in `order` (the depth order), so a tile's list reads the packed Splats forward;
// masks[i] is the group_mask of entry i. The tiles are those of the support's bands (Packed::rect).
void bin_tiles(const Packed& packed, int tiles_x, int tiles_y, int H, std::vector<int64_t>& offsets,
               std::vector<int32_t>& ids, std::vector<uint16_t>& masks) {
    const int64_t n_tiles = static_cast<int64_t>(tiles_x) * tiles_y;
    const int64_t row = tiles_x + 1;
    const int64_t m = static_cast<int64_t>(packed.splats.size());
#ifdef _OPENMP
    const int runs = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(omp_get_max_threads(), m / 4096)));
#else
    const int runs = 1;
#endif
    // cursor[r * n_tiles + t]: run r's count in tile t, then where its slice of tile t starts
    std::vector<int64_t> cursor(static_cast<size_t>(runs) * n_tiles);
#pragma omp parallel for schedule(static, 1) num_threads(runs)
    for (int r = 0; r < runs; ++r) {
        std::vector<int64_t> diff((tiles_y + 1) * row, 0);
        for (int64_t k = m * r / runs; k < m * (r + 1) / runs; ++k) {
            const int32_t* rc = &packed.rect[4 * k];  // x0, x1, y0, y1, inclusive
            diff[rc[2] * row + rc[0]] += 1;
            diff[rc[2] * row + rc[1] + 1] -= 1;
            diff[(rc[3] + 1) * row + rc[0]] -= 1;
            diff[(rc[3] + 1) * row + rc[1] + 1] += 1;
        }
        std::vector<int64_t> above(tiles_x + 1, 0);  // column sums of diff over the rows so far
        int64_t* count = &cursor[static_cast<size_t>(r) * n_tiles];
        for (int ty = 0; ty < tiles_y; ++ty) {
            int64_t run = 0;
            for (int tx = 0; tx < tiles_x; ++tx) {
                above[tx] += diff[ty * row + tx];
                run += above[tx];
                count[static_cast<int64_t>(ty) * tiles_x + tx] = run;
            }
        }
    }
    offsets.assign(n_tiles + 1, 0);
    int64_t total = 0;
    for (int64_t t = 0; t < n_tiles; ++t) {
        offsets[t] = total;
        for (int r = 0; r < runs; ++r) {
            const int64_t here = cursor[r * n_tiles + t];
            cursor[r * n_tiles + t] = total;
            total += here;
        }
    }
    offsets[n_tiles] = total;
    ids.resize(total);
    masks.resize(total);
#pragma omp parallel for schedule(static, 1) num_threads(runs)
    for (int r = 0; r < runs; ++r) {
        int64_t* fill = &cursor[static_cast<size_t>(r) * n_tiles];
        for (int64_t k = m * r / runs; k < m * (r + 1) / runs; ++k) {
            const int32_t* rc = &packed.rect[4 * k];
            const Splat& sp = packed.splats[k];
            for (int ty = rc[2]; ty <= rc[3]; ++ty) {
                int64_t* f = &fill[static_cast<int64_t>(ty) * tiles_x];
                const int i0 = ty * TILE, i1 = std::min(i0 + TILE, H);
                for (int tx = rc[0]; tx <= rc[1]; ++tx) {
                    masks[f[tx]] = static_cast<uint16_t>(group_mask(sp, packed.band_rows.data(), i0, i1, tx * TILE));
                    ids[f[tx]++] = static_cast<int32_t>(k);
                }
            }
        }
    }
}

// Step 7 for tile t over a uint8 background, into uint8 out (rasterize.py:blend_u8). `lists` is
// the calling thread's scratch for the groups' Gaussians.
void blend_tile_u8(int64_t t, const int64_t* offsets, const int32_t* ids, const uint16_t* masks, const Splat* splats,
                   const uint8_t* background, int H, int W, int tiles_x, uint8_t* out) {
    const int i0 = static_cast<int>(t / tiles_x) * TILE, j0 = static_cast<int>(t % tiles_x) * TILE;
    const int i1 = std::min(i0 + TILE, H), j1 = std::min(j0 + TILE, W);
    alignas(64) float T[PIXELS], R[PIXELS], G[PIXELS], B[PIXELS], px[PIXELS], py[PIXELS];
    for (int h = 0; h < HALVES; ++h)
        for (int r = 0; r < TILE; ++r)
            for (int col = 0; col < LANES; ++col) {
                const int c = h * TILE * LANES + r * LANES + col;
                px[c] = static_cast<float>(j0 + h * LANES + col) + HALF;
                py[c] = static_cast<float>(i0 + r) + HALF;
                T[c] = (i0 + r < i1 && j0 + h * LANES + col < j1) ? ONE : -ONE;  // outside: stopped
                R[c] = G[c] = B[c] = ZERO;
            }
    // group (h, row pair) = lanes [16 g, 16 g + 16), g = h * TILE / 2 + row / 2: its list, in depth order
    // The tile's Gaussians CHUNK at a time: each is written into all 16 lists and counted where its
    // mask bit is set (no branch per group; one spare slot per list), then every group blends its
    // part. A group whose lanes have all stopped takes no more; the tile ends when all have.
    const Splat* lists[GROUPS][CHUNK + 1];
    uint32_t open_groups = 0;
    for (int g = 0; g < GROUPS; ++g) {
        bool open = false;
        for (int c = g * GROUP; c < (g + 1) * GROUP; ++c) open |= T[c] > ZERO;
        open_groups |= static_cast<uint32_t>(open) << g;
    }
    for (int64_t k0 = offsets[t]; k0 < offsets[t + 1] && open_groups != 0; k0 += CHUNK) {
        const int64_t k1 = std::min<int64_t>(k0 + CHUNK, offsets[t + 1]);
        int count[GROUPS] = {};
        for (int64_t k = k0; k < k1; ++k) {
            const Splat* sp = &splats[ids[k]];
            const uint32_t mask = masks[k] & open_groups;
            for (int g = 0; g < GROUPS; ++g) {
                lists[g][count[g]] = sp;
                count[g] += (mask >> g) & 1u;
            }
        }
        for (int g = 0; g < GROUPS; ++g)
            if (count[g] > 0 && !blend_group(T + g * GROUP, R + g * GROUP, G + g * GROUP, B + g * GROUP,
                                             px + g * GROUP, py + g * GROUP, lists[g], count[g]))
                open_groups &= ~(1u << g);
    }
    const float* rgb[3] = {R, G, B};
#ifdef SPLAT_AVX2
    if (composite_avx2 && j1 - j0 == TILE) {
        for (int i = i0; i < i1; ++i)
            for (int h = 0; h < HALVES; ++h) {
                const int c = lane(i, j0 + h * LANES, i0, j0);
                const int64_t at = (static_cast<int64_t>(i) * W + j0 + h * LANES) * 3;
                composite8_avx2(T + c, R + c, G + c, B + c, background + at, out + at);
            }
        return;
    }
#endif
    for (int i = i0; i < i1; ++i)
        for (int j = j0; j < j1; ++j) {
            const int c = lane(i, j, i0, j0);
            const float Tf = std::fabs(T[c]);
            const int64_t at = (static_cast<int64_t>(i) * W + j) * 3;
            for (int ch = 0; ch < 3; ++ch) {
                const float v = rgb[ch][c] + Tf * BACKGROUND_LEVELS.of[background[at + ch]];
                out[at + ch] = static_cast<uint8_t>(round_half_even(clamp01(v) * U8_MAX));
            }
        }
}

struct Clock {  // wall and process CPU seconds (std::clock counts every thread of the process on POSIX)
    double wall, cpu;
    static Clock now() {
        const auto w = std::chrono::steady_clock::now().time_since_epoch();
        return {std::chrono::duration<double>(w).count(), static_cast<double>(std::clock()) / CLOCKS_PER_SEC};
    }
};

// A C-contiguous buffer of n items of `itemsize` bytes, writable if asked; false with an error set.
bool get_buffer(PyObject* obj, Py_buffer* view, Py_ssize_t n, Py_ssize_t itemsize, bool writable, const char* name) {
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0)) != 0) return false;
    if (view->itemsize != itemsize || view->len != n * itemsize) {
        PyErr_Format(PyExc_ValueError, "%s: expected %zd items of %zd bytes, got %zd bytes of %zd-byte items", name,
                     n, itemsize, view->len, view->itemsize);
        PyBuffer_Release(view);
        return false;
    }
    return true;
}

PyObject* rasterize_u8(PyObject*, PyObject* args) {
    PyObject *o_means, *o_quats, *o_scales, *o_opac, *o_colors, *o_viewmat, *o_K, *o_bg, *o_out;
    Py_ssize_t n;
    int H, W, threads = 0;
    if (!PyArg_ParseTuple(args, "nOOOOOOOiiOO|i", &n, &o_means, &o_quats, &o_scales, &o_opac, &o_colors, &o_viewmat,
                          &o_K, &H, &W, &o_bg, &o_out, &threads))
        return nullptr;
    if (n < 0 || n > INT32_MAX || H <= 0 || W <= 0 || threads < 0) {
        PyErr_SetString(PyExc_ValueError, "rasterize_u8: bad sizes");
        return nullptr;
    }
    struct Spec { PyObject* obj; Py_ssize_t n, itemsize; bool writable; const char* name; };
    const Py_ssize_t pixels = static_cast<Py_ssize_t>(H) * W * 3;
    const Spec specs[9] = {{o_means, 3 * n, 4, false, "means"},   {o_quats, 4 * n, 4, false, "quats"},
                           {o_scales, 3 * n, 4, false, "scales"}, {o_opac, n, 4, false, "opacities"},
                           {o_colors, 3 * n, 4, false, "colors"}, {o_viewmat, 16, 4, false, "viewmat"},
                           {o_K, 9, 4, false, "K"},               {o_bg, pixels, 1, false, "background"},
                           {o_out, pixels, 1, true, "out"}};
    Py_buffer views[9];
    int got = 0;
    for (; got < 9; ++got)
        if (!get_buffer(specs[got].obj, &views[got], specs[got].n, specs[got].itemsize, specs[got].writable,
                        specs[got].name))
            break;
    if (got < 9) {
        for (int i = 0; i < got; ++i) PyBuffer_Release(&views[i]);
        return nullptr;
    }
    const float* means = static_cast<const float*>(views[0].buf);
    const float* quats = static_cast<const float*>(views[1].buf);
    const float* scales = static_cast<const float*>(views[2].buf);
    const float* opacities = static_cast<const float*>(views[3].buf);
    const float* colors = static_cast<const float*>(views[4].buf);
    const float* viewmat = static_cast<const float*>(views[5].buf);
    const float* Kf = static_cast<const float*>(views[6].buf);
    const uint8_t* background = static_cast<const uint8_t*>(views[7].buf);
    uint8_t* out = static_cast<uint8_t*>(views[8].buf);
    double stages[6];
    Py_BEGIN_ALLOW_THREADS
#ifdef _OPENMP
    // The calling thread's own setting (OpenMP keeps one per thread): a thread rendering frames
    // beside others asks for 1. The frame is the same for any count (bin_tiles' runs keep the order).
    if (threads > 0) omp_set_num_threads(threads);
#endif
    double vm[16], K[9];
    for (int i = 0; i < 16; ++i) vm[i] = viewmat[i];
    for (int i = 0; i < 9; ++i) K[i] = Kf[i];
    const int tiles_x = (W + TILE - 1) / TILE, tiles_y = (H + TILE - 1) / TILE;
    Clock c0 = Clock::now();
    Projected p(static_cast<size_t>(n));
#pragma omp parallel for schedule(static)
    for (int64_t g = 0; g < n; ++g) project_one(g, means, quats, scales, opacities, vm, K, W, H, p);
    Clock c1 = Clock::now();
    std::vector<int64_t> offsets;
    std::vector<int32_t> ids;
    std::vector<uint16_t> masks;
    const std::vector<int32_t> order = depth_order(p, n);
    const Packed packed = pack(p, order, opacities, colors, H, W);
    bin_tiles(packed, tiles_x, tiles_y, H, offsets, ids, masks);
    Clock c2 = Clock::now();
    const int64_t n_tiles = static_cast<int64_t>(tiles_x) * tiles_y;
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t t = 0; t < n_tiles; ++t)
        blend_tile_u8(t, offsets.data(), ids.data(), masks.data(), packed.splats.data(), background, H, W, tiles_x, out);
    Clock c3 = Clock::now();
    const Clock cs[4] = {c0, c1, c2, c3};
    for (int s = 0; s < 3; ++s) {
        stages[2 * s] = cs[s + 1].wall - cs[s].wall;
        stages[2 * s + 1] = cs[s + 1].cpu - cs[s].cpu;
    }
    Py_END_ALLOW_THREADS
    for (int i = 0; i < 9; ++i) PyBuffer_Release(&views[i]);
    return Py_BuildValue("((dd)(dd)(dd))", stages[0], stages[1], stages[2], stages[3], stages[4], stages[5]);
}

// x <- 1 / (1 + exp(-x)) in float32, in place: scipy.special.expit's float32 loop (the same libm
// expf, the same two operations), without importing scipy.special (~0.2 s of a cold process).
PyObject* sigmoid_(PyObject*, PyObject* args) {
    PyObject* obj;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "nO", &n, &obj)) return nullptr;
    Py_buffer view;
    if (!get_buffer(obj, &view, n, 4, true, "x")) return nullptr;
    float* x = static_cast<float*>(view.buf);
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; ++i) x[i] = 1.0f / (1.0f + std::exp(-x[i]));
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    Py_RETURN_NONE;
}

PyObject* threads(PyObject*, PyObject*) {
#ifdef _OPENMP
    return PyLong_FromLong(omp_get_max_threads());
#else
    return PyLong_FromLong(1);
#endif
}

PyObject* simd(PyObject*, PyObject*) {
#ifdef SPLAT_AVX2
    if (blend_group == blend_group_avx512) return PyUnicode_FromString("avx512");
    if (blend_group == blend_group_avx2) return PyUnicode_FromString("avx2");
#endif
    return PyUnicode_FromString("scalar");
}

#ifndef SPLAT_SOURCE_SHA256
#define SPLAT_SOURCE_SHA256 "unknown"
#endif

PyObject* source_sha256(PyObject*, PyObject*) { return PyUnicode_FromString(SPLAT_SOURCE_SHA256); }

PyMethodDef methods[] = {
    {"rasterize_u8", rasterize_u8, METH_VARARGS,
     "rasterize_u8(n, means, quats, scales, opacities, colors, viewmat, K, H, W, background, out, threads=0) -> "
     "((wall, cpu) of projection, binning, blending). float32 C-contiguous inputs, uint8 [H,W,3] background "
     "and out; rasterize.py:rasterize_u8 checks and converts them. threads > 0: the OpenMP threads of this "
     "and later calls from the calling thread (0: leave them)."},
    {"sigmoid_", sigmoid_, METH_VARARGS,
     "sigmoid_(n, x): x <- 1 / (1 + exp(-x)) in place, x a writable C-contiguous float32 buffer of n items "
     "(scipy.special.expit's float32 values)."},
    {"source_sha256", source_sha256, METH_NOARGS, "sha256 of the splat.cpp this module was built from."},
    {"simd", simd, METH_NOARGS, "The blend's instruction set: 'avx512', 'avx2' or 'scalar'."},
    {"threads", threads, METH_NOARGS, "The OpenMP threads a frame uses (1 when built without OpenMP)."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module = {PyModuleDef_HEAD_INIT, "splat_ext",
                      "The playback rasteriser compiled ahead of time (plugins/cpu/splat.cpp).", -1, methods};

}  // namespace

PyMODINIT_FUNC PyInit_splat_ext(void) { return PyModule_Create(&module); }
