#!/usr/bin/env bash
# Runs a command with OPENBLAS_CORETYPE set when OpenBLAS would fall back to its generic
# Prescott (SSE3) kernels on a CPU that has AVX-512 or AVX2: OpenBLAS 0.3.21 does not know the
# CPU model of some virtual machines ("Intel(R) Xeon(R) Processor"), and there its sgemm ran
# 3.4x slower (measured: the small bench_torch layer step 166 ms Prescott, 49 ms SkylakeX).
# A value the caller set is kept. Every process of one run sees the same kernels, so results
# that must be bit-identical across processes stay so.
#   scripts/with-blas-core.sh COMMAND [ARGS...]
set -euo pipefail
if [ -z "${OPENBLAS_CORETYPE:-}" ]; then
  lib=$(ldconfig -p 2>/dev/null | awk '/libopenblas\.so\.0 / && !found {print $NF; found = 1}' || true)
  core=""
  if [ -n "$lib" ]; then
    core=$(OPENBLAS_VERBOSE=2 /usr/bin/python3 -c "import ctypes; ctypes.CDLL('$lib')" 2>&1 | awk '/^Core:/ && !found {print $2; found = 1}' || true)
  fi
  if [ "$core" = "Prescott" ]; then
    flags=$(grep -m1 '^flags' /proc/cpuinfo || true)
    if [[ " $flags " == *" avx512f "* && " $flags " == *" avx512bw "* && " $flags " == *" avx512vl "* ]]; then
      export OPENBLAS_CORETYPE=SkylakeX
    elif [[ " $flags " == *" avx2 "* && " $flags " == *" fma "* ]]; then
      export OPENBLAS_CORETYPE=Haswell
    fi
  fi
fi
exec "$@"
