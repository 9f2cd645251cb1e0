// Expert identity and tensors, decided once for the whole tree: how a routed expert is named
// (its key, its parameter names), its geometry (tensor shapes), and the `ExpertTensors` value
// (weights, AdamW moments, step) with its one codec to flat payload floats. Loading experts
// onto workers, fetching them back, checkpoints and migration all go through this header.
#pragma once

#include <compare>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "switchyard/core/config.h"
#include "switchyard/core/io.h"

namespace sy {

// One routed expert of one stage of one layer.
struct ExpertKey {
  int layer = 0;
  int stage = 0;
  int expert = 0;
  auto operator<=>(const ExpertKey&) const = default;
  std::string to_string() const;  // "layers.0.stages.1.experts.5": how messages name it
};

// True when the model has this expert.
bool expert_exists(const ModelConfig& model, const ExpertKey& key);

// The parameter-name rule (METHODS.md §5): layer n's parameters carry the prefix
// "layers.{n}." when the model has more than one layer, none otherwise.
std::string layer_prefix(const ModelConfig& model, int layer);
// "{layer_prefix}stages.{s}.experts.{i}." for a layer prefix from layer_prefix().
std::string expert_param_prefix(std::string_view layer_prefix, int stage, int64_t expert);
// "{layer_prefix}stages.{s}.experts.{i}.{tensor}", e.g. "stages.0.experts.3.up_proj.weight".
std::string expert_param_name(const ModelConfig& model, const ExpertKey& key, std::string_view tensor);
// The inverse: splits a parameter name into its expert key and tensor ("up_proj.weight" or a
// moment "up_proj.weight.exp_avg"). `layer_always`: names carry "layers.{n}." whatever the
// layer count (the version-1 checkpoint spelling). False when the name has another form.
bool parse_expert_param_name(const ModelConfig& model, std::string_view name, ExpertKey& key, std::string& tensor,
                             bool layer_always = false);

// The shapes of one expert's tensors, short names in the one canonical order:
// "gate_proj.weight" (swiglu only) [f, d], "up_proj.weight" [f, d], "down_proj.weight" [d, f].
struct ExpertGeometry {
  int64_t d = 0, f = 0;
  Activation activation = Activation::swiglu;

  static ExpertGeometry of(const ModelConfig& model, int stage);
  const std::vector<std::string>& tensor_names() const;
  Shape shape(std::string_view tensor) const;  // throws for a name not in tensor_names()
  int64_t weight_floats() const;               // Σ over tensor_names of numel
};

// One expert replica's state. `weights` under short names; `moments` the AdamW state under
// "{name}.exp_avg" / "{name}.exp_avg_sq" (empty when only weights travel); `step` AdamW's count.
struct ExpertTensors {
  TensorMap weights;
  TensorMap moments;
  int64_t step = 0;

  // Fresh state for `weights`: zero moments, step 0.
  static ExpertTensors fresh(const ExpertGeometry& geometry, TensorMap weights);
  // Checks names, shapes and finiteness against `geometry` (moments too when present); throws
  // an input error "<what>: ..." naming the tensor.
  void validate(const ExpertGeometry& geometry, const std::string& what) const;
  // Names and shapes only: for state whose values were checked where it was made (a replica
  // copy verifies values as it lands).
  void validate_shapes(const ExpertGeometry& geometry, const std::string& what) const;
};

// The codec: flat floats, tensor by tensor in canonical order: the weight, then (when
// `with_moments`) its exp_avg and exp_avg_sq. decode throws an input error naming
// `what` when the payload is shorter or longer than the geometry needs.
void encode_expert(const ExpertGeometry& geometry, const ExpertTensors& tensors, bool with_moments,
                   std::vector<float>& out);  // appends
// The same codec without moments, straight from a weight (or gradient) map: no copy of it.
void encode_expert_weights(const ExpertGeometry& geometry, const TensorMap& weights, std::vector<float>& out);
ExpertTensors decode_expert(const ExpertGeometry& geometry, std::span<const float> payload, bool with_moments,
                            const std::string& what);
// Floats one encoded expert takes.
int64_t encoded_expert_floats(const ExpertGeometry& geometry, bool with_moments);

// One expert's weights (short names) cut out of a model weight map (expert_param_name names).
// Throws an input error naming the missing tensor.
TensorMap extract_expert_weights(const ModelConfig& model, const TensorMap& weights, const ExpertKey& key);

}  // namespace sy
