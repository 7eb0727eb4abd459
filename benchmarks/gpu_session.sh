#!/usr/bin/env bash
# GPU checks and benchmarks on one lent GPU machine (the `device` tool: at most 10 minutes a
# command, 30 minutes a session), in a few full commands. Run from the repository root:
#
#   bash benchmarks/gpu_session.sh build-test   # build skelfast._C with CUDA (incremental), skelfast.info,
#                                               # then the test files that run on the GPU when one is seen
#   bash benchmarks/gpu_session.sh test-train   # the trainer's GPU switches (tests/train/test_train_gpu.py)
#   bash benchmarks/gpu_session.sh test-all     # the whole suite (CUDA tests run instead of skipping)
#   bash benchmarks/gpu_session.sh bench-ops    # bench_modalities, bench_moco, bench_epilogue on cuda
#   bash benchmarks/gpu_session.sh bench-losses [CASES]  # bench_losses (K=4096,32768,65536); CASES e.g.
#                                               # phase2 (default phase1,phase2,distill)
#   bash benchmarks/gpu_session.sh bench-encoder  # bench_encoder (N=64,128, last block)
#   bash benchmarks/gpu_session.sh bench-step [CASES]  # bench_step (N=128, K=32768, every GPU provider);
#                                               # CASES e.g. phase1 (default phase1,phase2,distill)
#   bash benchmarks/gpu_session.sh report       # Markdown report and plots of every CSV in the results
#
# Every phase builds first when the extension lacks CUDA kernels (a fresh machine), so each one
# also works alone. The machine has no package index: it uses its own torch/triton (python3) and
# builds in place with setup.py (no pip, no build isolation). Results go to $OUT when set (the
# device tool brings them back), else to benchmarks/results/; logs to $OUT/logs or ./gpu_logs.
# The device tool's $OUT starts empty in every call (at most 8 files come back), so each bench
# phase returns its own <device>.csv: append the rows of one to the other here (same header) and
# run `python -m benchmarks.report benchmarks/results/<device>.csv` locally.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
RES=${OUT:-benchmarks/results}
LOGS=${OUT:+$OUT/logs}
LOGS=${LOGS:-gpu_logs}
case "${1:-}" in   # the usage text for anything else, before any folder is made
  build-test|test-train|test-all|bench-ops|bench-losses|bench-encoder|bench-step|report) ;;
  *) sed -n '2,23p' "$0"; exit 2 ;;
esac
mkdir -p "$RES" "$LOGS"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

has_cuda_build() {
  "$PY" -c 'import sys, skelfast._extension as e; sys.exit(0 if e.has_cuda_kernels() else 1)'
}

build() {
  if has_cuda_build 2>/dev/null; then return; fi
  echo "== build (CUDA) $(date -u +%T)"
  SKELFAST_FORCE_CUDA=1 MAX_JOBS=${MAX_JOBS:-16} "$PY" setup.py build_ext --inplace >"$LOGS/build.log" 2>&1 \
    || { tail -40 "$LOGS/build.log"; exit 1; }
  echo "   built $(date -u +%T)"
}

# The device tool stops a command at 600 s: pytest gets what is left of CALL_S after the build
# (a fresh machine spends ~3 minutes building), so its summary still comes back.
CALL_S=${CALL_S:-570}
pytest_run() {  # pytest_run SECONDS LOGNAME ARGS...
  local secs=$1 log=$2
  shift 2
  local left=$((CALL_S - SECONDS))
  if [ "$left" -lt "$secs" ]; then secs=$left; fi
  echo "== pytest (${secs}s at most) $(date -u +%T)"
  SKELFAST_QUIET_IMPORT=1 timeout "$secs" "$PY" -m pytest -q -ra -p no:cacheprovider "$@" 2>&1 \
    | tee "$LOGS/$log" | tail -30
}

bench() {  # bench LOGNAME TAIL MODULE ARGS...: a failing benchmark is reported and the next one still runs
  local log=$1 n=$2
  shift 2
  # stopped before the device tool's limit, so the summary and the rows written so far come back
  # (bench_losses and bench_step write their CSV case by case)
  local left=$((CALL_S - SECONDS))
  if [ "$left" -lt 20 ]; then echo "== $1 skipped: ${left}s left of this call"; return; fi
  timeout "$left" "$PY" -m "$@" --device cuda --out-dir "$RES" 2>&1 | tee "$LOGS/$log" | tail -"$n" \
    || echo "== $1 exited with status $? (124: stopped at the time limit; log: $log)"
}

case "${1:-}" in
  build-test)
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$LOGS/gpu.txt"
    build
    "$PY" -m skelfast.info | tee "$LOGS/info.txt"
    # does an error thrown inside a C++ kernel reach Python here? (torch 2.11 segfaulted: tests/_common.py)
    probe=$(PYTHONPATH="$PWD/tests:$PYTHONPATH" "$PY" -c 'import _common; print(_common.KERNEL_ERROR_PROBE)')
    { SKELFAST_QUIET_IMPORT=1 "$PY" -X faulthandler -c "$probe" 2>&1 | tail -25; echo "probe exit ${PIPESTATUS[0]}"
      if command -v gdb >/dev/null; then
        SKELFAST_QUIET_IMPORT=1 timeout 120 gdb -q -batch -ex run -ex bt --args "$PY" -c "$probe" 2>&1 | tail -40
      fi; } | tee "$LOGS/kernel_error_probe.txt" || true
    # files parametrised over the devices seen (tests/_common.py DEVICES) or holding @pytest.mark.cuda tests
    pytest_run 480 pytest_gpu.txt tests/test_graph_conv.py tests/test_modalities_op.py tests/test_losses_op.py \
      tests/test_batched_encoder.py tests/test_epilogue.py tests/test_batch_norm_relu.py tests/test_models_fused.py \
      tests/test_backend.py \
      tests/triton tests/data/test_data_augment.py
    ;;
  test-train)
    build
    # the trainer's GPU switches (--amp bf16, --compile, --cuda-graphs) end to end, CPU/GPU parity
    pytest_run 570 pytest_train_gpu.txt tests/train/test_train_gpu.py
    ;;
  test-all)
    build
    pytest_run 570 pytest_all.txt tests
    ;;
  bench-ops)
    build
    for b in bench_modalities bench_moco bench_epilogue; do
      echo "== $b $(date -u +%T)"
      bench "$b.txt" 25 "benchmarks.$b"
    done
    ;;
  bench-losses)
    build
    # each (case, K) compiles its torch.compile baseline afresh (static shapes): 9 compiles in all
    cases=${2:-phase1,phase2,distill}
    bench "bench_losses_${cases//,/_}.txt" 30 benchmarks.bench_losses --cases "$cases"
    ;;
  bench-encoder)
    build
    # one process per size: each writes its rows, so a time limit keeps the finished size
    bench bench_encoder_64.txt 20 benchmarks.bench_encoder --sizes 64
    bench bench_encoder_128.txt 25 benchmarks.bench_encoder --sizes 128 --last-block
    ;;
  bench-step)
    build
    # one case per device call fits its 10 minutes (three compiled providers each, and the checked
    # first step at dropout 0 compiles them once more): bench-step phase1, then phase2, distill
    cases=${2:-phase1,phase2,distill}
    bench "bench_step_${cases//,/_}.txt" 30 benchmarks.bench_step --cases "$cases"
    ;;
  report)
    shopt -s nullglob
    csvs=("$RES"/*.csv)
    [ ${#csvs[@]} -gt 0 ] || { echo "no CSV in $RES"; exit 1; }
    for f in "${csvs[@]}"; do "$PY" -m benchmarks.report "$f"; done
    ;;
  *)
    sed -n '2,23p' "$0"
    exit 2
    ;;
esac
