#!/usr/bin/env bash
# make demo: a local cluster (coordinator + 4 UCX workers) holds the experts of a small
# byte-level MoE language model (python/examples/train_lm.py: PyTorch attention, Switchyard
# MoE FFN layers configured as configs/models/combined.yaml — all three methods at once) that
# trains on Debian's `fortunes` corpus for a few minutes; validation perplexity before and
# after, a generated sample, the cluster's status, then a clean stop.
# The former toy demo is `switchyard train-toy --config configs/models/combined.yaml`.
set -euo pipefail
build=${1:-build}
model=${DEMO_MODEL:-configs/models/combined.yaml}
steps=${DEMO_STEPS:-1500}
python=${PYTHON:-/usr/bin/python3}
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
echo "== training a byte-level MoE language model ($model layers) with its experts on the cluster at $endpoint"
SWITCHYARD_LIB="$build/libswitchyard.so" PYTHONPATH=python \
  "$python" python/examples/train_lm.py --moe "$model" --cluster "$endpoint" --steps "$steps" --sample 300
echo "== cluster status after training"
"$build/switchyard" status --cluster "$endpoint"
echo "== stopping the cluster"
kill -INT "$up_pid"
wait "$up_pid"
tail -n 2 "$log"
trap - EXIT
rm -f "$log"
