// Arrays in a backend's memory: the one place the layer engine's tensors meet Backend::allocate
// and the backend's copies.
//
// `Buffer<T>` (float: `FloatBuffer`, int64 indices: `IndexBuffer`) is an owning or borrowed
// array with a shape. On a host backend (device() == Device::cpu) it owns a std::vector<T>,
// exactly the storage Tensor uses, so the CPU engine allocates, zero-fills and copies as it did
// before Buffers existed; on a device backend it owns Backend::allocate memory (released in the
// destructor) and every fill and copy is the backend's (ordered with its ops).
//
// `tensor()` is a Tensor::borrow view of the same memory, for the interfaces that take Tensor
// (ExpertCompute, TensorMap). On a device backend that view's data() is DEVICE memory: it must
// never be read on the host nor copied (a Tensor copy reads it), only handed on.
//
// `BufferMap` is a TensorMap copied to a backend (weights, gradients) with a TensorMap of such
// views over it.
#pragma once

#include <algorithm>
#include <cstdint>
#include <map>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "switchyard/core/error.h"
#include "switchyard/core/io.h"
#include "switchyard/core/tensor.h"
#include "switchyard/kernels/backend.h"

namespace sy {

template <class T>
class Buffer {
 public:
  Buffer() = default;
  // Zeros of `shape` on `backend`.
  Buffer(Backend& backend, Shape shape) : backend_(&backend), shape_(std::move(shape)), numel_(shape_numel(shape_)) {
    if (host()) {
      host_.resize(static_cast<size_t>(numel_));
      return;
    }
    device_ = static_cast<T*>(backend.allocate(bytes()));
    capacity_ = numel_;
    backend.fill_zero(device_, bytes());
  }
  // `data` (numel(shape) elements of `backend`'s memory), not owned; must outlive the Buffer.
  static Buffer borrow(Backend& backend, T* data, Shape shape) {
    Buffer b;
    b.backend_ = &backend;
    b.shape_ = std::move(shape);
    b.numel_ = shape_numel(b.shape_);
    b.borrowed_ = data;
    return b;
  }
  // The host data of `host` copied to `backend` (a plain copy on a host backend).
  static Buffer from_host(Backend& backend, const T* host, Shape shape) {
    Buffer b(backend, std::move(shape));
    b.upload(host);
    return b;
  }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  Buffer(Buffer&& o) noexcept { swap(o); }
  Buffer& operator=(Buffer&& o) noexcept {
    if (this != &o) {
      Buffer tmp(std::move(o));
      swap(tmp);
    }
    return *this;
  }
  ~Buffer() {
    if (device_) backend_->release(device_);
  }

  // An owning copy on the same backend.
  Buffer clone() const {
    Buffer b(*backend_, shape_, Uninitialized{});
    b.copy_from(*this);
    return b;
  }
  // Overwrites this buffer with `src` (same element count, same backend).
  void copy_from(const Buffer& src) {
    if (src.numel_ != numel_) throw_size_mismatch();
    if (host())
      std::copy(src.data(), src.data() + numel_, data());
    else
      backend_->copy(data(), src.data(), bytes());
  }
  void fill_zero() {
    if (host())
      std::fill(data(), data() + numel_, T{});
    else
      backend_->fill_zero(data(), bytes());
  }
  // New shape; the contents are unspecified afterwards (a host buffer keeps std::vector::resize's,
  // a device buffer reallocates only to grow): for scratch the next op overwrites. Owned only.
  void resize(Backend& backend, Shape shape) {
    if (!backend_) backend_ = &backend;
    const int64_t n = shape_numel(shape);
    shape_ = std::move(shape);
    numel_ = n;
    if (host()) {
      host_.resize(static_cast<size_t>(n));
    } else if (n > capacity_) {
      if (device_) backend_->release(device_);
      device_ = nullptr;
      capacity_ = 0;
      device_ = static_cast<T*>(backend_->allocate(bytes()));
      capacity_ = n;
    }
  }
  void upload(const T* host_src) {
    if (host())
      std::copy(host_src, host_src + numel_, data());
    else
      backend_->copy_from_host(data(), host_src, bytes());
  }
  void download(T* host_dst) const {
    if (host())
      std::copy(data(), data() + numel_, host_dst);
    else
      backend_->copy_to_host(host_dst, data(), bytes());
  }
  std::vector<T> to_host() const {
    std::vector<T> v(static_cast<size_t>(numel_));
    download(v.data());
    return v;
  }
  // The contents readable on the host: this buffer's own memory on a host backend (no copy);
  // otherwise downloaded into `staging`.
  const T* host_data(std::vector<T>& staging) const {
    if (host()) return data();
    staging.resize(static_cast<size_t>(numel_));
    download(staging.data());
    return staging.data();
  }

  T* data() { return borrowed_ ? borrowed_ : (device_ ? device_ : host_.data()); }
  const T* data() const { return borrowed_ ? borrowed_ : (device_ ? device_ : host_.data()); }
  const Shape& shape() const { return shape_; }
  int64_t dim(int i) const { return shape_.at(static_cast<size_t>(i)); }
  int rank() const { return static_cast<int>(shape_.size()); }
  int64_t numel() const { return numel_; }
  Backend& backend() const { return *backend_; }
  // A Tensor::borrow view (device memory on a device backend: see the file comment).
  Tensor tensor() const
    requires std::is_same_v<T, float>
  {
    return Tensor::borrow(const_cast<float*>(data()), shape_);
  }

 private:
  struct Uninitialized {};
  Buffer(Backend& backend, Shape shape, Uninitialized)
      : backend_(&backend), shape_(std::move(shape)), numel_(shape_numel(shape_)) {
    if (host()) {
      host_.resize(static_cast<size_t>(numel_));
    } else {
      device_ = static_cast<T*>(backend.allocate(bytes()));
      capacity_ = numel_;
    }
  }
  bool host() const { return backend_->device() == Device::cpu; }
  size_t bytes() const { return static_cast<size_t>(numel_) * sizeof(T); }
  [[noreturn]] static void throw_size_mismatch() { throw_runtime_error("Buffer::copy_from between buffers of different sizes"); }
  void swap(Buffer& o) noexcept {
    std::swap(backend_, o.backend_);
    std::swap(shape_, o.shape_);
    std::swap(numel_, o.numel_);
    std::swap(host_, o.host_);
    std::swap(device_, o.device_);
    std::swap(capacity_, o.capacity_);
    std::swap(borrowed_, o.borrowed_);
  }

  Backend* backend_ = nullptr;
  Shape shape_;
  int64_t numel_ = 0;
  std::vector<T> host_;   // host backend
  T* device_ = nullptr;   // device backend, owned
  int64_t capacity_ = 0;  // elements at device_
  T* borrowed_ = nullptr;
};

using FloatBuffer = Buffer<float>;
using IndexBuffer = Buffer<int64_t>;

// A tensor's memory as a buffer of `backend` (the tensor's data must be that backend's memory).
inline FloatBuffer borrow_buffer(Backend& backend, const Tensor& t) {
  return FloatBuffer::borrow(backend, const_cast<float*>(t.data()), t.shape());
}

// `host` on `backend` without a copy where the backend's memory is host memory; otherwise
// uploaded into `staging`, which must outlive the use of the returned pointer.
template <class T>
const T* on_backend(Backend& backend, const std::vector<T>& host, Buffer<T>& staging) {
  if (backend.device() == Device::cpu) return host.data();
  staging = Buffer<T>::from_host(backend, host.data(), {static_cast<int64_t>(host.size())});
  return staging.data();
}

// Tensors in `backend`'s memory (views on a device backend) copied to owning host tensors.
TensorMap to_host(Backend& backend, const TensorMap& tensors);
// Zeroes every tensor of `tensors`, which lives in `backend`'s memory.
void fill_zero(Backend& backend, TensorMap& tensors);

// Named tensors copied to a backend; tensors() maps the same names to views of that memory.
class BufferMap {
 public:
  BufferMap() = default;
  BufferMap(Backend& backend, const TensorMap& host);
  BufferMap(BufferMap&&) noexcept = default;
  BufferMap& operator=(BufferMap&&) noexcept = default;
  TensorMap& tensors() { return views_; }
  const TensorMap& tensors() const { return views_; }
  // The contents copied back to the host.
  TensorMap to_host() const;
  // Adds (or replaces) `name` as a copy of the host tensor `t`.
  void set(const std::string& name, const Tensor& t);

 private:
  Backend* backend_ = nullptr;
  std::map<std::string, FloatBuffer> buffers_;
  TensorMap views_;
};

}  // namespace sy
