"""The CPU training rasteriser (torch projection + numba blend with its own backward) against the
torch reference's autograd, which test_rasterize.py checks against central differences."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from embedtalk_sdk.functional.rasterize import rasterize
from embedtalk_sdk.functional.rasterize_cpu import rasterize_cpu_autograd
from test_rasterize import ARGS, as_torch, random_scene, stack_scene

DIFFERENTIABLE = (0, 1, 2, 3, 4, 7)  # means, quats, scales, opacities, colors, background


def image_and_grads(fn, scene: dict, seed: int) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Image, alpha and the gradients of a random linear functional of both, float32."""
    args = as_torch(scene, torch.float32)
    for k in DIFFERENTIABLE:
        args[k].requires_grad_(True)
    image, alpha = fn(*args)
    rng = np.random.default_rng(seed)
    w_img = torch.tensor(rng.normal(size=image.shape), dtype=torch.float32)
    w_alpha = torch.tensor(rng.normal(size=alpha.shape), dtype=torch.float32)
    ((image * w_img).sum() + (alpha * w_alpha).sum()).backward()
    return image.detach().numpy(), alpha.detach().numpy(), [args[k].grad.numpy() for k in DIFFERENTIABLE]


def assert_same(scene: dict, seed: int = 0) -> None:
    img_r, a_r, grads_r = image_and_grads(rasterize, scene, seed)
    img_n, a_n, grads_n = image_and_grads(rasterize_cpu_autograd, scene, seed)
    np.testing.assert_allclose(img_n, img_r, atol=1e-5, rtol=0)
    np.testing.assert_allclose(a_n, a_r, atol=1e-5, rtol=0)
    for k, g_r, g_n in zip(DIFFERENTIABLE, grads_r, grads_n):
        scale = np.abs(g_r).max()
        assert scale > 0, ARGS[k]
        np.testing.assert_allclose(g_n, g_r, atol=1e-4 * scale, rtol=0, err_msg=ARGS[k])


@pytest.mark.parametrize("seed,n,H,W", [(5, 300, 48, 64), (11, 2000, 96, 128), (23, 800, 37, 50)])
def test_gradients_match_the_reference_on_random_scenes(seed, n, H, W):
    """Culled, faint, clamped and stacked Gaussians; 37x50 has partial tiles."""
    assert_same(random_scene(np.random.default_rng(seed), n=n, H=H, W=W), seed)


def test_gradients_through_the_early_stop_and_the_clamp():
    """The stack of test_rasterize's early-stop test: the 4th Gaussian stops the pixel, the 5th lies
    behind the stop, opacities 0.999 are clamped at 0.99 in the middle."""
    scene = stack_scene(
        opacities=[0.95, 0.999, 0.05, 0.95, 0.95],
        depths=[1.0, 2.0, 4.0, 1.0, 3.0],
        colors=[[1.0, 0, 0], [0, 0, 1.0], [0.5, 0.5, 0], [0, 1.0, 0], [0.2, 0.3, 0.4]],
    )
    scene["scales"] = scene["scales"] * [1.0, 0.6, 0.8]  # anisotropic, so rotations matter
    scene["quats"] = scene["quats"] + [0, 0.1, 0.2, 0.3]
    assert_same(scene)


def test_culled_gaussians_get_zero_gradient_and_empty_scenes_work():
    scene = random_scene(np.random.default_rng(7), n=200, H=32, W=40, behind=0.4)
    _, _, grads = image_and_grads(rasterize_cpu_autograd, scene, 0)
    viewmat = scene["viewmat"]
    z = (scene["means"] @ viewmat[:3, :3].T + viewmat[:3, 3])[:, 2]
    culled = (z < 0.01) | (scene["opacities"] < 1 / 255)
    assert culled.sum() > 10
    for g in grads[:5]:
        assert np.isfinite(g).all() and (g[culled] == 0).all()
    empty = {k: (v[:0] if k in ARGS[:5] else v) for k, v in scene.items()}
    img, a, grads = image_and_grads(rasterize_cpu_autograd, empty, 0)
    np.testing.assert_array_equal(img, empty["background"].astype(np.float32))
    assert (a == 0).all() and grads[0].shape == (0, 3)


def test_screen_space_gradient_for_densification():
    """Densification reads dL/dmean2d through retain_grad on the projection; both rasterisers agree."""
    from embedtalk_sdk.functional.rasterize import project, rasterize_projected
    from embedtalk_sdk.functional.rasterize_cpu import rasterize_projected_cpu

    scene = random_scene(np.random.default_rng(3), n=400, H=40, W=48)
    out = []
    for blend in (rasterize_projected, rasterize_projected_cpu):
        args = as_torch(scene, torch.float32)
        args[0].requires_grad_(True)
        proj = project(*args[:4], args[5], args[6], 48, 40)
        proj.mean2d.retain_grad()
        image, _ = blend(proj, args[3], args[4], args[7])
        image.square().sum().backward()
        out.append(proj.mean2d.grad.numpy())
    np.testing.assert_allclose(out[1], out[0], atol=1e-4 * np.abs(out[0]).max(), rtol=0)


def test_grad_plugin_does_not_import_torch():
    code = ("import sys, embedtalk_sdk.plugins.cpu.rasterize_grad as m; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_rasterizer_choice():
    from embedtalk_sdk.train.render import pick_rasterizer

    cpu = torch.device("cpu")
    assert pick_rasterizer("auto", cpu) == "numba" and pick_rasterizer("torch", cpu) == "torch"
    with pytest.raises(ValueError, match="choose one of"):
        pick_rasterizer("cuda-magic", cpu)
    with pytest.raises(ValueError, match="gsplat"):
        pick_rasterizer("gsplat", cpu)
    with pytest.raises(ValueError, match="CPU"):
        pick_rasterizer("numba", torch.device("meta"))
