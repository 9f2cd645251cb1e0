// Expert FFN forward/backward (swiglu, gelu), as cpu/ffn.cc: cuBLAS SGEMMs in full FP32 and
// element-wise activation kernels. One op is one expert; `saved` has the CPU's layout
// (h_up, act, then h_gate for swiglu, [rows, f] each), so either backend's backward reads it.
#include "../cpu/fast_sigmoid.h"
#include "cuda_ops.h"
#include "device.cuh"

namespace sy::cuda {
namespace {

constexpr float kInvSqrt2 = 0.70710678118654752f;
constexpr float kInvSqrt2Pi = 0.39894228040143268f;

__global__ void swiglu_kernel(const float* hg, const float* hu, float* act, int64_t n) {
  SY_GRID_STRIDE(i, n) act[i] = hg[i] * cpu::fast_sigmoid(hg[i]) * hu[i];  // the CPU's sigmoid, op for op
}

__global__ void gelu_kernel(const float* hu, float* act, int64_t n) {
  SY_GRID_STRIDE(i, n) act[i] = 0.5f * hu[i] * (1.0f + erff(hu[i] * kInvSqrt2));
}

// da = ∂/∂act in, ∂/∂h_up out (in place); dg = ∂/∂h_gate.
__global__ void swiglu_backward_kernel(const float* hg, const float* hu, float* da, float* dg, int64_t n) {
  SY_GRID_STRIDE(i, n) {
    const float s = cpu::fast_sigmoid(hg[i]);
    const float silu = hg[i] * s;
    dg[i] = da[i] * hu[i] * s * (1.0f + hg[i] * (1.0f - s));
    da[i] = da[i] * silu;
  }
}

__global__ void gelu_backward_kernel(const float* hu, float* da, int64_t n) {
  SY_GRID_STRIDE(i, n) {
    const float h = hu[i];
    const float cdf = 0.5f * (1.0f + erff(h * kInvSqrt2));
    const float pdf = kInvSqrt2Pi * expf(-0.5f * h * h);
    da[i] *= cdf + h * pdf;
  }
}

// Views of the activations: the CPU's layout of ffn_saved_floats().
struct FfnSaved {
  float *h_up, *act, *h_gate;  // h_gate null for gelu
  FfnSaved(float* saved, int64_t nf, Activation activation)
      : h_up(saved), act(saved + nf), h_gate(activation == Activation::swiglu ? saved + 2 * nf : nullptr) {}
};

}  // namespace

size_t workspace(const FfnForwardArgs& a) {
  return a.saved ? 0 : static_cast<size_t>(cpu::ffn_saved_floats(a.rows, a.f, a.activation)) * sizeof(float);
}

void exec(const Context& ctx, const FfnForwardArgs& a, void* ws) {
  if (a.rows == 0) return;
  const int64_t nf = a.rows * a.f;
  const FfnSaved s(a.saved ? a.saved : static_cast<float*>(ws), nf, a.activation);
  linear_forward(ctx, a.x, a.rows, a.d, a.w.up, a.f, s.h_up, false);
  if (nf > 0 && s.h_gate) {
    linear_forward(ctx, a.x, a.rows, a.d, a.w.gate, a.f, s.h_gate, false);
    swiglu_kernel<<<grid_for(nf), kThreads, 0, ctx.stream>>>(s.h_gate, s.h_up, s.act, nf);
    check_launch("swiglu_kernel");
  } else if (nf > 0) {
    gelu_kernel<<<grid_for(nf), kThreads, 0, ctx.stream>>>(s.h_up, s.act, nf);
    check_launch("gelu_kernel");
  }
  linear_forward(ctx, s.act, a.rows, a.f, a.w.down, a.d, a.out, false);
}

size_t workspace(const FfnBackwardArgs& a) {
  return static_cast<size_t>(cpu::ffn_backward_scratch_floats(a.rows, a.f, a.activation)) * sizeof(float);
}

// dw += dyᵀ x, one product per weight segment in order (as cpu::ffn_backward_buffers).
static void weight_grad(const Context& ctx, const FfnBackwardArgs& a, const float* dy, int64_t out, const float* x,
                 int64_t in, float* dw) {
  if (a.weight_segments.empty()) return linear_backward_weight(ctx, dy, a.rows, out, x, in, dw);
  int64_t first = 0;
  for (const int64_t n : a.weight_segments) {
    linear_backward_weight(ctx, dy + first * out, n, out, x + first * in, in, dw);
    first += n;
  }
}

void exec(const Context& ctx, const FfnBackwardArgs& a, void* ws) {
  cpu::check_weight_segments(a.weight_segments, a.rows);
  if (a.rows == 0) return;
  const int64_t nf = a.rows * a.f;
  const FfnSaved s(const_cast<float*>(a.saved), nf, a.activation);  // read only
  float* dact = static_cast<float*>(ws);
  weight_grad(ctx, a, a.dout, a.d, s.act, a.f, a.grads.down);
  fill_zero(ctx, dact, nf);  // as the CPU: an empty d leaves ∂/∂act zero
  linear_backward_input(ctx, a.dout, a.rows, a.d, a.w.down, a.f, dact, true);
  if (a.activation == Activation::swiglu) {
    float* dhg = dact + nf;
    if (nf > 0) {
      swiglu_backward_kernel<<<grid_for(nf), kThreads, 0, ctx.stream>>>(s.h_gate, s.h_up, dact, dhg, nf);
      check_launch("swiglu_backward_kernel");
    }
    weight_grad(ctx, a, dhg, a.f, a.x, a.d, a.grads.gate);
    weight_grad(ctx, a, dact, a.f, a.x, a.d, a.grads.up);
    if (a.dx) {
      linear_backward_input(ctx, dhg, a.rows, a.f, a.w.gate, a.d, a.dx, true);
      linear_backward_input(ctx, dact, a.rows, a.f, a.w.up, a.d, a.dx, true);
    }
    return;
  }
  if (nf > 0) {
    gelu_backward_kernel<<<grid_for(nf), kThreads, 0, ctx.stream>>>(s.h_up, dact, nf);
    check_launch("gelu_backward_kernel");
  }
  weight_grad(ctx, a, dact, a.f, a.x, a.d, a.grads.up);
  if (a.dx) linear_backward_input(ctx, dact, a.rows, a.f, a.w.up, a.d, a.dx, true);
}

}  // namespace sy::cuda
