// CUDA backend: device memory, router softmax and the expert FFN (cuBLAS SGEMM in full
// FP32 plus element-wise activation kernels). Tested against kernels/cpu in
// tests/kernels/test_backends.cc on every backend present.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <mutex>
#include <string>
#include <variant>

#include "switchyard/core/error.h"
#include "switchyard/kernels/backend.h"

namespace sy {
namespace {

void check_cuda(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw_runtime_error(std::string("CUDA ") + what + ": " + cudaGetErrorString(err));
}
void check_cublas(cublasStatus_t st, const char* what) {
  if (st != CUBLAS_STATUS_SUCCESS) throw_runtime_error(std::string("cuBLAS ") + what + " failed with status " +
                                                       std::to_string(static_cast<int>(st)));
}

__global__ void softmax_rows_kernel(const float* z, int64_t n, int64_t e, float* p, float* lse) {
  const int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (t >= n) return;
  const float* zr = z + t * e;
  float* pr = p + t * e;
  float mx = zr[0];
  for (int64_t i = 1; i < e; ++i) mx = fmaxf(mx, zr[i]);
  float sum = 0.0f;
  for (int64_t i = 0; i < e; ++i) {
    pr[i] = expf(zr[i] - mx);
    sum += pr[i];
  }
  const float inv = 1.0f / sum;
  for (int64_t i = 0; i < e; ++i) pr[i] *= inv;
  if (lse) lse[t] = mx + logf(sum);
}

__global__ void swiglu_kernel(const float* hg, const float* hu, float* act, int64_t n) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  const float g = hg[i];
  act[i] = g / (1.0f + expf(-g)) * hu[i];
}

__global__ void gelu_kernel(const float* hu, float* act, int64_t n) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  const float h = hu[i];
  act[i] = 0.5f * h * (1.0f + erff(h * 0.70710678118654752f));
}

unsigned blocks_for(int64_t n, unsigned threads) { return static_cast<unsigned>((n + threads - 1) / threads); }

class CudaBackend final : public Backend {
 public:
  CudaBackend() {
    check_cublas(cublasCreate(&handle_), "cublasCreate");
    check_cublas(cublasSetMathMode(handle_, CUBLAS_PEDANTIC_MATH), "cublasSetMathMode");  // true FP32, no TF32
  }
  ~CudaBackend() override { cublasDestroy(handle_); }

  std::string name() const override { return "cuda"; }
  Device device() const override { return Device::cuda; }
  void* allocate(size_t bytes) override {
    void* p = nullptr;
    check_cuda(cudaMalloc(&p, bytes ? bytes : 1), "cudaMalloc");
    return p;
  }
  void release(void* ptr) override { cudaFree(ptr); }
  void copy_from_host(void* dst, const void* src, size_t bytes) override {
    check_cuda(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice), "cudaMemcpy H2D");
  }
  void copy_to_host(void* dst, const void* src, size_t bytes) override {
    check_cuda(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy D2H");
  }
  void synchronize() override { check_cuda(cudaDeviceSynchronize(), "cudaDeviceSynchronize"); }

  // Softmax forward and the expert FFN forward; every other op answers false.
  bool can_implement(const OpArgs& args) const override {
    return std::holds_alternative<SoftmaxForwardArgs>(args) || std::holds_alternative<FfnForwardArgs>(args);
  }
  size_t workspace_size(const OpArgs& args) const override {
    const auto* ffn = std::get_if<FfnForwardArgs>(&args);
    if (!ffn || ffn->saved) return 0;
    return static_cast<size_t>(cpu::ffn_saved_floats(ffn->rows, ffn->f, ffn->activation)) * sizeof(float);
  }
  void run(const OpArgs& args, void* workspace) override {
    if (const auto* a = std::get_if<SoftmaxForwardArgs>(&args)) {
      softmax(*a);
      return;
    }
    if (const auto* a = std::get_if<FfnForwardArgs>(&args)) {
      ffn(*a, static_cast<float*>(workspace));
      return;
    }
    throw_runtime_error(std::string("cuda backend does not implement ") + op_name(args));
  }

 private:
  void softmax(const SoftmaxForwardArgs& a) {
    if (a.n == 0) return;
    softmax_rows_kernel<<<blocks_for(a.n, 128), 128>>>(a.z, a.n, a.e, a.p, a.lse);
    check_cuda(cudaGetLastError(), "softmax kernel launch");
  }

  // Activations in a.saved (same layout as cpu::ffn_forward_buffers) or in the workspace.
  void ffn(const FfnForwardArgs& a, float* workspace) {
    if (a.rows == 0) return;
    const int64_t nf = a.rows * a.f;
    float* hu = a.saved ? a.saved : workspace;
    float* act = hu + nf;
    float* hg = a.activation == Activation::swiglu ? hu + 2 * nf : nullptr;
    linear(a.x, a.rows, a.d, a.w.up, a.f, hu);
    if (hg) {
      linear(a.x, a.rows, a.d, a.w.gate, a.f, hg);
      swiglu_kernel<<<blocks_for(nf, 256), 256>>>(hg, hu, act, nf);
    } else {
      gelu_kernel<<<blocks_for(nf, 256), 256>>>(hu, act, nf);
    }
    check_cuda(cudaGetLastError(), "activation kernel launch");
    linear(act, a.rows, a.f, a.w.down, a.d, a.out);
  }

  // Row-major y[n, out] = x[n, in] W[out, in]ᵀ, i.e. column-major yᵀ = W xᵀ.
  void linear(const float* x, int64_t n, int64_t in, const float* wt, int64_t out, float* y) {
    const float one = 1.0f, zero = 0.0f;
    check_cublas(cublasSgemm(handle_, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(out), static_cast<int>(n),
                             static_cast<int>(in), &one, wt, static_cast<int>(in), x, static_cast<int>(in), &zero, y,
                             static_cast<int>(out)),
                 "sgemm");
  }

  cublasHandle_t handle_ = nullptr;
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
