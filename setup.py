"""The compiled playback rasteriser (plugins/cpu/splat.cpp); everything else is in pyproject.toml.

The extension is optional: where no C++ compiler is found the install goes on and playback uses the
numba rasteriser, which gives the same frames after a slower cold start (plugins/design.md)."""
import sys

from setuptools import Extension, setup

if sys.platform == "win32":
    flags, link = ["/O2", "/std:c++17", "/openmp", "/fp:precise"], []
elif sys.platform == "darwin":  # Apple's clang has no OpenMP without libomp: one thread per frame there
    flags, link = ["-O3", "-std=c++17", "-ffp-contract=off"], []
else:
    flags, link = ["-O3", "-std=c++17", "-fopenmp", "-ffp-contract=off", "-fno-fast-math"], ["-fopenmp"]

setup(ext_modules=[Extension("embedtalk_sdk.plugins.cpu.splat_ext", ["plugins/cpu/splat.cpp"], language="c++",
                             extra_compile_args=flags, extra_link_args=link, optional=True)])
