// A stand-in device backend whose memory the host cannot touch: device() answers Device::cuda,
// every allocation is its own mmap'd region kept PROT_NONE except while this backend itself runs
// an op or a copy (then the CPU backend does the work). A component that reads or writes
// "device" memory on the host outside the backend (a Tensor copy of a device view, a host loop
// over a device buffer) dies with SIGSEGV, so the device path's memory discipline is tested on a
// machine without a GPU. Ops are counted by name like RecordingBackend. Calls from several threads
// (a worker's) take turns on one mutex.
#pragma once

#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <type_traits>
#include <variant>

#include "switchyard/kernels/backend.h"

namespace sy::test_support {

class GuardedDeviceBackend final : public Backend {
 public:
  GuardedDeviceBackend() = default;
  GuardedDeviceBackend(const GuardedDeviceBackend&) = delete;
  GuardedDeviceBackend& operator=(const GuardedDeviceBackend&) = delete;
  ~GuardedDeviceBackend() override {
    for (const auto& [p, bytes] : regions_) munmap(p, bytes);
  }
  std::string name() const override { return "guarded-device"; }
  Device device() const override { return Device::cuda; }
  void* allocate(size_t bytes) override {
    std::lock_guard lock(mutex_);
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    const size_t size = (bytes + page - 1) / page * page + page;  // never empty
    void* p = mmap(nullptr, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) std::abort();
    regions_[p] = size;
    if (open_) mprotect(p, size, PROT_READ | PROT_WRITE);
    ++allocations;
    return p;
  }
  void release(void* ptr) override {
    std::lock_guard lock(mutex_);
    auto it = regions_.find(ptr);
    if (it == regions_.end()) std::abort();  // not ours
    munmap(it->first, it->second);
    regions_.erase(it);
  }
  void copy_from_host(void* dst, const void* src, size_t bytes) override {
    Open open(*this);
    cpu_backend().copy_from_host(dst, src, bytes);
  }
  void copy_to_host(void* dst, const void* src, size_t bytes) override {
    Open open(*this);
    cpu_backend().copy_to_host(dst, src, bytes);
  }
  void fill_zero(void* dst, size_t bytes) override {
    Open open(*this);
    cpu_backend().fill_zero(dst, bytes);
  }
  void copy(void* dst, const void* src, size_t bytes) override {
    Open open(*this);
    cpu_backend().copy(dst, src, bytes);
  }
  void synchronize() override {}
  // The host ops are not this backend's (a device backend answers false, as CUDA does).
  bool can_implement(const OpArgs& args) const override {
    return !std::holds_alternative<SelectExpertsArgs>(args) && !std::holds_alternative<ComputeGatesArgs>(args) &&
           !std::holds_alternative<ApplyCapacityArgs>(args) && !std::holds_alternative<AllocateExpertsArgs>(args);
  }
  size_t workspace_size(const OpArgs& args) const override { return cpu_backend().workspace_size(args); }
  void run(const OpArgs& args, void* workspace) override {
    if (!can_implement(args)) std::abort();
    std::lock_guard lock(mutex_);
    std::visit([&](const auto& a) { check_device_pointers(a); }, args);
    ++ops[op_name(args)];
    Open open(*this);
    cpu_backend().run(args, workspace);
  }

  std::map<std::string, int> ops;  // op_name → runs

  // The memory arguments of the expert FFN and AdamW ops must be this backend's (a host pointer
  // handed to a device op aborts, as it would fault on a GPU). Other ops are not checked.
  template <class Args>
  void check_device_pointers(const Args& a) const {
    if constexpr (std::is_same_v<Args, FfnForwardArgs>) {
      for (const void* p : {static_cast<const void*>(a.x), static_cast<const void*>(a.out), static_cast<const void*>(a.saved)})
        require_ours(p);
      require_ours(a.w.gate), require_ours(a.w.up), require_ours(a.w.down);
    } else if constexpr (std::is_same_v<Args, FfnBackwardArgs>) {
      for (const void* p : {static_cast<const void*>(a.dout), static_cast<const void*>(a.x),
                            static_cast<const void*>(a.saved), static_cast<const void*>(a.dx)})
        require_ours(p);
      require_ours(a.w.gate), require_ours(a.w.up), require_ours(a.w.down);
      require_ours(a.grads.gate), require_ours(a.grads.up), require_ours(a.grads.down);
    } else if constexpr (std::is_same_v<Args, AdamWArgs>) {
      require_ours(a.param), require_ours(a.grad), require_ours(a.exp_avg), require_ours(a.exp_avg_sq);
    }
  }
  int allocations = 0;

 private:
  // Every region readable and writable for the scope of one backend call.
  struct Open {
    explicit Open(GuardedDeviceBackend& b) : lock_(b.mutex_), b_(b) { b_.protect(PROT_READ | PROT_WRITE); }
    ~Open() { b_.protect(PROT_NONE); }
    std::lock_guard<std::recursive_mutex> lock_;
    GuardedDeviceBackend& b_;
  };
  // Null, or inside one of this backend's regions.
  void require_ours(const void* p) const {
    if (!p) return;
    auto it = regions_.upper_bound(const_cast<void*>(p));
    if (it == regions_.begin()) std::abort();
    --it;
    if (static_cast<const char*>(p) >= static_cast<const char*>(it->first) + it->second) std::abort();
  }
  void protect(int prot) {
    open_ = prot != PROT_NONE;
    for (const auto& [p, bytes] : regions_) mprotect(p, bytes, prot);
  }
  std::recursive_mutex mutex_;  // every call
  std::map<void*, size_t> regions_;
  bool open_ = false;
};

}  // namespace sy::test_support
