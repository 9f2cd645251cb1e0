// A small f32 tensor with no framework behind it.
//
// `Tensor` holds contiguous row-major float32 storage on the host: its own, or memory it borrows
// from a caller (`Tensor::borrow`: the C API's caller-owned buffers, a PyTorch tensor), which
// must outlive it. Copying a borrowed tensor makes an owning copy (a copy never aliases);
// moving keeps the borrow. `TensorView` is a
// non-owning (pointer, shape, device) triple that kernels and transports take; a view
// tagged `Device::cuda` points at device memory and must not be dereferenced on the host.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <span>
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
  // A tensor over `data` (numel(shape) floats) that it does not own.
  static Tensor borrow(float* data, Shape shape);
  Tensor(const Tensor& other);
  Tensor& operator=(const Tensor& other);
  Tensor(Tensor&& other) noexcept;
  Tensor& operator=(Tensor&& other) noexcept;
  ~Tensor() = default;

  const Shape& shape() const { return shape_; }
  int rank() const { return static_cast<int>(shape_.size()); }
  int64_t dim(int i) const { return shape_.at(static_cast<size_t>(i)); }
  int64_t numel() const { return numel_; }
  bool empty() const { return numel_ == 0; }
  bool borrowed() const { return borrowed_ != nullptr; }

  float* data() { return borrowed_ ? borrowed_ : data_.data(); }
  const float* data() const { return borrowed_ ? borrowed_ : data_.data(); }
  float& operator[](int64_t i) { return data()[i]; }
  float operator[](int64_t i) const { return data()[i]; }
  std::span<const float> span() const { return {data(), static_cast<size_t>(numel_)}; }
  // The owned storage; a borrowed tensor has none (throws a runtime error).
  std::vector<float>& values();
  const std::vector<float>& values() const;

  void fill(float v);
  void reshape(Shape shape);  // same numel required
  TensorView view() { return TensorView{data(), shape_, Device::cpu}; }

 private:
  Shape shape_;
  std::vector<float> data_;
  float* borrowed_ = nullptr;
  int64_t numel_ = 0;
};

}  // namespace sy
