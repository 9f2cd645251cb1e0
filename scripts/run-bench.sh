#!/usr/bin/env bash
# make bench: every benchmark, then the headline `name: value` lines together at the end.
set -euo pipefail
build=${1:-build}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
echo "== layer benchmarks ($(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs))"
"$build/bench/bench_layer" | tee "$out/layer.txt"
if [ -x scripts/bench-exchange.sh ]; then
  echo "== exchange benchmark"
  scripts/bench-exchange.sh "$build" | tee "$out/exchange.txt"
fi
echo
echo "== headline figures"
cat "$out"/*.txt | grep -E '^[a-z0-9_]+: [-0-9.e+]+$'
