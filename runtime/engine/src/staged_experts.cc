#include "switchyard/engine/staged_experts.h"

namespace sy {

ExpertCompute& experts_on(ExpertCompute& host, Backend& engine_backend, std::optional<StagedExperts>& holder) {
  if (engine_backend.device() == Device::cpu) return host;
  return holder.emplace(host, engine_backend);
}

Tensor StagedExperts::download(const Tensor& device_tensor) const {
  Tensor host(device_tensor.shape());
  if (host.numel() > 0) borrow_buffer(device_, device_tensor).download(host.data());
  return host;
}

Tensor StagedExperts::upload(const Tensor& host, std::vector<FloatBuffer>& owners, int stage) const {
  if (owners.size() <= static_cast<size_t>(stage)) owners.resize(static_cast<size_t>(stage) + 1);
  FloatBuffer& b = owners[static_cast<size_t>(stage)];
  b = FloatBuffer::from_host(device_, host.data(), host.shape());
  return b.tensor();
}

void StagedExperts::forward(int stage, const cpu::DispatchLayout& layout, const Tensor& tokens, Tensor& output) {
  Tensor host_output;
  host_.forward(stage, layout, download(tokens), host_output);
  output = upload(host_output, outputs_, stage);
}

void StagedExperts::backward(int stage, const cpu::DispatchLayout& layout, const Tensor& grad_output,
                             Tensor* grad_input) {
  Tensor host_grad_input;
  host_.backward(stage, layout, download(grad_output), grad_input ? &host_grad_input : nullptr);
  if (grad_input) *grad_input = upload(host_grad_input, grad_inputs_, stage);
}

}  // namespace sy
