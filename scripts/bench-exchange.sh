#!/usr/bin/env bash
# Two-process exchange benchmark over UCX shared memory and TCP against ucx_perftest tag_bw.
# Usage: scripts/bench-exchange.sh [BUILD_DIR] [extra flags for `switchyard bench exchange`]
# Ends with `exchange_vs_ucx_shm: <r>` and `exchange_vs_ucx_tcp: <r>` (8 MiB per peer).
set -euo pipefail
BUILD=${1:-build}
shift || true
if ! command -v ucx_perftest >/dev/null; then
  echo "bench-exchange: ucx_perftest not found (Debian package ucx-utils)" >&2
  exit 1
fi
exec "$BUILD/switchyard" bench exchange --tls both --sizes 1,8,64 --repeats 3 "$@"
