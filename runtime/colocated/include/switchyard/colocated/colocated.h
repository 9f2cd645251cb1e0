// Co-located expert parallelism, the layout Megatron, DeepSpeed-MoE and Tutel run: N ranks
// (threads or processes; torchrun, mpirun, Slurm), each a data-parallel trainer rank with its own
// tokens and the holder of E/N experts of every stage, in one process. Rank r holds experts
// [r·E/N, (r+1)·E/N) of each stage, so the rows a rank sends to rank r are contiguous in its
// dispatch layout, and a stage's data flow is
//
//   route (layer engine) → pack (the tokens' rows in layout order) → exchange the per-expert
//   counts → exchange the rows (all-to-all-v over the transport's fixed world) → expert (each of this
//   rank's experts in ONE product over all its rows, regrouped by expert in global token
//   order) → exchange back, straight into the output rows →
//   aggregate (layer engine)
//
// Backward sends the output gradients along the same layout (no pack: they are in layout order)
// and the input gradients back. The dense parameters (routers, norms, shared experts, DAG) are
// replicated: `sum_dense_grads` all-reduces them before the optimizer step, every rank summing
// every rank's gradients in rank order, so all ranks step bit-identical dense weights.
#pragma once

#include <map>
#include <memory>
#include <vector>

#include "switchyard/core/config.h"
#include "switchyard/engine/moe_model.h"
#include "switchyard/transport/transport.h"
#include "switchyard/worker/expert_store.h"

namespace sy {

class ColocatedExperts final : public ExpertProvider {
 public:
  // `transport`: this rank's endpoint, connected to a fixed world of N ranks (rank = its rank).
  // `weights`: the model's weights (every rank the same); this rank keeps its experts' only.
  // Every stage's expert count must be a multiple of N (a config error says which is not).
  ColocatedExperts(transport::Transport& transport, const ModelConfig& model, const TensorMap& weights,
                   transport::Timeout timeout);
  ~ColocatedExperts() override;

  ExpertCompute& experts(int layer) override;
  // AdamW on this rank's experts (they hold every rank's gradient contributions already).
  void step(const AdamWConfig& adamw, int group_size, uint64_t step) override;
  // All-reduce (sum) of `grads` over the ranks: call with the same names on every rank.
  void sum_dense_grads(TensorMap& grads);
  // All-reduce (sum, in rank order: bit-identical on every rank) of `values`, the same length on
  // every rank.
  void all_reduce_sum(std::vector<float>& values, const std::string& what);

  int ranks() const { return transport_.world_size(); }
  // The rank holding `expert` of `stage`.
  int owner(int stage, int expert) const;
  const ExpertStore& store() const { return store_; }

 private:
  class Layer;
  transport::Transport& transport_;
  const ModelConfig& model_;
  transport::Timeout timeout_;
  ExpertStore store_;
  std::vector<std::unique_ptr<Layer>> layers_;
};

}  // namespace sy
