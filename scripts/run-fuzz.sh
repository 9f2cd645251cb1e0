#!/usr/bin/env bash
# Runs every libFuzzer harness of a SWITCHYARD_FUZZ build for a while; fails if any finds a
# crash, a hang, a sanitizer report or a contract violation (fuzz/fuzz_support.h).
#   scripts/run-fuzz.sh BUILD_DIR SECONDS_PER_TARGET [target...]
# Seeds: fuzz/corpus/<target>/ (read only). What a run discovers is kept in
# BUILD_DIR/fuzz-corpus/<target>/ for the next run; crashing inputs go to BUILD_DIR/fuzz-artifacts/.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:?usage: run-fuzz.sh BUILD_DIR SECONDS [target...]}
seconds=${2:?usage: run-fuzz.sh BUILD_DIR SECONDS [target...]}
shift 2
targets=("$@")
if ((${#targets[@]} == 0)); then
  targets=(model_config cluster_config placement_yaml safetensors npy control_frame server_messages worker_request)
fi
mkdir -p "$build/fuzz-artifacts"
failed=()
for t in "${targets[@]}"; do
  exe="$build/fuzz/fuzz_$t"
  [ -x "$exe" ] || { echo "run-fuzz: $exe is not built" >&2; exit 2; }
  work="$build/fuzz-corpus/$t"
  mkdir -p "$work"
  log="$build/fuzz-artifacts/$t.log"
  # -rss_limit_mb / -malloc_limit_mb: a parser that allocates gigabytes for a small input is a bug.
  ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=0 UBSAN_OPTIONS=print_stacktrace=1 \
    "$exe" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=1024 -max_len=8192 \
    -print_final_stats=1 -artifact_prefix="$build/fuzz-artifacts/$t-" "$work" "$root/fuzz/corpus/$t" >"$log" 2>&1
  rc=$?
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  corpus=$(find "$work" -type f | wc -l)
  if ((rc != 0)); then
    echo "fuzz_$t: FAILED (exit $rc) after ${runs:-?} runs; see $log"
    grep -E "BUG|ERROR|SUMMARY|Test unit written" "$log" | head -8 | sed 's/^/  /'
    failed+=("$t")
  else
    echo "fuzz_$t: ok, ${runs:-?} runs in ${seconds} s (${rate:-?} exec/s), corpus $corpus inputs"
  fi
done
if ((${#failed[@]} > 0)); then
  echo "run-fuzz: failed: ${failed[*]}" >&2
  exit 1
fi
