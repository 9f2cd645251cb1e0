// The coordinator: membership (workers register and heartbeat), the versioned placement, load
// statistics, and the rendezvous that bootstraps the workers' data-plane world. Control plane
// only; it never touches token rows.
#pragma once

#include <atomic>
#include <memory>
#include <string>

#include "switchyard/core/config.h"

namespace sy {

// The token cluster.http asks for when the cluster has a secret (README "Observability"):
// hex(HMAC-SHA256(secret, "switchyard http v1")); "" without a secret.
std::string http_token(const std::string& secret);

class Coordinator {
 public:
  // Binds the control server on `cluster.coordinator` (port 0: any free port) and starts serving.
  explicit Coordinator(const ClusterConfig& cluster);
  ~Coordinator();
  Coordinator(const Coordinator&) = delete;
  Coordinator& operator=(const Coordinator&) = delete;

  std::string endpoint() const;     // "host:port"
  // cluster.http's "host:port" (/metrics and the dashboard); "" when cluster.http is off.
  std::string http_endpoint() const;
  int registered_workers() const;   // workers that have registered so far
  int alive_workers() const;        // registered and heartbeating within dead_after_ms
  bool shutdown_requested() const;  // a client sent Shutdown
  // Logs workers that stopped heartbeating (once each); call periodically.
  void check_liveness();
  void stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace sy
