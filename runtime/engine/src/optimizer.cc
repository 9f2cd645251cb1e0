#include "switchyard/engine/optimizer.h"

#include <utility>

#include "switchyard/core/error.h"

namespace sy {

AdamW::AdamW(AdamWConfig config, Backend& backend) : config_(config), backend_(&host_backend(backend, "AdamW")) {}

void AdamW::step(TensorMap& params, const TensorMap& grads) {
  ++steps_;
  const cpu::AdamWHyper hyper{.lr = config_.lr,
                              .beta1 = config_.beta1,
                              .beta2 = config_.beta2,
                              .eps = config_.eps,
                              .weight_decay = config_.weight_decay};
  for (const auto& [name, g] : grads) {
    auto it = params.find(name);
    if (it == params.end()) throw_runtime_error("AdamW: gradient for unknown parameter '" + name + "'");
    Tensor& p = it->second;
    if (p.shape() != g.shape()) throw_runtime_error("AdamW: gradient shape mismatch for '" + name + "'");
    Tensor& m = state_.try_emplace(name + ".exp_avg", p.shape()).first->second;
    Tensor& v = state_.try_emplace(name + ".exp_avg_sq", p.shape()).first->second;
    if (m.shape() != p.shape() || v.shape() != p.shape())
      throw_runtime_error("AdamW: restored moment shape mismatch for '" + name + "'");
    run_with_own_workspace(*backend_, AdamWArgs{.param = p.data(),
                                                .grad = g.data(),
                                                .exp_avg = m.data(),
                                                .exp_avg_sq = v.data(),
                                                .n = p.numel(),
                                                .step = steps_,
                                                .hyper = hyper});
  }
}

void AdamW::restore_state(int64_t steps, TensorMap state) {
  if (steps < 0) throw_runtime_error("AdamW: negative step count " + std::to_string(steps));
  steps_ = steps;
  state_ = std::move(state);
}

}  // namespace sy
