#!/usr/bin/env bash
# Everything that needs a GPU, in one script: the GPU tests (CuPy kernels, Numba CUDA on real
# hardware) and the benchmarks. Run on a machine with an NVIDIA GPU, with the project installed
# with its GPU, reference and dev extras (pip install -e '.[gpu,reference,dev]'):
#
#   bash scripts/gpu_suite.sh [OUTDIR [PART ...]]
#
# PART: tests, roi, nms, conv, model (default: these five, in that order), so that a machine
# lent for a limited time can run the suite in pieces; and train (not in the default): the shapes
# training on the GPU, the CPU measurement's command (docs/train_shapes_results.md) with
# --backend cupy and an iteration budget, GPU_TRAIN_ITERS (default 899, the iterations the
# 20-minute CPU run made), then COCO AP on the validation split. A second `train` call resumes
# an interrupted run from its checkpoint (every 50 iterations), so the training may span several
# time-limited calls. Writes OUTDIR/info.txt, OUTDIR/gpu_tests.log, OUTDIR/bench_*.txt, the conv
# and model benchmarks' own result files OUTDIR/bench_conv.{md,json} and
# OUTDIR/bench_model.json, and OUTDIR/shapes2026/ + OUTDIR/train_cupy/ (log.jsonl, metrics.json,
# loss_curve.png) for train (default OUTDIR: gpu-results/).
# Exits non-zero if the tests, any benchmark or the training failed.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu-results}
shift || true
parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(tests roi nms conv model)
for part in "${parts[@]}"; do
  case $part in
    tests | roi | nms | conv | model | train) ;;
    *) echo "gpu_suite: unknown part '$part' (tests, roi, nms, conv, model, train)" >&2; exit 2 ;;
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
    rc=${PIPESTATUS[0]}
    [ "$status" -eq 0 ] && status=$rc  # keep the first failure, as the other parts do
    continue
  fi
  if [ "$b" = train ]; then
    data="$out/shapes2026"
    if [ ! -f "$data/val/annotations.json" ]; then  # written atomically: all there, or nothing
      python -m minimaskrcnn shapes --out "$data" --train 1000 --val 100 --seed 2026
    fi
    resume=()
    [ -f "$out/train_cupy/checkpoint.npz" ] && resume=(--resume)
    python -m minimaskrcnn train --data "$data/train" --val "$data/val" --config r18_fpn_cpu \
      --out "$out/train_cupy" --iters "${GPU_TRAIN_ITERS:-899}" --batch-size 16 --lr 0.06 \
      --ckpt-every 50 --backend cupy ${resume[@]+"${resume[@]}"} 2>&1 | tee -a "$out/train_cupy.txt"
    rc=${PIPESTATUS[0]}
    if [ "$rc" -ne 0 ]; then
      echo "gpu_suite: train failed (exit $rc)" | tee -a "$out/train_cupy.txt" >&2
      [ "$status" -eq 0 ] && status=$rc
    fi
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
