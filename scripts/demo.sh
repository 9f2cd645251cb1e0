#!/usr/bin/env bash
# make demo: a local cluster (coordinator + 4 UCX workers) trains the toy task through the
# cluster — all three methods at once (configs/models/combined.yaml) — then stops cleanly.
set -euo pipefail
build=${1:-build}
model=${DEMO_MODEL:-configs/models/combined.yaml}
steps=${DEMO_STEPS:-800}
log=$(mktemp)
"$build/switchyard" up --config configs/local.yaml >"$log" 2>&1 &
up_pid=$!
cleanup() {
  if kill -0 "$up_pid" 2>/dev/null; then kill -INT "$up_pid"; wait "$up_pid" || true; fi
  rm -f "$log"
}
trap cleanup EXIT
for _ in $(seq 1 600); do
  grep -q "cluster ready" "$log" && break
  kill -0 "$up_pid" 2>/dev/null || { cat "$log"; echo "demo: switchyard up failed" >&2; exit 1; }
  sleep 0.1
done
cat "$log"
endpoint=$(awk '/coordinator listening on/ {print $4}' "$log")
echo "== training $model through the cluster at $endpoint"
"$build/switchyard" train-toy --config "$model" --cluster "$endpoint" --steps "$steps"
echo "== cluster status after training"
"$build/switchyard" status --cluster "$endpoint"
echo "== stopping the cluster"
kill -INT "$up_pid"
wait "$up_pid"
tail -n 2 "$log"
trap - EXIT
rm -f "$log"
