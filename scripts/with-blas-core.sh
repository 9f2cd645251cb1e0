#!/usr/bin/env bash
# Runs a command with OPENBLAS_CORETYPE set where OpenBLAS 0.3.21 picks slower kernels than the
# CPU can run:
#  - its generic Prescott (SSE3) kernels on a CPU with AVX-512 or AVX2: it does not know the CPU
#    model of some virtual machines ("Intel(R) Xeon(R) Processor"); there its sgemm ran 3.4x
#    slower (the small bench_torch layer step: 166 ms Prescott, 49 ms SkylakeX);
#  - its AVX2 Haswell kernels on an AVX-512 AMD EPYC (it maps Zen 4 to Haswell): the co-located
#    4-rank step took 55-62 ms with Haswell, 41 ms with SkylakeX (PyTorch's: 76-83 and 65-72).
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
  flags=$(grep -m1 '^flags' /proc/cpuinfo || true)
  avx512=0
  [[ " $flags " == *" avx512f "* && " $flags " == *" avx512bw "* && " $flags " == *" avx512vl "* ]] && avx512=1
  if [ "$core" = "Prescott" ] || [ "$core" = "Haswell" ] || [ "$core" = "Zen" ]; then
    if [ "$avx512" = 1 ]; then
      export OPENBLAS_CORETYPE=SkylakeX
    elif [ "$core" = "Prescott" ] && [[ " $flags " == *" avx2 "* && " $flags " == *" fma "* ]]; then
      export OPENBLAS_CORETYPE=Haswell
    fi
  fi
fi
exec "$@"
