// The CUDA backend's internals (private to kernels/cuda): the error model, the per-backend
// stream and cuBLAS handle, workspace carving and uploads of host index structures, and one
// workspace()/exec() pair per device op of ops.h, defined in the .cu file of its role:
//
//   dense.cu      add_inplace, linear forward/backward (cuBLAS SGEMM, pedantic FP32: no TF32)
//   norm.cu       rmsnorm, layernorm forward/backward
//   router.cu     softmax forward/backward, gates_backward, load-balance and z losses, importance
//   dispatch.cu   gather_rows (pack), scatter_add_rows (unpack)
//   ffn.cu        expert FFN forward/backward (swiglu, gelu)
//   aggregate.cu  weighted sum, DAG aggregation, coefficient mix, forward/backward
//   optimizer.cu  AdamW
//   backend.cc    the Backend: memory, stream, can_implement/workspace_size/run dispatch
//
// Semantics, sizes and the layout of `saved` buffers are those of the sy::cpu function each
// op names (cpu_ops.h). Everything is enqueued on Context::stream; exec() returns without
// waiting except where its comment says it synchronizes (ops that return a host value).
// Host index structures (cpu::NodeList, cpu::Selection) are copied into the op's workspace
// with cudaMemcpyAsync: the caller keeps them alive and unchanged until synchronize().
// This header compiles as plain C++ (backend.cc) and under nvcc.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "switchyard/kernels/ops.h"

namespace sy::cuda {

// Throw sy runtime errors naming the call that failed.
void check_cuda(cudaError_t err, const char* what);
void check_cublas(cublasStatus_t status, const char* what);
// After a kernel launch: reports a bad launch configuration, naming the kernel.
void check_launch(const char* kernel);

// The stream every op of one backend runs on, and the cuBLAS handle bound to it.
struct Context {
  cudaStream_t stream = nullptr;
  cublasHandle_t blas = nullptr;
};

// Cuts an op's workspace into 256-byte aligned pieces in a fixed order. With base == nullptr
// it only measures: workspace() and exec() run the same carving code, so the size
// workspace_size() reports and the layout run() uses cannot drift apart.
class Carver {
 public:
  explicit Carver(void* base) : base_(static_cast<char*>(base)) {}
  template <class T>
  T* take(int64_t count) {
    const size_t offset = (used_ + 255) / 256 * 256;
    used_ = offset + static_cast<size_t>(count) * sizeof(T);
    return base_ ? reinterpret_cast<T*>(base_ + offset) : nullptr;
  }
  size_t bytes() const { return used_; }
  bool measuring() const { return base_ == nullptr; }

 private:
  char* base_;
  size_t used_ = 0;
};

// Copies a host vector into the next piece of the workspace (asynchronously; measuring: only
// reserves). Returns the device copy.
template <class T>
const T* upload(const Context& ctx, Carver& ws, const std::vector<T>& host) {
  T* dst = ws.take<T>(static_cast<int64_t>(host.size()));
  if (!ws.measuring() && !host.empty())
    check_cuda(cudaMemcpyAsync(dst, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice, ctx.stream),
               "cudaMemcpyAsync (index upload)");
  return dst;
}

// A cpu::NodeList on the device (aggregate.cu).
struct DeviceNodes {
  int64_t tokens = 0, nodes = 0;
  const int64_t* offsets = nullptr;  // [tokens + 1]
  const int64_t* row = nullptr;      // [nodes]
  const int64_t* slot = nullptr;     // [nodes]
  const float* gate = nullptr;       // [nodes]
};
DeviceNodes upload_nodes(const Context& ctx, Carver& ws, const cpu::NodeList& nodes);

// ---- building blocks shared by the ops (dense.cu, norm.cu) ----

// Row-major GEMMs with the cpu:: semantics and empty-shape rules (cpu/dense.cc).
void linear_forward(const Context& ctx, const float* x, int64_t n, int64_t in, const float* w, int64_t out, float* y,
                    bool accumulate);
void linear_backward_input(const Context& ctx, const float* dy, int64_t n, int64_t out, const float* w, int64_t in,
                           float* dx, bool accumulate);
void linear_backward_weight(const Context& ctx, const float* dy, int64_t n, int64_t out, const float* x, int64_t in,
                            float* dw);
void fill_zero(const Context& ctx, float* p, int64_t n);
void copy_floats(const Context& ctx, float* dst, const float* src, int64_t n);
void layernorm_forward(const Context& ctx, const float* x, int64_t n, int64_t d, const float* gamma, const float* beta,
                       float* y, float* mean, float* rstd);
void layernorm_backward(const Context& ctx, const float* dy, const float* x, int64_t n, int64_t d, const float* gamma,
                        const float* mean, const float* rstd, float* dx, float* dgamma, float* dbeta);

// ---- the ops: workspace bytes (ops without one have none) and execution ----

void exec(const Context& ctx, const AddInplaceArgs& a, void* ws);
void exec(const Context& ctx, const LinearForwardArgs& a, void* ws);
void exec(const Context& ctx, const LinearBackwardInputArgs& a, void* ws);
void exec(const Context& ctx, const LinearBackwardWeightArgs& a, void* ws);

void exec(const Context& ctx, const RmsNormForwardArgs& a, void* ws);
void exec(const Context& ctx, const RmsNormBackwardArgs& a, void* ws);
void exec(const Context& ctx, const LayerNormForwardArgs& a, void* ws);
void exec(const Context& ctx, const LayerNormBackwardArgs& a, void* ws);

void exec(const Context& ctx, const SoftmaxForwardArgs& a, void* ws);
void exec(const Context& ctx, const SoftmaxBackwardArgs& a, void* ws);
size_t workspace(const GatesBackwardArgs& a);
void exec(const Context& ctx, const GatesBackwardArgs& a, void* ws);
// Synchronizes when a.loss is set (the loss is copied back to the host).
size_t workspace(const LoadBalanceLossArgs& a);
void exec(const Context& ctx, const LoadBalanceLossArgs& a, void* ws);
// Synchronizes when a.loss is set.
size_t workspace(const ZLossArgs& a);
void exec(const Context& ctx, const ZLossArgs& a, void* ws);
// Synchronizes: the rows are validated on the device and an invalid one throws, as on the CPU.
size_t workspace(const ImportanceArgs& a);
void exec(const Context& ctx, const ImportanceArgs& a, void* ws);

void exec(const Context& ctx, const GatherRowsArgs& a, void* ws);
void exec(const Context& ctx, const ScatterAddRowsArgs& a, void* ws);

size_t workspace(const FfnForwardArgs& a);
void exec(const Context& ctx, const FfnForwardArgs& a, void* ws);
size_t workspace(const FfnBackwardArgs& a);
void exec(const Context& ctx, const FfnBackwardArgs& a, void* ws);

size_t workspace(const WeightedSumForwardArgs& a);
void exec(const Context& ctx, const WeightedSumForwardArgs& a, void* ws);
size_t workspace(const WeightedSumBackwardArgs& a);
void exec(const Context& ctx, const WeightedSumBackwardArgs& a, void* ws);
size_t workspace(const DagForwardArgs& a);
void exec(const Context& ctx, const DagForwardArgs& a, void* ws);
size_t workspace(const DagBackwardArgs& a);
void exec(const Context& ctx, const DagBackwardArgs& a, void* ws);
size_t workspace(const CoefficientMixForwardArgs& a);
void exec(const Context& ctx, const CoefficientMixForwardArgs& a, void* ws);
size_t workspace(const CoefficientMixBackwardArgs& a);
void exec(const Context& ctx, const CoefficientMixBackwardArgs& a, void* ws);

void exec(const Context& ctx, const AdamWArgs& a, void* ws);

}  // namespace sy::cuda
