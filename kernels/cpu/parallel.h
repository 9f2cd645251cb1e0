// When the CPU kernels' loops use OpenMP threads.
#pragma once

#include <cstdint>

namespace sy::cpu {

// A loop over fewer floats than this runs on the calling thread. It takes a few microseconds,
// less than waking a second thread; on a shared core, where the second thread waits for the
// core, far less: a 256-token serving request through the cluster took 28 ms at the median with
// two threads against 0.89 ms with one, on a machine with one core busy. Every loop this gates
// computes each iteration alone, so the numbers do not depend on the thread count.
constexpr int64_t kMinFloatsForThreads = int64_t{1} << 15;
inline bool worth_threads(int64_t floats) { return floats >= kMinFloatsForThreads; }

}  // namespace sy::cpu
