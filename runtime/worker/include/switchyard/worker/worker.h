// An expert worker process: holds expert replicas (weights, gradients, AdamW state) and
// serves clients' FORWARD / BACKWARD / STEP / checkpoint requests over the data plane (UCX).
//
// Life: start its own control server (clients Attach there to get a UCX endpoint), register
// with the coordinator (getting its worker id), join the workers' data-plane world (used to
// reduce gradients among replicas of one expert), then serve until stopped, heartbeating
// load statistics to the coordinator.
#pragma once

#include <atomic>
#include <string>

namespace sy {

struct WorkerOptions {
  std::string coordinator;              // "host:port" of the coordinator
  int requested_id = -1;                // -1: the coordinator assigns one
  std::string bind_host = "127.0.0.1";  // where the worker's control server listens
};

// Serves until `stop` is set (signal handler) or the coordinator goes away; returns the
// process exit code. Start-up failures throw sy::Error naming the coordinator or peer.
int run_worker(const WorkerOptions& options, const std::atomic<bool>& stop);

}  // namespace sy
