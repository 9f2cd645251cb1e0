#include "switchyard/core/tensor.h"

#include <algorithm>

#include "switchyard/core/error.h"

namespace sy {

int64_t shape_numel(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string shape_to_string(const Shape& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

Tensor::Tensor(Shape shape, float fill) : shape_(std::move(shape)) {
  for (int64_t d : shape_) SY_CHECK(d >= 0, "tensor dimension must be >= 0");
  numel_ = shape_numel(shape_);
  data_.assign(static_cast<size_t>(numel_), fill);
}

Tensor::Tensor(Shape shape, std::vector<float> values) : shape_(std::move(shape)), data_(std::move(values)) {
  numel_ = static_cast<int64_t>(data_.size());
  if (numel_ != shape_numel(shape_))
    throw_input_error("tensor of shape " + shape_to_string(shape_) + " given " + std::to_string(data_.size()) +
                      " values");
}

Tensor Tensor::borrow(float* data, Shape shape) {
  for (int64_t d : shape) SY_CHECK(d >= 0, "tensor dimension must be >= 0");
  Tensor t;
  t.shape_ = std::move(shape);
  t.numel_ = shape_numel(t.shape_);
  SY_CHECK(data != nullptr || t.numel_ == 0, "borrowed tensor without data");
  static float none = 0.0f;  // an empty borrow still reads as borrowed
  t.borrowed_ = data ? data : &none;
  return t;
}

Tensor::Tensor(const Tensor& other) : shape_(other.shape_), numel_(other.numel_) {
  if (other.borrowed_)
    data_.assign(other.borrowed_, other.borrowed_ + other.numel_);
  else
    data_ = other.data_;
}

Tensor& Tensor::operator=(const Tensor& other) {
  if (this == &other) return *this;
  shape_ = other.shape_;
  numel_ = other.numel_;
  borrowed_ = nullptr;
  if (other.borrowed_)
    data_.assign(other.borrowed_, other.borrowed_ + other.numel_);
  else
    data_ = other.data_;
  return *this;
}

Tensor::Tensor(Tensor&& other) noexcept
    : shape_(std::move(other.shape_)), data_(std::move(other.data_)), borrowed_(other.borrowed_), numel_(other.numel_) {
  other.shape_.clear();
  other.data_.clear();
  other.borrowed_ = nullptr;
  other.numel_ = 0;
}

Tensor& Tensor::operator=(Tensor&& other) noexcept {
  if (this == &other) return *this;
  shape_ = std::move(other.shape_);
  data_ = std::move(other.data_);
  borrowed_ = other.borrowed_;
  numel_ = other.numel_;
  other.shape_.clear();
  other.data_.clear();
  other.borrowed_ = nullptr;
  other.numel_ = 0;
  return *this;
}

std::vector<float>& Tensor::values() {
  if (borrowed_) throw_runtime_error("values() of a borrowed tensor: it has no storage of its own");
  return data_;
}

const std::vector<float>& Tensor::values() const {
  if (borrowed_) throw_runtime_error("values() of a borrowed tensor: it has no storage of its own");
  return data_;
}

void Tensor::fill(float v) { std::fill(data(), data() + numel_, v); }

void Tensor::reshape(Shape shape) {
  if (shape_numel(shape) != numel())
    throw_input_error("cannot reshape " + shape_to_string(shape_) + " to " + shape_to_string(shape));
  shape_ = std::move(shape);
}

}  // namespace sy
