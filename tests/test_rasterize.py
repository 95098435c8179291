"""Rasteriser parity: torch reference and numba CPU against a plain per-pixel oracle written here.

The oracle re-derives plugins/design.md steps 1-7 independently (its own quaternion formula, no
tiles, no radius: every Gaussian at every pixel), so a shared mistake is unlikely.
"""
from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from embedtalk_sdk.functional.rasterize import project, rasterize, rasterize_projected
from embedtalk_sdk.plugins.cpu import rasterize_cpu


# ---------------------------------------------------------------- scenes
def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random rotation [3,3] (QR of a Gaussian matrix)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q * np.linalg.det(q)


def random_scene(rng: np.random.Generator, n: int, H: int, W: int, behind: float = 0.15) -> dict:
    """A random scene as float64 numpy arrays (n >= 12): ~`behind` of the Gaussians lie behind the
    camera or before the near plane, some have opacity below 1/255, 8 big opaque ones stack near
    the centre, the principal point is off-centre."""
    fx, fy = W * rng.uniform(0.9, 1.3), W * rng.uniform(0.9, 1.3)
    cx, cy = W * rng.uniform(0.35, 0.65), H * rng.uniform(0.35, 0.65)
    z = rng.uniform(0.5, 4.0, n)
    back = rng.random(n) < behind
    z[back] = rng.uniform(-1.0, 0.02, back.sum())
    # Half spread past the image edges (exercises the Jacobian clamp), half in a central blob
    # (deep overlaps: early stops).
    u = np.where(rng.random(n) < 0.5, rng.uniform(-0.2, 1.2, n), rng.uniform(0.3, 0.7, n))
    v = np.where(rng.random(n) < 0.5, rng.uniform(-0.2, 1.2, n), rng.uniform(0.3, 0.7, n))
    opac = rng.uniform(0.05, 0.95, n)
    opaque = rng.random(n) < 0.3
    opac[opaque] = rng.uniform(0.95, 1.0, opaque.sum())  # the 0.99 clamp
    faint = rng.random(n) < 0.1
    opac[faint] = rng.uniform(0.001, 0.006, faint.sum())  # around the 1/255 cull
    scales = np.exp(rng.uniform(math.log(0.01), math.log(0.4), (n, 3)))
    # 0-7: the opaque stack; 8, 9: just under / over 1/255; 10: behind; 11: just before the near plane
    u[:8], v[:8], z[:8] = rng.uniform(0.4, 0.6, 8), rng.uniform(0.4, 0.6, 8), rng.uniform(1, 3, 8)
    opac[:8], scales[:8] = rng.uniform(0.97, 1.0, 8), rng.uniform(0.15, 0.4, (8, 3))
    opac[8:10], z[8:10], u[8:10], v[8:10] = (0.0038, 0.0042), 0.5, 0.5, 0.5
    z[10:12] = -0.5, 0.0099
    x, y = z * (u * W - cx) / fx, z * (v * H - cy) / fy
    p_cam = np.stack([x, y, z], -1)
    R_v, t_v = random_rotation(rng), rng.normal(size=3)
    viewmat = np.eye(4)
    viewmat[:3, :3], viewmat[:3, 3] = R_v, t_v
    return dict(
        means=(p_cam - t_v) @ R_v,  # R_v^T (p - t)
        quats=rng.normal(size=(n, 4)) * rng.uniform(0.5, 2.0, (n, 1)),
        scales=scales,
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


def oracle_rasterize(s: dict, dtype=np.float64) -> tuple[np.ndarray, np.ndarray]:
    """Steps 4 and 7 at every pixel over every Gaussian, depth-sorted (no tiles, no radius).
    alpha and T are rounded to `dtype`, so the thresholds tie-break as in that precision
    (two clamped alphas give T = 0.01 * 0.01, which is < 1e-4 in float32, not in float64)."""
    mean2d, conic, z, ok = oracle_project(s)
    order = [g for g in sorted(range(len(z)), key=lambda g: (z[g], g)) if ok[g]]
    one, a_min, t_min = dtype(1), dtype(1 / 255), dtype(1e-4)
    H, W = s["background"].shape[:2]
    image, alpha = np.zeros((H, W, 3)), np.zeros((H, W))
    for i in range(H):
        for j in range(W):
            T, C = one, np.zeros(3)
            for g in order:
                dx, dy = j + 0.5 - mean2d[g, 0], i + 0.5 - mean2d[g, 1]
                A, B, Cc = conic[g]
                sigma = 0.5 * (A * dx * dx + Cc * dy * dy) + B * dx * dy
                a = dtype(min(0.99, s["opacities"][g] * math.exp(-sigma)))
                if a < a_min:
                    continue
                if T * (one - a) < t_min:
                    break
                C += s["colors"][g] * float(a * T)
                T = T * (one - a)
            image[i, j] = C + float(T) * s["background"][i, j]
            alpha[i, j] = 1 - float(T)
    return image, alpha


def dense_rasterize(s: dict, dtype=np.float64) -> tuple[np.ndarray, np.ndarray]:
    """oracle_rasterize vectorised over pixels (the loop runs over Gaussians): for bigger scenes."""
    mean2d, conic, z, ok = oracle_project(s)
    order = [g for g in sorted(range(len(z)), key=lambda g: (z[g], g)) if ok[g]]
    H, W = s["background"].shape[:2]
    jj, ii = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
    T, C, live = np.ones((H, W), dtype), np.zeros((H, W, 3)), np.ones((H, W), bool)
    for g in order:
        dx, dy = jj - mean2d[g, 0], ii - mean2d[g, 1]
        A, B, Cc = conic[g]
        a = np.minimum(0.99, s["opacities"][g] * np.exp(-(0.5 * (A * dx * dx + Cc * dy * dy) + B * dx * dy)))
        a = a.astype(dtype)
        T_next = T * (dtype(1) - a)
        live &= ~((a >= dtype(1 / 255)) & (T_next < dtype(1e-4)))  # the break
        add = live & (a >= dtype(1 / 255))
        C += np.where(add, a * T, 0)[..., None] * s["colors"][g]
        T = np.where(add, T_next, T)
    return C + T[..., None] * s["background"], 1 - T.astype(np.float64)


# ---------------------------------------------------------------- a) oracle parity
@pytest.fixture(scope="module", params=[0, 1, 2])
def small_case(request) -> tuple[dict, tuple, tuple]:
    """A random 32x40 scene and the oracle's image, alpha in float64 and in float32."""
    rng = np.random.default_rng(100 + request.param)
    scene = random_scene(rng, n=int(rng.integers(30, 61)), H=32, W=40)
    return scene, oracle_rasterize(scene), oracle_rasterize(scene, np.float32)


def test_oracle_scene_is_not_trivial(small_case):
    scene, (image, alpha), _ = small_case
    assert (alpha > 0.999).mean() > 0.05 and (alpha < 0.5).mean() > 0.02
    z = (scene["means"] @ scene["viewmat"][:3, :3].T + scene["viewmat"][:3, 3])[:, 2]
    assert (z < 0.01).any() and (scene["opacities"] < 1 / 255).any()


def test_torch_matches_oracle_float64(small_case):
    scene, (image, alpha), _ = small_case
    img, a = rasterize(*as_torch(scene))
    assert img.dtype == torch.float64 and img.shape == image.shape and a.shape == alpha.shape
    np.testing.assert_allclose(img.numpy(), image, atol=1e-5, rtol=0)
    np.testing.assert_allclose(a.numpy(), alpha, atol=1e-5, rtol=0)


def test_torch_matches_oracle_float32(small_case):
    scene, _, (image, alpha) = small_case
    img, a = rasterize(*as_torch(scene, torch.float32))
    assert img.dtype == torch.float32
    np.testing.assert_allclose(img.numpy(), image, atol=1e-4, rtol=0)
    np.testing.assert_allclose(a.numpy(), alpha, atol=1e-4, rtol=0)


def test_numba_matches_oracle(small_case):
    scene, _, (image, alpha) = small_case
    img, a = rasterize_cpu(*as_f32(scene))
    assert img.dtype == np.float32 and img.shape == image.shape and a.shape == alpha.shape
    np.testing.assert_allclose(img, image, atol=1e-4, rtol=0)
    np.testing.assert_allclose(a, alpha, atol=1e-4, rtol=0)


def test_tile_size_does_not_change_the_image(small_case):
    scene, (image, _), _ = small_case
    args = as_torch(scene)
    H, W = image.shape[:2]
    proj = project(*args[:4], args[5], args[6], W, H)
    for tile_size in (1, 5, 16, 64):
        img, _ = rasterize_projected(proj, args[3], args[4], args[7], tile_size=tile_size,
                                     max_block_elements=4096)
        np.testing.assert_allclose(img.numpy(), image, atol=1e-5, rtol=0)


def test_radius_bounds_the_support():
    """Step 5: every pixel with alpha >= 1/255 lies within `radius` of mean2d, and not far inside."""
    rng = np.random.default_rng(7)
    scene = random_scene(rng, n=200, H=64, W=80, behind=0.0)
    args = as_torch(scene)
    proj = project(*args[:4], args[5], args[6], 80, 64)
    g = torch.nonzero(proj.valid & (proj.radius < 30)).squeeze(1)
    # pixel centres within 40 px of each mean, [G,P,2]
    off = torch.stack(torch.meshgrid(torch.arange(-40, 41.0), torch.arange(-40, 41.0), indexing="ij"), -1)
    centres = torch.floor(proj.mean2d[g])[:, None, :] + off.reshape(1, -1, 2) + 0.5
    d = centres - proj.mean2d[g][:, None, :]
    A, B, C = proj.conic[g].unbind(-1)
    sigma = 0.5 * (A[:, None] * d[..., 0] ** 2 + C[:, None] * d[..., 1] ** 2) + B[:, None] * d[..., 0] * d[..., 1]
    hit = args[3][g][:, None] * torch.exp(-sigma) >= 1 / 255
    reach = torch.where(hit, d.norm(dim=-1), 0.0).amax(-1)  # [G]
    assert len(g) > 50 and hit.any(-1).all()
    assert (reach <= proj.radius[g]).all()
    assert (reach > proj.radius[g] - 2).all()  # tight


def test_supports_crossing_tile_edges_are_kept():
    """Many mid-sized anisotropic Gaussians at sub-pixel positions all over a 64x80 frame: every
    tile edge is crossed by some support's faint rim, so an under-estimated radius shows."""
    rng = np.random.default_rng(21)
    n, H, W = 400, 64, 80
    scene = random_scene(rng, n, H, W, behind=0.0)
    f = scene["K"][0, 0]
    z = rng.uniform(1, 3, n)
    u, v = rng.uniform(0, W, n), rng.uniform(0, H, n)
    p_cam = np.stack([z * (u - scene["K"][0, 2]) / f, z * (v - scene["K"][1, 2]) / scene["K"][1, 1], z], -1)
    R_v, t_v = scene["viewmat"][:3, :3], scene["viewmat"][:3, 3]
    scene["means"] = (p_cam - t_v) @ R_v
    scene["scales"] = rng.uniform(0.3, 4.0, (n, 3)) * z[:, None] / f  # 0.3-4 px
    scene["opacities"] = rng.uniform(0.02, 0.5, n)  # faint: long rims, few early stops
    image64, _ = dense_rasterize(scene)
    image32, _ = dense_rasterize(scene, np.float32)
    np.testing.assert_allclose(rasterize(*as_torch(scene))[0].numpy(), image64, atol=1e-5, rtol=0)
    np.testing.assert_allclose(rasterize(*as_torch(scene, torch.float32))[0].numpy(), image32, atol=1e-4, rtol=0)
    np.testing.assert_allclose(rasterize_cpu(*as_f32(scene))[0], image32, atol=1e-4, rtol=0)


def test_dense_oracle_is_the_oracle(small_case):
    scene, (image, alpha), _ = small_case
    img, a = dense_rasterize(scene)
    np.testing.assert_allclose(img, image, atol=1e-12)
    np.testing.assert_allclose(a, alpha, atol=1e-12)


# ---------------------------------------------------------------- b) torch vs numba, bigger
def test_numba_matches_torch_on_a_bigger_scene():
    rng = np.random.default_rng(11)
    scene = random_scene(rng, n=2000, H=96, W=128)
    img_t, a_t = rasterize(*as_torch(scene, torch.float32))
    img_n, a_n = rasterize_cpu(*as_f32(scene))
    assert (a_n > 0.5).mean() > 0.3
    np.testing.assert_allclose(img_n, img_t.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(a_n, a_t.numpy(), atol=1e-4, rtol=0)



def test_a_crop_from_the_gaussians_touching_it_is_the_crop_from_all():
    from embedtalk_sdk.train.render import crop_intrinsics, gaussians_touching

    scene = random_scene(np.random.default_rng(12), n=2000, H=96, W=128)
    means, quats, scales, opac, colors, viewmat, K, bg = as_torch(scene)
    x0, y0, x1, y1 = 50, 30, 90, 62
    Kc, bgc = crop_intrinsics(K, x0, y0), bg[y0:y1, x0:x1]
    ids = gaussians_touching(means, quats, scales, opac, viewmat, Kc, x1 - x0, y1 - y0)
    assert 50 < len(ids) < 1500  # a real subset, not all nor none
    img_all, a_all = rasterize(means, quats, scales, opac, colors, viewmat, Kc, bgc)
    img_sub, a_sub = rasterize(means[ids], quats[ids], scales[ids], opac[ids], colors[ids], viewmat, Kc, bgc)
    np.testing.assert_allclose(img_sub.numpy(), img_all.numpy(), atol=1e-12, rtol=0)
    np.testing.assert_allclose(a_sub.numpy(), a_all.numpy(), atol=1e-12, rtol=0)
    full, _ = rasterize(means, quats, scales, opac, colors, viewmat, K, bg)
    assert np.abs(img_all.numpy() - full[y0:y1, x0:x1].numpy()).mean() < 1e-3  # same pixels, clamp aside

# ---------------------------------------------------------------- c) gradients
def test_gradients_match_central_differences():
    """d/dx of a random linear functional of (image, alpha), autograd vs central differences,
    float64, every element of means, quats, scales, opacities, colors; 24 of background."""
    rng = np.random.default_rng(3)
    n, H, W = 4, 10, 12
    p_cam = np.stack([rng.uniform(-0.2, 0.2, n), rng.uniform(-0.2, 0.2, n), rng.uniform(1, 2, n)], -1)
    f = 20.0
    K = torch.tensor([[f, 0, 6.3], [0, f * 1.1, 4.8], [0, 0, 1]], dtype=torch.float64)
    R_v = torch.tensor(random_rotation(rng))
    viewmat = torch.eye(4, dtype=torch.float64)
    viewmat[:3, :3], viewmat[:3, 3] = R_v, torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64)
    inputs = [
        (torch.tensor(p_cam) - viewmat[:3, 3]) @ R_v,  # world points that land at p_cam
        torch.tensor(rng.normal(size=(n, 4))),
        torch.tensor(rng.uniform(0.03, 0.1, (n, 3))),
        torch.tensor(rng.uniform(0.3, 0.7, n)),
        torch.tensor(rng.uniform(0, 1, (n, 3))),
        torch.tensor(rng.uniform(0, 1, (H, W, 3))),
    ]
    w_img, w_alpha = torch.tensor(rng.normal(size=(H, W, 3))), torch.tensor(rng.normal(size=(H, W)))

    def loss(xs: list[torch.Tensor]) -> torch.Tensor:
        image, alpha = rasterize(*xs[:5], viewmat, K, xs[5])
        return (image * w_img).sum() + (alpha * w_alpha).sum()

    xs = [x.clone().requires_grad_(True) for x in inputs]
    alpha = rasterize(*xs[:5], viewmat, K, xs[5])[1]
    assert alpha.max() > 0.5 and (alpha > 0.05).double().mean() > 0.3  # the Gaussians are seen
    grads = torch.autograd.grad(loss(xs), xs)
    eps = 1e-6
    for k, (x, grad) in enumerate(zip(inputs, grads)):
        numeric, analytic = [], grad.flatten()
        elements = rng.choice(x.numel(), min(x.numel(), 24), replace=False)  # background: a sample
        for e in elements:
            plus, minus = x.clone().flatten(), x.clone().flatten()
            plus[e] += eps
            minus[e] -= eps
            lp = loss(inputs[:k] + [plus.reshape(x.shape)] + inputs[k + 1:])
            lm = loss(inputs[:k] + [minus.reshape(x.shape)] + inputs[k + 1:])
            numeric.append((lp - lm) / (2 * eps))
        assert grad.abs().max() > 1e-3, k
        torch.testing.assert_close(analytic[elements], torch.stack(numeric), atol=1e-6, rtol=1e-5,
                                   msg=f"input {k}")


def test_gradients_are_finite_and_zero_for_culled():
    rng = np.random.default_rng(5)
    scene = random_scene(rng, n=300, H=48, W=64, behind=0.3)
    args = as_torch(scene, torch.float32)
    for k in (0, 1, 2, 3, 4, 7):
        args[k].requires_grad_(True)
    image, alpha = rasterize(*args)
    (image.square().sum() + alpha.sum()).backward()
    z = (args[0] @ args[5][:3, :3].T + args[5][:3, 3])[:, 2].detach()
    culled = (z < 0.01) | (args[3].detach() < 1 / 255)
    assert culled.sum() > 10
    for k in (0, 1, 2, 3, 4, 7):
        assert torch.isfinite(args[k].grad).all(), ARGS[k]
    for k in (0, 1, 2, 3, 4):
        assert (args[k].grad[culled] == 0).all(), ARGS[k]
        assert (args[k].grad[~culled].abs().sum(-1) > 0).float().mean() > 0.3, ARGS[k]


# ---------------------------------------------------------------- d) blending rules
def stack_scene(opacities: list[float], depths: list[float], colors: list[list[float]]) -> dict:
    """Isotropic Gaussians straight ahead, all centred on pixel (8, 8) of a 16x17 frame."""
    n = len(opacities)
    return dict(
        means=np.array([[0.0, 0.0, d] for d in depths]),
        quats=np.tile([1.0, 0, 0, 0], (n, 1)),
        scales=np.full((n, 3), 0.05),
        opacities=np.array(opacities),
        colors=np.array(colors),
        viewmat=np.eye(4),
        K=np.array([[50.0, 0, 8.5], [0, 50.0, 8.5], [0, 0, 1]]),  # centre (8.5, 8.5): pixel (8, 8)
        background=np.full((16, 17, 3), 0.5),
    )


def all_implementations(scene: dict):
    """(name, image, alpha) for torch float64, torch float32, numba."""
    for name, dtype in (("torch64", torch.float64), ("torch32", torch.float32)):
        img, a = rasterize(*as_torch(scene, dtype))
        yield name, img.double().numpy(), a.double().numpy()
    img, a = rasterize_cpu(*as_f32(scene))
    yield "numba", img.astype(np.float64), a.astype(np.float64)


def test_early_stop_is_a_break_and_depth_orders():
    """Index order is not depth order; depths 1 and 1 tie (lower index first). With alpha 0.95 at
    the centre, T runs 0.05, 0.0025, 1.25e-4; the 4th would take T below 1e-4, so blending stops
    there: neither the 4th nor the faint 5th (which alone would keep T >= 1e-4) is added."""
    red, green, blue, big = [1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [0, 0, 1000.0]
    scene = stack_scene(
        opacities=[0.95, 0.95, 0.05, 0.95, 0.95],
        depths=[1.0, 2.0, 4.0, 1.0, 3.0],
        colors=[red, blue, [1000.0, 0, 0], green, big],
    )  # depth order: 0 (red), 3 (green), 1 (blue), 4 (stop), 2 (after the stop)
    w = [0.95, 0.95 * 0.05, 0.95 * 0.05**2]
    T = 0.05**3
    expected = w[0] * np.array(red) + w[1] * np.array(green) + w[2] * np.array(blue) + T * 0.5
    for name, img, a in all_implementations(scene):
        np.testing.assert_allclose(img[8, 8], expected, atol=1e-5, err_msg=name)
        np.testing.assert_allclose(a[8, 8], 1 - T, atol=1e-6, err_msg=name)
        assert 1e-4 <= 1 - a.max() and (a >= 0).all(), name  # T never drops below the stop


def test_saturated_pair_float32_tie():
    """Two alphas clamped at 0.99: T would be 0.01 * 0.01, just below 1e-4 in float32 and just
    above in float64. Every float32 implementation must stop (design.md, numerics)."""
    scene = stack_scene([0.999, 0.999], [1.0, 2.0], [[1.0, 0, 0], [0, 1.0, 0]])
    for name, img, a in all_implementations(scene):
        if name == "torch64":
            np.testing.assert_allclose(img[8, 8], np.array([0.99, 0.0099, 0]) + 1e-4 * 0.5, atol=1e-9)
        else:
            np.testing.assert_allclose(img[8, 8], [0.99 + 0.005, 0.005, 0.005], atol=1e-6, err_msg=name)
            assert a[8, 8] == pytest.approx(0.99, abs=1e-6), name


def test_skip_below_threshold_and_alpha_only_from_gaussians():
    """A Gaussian with alpha < 1/255 everywhere changes nothing; empty pixels are background."""
    bg_only = stack_scene([0.5], [1.0], [[1.0, 1, 1]])
    faint = stack_scene([0.5, 0.0039], [1.0, 0.5], [[1.0, 1, 1], [1000.0, 0, 0]])
    for (name, img0, a0), (_, img1, a1) in zip(all_implementations(bg_only), all_implementations(faint)):
        np.testing.assert_array_equal(img0, img1, err_msg=name)
        np.testing.assert_array_equal(a0, a1, err_msg=name)
        assert a0[0, 0] == 0 and (img0[0, 0] == 0.5).all(), name


# ---------------------------------------------------------------- edges and packaging
def test_empty_and_all_culled_scenes_return_the_background():
    rng = np.random.default_rng(9)
    scene = random_scene(rng, n=20, H=20, W=30)
    scene["means"][:, :] = scene["viewmat"][:3, :3].T @ -scene["viewmat"][:3, 3]  # camera centre
    empty = {k: (v[:0] if k in ARGS[:5] else v) for k, v in scene.items()}
    for s in (scene, empty):
        img, a = rasterize(*as_torch(s))
        np.testing.assert_array_equal(img.numpy(), s["background"])
        assert (a == 0).all()
        img, a = rasterize_cpu(*as_f32(s))
        np.testing.assert_array_equal(img, s["background"].astype(np.float32))
        assert (a == 0).all()


def test_nan_gaussians_are_culled():
    """A zero quaternion or a NaN mean culls that Gaussian (NaN fails every `>=` test)."""
    rng = np.random.default_rng(12)
    scene = random_scene(rng, n=40, H=24, W=32)
    broken = {k: v.copy() for k, v in scene.items()}
    broken["quats"][13], broken["means"][14] = 0.0, np.nan
    dropped = {k: (np.delete(v, [13, 14], axis=0) if k in ARGS[:5] else v) for k, v in scene.items()}
    for s in (broken, dropped):
        s["image_t"] = rasterize(*as_torch(s))[0].numpy()
        s["image_n"] = rasterize_cpu(*as_f32(s))[0]
    np.testing.assert_array_equal(broken["image_t"], dropped["image_t"])
    np.testing.assert_array_equal(broken["image_n"], dropped["image_n"])


def test_numba_converts_inputs():
    """float64 and non-contiguous inputs are accepted; output is float32."""
    rng = np.random.default_rng(4)
    scene = random_scene(rng, n=50, H=24, W=20)
    ref, _ = rasterize_cpu(*as_f32(scene))
    fortran = {k: np.asfortranarray(v) for k, v in scene.items()}
    img, a = rasterize_cpu(*[fortran[k] for k in ARGS])
    assert img.dtype == np.float32 and a.dtype == np.float32
    np.testing.assert_array_equal(img, ref)
    with pytest.raises(ValueError):
        rasterize_cpu(*[scene[k] if k != "quats" else scene[k][:, :3] for k in ARGS])


def test_cpu_plugin_does_not_import_torch():
    code = "import sys, embedtalk_sdk.plugins.cpu as m; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_culling_radius_has_no_cancellation_for_near_isotropic_footprints():
    # Before: mid*mid - det in float32 cancelled for large, near-isotropic footprints (lambda_max too
    # low, radius a pixel short, a tile missed). The float32 radius must match float64's.
    from embedtalk_sdk.functional.rasterize import culling_radius

    rng = np.random.default_rng(0)
    a = rng.uniform(1e3, 5e4, 4000)
    c = a * (1 + rng.uniform(-1e-4, 1e-4, a.size))
    b = rng.uniform(-5, 5, a.size)
    o = rng.uniform(0.05, 1.0, a.size)
    cov = np.stack([np.stack([a, b], -1), np.stack([b, c], -1)], -2)

    def radius(dtype):
        cov_t = torch.as_tensor(cov, dtype=dtype)
        det = cov_t[:, 0, 0] * cov_t[:, 1, 1] - cov_t[:, 0, 1] ** 2
        return culling_radius(cov_t, det, torch.as_tensor(o, dtype=dtype))

    exact = radius(torch.float64)
    assert (radius(torch.float32) >= exact).all()
