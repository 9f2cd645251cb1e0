#include "switchyard/engine/moe_model.h"

#include "switchyard/core/trace.h"

#include "switchyard/core/error.h"
#include "switchyard/engine/layer_weights.h"

namespace sy {

TensorMap init_model_weights(const ModelConfig& model, uint64_t seed) {
  TensorMap all;
  for (int n = 0; n < model.layers; ++n) all.merge(init_layer_weights(model, seed, layer_prefix(model, n)));
  return all;
}

MoeModel::MoeModel(const Config& config, TensorMap weights) : MoeModel(config, std::move(weights), cpu_backend()) {}

MoeModel::MoeModel(const Config& config, TensorMap weights, Backend& backend)
    : config_(config), backend_(&backend), weights_(std::move(weights)) {
  place_weights(false);
  build();
}

MoeModel::MoeModel(const Config& config, TensorMap weights, ExpertProvider& experts, Backend& backend)
    : config_(config), backend_(&backend), weights_(std::move(weights)), remote_(&experts) {
  for (int n = 0; n < config_.model.layers; ++n)  // the experts live with the provider
    for (const ParamSpec& spec : layer_param_specs(config_.model, layer_prefix(config_.model, n)))
      if (spec.owner == ParamOwner::expert) weights_.erase(spec.name);
  place_weights(true);
  build();
}

void MoeModel::place_weights(bool dense_only) {
  const bool host = backend_->device() == Device::cpu;
  for (int n = 0; n < config_.model.layers; ++n)
    check_layer_weights(config_.model, weights_, "model weights", layer_prefix(config_.model, n), dense_only, host);
  if (host) {
    grads_ = zeros_like(weights_);
    return;
  }
  device_weights_ = BufferMap(*backend_, TensorMap{});
  for (auto& [name, t] : weights_)
    if (!t.borrowed()) {  // owned host tensor: copied to the device, the model reads the copy
      device_weights_.set(name, t);
      t = Tensor::borrow(device_weights_.tensors().at(name).data(), t.shape());
    }
  device_grads_ = BufferMap(*backend_, zeros_like(weights_));
  for (auto& [name, g] : device_grads_.tensors()) grads_.emplace(name, Tensor::borrow(g.data(), g.shape()));
}

MoeModel::~MoeModel() = default;

void MoeModel::build() {
  const ModelConfig& m = config_.model;
  for (int n = 0; n < m.layers; ++n) {
    const std::string prefix = layer_prefix(m, n);
    ExpertCompute* experts;
    if (remote_) {
      experts = &experts_on(remote_->experts(n), *backend_, staged_experts_.emplace_back());
    } else {
      local_experts_.push_back(std::make_unique<LocalExperts>(m, weights_, &grads_, prefix, *backend_));
      experts = local_experts_.back().get();
    }
    layers_.push_back(std::make_unique<LayerEngine>(m, weights_, *experts, prefix, *backend_));
  }
}

Tensor MoeModel::forward(const Tensor& x, const ImportanceInput& importance) {
  Tensor h = x;
  for (auto& layer : layers_) {
    const Tensor y = layer->forward(h, importance);
    for (int64_t i = 0; i < h.numel(); ++i) h[i] += y[i];
  }
  return h;
}

// h_{n+1} = h_n + y_n: dh_n = dh_{n+1} + dL/dh_n through layer n.
void MoeModel::backward_through_layer(size_t n, Tensor& dh) {
  const Tensor dx = layers_[n]->backward(dh, grads_);
  for (int64_t i = 0; i < dh.numel(); ++i) dh[i] += dx[i];
}

Tensor MoeModel::backward(const Tensor& grad_out) {
  Tensor dh = grad_out;
  for (size_t n = layers_.size(); n-- > 0;) backward_through_layer(n, dh);
  return dh;
}

void MoeModel::backward_params(const Tensor& grad_out) {
  Tensor dh = grad_out;
  for (size_t n = layers_.size(); n-- > 1;) backward_through_layer(n, dh);
  layers_.at(0)->backward_params(dh, grads_);
}

void MoeModel::step(const AdamWConfig& adamw, int group_size) {
  trace::Span span("optimizer");
  ++steps_;
  if (!adam_) adam_ = std::make_unique<AdamW>(adamw, *backend_);
  adam_->set_lr(adamw.lr);  // schedules change lr between steps; the moments carry over
  adam_->step(weights_, grads_);
  if (remote_) remote_->step(adamw, group_size, steps_);
  for (auto& [name, g] : grads_) borrow_buffer(*backend_, g).fill_zero();
}

LayerEngine& MoeModel::layer(int n) const {
  if (n < 0 || n >= static_cast<int>(layers_.size()))
    throw_input_error("layer " + std::to_string(n) + " out of range: the model has " + std::to_string(layers_.size()) +
                      " layers");
  return *layers_[static_cast<size_t>(n)];
}

void MoeModel::forward_layer(int n, const Tensor& x, Tensor& y, const ImportanceInput& importance) {
  layer(n).forward_into(x, y, importance);
}

void MoeModel::backward_layer(int n, const Tensor& grad_y, Tensor& grad_x, TensorMap* grads, double aux_scale) {
  LayerEngine& engine = layer(n);
  TensorMap& target = grads ? *grads : grads_;
  if (remote_) return engine.backward_into(grad_y, target, grad_x, aux_scale);
  // Local experts accumulate into the same map for this call, and into the model's after it.
  struct Redirect {
    LocalExperts& experts;
    TensorMap& home;
    ~Redirect() { experts.set_grads(&home); }
  } redirect{*local_experts_[static_cast<size_t>(n)], grads_};
  redirect.experts.set_grads(&target);
  engine.backward_into(grad_y, target, grad_x, aux_scale);
}

void MoeModel::step_experts(const AdamWConfig& adamw, int group_size) {
  if (!remote_) throw_runtime_error("step_experts: this model's experts are local; step them with the dense parameters");
  ++steps_;
  remote_->step(adamw, group_size, steps_);
}

void MoeModel::rebind_weight(const std::string& name, float* data) {
  auto it = weights_.find(name);
  if (it == weights_.end()) throw_input_error("no parameter '" + name + "' to rebind");
  Shape shape = it->second.shape();
  it->second = Tensor::borrow(data, std::move(shape));
}

double MoeModel::aux_loss() const {
  double total = 0;
  for (const auto& layer : layers_) total += layer->aux_loss();
  return total;
}

}  // namespace sy
