"""The compiled playback rasteriser (plugins/cpu/splat.cpp, through plugins/cpu/playback.py) against
numba's (plugins/cpu/rasterize.py:rasterize_u8, itself held to the oracle by test_cpu_fast.py and
test_rasterize.py): the same frames bit for bit, in its AVX-512, AVX2 and scalar blends; and a played
avatar's first frame needs no numba at all (the cold start of runtime/design.md)."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from embedtalk_sdk.plugins.cpu import playback, rasterize
from test_cpu_fast import head_scene
from test_rasterize import as_f32, random_scene

needs_compiled = pytest.mark.skipif(
    not playback.COMPILED, reason="the install did not build plugins/cpu/splat.cpp (no C++ compiler?)")

# (n, H, W): frames that are not whole tiles, one tile, a crowded 16x16, a big frame
SIZES = [(200, 40, 56), (3000, 128, 96), (50, 16, 16), (400, 16, 16), (8000, 250, 170)]


def test_the_install_built_the_compiled_rasteriser_from_this_source():
    # pip install builds it wherever g++ (or clang, MSVC) and Python's headers are: CI must have it
    assert playback.COMPILED, "plugins/cpu/splat.cpp was not built: install g++ and reinstall (pip install -e .)"
    source = Path(__file__).resolve().parents[1] / "plugins" / "cpu" / "splat.cpp"
    assert playback.splat_ext.source_sha256() == hashlib.sha256(source.read_bytes()).hexdigest(), (
        "the compiled rasteriser is stale (built from another splat.cpp): rebuild it with pip install -e .")


def scenes():
    for seed in range(4):
        for n, H, W in SIZES:
            rng = np.random.default_rng(seed)
            args = as_f32(random_scene(rng, n=n, H=H, W=W))[:-1]
            yield args, rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    for size in (64, 256):
        rng = np.random.default_rng(size)
        yield head_scene(rng, 6000, size), rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    # enough drawn Gaussians (> 8192) that binning splits the depth order into one run per thread
    rng = np.random.default_rng(12)
    yield head_scene(rng, 20000, 128), rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)
    # needles: long thin opaque Gaussians at every angle, whose supports cross many 8-column bands
    # at a slant (the compiled blend leaves out the rows of a band that the support misses)
    for seed in (21, 22):
        rng = np.random.default_rng(seed)
        args = as_f32(random_scene(rng, n=700, H=90, W=120))[:-1]
        n = args[0].shape[0]
        args[2] = np.stack([rng.uniform(0.1, 0.5, n), rng.uniform(0.002, 0.01, n),
                            rng.uniform(0.002, 0.01, n)], -1).astype(np.float32)
        args[3] = rng.uniform(0.6, 1.0, n).astype(np.float32)
        yield args, rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)
    # every Gaussian three times, in other colours and opacities: equal depths, so the order of a
    # tile's list (depth, then index) decides the pixels
    rng = np.random.default_rng(9)
    means, quats, scales, opacities, colors, viewmat, K = head_scene(rng, 1500, 96)
    same = [np.concatenate([x] * 3) for x in (means, quats, scales)]
    other = [rng.uniform(0.3, 0.95, 4500).astype(np.float32), rng.uniform(0, 1, (4500, 3)).astype(np.float32)]
    yield [*same, *other, viewmat, K], rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)


@needs_compiled
def test_compiled_frames_equal_numbas_bit_for_bit():
    for args, bg in scenes():
        want = rasterize.rasterize_u8(*args, bg)
        got = playback.rasterize_u8(*args, bg)
        assert got.dtype == np.uint8 and got.shape == want.shape
        assert np.array_equal(got, want), f"{int((got != want).sum())} values differ, {bg.shape}"


@needs_compiled
@pytest.mark.parametrize("cap, simd", [("0", "scalar"), ("avx2", "avx2")])
def test_narrower_blends_equal_numbas_bit_for_bit(tmp_path, cap, simd):
    # the paths of CPUs without AVX-512 (AVX2) or without AVX2 (scalar), chosen at import: a fresh process
    if simd == "avx2" and playback.splat_ext.simd() == "scalar":
        pytest.skip("this CPU has no AVX2")
    cases = list(scenes())[::3] + list(scenes())[-2:]
    np.savez(tmp_path / "cases.npz", **{f"{i}_{k}": a for i, (args, bg) in enumerate(cases)
                                        for k, a in enumerate([*args, bg])})
    code = ("import sys, numpy as np\n"
            "from embedtalk_sdk.plugins.cpu import splat_ext, playback\n"
            f"assert splat_ext.simd() == {simd!r}, splat_ext.simd()\n"
            "z = np.load(sys.argv[1])\n"
            f"for i in range({len(cases)}):\n"
            "    a = [z[f'{i}_{k}'] for k in range(8)]\n"
            "    np.save(f'{sys.argv[2]}/{i}.npy', playback.rasterize_u8(*a))\n")
    env = {**os.environ, "EMBEDTALK_CPU_SIMD": cap}
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "cases.npz"), str(tmp_path)], env=env, check=True)
    for i, (args, bg) in enumerate(cases):
        assert np.array_equal(np.load(tmp_path / f"{i}.npy"), rasterize.rasterize_u8(*args, bg)), f"case {i}"


@needs_compiled
def test_compiled_checks_its_inputs_and_writes_into_out():
    args, bg = next(scenes())
    out = np.zeros_like(bg)
    assert playback.rasterize_u8(*args, bg, out=out) is out
    with pytest.raises(ValueError, match="background"):
        playback.rasterize_u8(*args, bg.astype(np.float32))
    with pytest.raises(ValueError, match="out"):
        playback.rasterize_u8(*args, bg, out=np.zeros((3, 3, 3), np.uint8))
    with pytest.raises(ValueError, match="quats"):
        playback.rasterize_u8(args[0], args[1][:-1], *args[2:], bg)


@needs_compiled
def test_compiled_reports_its_stages():
    args, bg = next(scenes())
    stages: dict = {}
    for _ in range(2):
        playback.rasterize_u8(*args, bg, stages=stages)
    assert sorted(stages) == ["binning", "blending", "projection"]
    assert all(wall > 0 and cpu >= 0 for wall, cpu in stages.values())


@needs_compiled
def test_sigmoid_equals_scipys_expit_bit_for_bit():
    from scipy.special import expit

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 4, 200_000), rng.normal(0, 40, 100_000),
                        [0.0, -0.0, 1e-30, 88, 89, -88, -89, -104, -200, 200, np.inf, -np.inf]]).astype(np.float32)
    got = playback.sigmoid_(x.copy())
    assert np.array_equal(got, expit(x))
    with pytest.raises(ValueError, match="float32"):
        playback.sigmoid_(x.astype(np.float64))


@needs_compiled
def test_numba_fallback_gives_the_same_frames(monkeypatch):
    args, bg = next(scenes())
    want = playback.rasterize_u8(*args, bg)
    monkeypatch.setattr(playback, "splat_ext", None)  # an install without a C++ compiler
    assert np.array_equal(playback.rasterize_u8(*args, bg), want)


def play_in_a_fresh_process(code: str, bundle, tmp_path: Path) -> tuple[subprocess.CompletedProcess, np.ndarray]:
    """Run `code` with argv (bundle, where to np.save the first frame) -> (the process, that frame)."""
    frame_path = tmp_path / "first.npy"
    out = subprocess.run([sys.executable, "-c", code, str(bundle), str(frame_path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    return out, np.load(frame_path)


def first_frame(bundle) -> np.ndarray:
    """The first frame of one second of silence, rendered in this process."""
    from embedtalk_sdk.runtime.avatar import Avatar

    return next(Avatar.load(bundle, backend="onnxruntime").frames(np.zeros(16000, np.float32), sample_rate=16000))


@needs_compiled
def test_an_avatar_plays_its_first_frame_without_numba(trained_avatar, tmp_path):
    # A fresh process: Avatar.load and the first frame, and numba never imported (it costs ~0.7 s).
    code = ("import json, sys, time\n"
            "from embedtalk_sdk.runtime.avatar import Avatar\n"
            "import numpy as np\n"
            "t0 = time.perf_counter()\n"
            "avatar = Avatar.load(sys.argv[1], backend='onnxruntime')\n"
            "t1 = time.perf_counter()\n"
            "frame = next(avatar.frames(np.zeros(16000, np.float32), sample_rate=16000))\n"
            "t2 = time.perf_counter()\n"
            "np.save(sys.argv[2], frame)\n"
            "print(json.dumps({'numba': 'numba' in sys.modules, 'scipy.special': 'scipy.special' in sys.modules, "
            "'load_ms': 1e3 * (t1 - t0), "
            "'first_ms': 1e3 * (t2 - t1)}))\n")
    out, frame = play_in_a_fresh_process(code, trained_avatar["bundle"], tmp_path)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert not report["numba"], "numba was imported on the playback path"
    assert not report["scipy.special"], "scipy.special was imported on the playback path (~0.2 s)"
    assert np.array_equal(frame, first_frame(trained_avatar["bundle"]))


@needs_compiled
def test_without_the_extension_an_avatar_plays_the_same_frame_and_says_why(trained_avatar, tmp_path):
    # An install whose compiler was missing: the import of the extension fails, numba's kernels play
    code = ("import logging, sys\n"
            "sys.modules['embedtalk_sdk.plugins.cpu.splat_ext'] = None  # ImportError, as if never built\n"
            "logging.basicConfig(level=logging.WARNING)\n"
            "import numpy as np\n"
            "from embedtalk_sdk.runtime.avatar import Avatar\n"
            "avatar = Avatar.load(sys.argv[1], backend='onnxruntime')\n"
            "np.save(sys.argv[2], next(avatar.frames(np.zeros(16000, np.float32), sample_rate=16000)))\n"
            "assert 'numba' in sys.modules\n")
    out, frame = play_in_a_fresh_process(code, trained_avatar["bundle"], tmp_path)
    assert "compiled rasteriser was not built" in out.stderr and "Install a C++ compiler" in out.stderr
    assert np.array_equal(frame, first_frame(trained_avatar["bundle"]))
