// Local child processes for loopback worlds: the multi-process tests and `switchyard bench
// exchange` start their ranks with this. Each child gets extra environment variables (UCX_TLS,
// rank, rendezvous endpoint); waits are bounded and a child still running at the deadline, or
// when its handle is destroyed, is killed, so a stuck rank can never hang the caller.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "switchyard/core/status.h"

namespace sy::launch {

class LocalProcess {
 public:
  // posix_spawn of argv[0] (a path) with the current environment plus `extra_env`.
  // Throws sy::Error(transport) when the spawn fails.
  static LocalProcess spawn(const std::vector<std::string>& argv,
                            const std::vector<std::pair<std::string, std::string>>& extra_env = {});

  LocalProcess() = default;
  LocalProcess(LocalProcess&& other) noexcept;
  LocalProcess& operator=(LocalProcess&& other) noexcept;
  ~LocalProcess();  // kills and reaps a child still running

  pid_t pid() const { return pid_; }
  bool running() const { return pid_ > 0; }
  // Exit code (128 + signal when killed by a signal), or a timeout error after which the child
  // has been killed.
  Result<int> wait(std::chrono::milliseconds timeout);
  // The exit code (as wait's) once the child has ended, reaping it; nothing while it runs.
  std::optional<int> poll();
  void kill();

 private:
  pid_t pid_ = -1;
  std::string name_;
};

// The path of the running executable (/proc/self/exe).
std::string current_executable();

// Environment for `processes` local children that share this machine's cores (the workers of
// `switchyard up`, co-located ranks): OMP_NUM_THREADS = cores / processes (at least 1) and
// OMP_WAIT_POLICY=passive, each unless the caller's environment sets it. Spinning OpenMP threads
// take the cores from the other processes (a co-located rank with 2 threads on a busy machine:
// 1611 ms a step spinning, 178 ms passive).
std::vector<std::pair<std::string, std::string>> shared_core_env(int processes);

}  // namespace sy::launch
