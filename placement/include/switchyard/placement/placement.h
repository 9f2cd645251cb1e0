// Expert placement: which workers hold a replica of each (layer, stage, expert), versioned by
// epoch. It starts from a placement YAML (`cluster.placement`) or the default round-robin
// spread, and is checked against the model, the number of workers and each worker's memory.
//
// Placement YAML (configs/placement-example.yaml):
//
//   placement:
//     experts:
//       - {layer: 0, stage: 0, expert: 0, workers: [0, 2]}     # one expert, two replicas
//       - {layer: 0, stage: 0, experts: "1-7", workers: [1]}   # a range "a-b" (inclusive)
//       - {layer: 1, stage: 0, experts: all, workers: [0, 1]}  # every expert of that stage
//       - {layer: 0, stage: 0, expert: 8, workers: [1, 3], shares: [0.75, 0.25]}
//
// Entry keys: `layer`, `stage` (required), exactly one of `expert` (an index) or `experts`
// (an index, "a-b" or "all"), and `workers` (a non-empty list of worker ids, first = primary).
// Unknown keys, experts the model lacks, an expert listed twice, workers outside
// 0..workers-1, a worker twice in one entry and unplaced experts are errors naming the file,
// line and entry ("placement.yaml:7: placement.experts[2]: ...").
//
// Memory: a replica costs 4 × its weight bytes on its worker (weights, gradients and AdamW's
// two moments); per worker the sum over its replicas must fit `cluster.worker_memory_mb`.
#pragma once

#include <compare>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "switchyard/core/config.h"
#include "switchyard/core/expert.h"

namespace sy {

class Placement {
 public:
  uint64_t epoch = 0;
  std::map<ExpertKey, std::vector<int>> replicas;  // expert → worker ids (first = primary)
  // expert → share of its rows per replica, parallel to `replicas`; absent: an even split.
  std::map<ExpertKey, std::vector<double>> shares;

  // default_placement(model, workers, 1).
  static Placement round_robin(const ModelConfig& model, int workers);
  // Every expert of the model placed at least once, on workers in [0, workers), no expert
  // twice on one worker, no entry for an expert the model lacks. Throws a config error
  // naming the entry.
  void validate(const ModelConfig& model, int workers) const;
  const std::vector<int>& workers_for(const ExpertKey& key) const;
  // The shares of `key`'s replicas (even when none were planned), parallel to workers_for(key).
  std::vector<double> shares_of(const ExpertKey& key) const;
  // Whether worker `worker` holds a replica of `key`.
  bool holds(int worker, const ExpertKey& key) const;
  // The experts a worker holds a replica of, in key order.
  std::vector<ExpertKey> experts_on(int worker) const;
};

// Throws a config error naming `key` unless `shares` has one number >= 0 per replica, summing
// to 1 within 1e-6.
void check_shares(const ExpertKey& key, const std::vector<double>& shares, size_t replicas);

// Weight bytes of one routed expert of `stage`: swiglu 3·f·d floats, gelu 2·f·d (4 bytes each).
int64_t expert_weight_bytes(const ModelConfig& model, int stage);
// What one replica of such an expert costs its worker: 4 × expert_weight_bytes (weights,
// gradients, AdamW exp_avg and exp_avg_sq).
int64_t expert_replica_bytes(const ModelConfig& model, int stage);
// What moving one replica copies: 3 × expert_weight_bytes (weights and AdamW's two moments;
// gradients are not moved, a step boundary has none).
int64_t expert_migration_bytes(const ModelConfig& model, int stage);
// Per worker (index 0..workers-1): Σ over the replicas it holds of expert_replica_bytes.
std::vector<int64_t> worker_replica_bytes(const Placement& placement, const ModelConfig& model, int workers);
// Throws a config error "<source>: worker W needs N bytes (X MiB) for K expert replicas ...,
// over its budget of B bytes (Y MiB, cluster.worker_memory_mb)" for the first worker over budget.
void check_worker_memory(const Placement& placement, const ModelConfig& model, int workers,
                         int64_t worker_memory_bytes, const std::string& source);

// The documented default: expert number n, counting over layers, stages, experts in that
// order, goes to workers n, n+1, …, n+replicas-1 (mod workers). Needs 1 <= replicas <= workers.
Placement default_placement(const ModelConfig& model, int workers, int replicas);

// Reads and validates a placement YAML (format above), memory included. Throws
// sy::Error(config) naming the file, line and entry.
Placement load_placement(const std::string& path, const ModelConfig& model, int workers,
                         int64_t worker_memory_bytes);
// The same from text; `source` names it in errors.
Placement parse_placement(const std::string& yaml_text, const std::string& source, const ModelConfig& model,
                          int workers, int64_t worker_memory_bytes);

// The placement a cluster starts with: `cluster.placement` when set, else
// default_placement(model, cluster.workers, cluster.replicas); validated, memory included.
Placement cluster_placement(const ModelConfig& model, const ClusterConfig& cluster);

// The placement as placement YAML (one entry per expert, `expert:` form); parse_placement
// reads it back to an equal placement.
std::string placement_to_yaml(const Placement& placement);

}  // namespace sy
