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
#
# Environment: PYTHON (default python3), GPU_TEST_JOBS (test files run at once, default 4),
# GPU_PART_TIMEOUT (seconds per part, per test file for tests; default none), GPU_TRAIN_ITERS,
# GPU_CONV_ARGS (more arguments for bench conv, e.g. "--batch 1" for half the run, "--quick").
#
# The tests run one pytest process per test file (GPU_TEST_JOBS at a time, logs concatenated in
# file order): a kernel that faults on the device leaves the CUDA context unusable, and in a
# single process every later test would fail with it, hiding which kernel did it. A benchmark
# whose backend raises loses that backend's rows only, prints why, and exits 1 at the end.
#
# On the project's lent GPU machines (the device tool: no network; torch, CuPy and Numba are in
# the image, pycocotools and setuptools >= 77 are not and travel as wheels in the git-ignored
# .whl/; a call is killed at 10 minutes and returns at most 8 files), install, then run each
# call's parts under `timeout`, so that the tar of what was written always runs:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl &&
#     export PYTHONPATH=/tmp/site && python3 -m pip install -q --no-deps --no-build-isolation -e .
#   call 1: (install) && timeout 520 bash scripts/gpu_suite.sh /tmp/g tests roi nms;
#           tar czf "$OUT/gpu1.tgz" -C /tmp g
#   call 2: (install) && GPU_CONV_ARGS="--batch 1" timeout 520 bash scripts/gpu_suite.sh /tmp/g
#           model conv; tar czf "$OUT/gpu2.tgz" -C /tmp g
#   call 3, time allowing: GPU_TRAIN_ITERS=300 ... train (resumes from its checkpoint when the
#           machine is still warm; bring back log.jsonl, metrics.json, loss_curve.png, train_cupy.txt)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
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
# NUMBA_CUDA_ARRAY_INTERFACE_SYNC=0: by default Numba synchronizes the stream of every CuPy array
# it is given, at every launch, which puts host time inside the CUDA-event timings of the numba
# rows. CuPy, Numba and torch all use the legacy default stream here, so the order is kept.
export NUMBA_ENABLE_CUDASIM=0 PYTHONUNBUFFERED=1 NUMBA_CUDA_ARRAY_INTERFACE_SYNC=0
# minimaskrcnn.kernels is the top-level kernels/ folder, mapped into the package by the install:
# from a bare checkout every test would fail on the import, so say so once, up front.
if ! $PY -c "from minimaskrcnn import backends, kernels; assert backends.cupy_available()"; then
  echo "gpu_suite: needs the project installed (pip install -e '.[gpu,reference,dev]';" \
    "cupy-cuda13x for CUDA 13) and CuPy seeing a CUDA GPU" >&2
  exit 2
fi
limit=()
[ -n "${GPU_PART_TIMEOUT:-}" ] && limit=(timeout "$GPU_PART_TIMEOUT")
$PY -m minimaskrcnn info | tee "$out/info.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$out/info.txt"
# Numba CUDA on this machine (libNVVM found, a kernel on a CuPy array): a failure here explains
# every numba failure below, and the cupy parts still run.
$PY - <<'PREFLIGHT' 2>&1 | tee -a "$out/info.txt"
import cupy
from numba import cuda

@cuda.jit
def add_one(a):
    i = cuda.grid(1)
    if i < a.size:
        a[i] += 1

try:
    a = cupy.zeros(100, dtype=cupy.float32)
    add_one[1, 128](a)
    print("numba cuda preflight:", "ok" if float(a.sum()) == 100.0 else f"wrong sum {a.sum()}",
          "on", cuda.get_current_device().name)
except Exception as e:  # reported; the suite goes on
    print(f"numba cuda preflight FAILED: {type(e).__name__}: {e}")
PREFLIGHT
status=0
for b in "${parts[@]}"; do
  if [ "$b" = tests ]; then  # the CuPy kernels and every backend on a real device
    logs=$(mktemp -d)
    collect=$($PY -m pytest -m gpu --collect-only -q -p no:cacheprovider 2>&1)
    crc=$?
    # the files of the collected tests, and those that failed to collect (ERROR path): run too,
    # so that their import errors reach the log and fail the part
    files=$( { sed -n 's/::.*//p' <<<"$collect"; sed -n 's/^ERROR \([^ ]*\.py\).*/\1/p' \
      <<<"$collect"; } | sort -u)
    per_test=()
    $PY -c "import pytest_timeout" 2>/dev/null && per_test=(--timeout=300)
    echo "gpu tests: $(echo "$files" | wc -w) files, ${GPU_TEST_JOBS:-4} at a time" \
      | tee "$out/gpu_tests.log"
    export PY logs
    echo "$files" | xargs -P "${GPU_TEST_JOBS:-4}" -I{} ${limit[@]+"${limit[@]}"} bash -c \
      '$PY -m pytest -m gpu -q -p no:cacheprovider '"${per_test[*]:-}"' "$1" \
         > "$logs/$(basename "$1").log" 2>&1; echo $? > "$logs/$(basename "$1").rc"' _ {}
    rc=0
    if [ "$crc" -ne 0 ] || [ -z "$files" ]; then  # nothing collected is a failure, not a pass
      { echo "=== collection (exit $crc)"; echo "$collect"; } >> "$out/gpu_tests.log"
      echo "gpu tests: collection failed (exit $crc); see gpu_tests.log"
      rc=1
    fi
    for f in $files; do
      name=$(basename "$f")
      frc=$(cat "$logs/$name.rc" 2>/dev/null || echo "killed")
      { echo "=== $f (exit $frc)"; cat "$logs/$name.log" 2>/dev/null; } >> "$out/gpu_tests.log"
      echo "$f: exit $frc, $(tail -n 1 "$logs/$name.log" 2>/dev/null)"
      [ "$frc" = 0 ] || rc=1
    done
    rm -rf "$logs"
    [ "$status" -eq 0 ] && status=$rc  # keep the first failure, as the other parts do
    continue
  fi
  if [ "$b" = train ]; then
    data="$out/shapes2026"
    if [ ! -f "$data/val/annotations.json" ]; then  # written atomically: all there, or nothing
      $PY -m minimaskrcnn shapes --out "$data" --train 1000 --val 100 --seed 2026
    fi
    resume=()
    [ -f "$out/train_cupy/checkpoint.npz" ] && resume=(--resume)
    ${limit[@]+"${limit[@]}"} $PY -m minimaskrcnn train --data "$data/train" --val "$data/val" --config r18_fpn_cpu \
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
    conv) extra=(--out "$out/bench_conv" ${GPU_CONV_ARGS:-}) ;;  # .md and .json (default: ./conv_bench)
    model) extra=(--out "$out/bench_model.json") ;;
  esac
  ${limit[@]+"${limit[@]}"} $PY -m minimaskrcnn bench "$b" --device gpu ${extra[@]+"${extra[@]}"} 2>&1 | tee "$out/bench_$b.txt"
  rc=${PIPESTATUS[0]}
  if [ "$rc" -ne 0 ]; then
    echo "gpu_suite: bench $b failed (exit $rc)" | tee -a "$out/bench_$b.txt" >&2
    [ "$status" -eq 0 ] && status=$rc
  fi
done
exit "$status"
