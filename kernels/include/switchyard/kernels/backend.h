// Compute backends: where kernels run.
//
// The CPU backend (kernels/cpu) is always built, always registered, and is the reference
// every other backend is tested against. The CUDA backend (kernels/cuda) is compiled only
// when CMake finds nvcc and registers itself only when a device is present at run time.
// Only backend_registry.cc knows which backends were compiled in; nothing else in the
// tree tests for CUDA.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "switchyard/core/config.h"
#include "switchyard/core/tensor.h"
#include "switchyard/kernels/cpu_ops.h"
#include "switchyard/kernels/ops.h"

namespace sy {

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  virtual Device device() const = 0;

  // Memory on this backend's device; the caller owns what it allocates.
  virtual void* allocate(size_t bytes) = 0;
  virtual void release(void* ptr) = 0;
  virtual void copy_from_host(void* dst, const void* src, size_t bytes) = 0;
  virtual void copy_to_host(void* dst, const void* src, size_t bytes) = 0;
  virtual void synchronize() = 0;
  // Zeroes `bytes` at dst, and copies `bytes` from src to dst, within this backend's memory,
  // ordered with its ops. The defaults: memset/memcpy on a host backend; on a device backend
  // a round trip through host memory (a device backend overrides them).
  virtual void fill_zero(void* dst, size_t bytes);
  virtual void copy(void* dst, const void* src, size_t bytes);

  // Operators (ops.h), CUTLASS style. can_implement: whether this backend runs the op with
  // these arguments; false for ops it lacks, never throws. workspace_size: bytes of scratch
  // run() needs, to be allocated by the caller with allocate() (0: workspace may be null).
  // run: executes the op on this backend's device (asynchronously: synchronize() before
  // reading results on the host); allocates nothing; throws Error if !can_implement(args).
  virtual bool can_implement(const OpArgs& args) const = 0;
  virtual size_t workspace_size(const OpArgs& args) const = 0;
  virtual void run(const OpArgs& args, void* workspace) = 0;

  // The two entry points from before the op table, on device-resident data.
  void softmax_forward(const float* z, int64_t n, int64_t e, float* p, float* lse);
  // Allocates and releases the activations (workspace) itself.
  void ffn_forward(const float* x, int64_t rows, int64_t d, int64_t f, Activation activation,
                   const cpu::ExpertWeights& w, float* out);
};

// can_implement → workspace_size → allocate → run → synchronize → release. Throws if the backend
// cannot implement the op. For tests and one-off calls; a hot loop keeps its workspace.
void run_with_own_workspace(Backend& backend, const OpArgs& args);

// Runs a sequence of ops on one backend with ONE workspace, grown (allocate) when an op needs
// more than it holds and released in the destructor: the per-object workspace of the layer
// engine, the local experts and the expert store. Not thread-safe (one per thread of work).
class OpRunner {
 public:
  explicit OpRunner(Backend& backend) : backend_(&backend) {}
  OpRunner(const OpRunner&) = delete;
  OpRunner& operator=(const OpRunner&) = delete;
  ~OpRunner();
  Backend& backend() const { return *backend_; }
  // can_implement (throws if not) → workspace_size → grow → run. Asynchronous like Backend::run.
  void run(const OpArgs& args);
  size_t workspace_bytes() const { return bytes_; }

 private:
  Backend* backend_;
  void* workspace_ = nullptr;
  size_t bytes_ = 0;
};

// The usable backend called `name` (as name() answers), or null when it is not usable here.
Backend* find_backend(const std::string& name);

// Every backend usable in this process, most capable first; the CPU backend is always last.
const std::vector<Backend*>& backends();
Backend& cpu_backend();
// Names of the backends compiled into this build (whether or not a device is present).
std::vector<std::string> compiled_backends();

}  // namespace sy
