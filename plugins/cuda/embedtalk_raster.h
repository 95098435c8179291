/* EmbedTalk Gaussian-splat rasteriser: the C ABI of libembedtalk_raster (forward only).
 *
 * The maths is plugins/design.md (steps 1-7); the pipeline and the workspace are described in
 * plugins/cuda/design.md. Everything here is asynchronous on `stream`: no call synchronises,
 * allocates, or copies between host and device. Every array pointer is a DEVICE pointer; float
 * arrays are float32, C-contiguous, in the shapes of docs/interfaces.md ("Rasteriser").
 *
 * Typical use:
 *     size_t ws;  etk_raster_workspace_size(n, width, height, max_pairs, &ws);
 *     cudaMalloc(&workspace, ws);  cudaMalloc(&pair_count, 4);
 *     etk_raster_forward(&args, workspace, ws, stream);
 *     ... later, after the stream has finished (e.g. with the frame copy):
 *     if (*pair_count_host > max_pairs) grow max_pairs and render again (the frame was incomplete).
 */
#ifndef EMBEDTALK_RASTER_H
#define EMBEDTALK_RASTER_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define ETK_RASTER_ABI_VERSION 1

/* Return codes. */
#define ETK_OK 0
#define ETK_ERR_ARGUMENT 1       /* a size or pointer is invalid */
#define ETK_ERR_WORKSPACE 2      /* workspace_bytes is smaller than etk_raster_workspace_size */
#define ETK_ERR_CUDA 3           /* a CUDA call failed: see etk_raster_last_cuda_error() */

typedef struct EtkRasterArgs {
    int32_t n_gaussians;          /* N >= 0 */
    int32_t width, height;        /* image size, > 0 */
    float fx, fy, cx, cy;         /* intrinsics K */
    const float* means;           /* [N,3] canonical centres */
    const float* delta_means;     /* [N,3] or NULL: added to means */
    const float* quats;           /* [N,4] (w,x,y,z), any norm */
    const float* scales;          /* [N,3] activated */
    const float* opacity_logits;  /* [N] */
    const float* delta_opacity;   /* [N] or NULL: added to the logits before the sigmoid */
    const float* colors;          /* [N,3] activated RGB */
    const float* viewmat;         /* [4,4] world-to-camera, OpenCV, row-major (device) */
    const float* background_f32;  /* [H,W,3] in [0,1], or NULL ... */
    const uint8_t* background_u8; /* ... [H,W,3] uint8 (x / 255 in float32); exactly one is set */
    float* image_f32;             /* [H,W,3] out, or NULL */
    float* alpha;                 /* [H,W] out (1 - final transmittance), or NULL */
    uint8_t* image_u8;            /* [H,W,3] out, or NULL: clip, * 255, round half to even */
    uint32_t max_pairs;           /* capacity for (Gaussian, tile) pairs; sizes the workspace */
    uint32_t* pair_count;         /* [1] out (device): pairs this frame needed; > max_pairs: incomplete frame */
} EtkRasterArgs;

/* Bytes of scratch workspace etk_raster_forward needs for these sizes (depends on the current
 * device only through CUB's temporary storage). */
int etk_raster_workspace_size(int32_t n_gaussians, int32_t width, int32_t height, uint32_t max_pairs,
                              size_t* bytes);

/* Draw one frame on `stream` (a cudaStream_t; NULL: the legacy default stream). */
int etk_raster_forward(const EtkRasterArgs* args, void* workspace, size_t workspace_bytes, void* stream);

/* The cudaError_t of the last ETK_ERR_CUDA on this thread, and its name. */
int etk_raster_last_cuda_error(void);
const char* etk_raster_error_string(int code);

int etk_raster_abi_version(void);

#ifdef __cplusplus
}
#endif

#endif /* EMBEDTALK_RASTER_H */
