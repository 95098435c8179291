// The CUDA device language for a host C++ compiler: just enough that a kernels source written
// for NVRTC (one that includes nothing) compiles unchanged with g++, each CUDA thread running as
// a fiber of the fake libcuda's scheduler (fake_libcuda.cpp). Included first by the generated
// translation unit of each kernel set (gen_kernel_set.py).
//
// __shared__ variables are static, in the section `etk_shared`, so they are one per block
// (blocks run one after another) and the runtime can poison them before every block.
// Barriers and warp collectives are macros, so a deadlock or divergence is reported with the
// source line of the call.
#ifndef ETK_EMU_DEVICE_H
#define ETK_EMU_DEVICE_H

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <type_traits>

#include "etk_emu_abi.h"

#define __global__
#define __device__
#define __host__
#define __constant__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ static __attribute__((section("etk_shared"), aligned(16)))
#define __grid_constant__

// ------------------------------------------------------------------ built-in vector types

#define ETK_EMU_VEC2(T, N, A) \
    struct __attribute__((aligned(A))) N { T x, y; }; \
    static inline N make_##N(T x, T y) { N v; v.x = x; v.y = y; return v; }
#define ETK_EMU_VEC3(T, N) \
    struct N { T x, y, z; }; \
    static inline N make_##N(T x, T y, T z) { N v; v.x = x; v.y = y; v.z = z; return v; }
#define ETK_EMU_VEC4(T, N, A) \
    struct __attribute__((aligned(A))) N { T x, y, z, w; }; \
    static inline N make_##N(T x, T y, T z, T w) { N v; v.x = x; v.y = y; v.z = z; v.w = w; return v; }

ETK_EMU_VEC2(float, float2, 8) ETK_EMU_VEC3(float, float3) ETK_EMU_VEC4(float, float4, 16)
ETK_EMU_VEC2(int, int2, 8) ETK_EMU_VEC3(int, int3) ETK_EMU_VEC4(int, int4, 16)
ETK_EMU_VEC2(unsigned int, uint2, 8) ETK_EMU_VEC3(unsigned int, uint3) ETK_EMU_VEC4(unsigned int, uint4, 16)
ETK_EMU_VEC2(double, double2, 16) ETK_EMU_VEC3(double, double3)
ETK_EMU_VEC2(long long, longlong2, 16) ETK_EMU_VEC2(unsigned long long, ulonglong2, 16)
ETK_EMU_VEC2(short, short2, 4) ETK_EMU_VEC4(short, short4, 8)
ETK_EMU_VEC2(unsigned short, ushort2, 4) ETK_EMU_VEC4(unsigned short, ushort4, 8)
ETK_EMU_VEC2(unsigned char, uchar2, 2) ETK_EMU_VEC3(unsigned char, uchar3) ETK_EMU_VEC4(unsigned char, uchar4, 4)
ETK_EMU_VEC2(char, char2, 2) ETK_EMU_VEC4(char, char4, 4)

struct dim3 {
    unsigned int x, y, z;
};

// ------------------------------------------------------------------ thread / block indices

#define threadIdx (etk_emu_self->thread_idx)
#define blockIdx etk_emu_block_idx
#define blockDim etk_emu_block_dim
#define gridDim etk_emu_grid_dim
#define warpSize 32

// ------------------------------------------------------------------ integer min / max (CUDA's overloads)

static inline int min(int a, int b) { return a < b ? a : b; }
static inline int max(int a, int b) { return a > b ? a : b; }
static inline unsigned int min(unsigned int a, unsigned int b) { return a < b ? a : b; }
static inline unsigned int max(unsigned int a, unsigned int b) { return a > b ? a : b; }
static inline unsigned int min(int a, unsigned int b) { return min((unsigned int)a, b); }
static inline unsigned int min(unsigned int a, int b) { return min(a, (unsigned int)b); }
static inline unsigned int max(int a, unsigned int b) { return max((unsigned int)a, b); }
static inline unsigned int max(unsigned int a, int b) { return max(a, (unsigned int)b); }
static inline long long min(long long a, long long b) { return a < b ? a : b; }
static inline long long max(long long a, long long b) { return a > b ? a : b; }
static inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
static inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
static inline float min(float a, float b) { return fminf(a, b); }
static inline float max(float a, float b) { return fmaxf(a, b); }
static inline double min(double a, double b) { return fmin(a, b); }
static inline double max(double a, double b) { return fmax(a, b); }

// ------------------------------------------------------------------ bit casts, conversions, math intrinsics

template <typename To, typename From>
static inline To etk_emu_bits(From v) {
    static_assert(sizeof(To) == sizeof(From), "bit cast of different sizes");
    To t;
    std::memcpy(&t, &v, sizeof t);
    return t;
}
static inline unsigned int __float_as_uint(float x) { return etk_emu_bits<unsigned int>(x); }
static inline int __float_as_int(float x) { return etk_emu_bits<int>(x); }
static inline float __uint_as_float(unsigned int x) { return etk_emu_bits<float>(x); }
static inline float __int_as_float(int x) { return etk_emu_bits<float>(x); }
static inline long long __double_as_longlong(double x) { return etk_emu_bits<long long>(x); }
static inline double __longlong_as_double(long long x) { return etk_emu_bits<double>(x); }
// Round to nearest even (the default rounding mode), as cvt.rni.
static inline int __float2int_rn(float x) { return (int)nearbyintf(x); }
static inline int __float2int_rz(float x) { return (int)x; }
static inline int __float2int_rd(float x) { return (int)floorf(x); }
static inline int __float2int_ru(float x) { return (int)ceilf(x); }
static inline unsigned int __float2uint_rn(float x) { return (unsigned int)nearbyintf(x); }
static inline unsigned int __float2uint_rz(float x) { return (unsigned int)x; }
static inline float __int2float_rn(int x) { return (float)x; }
static inline float __uint2float_rn(unsigned int x) { return (float)x; }
static inline int __double2int_rn(double x) { return (int)nearbyint(x); }
static inline float __saturatef(float x) { return x != x ? 0.f : fminf(fmaxf(x, 0.f), 1.f); }
static inline float __fdividef(float a, float b) { return a / b; }
static inline float __fdiv_rn(float a, float b) { return a / b; }
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
static inline float __frcp_rn(float a) { return 1.0f / a; }
static inline float __fsqrt_rn(float a) { return sqrtf(a); }
static inline float rsqrtf(float a) { return 1.0f / sqrtf(a); }
static inline int __popc(unsigned int x) { return __builtin_popcount(x); }
static inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
static inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned int)x); }
static inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll((unsigned long long)x); }
static inline int __ffs(int x) { return __builtin_ffs(x); }
static inline int __ffsll(long long x) { return __builtin_ffsll(x); }
static inline unsigned int __brev(unsigned int x) {
    x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
    x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2);
    x = ((x >> 4) & 0x0F0F0F0Fu) | ((x & 0x0F0F0F0Fu) << 4);
    x = ((x >> 8) & 0x00FF00FFu) | ((x & 0x00FF00FFu) << 8);
    return (x >> 16) | (x << 16);
}
static inline unsigned int __umulhi(unsigned int a, unsigned int b) { return (unsigned int)(((unsigned long long)a * b) >> 32); }
static inline int __mulhi(int a, int b) { return (int)(((long long)a * b) >> 32); }
static inline unsigned int __funnelshift_l(unsigned int lo, unsigned int hi, unsigned int s) {
    s &= 31u; return s ? (hi << s) | (lo >> (32u - s)) : hi;
}
static inline unsigned int __funnelshift_r(unsigned int lo, unsigned int hi, unsigned int s) {
    s &= 31u; return s ? (lo >> s) | (hi << (32u - s)) : lo;
}
template <typename T> static inline T __ldg(const T* p) { return *p; }
template <typename T> static inline T __ldcs(const T* p) { return *p; }
template <typename T> static inline T __ldcg(const T* p) { return *p; }
template <typename T> static inline void __stcs(T* p, T v) { *p = v; }
template <typename T> static inline void __stcg(T* p, T v) { *p = v; }

// ------------------------------------------------------------------ atomics (one OS thread runs every fiber: plain RMW)

template <typename T> static inline T atomicAdd(T* p, T v) { T old = *p; *p = old + v; return old; }
template <typename T> static inline T atomicSub(T* p, T v) { T old = *p; *p = old - v; return old; }
template <typename T> static inline T atomicExch(T* p, T v) { T old = *p; *p = v; return old; }
template <typename T> static inline T atomicMin(T* p, T v) { T old = *p; *p = v < old ? v : old; return old; }
template <typename T> static inline T atomicMax(T* p, T v) { T old = *p; *p = v > old ? v : old; return old; }
template <typename T> static inline T atomicAnd(T* p, T v) { T old = *p; *p = old & v; return old; }
template <typename T> static inline T atomicOr(T* p, T v) { T old = *p; *p = old | v; return old; }
template <typename T> static inline T atomicXor(T* p, T v) { T old = *p; *p = old ^ v; return old; }
template <typename T> static inline T atomicCAS(T* p, T cmp, T v) { T old = *p; if (old == cmp) *p = v; return old; }
static inline unsigned int atomicInc(unsigned int* p, unsigned int lim) { unsigned int o = *p; *p = o >= lim ? 0u : o + 1u; return o; }
static inline unsigned int atomicDec(unsigned int* p, unsigned int lim) { unsigned int o = *p; *p = (o == 0u || o > lim) ? lim : o - 1u; return o; }
#define atomicAdd_block atomicAdd
#define atomicAdd_system atomicAdd
static inline void __threadfence(void) {}
static inline void __threadfence_block(void) {}
static inline void __threadfence_system(void) {}
static inline long long clock64(void) { return 0; }
static inline int clock(void) { return 0; }
static inline void __nanosleep(unsigned int) {}
#define __trap() etk_emu_trap("__trap()", __FILE__, __LINE__)
#define __brkpt() etk_emu_trap("__brkpt()", __FILE__, __LINE__)
#undef assert
#define assert(e) ((e) ? (void)0 : etk_emu_trap("assert(" #e ")", __FILE__, __LINE__))
#define __builtin_assume(e) ((void)0)
#define __assume(e) ((void)0)

// ------------------------------------------------------------------ block barriers

#define __syncthreads() ((void)etk_emu_barrier(ETK_EMU_BAR_SYNC, 1, __FILE__, __LINE__))
#define __syncthreads_count(p) etk_emu_barrier(ETK_EMU_BAR_COUNT, (p) ? 1 : 0, __FILE__, __LINE__)
#define __syncthreads_and(p) etk_emu_barrier(ETK_EMU_BAR_AND, (p) ? 1 : 0, __FILE__, __LINE__)
#define __syncthreads_or(p) etk_emu_barrier(ETK_EMU_BAR_OR, (p) ? 1 : 0, __FILE__, __LINE__)

// ------------------------------------------------------------------ warp collectives

template <typename T>
static inline T etk_emu_shfl(int kind, unsigned int mask, T v, int arg, int width, const char* f, int l) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffle of a type wider than 8 bytes");
    unsigned long long raw = 0;
    std::memcpy(&raw, &v, sizeof(T));
    raw = etk_emu_warp(kind, mask, raw, (int)sizeof(T), arg, width, nullptr, f, l);
    T out;
    std::memcpy(&out, &raw, sizeof(T));
    return out;
}
template <typename T>
static inline unsigned int etk_emu_match(int kind, unsigned int mask, T v, int* pred, const char* f, int l) {
    static_assert(sizeof(T) <= 8, "match of a type wider than 8 bytes");
    unsigned long long raw = 0;
    std::memcpy(&raw, &v, sizeof(T));
    return (unsigned int)etk_emu_warp(kind, mask, raw, (int)sizeof(T), 0, 32, pred, f, l);
}
template <typename T>
static inline T etk_emu_reduce(int kind, unsigned int mask, T v, const char* f, int l) {
    unsigned long long raw = 0;
    std::memcpy(&raw, &v, sizeof(T));
    raw = etk_emu_warp(kind, mask, raw, (int)sizeof(T), 0, 32, nullptr, f, l);
    T out;
    std::memcpy(&out, &raw, sizeof(T));
    return out;
}

template <typename T>
static inline T etk_emu_shfl_at(int kind, unsigned int mask, T v, const char* f, int l, int arg, int width = 32) {
    return etk_emu_shfl(kind, mask, v, arg, width, f, l);
}
#define __shfl_sync(m, v, ...) etk_emu_shfl_at(ETK_EMU_WARP_SHFL, (m), (v), __FILE__, __LINE__, __VA_ARGS__)
#define __shfl_up_sync(m, v, ...) etk_emu_shfl_at(ETK_EMU_WARP_SHFL_UP, (m), (v), __FILE__, __LINE__, __VA_ARGS__)
#define __shfl_down_sync(m, v, ...) etk_emu_shfl_at(ETK_EMU_WARP_SHFL_DOWN, (m), (v), __FILE__, __LINE__, __VA_ARGS__)
#define __shfl_xor_sync(m, v, ...) etk_emu_shfl_at(ETK_EMU_WARP_SHFL_XOR, (m), (v), __FILE__, __LINE__, __VA_ARGS__)
static inline void etk_emu_syncwarp(const char* f, int l, unsigned int mask = 0xffffffffu) {
    (void)etk_emu_warp(ETK_EMU_WARP_SYNC, mask, 0u, 4, 0, 32, nullptr, f, l);
}
#define __ballot_sync(m, p) ((unsigned int)etk_emu_warp(ETK_EMU_WARP_BALLOT, (m), (p) ? 1u : 0u, 4, 0, 32, nullptr, __FILE__, __LINE__))
#define __any_sync(m, p) ((int)etk_emu_warp(ETK_EMU_WARP_ANY, (m), (p) ? 1u : 0u, 4, 0, 32, nullptr, __FILE__, __LINE__))
#define __all_sync(m, p) ((int)etk_emu_warp(ETK_EMU_WARP_ALL, (m), (p) ? 1u : 0u, 4, 0, 32, nullptr, __FILE__, __LINE__))
#define __syncwarp(...) etk_emu_syncwarp(__FILE__, __LINE__, ##__VA_ARGS__)
#define __match_any_sync(m, v) etk_emu_match(ETK_EMU_WARP_MATCH_ANY, (m), (v), nullptr, __FILE__, __LINE__)
#define __match_all_sync(m, v, pred) etk_emu_match(ETK_EMU_WARP_MATCH_ALL, (m), (v), (pred), __FILE__, __LINE__)
#define __reduce_add_sync(m, v) etk_emu_reduce(ETK_EMU_WARP_REDUCE_ADD, (m), (v), __FILE__, __LINE__)
#define __reduce_min_sync(m, v) etk_emu_reduce(std::is_signed<decltype(v)>::value ? ETK_EMU_WARP_REDUCE_MIN_SIGNED : ETK_EMU_WARP_REDUCE_MIN, (m), (v), __FILE__, __LINE__)
#define __reduce_max_sync(m, v) etk_emu_reduce(std::is_signed<decltype(v)>::value ? ETK_EMU_WARP_REDUCE_MAX_SIGNED : ETK_EMU_WARP_REDUCE_MAX, (m), (v), __FILE__, __LINE__)
#define __reduce_and_sync(m, v) etk_emu_reduce(ETK_EMU_WARP_REDUCE_AND, (m), (v), __FILE__, __LINE__)
#define __reduce_or_sync(m, v) etk_emu_reduce(ETK_EMU_WARP_REDUCE_OR, (m), (v), __FILE__, __LINE__)
#define __reduce_xor_sync(m, v) etk_emu_reduce(ETK_EMU_WARP_REDUCE_XOR, (m), (v), __FILE__, __LINE__)
#define __activemask() etk_emu_activemask()
static inline unsigned int __lanemask_lt(void) { return (1u << etk_emu_self->lane) - 1u; }
static inline unsigned int __lanemask_le(void) { return (2u << etk_emu_self->lane) - 1u; }

#endif
