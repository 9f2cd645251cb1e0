// An expert worker: holds expert replicas (weights, gradients, AdamW state) and serves
// clients' requests (runtime/wire: forward, backward, step, fetch, checkpoint) over the data
// plane.
//
// Life: start its own control server (clients Attach there), register with the coordinator
// (worker id, timeouts, transport kind), make this process's one transport and join the workers'
// fixed world on it (to reduce gradients among replicas of one expert), then serve until
// stopped, heartbeating load statistics; attached clients are dynamic peers of that transport.
// A failed request is answered with an ErrorInfo (bad request, dead peer, internal).
#pragma once

#include <atomic>
#include <string>

#include "switchyard/core/config.h"
#include "switchyard/kernels/backend.h"

namespace sy {

struct WorkerOptions {
  std::string coordinator;              // "host:port" of the coordinator
  int requested_id = -1;                // -1: the coordinator assigns one
  uint32_t replaces_pid = 0;            // the lost process this one replaces in requested_id's slot (up)
  std::string bind_host = "127.0.0.1";  // where the worker's control server listens
  // How long to retry reaching the coordinator: the schema default of cluster.startup_timeout_ms
  // (the worker has no config before it reaches the coordinator).
  int connect_timeout_ms = ClusterConfig{}.startup_timeout_ms;
  // Where the replicas live and compute: "cpu", or "cuda" (the CLI's --device cuda:N makes
  // device N the process's only visible one first). Rows always travel in host memory (UCX as
  // Debian builds it has no CUDA memory support): a CUDA worker stages them to the device and
  // back (ExpertStore: device stores).
  std::string device = "cpu";
  // Overrides `device` with a backend the caller owns (tests: a stand-in device backend).
  Backend* backend = nullptr;
};

// Serves until `stop` is set (signal handler) or the coordinator goes away; returns the
// process exit code. Start-up failures throw sy::Error naming the coordinator or peer.
int run_worker(const WorkerOptions& options, const std::atomic<bool>& stop);

}  // namespace sy
