// Packing token rows by expert (gather) and unpacking them (scatter-add), as cpu/dispatch.cc.
// The index arrays are device memory here (the DispatchLayout's rows, uploaded by the caller).
#include "cuda_ops.h"
#include "device.cuh"

namespace sy::cuda {
namespace {

// dst[r] = src[index[r]]
__global__ void gather_rows_kernel(const float* src, int64_t d, const int64_t* index, int64_t rows, float* dst) {
  SY_GRID_STRIDE(k, rows * d) dst[k] = src[index[k / d] * d + k % d];
}

// dst[index[r]] += src[r]; the indices of one call are distinct, so no two threads meet.
__global__ void scatter_add_rows_kernel(const float* src, int64_t d, const int64_t* index, int64_t rows, float* dst) {
  SY_GRID_STRIDE(k, rows * d) dst[index[k / d] * d + k % d] += src[k];
}

}  // namespace

void exec(const Context& ctx, const GatherRowsArgs& a, void*) {
  if (a.rows == 0 || a.d == 0) return;
  gather_rows_kernel<<<grid_for(a.rows * a.d), kThreads, 0, ctx.stream>>>(a.src, a.d, a.index, a.rows, a.dst);
  check_launch("gather_rows_kernel");
}

void exec(const Context& ctx, const ScatterAddRowsArgs& a, void*) {
  if (a.rows == 0 || a.d == 0) return;
  scatter_add_rows_kernel<<<grid_for(a.rows * a.d), kThreads, 0, ctx.stream>>>(a.src, a.d, a.index, a.rows, a.dst);
  check_launch("scatter_add_rows_kernel");
}

}  // namespace sy::cuda
