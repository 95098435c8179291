"""The playback rasteriser (plugins/cpu/rasterize.py: blend_fast, blend_u8, exp_neg) against the exact
path it replaces: libm's exp, one pixel at a time (`blend`, which CPU training keeps), the float
image rounded by runtime/pixels.py:to_uint8 over background_to_float's background.
The oracle parity of rasterize_cpu (which uses blend_fast) is tests/test_rasterize.py's."""
from __future__ import annotations

import numpy as np
import pytest
from numba import njit

from embedtalk_sdk.plugins.cpu.rasterize import (
    TILE, bin_tiles, blend, exp_neg, project, rasterize_cpu, rasterize_u8, tiles_one_at_a_time,
)
from embedtalk_sdk.runtime.pixels import background_to_float, to_uint8
from test_rasterize import as_f32, random_scene


@njit(cache=True)
def exp_neg_all(s):
    out = np.empty_like(s)
    for i in range(s.size):
        out[i] = exp_neg(s[i])
    return out


def exact_u8(scene32: list[np.ndarray], background_u8: np.ndarray) -> np.ndarray:
    """The frame as the runtime made it before the SIMD blend: project, bin, `blend` (libm exp),
    then to_uint8 of the image over background / 255."""
    means, quats, scales, opacities, colors, viewmat, K = scene32[:7]
    H, W = background_u8.shape[:2]
    tiles_x, tiles_y = -(-W // TILE), -(-H // TILE)
    mean2d, conic, depth, rect, support = project(means, quats, scales, opacities, viewmat, K, W, H)
    offsets, ids = bin_tiles(depth, rect, tiles_x, tiles_y)
    with tiles_one_at_a_time():
        image, _, _, _ = blend(offsets, ids, mean2d, conic, opacities, colors, support,
                               background_to_float(background_u8), tiles_x)
    return to_uint8(image)


def head_scene(rng: np.random.Generator, n: int, size: int) -> list[np.ndarray]:
    """Gaussians on an ellipsoid shell seen from 0.5 m (benchmarks/make_bench_bundle.py's head):
    deep overlaps, so most pixels end by the early stop."""
    d = rng.normal(size=(n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    means = d * np.array([0.08, 0.11, 0.09]) * rng.uniform(0.85, 1.0, (n, 1))
    viewmat = np.eye(4)
    viewmat[2, 3] = 0.5
    f = 1.2 * size
    K = np.array([[f, 0, size / 2], [0, f, size / 2], [0, 0, 1.0]])
    opac = 1 / (1 + np.exp(-rng.normal(1.0, 1.0, n)))
    return [np.ascontiguousarray(x, np.float32) for x in (
        means, rng.normal(size=(n, 4)), 0.004 * np.exp(rng.normal(0, 0.3, (n, 3))) * 256 / size, opac,
        rng.uniform(0.2, 0.9, (n, 3)), viewmat, K)]


def test_exp_neg_is_as_accurate_as_float32_exp():
    s = np.concatenate([np.linspace(-0.3, 20.0, 400_001), [0.0, 1e-8, np.log(255.0)]]).astype(np.float32)
    got = exp_neg_all(s)
    rel = np.abs(got / np.exp(-s.astype(np.float64)) - 1)
    assert rel.max() <= 1.2e-7  # numpy's float32 exp: 1.8e-7 on this grid
    assert got[-3] == 1.0
    big = exp_neg_all(np.array([25.0, 1e30, np.inf], np.float32))
    assert (big > 0).all() and (big < 3e-9).all()  # capped at exp(-20): alpha far below 1/255


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_u8_is_the_float_path_rounded_bit_for_bit(seed):
    # One pass (blend, composite over x / 255, round) == rasterize_cpu over background_to_float
    # and to_uint8; odd sizes put tiles across the image's edges, and every uint8 value occurs.
    rng = np.random.default_rng(seed)
    scene = random_scene(rng, n=400, H=45, W=53)
    bg = rng.integers(0, 256, (45, 53, 3), dtype=np.uint8)
    bg.reshape(-1)[:256] = np.arange(256)
    args = as_f32(scene)[:-1]
    image, _ = rasterize_cpu(*args, background_to_float(bg))
    out = np.full_like(bg, 7)
    assert rasterize_u8(*args, bg, out=out) is out
    assert np.array_equal(out, to_uint8(image))


@pytest.mark.parametrize("seed", [0, 1])
def test_fast_blend_equals_the_exact_blend(seed):
    # Same pixels as libm's exp one pixel at a time, up to exp's last bits: float images within
    # 2e-6, and on a 20k-Gaussian head (most pixels stop early) uint8 frames equal but for a few.
    rng = np.random.default_rng(10 + seed)
    scene = random_scene(rng, n=2000, H=96, W=112)
    args = as_f32(scene)
    fast, fast_alpha = rasterize_cpu(*args)
    mean2d, conic, depth, rect, support = project(*args[:4], args[5], args[6], 112, 96)
    offsets, ids = bin_tiles(depth, rect, 7, 6)
    with tiles_one_at_a_time():
        exact, exact_alpha, _, _ = blend(offsets, ids, mean2d, conic, args[3], args[4], support, args[7], 7)
    assert np.abs(fast - exact).max() <= 2e-6 and np.abs(fast_alpha - exact_alpha).max() <= 2e-6
    assert (exact_alpha > 0.999).mean() > 0.05  # opaque pixels: early stops happen

    head = head_scene(rng, 20_000, 160)
    bg = rng.integers(0, 256, (160, 160, 3), dtype=np.uint8)
    old, new = exact_u8(head, bg), rasterize_u8(*head, bg)
    diff = np.abs(old.astype(int) - new)
    assert diff.max() <= 1 and (diff > 0).mean() <= 1e-3, (diff.max(), (diff > 0).mean())
    assert (old != bg).mean() > 0.3  # the head covers the frame


def test_bad_background_and_out_are_refused():
    args = as_f32(random_scene(np.random.default_rng(3), n=20, H=16, W=16))[:-1]
    with pytest.raises(ValueError, match="uint8"):
        rasterize_u8(*args, np.zeros((16, 16, 3), np.float32))
    with pytest.raises(ValueError, match="out"):
        rasterize_u8(*args, np.zeros((16, 16, 3), np.uint8), out=np.zeros((16, 15, 3), np.uint8))


def test_stages_are_timed():
    args = as_f32(random_scene(np.random.default_rng(4), n=50, H=20, W=24))[:-1]
    stages: dict[str, float] = {}
    rasterize_u8(*args, np.zeros((20, 24, 3), np.uint8), stages=stages)
    rasterize_u8(*args, np.zeros((20, 24, 3), np.uint8), stages=stages)
    assert set(stages) == {"projection", "binning", "blending"} and all(wall > 0 and cpu >= 0 for wall, cpu in stages.values())


def test_binning_orders_equal_depths_by_index():
    # Step 6: each tile's list in (depth, index) order. Many exact ties (quantised depths) and an
    # unstable sort underneath: the lists must still be the stable order.
    rng = np.random.default_rng(5)
    n = 3000
    depth = np.round(rng.uniform(0.5, 1.5, n), 2)  # ~100 distinct values: long runs of ties
    rect = np.zeros((n, 4), np.int32)
    rect[:, 0] = rng.integers(0, 3, n)
    rect[:, 1] = rect[:, 0] + rng.integers(0, 2, n)
    rect[:, 2] = rng.integers(0, 3, n)
    rect[:, 3] = rect[:, 2] + rng.integers(-1, 2, n)  # some empty (culled)
    offsets, ids = bin_tiles(depth, rect, 4, 4)
    order = np.argsort(depth, kind="stable")
    for t in range(16):
        tx, ty = t % 4, t // 4
        want = [g for g in order if rect[g, 0] <= tx <= rect[g, 1] and rect[g, 2] <= ty <= rect[g, 3]]
        assert ids[offsets[t]:offsets[t + 1]].tolist() == want, f"tile {t}"


def test_profile_splits_a_frame_into_its_stages(tmp_path, monkeypatch):
    from test_runtime import make_test_bundle

    from embedtalk_sdk.runtime.bench import STAGES, format_profile, profile_backend
    from embedtalk_sdk.runtime.frame_pipeline import FramePipeline

    # The stage timers are per frame: frames side by side (speak's way) would add two frames'
    # stages at once, so the profile renders one frame at a time.
    queued, put = [], FramePipeline.put
    monkeypatch.setattr(FramePipeline, "put", lambda self, *args: queued.append(1) or put(self, *args))
    report = profile_backend(make_test_bundle(tmp_path / "t.etk"), n_frames=24, warmup=4)
    assert not queued
    assert report["frames"] >= 24
    wall, cpu = report["stages_ms"], report["stages_cpu_ms"]
    assert set(wall) == set(cpu) == {"audio features", *STAGES, "other"}
    assert all(wall[k] > 0 and cpu[k] > 0 for k in STAGES)
    # the stages and the rest of the loop (with the features as they stream) make up the frame
    assert sum(wall[k] for k in (*STAGES, "other")) == pytest.approx(report["ms_per_frame"], rel=0.02, abs=0.05)
    assert report["track"]["codec"] == "h264" and report["track"]["decode_ms_per_image"] > 0
    assert "| blending + compositing over the track + uint8 |" in format_profile(report)
