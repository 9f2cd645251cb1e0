// Dense building blocks: the error model, element-wise add and the row-major GEMMs on cuBLAS
// (the handle is in CUBLAS_PEDANTIC_MATH: true FP32, no TF32), as cpu/dense.cc.
#include <climits>
#include <string>

#include "cuda_ops.h"
#include "device.cuh"
#include "switchyard/core/error.h"

namespace sy::cuda {

void check_cuda(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw_runtime_error(std::string("CUDA ") + what + ": " + cudaGetErrorString(err));
}

void check_cublas(cublasStatus_t status, const char* what) {
  if (status != CUBLAS_STATUS_SUCCESS)
    throw_runtime_error(std::string("cuBLAS ") + what + ": " + cublasGetStatusString(status));
}

void check_launch(const char* kernel) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) throw_runtime_error(std::string("CUDA launch of ") + kernel + ": " + cudaGetErrorString(err));
}

namespace {

__global__ void add_kernel(const float* x, int64_t n, float* y) { SY_GRID_STRIDE(i, n) y[i] += x[i]; }

int dim(int64_t v, const char* what) {
  if (v > INT_MAX)
    throw_runtime_error(std::string("cuBLAS GEMM: ") + what + " = " + std::to_string(v) + " exceeds int");
  return static_cast<int>(v);
}

// Column-major C[m, n] = op(A) op(B) (+ C): the row-major products below are their transposes.
void sgemm(const Context& ctx, cublasOperation_t ta, cublasOperation_t tb, int64_t m, int64_t n, int64_t k,
           const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  const float one = 1.0f;
  check_cublas(cublasSgemm(ctx.blas, ta, tb, dim(m, "m"), dim(n, "n"), dim(k, "k"), &one, a, dim(lda, "lda"), b,
                           dim(ldb, "ldb"), &beta, c, dim(ldc, "ldc")),
               "cublasSgemm");
}

}  // namespace

void fill_zero(const Context& ctx, float* p, int64_t n) {
  if (n > 0) check_cuda(cudaMemsetAsync(p, 0, static_cast<size_t>(n) * sizeof(float), ctx.stream), "cudaMemsetAsync");
}

void copy_floats(const Context& ctx, float* dst, const float* src, int64_t n) {
  if (n > 0)
    check_cuda(cudaMemcpyAsync(dst, src, static_cast<size_t>(n) * sizeof(float), cudaMemcpyDeviceToDevice, ctx.stream),
               "cudaMemcpyAsync D2D");
}

// y[n, out] = x[n, in] W[out, in]ᵀ: column-major yᵀ = W xᵀ.
void linear_forward(const Context& ctx, const float* x, int64_t n, int64_t in, const float* w, int64_t out, float* y,
                    bool accumulate) {
  if (n == 0 || out == 0) return;
  if (in == 0) {
    if (!accumulate) fill_zero(ctx, y, n * out);
    return;
  }
  sgemm(ctx, CUBLAS_OP_T, CUBLAS_OP_N, out, n, in, w, in, x, in, accumulate ? 1.0f : 0.0f, y, out);
}

// dx[n, in] (+)= dy[n, out] W[out, in]: column-major dxᵀ = Wᵀ dyᵀ.
void linear_backward_input(const Context& ctx, const float* dy, int64_t n, int64_t out, const float* w, int64_t in,
                           float* dx, bool accumulate) {
  if (n == 0 || in == 0) return;
  if (out == 0) {
    if (!accumulate) fill_zero(ctx, dx, n * in);
    return;
  }
  sgemm(ctx, CUBLAS_OP_N, CUBLAS_OP_N, in, n, out, w, in, dy, out, accumulate ? 1.0f : 0.0f, dx, in);
}

// dW[out, in] += dy[n, out]ᵀ x[n, in]: column-major dWᵀ = xᵀ dy.
void linear_backward_weight(const Context& ctx, const float* dy, int64_t n, int64_t out, const float* x, int64_t in,
                            float* dw) {
  if (n == 0 || in == 0 || out == 0) return;
  sgemm(ctx, CUBLAS_OP_N, CUBLAS_OP_T, in, out, n, x, in, dy, out, 1.0f, dw, in);
}

void exec(const Context& ctx, const AddInplaceArgs& a, void*) {
  if (a.n == 0) return;
  add_kernel<<<grid_for(a.n), kThreads, 0, ctx.stream>>>(a.x, a.n, a.y);
  check_launch("add_kernel");
}

void exec(const Context& ctx, const LinearForwardArgs& a, void*) {
  linear_forward(ctx, a.x, a.n, a.in, a.w, a.out, a.y, a.accumulate);
}

void exec(const Context& ctx, const LinearBackwardInputArgs& a, void*) {
  linear_backward_input(ctx, a.dy, a.n, a.out, a.w, a.in, a.dx, a.accumulate);
}

void exec(const Context& ctx, const LinearBackwardWeightArgs& a, void*) {
  linear_backward_weight(ctx, a.dy, a.n, a.out, a.x, a.in, a.dw);
}

}  // namespace sy::cuda
