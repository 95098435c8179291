"""Compiling the CUDA rasteriser: nvcc ahead of time, NVRTC at first use. No GPU needed for either.

    python -m embedtalk_sdk.plugins.cuda.build              # fatbin + shared library into the user cache
    python -m embedtalk_sdk.plugins.cuda.build --out DIR    # e.g. plugins/cuda/prebuilt when packaging

Two nvcc products, both from the one source `rasterize_kernels.cuh`:
  * `embedtalk_raster_kernels.fatbin`: the kernels only, SASS for ARCHS + PTX for PTX_ARCH (any
    newer GPU JIT-compiles it). The Python runtime loads it with cuModuleLoadData.
  * `libembedtalk_raster.so`: the C ABI of `embedtalk_raster.h` (CUB scan and radix sort), cudart
    linked statically, for C/C++ hosts (a TensorRT C++ plugin, apps) and the GPU parity tests.
File names carry the sha256 of the sources and flags, so a stale binary is never loaded.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from embedtalk_sdk.runtime.errors import EmbedTalkError
from embedtalk_sdk.runtime.fileio import atomic_path, atomic_write

HERE = Path(__file__).resolve().parent
KERNELS = HERE / "rasterize_kernels.cuh"
DEFORM_KERNELS = HERE / "deform_kernels.cuh"  # the `cuda` backend's network
C_ABI_SOURCE = HERE / "rasterize.cu"
C_ABI_HEADER = HERE / "embedtalk_raster.h"

ARCHS = ("sm_75", "sm_80", "sm_86", "sm_89", "sm_120")
PTX_ARCH = "compute_75"  # the lowest target: its PTX runs (JIT) on every later GPU
# --fmad=false: no contraction of a*b+c, so thresholds (1/255, 1e-4) round as in the float32
# CPU implementations (plugins/design.md "Numerics"); a few % of blend speed.
COMMON_FLAGS = ("-std=c++17", "--fmad=false")
NVCC_FLAGS = ("-O3", *COMMON_FLAGS)
NVRTC_FLAGS = (*COMMON_FLAGS, "-default-device")

FATBIN_NAMES = {KERNELS: "embedtalk_raster_kernels", DEFORM_KERNELS: "embedtalk_deform_kernels"}
LIBRARY_NAME = "libembedtalk_raster"


class BuildError(EmbedTalkError, RuntimeError):
    """A compiler is missing or rejected the source; the message carries its log."""


def kernel_source(source: Path = KERNELS) -> str:
    return source.read_text()


def source_sha256(extra: tuple[str, ...] = (), source: Path = KERNELS) -> str:
    """Hash of a kernels source and the given compiler facts (flags, versions)."""
    h = hashlib.sha256(source.read_bytes())
    for item in extra:
        h.update(b"\0" + item.encode())
    return h.hexdigest()


def cache_dir() -> Path:
    """Where compiled kernels are cached: $EMBEDTALK_CACHE, else the platform's user cache."""
    if os.environ.get("EMBEDTALK_CACHE"):
        root = Path(os.environ["EMBEDTALK_CACHE"])
    elif sys.platform == "win32":
        root = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local")) / "embedtalk_sdk"
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "embedtalk_sdk"
    return root / "cuda"


# ---------------------------------------------------------------- nvcc (ahead of time)


def find_nvcc() -> str | None:
    """nvcc on PATH, or under $CUDA_HOME / $CUDA_PATH / /usr/local/cuda."""
    found = shutil.which("nvcc")
    if found:
        return found
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root and (Path(root) / "bin" / "nvcc").is_file():
            return str(Path(root) / "bin" / "nvcc")
    return None


def gencode_flags(archs: tuple[str, ...] = ARCHS, ptx_arch: str | None = PTX_ARCH) -> list[str]:
    """-gencode flags: SASS for each `sm_XY`, plus PTX for `ptx_arch` (None: no PTX)."""
    flags = []
    for arch in archs:
        flags += ["-gencode", f"arch=compute_{arch[3:]},code={arch}"]
    if ptx_arch:
        flags += ["-gencode", f"arch={ptx_arch},code={ptx_arch}"]
    return flags


def nvcc_fatbin_command(out: Path, archs: tuple[str, ...] = ARCHS, nvcc: str | None = None,
                        source: Path = KERNELS) -> list[str]:  # fmt: skip
    return [nvcc or find_nvcc() or "nvcc", "-x", "cu", "-fatbin", *NVCC_FLAGS, *gencode_flags(archs),
            "-o", str(out), str(source)]  # fmt: skip


def nvcc_library_command(out: Path, archs: tuple[str, ...] = ARCHS, nvcc: str | None = None) -> list[str]:
    return [nvcc or find_nvcc() or "nvcc", *NVCC_FLAGS, "-shared", "-Xcompiler", "-fPIC", "-cudart", "static",
            *gencode_flags(archs), "-t", str(os.cpu_count() or 1), "-o", str(out), str(C_ABI_SOURCE)]  # fmt: skip


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BuildError(f"{' '.join(cmd)}\nexit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")


def prebuilt_names() -> tuple[str, str]:
    """(fatbin file name, library file name) for the current sources and flags (not the archs:
    a fatbin without the GPU's arch simply fails to load, and the loader moves on)."""
    tag = source_sha256(NVCC_FLAGS)[:16]
    lib_tag = hashlib.sha256(
        (tag + C_ABI_SOURCE.read_text() + C_ABI_HEADER.read_text()).encode()
    ).hexdigest()[:16]
    return fatbin_name(KERNELS), f"{LIBRARY_NAME}-{lib_tag}.so"


def fatbin_name(source: Path = KERNELS) -> str:
    """The fatbin file name of a kernels source (rasteriser or network) for its sha256 and flags."""
    return f"{FATBIN_NAMES[source]}-{source_sha256(NVCC_FLAGS, source)[:16]}.fatbin"


def build_fatbin(out_dir: Path | None = None, archs: tuple[str, ...] = ARCHS, source: Path = KERNELS) -> Path:
    """nvcc a kernels source into a fatbin in `out_dir` (default: the user cache); returns its path."""
    nvcc = find_nvcc()
    if nvcc is None:
        raise BuildError("nvcc not found (install a CUDA toolkit, or let NVRTC compile at first use)")
    out = Path(out_dir or cache_dir()) / fatbin_name(source)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out, suffix=".tmp") as tmp:
        _run(nvcc_fatbin_command(tmp, archs, nvcc, source))
    return out


def build_shared_library(out_dir: Path | None = None, archs: tuple[str, ...] = ARCHS) -> Path:
    """nvcc the C ABI (with CUB) into a shared library in `out_dir`; returns its path."""
    nvcc = find_nvcc()
    if nvcc is None:
        raise BuildError("nvcc not found (install a CUDA toolkit)")
    out = Path(out_dir or cache_dir()) / prebuilt_names()[1]
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out, suffix=".tmp") as tmp:
        _run(nvcc_library_command(tmp, archs, nvcc))
    return out


# ---------------------------------------------------------------- NVRTC (first use)


def _nvrtc():
    try:
        from cuda.bindings import nvrtc
    except ImportError as e:
        raise BuildError("cuda-python is not installed: pip install 'embedtalk-sdk[gpu]'") from e
    return nvrtc


def nvrtc_version() -> tuple[int, int]:
    """NVRTC's (major, minor); raises BuildError when cuda-python or libnvrtc is missing."""
    nvrtc = _nvrtc()
    try:
        err, major, minor = nvrtc.nvrtcVersion()
    except Exception as e:  # noqa: BLE001 - libnvrtc not found: cuda-python raises its loader errors
        raise BuildError(f"NVRTC is not usable ({type(e).__name__}: {e}); pip install nvidia-cuda-nvrtc") from None
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        raise BuildError(f"nvrtcVersion failed: {err}")
    return int(major), int(minor)


def nvrtc_supported_archs() -> list[int]:
    """Compute capabilities NVRTC can target, as ints (75, 80, ...)."""
    nvrtc = _nvrtc()
    err, n = nvrtc.nvrtcGetNumSupportedArchs()
    err, archs = nvrtc.nvrtcGetSupportedArchs()
    return sorted(int(a) for a in archs)


def nvrtc_compile(arch: str, source: Path = KERNELS) -> tuple[bytes, str]:
    """Compile a kernels source (default: the rasteriser's) for `arch` ("sm_86") with NVRTC.

    Returns (image, kind): a cubin when NVRTC knows the arch, else PTX for the newest virtual
    arch it knows that is <= the GPU's (the driver JIT-compiles it). Needs no GPU and no driver.
    """
    nvrtc = _nvrtc()
    cc = int(arch.split("_")[1])
    supported = nvrtc_supported_archs()
    if cc in supported:
        target, kind = f"sm_{cc}", "cubin"
    else:
        older = [a for a in supported if a <= cc]
        if not older:
            raise BuildError(f"NVRTC {nvrtc_version()} cannot target {arch} (supports {supported})")
        target, kind = f"compute_{older[-1]}", "ptx"
    options = [f"--gpu-architecture={target}".encode(), *[f.encode() for f in NVRTC_FLAGS]]
    err, prog = nvrtc.nvrtcCreateProgram(kernel_source(source).encode(), source.with_suffix(".cu").name.encode(), 0, [], [])
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        raise BuildError(f"nvrtcCreateProgram failed: {err}")
    try:
        (status,) = nvrtc.nvrtcCompileProgram(prog, len(options), options)
        # Output buffers must be bytearrays: NVRTC writes into them, and `b" " * n` may be an
        # interned bytes object shared by the whole interpreter.
        _, size = nvrtc.nvrtcGetProgramLogSize(prog)
        log = bytearray(size)
        nvrtc.nvrtcGetProgramLog(prog, log)
        if status != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            raise BuildError(f"NVRTC failed for {target}: {status}\n{bytes(log).decode(errors='replace')}")
        if kind == "cubin":
            _, size = nvrtc.nvrtcGetCUBINSize(prog)
            image = bytearray(size)
            nvrtc.nvrtcGetCUBIN(prog, image)
        else:
            _, size = nvrtc.nvrtcGetPTXSize(prog)
            image = bytearray(size)
            nvrtc.nvrtcGetPTX(prog, image)
    finally:
        nvrtc.nvrtcDestroyProgram(prog)
    return bytes(image), kind


def nvrtc_cache_path(arch: str, source: Path = KERNELS) -> Path:
    major, minor = nvrtc_version()
    tag = source_sha256((*NVRTC_FLAGS, f"nvrtc-{major}.{minor}"), source)[:16]
    return cache_dir() / f"nvrtc-{source.stem}-{tag}-{arch}.bin"


def nvrtc_cached(arch: str, source: Path = KERNELS) -> tuple[bytes, str]:
    """`nvrtc_compile(arch, source)` through the per-arch cache (the first call per GPU takes ~1-2 s)."""
    path = nvrtc_cache_path(arch, source)
    meta = path.with_suffix(".json")
    if path.is_file() and meta.is_file():
        try:
            image, info = path.read_bytes(), json.loads(meta.read_text())
            # The digest catches a truncated or overwritten image, which cuModuleLoadData would
            # only refuse later, with nothing left to rebuild it.
            if hashlib.sha256(image).hexdigest() == info["sha256"]:
                return image, info["kind"]
        except (OSError, ValueError, KeyError, TypeError):
            pass  # a damaged cache entry is rebuilt
    image, kind = nvrtc_compile(arch, source)
    atomic_write(path, image)
    atomic_write(meta, json.dumps({"kind": kind, "arch": arch, "sha256": hashlib.sha256(image).hexdigest()}).encode())
    return image, kind


# ---------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=None, help="output folder (default: the user cache)")
    p.add_argument("--archs", default=",".join(ARCHS), help="comma-separated sm_XY list")
    p.add_argument("--no-library", action="store_true", help="build only the kernels fatbin")
    args = p.parse_args(argv)
    archs = tuple(a.strip() for a in args.archs.split(",") if a.strip())
    t = time.perf_counter()
    for source in (KERNELS, DEFORM_KERNELS):
        print(f"fatbin: {build_fatbin(args.out, archs, source)} ({time.perf_counter() - t:.1f} s)")
        t = time.perf_counter()
    if not args.no_library:
        t = time.perf_counter()
        print(f"library: {build_shared_library(args.out, archs)} ({time.perf_counter() - t:.1f} s)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
