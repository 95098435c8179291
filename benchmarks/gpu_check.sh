#!/usr/bin/env bash
# Every GPU check of the project in one run (≤ 8 minutes) on a lent NVIDIA GPU, with only what
# travels in the working tree. Prepare here: `bash benchmarks/gpu_wheels.sh`; then, via the device
# tool: run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=540).
# Writes $OUT/gpu_check.log, pytest_gpu.log, gsplat_build.log, bench_gpu.json, bench.json, bench.png,
# train_smoke.log (at most 8 files come back).
#
#  1. installs .whl/*.whl into /tmp/site and the project itself (editable, no index);
#  2. starts gsplat's JIT build in the background (it compiles its CUDA code once, minutes);
#  3. pytest -m gpu (kernels vs the torch reference on CUDA, fatbin/NVRTC/C-ABI agreement, the
#     cuda backend vs onnxruntime, tensorrt-rtx where the GPU is supported); the gsplat
#     closeness test once gsplat has built;
#  4. benchmarks/bench_gpu.py on a 50k-Gaussian 512² bundle: cuda, tensorrt-rtx, gsplat-torch and
#     onnxruntime (CPU) in one process (fps, p50/p99, GPU memory, ratio to gsplat-torch). Not the
#     torch backend: its dense reference rasteriser is a CPU check, minutes per frame at this size;
#  5. embedtalk-sdk bench --backend all on the same bundle (Avatar end to end);
#  6. a 150-step gsplat training smoke test on the synthetic speaker, if gsplat built.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check_out}
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
exec > >(tee -a "$LOG") 2>&1
export PYTHONUNBUFFERED=1
stamp() { echo "== $(date +%T) $*"; }

stamp "machine"
nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv || true
python3 --version; nproc
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . || { echo "project install failed"; exit 1; }
export EMBEDTALK_CACHE=/tmp/etk_cache

stamp "gsplat JIT build (background, 300 s cap)"
( timeout 300 python3 -c "import gsplat, torch; from gsplat.cuda._backend import _C; print('gsplat built', gsplat.__version__, _C is not None)" \
    > "$OUT/gsplat_build.log" 2>&1 ) &
GSPLAT_PID=$!

stamp "pytest -m gpu"
timeout 200 python3 -m pytest -q -m gpu -k "not gsplat" -p no:cacheprovider tests/ 2>&1 | tee "$OUT/pytest_gpu.log" | tail -25

stamp "50k-Gaussian 512² bundle"
python3 benchmarks/make_bench_bundle.py -o /tmp/bench50k.etk --gaussians 50000 --size 512

wait $GSPLAT_PID; tail -3 "$OUT/gsplat_build.log"
if grep -q "gsplat built" "$OUT/gsplat_build.log"; then
  timeout 60 python3 -m pytest -q -m gpu -k gsplat -p no:cacheprovider tests/ 2>&1 | tee -a "$OUT/pytest_gpu.log" | tail -5
fi

stamp "backend-level GPU benchmark"
timeout 150 python3 benchmarks/bench_gpu.py /tmp/bench50k.etk --backends cuda,tensorrt-rtx,gsplat-torch,onnxruntime \
  --frames 400 --max-seconds 20 -o "$OUT/bench_gpu.json" | tail -40

stamp "embedtalk-sdk bench --backend all"
timeout 120 embedtalk-sdk bench /tmp/bench50k.etk --backend all --frames 100 --max-seconds 15 -o "$OUT/bench.json" | tail -20

stamp "gsplat training smoke test"
if grep -q "gsplat built" "$OUT/gsplat_build.log"; then
  ( timeout 90 embedtalk-sdk synth -o /tmp/synth --seconds 8 --size 128 \
    && timeout 120 embedtalk-sdk train /tmp/synth -o /tmp/run --iterations 150 --device cuda --rasterizer gsplat --val-every 0 ) \
    > "$OUT/train_smoke.log" 2>&1; echo "train exit $?"; tail -5 "$OUT/train_smoke.log"
else
  echo "skipped: gsplat did not build (see gsplat_build.log)"
fi
stamp "done"
