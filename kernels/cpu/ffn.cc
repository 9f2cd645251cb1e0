// Expert FFN (swiglu, gelu) forward and backward: three GEMMs through OpenBLAS plus an
// element-wise activation.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "switchyard/kernels/cpu_ops.h"
#include "parallel.h"
#include "swiglu.h"

namespace sy::cpu {
namespace {

constexpr float kInvSqrt2 = 0.70710678118654752f;
constexpr float kInvSqrt2Pi = 0.39894228040143268f;

// h_gate is null for gelu. Every buffer is the caller's; nothing is allocated here.
void forward_into(const float* x, int64_t rows, int64_t d, int64_t f, Activation activation, const ExpertWeights& w,
                  float* out, float* h_gate, float* h_up, float* act) {
  if (rows == 0) return;
  const size_t nf = static_cast<size_t>(rows * f);
  linear_forward(x, rows, d, w.up, f, h_up);
  const float* hu = h_up;
  if (activation == Activation::swiglu) {
    linear_forward(x, rows, d, w.gate, f, h_gate);
    swiglu_forward(h_gate, hu, act, static_cast<int64_t>(nf));
  } else {
#pragma omp parallel for schedule(static) if(worth_threads(static_cast<int64_t>(nf)))
    for (int64_t i = 0; i < static_cast<int64_t>(nf); ++i) act[i] = 0.5f * hu[i] * (1.0f + std::erf(hu[i] * kInvSqrt2));
  }
  linear_forward(act, rows, f, w.down, d, out);
}

// dw += dyᵀ x, one product per segment of rows (empty: all rows), in order.
void weight_grad(const float* dy, int64_t rows, int64_t out, const float* x, int64_t in, float* dw,
                 std::span<const int64_t> segments) {
  if (segments.empty()) return linear_backward_weight(dy, rows, out, x, in, dw);
  int64_t first = 0;
  for (const int64_t n : segments) {
    if (n > 0) linear_backward_weight(dy + first * out, n, out, x + first * in, in, dw);
    first += n;
  }
}

// dact: [rows, f] scratch (zeroed here); dhg: [rows, f] scratch for swiglu, unused for gelu.
void backward_into(const float* dout, const float* x, int64_t rows, int64_t d, int64_t f, Activation activation,
                   const ExpertWeights& w, const float* h_gate, const float* h_up, const float* act, float* dx,
                   const ExpertGrads& grads, float* dact, float* dhg, std::span<const int64_t> segments = {}) {
  if (rows == 0) return;
  const size_t nf = static_cast<size_t>(rows * f);
  weight_grad(dout, rows, d, act, f, grads.down, segments);
  std::fill(dact, dact + nf, 0.0f);
  linear_backward_input(dout, rows, d, w.down, f, dact);
  const float* hu = h_up;
  if (activation == Activation::swiglu) {
    float* da = dact;
    float* dg = dhg;
    swiglu_backward(h_gate, hu, da, dg, static_cast<int64_t>(nf));  // da becomes ∂/∂h_up
    weight_grad(dg, rows, f, x, d, grads.gate, segments);
    weight_grad(da, rows, f, x, d, grads.up, segments);
    if (dx) {
      linear_backward_input(dg, rows, f, w.gate, d, dx);
      linear_backward_input(da, rows, f, w.up, d, dx);
    }
  } else {
    float* da = dact;
#pragma omp parallel for schedule(static) if(worth_threads(static_cast<int64_t>(nf)))
    for (int64_t i = 0; i < static_cast<int64_t>(nf); ++i) {
      const float h = hu[i];
      const float cdf = 0.5f * (1.0f + std::erf(h * kInvSqrt2));
      const float pdf = kInvSqrt2Pi * std::exp(-0.5f * h * h);
      da[i] *= cdf + h * pdf;
    }
    weight_grad(da, rows, f, x, d, grads.up, segments);
    if (dx) linear_backward_input(da, rows, f, w.up, d, dx);
  }
}

}  // namespace

void ffn_forward(const float* x, int64_t rows, int64_t d, int64_t f, Activation activation, const ExpertWeights& w,
                 float* out, FfnCache* cache) {
  FfnCache local;
  FfnCache& c = cache ? *cache : local;
  const size_t nf = static_cast<size_t>(rows * f);
  c.h_up.resize(nf);
  c.act.resize(nf);
  if (rows == 0) return;
  if (activation == Activation::swiglu)
    c.h_gate.resize(nf);
  else
    c.h_gate.clear();
  forward_into(x, rows, d, f, activation, w, out, c.h_gate.data(), c.h_up.data(), c.act.data());
}

void ffn_backward(const float* dout, const float* x, int64_t rows, int64_t d, int64_t f, Activation activation,
                  const ExpertWeights& w, const FfnCache& cache, float* dx, const ExpertGrads& grads) {
  if (rows == 0) return;
  std::vector<float> scratch(static_cast<size_t>(ffn_backward_scratch_floats(rows, f, activation)));
  const size_t nf = static_cast<size_t>(rows * f);
  backward_into(dout, x, rows, d, f, activation, w, cache.h_gate.data(), cache.h_up.data(), cache.act.data(), dx, grads,
                scratch.data(), activation == Activation::swiglu ? scratch.data() + nf : nullptr);
}

void ffn_forward_buffers(const float* x, int64_t rows, int64_t d, int64_t f, Activation activation,
                         const ExpertWeights& w, float* out, float* saved) {
  const int64_t nf = rows * f;
  forward_into(x, rows, d, f, activation, w, out, activation == Activation::swiglu ? saved + 2 * nf : nullptr, saved,
               saved + nf);
}

void ffn_backward_buffers(const float* dout, const float* x, int64_t rows, int64_t d, int64_t f, Activation activation,
                          const ExpertWeights& w, const float* saved, float* dx, const ExpertGrads& grads,
                          float* scratch, std::span<const int64_t> weight_segments) {
  check_weight_segments(weight_segments, rows);
  const int64_t nf = rows * f;
  const bool swiglu = activation == Activation::swiglu;
  backward_into(dout, x, rows, d, f, activation, w, swiglu ? saved + 2 * nf : nullptr, saved, saved + nf, dx, grads,
                scratch, swiglu ? scratch + nf : nullptr, weight_segments);
}

}  // namespace sy::cpu
