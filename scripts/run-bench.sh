#!/usr/bin/env bash
# make bench: every benchmark, then the headline `name: value` lines together at the end.
set -euo pipefail
build=${1:-build}
out=$(mktemp -d)
up_pid=""
cleanup() {
  if [ -n "$up_pid" ] && kill -0 "$up_pid" 2>/dev/null; then kill -INT "$up_pid"; wait "$up_pid" || true; fi
  rm -rf "$out"
}
trap cleanup EXIT
echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "== layer benchmarks"
"$build/bench/bench_layer" | tee "$out/layer.txt"
echo "== cluster vs single process"
"$build/bench/bench_cluster" | tee "$out/cluster.txt"
echo "== the PyTorch module against plain PyTorch and the engine alone"
SWITCHYARD_LIB="$build/libswitchyard.so" /usr/bin/python3 bench/bench_torch.py | tee "$out/torch.txt"
echo "== placement planner"
"$build/bench/bench_placement" | tee "$out/placement.txt"
echo "== serving through a local cluster"
"$build/switchyard" up --config configs/local.yaml >"$out/up.log" 2>&1 &
up_pid=$!
for _ in $(seq 1 600); do grep -q "cluster ready" "$out/up.log" && break; sleep 0.1; done
endpoint=$(awk '/coordinator listening on/ {print $4}' "$out/up.log")
"$build/switchyard" bench serve --cluster "$endpoint" --config configs/models/topk.yaml --clients 1,2,8 --requests 400 \
  | tee "$out/serve.txt"
kill -INT "$up_pid"; wait "$up_pid" || true; up_pid=""
echo "== live rebalancing (policy rebalance of a skewed job, migration bandwidth)"
"$build/switchyard" up --config configs/bench-rebalance.yaml >"$out/up-rebalance.log" 2>&1 &
up_pid=$!
for _ in $(seq 1 600); do grep -q "cluster ready" "$out/up-rebalance.log" && break; sleep 0.1; done
endpoint=$(awk '/coordinator listening on/ {print $4}' "$out/up-rebalance.log")
"$build/switchyard" bench rebalance --cluster "$endpoint" --config configs/models/topk.yaml | tee "$out/rebalance.txt"
kill -INT "$up_pid"; wait "$up_pid" || true; up_pid=""
echo "== co-located expert parallelism vs PyTorch expert parallelism over gloo (4 ranks, 3 rounds in turn)"
: >"$out/colocated-rounds.txt"
for round in 1 2 3; do
  "$build/switchyard" colocated --config configs/colocated.yaml --ranks 4 --steps 8 | grep -E '^(co-located|colocated_)' \
    | sed 's/^colocated_step_ms/ours/' | tee -a "$out/colocated-rounds.txt"
  /usr/bin/python3 bench/bench_torch_ep.py --ranks 4 --steps 8 | sed 's/^torch_ep_step_ms/torch/' | tee -a "$out/colocated-rounds.txt"
done
/usr/bin/python3 - "$out/colocated-rounds.txt" <<'PY' | tee "$out/colocated.txt"
import statistics, sys
v = {"ours": [], "torch": []}
for line in open(sys.argv[1]):
    key, _, value = line.partition(": ")
    if key in v: v[key].append(float(value))
ours, torch = statistics.median(v["ours"]), statistics.median(v["torch"])
print(f"colocated_step_ms: {ours:.1f}\ntorch_ep_step_ms: {torch:.1f}\ncolocated_vs_torch_ep: {torch / ours:.3f}")
PY
if [ -x "$build/bench/bench_gpu" ]; then  # CUDA builds: headline lines only where a GPU measured them
  echo "== GPU: grouped expert FFN vs dense cuBLAS, NCCL exchange vs raw NCCL, the layer vs PyTorch eager"
  "$build/bench/bench_gpu" | tee "$out/gpu.txt"
  /usr/bin/python3 bench/bench_gpu_torch.py --bench-gpu "$build/bench/bench_gpu" | tee "$out/gpu-torch.txt"
fi
if [ -x scripts/bench-exchange.sh ]; then
  echo "== exchange benchmark"
  scripts/bench-exchange.sh "$build" | tee "$out/exchange.txt"
fi
echo
echo "== headline figures"
cat "$out"/*.txt | grep -E '^[a-z0-9_]+: [-0-9.e+]+$'
