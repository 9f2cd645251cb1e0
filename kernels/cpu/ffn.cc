// Expert FFN (swiglu, gelu) forward and backward: three GEMMs through OpenBLAS plus an
// element-wise activation.
#include <cmath>
#include <cstring>

#include "switchyard/kernels/cpu_ops.h"

namespace sy::cpu {
namespace {

inline float sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }
constexpr float kInvSqrt2 = 0.70710678118654752f;
constexpr float kInvSqrt2Pi = 0.39894228040143268f;

}  // namespace

void ffn_forward(const float* x, int64_t rows, int64_t d, int64_t f, Activation activation, const ExpertWeights& w,
                 float* out, FfnCache* cache) {
  FfnCache local;
  FfnCache& c = cache ? *cache : local;
  const size_t nf = static_cast<size_t>(rows * f);
  c.h_up.resize(nf);
  c.act.resize(nf);
  if (rows == 0) return;
  linear_forward(x, rows, d, w.up, f, c.h_up.data());
  float* act = c.act.data();
  const float* hu = c.h_up.data();
  if (activation == Activation::swiglu) {
    c.h_gate.resize(nf);
    linear_forward(x, rows, d, w.gate, f, c.h_gate.data());
    const float* hg = c.h_gate.data();
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < static_cast<int64_t>(nf); ++i) act[i] = hg[i] * sigmoid(hg[i]) * hu[i];
  } else {
    c.h_gate.clear();
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < static_cast<int64_t>(nf); ++i) act[i] = 0.5f * hu[i] * (1.0f + std::erf(hu[i] * kInvSqrt2));
  }
  linear_forward(act, rows, f, w.down, d, out);
}

void ffn_backward(const float* dout, const float* x, int64_t rows, int64_t d, int64_t f, Activation activation,
                  const ExpertWeights& w, const FfnCache& cache, float* dx, const ExpertGrads& grads) {
  if (rows == 0) return;
  const size_t nf = static_cast<size_t>(rows * f);
  linear_backward_weight(dout, rows, d, cache.act.data(), f, grads.down);
  std::vector<float> dact(nf, 0.0f);
  linear_backward_input(dout, rows, d, w.down, f, dact.data());
  const float* hu = cache.h_up.data();
  if (activation == Activation::swiglu) {
    std::vector<float> dhg(nf);
    const float* hg = cache.h_gate.data();
    float* da = dact.data();
    float* dg = dhg.data();
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < static_cast<int64_t>(nf); ++i) {
      const float s = sigmoid(hg[i]);
      const float silu = hg[i] * s;
      dg[i] = da[i] * hu[i] * s * (1.0f + hg[i] * (1.0f - s));
      da[i] = da[i] * silu;  // becomes ∂/∂h_up in place
    }
    linear_backward_weight(dg, rows, f, x, d, grads.gate);
    linear_backward_weight(da, rows, f, x, d, grads.up);
    if (dx) {
      linear_backward_input(dg, rows, f, w.gate, d, dx);
      linear_backward_input(da, rows, f, w.up, d, dx);
    }
  } else {
    float* da = dact.data();
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < static_cast<int64_t>(nf); ++i) {
      const float h = hu[i];
      const float cdf = 0.5f * (1.0f + std::erf(h * kInvSqrt2));
      const float pdf = kInvSqrt2Pi * std::exp(-0.5f * h * h);
      da[i] *= cdf + h * pdf;
    }
    linear_backward_weight(da, rows, f, x, d, grads.up);
    if (dx) linear_backward_input(da, rows, f, w.up, d, dx);
  }
}

}  // namespace sy::cpu
