#!/usr/bin/env bash
# Fetch, here, the wheels benchmarks/gpu_check.sh needs on the lent GPU machine (Python 3.12,
# x86-64, no registry there): PyAV and soundfile (the runtime imports them), cffi/pycparser
# (soundfile's), gsplat (pure Python: it JIT-compiles its CUDA code with the nvcc found there).
# ~43 MB into .whl/ (git-ignored through .git/info/exclude); name `.whl` in the run's `carry`.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl av soundfile cffi pycparser gsplat
du -sh .whl && ls .whl
