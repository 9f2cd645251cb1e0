#!/usr/bin/env bash
# Installs the Debian 12 packages Switchyard builds against, only those missing.
# Runs as root (or through sudo when available). Idempotent and quiet when all is present.
set -euo pipefail

packages=(
  build-essential cmake pkg-config
  libyaml-cpp-dev libopenblas-openmp-dev nlohmann-json3-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  libboost-dev libboost-system-dev protobuf-compiler libprotobuf-dev
  libucx-dev ucx-utils iproute2 libssl-dev
  libpng-dev                                # placement show --out heat.png
  python3-prometheus-client chromium python3-websocket   # tests: /metrics parser, the dashboard in a browser
  python3 python3-torch python3-yaml fortunes
  clang libclang-rt-14-dev libomp-14-dev   # make fuzz: clang, libFuzzer, OpenMP for clang
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
  exit 0
fi

echo "install-deps: installing ${missing[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null; then SUDO=sudo; else
    echo "install-deps: need root to apt-get install: ${missing[*]}" >&2
    exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
