#!/usr/bin/env bash
# Packs what scripts/device-check.sh needs on the device machine into one ignored folder, to
# be named in the device tool's `carry`: the test binaries, the CLI and bench_gpu of a CUDA build, and
# the shared libraries they load that the device image lacks (it has CUDA, cuBLAS, NCCL and
# PyTorch, but none of this machine's Debian packages: OpenBLAS, yaml-cpp, protobuf, UCX, ...).
#
#   scripts/gather-device-libs.sh [BUILD_DIR] [BUNDLE]     (defaults: build-cuda, device-libs)
#
# BUNDLE/bundle.tar.gz holds (gzip: OpenBLAS alone is 36 MiB unpacked, and what travels,
# working tree included, is at most 64 MiB):
#   bin/       the binaries, debug info stripped
#   lib/       every library ldd resolves, except the C library, the GPU driver and the CUDA
#              toolkit's own (cuBLAS, cudart, NCCL: the device has its own, too large to carry)
#   fallback/  libstdc++, libgcc_s and libgomp: used there only if the image's are missing or
#              too old (the device image is newer than Debian 12, so normally not)
# Prints the sizes; fails if the archive is over 48 MiB. Run from the repository root.
set -euo pipefail

build=${1:-build-cuda}
bundle=${2:-device-libs}
binaries=(tests/test_backend_ops tests/test_backends tests/test_layer_device switchyard bench/bench_gpu)

for b in "${binaries[@]}"; do
  [ -x "$build/$b" ] || { echo "gather-device-libs: $build/$b is missing: build it first" >&2; exit 2; }
done

rm -rf "$bundle"
mkdir -p "$bundle"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/bin" "$stage/lib" "$stage/fallback"

# Libraries that are never carried: glibc, the driver, the CUDA toolkit's.
skip='^(linux-vdso|ld-linux|libc\.so|libm\.so|libpthread|libdl\.so|librt\.so|libresolv|libutil|libcuda\.so|libnvidia|libcublas|libcublasLt|libcudart|libnccl)'
fallback='^(libstdc\+\+|libgcc_s|libgomp)'

for b in "${binaries[@]}"; do
  objcopy --strip-debug "$build/$b" "$stage/bin/$(basename "$b")"
  # "name => /path (addr)" lines; an unresolved library is an error here already.
  if ldd "$build/$b" | grep -q 'not found'; then
    echo "gather-device-libs: $b has unresolved libraries here:" >&2
    ldd "$build/$b" | grep 'not found' >&2
    exit 2
  fi
  ldd "$build/$b" | awk '/=> \// {print $1, $3}' | while read -r name path; do
    if [[ $name =~ $skip ]]; then continue; fi
    dest=lib
    if [[ $name =~ $fallback ]]; then dest=fallback; fi
    [ -e "$stage/$dest/$name" ] || cp -L "$path" "$stage/$dest/$name"
  done
done
# Shared objects carry no debug info there either.
find "$stage/lib" "$stage/fallback" -type f -name '*.so*' -exec strip --strip-debug {} +

du -sh "$stage"/bin "$stage"/lib "$stage"/fallback | sed "s|$stage/||"
tar czf "$bundle/bundle.tar.gz" -C "$stage" bin lib fallback
kib=$(du -sk "$bundle/bundle.tar.gz" | awk '{print $1}')
echo "gather-device-libs: $bundle/bundle.tar.gz is $((kib / 1024)) MiB (carry it: carry=[\"$bundle\"])"
if [ "$kib" -gt $((48 * 1024)) ]; then
  echo "gather-device-libs: over 48 MiB: with the working tree it may pass the device tool's 64 MiB" >&2
  exit 1
fi
