#include "switchyard/engine/optimizer.h"

#include <cmath>
#include <utility>

#include "switchyard/core/error.h"

namespace sy {

void AdamW::step(TensorMap& params, const TensorMap& grads) {
  ++steps_;
  const double bc1 = 1.0 - std::pow(config_.beta1, static_cast<double>(steps_));
  const double bc2 = 1.0 - std::pow(config_.beta2, static_cast<double>(steps_));
  const float b1 = static_cast<float>(config_.beta1),
              b2 = static_cast<float>(config_.beta2), eps = static_cast<float>(config_.eps),
              decay = static_cast<float>(config_.lr * config_.weight_decay);
  const float step_size = static_cast<float>(config_.lr / bc1);
  const float inv_sqrt_bc2 = static_cast<float>(1.0 / std::sqrt(bc2));
  for (const auto& [name, g] : grads) {
    auto it = params.find(name);
    if (it == params.end()) throw_runtime_error("AdamW: gradient for unknown parameter '" + name + "'");
    Tensor& p = it->second;
    if (p.shape() != g.shape()) throw_runtime_error("AdamW: gradient shape mismatch for '" + name + "'");
    Tensor& m = state_.try_emplace(name + ".exp_avg", p.shape()).first->second;
    Tensor& v = state_.try_emplace(name + ".exp_avg_sq", p.shape()).first->second;
    if (m.shape() != p.shape() || v.shape() != p.shape())
      throw_runtime_error("AdamW: restored moment shape mismatch for '" + name + "'");
    float* pd = p.data();
    float* md = m.data();
    float* vd = v.data();
    const float* gd = g.data();
    const int64_t n = p.numel();
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      md[i] = b1 * md[i] + (1.0f - b1) * gd[i];
      vd[i] = b2 * vd[i] + (1.0f - b2) * gd[i] * gd[i];
      pd[i] -= decay * pd[i];
      pd[i] -= step_size * md[i] / (std::sqrt(vd[i]) * inv_sqrt_bc2 + eps);
    }
  }
}

void AdamW::restore_state(int64_t steps, TensorMap state) {
  if (steps < 0) throw_runtime_error("AdamW: negative step count " + std::to_string(steps));
  steps_ = steps;
  state_ = std::move(state);
}

}  // namespace sy
