#!/usr/bin/env bash
# Everything that needs a GPU, in one script: the GPU tests (CuPy kernels, Numba CUDA on real
# hardware) and the benchmarks. Run on a machine with an NVIDIA GPU, CuPy and the reference extra:
#
#   bash scripts/gpu_suite.sh [OUTDIR]
#
# Writes OUTDIR/gpu_tests.log and OUTDIR/bench_*.txt (default OUTDIR: gpu-results/).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu-results}
mkdir -p "$out"
export NUMBA_ENABLE_CUDASIM=0 PYTHONUNBUFFERED=1
python -m minimaskrcnn info | tee "$out/info.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$out/info.txt"
# GPU tests: the CuPy kernels and every backend on a real device.
python -m pytest -m gpu -q -p no:cacheprovider 2>&1 | tee "$out/gpu_tests.log"
status=${PIPESTATUS[0]}
for b in roi nms conv model; do
  python -m minimaskrcnn bench "$b" --device gpu 2>&1 | tee "$out/bench_$b.txt"
done
exit "$status"
