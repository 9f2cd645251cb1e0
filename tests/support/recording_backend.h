// A Backend that records every op it is asked to run (by op_name) and every allocation, and
// delegates everything to the CPU backend: tests use it to show that a component's ops all go
// through the Backend it was given.
#pragma once

#include <map>
#include <string>

#include "switchyard/kernels/backend.h"

namespace sy::test_support {

class RecordingBackend final : public Backend {
 public:
  // `device` is what device() answers (Device::cuda: a stand-in for a device backend).
  explicit RecordingBackend(Device device = Device::cpu) : device_(device) {}
  std::string name() const override { return "recording"; }
  Device device() const override { return device_; }
  void* allocate(size_t bytes) override {
    ++allocations;
    return cpu_backend().allocate(bytes);
  }
  void release(void* ptr) override { cpu_backend().release(ptr); }
  void copy_from_host(void* dst, const void* src, size_t bytes) override {
    cpu_backend().copy_from_host(dst, src, bytes);
  }
  void copy_to_host(void* dst, const void* src, size_t bytes) override { cpu_backend().copy_to_host(dst, src, bytes); }
  void synchronize() override { cpu_backend().synchronize(); }
  bool can_implement(const OpArgs& args) const override { return cpu_backend().can_implement(args); }
  size_t workspace_size(const OpArgs& args) const override { return cpu_backend().workspace_size(args); }
  void run(const OpArgs& args, void* workspace) override {
    ++ops[op_name(args)];
    cpu_backend().run(args, workspace);
  }

  std::map<std::string, int> ops;  // op_name → runs
  int allocations = 0;

 private:
  Device device_;
};

}  // namespace sy::test_support
