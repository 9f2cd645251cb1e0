#!/usr/bin/env bash
# Fails when a folder includes a header of a folder above it (README "Layout"): the build runs
# this on every build, so a lower target that reaches up breaks the build, not only a review.
#   scripts/check-layering.sh [root]     (root: the source tree, default: this checkout)
set -euo pipefail
root=${1:-$(cd "$(dirname "$0")/.." && pwd)}

# folder: the switchyard/<x>/ headers and generated protobuf headers it may include.
rules=(
  "core:core"
  "kernels:core kernels"
  "transport:core transport control.pb"
  "placement:core placement"
  "scheduler:core placement scheduler"
  "runtime/engine:core kernels engine"
  "runtime/launch:core launch"
  "runtime/wire:core transport placement wire cluster.pb control.pb"
  "runtime/coordinator:core transport placement wire coordinator cluster.pb"
  "runtime/worker:core kernels engine transport placement wire worker cluster.pb"
  "runtime/client:core kernels engine transport placement scheduler wire client cluster.pb"
  "runtime/capi:core kernels engine placement client"
)

bad=0
for rule in "${rules[@]}"; do
  folder=${rule%%:*}
  allowed=" ${rule#*:} "
  [ -d "$root/$folder" ] || continue
  while IFS= read -r hit; do
    file=${hit%%:*}
    rest=${hit#*:}; line=${rest%%:*}
    inc=$(sed -E 's/.*#include "([^"]+)".*/\1/' <<<"$rest")
    case "$inc" in
      switchyard/*/*) dep=$(cut -d/ -f2 <<<"$inc") ;;
      *.pb.h) dep=${inc%.h} ;;
      *) continue ;;  # a folder's own private headers
    esac
    if [[ "$allowed" != *" $dep "* ]]; then
      echo "layering: ${file#"$root"/}:$line: $folder may not include \"$inc\" (allowed: ${rule#*:})" >&2
      bad=1
    fi
  done < <(grep -rnE '^[[:space:]]*#include "' "$root/$folder" --include='*.h' --include='*.cc' --include='*.cu' || true)
done
exit $bad
