// AdamW (decoupled weight decay), applied per named tensor. Its state (step count, first and
// second moments) is itself a TensorMap so it checkpoints like weights. Each tensor's update is
// the backend's AdamW op (kernels/ops.h, AdamWArgs) on tensors in the backend's memory: on a
// device backend the params and grads given to step() are views of device memory (a
// BufferMap's tensors()), the moments are device buffers this object owns, and state() maps
// their names to views of that device memory (copy them with Backend::copy_to_host).
#pragma once

#include <cstdint>

#include "switchyard/core/io.h"
#include "switchyard/kernels/backend.h"
#include "switchyard/kernels/buffer.h"

namespace sy {

struct AdamWConfig {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;
};

class AdamW {
 public:
  explicit AdamW(AdamWConfig config, Backend& backend = cpu_backend());
  // params[name] -= update(grads[name]) for every name in grads; params must hold each name.
  void step(TensorMap& params, const TensorMap& grads);
  void set_lr(double lr) { config_.lr = lr; }  // learning-rate schedules
  int64_t steps() const { return steps_; }
  const AdamWConfig& config() const { return config_; }
  Backend& backend() const { return *backend_; }
  // "{name}.exp_avg" and "{name}.exp_avg_sq" per tensor.
  const TensorMap& state() const { return backend_->device() == Device::cpu ? state_ : device_state_.tensors(); }
  // Replaces the step count and the moments (names as in state()): checkpoint restore and
  // replica migration. A moment whose shape differs from its parameter fails the next step.
  // Host tensors (uploaded on a device backend).
  void restore_state(int64_t steps, TensorMap state);

 private:
  AdamWConfig config_;
  Backend* backend_;
  int64_t steps_ = 0;
  TensorMap state_;
  BufferMap device_state_;  // device backend: the moments state_ views
};

}  // namespace sy
