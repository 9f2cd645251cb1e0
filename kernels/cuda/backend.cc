// The CUDA backend: device memory, one stream and one cuBLAS handle (pedantic FP32 math: no
// TF32, for the comparison with the CPU reference), and every device op of ops.h through the
// exec() of cuda_ops.h. Host ops (top-k selection, gates, capacity, expert allocation) answer
// can_implement false: their arguments and results are host std::vectors by contract, so a
// device kernel would only add two copies around host work. Tested against kernels/cpu by
// tests/kernels/test_backend_ops.cc on a machine with a device.
#include "switchyard/kernels/backend.h"

#include <string>
#include <type_traits>
#include <variant>

#include "cuda_ops.h"
#include "switchyard/core/error.h"

namespace sy {
namespace {

using cuda::check_cublas;
using cuda::check_cuda;

template <class Args>
constexpr bool kHostOp = std::is_same_v<Args, SelectExpertsArgs> || std::is_same_v<Args, ComputeGatesArgs> ||
                         std::is_same_v<Args, ApplyCapacityArgs> || std::is_same_v<Args, AllocateExpertsArgs>;

// The host index structure an op reads is present (ops without one: always).
template <class Args>
bool has_host_structures(const Args&) {
  return true;
}
bool has_host_structures(const GatesBackwardArgs& a) { return a.selection != nullptr; }
bool has_host_structures(const LoadBalanceLossArgs& a) { return a.selection != nullptr; }
bool has_host_structures(const WeightedSumForwardArgs& a) { return a.nodes != nullptr; }
bool has_host_structures(const WeightedSumBackwardArgs& a) { return a.nodes != nullptr; }
bool has_host_structures(const DagForwardArgs& a) { return a.nodes != nullptr; }
bool has_host_structures(const DagBackwardArgs& a) { return a.nodes != nullptr; }

template <class Args>
bool implements(const Args& a) {
  if constexpr (kHostOp<Args>)
    return false;
  else
    return has_host_structures(a);
}

template <class Args>
size_t workspace_bytes(const Args& a) {
  if constexpr (requires { cuda::workspace(a); })
    return cuda::workspace(a);
  else
    return 0;
}

class CudaBackend final : public Backend {
 public:
  CudaBackend() {
    check_cuda(cudaStreamCreateWithFlags(&ctx_.stream, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
    check_cublas(cublasCreate(&ctx_.blas), "cublasCreate");
    check_cublas(cublasSetStream(ctx_.blas, ctx_.stream), "cublasSetStream");
    check_cublas(cublasSetMathMode(ctx_.blas, CUBLAS_PEDANTIC_MATH), "cublasSetMathMode");  // true FP32, no TF32
  }
  ~CudaBackend() override {
    cublasDestroy(ctx_.blas);
    cudaStreamDestroy(ctx_.stream);
  }

  std::string name() const override { return "cuda"; }
  Device device() const override { return Device::cuda; }
  void* allocate(size_t bytes) override {
    void* p = nullptr;
    check_cuda(cudaMalloc(&p, bytes ? bytes : 1), "cudaMalloc");
    return p;
  }
  // Waits for the stream first: memory in use by queued work is never handed out again early.
  // Never throws (it runs in destructors); an error shows at the next synchronize().
  void release(void* ptr) override {
    cudaStreamSynchronize(ctx_.stream);
    cudaFree(ptr);
  }
  // Copies are ordered with the ops on the backend's stream and return when done.
  void copy_from_host(void* dst, const void* src, size_t bytes) override {
    if (bytes == 0) return;
    check_cuda(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, ctx_.stream), "cudaMemcpyAsync H2D");
    synchronize();
  }
  void copy_to_host(void* dst, const void* src, size_t bytes) override {
    if (bytes == 0) return;
    check_cuda(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, ctx_.stream), "cudaMemcpyAsync D2H");
    synchronize();
  }
  // Stream-ordered, no wait (like the ops).
  void fill_zero(void* dst, size_t bytes) override {
    if (bytes == 0) return;
    check_cuda(cudaMemsetAsync(dst, 0, bytes, ctx_.stream), "cudaMemsetAsync");
  }
  void copy(void* dst, const void* src, size_t bytes) override {
    if (bytes == 0) return;
    check_cuda(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, ctx_.stream), "cudaMemcpyAsync D2D");
  }
  void synchronize() override { check_cuda(cudaStreamSynchronize(ctx_.stream), "cudaStreamSynchronize"); }

  bool can_implement(const OpArgs& args) const override {
    return std::visit([](const auto& a) { return implements(a); }, args);
  }
  size_t workspace_size(const OpArgs& args) const override {
    if (!can_implement(args)) return 0;
    return std::visit([](const auto& a) { return workspace_bytes(a); }, args);
  }
  // Enqueues the op on the stream. The host structures it reads (NodeList, Selection) are
  // uploaded from host memory asynchronously: keep them unchanged until synchronize().
  void run(const OpArgs& args, void* workspace) override {
    if (!can_implement(args)) throw_runtime_error(std::string("cuda backend does not implement ") + op_name(args));
    std::visit(
        [&](const auto& a) {
          if constexpr (!kHostOp<std::decay_t<decltype(a)>>) cuda::exec(ctx_, a, workspace);
        },
        args);
  }

 private:
  cuda::Context ctx_;
};

}  // namespace

Backend* cuda_backend_if_available() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    cudaGetLastError();  // clear the sticky "no device" error
    return nullptr;
  }
  static CudaBackend backend;
  return &backend;
}

}  // namespace sy
