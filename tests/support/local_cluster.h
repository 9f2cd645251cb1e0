// A cluster on this machine for tests: the coordinator in this process, and workers as
// `switchyard worker` processes (UCX) or as threads of this process (transport "inprocess").
#pragma once

#include <signal.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "switchyard/coordinator/coordinator.h"
#include "switchyard/launch/local_launch.h"
#include "switchyard/worker/worker.h"

namespace sy {

inline const std::string kBinary = std::string(SY_BINARY_DIR) + "/switchyard";

// The settings tests start from: fast heartbeats, a long request timeout, small chunks.
inline ClusterConfig test_cluster_config(int workers, int replicas, const std::string& transport = "ucx") {
  ClusterConfig c;
  c.transport = transport;
  c.workers = workers;
  c.replicas = replicas;
  c.heartbeat_ms = 200;
  c.dead_after_ms = 3000;
  c.request_timeout_ms = 20000;
  c.chunk_rows = 7;  // small: every cluster test sends each worker its rows in several requests
  return c;
}

struct LocalCluster {
  std::unique_ptr<Coordinator> coordinator;
  std::vector<launch::LocalProcess> workers;
  std::atomic<bool> stop_threads{false};
  std::vector<std::thread> worker_threads;  // transport "inprocess": workers in this process

  // Per worker id, extra environment for its process (UCX only), or the backend its replicas
  // live on (inprocess only; WorkerOptions::backend; none: the cpu).
  explicit LocalCluster(const ClusterConfig& c,
                        const std::vector<std::vector<std::pair<std::string, std::string>>>& env_of = {},
                        const std::vector<Backend*>& backend_of = {}) {
    coordinator = std::make_unique<Coordinator>(c);
    for (int i = 0; i < c.workers; ++i) {
      if (c.transport == "inprocess") {
        WorkerOptions o;
        o.coordinator = coordinator->endpoint();
        o.requested_id = i;
        if (static_cast<size_t>(i) < backend_of.size()) o.backend = backend_of[static_cast<size_t>(i)];
        worker_threads.emplace_back([this, o] { run_worker(o, stop_threads); });
        continue;
      }
      const auto env = static_cast<size_t>(i) < env_of.size() ? env_of[static_cast<size_t>(i)]
                                                                : std::vector<std::pair<std::string, std::string>>{};
      workers.push_back(launch::LocalProcess::spawn(
          {kBinary, "worker", "--coordinator", coordinator->endpoint(), "--id", std::to_string(i)}, env));
    }
  }
  LocalCluster(int n, int replicas, int dead_after_ms = 3000, bool ucx_peer_failure = true,
               const std::vector<std::pair<std::string, std::string>>& worker_env = {},
               const std::string& transport = "ucx")
      : LocalCluster(with(test_cluster_config(n, replicas, transport), dead_after_ms, ucx_peer_failure),
                     std::vector<std::vector<std::pair<std::string, std::string>>>(static_cast<size_t>(n), worker_env)) {}
  ~LocalCluster() {
    stop_threads = true;
    for (auto& t : worker_threads) t.join();
    for (auto& w : workers)
      if (w.running()) ::kill(w.pid(), SIGTERM);
    for (auto& w : workers) (void)w.wait(std::chrono::milliseconds(5000));
  }

 private:
  static ClusterConfig with(ClusterConfig c, int dead_after_ms, bool ucx_peer_failure) {
    c.dead_after_ms = dead_after_ms;
    c.ucx_peer_failure = ucx_peer_failure;
    return c;
  }
};

}  // namespace sy
