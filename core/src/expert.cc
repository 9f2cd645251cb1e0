#include "switchyard/core/expert.h"

#include <charconv>
#include <cmath>
#include <cstring>

#include "switchyard/core/error.h"

namespace sy {
namespace {

constexpr const char* kMomentSuffixes[] = {".exp_avg", ".exp_avg_sq"};

// Reads "{label}{n}." off the front of `name` into `value`; one spelling per number.
bool take_index(std::string_view& name, std::string_view label, int& value) {
  if (!name.starts_with(label)) return false;
  name.remove_prefix(label.size());
  const auto r = std::from_chars(name.data(), name.data() + name.size(), value);
  if (r.ec != std::errc() || r.ptr == name.data() || r.ptr == name.data() + name.size() || *r.ptr != '.') return false;
  if (name[0] == '0' && r.ptr - name.data() > 1) return false;
  name.remove_prefix(static_cast<size_t>(r.ptr - name.data()) + 1);
  return true;
}

const Tensor& find_tensor(const TensorMap& map, const std::string& name, const std::string& what) {
  auto it = map.find(name);
  if (it == map.end()) throw_input_error(what + ": missing tensor '" + name + "'");
  return it->second;
}

}  // namespace

std::string ExpertKey::to_string() const {
  return "layers." + std::to_string(layer) + ".stages." + std::to_string(stage) + ".experts." + std::to_string(expert);
}

bool expert_exists(const ModelConfig& model, const ExpertKey& key) {
  return key.layer >= 0 && key.layer < model.layers && key.stage >= 0 &&
         key.stage < static_cast<int>(model.layer.stages.size()) && key.expert >= 0 &&
         key.expert < model.layer.stages[static_cast<size_t>(key.stage)].experts;
}

std::string layer_prefix(const ModelConfig& model, int layer) {
  return model.layers > 1 ? "layers." + std::to_string(layer) + "." : "";
}

std::string expert_param_prefix(std::string_view layer_prefix, int stage, int64_t expert) {
  return std::string(layer_prefix) + "stages." + std::to_string(stage) + ".experts." + std::to_string(expert) + ".";
}

std::string expert_param_name(const ModelConfig& model, const ExpertKey& key, std::string_view tensor) {
  return expert_param_prefix(layer_prefix(model, key.layer), key.stage, key.expert) + std::string(tensor);
}

bool parse_expert_param_name(const ModelConfig& model, std::string_view name, ExpertKey& key, std::string& tensor,
                             bool layer_always) {
  key = ExpertKey{};
  if ((layer_always || model.layers > 1) && !take_index(name, "layers.", key.layer)) return false;
  if (!take_index(name, "stages.", key.stage) || !take_index(name, "experts.", key.expert)) return false;
  tensor = std::string(name);
  return !tensor.empty();
}

ExpertGeometry ExpertGeometry::of(const ModelConfig& model, int stage) {
  const StageConfig& st = model.layer.stages.at(static_cast<size_t>(stage));
  return {model.hidden_size, st.ffn_hidden_size, st.activation};
}

const std::vector<std::string>& ExpertGeometry::tensor_names() const {
  static const std::vector<std::string> swiglu{"gate_proj.weight", "up_proj.weight", "down_proj.weight"};
  static const std::vector<std::string> gelu{"up_proj.weight", "down_proj.weight"};
  return activation == Activation::swiglu ? swiglu : gelu;
}

Shape ExpertGeometry::shape(std::string_view tensor) const {
  if (tensor == "down_proj.weight") return {d, f};
  if (tensor == "up_proj.weight" || (tensor == "gate_proj.weight" && activation == Activation::swiglu)) return {f, d};
  throw_input_error(std::string("a ") + to_string(activation) + " expert has no tensor '" + std::string(tensor) + "'");
}

int64_t ExpertGeometry::weight_floats() const { return static_cast<int64_t>(tensor_names().size()) * d * f; }

ExpertTensors ExpertTensors::fresh(const ExpertGeometry& geometry, TensorMap weights) {
  ExpertTensors t;
  for (const std::string& name : geometry.tensor_names())
    for (const char* suffix : kMomentSuffixes) t.moments.emplace(name + suffix, Tensor(geometry.shape(name)));
  t.weights = std::move(weights);
  return t;
}

namespace {
// Branch-free scans (they vectorize): a replica moved in a rebalance is validated on arrival.
bool all_finite(std::span<const float> values) {
  uint32_t bad = 0;
  for (float v : values) {
    uint32_t bits;
    std::memcpy(&bits, &v, sizeof bits);
    bad |= static_cast<uint32_t>((bits & 0x7f800000u) == 0x7f800000u);  // exponent all ones: inf or NaN
  }
  return bad == 0;
}
bool any_negative(std::span<const float> values) {
  uint32_t neg = 0;
  for (float v : values) neg |= static_cast<uint32_t>(v < 0.0f);
  return neg != 0;
}
}  // namespace

void ExpertTensors::validate(const ExpertGeometry& geometry, const std::string& what) const {
  validate_shapes(geometry, what);
  for (const std::string& name : geometry.tensor_names()) {
    if (!all_finite(weights.at(name).span())) throw_input_error(what + ": tensor '" + name + "' is not finite");
    if (moments.empty()) continue;
    for (const char* suffix : kMomentSuffixes)
      if (!all_finite(moments.at(name + suffix).span()))
        throw_input_error(what + ": tensor '" + name + suffix + "' is not finite");
    if (any_negative(moments.at(name + ".exp_avg_sq").span()))
      throw_input_error(what + ": tensor '" + name + ".exp_avg_sq' holds a negative second moment");
  }
}

void ExpertTensors::validate_shapes(const ExpertGeometry& geometry, const std::string& what) const {
  const auto check = [&](const TensorMap& map, const std::string& name, const Shape& want) {
    const Tensor& t = find_tensor(map, name, what);
    if (t.shape() != want)
      throw_input_error(what + ": tensor '" + name + "' has shape " + shape_to_string(t.shape()) + ", expected " +
                        shape_to_string(want));
  };
  const auto known = [&](const std::string& name, bool moment) {
    for (const std::string& w : geometry.tensor_names()) {
      if (!moment && name == w) return true;
      if (moment && (name == w + kMomentSuffixes[0] || name == w + kMomentSuffixes[1])) return true;
    }
    return false;
  };
  for (const TensorMap* map : {&weights, &moments})
    for (const auto& [name, t] : *map)
      if (!known(name, map == &moments)) throw_input_error(what + ": unexpected tensor '" + name + "'");
  for (const std::string& name : geometry.tensor_names()) {
    check(weights, name, geometry.shape(name));
    if (moments.empty()) continue;
    for (const char* suffix : kMomentSuffixes) check(moments, name + suffix, geometry.shape(name));
  }
  if (step < 0) throw_input_error(what + ": negative AdamW step count");
}

int64_t encoded_expert_floats(const ExpertGeometry& geometry, bool with_moments) {
  return geometry.weight_floats() * (with_moments ? 3 : 1);
}

void encode_expert(const ExpertGeometry& geometry, const ExpertTensors& tensors, bool with_moments,
                   std::vector<float>& out) {
  if (!with_moments) return encode_expert_weights(geometry, tensors.weights, out);
  out.reserve(out.size() + static_cast<size_t>(encoded_expert_floats(geometry, true)));
  const auto append = [&](const TensorMap& map, const std::string& n) {
    const Tensor& t = find_tensor(map, n, "encode_expert");
    out.insert(out.end(), t.data(), t.data() + t.numel());
  };
  for (const std::string& name : geometry.tensor_names()) {
    append(tensors.weights, name);
    for (const char* suffix : kMomentSuffixes) append(tensors.moments, name + suffix);
  }
}

void encode_expert_weights(const ExpertGeometry& geometry, const TensorMap& weights, std::vector<float>& out) {
  out.reserve(out.size() + static_cast<size_t>(encoded_expert_floats(geometry, false)));
  for (const std::string& name : geometry.tensor_names()) {
    const Tensor& t = find_tensor(weights, name, "encode_expert");
    out.insert(out.end(), t.data(), t.data() + t.numel());
  }
}

ExpertTensors decode_expert(const ExpertGeometry& geometry, std::span<const float> payload, bool with_moments,
                            const std::string& what) {
  const int64_t need = encoded_expert_floats(geometry, with_moments);
  if (static_cast<int64_t>(payload.size()) != need)
    throw_input_error(what + ": " + std::to_string(payload.size()) + " floats for an expert of " + std::to_string(need));
  ExpertTensors t;
  size_t off = 0;
  const auto take = [&](TensorMap& map, const std::string& n, const Shape& shape) {
    Tensor x(shape);
    std::memcpy(x.data(), payload.data() + off, sizeof(float) * static_cast<size_t>(x.numel()));
    off += static_cast<size_t>(x.numel());
    map.emplace(n, std::move(x));
  };
  for (const std::string& name : geometry.tensor_names()) {
    take(t.weights, name, geometry.shape(name));
    if (with_moments)
      for (const char* suffix : kMomentSuffixes) take(t.moments, name + suffix, geometry.shape(name));
  }
  return t;
}

TensorMap extract_expert_weights(const ModelConfig& model, const TensorMap& weights, const ExpertKey& key) {
  if (!expert_exists(model, key)) throw_input_error("the model has no expert " + key.to_string());
  TensorMap out;
  for (const std::string& name : ExpertGeometry::of(model, key.stage).tensor_names())
    out.emplace(name, find_tensor(weights, expert_param_name(model, key, name), "weights of expert " + key.to_string()));
  return out;
}

}  // namespace sy
