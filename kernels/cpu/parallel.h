// When the CPU kernels' loops use OpenMP threads.
#pragma once

#include <omp.h>

#include <cstdint>

namespace sy::cpu {

// A loop over fewer floats than this runs on the calling thread. It takes a few microseconds,
// less than waking a second thread; on a shared core, where the second thread waits for the
// core, far less: a 256-token serving request through the cluster took 28 ms at the median with
// two threads against 0.89 ms with one, on a machine with one core busy. Every loop this gates
// computes each iteration alone, so the numbers do not depend on the thread count.
constexpr int64_t kMinFloatsForThreads = int64_t{1} << 15;
inline bool worth_threads(int64_t floats) { return floats >= kMinFloatsForThreads; }

// f(begin, end) over [0, n): one contiguous range per OpenMP thread (a static schedule) when n
// is worth threads, else f(0, n) on the calling thread. For element-wise loops whose body is a
// function of its own, so that it can be SY_AVX2_CLONES (an OpenMP region's outlined body is
// built for the baseline only).
template <class F>
void for_ranges(int64_t n, F f) {
  if (!worth_threads(n)) return f(int64_t{0}, n);
#pragma omp parallel
  {
    const int64_t t = omp_get_thread_num(), threads = omp_get_num_threads();
    f(n * t / threads, n * (t + 1) / threads);
  }
}

// An AVX2 build of the function next to the baseline (x86-64-v2) one, picked when the library
// loads. AVX2 without FMA: both round every operation alike, so the numbers do not depend on
// the CPU. AdamW's loop ran 1.18 ms SSE, 0.76 ms AVX2 for an expert's 1.6M parameters here.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define SY_AVX2_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define SY_AVX2_CLONES
#endif

}  // namespace sy::cpu
