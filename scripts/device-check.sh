#!/usr/bin/env bash
# The prepared GPU check of issue 15 (CUDA kernels against the CPU reference), for ONE short
# run on the device machine. Everything is built here; the device gets a bundle.
#
# Here (the CPU machine, repository root), once per build:
#   cmake --build build-cuda --target test_backend_ops test_backends test_layer_device switchyard bench_gpu
#   scripts/gather-device-libs.sh build-cuda device-libs      # device-libs/bundle.tar.gz, ~22 MiB
# There, through the device tool (about 2-4 minutes on an H200; leave time for a rerun):
#   run(command="scripts/device-check.sh", carry=["device-libs"], timeout_s=420)
#   (the tests themselves take well under a minute; the timeouts below bound a hang)
#   scripts/device-check.sh --sanitize    also runs the CUDA Compare cases under compute-sanitizer
#                                         memcheck (Firecracker machines only; a few minutes more)
#   scripts/device-check.sh --no-bench    the tests only
#
# Steps: the machine (nvidia-smi -L, driver, compute capability); the libraries (the bundle's,
# then cuBLAS and NCCL from the device image, found with ldconfig or under /usr/local/cuda and
# Python's nvidia packages; ldd of every binary must resolve); `switchyard backends`;
# test_backends (softmax and FFN forward, every backend); test_backend_ops filtered to the cuda
# rows (every op of ops.h against the CPU, and every backward against finite differences);
# test_layer_device (the layer engine on cuda against the CPU engine, every shipped config,
# configs from ./configs/models; also a GPU worker's expert store against the CPU store); with a
# device, `switchyard train-toy --backend cuda` (20 steps) and scripts/cluster-loss-check.sh (a
# cluster of one GPU worker against one cpu worker, 10 steps of train-toy --cluster);
# then the benchmarks (unless --no-bench; they run even after a failed test, their numbers then
# only timings): bench_gpu (the grouped FFN against dense cuBLAS, the NCCL exchange against raw
# NCCL) and bench/bench_gpu_torch.py (the layer against PyTorch eager, the image's python3);
# their headline `name: value` lines are printed again at the end. Each binary runs under
# `timeout`. Expected on an H200: tests under a minute, benchmarks about one more (bounded at 2
# and 4 minutes). The binaries are Debian 12 builds: they need glibc
# >= 2.34 there (libstdc++ >= GCC 11's, or the bundle's fallback, which needs glibc 2.36).
#
# Writes into $OUT (./device-check-out when OUT is unset): summary.txt, env.log, libs.log,
# backends.log, test_backends.log, test_backend_ops.log, test_backend_ops.xml, sanitizer.log,
# test_layer_device.log/.xml, train_toy_cuda.log, cluster_cuda.log, bench_gpu.log, bench_gpu_torch.log, headlines.txt.
# Exit status:
#   0  a CUDA device was used and no test or benchmark failed
#   1  a test or benchmark failed or timed out (summary.txt lists the failures)
#   2  set-up: the bundle is missing, or a binary's libraries do not resolve on this machine
#   3  no usable CUDA device: every step ran, the CUDA cases reported themselves skipped
#      (what a machine without a GPU, like the build machine, answers)
set -uo pipefail

bundle=${SY_DEVICE_BUNDLE:-device-libs}
out=${OUT:-device-check-out}
sanitize=0
bench=1
for arg in "$@"; do
  case $arg in
    --sanitize) sanitize=1 ;;
    --no-bench) bench=0 ;;
    *) echo "device-check: unknown argument $arg (--sanitize, --no-bench)" >&2; exit 2 ;;
  esac
done
mkdir -p "$out"
summary=$out/summary.txt
: >"$summary"
note() { echo "$*" | tee -a "$summary"; }

if [ ! -f "$bundle/bundle.tar.gz" ]; then
  note "device-check: no $bundle/bundle.tar.gz (run scripts/gather-device-libs.sh here and carry $bundle)"
  exit 2
fi
unpacked=$(mktemp -d "${TMPDIR:-/tmp}/sy-device-bundle.XXXXXX")
trap 'rm -rf "$unpacked"' EXIT
tar xzf "$bundle/bundle.tar.gz" -C "$unpacked" || {
  note "device-check: could not unpack $bundle/bundle.tar.gz"
  exit 2
}
bundle=$unpacked
bin=$bundle/bin

# ---- the machine ----
{
  date -u
  uname -a
  nvidia-smi -L
  nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv
  command -v nvcc >/dev/null && nvcc --version | tail -1
} >"$out/env.log" 2>&1
note "gpu: $(nvidia-smi -L 2>/dev/null | head -1 || true)"

# ---- libraries: the bundle's, then the CUDA libraries of the image ----
lib_dirs() {  # directories holding $1 that the dynamic loader does not already know
  ldconfig -p 2>/dev/null | grep -q " $1 " && return
  for d in /usr/local/cuda/lib64 /usr/local/cuda/lib /usr/local/cuda/targets/x86_64-linux/lib; do
    [ -e "$d/$1" ] && { echo "$d"; return; }
  done
  find /usr/local/lib /usr/lib/python3* /opt -maxdepth 9 -name "$1" -printf '%h\n' 2>/dev/null | head -1
}
extra=""
for l in libcublas.so.13 libcublasLt.so.13 libnccl.so.2; do
  d=$(lib_dirs "$l")
  [ -n "$d" ] && [[ ":$extra:" != *":$d:"* ]] && extra="$extra:$d"
done
# Only the bundle's binaries see this path (the image's own tools keep their libraries).
libpath="$bundle/lib$extra${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
unresolved() {
  for b in "$bin"/*; do LD_LIBRARY_PATH=$libpath ldd "$b" | grep 'not found' | sed "s|^|$(basename "$b"): |"; done
}
if [ -n "$(unresolved)" ]; then  # an image without these: the ones from the build machine
  libpath="$libpath:$bundle/fallback"
  note "libs: using the bundle's libstdc++/libgcc_s/libgomp fallback"
fi
{
  echo "LD_LIBRARY_PATH=$libpath"
  for b in "$bin"/*; do echo "== $(basename "$b")"; LD_LIBRARY_PATH=$libpath ldd "$b"; done
} >"$out/libs.log" 2>&1
missing=$(unresolved)
missing_core=$(echo "$missing" | grep -E '^test_backend' || true)
[ -n "$missing" ] && note "libs: unresolved: $(echo "$missing" | tr '\n' ' ')"
if [ -n "$missing_core" ]; then
  note "device-check: the test binaries cannot load here (libs.log)"
  exit 2
fi

# ---- the checks ----
status=0
step() {  # step NAME TIMEOUT_S COMMAND...: runs it, logs to NAME.log, records its exit status
  local name=$1 limit=$2
  shift 2
  timeout "$limit" env LD_LIBRARY_PATH="$libpath" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  if [ $rc -eq 124 ]; then
    note "$name: TIMED OUT after ${limit}s"
  else
    note "$name: exit $rc"
  fi
  return $rc
}
gtest_counts() {  # the gtest totals of a log: passed, skipped, failed
  local log=$1
  local p s f
  p=$(grep -oE '^\[  PASSED  \] [0-9]+' "$log" | grep -oE '[0-9]+$' || true)
  s=$(grep -oE '^\[  SKIPPED \] [0-9]+ test' "$log" | grep -oE '[0-9]+' || true)
  f=$(grep -oE '^\[  FAILED  \] [0-9]+ test' "$log" | grep -oE '[0-9]+' || true)
  note "  passed ${p:-0}, skipped ${s:-0}, failed ${f:-0}"
  grep -E '^\[  FAILED  \] [A-Za-z]' "$log" | sort -u | sed 's/^/  /' | tee -a "$summary"
}

if [[ $missing != *switchyard:* ]]; then
  step backends 60 "$bin/switchyard" backends
  sed 's/^/  /' "$out/backends.log" | tee -a "$summary"
else
  note "backends: skipped (the CLI's libraries do not resolve here: libs.log)"
fi

step test_backends 120 "$bin/test_backends" || status=1
gtest_counts "$out/test_backends.log"

filter='BackendOps/*.Op/cuda_*:BackendOps.*'
step test_backend_ops 360 "$bin/test_backend_ops" --gtest_filter="$filter" \
  --gtest_output="xml:$out/test_backend_ops.xml" || status=1
gtest_counts "$out/test_backend_ops.log"

step test_layer_device 240 env SY_MODEL_CONFIGS="$PWD/configs/models" "$bin/test_layer_device" \
  --gtest_output="xml:$out/test_layer_device.xml" || status=1
gtest_counts "$out/test_layer_device.log"

no_device=0
grep -q "compiled but not usable here" "$out/test_backend_ops.log" && no_device=1

if [ $no_device -eq 0 ] && [[ $missing != *switchyard:* ]]; then
  step train_toy_cuda 180 "$bin/switchyard" train-toy --config configs/models/combined.yaml --steps 20 \
    --no-progress --backend cuda || status=1
  tail -3 "$out/train_toy_cuda.log" | sed 's/^/  /' | tee -a "$summary"
  # a GPU worker (switchyard up, cluster.worker_device: cuda) against a cpu worker, 10 steps
  step cluster_cuda 180 scripts/cluster-loss-check.sh "$bin/switchyard" cuda 10 configs/models/combined.yaml || status=1
  tail -3 "$out/cluster_cuda.log" | sed 's/^/  /' | tee -a "$summary"
fi

if [ $sanitize -eq 1 ] && [ $no_device -eq 0 ]; then
  if command -v compute-sanitizer >/dev/null; then
    step sanitizer 300 compute-sanitizer --tool memcheck --error-exitcode 99 \
      "$bin/test_backend_ops" --gtest_filter='BackendOps/Compare.Op/cuda_*' || status=1
    grep -E 'ERROR SUMMARY|Invalid|out of bounds' "$out/sanitizer.log" | head -20 | sed 's/^/  /' | tee -a "$summary"
  else
    note "sanitizer: compute-sanitizer is not on PATH"
  fi
fi

# ---- the benchmarks ----
# Each is bounded by its own limit and by what is left of SY_DEVICE_CHECK_BUDGET_S (default 400 s,
# counted from the script's start), so the whole check stays inside a 420 s device run.
budget=${SY_DEVICE_CHECK_BUDGET_S:-400}
bench_limit() {  # bench_limit WANTED_S: prints min(WANTED_S, budget left - 10 s), or 0 below 20 s
  local left=$((budget - SECONDS - 10))
  [ "$left" -gt "$1" ] && left=$1
  [ "$left" -lt 20 ] && left=0
  echo "$left"
}
if [ $bench -eq 1 ]; then
  if [ ! -x "$bin/bench_gpu" ]; then
    note "bench_gpu: not in the bundle (gather-device-libs.sh of a CUDA build adds it)"
  elif [[ $missing == *bench_gpu:* ]]; then
    note "bench_gpu: skipped (its libraries do not resolve here: libs.log)"
  else
    # the grouped FFN (E=16, 16384 rows, d=1024 f=2816) vs dense cuBLAS, then the exchange
    limit=$(bench_limit 120)
    if [ "$limit" -gt 0 ]; then
      step bench_gpu "$limit" "$bin/bench_gpu" all || status=1
    else
      note "bench_gpu: skipped (the ${budget}s budget is spent: ${SECONDS}s so far)"
    fi
    grep -vE '^(gpu|torch)_[a-z0-9_]+: ' "$out/bench_gpu.log" | sed 's/^/  /' | tee -a "$summary"
    # the image's python3 (CUDA PyTorch) with its own libraries; bench_gpu gets the bundle's
    limit=$(bench_limit 240)
    if ! command -v python3 >/dev/null; then
      note "bench_gpu_torch: no python3 here"
    elif [ "$limit" -eq 0 ]; then
      note "bench_gpu_torch: skipped (the ${budget}s budget is spent: ${SECONDS}s so far)"
    else
      timeout "$limit" env PYTHONUNBUFFERED=1 SY_BENCH_GPU_LD_LIBRARY_PATH="$libpath" \
        python3 bench/bench_gpu_torch.py --bench-gpu "$bin/bench_gpu" >"$out/bench_gpu_torch.log" 2>&1
      rc=$?
      if [ $rc -eq 124 ]; then note "bench_gpu_torch: TIMED OUT after ${limit}s"; else note "bench_gpu_torch: exit $rc"; fi
      [ $rc -ne 0 ] && status=1
      grep -E '^(layer|gpu:)' "$out/bench_gpu_torch.log" | sed 's/^/  /' | tee -a "$summary"
    fi
  fi
  # the headline figures, and why any was not measured
  cat "$out"/bench_gpu*.log 2>/dev/null | grep -E '^(gpu|torch)_[a-z0-9_]+: ' >"$out/headlines.txt" || true
fi

if [ $bench -eq 1 ] && [ -s "$out/headlines.txt" ]; then
  note "== headline figures"
  tee -a "$summary" <"$out/headlines.txt"
fi
if [ $status -ne 0 ]; then
  note "device-check: FAILED (exit 1)"
  exit 1
fi
if [ $no_device -eq 1 ]; then
  note "device-check: no usable CUDA device: the CUDA cases were skipped (exit 3)"
  exit 3
fi
note "device-check: passed on the device (exit 0)"
exit 0
