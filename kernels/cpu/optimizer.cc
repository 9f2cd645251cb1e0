// AdamW update of one parameter buffer: the loop of runtime's AdamW::step, as a kernel.
#include <cmath>

#include "switchyard/kernels/cpu_ops.h"
#include "parallel.h"

namespace sy::cpu {

namespace {

struct AdamWFactors {
  float b1, b2, eps, decay, step_size, inv_sqrt_bc2;
};

SY_AVX2_CLONES void adamw_range(float* __restrict param, const float* __restrict grad, float* __restrict exp_avg,
                                float* __restrict exp_avg_sq, int64_t begin, int64_t end, AdamWFactors c) {
  for (int64_t i = begin; i < end; ++i) {
    exp_avg[i] = c.b1 * exp_avg[i] + (1.0f - c.b1) * grad[i];
    exp_avg_sq[i] = c.b2 * exp_avg_sq[i] + (1.0f - c.b2) * grad[i] * grad[i];
    param[i] -= c.decay * param[i];
    param[i] -= c.step_size * exp_avg[i] / (std::sqrt(exp_avg_sq[i]) * c.inv_sqrt_bc2 + c.eps);
  }
}

}  // namespace

void adamw_step(float* param, const float* grad, float* exp_avg, float* exp_avg_sq, int64_t n, int64_t step,
                const AdamWHyper& hyper) {
  const double bc1 = 1.0 - std::pow(hyper.beta1, static_cast<double>(step));
  const double bc2 = 1.0 - std::pow(hyper.beta2, static_cast<double>(step));
  const AdamWFactors c{.b1 = static_cast<float>(hyper.beta1),
                       .b2 = static_cast<float>(hyper.beta2),
                       .eps = static_cast<float>(hyper.eps),
                       .decay = static_cast<float>(hyper.lr * hyper.weight_decay),
                       .step_size = static_cast<float>(hyper.lr / bc1),
                       .inv_sqrt_bc2 = static_cast<float>(1.0 / std::sqrt(bc2))};
  for_ranges(n, [&](int64_t begin, int64_t end) { adamw_range(param, grad, exp_avg, exp_avg_sq, begin, end, c); });
}

}  // namespace sy::cpu
