#include "switchyard/kernels/buffer.h"

namespace sy {

BufferMap::BufferMap(Backend& backend, const TensorMap& host) : backend_(&backend) {
  for (const auto& [name, t] : host) set(name, t);
}

void BufferMap::set(const std::string& name, const Tensor& t) {
  FloatBuffer b = FloatBuffer::from_host(*backend_, t.data(), t.shape());
  views_.insert_or_assign(name, b.tensor());
  buffers_.insert_or_assign(name, std::move(b));
}

TensorMap BufferMap::to_host() const {
  TensorMap out;
  for (const auto& [name, b] : buffers_) {
    Tensor t(b.shape());
    b.download(t.data());
    out.emplace(name, std::move(t));
  }
  return out;
}

TensorMap to_host(Backend& backend, const TensorMap& tensors) {
  TensorMap out;
  for (const auto& [name, t] : tensors) {
    Tensor h(t.shape());
    borrow_buffer(backend, t).download(h.data());
    out.emplace(name, std::move(h));
  }
  return out;
}

void fill_zero(Backend& backend, TensorMap& tensors) {
  for (auto& [name, t] : tensors) borrow_buffer(backend, t).fill_zero();
}

}  // namespace sy
