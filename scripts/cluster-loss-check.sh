#!/usr/bin/env bash
# A short training run through a local cluster whose workers hold their replicas on DEVICE, and
# the same run on cpu workers: prints both runs' eval_mse and exits 1 when they differ by more than 1e-4 relative (the GPU worker's FFN sums in another order than
# OpenBLAS). Used by scripts/device-check.sh on the GPU machine; runs anywhere with DEVICE=cpu
# (then the two runs must agree bit for bit up to the printed digits).
# Usage: scripts/cluster-loss-check.sh SWITCHYARD_BINARY DEVICE [STEPS] [MODEL_CONFIG]
set -uo pipefail
bin=$1
device=$2
steps=${3:-10}
model=${4:-configs/models/topk.yaml}
work=$(mktemp -d "${TMPDIR:-/tmp}/sy-cluster-check.XXXXXX")
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT

# run_on DEVICE: `train-toy --cluster` on a local cluster (SY_CHECK_WORKERS workers, default 1:
# one GPU each) of that device; its eval_mse line.
run_on() {
  local dev=$1 log=$work/up-$1.log
  printf 'cluster:\n  workers: %s\n  worker_device: %s\n' "${SY_CHECK_WORKERS:-1}" "$dev" >"$work/cluster-$dev.yaml"
  "$bin" up --config "$work/cluster-$dev.yaml" >"$log" 2>&1 &
  local up=$! endpoint=""
  for _ in $(seq 1 300); do
    endpoint=$(sed -n 's/^coordinator listening on //p' "$log" | head -1)
    grep -q "^cluster ready" "$log" 2>/dev/null && [ -n "$endpoint" ] && break
    kill -0 $up 2>/dev/null || break
    sleep 0.1
  done
  if [ -z "$endpoint" ]; then
    echo "cluster-loss-check: the $dev cluster did not start:" >&2
    cat "$log" >&2
    return 1
  fi
  "$bin" train-toy --config "$model" --cluster "$endpoint" --steps "$steps" --no-progress >"$work/train-$dev.log" 2>&1
  local rc=$?
  "$bin" shutdown --cluster "$endpoint" >/dev/null 2>&1
  wait $up 2>/dev/null
  [ $rc -eq 0 ] || { echo "cluster-loss-check: train-toy on the $dev cluster failed:" >&2; cat "$work/train-$dev.log" >&2; return 1; }
  grep "eval_mse" "$work/train-$dev.log" | sed "s/^/  $dev workers: /"
}

run_on "$device" || exit 1
run_on cpu || exit 1
# awk, not python: on the device machine this runs with the bundle's libraries first.
last() { sed -n 's/.*eval_mse \([-+0-9.eE]*\).*/\1/p' "$1" | tail -1; }
a=$(last "$work/train-$device.log")
b=$(last "$work/train-cpu.log")
[ -n "$a" ] && [ -n "$b" ] || { echo "cluster-loss-check: no eval_mse in a run's output" >&2; exit 1; }
awk -v a="$a" -v b="$b" 'BEGIN {
  d = a - b; if (d < 0) d = -d; s = b < 0 ? -b : b; if (s < 1e-30) s = 1e-30
  printf "cluster_loss_device_vs_cpu_relative: %.3g (device %s, cpu %s)\n", d / s, a, b
  exit (d / s <= 1e-4) ? 0 : 1
}'
