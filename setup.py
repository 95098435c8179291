"""The compiled playback rasteriser (plugins/cpu/splat.cpp); everything else is in pyproject.toml.

The extension is optional: where no C++ compiler is found the install goes on and playback uses the
numba rasteriser, which gives the same frames after a slower cold start (plugins/design.md)."""
import hashlib
import sys
from pathlib import Path

from setuptools import Extension, setup

# Each build records its source's hash: the tests fail on a stale build (an optional extension
# whose rebuild failed keeps the old one in an editable checkout without a word).
EXTENSIONS = {"splat_ext": ("plugins/cpu/splat.cpp", "SPLAT_SOURCE_SHA256"),
              "deform_ext": ("plugins/cpu/deform.cpp", "DEFORM_SOURCE_SHA256")}


def source_sha256(source: str) -> str:
    return hashlib.sha256((Path(__file__).parent / source).read_bytes()).hexdigest()


if sys.platform == "win32":
    flags, link = ["/O2", "/std:c++17", "/openmp", "/fp:precise"], []
elif sys.platform == "darwin":  # Apple's clang has no OpenMP without libomp: one thread per frame there
    flags, link = ["-O3", "-std=c++17", "-ffp-contract=off"], []
else:
    flags, link = ["-O3", "-std=c++17", "-fopenmp", "-ffp-contract=off", "-fno-fast-math"], ["-fopenmp"]

setup(ext_modules=[Extension(f"embedtalk_sdk.plugins.cpu.{name}", [source], language="c++",
                             define_macros=[(macro, f'"{source_sha256(source)}"')],
                             extra_compile_args=flags, extra_link_args=link, optional=True)
                   for name, (source, macro) in EXTENSIONS.items()])
