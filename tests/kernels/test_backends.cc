// Every usable backend against the CPU reference (ggml test-backend-ops style). On a machine
// without a GPU only the CPU backend is usable, and the test says which were skipped.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "../support/random.h"
#include "switchyard/kernels/backend.h"

namespace sy {
namespace {

using testing::randn;

// Host vector → backend buffer, released at scope exit.
struct DeviceBuffer {
  Backend& backend;
  float* ptr;
  size_t n;
  DeviceBuffer(Backend& b, const std::vector<float>& host) : backend(b), n(host.size()) {
    ptr = static_cast<float*>(b.allocate(n * sizeof(float)));
    b.copy_from_host(ptr, host.data(), n * sizeof(float));
  }
  DeviceBuffer(Backend& b, size_t count) : backend(b), n(count) { ptr = static_cast<float*>(b.allocate(n * sizeof(float))); }
  ~DeviceBuffer() { backend.release(ptr); }
  std::vector<float> to_host() {
    std::vector<float> h(n);
    backend.synchronize();
    backend.copy_to_host(h.data(), ptr, n * sizeof(float));
    return h;
  }
};

TEST(Backends, CpuIsAlwaysRegisteredLast) {
  ASSERT_FALSE(backends().empty());
  EXPECT_EQ(backends().back()->name(), "cpu");
  const auto compiled = compiled_backends();
  EXPECT_EQ(compiled.back(), "cpu");
  for (const std::string& name : compiled) {
    bool usable = false;
    for (Backend* b : backends()) usable |= b->name() == name;
    if (!usable) std::printf("[ note ] backend '%s' compiled but not usable here (no device): skipped\n", name.c_str());
  }
}

TEST(Backends, SoftmaxMatchesCpu) {
  const int64_t n = 333, e = 16;
  const auto z = randn(n * e, 1, 3.0f);
  std::vector<float> p_ref(n * e), lse_ref(n);
  cpu::softmax_forward(z.data(), n, e, p_ref.data(), lse_ref.data());
  for (Backend* b : backends()) {
    DeviceBuffer dz(*b, z), dp(*b, static_cast<size_t>(n * e)), dl(*b, static_cast<size_t>(n));
    b->softmax_forward(dz.ptr, n, e, dp.ptr, dl.ptr);
    const auto p = dp.to_host(), lse = dl.to_host();
    for (int64_t i = 0; i < n * e; ++i) ASSERT_NEAR(p[i], p_ref[i], 1e-6) << b->name() << " p[" << i << "]";
    for (int64_t i = 0; i < n; ++i) ASSERT_NEAR(lse[i], lse_ref[i], 1e-5) << b->name() << " lse[" << i << "]";
  }
}

TEST(Backends, ExpertFfnMatchesCpu) {
  for (Activation act : {Activation::swiglu, Activation::gelu}) {
    for (int64_t rows : {0, 1, 37, 300}) {
      const int64_t d = 96, f = 160;
      const auto x = randn(rows * d, 2), wg = randn(f * d, 3, 0.1f), wu = randn(f * d, 4, 0.1f), wd = randn(d * f, 5, 0.1f);
      std::vector<float> ref(rows * d);
      cpu::ffn_forward(x.data(), rows, d, f, act, {wg.data(), wu.data(), wd.data()}, ref.data(), nullptr);
      for (Backend* b : backends()) {
        DeviceBuffer dx(*b, x), dg(*b, wg), du(*b, wu), dw(*b, wd), dout(*b, static_cast<size_t>(rows * d));
        b->ffn_forward(dx.ptr, rows, d, f, act, {act == Activation::swiglu ? dg.ptr : nullptr, du.ptr, dw.ptr}, dout.ptr);
        const auto out = dout.to_host();
        for (int64_t i = 0; i < rows * d; ++i)
          ASSERT_NEAR(out[i], ref[i], 1e-4 * (1.0 + std::fabs(ref[i]))) << b->name() << " rows " << rows << " [" << i << "]";
      }
    }
  }
}

}  // namespace
}  // namespace sy
