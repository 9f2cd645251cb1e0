// A running cluster seen and steered from outside, without attaching: `switchyard status`,
// `placement load`, `rebalance`, `shutdown`. Calls go to the coordinator's control channel;
// failures throw sy::Error (transport: the coordinator is unreachable; config: it refused the
// request, e.g. a bad placement, naming why; transport: a rebalance failed, naming the worker).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "switchyard/placement/placement.h"

namespace sy {

struct WorkerStatus {
  int id = 0;
  uint32_t pid = 0;
  std::string host, control_endpoint;
  bool alive = false;
  uint64_t rows_forward = 0, rows_backward = 0, steps = 0;
  uint32_t experts = 0;
  uint64_t expert_bytes = 0;
  double rows_per_s = 0;
  uint64_t ms_since_heartbeat = 0;
  bool fenced = false;  // a client lost it: never used again (a restart registers anew)
  int data_plane_id = 0;     // its process's (the id for the first process; a replacement's is fresh)
  uint32_t restarts = 0;     // processes that replaced a lost one in this slot
  bool replacement = false;  // a replacement that holds no replicas yet
  std::string device = "cpu";  // where its replicas live and compute (its backend)
};

struct ClientStatus {
  int id = 0;
  std::string name;
  uint64_t placement_epoch = 0;
  bool training = false;
  uint64_t step = 0;
  uint64_t ms_since_report = 0;
};

// The coordinator's load window: rows (layer, stage; layers outer) × experts (the widest
// stage), and rows × workers, summed over the last `steps` steps.
struct ClusterLoad {
  uint32_t steps = 0;
  int rows = 0, experts = 0, workers = 0;
  std::vector<int64_t> routed, computed;  // [rows × experts]: before capacity drops, computed
  std::vector<int64_t> worker_rows;       // [rows × workers]
  std::vector<double> ema;                // [rows × experts]: computed rows, EMA (0.95 per step)
  double balancedness = 1, balancedness_min = 1;  // Σ_r mean_w ÷ Σ_r max_w; the worst row
};

struct RebalanceInfo {
  uint64_t epoch = 0;
  std::string state;   // "copying", "committed", "failed"
  std::string source;  // "placement file", "from load", "policy", "recovery"
  std::string error;
  uint32_t moved_replicas = 0, dropped_replicas = 0;
  uint64_t moved_bytes = 0, at_step = 0;
  double pause_ms = 0, copy_seconds = 0, balancedness_before = 0, balancedness_after = 0;
  double since_loss_seconds = 0;  // recovery: first lost worker → this epoch committed
};

struct ClusterStatus {
  uint64_t placement_epoch = 0;
  int workers_expected = 0;
  std::vector<WorkerStatus> workers;
  std::vector<ClientStatus> clients;
  bool model_loaded = false;
  Placement placement;
  ClusterLoad load;
  std::vector<RebalanceInfo> rebalances;  // latest first
};

// Reads the coordinator's view (for `switchyard status`).
ClusterStatus query_cluster_status(const std::string& coordinator);
// Asks the coordinator to shut the cluster down (`switchyard up` stops its workers).
void request_cluster_shutdown(const std::string& coordinator);

struct RebalanceOptions {
  std::string placement_yaml;  // the new placement (text), or
  std::string placement_source = "";  // its file name, for errors
  bool from_load = false;      // plan it from the coordinator's load window
  int slots_per_worker = 0;    // 0: cluster.rebalance.slots_per_worker
  int max_moves = -2;          // -2: cluster.rebalance.max_moves
};
// Runs one rebalance and waits for its end: the committed record, or throws naming the worker.
RebalanceInfo rebalance_cluster(const std::string& coordinator, const RebalanceOptions& options);

}  // namespace sy
