"""Rasteriser speed on a head-like scene: numba forward (playback); forward+backward (training) of
the torch reference and of the numba blend with its backward, with their ratio.

    python benchmarks/bench_rasterize.py [--n 5000] [--size 256] [--repeat 10]

The scene: Gaussians on and inside an ellipsoid "head" covering ~40% of the frame, 1-6 px radii,
mostly opaque (like a trained avatar), a random background.
"""
from __future__ import annotations

import argparse
import time

import numpy as np


def head_scene(n: int, size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Arguments of the rasterisers (float32 numpy) for a size x size frame."""
    rng = np.random.default_rng(seed)
    f = 1.2 * size
    # Unit directions, 80% on the surface of an ellipsoid, 20% inside.
    d = rng.normal(size=(n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    shell = np.where(rng.random(n) < 0.8, 1.0, rng.uniform(0.3, 1.0, n))
    means = d * shell[:, None] * np.array([0.27, 0.34, 0.27])  # head ~ 0.54 x 0.68 at distance 1
    viewmat = np.eye(4)
    viewmat[2, 3] = 1.0  # camera 1 unit in front of the head, looking down +z
    # sigma_px = f s / z in 0.15-1.5 px: culling radii 2-6 px after the 0.3 px^2 low-pass
    scales = np.exp(rng.uniform(np.log(0.15), np.log(1.5), (n, 3))) / f
    opac = np.clip(rng.beta(5, 1, n), 0.02, 0.999)
    return dict(
        means=means,
        quats=rng.normal(size=(n, 4)),
        scales=scales,
        opacities=opac,
        colors=rng.uniform(0, 1, (n, 3)),
        viewmat=viewmat,
        K=np.array([[f, 0, size / 2], [0, f, size / 2], [0, 0, 1.0]]),
        background=rng.uniform(0, 1, (size, size, 3)),
    )


ARGS = ("means", "quats", "scales", "opacities", "colors", "viewmat", "K", "background")


def bench_numba(scene: dict, repeat: int) -> float:
    from embedtalk_sdk.plugins.cpu import rasterize_cpu

    args = [np.ascontiguousarray(scene[k], np.float32) for k in ARGS]
    rasterize_cpu(*args)  # JIT warm-up (or cache load)
    t = time.perf_counter()
    for _ in range(repeat):
        rasterize_cpu(*args)
    return (time.perf_counter() - t) / repeat


def bench_autograd(scene: dict, repeat: int, fast: bool) -> tuple[float, float]:
    """(forward, backward) seconds of the torch reference, or with fast=True of the numba blend."""
    import torch

    if fast:
        from embedtalk_sdk.functional.rasterize_cpu import rasterize_cpu_autograd as rasterize
    else:
        from embedtalk_sdk.functional.rasterize import rasterize

    args = [torch.tensor(scene[k], dtype=torch.float32) for k in ARGS]
    for k in (0, 1, 2, 3, 4):
        args[k].requires_grad_(True)
    fwd = bwd = 0.0
    for it in range(repeat + 1):
        t0 = time.perf_counter()
        image, alpha = rasterize(*args)
        t1 = time.perf_counter()
        (image.square().sum() + alpha.sum()).backward()
        t2 = time.perf_counter()
        if it:  # the first is warm-up
            fwd, bwd = fwd + t1 - t0, bwd + t2 - t1
    return fwd / repeat, bwd / repeat


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, nargs="+", default=[5000, 10000])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--skip-torch", action="store_true")
    a = ap.parse_args()
    for n in a.n:
        scene = head_scene(n, a.size)
        t = bench_numba(scene, a.repeat)
        print(f"numba  N={n:6d} {a.size}x{a.size}: {1e3 * t:7.1f} ms/frame  {1 / t:6.1f} fps")
        fwd, bwd = bench_autograd(scene, a.repeat, fast=True)
        print(f"numba+grad N={n:6d}: fwd {1e3 * fwd:6.1f} ms  bwd {1e3 * bwd:6.1f} ms  "
              f"fwd+bwd {1e3 * (fwd + bwd):6.1f} ms")
        if not a.skip_torch:
            fwd_t, bwd_t = bench_autograd(scene, a.repeat, fast=False)
            print(f"torch      N={n:6d}: fwd {1e3 * fwd_t:6.1f} ms  bwd {1e3 * bwd_t:6.1f} ms  "
                  f"fwd+bwd {1e3 * (fwd_t + bwd_t):6.1f} ms  (numba+grad is {(fwd_t + bwd_t) / (fwd + bwd):.1f}x faster)")


if __name__ == "__main__":
    main()
