// Device-side helpers shared by the kernels of kernels/cuda: launch geometry and a
// deterministic block reduction. Included by .cu files only.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

namespace sy::cuda {

// Every kernel runs blocks of kThreads threads (a multiple of the warp size).
constexpr unsigned kThreads = 256;

// Blocks for a grid-stride loop over n elements (capped: the loop covers the rest).
inline unsigned grid_for(int64_t n) {
  return static_cast<unsigned>(std::min<int64_t>((n + kThreads - 1) / kThreads, 1 << 20));
}

// for (i = this thread's first; i < n; i += all threads)
#define SY_GRID_STRIDE(i, n)                                                             \
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(blockDim.x) * gridDim.x)

// Sum of v over the block, returned to every thread. Every thread of the block must call it
// (uniform control flow); the order of additions is fixed, so results are deterministic.
template <class T>
__device__ T block_sum(T v) {
  __shared__ T part[32];
  const unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  if (lane == 0) part[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < (blockDim.x + 31) / 32 ? part[lane] : T(0);
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
    if (lane == 0) part[0] = v;
  }
  __syncthreads();
  const T total = part[0];
  __syncthreads();  // part is reused by the next call
  return total;
}

__device__ inline float sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }

}  // namespace sy::cuda
