"""The CUDA rasteriser: compiles everywhere (nvcc, NVRTC), equals the torch reference on a GPU.

Without a GPU (CI, the development machines) this checks what can be checked: the one kernel
source compiles with nvcc for every target arch (sm_75/80/86/89/120 + PTX) and through NVRTC,
the C ABI library links and loads, its struct layouts match their ctypes mirrors, the workspace
plan is sound, and asking for a GPU where there is none fails with a clear message.
Tests marked `gpu` need an NVIDIA GPU and skip cleanly without one.
"""
from __future__ import annotations

import ctypes
import importlib.util
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from embedtalk_sdk.plugins.cuda import build
from embedtalk_sdk.plugins.cuda.rasterizer import EtkCamera, plan, radix_shifts, tile_bits
from embedtalk_sdk.plugins.cuda.shared_lib import EtkRasterArgs

def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:
        return False


HAS_CUDA_PYTHON = _has("cuda") and _has("cuda.bindings")


def _gpu_present() -> bool:
    if not HAS_CUDA_PYTHON:
        return False
    from embedtalk_sdk.plugins.cuda import cuda_available

    return cuda_available()


GPU = _gpu_present()
gpu = pytest.mark.gpu
needs_gpu = pytest.mark.skipif(not GPU, reason="no CUDA GPU (or cuda-python) on this machine")


def rtx_runs_here() -> tuple[bool, str]:
    """(whether TensorRT-RTX is installed and supports this GPU, why not)."""
    from embedtalk_sdk.plugins.cuda.engines import import_rtx, rtx_available

    if not rtx_available():
        return False, "TensorRT-RTX is not installed"
    from embedtalk_sdk.plugins.cuda.driver import get_device
    from embedtalk_sdk.runtime.backends.tensorrt_rtx import supported_compute_capabilities

    cc, supported = get_device(0).compute_capability, supported_compute_capabilities(import_rtx())
    return cc in supported, f"TensorRT-RTX does not support this GPU ({cc}; it supports {', '.join(supported)})"


# ---------------------------------------------------------------- nvcc, once per session


@pytest.fixture(scope="session")
def nvcc_products(tmp_path_factory) -> dict:
    """Both nvcc products for every target arch, compiled concurrently, once per session:
    {"fatbin": path, "library": path, "seconds": {...}}."""
    nvcc = build.find_nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found: the CUDA sources are only checked through NVRTC here")
    out = tmp_path_factory.mktemp("nvcc")
    fatbin, library = out / build.prebuilt_names()[0], out / build.prebuilt_names()[1]
    cmds = {"fatbin": build.nvcc_fatbin_command(fatbin, nvcc=nvcc), "library": build.nvcc_library_command(library, nvcc=nvcc)}
    t0 = time.perf_counter()
    procs = {k: subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for k, c in cmds.items()}
    seconds, logs = {}, {}
    for k, p in procs.items():
        logs[k] = p.communicate()[0]
        seconds[k] = round(time.perf_counter() - t0, 1)
        assert p.returncode == 0, f"{' '.join(cmds[k])}\n{logs[k]}"
    return {"fatbin": fatbin, "library": library, "seconds": seconds, "logs": logs}


def test_kernels_compile_with_nvcc_for_every_arch(nvcc_products):
    fatbin = nvcc_products["fatbin"]
    data = fatbin.read_bytes()
    assert data[:4] == bytes.fromhex("50ed55ba")  # fatbin magic 0xBA55ED50, little endian
    for arch in build.ARCHS:  # one SASS image per target arch
        assert arch.encode() in data, f"no {arch} image in the fatbin"
    assert "warning" not in nvcc_products["logs"]["fatbin"].lower(), nvcc_products["logs"]["fatbin"]


def test_c_abi_library_compiles_links_and_loads_without_a_gpu(nvcc_products):
    from embedtalk_sdk.plugins.cuda.shared_lib import RasterLibrary, RasterLibraryError

    lib = RasterLibrary(nvcc_products["library"])  # cudart is static: dlopen needs no driver
    assert lib.abi_version == 1
    for name in ("etk_raster_workspace_size", "etk_raster_forward", "etk_raster_error_string"):
        assert hasattr(lib.lib, name)
    if not GPU:  # CUB's temp-storage query needs a device: a clean error, not a crash
        with pytest.raises(RasterLibraryError, match="workspace_size"):
            lib.workspace_size(1000, 64, 64, 1 << 16)


def test_abi_structs_match_their_ctypes_mirrors(tmp_path):
    """sizeof / offsetof of the C structs, compiled by the host C compiler, == the ctypes layout."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    fields = [name for name, _ in EtkRasterArgs._fields_]
    src = tmp_path / "layout.c"
    src.write_text(
        '#include <stdio.h>\n#include <stddef.h>\n#include "embedtalk_raster.h"\n'
        "typedef struct { float fx, fy, cx, cy; int width, height, tiles_x, tiles_y; } Cam;\n"
        "int main(void) {\n"
        '  printf("%zu %zu\\n", sizeof(EtkRasterArgs), sizeof(Cam));\n'
        + "".join(f'  printf("%zu\\n", offsetof(EtkRasterArgs, {f}));\n' for f in fields)
        + "  return 0;\n}\n"
    )
    exe = tmp_path / "layout"
    subprocess.run([cc, "-I", str(build.HERE), str(src), "-o", str(exe)], check=True)
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.split()
    assert int(out[0]) == ctypes.sizeof(EtkRasterArgs)
    assert int(out[1]) == ctypes.sizeof(EtkCamera) == 32
    assert [int(x) for x in out[2:]] == [getattr(EtkRasterArgs, f).offset for f in fields]
    # The kernel header's struct is the one mirrored as Cam above.
    assert "struct EtkCamera {\n    float fx, fy, cx, cy;\n    int width, height;\n    int tiles_x, tiles_y;\n};" in build.kernel_source()


# ---------------------------------------------------------------- NVRTC


def _nvrtc_usable() -> str | None:
    if not HAS_CUDA_PYTHON:
        return "cuda-python is not installed"
    try:
        build.nvrtc_version()
    except build.BuildError as e:
        return str(e)
    return None


@pytest.mark.skipif(_nvrtc_usable() is not None, reason=f"NVRTC not usable: {_nvrtc_usable()}")
def test_kernels_compile_through_nvrtc_without_a_driver(tmp_path, monkeypatch):
    for arch in ("sm_75", "sm_86", "sm_120"):
        image, kind = build.nvrtc_compile(arch)
        assert kind == "cubin" and image[:4] == b"\x7fELF", arch
    # A GPU newer than NVRTC knows gets PTX of the newest arch it does know (the driver JITs it).
    image, kind = build.nvrtc_compile("sm_990")
    assert kind == "ptx" and b".entry etk_blend" in image
    # The per-arch cache: compiled once, then read back.
    monkeypatch.setenv("EMBEDTALK_CACHE", str(tmp_path))
    first = build.nvrtc_cached("sm_89")
    path = build.nvrtc_cache_path("sm_89")
    assert path.is_file() and path.parent == tmp_path / "cuda"
    assert build.nvrtc_cached("sm_89") == first
    # A damaged entry is rebuilt (before: handed to the driver as it was, failing every load).
    path.write_bytes(first[0][: len(first[0]) // 2])
    assert build.nvrtc_cached("sm_89") == first and path.read_bytes() == first[0]


def test_deform_kernels_compile_for_turing_and_hopper(tmp_path, monkeypatch):
    """The cuda backend's kernels for the oldest target and for Hopper (which TensorRT-RTX lacks);
    cached apart from the rasteriser's."""
    from embedtalk_sdk.plugins.cuda.loader import DEFORM_KERNELS

    monkeypatch.setenv("EMBEDTALK_CACHE", str(tmp_path))
    for arch in ("sm_75", "sm_90"):
        image, kind = build.nvrtc_cached(arch, build.DEFORM_KERNELS)
        assert kind == "cubin" and image[:4] == b"\x7fELF", arch
        assert all(name.encode() in image for name in DEFORM_KERNELS)
    assert build.nvrtc_cache_path("sm_90", build.DEFORM_KERNELS) != build.nvrtc_cache_path("sm_90")


# ---------------------------------------------------------------- host-side logic


def test_workspace_plan_is_aligned_and_disjoint():
    L = plan(50_000, 512, 512, 1 << 20)
    assert L.n_tiles == 32 * 32 and L.radix_blocks == 256
    spans = sorted((off, name) for name, off in L.offsets.items())
    assert all(off % 256 == 0 for off, _ in spans)
    assert spans[0][0] == 0 and L.total >= 8 * (1 << 20) * 2 + 50_000 * 52
    assert plan(0, 16, 16, 1).total > 0
    with pytest.raises(ValueError):
        plan(10, 0, 16, 100)
    # 2**bits > n_tiles, so the CUB path's all-ones padding keys sort after every real tile.
    for n_tiles in (1, 255, 256, 1024, 4095):
        assert 2 ** tile_bits(n_tiles) > n_tiles
    # Our own radix passes sort only real pairs: tile ids up to n_tiles - 1. Before: one pass more
    # whenever n_tiles was a power of two (256 tiles: 6 passes over 41 bits instead of 5 over 40).
    assert [len(radix_shifts(n)) for n in (1, 2, 255, 256, 257, 1024, 1025)] == [4, 5, 5, 5, 6, 6, 6]


@pytest.mark.skipif(not HAS_CUDA_PYTHON or GPU, reason="needs cuda-python and no GPU")
def test_no_gpu_is_a_clear_error():
    from embedtalk_sdk.plugins.cuda import cuda_available
    from embedtalk_sdk.plugins.cuda.driver import CudaError, get_device

    assert cuda_available() is False
    with pytest.raises(CudaError, match="CUDA"):
        get_device(0)


def test_gpu_runtime_modules_never_import_torch():
    code = (
        "import sys\n"
        "import embedtalk_sdk.plugins.cuda, embedtalk_sdk.plugins.cuda.rasterizer\n"
        "import embedtalk_sdk.runtime.backends.tensorrt_rtx, embedtalk_sdk.runtime.backends.tensorrt\n"
        "import embedtalk_sdk.runtime.backends.cuda, embedtalk_sdk.runtime.backends.cuda_frames\n"
        "from embedtalk_sdk.runtime.backends.registry import available_backends\n"
        "available_backends()\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    if not HAS_CUDA_PYTHON:
        code = code.replace("embedtalk_sdk.plugins.cuda.rasterizer", "embedtalk_sdk.plugins.cuda.build")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_engine_selection_and_why_not():
    from embedtalk_sdk.runtime.backends.tensorrt_rtx import select_engine

    entries = [
        {"file": "engines/a", "backend": "tensorrt-rtx", "compute_capability": "sm86", "trt_version": "1.7.1.116"},
        {"file": "engines/b", "backend": "tensorrt-rtx", "compute_capability": "sm89", "trt_version": "1.6.0.1"},
        {"file": "engines/c", "backend": "tensorrt", "compute_capability": "sm89", "trt_version": "1.7.1.116"},
    ]
    assert select_engine(entries, "sm86", "1.7.1.200")[0]["file"] == "engines/a"  # build number may differ
    entry, why = select_engine(entries, "sm89", "1.7.1.116")
    assert entry is None and "engines/a is for sm86, this GPU is sm89" in why
    assert any("built by TensorRT-RTX 1.6.0.1, 1.7.1.116 is installed" in w for w in why)
    assert select_engine([], "sm89", "1.7.1") == (None, ["the bundle has no tensorrt-rtx engine"])


@pytest.mark.skipif(GPU, reason="checks the no-GPU fallback")
def test_without_a_gpu_auto_falls_back_to_the_cpu(tmp_path, caplog):
    from test_runtime import make_test_bundle

    from embedtalk_sdk.runtime.avatar import Avatar
    from embedtalk_sdk.runtime.backends.base import BackendError
    from embedtalk_sdk.runtime.backends.registry import create_backend
    from embedtalk_sdk.runtime.bundle import Bundle

    bundle = make_test_bundle(tmp_path / "a.etk")
    available = __import__("embedtalk_sdk.runtime.backends.registry", fromlist=["x"]).available_backends()
    for name in ("tensorrt-rtx", "cuda"):
        if name in available:
            with pytest.raises(BackendError, match=f"backend {name}"):
                create_backend(name, Bundle.open(bundle))
    with caplog.at_level("INFO", logger="embedtalk_sdk.runtime"):
        avatar = Avatar.load(bundle)
    assert avatar.backend_name == "onnxruntime"


def test_an_unconsumed_dlpack_capsule_frees_its_tensor():
    # Before: the capsule had no destructor, so a capsule nobody consumed kept its managed tensor
    # (and the device array's owner, i.e. the backend's GPU memory) alive forever.
    import ctypes
    import gc

    from embedtalk_sdk.plugins.cuda import driver

    before = len(driver._ALIVE)
    arr = driver.DeviceArray(0x1000, (2, 3), np.float32)
    capsule = arr.__dlpack__()
    assert len(driver._ALIVE) == before + 1
    del capsule
    gc.collect()
    assert len(driver._ALIVE) == before
    # A consumer renames the capsule and calls the deleter itself: freed once, not twice.
    capsule = arr.__dlpack__()
    get = ctypes.pythonapi.PyCapsule_GetPointer
    get.restype, get.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    rename = ctypes.pythonapi.PyCapsule_SetName
    rename.argtypes = [ctypes.py_object, ctypes.c_char_p]
    managed = driver._DLManagedTensor.from_address(get(capsule, b"dltensor"))
    used = ctypes.c_char_p(b"used_dltensor")
    rename(capsule, used)
    del capsule
    gc.collect()
    assert len(driver._ALIVE) == before + 1  # the consumer owns it now
    managed.deleter(ctypes.pointer(managed))
    assert len(driver._ALIVE) == before


def test_backends_are_registered():
    from embedtalk_sdk.runtime.backends import registry

    assert {"tensorrt-rtx", "tensorrt", "cuda"} <= set(registry._REGISTRY)
    assert registry.AUTO_ORDER[:4] == ("tensorrt", "tensorrt-rtx", "cuda", "onnxruntime")


# ---------------------------------------------------------------- on a GPU

sys.path.insert(0, str(Path(__file__).parent))


def _scene(seed: int, n: int, H: int, W: int) -> dict:
    from test_rasterize import random_scene

    return random_scene(np.random.default_rng(seed), n, H, W)


def _reference(scene: dict, opacities: np.ndarray):
    import torch

    from embedtalk_sdk.functional.rasterize import rasterize

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    args = {k: torch.tensor(np.asarray(v, np.float64), device=dev) for k, v in scene.items()}
    args["opacities"] = torch.tensor(opacities, dtype=torch.float64, device=dev)
    with torch.no_grad():
        img, alpha = rasterize(**args)
    return img.cpu().numpy(), alpha.cpu().numpy()


def _opacities_through_logits(o: np.ndarray) -> np.ndarray:
    """What the kernel's sigmoid(logit) gives back for `o` (rasterize_cuda feeds logits)."""
    o = np.clip(np.asarray(o, np.float64), 1e-12, 1 - 1e-7)
    logit = (np.log(o) - np.log1p(-o)).astype(np.float32).astype(np.float64)
    return 1.0 / (1.0 + np.exp(-logit))


@gpu
@needs_gpu
@pytest.mark.parametrize("seed", [0, 1])
def test_cuda_equals_torch_reference_on_10k_gaussians(seed):
    from embedtalk_sdk.plugins.cuda import rasterize_cuda

    scene = _scene(seed, 12_000, 180, 240)
    image, alpha = rasterize_cuda(**scene)
    ref_img, ref_alpha = _reference(scene, _opacities_through_logits(scene["opacities"]))
    assert ref_alpha.max() > 0.5 and (ref_alpha > 0.01).mean() > 0.2  # not an empty picture
    err = np.abs(image - ref_img).reshape(-1, 3).max(0)
    assert (err <= 1e-3).all(), f"max abs per channel {err}"
    assert np.abs(alpha - ref_alpha).max() <= 1e-3


@gpu
@needs_gpu
def test_prebuilt_fatbin_nvrtc_and_c_abi_agree(nvcc_products, monkeypatch):
    """The same kernels from the nvcc fatbin and from NVRTC, and the CUB-sorted C ABI, draw the
    same frame (the sorts are both stable on the same keys)."""
    from embedtalk_sdk.plugins.cuda import loader, rasterize_cuda
    from embedtalk_sdk.plugins.cuda.rasterizer import CudaRasterizer

    scene = _scene(3, 10_000, 128, 160)
    monkeypatch.setenv("EMBEDTALK_CUDA_FATBIN", str(nvcc_products["fatbin"]))
    loader._MODULES.clear()
    fat = CudaRasterizer(loader.load_kernels(allow_nvrtc=False))
    nv = CudaRasterizer(loader.load_kernels(allow_prebuilt=False))
    assert fat.origin.startswith("fatbin:") and nv.origin.startswith("nvrtc:")
    a, _ = rasterize_cuda(**scene, rasterizer=fat)
    b, _ = rasterize_cuda(**scene, rasterizer=nv)
    assert np.abs(a - b).max() <= 1e-6
    c = _c_abi_frame(nvcc_products["library"], scene)
    assert np.abs(a - c).max() <= 1e-6


def _c_abi_frame(library: Path, scene: dict) -> np.ndarray:
    from embedtalk_sdk.plugins.cuda.driver import DeviceBuffer, Stream, download, get_device, upload
    from embedtalk_sdk.plugins.cuda.shared_lib import RasterLibrary

    get_device(0)
    lib = RasterLibrary(library)
    o = np.clip(scene["opacities"], 1e-12, 1 - 1e-7)
    host = {
        "means": scene["means"], "quats": scene["quats"], "scales": scene["scales"],
        "opacity_logits": np.log(o) - np.log1p(-o), "colors": scene["colors"], "viewmat": scene["viewmat"],
        "background_f32": scene["background"],
    }  # fmt: skip
    host = {k: np.ascontiguousarray(v, np.float32) for k, v in host.items()}
    stream = Stream()
    bufs = {k: DeviceBuffer(v.nbytes) for k, v in host.items()}
    for k, v in host.items():
        upload(bufs[k].ptr, v, stream)
    n, (H, W) = len(host["means"]), host["background_f32"].shape[:2]
    image = np.empty((H, W, 3), np.float32)
    d_image, d_count, count = DeviceBuffer(image.nbytes), DeviceBuffer(4), np.zeros(1, np.uint32)
    max_pairs = 1 << 18
    while True:
        ws_bytes = lib.workspace_size(n, W, H, max_pairs)
        ws = DeviceBuffer(ws_bytes)
        lib.forward(stream, ws, ws_bytes, n_gaussians=n, width=W, height=H, K=scene["K"], max_pairs=max_pairs,
                    pair_count=d_count, image_f32=d_image, **bufs)  # fmt: skip
        download(count, d_count.ptr, stream)
        if count[0] <= max_pairs:
            break
        max_pairs = int(count[0]) + 1
    download(image, d_image.ptr, stream)
    return image


@gpu
@needs_gpu
def test_too_few_pairs_is_reported_and_retried():
    """With room for fewer pairs than a frame needs, pair_count says so and rasterize_cuda grows."""
    from embedtalk_sdk.plugins.cuda import rasterizer as R

    scene = _scene(4, 12_000, 96, 96)
    small = R.estimate_pairs
    try:
        R.estimate_pairs = lambda n, w, h: 1000
        a, _ = R.rasterize_cuda(**scene)
    finally:
        R.estimate_pairs = small
    b, _ = R.rasterize_cuda(**scene)
    assert np.abs(a - b).max() <= 1e-6


@gpu
@needs_gpu
def test_cuda_close_to_gsplat():
    """gsplat bins with 3.33 sigma per axis (we use the exact 1/255 radius), so it may drop faint
    tails: close, not equal."""
    torch = pytest.importorskip("torch")
    gsplat = pytest.importorskip("gsplat")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA here")
    from embedtalk_sdk.plugins.cuda import rasterize_cuda

    scene = _scene(5, 12_000, 180, 240)
    image, alpha = rasterize_cuda(**scene)
    t = {k: torch.tensor(np.asarray(v), dtype=torch.float32, device="cuda") for k, v in scene.items()}
    H, W = scene["background"].shape[:2]
    colors, alphas, _ = gsplat.rasterization(
        t["means"], t["quats"], t["scales"], t["opacities"], t["colors"], t["viewmat"][None], t["K"][None],
        W, H, near_plane=0.01, eps2d=0.3, packed=False, rasterize_mode="classic",
    )  # fmt: skip
    ref = (colors[0] + (1 - alphas[0]) * t["background"]).cpu().numpy()
    diff = np.abs(image - ref)
    assert diff.mean() <= 2e-3 and np.percentile(diff, 99) <= 0.02, (diff.mean(), np.percentile(diff, 99))


@gpu
@needs_gpu
def test_tensorrt_rtx_frames_equal_onnxruntime_frames(tmp_path):
    """The GPU backend (TensorRT-RTX network + CUDA rasteriser on one stream) against the CPU
    backend on the same bundle: mean abs <= 1/255. The bundle has no engine for this GPU, so the
    backend builds one from deform.onnx (and says so)."""
    ok, why = rtx_runs_here()
    if not ok:
        pytest.skip(why)
    from test_runtime import make_test_bundle

    bundle = make_test_bundle(tmp_path / "a.etk", n=3000)
    audio = np.random.default_rng(0).normal(0, 0.1, 16000).astype(np.float32)
    assert_frames_match_onnxruntime(bundle, "tensorrt-rtx", audio)


def assert_frames_match_onnxruntime(bundle: Path, backend: str, audio: np.ndarray) -> None:
    """`backend` speaks `audio` on `bundle` within 1/255 mean abs of the onnxruntime backend."""
    from embedtalk_sdk.runtime.avatar import Avatar

    cpu = Avatar.load(bundle, backend="onnxruntime").speak(audio, sample_rate=16000)
    avatar = Avatar.load(bundle, backend=backend)
    assert avatar.backend_name == backend
    frames = avatar.speak(audio, sample_rate=16000)
    assert frames.shape == cpu.shape
    assert np.abs(frames.astype(np.float32) - cpu).mean() <= 1.0, "mean abs above 1/255"


def test_each_kernels_source_has_its_own_fatbin_search(tmp_path, monkeypatch):
    from embedtalk_sdk.plugins.cuda import loader

    deform, raster = tmp_path / "deform.fatbin", tmp_path / "raster.fatbin"
    deform.write_bytes(b"x")
    raster.write_bytes(b"y")
    monkeypatch.setenv("EMBEDTALK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("EMBEDTALK_CUDA_DEFORM_FATBIN", str(deform))
    monkeypatch.setenv("EMBEDTALK_CUDA_FATBIN", str(raster))
    assert loader.fatbin_candidates(build.DEFORM_KERNELS)[0] == deform
    assert loader.fatbin_candidates(build.KERNELS)[0] == raster
    assert build.fatbin_name(build.DEFORM_KERNELS) != build.fatbin_name(build.KERNELS)
    assert build.fatbin_name(build.KERNELS) == build.prebuilt_names()[0]
