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
  data_.assign(static_cast<size_t>(shape_numel(shape_)), fill);
}

Tensor::Tensor(Shape shape, std::vector<float> values) : shape_(std::move(shape)), data_(std::move(values)) {
  if (static_cast<int64_t>(data_.size()) != shape_numel(shape_))
    throw_input_error("tensor of shape " + shape_to_string(shape_) + " given " + std::to_string(data_.size()) +
                      " values");
}

void Tensor::fill(float v) { std::fill(data_.begin(), data_.end(), v); }

void Tensor::reshape(Shape shape) {
  if (shape_numel(shape) != numel())
    throw_input_error("cannot reshape " + shape_to_string(shape_) + " to " + shape_to_string(shape));
  shape_ = std::move(shape);
}

}  // namespace sy
