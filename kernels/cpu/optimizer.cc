// AdamW update of one parameter buffer: the loop of runtime's AdamW::step, as a kernel.
#include <cmath>

#include "switchyard/kernels/cpu_ops.h"
#include "parallel.h"

namespace sy::cpu {

void adamw_step(float* param, const float* grad, float* exp_avg, float* exp_avg_sq, int64_t n, int64_t step,
                const AdamWHyper& hyper) {
  const double bc1 = 1.0 - std::pow(hyper.beta1, static_cast<double>(step));
  const double bc2 = 1.0 - std::pow(hyper.beta2, static_cast<double>(step));
  const float b1 = static_cast<float>(hyper.beta1), b2 = static_cast<float>(hyper.beta2),
              eps = static_cast<float>(hyper.eps), decay = static_cast<float>(hyper.lr * hyper.weight_decay);
  const float step_size = static_cast<float>(hyper.lr / bc1);
  const float inv_sqrt_bc2 = static_cast<float>(1.0 / std::sqrt(bc2));
#pragma omp parallel for schedule(static) if(worth_threads(n))
  for (int64_t i = 0; i < n; ++i) {
    exp_avg[i] = b1 * exp_avg[i] + (1.0f - b1) * grad[i];
    exp_avg_sq[i] = b2 * exp_avg_sq[i] + (1.0f - b2) * grad[i] * grad[i];
    param[i] -= decay * param[i];
    param[i] -= step_size * exp_avg[i] / (std::sqrt(exp_avg_sq[i]) * inv_sqrt_bc2 + eps);
  }
}

}  // namespace sy::cpu
