// Backend members shared by every backend: the entry points from before the op table.
#include "switchyard/kernels/backend.h"

#include <cstring>
#include <string>
#include <vector>

#include "switchyard/core/error.h"

namespace sy {

void run_with_own_workspace(Backend& backend, const OpArgs& args) {
  if (!backend.can_implement(args)) throw_runtime_error(backend.name() + " backend cannot implement " + op_name(args));
  const size_t bytes = backend.workspace_size(args);
  void* workspace = bytes ? backend.allocate(bytes) : nullptr;
  try {
    backend.run(args, workspace);
    backend.synchronize();
  } catch (...) {
    if (workspace) backend.release(workspace);
    throw;
  }
  if (workspace) backend.release(workspace);
}

void Backend::fill_zero(void* dst, size_t bytes) {
  if (bytes == 0) return;
  if (device() == Device::cpu) {
    std::memset(dst, 0, bytes);
    return;
  }
  const std::vector<char> zeros(bytes, 0);
  copy_from_host(dst, zeros.data(), bytes);
}

void Backend::copy(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  if (device() == Device::cpu) {
    std::memmove(dst, src, bytes);
    return;
  }
  std::vector<char> staging(bytes);
  copy_to_host(staging.data(), src, bytes);
  copy_from_host(dst, staging.data(), bytes);
}

Backend* find_backend(const std::string& name) {
  for (Backend* b : backends())
    if (b->name() == name) return b;
  return nullptr;
}

OpRunner::~OpRunner() {
  if (workspace_) backend_->release(workspace_);
}

void OpRunner::run(const OpArgs& args) {
  if (!backend_->can_implement(args))
    throw_runtime_error(backend_->name() + " backend cannot implement " + op_name(args));
  const size_t bytes = backend_->workspace_size(args);
  if (bytes > bytes_) {
    if (workspace_) backend_->release(workspace_);
    workspace_ = nullptr;
    bytes_ = 0;
    workspace_ = backend_->allocate(bytes);
    bytes_ = bytes;
  }
  backend_->run(args, bytes ? workspace_ : nullptr);
}

void Backend::softmax_forward(const float* z, int64_t n, int64_t e, float* p, float* lse) {
  run(SoftmaxForwardArgs{.z = z, .n = n, .e = e, .p = p, .lse = lse}, nullptr);
}

void Backend::ffn_forward(const float* x, int64_t rows, int64_t d, int64_t f, Activation activation,
                          const cpu::ExpertWeights& w, float* out) {
  run_with_own_workspace(
      *this, FfnForwardArgs{.x = x, .rows = rows, .d = d, .f = f, .activation = activation, .w = w, .out = out});
}

}  // namespace sy
