"""Rasteriser parity: torch reference and numba CPU against a plain per-pixel oracle written here.

The oracle re-derives plugins/design.md steps 1-7 independently (its own quaternion formula, no
tiles, no radius: every Gaussian at every pixel), so a shared mistake is unlikely.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from embedtalk_sdk.functional.rasterize import project, rasterize
from embedtalk_sdk.plugins.cpu import rasterize_cpu


# ---------------------------------------------------------------- scenes
def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random rotation [3,3] (QR of a Gaussian matrix)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q * np.linalg.det(q)


def random_scene(rng: np.random.Generator, n: int, H: int, W: int, behind: float = 0.15) -> dict:
    """A random scene as float64 numpy arrays; ~`behind` of the Gaussians lie behind the camera,
    some near the plane, some with opacity below 1/255, an off-centre principal point."""
    fx, fy = W * rng.uniform(0.9, 1.3), W * rng.uniform(0.9, 1.3)
    cx, cy = W * rng.uniform(0.35, 0.65), H * rng.uniform(0.35, 0.65)
    z = rng.uniform(0.5, 4.0, n)
    z[rng.random(n) < behind] = rng.uniform(-1.0, 0.02, 1)  # behind / at the near plane
    # x/z, y/z reach a little past the image so the Jacobian clamp is exercised.
    x = z * (rng.uniform(-0.2, 1.2, n) * W - cx) / fx
    y = z * (rng.uniform(-0.2, 1.2, n) * H - cy) / fy
    p_cam = np.stack([x, y, z], -1)
    R_v, t_v = random_rotation(rng), rng.normal(size=3)
    viewmat = np.eye(4)
    viewmat[:3, :3], viewmat[:3, 3] = R_v, t_v
    opac = rng.uniform(0.05, 0.99, n)
    opac[rng.random(n) < 0.1] = rng.uniform(0.001, 0.006)  # around the 1/255 cull
    return dict(
        means=(p_cam - t_v) @ R_v,  # R_v^T (p - t)
        quats=rng.normal(size=(n, 4)) * rng.uniform(0.5, 2.0, (n, 1)),
        scales=np.exp(rng.uniform(math.log(0.01), math.log(0.4), (n, 3))),
        opacities=opac,
        colors=rng.uniform(0, 1, (n, 3)),
        viewmat=viewmat,
        K=np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]]),
        background=rng.uniform(0, 1, (H, W, 3)),
    )


ARGS = ("means", "quats", "scales", "opacities", "colors", "viewmat", "K", "background")


def as_torch(scene: dict, dtype=torch.float64) -> list[torch.Tensor]:
    return [torch.tensor(scene[k], dtype=dtype) for k in ARGS]


def as_f32(scene: dict) -> list[np.ndarray]:
    return [np.ascontiguousarray(scene[k], dtype=np.float32) for k in ARGS]


# ---------------------------------------------------------------- the oracle
def oracle_project(s: dict) -> tuple:
    """Steps 1-3 per Gaussian, plainly. -> mean2d [N,2], conic [N,3], z [N], ok [N]."""
    W, H = s["background"].shape[1], s["background"].shape[0]
    (fx, _, cx), (_, fy, cy) = s["K"][0], s["K"][1]
    Rv, tv = s["viewmat"][:3, :3], s["viewmat"][:3, 3]
    n = len(s["means"])
    mean2d, conic, zs, ok = np.zeros((n, 2)), np.zeros((n, 3)), np.zeros(n), np.zeros(n, bool)
    for g in range(n):
        x, y, z = Rv @ s["means"][g] + tv
        zs[g] = z
        if z < 0.01:
            continue
        w, v = s["quats"][g][0], s["quats"][g][1:]
        w, v = w / np.linalg.norm(s["quats"][g]), v / np.linalg.norm(s["quats"][g])
        vx = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
        R = (w * w - v @ v) * np.eye(3) + 2 * np.outer(v, v) + 2 * w * vx
        Sigma = R @ np.diag(s["scales"][g] ** 2) @ R.T
        limx = ((W - cx) / fx + 0.15 * W / fx, cx / fx + 0.15 * W / fx)
        limy = ((H - cy) / fy + 0.15 * H / fy, cy / fy + 0.15 * H / fy)
        tx = z * min(max(x / z, -limx[1]), limx[0])
        ty = z * min(max(y / z, -limy[1]), limy[0])
        J = np.array([[fx / z, 0, -fx * tx / z**2], [0, fy / z, -fy * ty / z**2]])
        cov = J @ Rv @ Sigma @ Rv.T @ J.T + 0.3 * np.eye(2)
        if np.linalg.det(cov) <= 0:
            continue
        inv = np.linalg.inv(cov)
        mean2d[g] = fx * x / z + cx, fy * y / z + cy
        conic[g] = inv[0, 0], inv[0, 1], inv[1, 1]
        ok[g] = True
    return mean2d, conic, zs, ok


def oracle_rasterize(s: dict) -> tuple[np.ndarray, np.ndarray]:
    """Steps 4 and 7 at every pixel over every Gaussian, depth-sorted (no tiles, no radius)."""
    mean2d, conic, z, ok = oracle_project(s)
    order = [g for g in sorted(range(len(z)), key=lambda g: (z[g], g)) if ok[g]]
    H, W = s["background"].shape[:2]
    image, alpha = np.zeros((H, W, 3)), np.zeros((H, W))
    for i in range(H):
        for j in range(W):
            T, C = 1.0, np.zeros(3)
            for g in order:
                dx, dy = j + 0.5 - mean2d[g, 0], i + 0.5 - mean2d[g, 1]
                A, B, Cc = conic[g]
                a = min(0.99, s["opacities"][g] * math.exp(-(0.5 * (A * dx * dx + Cc * dy * dy) + B * dx * dy)))
                if a < 1 / 255:
                    continue
                if T * (1 - a) < 1e-4:
                    break
                C += s["colors"][g] * a * T
                T *= 1 - a
            image[i, j] = C + T * s["background"][i, j]
            alpha[i, j] = 1 - T
    return image, alpha


# ---------------------------------------------------------------- a) oracle parity
@pytest.fixture(scope="module", params=[0, 1, 2])
def small_case(request) -> tuple[dict, tuple]:
    rng = np.random.default_rng(100 + request.param)
    scene = random_scene(rng, n=int(rng.integers(30, 61)), H=32, W=40)
    return scene, oracle_rasterize(scene)


def test_oracle_scene_is_not_trivial(small_case):
    scene, (image, alpha) = small_case
    assert (alpha > 0.5).mean() > 0.05 and (alpha == 0).mean() > 0.05
    z = (scene["means"] @ scene["viewmat"][:3, :3].T + scene["viewmat"][:3, 3])[:, 2]
    assert (z < 0.01).any() and (scene["opacities"] < 1 / 255).any()


def test_torch_matches_oracle_float64(small_case):
    scene, (image, alpha) = small_case
    img, a = rasterize(*as_torch(scene))
    np.testing.assert_allclose(img.numpy(), image, atol=1e-5, rtol=0)
    np.testing.assert_allclose(a.numpy(), alpha, atol=1e-5, rtol=0)


def test_torch_matches_oracle_float32(small_case):
    scene, (image, alpha) = small_case
    img, a = rasterize(*as_torch(scene, torch.float32))
    assert img.dtype == torch.float32
    np.testing.assert_allclose(img.numpy(), image, atol=1e-4, rtol=0)
    np.testing.assert_allclose(a.numpy(), alpha, atol=1e-4, rtol=0)


def test_numba_matches_oracle(small_case):
    scene, (image, alpha) = small_case
    img, a = rasterize_cpu(*as_f32(scene))
    assert img.dtype == np.float32 and img.shape == image.shape and a.shape == alpha.shape
    np.testing.assert_allclose(img, image, atol=1e-4, rtol=0)
    np.testing.assert_allclose(a, alpha, atol=1e-4, rtol=0)
