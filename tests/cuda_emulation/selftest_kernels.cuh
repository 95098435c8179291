// Kernels that check the CPU emulation itself (tests/test_cuda_emulated.py): warp collectives,
// barriers, per-block shared memory, dynamic shared memory, __constant__ / __device__ globals,
// and kernels that must fail (deadlock, divergent collective, __trap, a race, out of bounds).
// Plain CUDA: NVRTC compiles it too, and the emulated launch goes through the same path.

__constant__ float emu_coeff[4];
__device__ unsigned int emu_counter;

// One block of 64 threads, 16 outputs each: out[t * 16 + k].
extern "C" __global__ void emu_probe(unsigned int* out)
{
    const unsigned int t = threadIdx.x, lane = t & 31u;
    unsigned int* o = out + t * 16;
    o[0] = __shfl_sync(0xffffffffu, t * 10u, 5);
    o[1] = __shfl_up_sync(0xffffffffu, t, 3);
    o[2] = __shfl_down_sync(0xffffffffu, t, 3);
    o[3] = __shfl_xor_sync(0xffffffffu, t, 1);
    o[4] = __shfl_sync(0xffffffffu, t, lane + 1, 8);  // width 8: lane + 1 wraps inside groups of 8
    o[5] = __ballot_sync(0xffffffffu, (t % 3u) == 0u);
    o[6] = __match_any_sync(0xffffffffu, t % 4u);
    o[7] = (unsigned int)__syncthreads_count((t & 1u) != 0u);
    o[8] = (unsigned int)__syncthreads_and(t < 64u);
    o[9] = (unsigned int)__syncthreads_or(t == 17u);
    o[10] = (unsigned int)__any_sync(0xffffffffu, t == 40u);
    o[11] = (unsigned int)__all_sync(0xffffffffu, t < 64u);
    o[12] = __reduce_add_sync(0xffffffffu, t);
    unsigned int sub = 0u;
    if (lane < 8u) sub = __ballot_sync(0x000000ffu, (lane & 1u) != 0u);  // a masked collective
    o[13] = sub;
    o[14] = lane < 16u ? __match_any_sync(0x0000ffffu, lane / 4u) : 0u;
    o[15] = (unsigned int)__popc(o[5]) + (unsigned int)__ffs(1 << (lane % 31u));
}

// Reads shared memory before writing it: every block must see the poison, never the previous
// block's values. out[block * 2 + {0, 1}] = (what s[tid] held on entry for tid 0, same for tid 63).
extern "C" __global__ void emu_shared_poison(unsigned int* out)
{
    __shared__ unsigned int s[64];
    const unsigned int before = s[threadIdx.x];
    __syncthreads();
    s[threadIdx.x] = blockIdx.x + 1u;
    __syncthreads();
    if (threadIdx.x == 0u) out[blockIdx.x * 2u] = before;
    if (threadIdx.x == 63u) out[blockIdx.x * 2u + 1u] = before;
}

// Dynamic shared memory (launched with 64 * 4 bytes): reversed copy within the block.
extern "C" __global__ void emu_dynamic(const float* in, float* out)
{
    extern __shared__ float dyn[];
    dyn[threadIdx.x] = in[blockIdx.x * blockDim.x + threadIdx.x];
    __syncthreads();
    out[blockIdx.x * blockDim.x + threadIdx.x] = dyn[blockDim.x - 1u - threadIdx.x];
}

// __constant__ and __device__ globals through cuModuleGetGlobal.
extern "C" __global__ void emu_globals(float* out)
{
    out[threadIdx.x] = emu_coeff[threadIdx.x % 4u] * 2.0f;
    atomicAdd(&emu_counter, 1u);
}

// An intra-warp race: each lane reads its neighbour's slot without __syncwarp in between.
// The result depends on the order the lanes run in (on a GPU: on the hardware schedule).
extern "C" __global__ void emu_race(unsigned int* out)
{
    __shared__ unsigned int s[32];
    s[threadIdx.x] = threadIdx.x;
    out[threadIdx.x] = s[(threadIdx.x + 1u) & 31u];
}

// mode 0: half the block waits at one __syncthreads, half at another (divergent barrier);
// mode 1: lanes 0-15 shuffle with the full mask while lanes 16-31 wait at __syncthreads;
// mode 2: lane 0 in __ballot_sync(0x3), lane 1 in __shfl_sync(0x3): a deadlock;
// mode 3: thread 3 traps.
extern "C" __global__ void emu_bad(int mode, unsigned int* out)
{
    const unsigned int t = threadIdx.x;
    if (mode == 0) {
        if (t < 16u) __syncthreads();
        else __syncthreads();
    } else if (mode == 1) {
        if (t < 16u) out[t] = __shfl_sync(0xffffffffu, t, 0);
        else __syncthreads();
    } else if (mode == 2) {
        if (t == 0u) out[0] = __ballot_sync(0x3u, 1);
        else if (t == 1u) out[1] = __shfl_sync(0x3u, t, 0);
    } else if (mode == 3) {
        if (t == 3u) __trap();
    }
}

// Writes one element past the end of `a` (n elements): AddressSanitizer must report it.
extern "C" __global__ void emu_out_of_bounds(float* a, int n)
{
    if (threadIdx.x == 0u) a[n] = 1.0f;
}
