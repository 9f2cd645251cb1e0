#include "switchyard/engine/layer_weights.h"

#include <cmath>
#include <set>

#include "switchyard/core/error.h"
#include "switchyard/core/expert.h"

namespace sy {

std::vector<ParamSpec> layer_param_specs(const ModelConfig& model, const std::string& prefix) {
  const int64_t d = model.hidden_size;
  std::vector<ParamSpec> specs;
  auto add = [&](std::string name, Shape shape, ParamInit init, ParamOwner owner, int stage, int expert = -1) {
    specs.push_back({prefix + name, std::move(shape), init, owner, stage, expert});
  };
  if (model.layer.input_norm == InputNorm::rmsnorm) add("input_norm.weight", {d}, ParamInit::ones, ParamOwner::client, -1);
  for (size_t si = 0; si < model.layer.stages.size(); ++si) {
    const StageConfig& st = model.layer.stages[si];
    const int s = static_cast<int>(si);
    const std::string sp = "stages." + std::to_string(s) + ".";
    const int64_t e = st.experts;
    if (s >= 1) add(sp + "norm.weight", {d}, ParamInit::ones, ParamOwner::client, s);
    add(sp + "router.weight", {e, d}, ParamInit::uniform_fan_in, ParamOwner::client, s);
    for (int i = 0; i < st.experts; ++i) {
      const std::string ep = expert_param_prefix("", s, i);  // add() puts the layer prefix in front
      const ExpertGeometry geometry = ExpertGeometry::of(model, s);
      for (const std::string& name : geometry.tensor_names())
        add(ep + name, geometry.shape(name), ParamInit::uniform_fan_in, ParamOwner::expert, s, i);
    }
    if (st.shared_expert.enabled) {
      const int64_t fs = st.shared_expert.ffn_hidden_size;
      add(sp + "shared.gate_proj.weight", {fs, d}, ParamInit::uniform_fan_in, ParamOwner::client, s);
      add(sp + "shared.up_proj.weight", {fs, d}, ParamInit::uniform_fan_in, ParamOwner::client, s);
      add(sp + "shared.down_proj.weight", {d, fs}, ParamInit::uniform_fan_in, ParamOwner::client, s);
      if (st.shared_expert.mix == SharedMix::coefficient) {
        add(sp + "shared_coef.weight", {2, d}, ParamInit::uniform_fan_in, ParamOwner::client, s);
        add(sp + "shared_coef.bias", {2}, ParamInit::zeros, ParamOwner::client, s);
      }
    }
    if (st.aggregation.kind == AggregationKind::dag) {
      const int64_t dg = st.aggregation.dim;
      for (int l = 0; l < st.aggregation.levels; ++l) {
        const std::string dp = sp + "dag." + std::to_string(l) + ".";
        add(dp + "norm.weight", {d}, ParamInit::ones, ParamOwner::client, s);
        add(dp + "norm.bias", {d}, ParamInit::zeros, ParamOwner::client, s);
        add(dp + "down.weight", {dg, d}, ParamInit::uniform_fan_in, ParamOwner::client, s);
        add(dp + "edge.weight", {dg, 2 * dg}, ParamInit::uniform_fan_in, ParamOwner::client, s);
        add(dp + "node.weight", {dg, 2 * dg}, ParamInit::uniform_fan_in, ParamOwner::client, s);
        add(dp + "up.weight", {d, dg}, ParamInit::zeros, ParamOwner::client, s);
      }
    }
  }
  return specs;
}

RandomStream::RandomStream(uint64_t seed, const std::string& name) {
  uint64_t h = 1469598103934665603ull;  // FNV-1a of the name, mixed with the seed
  for (unsigned char c : name) h = (h ^ c) * 1099511628211ull;
  state_ = h ^ (seed * 0x9E3779B97F4A7C15ull);
}

uint64_t RandomStream::next_u64() {
  uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

float RandomStream::uniform(float lo, float hi) {
  const float u = static_cast<float>(next_u64() >> 40) * (1.0f / 16777216.0f);
  return lo + (hi - lo) * u;
}

float RandomStream::normal() {
  const double u1 = (static_cast<double>(next_u64() >> 11) + 0.5) * (1.0 / 9007199254740992.0);
  const double u2 = static_cast<double>(next_u64() >> 11) * (1.0 / 9007199254740992.0);
  return static_cast<float>(std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
}

TensorMap init_layer_weights(const ModelConfig& model, uint64_t seed, const std::string& prefix) {
  TensorMap weights;
  for (const ParamSpec& spec : layer_param_specs(model, prefix)) {
    Tensor t(spec.shape);
    switch (spec.init) {
      case ParamInit::ones: t.fill(1.0f); break;
      case ParamInit::zeros: break;
      case ParamInit::uniform_fan_in: {
        const float bound = 1.0f / std::sqrt(static_cast<float>(spec.shape.back()));
        RandomStream rng(seed, spec.name);
        for (int64_t i = 0; i < t.numel(); ++i) t[i] = rng.uniform(-bound, bound);
        break;
      }
    }
    weights.emplace(spec.name, std::move(t));
  }
  return weights;
}

void check_layer_weights(const ModelConfig& model, const TensorMap& weights, const std::string& source,
                         const std::string& prefix, bool dense_only, bool check_values) {
  std::set<std::string> expected;
  for (const ParamSpec& spec : layer_param_specs(model, prefix)) {
    if (dense_only && spec.owner == ParamOwner::expert) continue;
    expected.insert(spec.name);
    auto it = weights.find(spec.name);
    if (it == weights.end())
      throw_input_error(source + ": missing tensor '" + spec.name + "' (shape " + shape_to_string(spec.shape) +
                        ") required by the config");
    if (it->second.shape() != spec.shape)
      throw_input_error(source + ": tensor '" + spec.name + "' has shape " + shape_to_string(it->second.shape()) +
                        ", the config needs " + shape_to_string(spec.shape));
    for (int64_t i = 0; check_values && i < it->second.numel(); ++i)
      if (!std::isfinite(it->second[i]))
        throw_input_error(source + ": tensor '" + spec.name + "' holds a non-finite value at index " +
                          std::to_string(i));
  }
  for (const auto& [name, tensor] : weights)
    if (name.rfind(prefix, 0) == 0 && !expected.count(name))
      throw_input_error(source + ": unexpected tensor '" + name + "' that the config does not use");
}

TensorMap zeros_like(const TensorMap& tensors) {
  TensorMap out;
  for (const auto& [name, t] : tensors) out.emplace(name, Tensor(t.shape()));
  return out;
}

}  // namespace sy
