// A small f32 tensor with no framework behind it.
//
// `Tensor` owns contiguous row-major float32 storage on the host. `TensorView` is a
// non-owning (pointer, shape, device) triple that kernels and transports take; a view
// tagged `Device::cuda` points at device memory and must not be dereferenced on the host.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

namespace sy {

enum class Device : uint8_t { cpu, cuda };

using Shape = std::vector<int64_t>;

int64_t shape_numel(const Shape& shape);
std::string shape_to_string(const Shape& shape);

struct TensorView {
  float* data = nullptr;
  Shape shape;
  Device device = Device::cpu;

  int64_t numel() const { return shape_numel(shape); }
  int64_t dim(int i) const { return shape.at(static_cast<size_t>(i)); }
  int rank() const { return static_cast<int>(shape.size()); }
};

class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(Shape shape, float fill = 0.0f);
  Tensor(Shape shape, std::vector<float> values);  // values.size() must equal numel

  const Shape& shape() const { return shape_; }
  int rank() const { return static_cast<int>(shape_.size()); }
  int64_t dim(int i) const { return shape_.at(static_cast<size_t>(i)); }
  int64_t numel() const { return static_cast<int64_t>(data_.size()); }
  bool empty() const { return data_.empty(); }

  float* data() { return data_.data(); }
  const float* data() const { return data_.data(); }
  float& operator[](int64_t i) { return data_[static_cast<size_t>(i)]; }
  float operator[](int64_t i) const { return data_[static_cast<size_t>(i)]; }
  std::vector<float>& values() { return data_; }
  const std::vector<float>& values() const { return data_; }

  void fill(float v);
  void reshape(Shape shape);  // same numel required
  TensorView view() { return TensorView{data_.data(), shape_, Device::cpu}; }

 private:
  Shape shape_;
  std::vector<float> data_;
};

}  // namespace sy
