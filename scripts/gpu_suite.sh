#!/usr/bin/env bash
# Everything that needs a GPU, in one script: the GPU tests (CuPy kernels, Numba CUDA on real
# hardware) and the benchmarks. Run on a machine with an NVIDIA GPU, with the project installed
# with its GPU, reference and dev extras (pip install -e '.[gpu,reference,dev]'):
#
#   bash scripts/gpu_suite.sh [OUTDIR [PART ...]]
#
# PART: tests, roi, nms, conv, model (default: all five, in that order), so that a machine lent
# for a limited time can run the suite in pieces. Writes OUTDIR/info.txt, OUTDIR/gpu_tests.log,
# OUTDIR/bench_*.txt, and the conv and model benchmarks' own result files
# OUTDIR/bench_conv.{md,json} and OUTDIR/bench_model.json (default OUTDIR: gpu-results/).
# Exits non-zero if the tests or any benchmark failed.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu-results}
shift || true
parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(tests roi nms conv model)
for part in "${parts[@]}"; do
  case $part in
    tests | roi | nms | conv | model) ;;
    *) echo "gpu_suite: unknown part '$part' (tests, roi, nms, conv, model)" >&2; exit 2 ;;
  esac
done
mkdir -p "$out"
export NUMBA_ENABLE_CUDASIM=0 PYTHONUNBUFFERED=1
# minimaskrcnn.kernels is the top-level kernels/ folder, mapped into the package by the install:
# from a bare checkout every test would fail on the import, so say so once, up front.
if ! python -c "from minimaskrcnn import backends, kernels; assert backends.cupy_available()"; then
  echo "gpu_suite: needs the project installed (pip install -e '.[gpu,reference,dev]';" \
    "cupy-cuda13x for CUDA 13) and CuPy seeing a CUDA GPU" >&2
  exit 2
fi
python -m minimaskrcnn info | tee "$out/info.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$out/info.txt"
status=0
for b in "${parts[@]}"; do
  if [ "$b" = tests ]; then  # the CuPy kernels and every backend on a real device
    python -m pytest -m gpu -q -p no:cacheprovider 2>&1 | tee "$out/gpu_tests.log"
    status=${PIPESTATUS[0]}
    continue
  fi
  extra=()
  case $b in
    conv) extra=(--out "$out/bench_conv") ;;        # writes .md and .json (default: ./conv_bench)
    model) extra=(--out "$out/bench_model.json") ;;
  esac
  python -m minimaskrcnn bench "$b" --device gpu ${extra[@]+"${extra[@]}"} 2>&1 | tee "$out/bench_$b.txt"
  rc=${PIPESTATUS[0]}
  if [ "$rc" -ne 0 ]; then
    echo "gpu_suite: bench $b failed (exit $rc)" | tee -a "$out/bench_$b.txt" >&2
    [ "$status" -eq 0 ] && status=$rc
  fi
done
exit "$status"
