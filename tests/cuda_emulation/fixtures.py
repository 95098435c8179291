"""pytest fixtures of the CPU emulation of CUDA. In a test module:

    from cuda_emulation.fixtures import cuda_emulator  # noqa: F401  (the session fixture)

    @pytest.mark.cuda_emulated
    def test_x(cuda_emulator):
        proc = cuda_emulator.run_python(script, [args...])       # a subprocess on the fake libcuda.so.1
        proc = cuda_emulator.run_python(script, [...], variant="asan", shuffle_seed=3)

The build (fake libcuda + every plugins/cuda/*_kernels.cuh + selftest_kernels.cuh) happens once,
cached by source hash under $ETK_EMU_BUILD_DIR or <tmp>/etk-cuda-emulation-<uid>.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cuda_emulation import emulator

SELFTEST_KERNELS = emulator.HERE / "selftest_kernels.cuh"


def why_not_emulated() -> str | None:
    """None when the emulation can run here, else why not (a skip reason)."""
    if emulator.compiler() is None:
        return "no C++ compiler (g++)"
    for mod in ("cuda.bindings", "numpy"):
        try:
            if importlib.util.find_spec(mod) is None:
                return f"{mod} is not installed"
        except ImportError:
            return f"{mod} is not installed"
    from embedtalk_sdk.plugins.cuda import build

    try:
        build.nvrtc_version()
    except build.BuildError as e:
        return f"NVRTC not usable: {e}"
    return None


def build_root() -> Path:
    return Path(os.environ.get("ETK_EMU_BUILD_DIR") or Path(tempfile.gettempdir()) / f"etk-cuda-emulation-{os.getuid()}")


@dataclass
class Emulation:
    libdir: Path
    nvrtc_cache: Path
    _variants: dict = field(default_factory=dict)

    def variant_dir(self, variant: str) -> Path:
        if variant == "default":
            return self.libdir
        if variant not in self._variants:
            self._variants[variant] = emulator.build(build_root(), [SELFTEST_KERNELS], variant=variant)
        return self._variants[variant]

    def run_python(self, script: Path | str, args=(), variant: str = "default", timeout: float = 600,
                   **options) -> subprocess.CompletedProcess:
        return emulator.run_python(self.variant_dir(variant), script, args, variant=variant, cache=self.nvrtc_cache,
                                   timeout=timeout, **options)  # fmt: skip

    def popen(self, script: Path | str, args=(), variant: str = "default", **options) -> subprocess.Popen:
        import sys

        env = emulator.environment(self.variant_dir(variant), variant, self.nvrtc_cache, **options)
        return subprocess.Popen([sys.executable, str(script), *map(str, args)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env, cwd=str(emulator.REPO))  # fmt: skip


@pytest.fixture(scope="session")
def cuda_emulator(tmp_path_factory) -> Emulation:
    reason = why_not_emulated()
    if reason:
        pytest.skip(f"CUDA emulation unavailable: {reason}")
    libdir = emulator.build(build_root(), [SELFTEST_KERNELS])
    return Emulation(libdir, tmp_path_factory.mktemp("emulated-nvrtc-cache"))
