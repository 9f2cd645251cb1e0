// The worker-side holder of expert replicas: weights, gradients and AdamW state per
// (layer, stage, expert), the expert FFN forward/backward on rows a client sent, the optimizer
// step, and checkpoints.
//
// Requests. A client's forward for one (layer, stage) carries a caller-chosen `request_id`
// (e.g. a hash of client, step, layer, stage); the store keeps the activations backward needs
// under (request_id, expert) until backward() or drop_request() releases them. Forward-only
// (serving) traffic uses infer(), which keeps nothing.
//
// Threads. forward, infer and backward may run concurrently from several threads, for any mix
// of experts and request ids (backward of one expert serializes its gradient accumulation,
// so the sum order of concurrent backward calls on one expert follows their timing).
// add, remove, step, zero_grads and load take the store exclusively and wait for running
// computations; call them at step boundaries. grads() hands out a reference for the
// cross-replica reduction: use it while no backward is in flight.
//
// Compute: the expert FFN forward/backward and the AdamW step are ops of the store's Backend
// (kernels/ops.h). Each concurrent computation takes an OpRunner (one growing workspace) from a
// pool the store keeps until it is destroyed; forward keeps the FFN activations in the request's
// own buffer (FfnForwardArgs::saved).
//
// Device stores (a backend whose memory is not host memory, e.g. CUDA: a GPU worker). Weights,
// gradients, AdamW moments and kept activations live in the device's memory; the rows of a
// request (host memory: they came over the wire) are copied to the device, and the results
// back, around each computation, which the store runs one at a time (one device stream).
// weights(), grads() and optimizer().state() are host-store views; on a device store use
// weights_copy(), grads_copy(), flat_grads()/set_flat_grads() and tensors_of(), which copy.
//
// Replicas of one expert stay bit-identical when they start equal and, before every step(),
// their gradients are made equal (the reduction writes the same sum into each replica's grads).
//
// Checkpoint: one safetensors file per worker, the model weight file's names
// (expert_param_name: "layers.{l}." only when the model has several layers), AdamW moments next
// to each weight ("….up_proj.weight.exp_avg", "….exp_avg_sq"), and metadata: "format" =
// "switchyard.expert_store", "version" = "2" (version 1, where every name carried "layers.{l}.",
// is still read), "hidden_size", and per replica
// "adam_steps.layers.{l}.stages.{s}.experts.{i}" = its AdamW step count. Gradients are not
// saved (a checkpoint is taken between steps).
#pragma once

#include <span>
#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <utility>
#include <vector>

#include "switchyard/core/config.h"
#include "switchyard/core/expert.h"
#include "switchyard/core/io.h"
#include "switchyard/engine/optimizer.h"
#include "switchyard/kernels/backend.h"
#include "switchyard/kernels/buffer.h"
#include "switchyard/kernels/cpu_ops.h"
#include "switchyard/placement/placement.h"

namespace sy {

class ExpertStore {
 public:
  // Keeps a copy of the model config; `backend` runs the FFNs and AdamW and holds the replicas.
  explicit ExpertStore(const ModelConfig& model, Backend& backend = cpu_backend());
  ExpertStore(const ExpertStore&) = delete;
  ExpertStore& operator=(const ExpertStore&) = delete;

  // Adds a replica with its weights (short names, ExpertGeometry::tensor_names; shapes [f, d] for
  // gate/up, [d, f] for down; finite), zeroed gradients and fresh AdamW state (step 0, zero
  // moments). Throws an input error naming the tensor or the key (already held, not in the model).
  void add(const ExpertKey& key, TensorMap weights);
  // Adds a replica with its whole state (weights, moments, step): checkpoint restore and migration.
  void add(const ExpertKey& key, ExpertTensors tensors);
  // The same for a replica copy whose values the copy already verified (finite, non-negative
  // second moments) as they landed: checks names and shapes only, and takes `zero_grads` (zeros
  // of the weights' shapes, allocated ahead) as its gradients.
  void add_verified(const ExpertKey& key, ExpertTensors tensors, TensorMap zero_grads);
  // A copy of the replica's state (weights, AdamW moments and step): fetch, checkpoint, migration.
  ExpertTensors tensors_of(const ExpertKey& key) const;
  // Drops a replica and any activations kept for it (after a migration moved it away).
  void remove(const ExpertKey& key);
  bool holds(const ExpertKey& key) const;
  std::vector<ExpertKey> keys() const;  // sorted

  // out[rows, d] = E(x[rows, d]) (overwritten); keeps x and the FFN activations under
  // (request_id, key) for backward. A second forward for the same (request_id, key) before its
  // backward is an error. `x_owner`, when given, keeps x's memory alive: the store holds on to it
  // instead of copying x (rows received from the wire are kept where they landed).
  void forward(const ExpertKey& key, uint64_t request_id, const float* x, int64_t rows, float* out,
               std::shared_ptr<const void> x_owner = nullptr);
  // Input rows forward copied to keep them (those without an owner), since construction.
  int64_t rows_copied() const { return rows_copied_.load(); }
  // out = E(x) keeping nothing: forward-only (serving) requests.
  void infer(const ExpertKey& key, const float* x, int64_t rows, float* out) const;
  // grad_in[rows, d] (overwritten; null: not wanted, not computed) from grad_out[rows, d] for
  // the rows of forward(key, request_id); accumulates the weight gradients; releases that
  // forward's activations.
  // `rows` must equal the forward's. `weight_segments` (row counts summing to rows; empty: one):
  // the weight gradients sum one product per segment, in order, as if each segment had been its
  // own request (the co-located experts compute every source rank's rows in one product but
  // keep the gradient sums of one request per source rank).
  void backward(const ExpertKey& key, uint64_t request_id, const float* grad_out, int64_t rows, float* grad_in,
                std::span<const int64_t> weight_segments = {});
  // Releases every activation kept under request_id (a forward that will see no backward).
  void drop_request(uint64_t request_id);
  // Requests with activations still kept (for leak checks and status).
  int64_t pending_activations() const;

  // The replica's gradients and weights (short names) in place: host stores only (a device
  // store throws a runtime error naming the key).
  TensorMap& grads(const ExpertKey& key);
  const TensorMap& weights(const ExpertKey& key) const;
  // The replica's AdamW state: step count and moments ("{name}.exp_avg", "{name}.exp_avg_sq";
  // views of device memory on a device store).
  const AdamW& optimizer(const ExpertKey& key) const;
  // Host copies, on any store: weights and gradients (fetch), and the gradients flattened in
  // the TensorMap's name order (the cross-replica reduction), written back by set_flat_grads.
  TensorMap weights_copy(const ExpertKey& key) const;
  TensorMap grads_copy(const ExpertKey& key) const;
  std::vector<float> flat_grads(const ExpertKey& key) const;
  void set_flat_grads(const ExpertKey& key, std::span<const float> values);
  // Whether the replicas live in host memory (weights()/grads() usable; rows need no copies).
  bool host_resident() const { return !on_device_; }
  Backend& backend() const { return backend_; }

  // AdamW with `config` on every replica (each with its own step counter; replicas that saw
  // no tokens still step, so all replicas of an expert advance together), then zero grads.
  void step(const AdamWConfig& config);
  void zero_grads();

  // Checkpoint (format above). save() writes path.tmp and renames it (the directory is
  // created); `only` non-null: just those replicas (each must be held). load() replaces the
  // store's contents with the file's replicas after validating every tensor (name, shape,
  // finite, nothing missing or extra) and the metadata, and, with `expect`, that the file holds
  // exactly those replicas; on error the store is unchanged and the input error names the file
  // and the tensor or replica. Kept activations are released.
  void save(const std::string& path, const std::vector<ExpertKey>* only = nullptr) const;
  void load(const std::string& path, const std::vector<ExpertKey>* expect = nullptr);
  // Drops every replica (a checkpoint that places none here).
  void clear();

  // Replica memory: Σ over replicas of 4 × expert weight bytes (weights, gradients, two
  // moments) — the quantity placement's memory check budgets.
  int64_t bytes() const;

  const ModelConfig& model() const { return model_; }

 private:
  struct Replica {
    Replica(ExpertTensors t, Backend& backend);
    Replica(ExpertTensors t, TensorMap zero_grads, Backend& backend);
    // Short names; in host_* on a host store, views of device_* on a device store.
    TensorMap& weights() { return on_device ? device_weights.tensors() : host_weights; }
    const TensorMap& weights() const { return on_device ? device_weights.tensors() : host_weights; }
    TensorMap& grads() { return on_device ? device_grads.tensors() : host_grads; }
    bool on_device;
    TensorMap host_weights, host_grads;
    BufferMap device_weights, device_grads;
    AdamW optimizer;
    std::mutex grad_mutex;  // serializes gradient accumulation of concurrent backward calls
  };
  struct Activations {  // what backward needs from one forward
    int64_t rows = 0;
    const float* x = nullptr;            // in `x_copy`, memory `x_owner` keeps alive, or device_x
    std::vector<float> x_copy;
    std::shared_ptr<const void> x_owner;
    std::vector<float> saved;  // FfnForwardArgs::saved (host store)
    FloatBuffer device_x, device_saved;  // device store
  };
  Replica& replica(const ExpertKey& key) const;  // caller holds mutex_
  void insert(const ExpertKey& key, std::unique_ptr<Replica> r);  // fails when already held
  // Runs one op with an idle OpRunner of the pool (a new one when all are busy) and waits for it.
  void run_op(const OpArgs& args) const;
  // Held around a device store's copies and ops (one at a time); does not lock on a host store.
  std::unique_lock<std::mutex> device_turn() const;
  Replica& host_replica(const ExpertKey& key, const char* what) const;  // caller holds mutex_
  std::unique_ptr<Replica> make_replica(ExpertTensors tensors, TensorMap zero_grads) const;  // uploads on a device
  // A device store's forward (act: keeps x and the activations on the device; null: infer).
  void device_forward(const ExpertGeometry& g, const Replica& r, const float* x, int64_t rows, float* out,
                      Activations* act) const;

  ModelConfig model_;
  Backend& backend_;
  bool on_device_;
  mutable std::mutex device_mutex_;  // device_turn()
  mutable std::mutex runner_mutex_;                              // idle_runners_
  mutable std::vector<std::unique_ptr<OpRunner>> idle_runners_;  // one per concurrent computation
  mutable std::shared_mutex mutex_;  // replicas_: shared for compute, exclusive for changes
  std::map<ExpertKey, std::unique_ptr<Replica>> replicas_;
  mutable std::mutex cache_mutex_;  // cache_
  std::atomic<int64_t> rows_copied_{0};
  std::map<std::pair<uint64_t, ExpertKey>, Activations> cache_;
};

}  // namespace sy
