#include "switchyard/engine/optimizer.h"

#include <utility>

#include "switchyard/core/error.h"

namespace sy {

AdamW::AdamW(AdamWConfig config, Backend& backend)
    : config_(config), backend_(&backend), device_state_(backend, TensorMap{}) {}

void AdamW::step(TensorMap& params, const TensorMap& grads) {
  ++steps_;
  const cpu::AdamWHyper hyper{.lr = config_.lr,
                              .beta1 = config_.beta1,
                              .beta2 = config_.beta2,
                              .eps = config_.eps,
                              .weight_decay = config_.weight_decay};
  const bool host = backend_->device() == Device::cpu;
  // The moment `name` of a parameter of `shape`, zeros on first use (host: state_; device: a
  // buffer of device_state_, seen through its view).
  auto moment = [&](const std::string& name, const Shape& shape) -> Tensor& {
    if (host) return state_.try_emplace(name, shape).first->second;
    if (!device_state_.tensors().count(name)) device_state_.set(name, Tensor(shape));
    return device_state_.tensors().at(name);
  };
  for (const auto& [name, g] : grads) {
    auto it = params.find(name);
    if (it == params.end()) throw_runtime_error("AdamW: gradient for unknown parameter '" + name + "'");
    Tensor& p = it->second;
    if (p.shape() != g.shape()) throw_runtime_error("AdamW: gradient shape mismatch for '" + name + "'");
    Tensor& m = moment(name + ".exp_avg", p.shape());
    Tensor& v = moment(name + ".exp_avg_sq", p.shape());
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
  if (backend_->device() == Device::cpu) {
    state_ = std::move(state);
    return;
  }
  device_state_ = BufferMap(*backend_, state);
}

}  // namespace sy
