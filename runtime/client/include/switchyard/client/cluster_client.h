// The client side of the cluster: a library object inside a trainer rank or a serving front
// end. It registers with the coordinator (a data-plane id), learns membership and placement,
// connects its one data-plane transport to every worker, loads expert weights per placement,
// and gives the layer engine a `RemoteExperts` per layer:
//
//   plan (scheduler: plan_dispatch) → dispatch(plan, rows) → handle → combine(handle)
//
// packing each worker's rows once, in the plan's order; backward reuses the forward's plan.
// Every wait is bounded (cluster.request_timeout_ms). A worker that dies (a data-plane failure,
// or the coordinator declares it dead) is lost: its rows go to surviving replicas of their
// experts and the step goes on (failover, runtime/client/src/remote_experts.cc); the
// coordinator fences it. An expert left without a live replica fails the call naming it and the
// lost worker; a silent worker the coordinator still sees alive fails it at the timeout. Public calls throw sy::Error: input when a worker refused the data
// given (bad weights, a bad checkpoint), transport for dead peers and timeouts, runtime else.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "switchyard/client/cluster_admin.h"
#include "switchyard/core/config.h"
#include "switchyard/core/io.h"
#include "switchyard/placement/placement.h"
#include "switchyard/engine/layer_engine.h"
#include "switchyard/engine/moe_model.h"
#include "switchyard/engine/optimizer.h"

namespace sy {

struct DispatchPlan;

// A checkpoint written or restored (README "Checkpoints").
struct CheckpointInfo {
  std::string dir;               // the checkpoint directory itself (a checkpoint_dir resolved through `latest`)
  uint64_t step = 0;             // training steps taken when it was written: continue with step + 1
  uint64_t placement_epoch = 0;  // the placement's epoch when it was written
};

// Status, shutdown and rebalance of a running cluster, without attaching (cluster_admin.h).
class ClusterClient final : public ExpertProvider {
 public:
  // Connects to the coordinator (retrying up to `connect_timeout_ms`: under a launcher it may
  // still be starting), waits up to cluster.startup_timeout_ms until every expected worker is
  // alive, and attaches to each.
  ClusterClient(const std::string& coordinator, const std::string& name, int connect_timeout_ms = ClusterConfig{}.startup_timeout_ms);
  ~ClusterClient();
  ClusterClient(const ClusterClient&) = delete;
  ClusterClient& operator=(const ClusterClient&) = delete;

  // Places the model (new placement epoch), loads every expert's weights from `weights`
  // (names of METHODS.md §5, with "layers.{n}." when model.layers > 1) onto its replicas.
  void load_model(const Config& config, const TensorMap& weights);
  // Uses the model another client loaded (waits until it is committed).
  void use_loaded_model(const Config& config);

  // The routed experts of layer `layer`, for a LayerEngine. `training` keeps the workers'
  // activations for backward; serving requests do not.
  ExpertCompute& experts(int layer) override;
  void set_training(bool training);

  // Optimizer step of the expert replicas: every worker applies AdamW once `group_size`
  // clients (data-parallel ranks) asked for step number `step`; replicas' gradients are
  // reduced first so they stay bit-identical. With cluster.checkpoint_every_steps N, a step
  // number that is a multiple of N ends with a checkpoint into cluster.checkpoint_dir, written
  // by one client of the group: the one the coordinator names in its answer to the step's load
  // report (the first to report it); with the coordinator away, a client with group_size 1.
  void step(const AdamWConfig& adamw, int group_size, uint64_t step) override;
  // Expert weight gradients, summed over replicas (names as in the weights file).
  TensorMap fetch_expert_grads();
  // The weights of the expert replicas `worker` holds (model weight names), e.g. to check that
  // replicas are bit-identical or to export trained experts.
  TensorMap fetch_replica_weights(int worker);
  void zero_expert_grads();
  // Checkpoint every worker's replicas (weights + AdamW state) under the current placement to
  // `dir` (created; a relative one is made absolute here, where the client runs), with its
  // manifest, placement and model (README "Checkpoints"). Every worker
  // the placement uses must be attached; the client must see `dir` too.
  CheckpointInfo save_checkpoint(const std::string& dir);
  // Restores a checkpoint: `dir` is one (it holds manifest.yaml) or a cluster.checkpoint_dir
  // (its `latest` names one). Input errors (exit 3) name the file: no checkpoint there, a
  // missing worker file, another model, or another placement than the cluster's (the error
  // says how to start or rebalance the cluster to the checkpoint's placement.yaml). A directory
  // of worker files only (no manifest) is restored as such, each worker checking that its file
  // holds exactly the replicas the placement puts on it.
  CheckpointInfo restore_checkpoint(const std::string& dir);

  // Rows this client has sent to each worker (index = worker id), for load display.
  std::vector<uint64_t> rows_sent() const;
  // Seconds spent in exchange (waiting on the data plane, less the workers' compute) and in
  // the workers' compute (the slowest worker of each round trip), since construction.
  double exchange_seconds() const { return exchange_seconds_; }
  double worker_compute_seconds() const;
  // Rows through the data path since construction, and the copies of them this client made:
  // `packed` into a send buffer (the gather of a forward's rows, or rows kept for failover),
  // `unpacked` from a reply buffer into the output rows (replies whose rows are not contiguous in
  // the layout; the others land in place).
  struct CopyCounts {
    uint64_t rows_sent = 0, rows_packed = 0, rows_received = 0, rows_unpacked = 0;
  };
  CopyCounts copies() const;
  const Placement& placement() const { return placement_; }
  int workers() const;
  // Workers this client lost (failed over to surviving replicas) since construction.
  uint64_t workers_lost() const;

  struct Impl;

 private:
  void make_layer_experts(int layers);
  // Load statistics and placement epochs (live rebalancing).
  void count_load(int layer, int stage, const cpu::DispatchLayout& layout, const DispatchPlan& plan);
  struct MigrateAsk {  // the coordinator asks this step to run a rebalance's copies
    uint64_t epoch = 0, at_step = 0;
    bool checkpoint = false;        // ... or to write its checkpoint
    bool coordinator_away = false;  // it did not answer
  };
  MigrateAsk report_load(uint64_t step_number);
  // The workers write `dir`/worker-{id}.safetensors under placement_, then the manifest.
  CheckpointInfo write_checkpoint(const std::string& dir, uint64_t step_number);
  void periodic_checkpoint(uint64_t step_number);
  void switch_placement(Placement next);
  void at_request_boundary();
  void await_epoch(uint64_t epoch);
  std::unique_ptr<Impl> impl_;
  Placement placement_;
  bool training_ = true;
  double exchange_seconds_ = 0;
  friend class RemoteExperts;
};

}  // namespace sy
