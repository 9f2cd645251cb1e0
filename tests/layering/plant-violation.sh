#!/usr/bin/env bash
# Copies the folders the layering check reads, plants an upward include (engine → client and
# kernels → transport, one at a time), and expects the check to fail naming the file; the
# unmodified copy must pass.
set -euo pipefail
src=$1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp -r "$src/core" "$src/kernels" "$src/transport" "$src/placement" "$src/scheduler" "$src/runtime" "$tmp/"
check="$src/scripts/check-layering.sh"
"$check" "$tmp" || { echo "the unmodified tree fails the check"; exit 1; }
for plant in "runtime/engine/src/moe_model.cc:switchyard/client/cluster_client.h" \
             "kernels/cpu/router.cc:switchyard/transport/transport.h"; do
  file=${plant%%:*}; header=${plant#*:}
  cp "$src/$file" "$tmp/$file"
  sed -i "1i #include \"$header\"" "$tmp/$file"
  if out=$("$check" "$tmp" 2>&1); then echo "planted $header in $file: check passed"; exit 1; fi
  grep -q "$file:1: " <<<"$out" || { echo "the check did not name $file:1: $out"; exit 1; }
  cp "$src/$file" "$tmp/$file"
done
echo "layering check fails on both planted upward includes"
