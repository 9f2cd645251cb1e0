#include <cstdlib>
#include <cstring>
#include <new>

#include "switchyard/kernels/backend.h"

namespace sy {
namespace {

class CpuBackend final : public Backend {
 public:
  std::string name() const override { return "cpu"; }
  Device device() const override { return Device::cpu; }
  void* allocate(size_t bytes) override {
    void* p = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
    if (!p && bytes) throw std::bad_alloc();
    return p;
  }
  void release(void* ptr) override { std::free(ptr); }
  void copy_from_host(void* dst, const void* src, size_t bytes) override {
    if (bytes) std::memcpy(dst, src, bytes);
  }
  void copy_to_host(void* dst, const void* src, size_t bytes) override {
    if (bytes) std::memcpy(dst, src, bytes);
  }
  void synchronize() override {}
  void softmax_forward(const float* z, int64_t n, int64_t e, float* p, float* lse) override {
    cpu::softmax_forward(z, n, e, p, lse);
  }
  void ffn_forward(const float* x, int64_t rows, int64_t d, int64_t f, Activation activation,
                   const cpu::ExpertWeights& w, float* out) override {
    cpu::ffn_forward(x, rows, d, f, activation, w, out, nullptr);
  }
};

}  // namespace

Backend& cpu_backend() {
  static CpuBackend backend;
  return backend;
}

}  // namespace sy
