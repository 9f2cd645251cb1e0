// The layer engine: one MoE layer (METHODS.md §3) forward and backward, stage by stage.
//
//   route (router, allocation, gates, capacity) → dispatch layout → pack rows by expert
//   → ExpertCompute (local FFNs here; the cluster's workers in the distributed runtime)
//   → aggregate (weighted sum or DAG) → shared expert mix → residual into the next stage.
//
// The engine holds the dense (client-side) parameters by reference; routed experts are
// reached only through `ExpertCompute`, which is the seam between client and workers.
//
// Compute: every numeric op (router linear, softmax, norms, gather/scatter, FFNs, aggregation,
// mixes, losses) and the host ops (top-k selection, gates, capacity, expert allocation) run as
// ops of a `Backend` (kernels/ops.h) through one workspace per object (OpRunner); only the
// host index structures (DispatchLayout, NodeList) are built here. Activations are Buffers
// (kernels/buffer.h) of the engine's backend.
//
// Where tensors live: the weights, gradient maps and the tensors of forward_into/backward_into
// (x, y, grad_y, grad_x, attention, importance) are in the backend's memory — host tensors on
// a host backend; on a device backend, Tensor::borrow views of device memory (a BufferMap's
// tensors(), a framework's CUDA tensor). forward()/backward() take and return host tensors on
// every backend (a device engine copies them through the backend). On a device backend the
// host ops (selection, gates, capacity, expert allocation) run on the host CPU backend over
// host copies of the router probabilities and the importance, and the device ops read the
// host Selection/NodeList they produce (the backend uploads them into its workspace).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "switchyard/core/config.h"
#include "switchyard/core/io.h"
#include "switchyard/core/side_thread.h"
#include "switchyard/kernels/backend.h"
#include "switchyard/kernels/buffer.h"
#include "switchyard/kernels/cpu_ops.h"

namespace sy {

// Runs a stage's routed experts: the seam between the engine and wherever experts live. The
// dispatch layout says which token each packed row is (`layout.token`) and which expert computes
// it (rows of expert i are [layout.expert_offsets[i], layout.expert_offsets[i+1])). The compute
// packs the rows itself, once, in the order its destination wants (this process: layout order;
// a cluster: per worker, in the dispatch plan's order).
class ExpertCompute {
 public:
  virtual ~ExpertCompute() = default;
  // output[rows, d] (layout order) = E_i(tokens[layout.token[r]]); keeps what backward needs
  // until the next forward of this stage.
  virtual void forward(int stage, const cpu::DispatchLayout& layout, const Tensor& tokens, Tensor& output) = 0;
  // grad_input[rows, d] (overwritten) from grad_output; accumulates the experts' weight gradients.
  // `grad_input` null: the caller needs no input gradient (a first stage fed the data itself):
  // the weight gradients only, skipping the input-gradient products where the compute can.
  virtual void backward(int stage, const cpu::DispatchLayout& layout, const Tensor& grad_output,
                        Tensor* grad_input) = 0;
  // True when forward mostly waits while the rows are away (another process computes them): the
  // engine then computes the stage's shared expert on its own thread meanwhile.
  virtual bool waits_for_rows() const { return false; }
};

// Experts computed in this process from tensors in a weight map (names of METHODS.md §5), on
// `backend`: the weights, gradients and the Tensors crossing ExpertCompute are that backend's
// memory (on a device backend, `output` and `grad_input` are views of buffers this object
// owns, valid until its next forward/backward of the stage).
class LocalExperts final : public ExpertCompute {
 public:
  // `grads` may be null for forward-only use; otherwise weight gradients accumulate there.
  LocalExperts(const ModelConfig& model, const TensorMap& weights, TensorMap* grads, std::string prefix = "",
               Backend& backend = cpu_backend());
  void forward(int stage, const cpu::DispatchLayout& layout, const Tensor& tokens, Tensor& output) override;
  void backward(int stage, const cpu::DispatchLayout& layout, const Tensor& grad_output, Tensor* grad_input) override;
  void set_grads(TensorMap* grads) { grads_ = grads; }

 private:
  const ModelConfig& model_;
  const TensorMap& weights_;
  TensorMap* grads_;
  std::string prefix_;
  OpRunner ops_;
  std::vector<FloatBuffer> saved_;   // [stage] FfnForwardArgs::saved of every packed row
  std::vector<FloatBuffer> inputs_;  // [stage] packed input kept for backward
  // Device backend only: [stage] the layout's token index uploaded, and the outputs handed out.
  std::vector<IndexBuffer> index_;
  std::vector<FloatBuffer> outputs_, grad_inputs_;
};

// DA-MoE importance for dynamic stages: attention probabilities [B, H, L, L] (T = B·L), or
// importance values directly, [T] (one sequence) or [B, L].
struct ImportanceInput {
  const Tensor* attention = nullptr;
  const Tensor* importance = nullptr;
};

struct StageStats {
  int64_t tokens = 0;
  int64_t assignments = 0;  // Σ_t |S_t| before capacity
  int64_t dropped = 0;      // assignments removed by capacity
  double mean_k = 0.0;      // mean K_t (before capacity)
  std::vector<int64_t> k_histogram;  // [experts + 1]: tokens with K_t = k
  std::vector<int32_t> k;            // [tokens]: K_t of each token (before capacity)
  std::vector<int64_t> expert_rows;  // [experts]: rows each expert computed
  double load_balance_loss = 0.0;
  double z_loss = 0.0;
};

class LayerEngine {
 public:
  // `weights` must stay alive and hold the layer's dense parameters (validate with
  // check_layer_weights first); routed experts are reached through `experts`.
  LayerEngine(const ModelConfig& model, const TensorMap& weights, ExpertCompute& experts, std::string prefix = "",
              Backend& backend = cpu_backend());
  ~LayerEngine();

  // y = Σ_s m_s for x [T, d]. Keeps what backward needs. Host tensors in and out (copied
  // through a device backend).
  Tensor forward(const Tensor& x, const ImportanceInput& importance = {});
  // The same into `y` [T, d] (overwritten; e.g. a caller's buffer through Tensor::borrow), all
  // tensors in the backend's memory.
  void forward_into(const Tensor& x, Tensor& y, const ImportanceInput& importance = {});
  // dL/dx for L = Σ y ⊙ grad_y + aux_scale · aux_loss(); dense gradients accumulate into
  // `grads` (which must hold zeros_like(weights) or earlier gradients), expert gradients go
  // through the ExpertCompute.
  // grad_y and the result are host tensors (copied through a device backend); `grads` is in
  // the backend's memory.
  Tensor backward(const Tensor& grad_y, TensorMap& grads, double aux_scale = 1.0);
  // The same into `grad_x` [T, d] (overwritten), in the backend's memory.
  void backward_into(const Tensor& grad_y, TensorMap& grads, Tensor& grad_x, double aux_scale = 1.0);
  // The gradients only, no dL/dx (the input is data, not some parameter's output): the same
  // gradients, bit for bit, without the work only dL/dx needs — the first stage's expert,
  // shared-expert and router input gradients, when it has no input norm. grad_y is a host tensor.
  void backward_params(const Tensor& grad_y, TensorMap& grads, double aux_scale = 1.0);

  // Evaluation option: every stage drops each token's `n` best experts (cpu::drop_top_experts);
  // 0 (default) routes normally. For robustness measurements, not for training.
  void set_drop_top_experts(int n);
  double aux_loss() const;  // Σ over stages of load-balance + z losses of the last forward
  const std::vector<StageStats>& stats() const { return stats_; }
  Backend& backend() const { return ops_.backend(); }

 private:
  struct StageState;
  FloatBuffer stage_forward(int s, FloatBuffer u, const ImportanceInput& importance);
  // The named steps of stage_forward: route → dispatch (and the shared expert) → aggregate →
  // mix → stats.
  std::vector<int32_t> experts_per_token(int s, int64_t tokens, const ImportanceInput& importance);
  void route(int s, const FloatBuffer& u, const std::vector<int32_t>& k);
  void dispatch(int s, const FloatBuffer& u);
  void dispatch_and_shared_expert(int s, const FloatBuffer& u);
  void shared_expert_forward(int s, const FloatBuffer& u);
  void aggregate(int s, const FloatBuffer& u);
  FloatBuffer mix_shared_expert(int s, const FloatBuffer& u);
  void record_stats(int s, const std::vector<int32_t>& k);
  // grad_x null: no dL/dx wanted (backward_params).
  void backward_stages(const Tensor& grad_y, TensorMap& grads, Tensor* grad_x, double aux_scale);
  // dL/du of stage s; input_grad false: the stage's parameter gradients only, and the result is
  // not dL/du (only what the aggregation and mix write into it on their way).
  FloatBuffer stage_backward(int s, const FloatBuffer& dm, TensorMap& grads, double aux_scale, bool input_grad);
  void unpack_input_grads(int s, const Tensor& d_packed, FloatBuffer& du);
  void router_backward(int s, const FloatBuffer& dgate, TensorMap& grads, double aux_scale, FloatBuffer* du);
  // The runner for the host ops: the engine's own on a host backend, the CPU backend's otherwise.
  OpRunner& host_ops() { return host_ops_ ? *host_ops_ : ops_; }
  const Tensor& param(const std::string& name) const;
  float* grad(TensorMap& grads, const std::string& name) const;

  const ModelConfig& model_;
  const TensorMap& weights_;
  ExpertCompute& experts_;
  std::string prefix_;
  OpRunner ops_;  // the engine's backend and its one workspace
  std::unique_ptr<OpRunner> host_ops_;  // device backend only: the host ops on the CPU backend
  std::vector<std::unique_ptr<StageState>> states_;
  std::unique_ptr<SideThread> side_;  // the shared expert while the routed rows are away (first use)
  std::vector<StageStats> stats_;
  Shape input_shape_;  // of the last forward's input, checked against grad_y
  int drop_top_ = 0;
};

}  // namespace sy
