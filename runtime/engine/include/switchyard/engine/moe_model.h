// The client library's model: `model.layers` MoE layers on a residual stream,
// h_{n+1} = h_n + layer_n(h_n), trained with forward / backward / step. Routed experts live
// either in this process (LocalExperts) or wherever an `ExpertProvider` keeps them (a
// cluster's workers, through runtime/client's ClusterClient); every
// dense parameter (routers, norms, DAG, shared experts, coefficients) lives here. This is the
// object a trainer rank or a serving front end embeds.
#pragma once

#include <deque>
#include <memory>
#include <optional>
#include <vector>

#include "switchyard/core/config.h"
#include "switchyard/core/expert.h"
#include "switchyard/core/io.h"
#include "switchyard/engine/layer_engine.h"
#include "switchyard/engine/optimizer.h"
#include "switchyard/engine/staged_experts.h"

namespace sy {

// Where a model's routed experts live when they are not in this process: the ExpertCompute of
// each layer, and their optimizer step.
class ExpertProvider {
 public:
  virtual ~ExpertProvider() = default;
  virtual ExpertCompute& experts(int layer) = 0;
  // AdamW on the experts, once `group_size` data-parallel ranks asked for step `step`.
  virtual void step(const AdamWConfig& adamw, int group_size, uint64_t step) = 0;
};

// Every layer's parameters (METHODS.md §5 names with layer prefixes), initialised as
// init_layer_weights does.
TensorMap init_model_weights(const ModelConfig& model, uint64_t seed);

class MoeModel {
 public:
  // Everything local.
  MoeModel(const Config& config, TensorMap weights);
  // Everything local, on `backend`. On a device backend the borrowed tensors of `weights` must
  // be that backend's memory (read in place: a framework's device parameters, no copy) and the
  // owned ones are copied there; gradients, activations and AdamW moments live there too, the
  // tensors of forward_layer/backward_layer are the backend's memory, and weights()/grads()
  // map names to views of device memory. Device tensors are checked for names and shapes only
  // (not for NaN/Inf). forward()/backward() keep taking host tensors (copied).
  MoeModel(const Config& config, TensorMap weights, Backend& backend);
  // Routed experts from `experts` (already loaded there, e.g. ClusterClient::load_model);
  // expert tensors in `weights` are dropped, the dense ones kept here, on `backend` (a device
  // backend as in the constructor above; the experts' rows are then staged through host memory:
  // StagedExperts).
  MoeModel(const Config& config, TensorMap weights, ExpertProvider& experts, Backend& backend = cpu_backend());
  ~MoeModel();

  // Residual-stream output h_L for input h_0 = x [T, d]; keeps what backward needs.
  Tensor forward(const Tensor& x, const ImportanceInput& importance = {});
  // dL/dx for L = Σ h_L ⊙ grad_out + aux_loss(); accumulates gradients.
  Tensor backward(const Tensor& grad_out);
  // The same gradients, bit for bit, without dL/dx, for a trainer whose input x is data: the
  // first layer skips what only dL/dx needs (LayerEngine::backward_params).
  void backward_params(const Tensor& grad_out);
  // AdamW on every parameter (dense here, experts where they live), then zeroes gradients.
  // `group_size` data-parallel ranks must all call step for the experts to move.
  void step(const AdamWConfig& adamw, int group_size = 1);
  double aux_loss() const;

  // One layer alone, for trainers that put their own modules between the MoE layers (the C
  // API, the PyTorch module): y_n = layer_n(x) into `y`, and its backward into `grad_x`.
  // `grads` null: the model's gradient map; else a caller's map of the same names (e.g.
  // borrowed buffers) that this backward accumulates into, local experts' gradients included.
  void forward_layer(int n, const Tensor& x, Tensor& y, const ImportanceInput& importance = {});
  void backward_layer(int n, const Tensor& grad_y, Tensor& grad_x, TensorMap* grads = nullptr,
                      double aux_scale = 1.0);
  // AdamW on the experts where they live (a provider's workers) only: the caller's optimizer
  // owns the dense parameters. Throws a runtime error when the experts are local.
  void step_experts(const AdamWConfig& adamw, int group_size = 1);
  // Optimizer steps taken; the next step() or step_experts() is number steps() + 1. A run
  // resumed from a checkpoint of step S sets S (the experts' step numbers go on from there).
  uint64_t steps() const { return steps_; }
  void set_steps(uint64_t steps) { steps_ = steps; }
  // Points parameter `name` at caller memory of the same shape (a framework that moved it).
  void rebind_weight(const std::string& name, float* data);
  TensorMap& mutable_grads() { return grads_; }
  bool experts_local() const { return remote_ == nullptr; }
  const Config& config() const { return config_; }
  const TensorMap& weights() const { return weights_; }  // dense only when on a cluster
  const TensorMap& grads() const { return grads_; }
  const std::vector<std::unique_ptr<LayerEngine>>& layers() const { return layers_; }
  // Layer n; an input error naming n and the layer count when out of range.
  LayerEngine& layer(int n) const;
  Backend& backend() const { return *backend_; }

 private:
  // Checks the (dense, or every) parameters; on a device backend copies the owned ones there.
  void place_weights(bool dense_only);
  void build();
  void backward_through_layer(size_t n, Tensor& dh);
  Config config_;
  Backend* backend_;
  TensorMap weights_, grads_;
  BufferMap device_weights_, device_grads_;  // device backend: owned weights and the gradients
  ExpertProvider* remote_ = nullptr;
  std::vector<std::unique_ptr<LocalExperts>> local_experts_;
  std::deque<std::optional<StagedExperts>> staged_experts_;  // a provider's, for a device engine
  std::vector<std::unique_ptr<LayerEngine>> layers_;
  std::unique_ptr<AdamW> adam_;
  uint64_t steps_ = 0;
};

}  // namespace sy
