#!/usr/bin/env bash
# Learning check for one model config: `switchyard train-toy` with its default steps must
# end with loss_drop >= 3 (issue 3). Usage: check-train-toy.sh SWITCHYARD_BINARY CONFIG
set -euo pipefail
bin=$1
config=$2
out=$("$bin" train-toy --config "$config" --no-progress)
echo "$out"
drop=$(echo "$out" | awk '/^loss_drop: /{print $2}')
[ -n "$drop" ] || { echo "no loss_drop line" >&2; exit 1; }
awk -v d="$drop" 'BEGIN { exit !(d >= 3) }' || { echo "loss_drop $drop < 3 for $config" >&2; exit 1; }
