// AdamW on the device: the float arithmetic of cpu/optimizer.cc (bias corrections in double on
// the host, the element loop in float; built with --fmad=false, so no contraction either).
#include <cmath>

#include "cuda_ops.h"
#include "device.cuh"

namespace sy::cuda {
namespace {

struct AdamWFloats {
  float b1, b2, eps, decay, step_size, inv_sqrt_bc2;
};

__global__ void adamw_kernel(float* param, const float* grad, float* exp_avg, float* exp_avg_sq, int64_t n,
                             AdamWFloats h) {
  SY_GRID_STRIDE(i, n) {
    exp_avg[i] = h.b1 * exp_avg[i] + (1.0f - h.b1) * grad[i];
    exp_avg_sq[i] = h.b2 * exp_avg_sq[i] + (1.0f - h.b2) * grad[i] * grad[i];
    param[i] -= h.decay * param[i];
    param[i] -= h.step_size * exp_avg[i] / (sqrtf(exp_avg_sq[i]) * h.inv_sqrt_bc2 + h.eps);
  }
}

}  // namespace

void exec(const Context& ctx, const AdamWArgs& a, void*) {
  if (a.n == 0) return;
  const cpu::AdamWHyper& hy = a.hyper;
  const double bc1 = 1.0 - std::pow(hy.beta1, static_cast<double>(a.step));
  const double bc2 = 1.0 - std::pow(hy.beta2, static_cast<double>(a.step));
  const AdamWFloats h{static_cast<float>(hy.beta1),    static_cast<float>(hy.beta2),
                      static_cast<float>(hy.eps),      static_cast<float>(hy.lr * hy.weight_decay),
                      static_cast<float>(hy.lr / bc1), static_cast<float>(1.0 / std::sqrt(bc2))};
  adamw_kernel<<<grid_for(a.n), kThreads, 0, ctx.stream>>>(a.param, a.grad, a.exp_avg, a.exp_avg_sq, a.n, h);
  check_launch("adamw_kernel");
}

}  // namespace sy::cuda
