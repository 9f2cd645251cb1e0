#include "switchyard/runtime/expert_store.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <set>
#include <string_view>

#include "switchyard/core/error.h"
#include "switchyard/runtime/layer_weights.h"
#include "switchyard/runtime/layer_weights.h"

namespace sy {
namespace {

constexpr const char* kFormat = "switchyard.expert_store";
constexpr const char* kVersion = "1";
constexpr const char* kStepsPrefix = "adam_steps.";

bool key_exists(const ModelConfig& model, const ExpertKey& key) {
  return key.layer >= 0 && key.layer < model.layers && key.stage >= 0 &&
         key.stage < static_cast<int>(model.layer.stages.size()) && key.expert >= 0 &&
         key.expert < model.layer.stages[static_cast<size_t>(key.stage)].experts;
}

const StageConfig& stage_of(const ModelConfig& model, const ExpertKey& key) {
  return model.layer.stages[static_cast<size_t>(key.stage)];
}

Shape expected_shape(const ModelConfig& model, const ExpertKey& key, const std::string& name) {
  const int64_t d = model.hidden_size, f = stage_of(model, key).ffn_hidden_size;
  return name == "down_proj.weight" ? Shape{d, f} : Shape{f, d};
}

bool all_finite(const Tensor& t) {
  for (float v : t.values())
    if (!std::isfinite(v)) return false;
  return true;
}

// Parses "layers.{l}.stages.{s}.experts.{i}.{rest}"; false if the name has another form.
bool parse_tensor_name(std::string_view name, ExpertKey& key, std::string& rest) {
  int* const fields[] = {&key.layer, &key.stage, &key.expert};
  const std::string_view labels[] = {"layers.", "stages.", "experts."};
  for (int i = 0; i < 3; ++i) {
    if (!name.starts_with(labels[i])) return false;
    name.remove_prefix(labels[i].size());
    const auto r = std::from_chars(name.data(), name.data() + name.size(), *fields[i]);
    if (r.ec != std::errc() || r.ptr == name.data() || *r.ptr != '.') return false;
    if (name[0] == '0' && r.ptr - name.data() > 1) return false;  // no leading zeros: one spelling per key
    name.remove_prefix(static_cast<size_t>(r.ptr - name.data()) + 1);
  }
  rest = std::string(name);
  return !rest.empty();
}

struct ExpertGeometry {
  int64_t d, f;
  Activation activation;
};

ExpertGeometry geometry(const ModelConfig& model, const ExpertKey& key) {
  const StageConfig& st = stage_of(model, key);
  return {model.hidden_size, st.ffn_hidden_size, st.activation};
}

cpu::ExpertWeights weights_of(const TensorMap& w, Activation activation) {
  cpu::ExpertWeights out;
  if (activation == Activation::swiglu) out.gate = w.at("gate_proj.weight").data();
  out.up = w.at("up_proj.weight").data();
  out.down = w.at("down_proj.weight").data();
  return out;
}

cpu::ExpertGrads grads_of(TensorMap& g, Activation activation) {
  cpu::ExpertGrads out;
  if (activation == Activation::swiglu) out.gate = g.at("gate_proj.weight").data();
  out.up = g.at("up_proj.weight").data();
  out.down = g.at("down_proj.weight").data();
  return out;
}

bool same_except_lr(const AdamWConfig& a, const AdamWConfig& b) {
  return a.beta1 == b.beta1 && a.beta2 == b.beta2 && a.eps == b.eps && a.weight_decay == b.weight_decay;
}

}  // namespace

std::vector<std::string> expert_tensor_names(Activation activation) {
  if (activation == Activation::swiglu) return {"gate_proj.weight", "up_proj.weight", "down_proj.weight"};
  return {"up_proj.weight", "down_proj.weight"};
}

std::string expert_tensor_name(const ExpertKey& key, const std::string& name) { return key.to_string() + "." + name; }

TensorMap extract_expert_weights(const ModelConfig& model, const TensorMap& layer_weights, const ExpertKey& key,
                                 const std::string& prefix) {
  if (!key_exists(model, key)) throw_input_error("the model has no expert " + key.to_string());
  TensorMap out;
  for (const std::string& name : expert_tensor_names(stage_of(model, key).activation)) {
    const std::string full = prefix + "stages." + std::to_string(key.stage) + ".experts." +
                             std::to_string(key.expert) + "." + name;
    auto it = layer_weights.find(full);
    if (it == layer_weights.end()) throw_input_error("weights lack tensor '" + full + "' of expert " + key.to_string());
    out.emplace(name, it->second);
  }
  return out;
}

ExpertStore::Replica::Replica(TensorMap w)
    : weights(std::move(w)), grads(zeros_like(weights)), optimizer(AdamWConfig{}) {
  TensorMap moments;
  for (const auto& [name, t] : weights) {
    moments.emplace(name + ".exp_avg", Tensor(t.shape()));
    moments.emplace(name + ".exp_avg_sq", Tensor(t.shape()));
  }
  optimizer.restore_state(0, std::move(moments));
}

ExpertStore::ExpertStore(const ModelConfig& model) : model_(model) {}

ExpertStore::Replica& ExpertStore::replica(const ExpertKey& key) const {
  auto it = replicas_.find(key);
  if (it == replicas_.end()) throw_runtime_error("expert store holds no replica of " + key.to_string());
  return *it->second;
}

void ExpertStore::add(const ExpertKey& key, TensorMap weights) {
  if (!key_exists(model_, key)) throw_input_error("expert store: the model has no expert " + key.to_string());
  const std::vector<std::string> names = expert_tensor_names(stage_of(model_, key).activation);
  for (const std::string& name : names) {
    auto it = weights.find(name);
    if (it == weights.end()) throw_input_error("expert " + key.to_string() + ": missing tensor '" + name + "'");
    const Shape want = expected_shape(model_, key, name);
    if (it->second.shape() != want) {
      throw_input_error("expert " + key.to_string() + ": tensor '" + name + "' has shape " +
                        shape_to_string(it->second.shape()) + ", expected " + shape_to_string(want));
    }
    if (!all_finite(it->second)) throw_input_error("expert " + key.to_string() + ": tensor '" + name + "' is not finite");
  }
  for (const auto& [name, t] : weights) {
    if (std::find(names.begin(), names.end(), name) == names.end())
      throw_input_error("expert " + key.to_string() + ": unexpected tensor '" + name + "'");
  }
  auto r = std::make_unique<Replica>(std::move(weights));
  std::unique_lock lock(mutex_);
  if (!replicas_.emplace(key, std::move(r)).second)
    throw_input_error("expert store already holds a replica of " + key.to_string());
}

void ExpertStore::remove(const ExpertKey& key) {
  std::unique_lock lock(mutex_);
  if (replicas_.erase(key) == 0) throw_runtime_error("expert store holds no replica of " + key.to_string());
  std::lock_guard cache_lock(cache_mutex_);
  std::erase_if(cache_, [&](const auto& entry) { return entry.first.second == key; });
}

bool ExpertStore::holds(const ExpertKey& key) const {
  std::shared_lock lock(mutex_);
  return replicas_.count(key) != 0;
}

std::vector<ExpertKey> ExpertStore::keys() const {
  std::shared_lock lock(mutex_);
  std::vector<ExpertKey> out;
  out.reserve(replicas_.size());
  for (const auto& entry : replicas_) out.push_back(entry.first);
  return out;
}

void ExpertStore::forward(const ExpertKey& key, uint64_t request_id, const float* x, int64_t rows, float* out) {
  if (rows < 0) throw_runtime_error("expert store: negative row count for " + key.to_string());
  std::shared_lock lock(mutex_);
  const Replica& r = replica(key);
  const ExpertGeometry g = geometry(model_, key);
  const auto cache_key = std::make_pair(request_id, key);
  {
    std::lock_guard cache_lock(cache_mutex_);
    if (cache_.count(cache_key)) {
      throw_runtime_error("expert store: request " + std::to_string(request_id) + " already ran forward on " +
                          key.to_string() + " (backward or drop_request releases it)");
    }
  }
  Activations act;
  act.rows = rows;
  act.x.assign(x, x + rows * g.d);
  if (rows > 0) cpu::ffn_forward(x, rows, g.d, g.f, g.activation, weights_of(r.weights, g.activation), out, &act.ffn);
  std::lock_guard cache_lock(cache_mutex_);
  if (!cache_.emplace(cache_key, std::move(act)).second) {
    throw_runtime_error("expert store: request " + std::to_string(request_id) + " ran forward on " + key.to_string() +
                        " twice at once");
  }
}

void ExpertStore::infer(const ExpertKey& key, const float* x, int64_t rows, float* out) const {
  if (rows < 0) throw_runtime_error("expert store: negative row count for " + key.to_string());
  std::shared_lock lock(mutex_);
  const Replica& r = replica(key);
  const ExpertGeometry g = geometry(model_, key);
  if (rows > 0) cpu::ffn_forward(x, rows, g.d, g.f, g.activation, weights_of(r.weights, g.activation), out, nullptr);
}

void ExpertStore::backward(const ExpertKey& key, uint64_t request_id, const float* grad_out, int64_t rows,
                           float* grad_in) {
  std::shared_lock lock(mutex_);
  Replica& r = replica(key);
  const ExpertGeometry g = geometry(model_, key);
  Activations act;
  {
    std::lock_guard cache_lock(cache_mutex_);
    auto it = cache_.find(std::make_pair(request_id, key));
    if (it == cache_.end()) {
      throw_runtime_error("expert store: no forward activations of request " + std::to_string(request_id) + " on " +
                          key.to_string() + " (forward not run, or already released)");
    }
    if (it->second.rows != rows) {
      throw_runtime_error("expert store: backward of request " + std::to_string(request_id) + " on " +
                          key.to_string() + " has " + std::to_string(rows) + " rows, its forward had " +
                          std::to_string(it->second.rows));
    }
    act = std::move(it->second);
    cache_.erase(it);
  }
  if (rows == 0) return;
  std::memset(grad_in, 0, static_cast<size_t>(rows * g.d) * sizeof(float));
  std::lock_guard grad_lock(r.grad_mutex);
  cpu::ffn_backward(grad_out, act.x.data(), rows, g.d, g.f, g.activation, weights_of(r.weights, g.activation), act.ffn,
                    grad_in, grads_of(r.grads, g.activation));
}

void ExpertStore::drop_request(uint64_t request_id) {
  constexpr int kMin = std::numeric_limits<int>::min();
  std::lock_guard cache_lock(cache_mutex_);
  auto first = cache_.lower_bound(std::make_pair(request_id, ExpertKey{kMin, kMin, kMin}));
  auto last = first;
  while (last != cache_.end() && last->first.first == request_id) ++last;
  cache_.erase(first, last);
}

int64_t ExpertStore::pending_activations() const {
  std::lock_guard cache_lock(cache_mutex_);
  return static_cast<int64_t>(cache_.size());
}

TensorMap& ExpertStore::grads(const ExpertKey& key) {
  std::shared_lock lock(mutex_);
  return replica(key).grads;
}

const TensorMap& ExpertStore::weights(const ExpertKey& key) const {
  std::shared_lock lock(mutex_);
  return replica(key).weights;
}

const AdamW& ExpertStore::optimizer(const ExpertKey& key) const {
  std::shared_lock lock(mutex_);
  return replica(key).optimizer;
}

void ExpertStore::step(const AdamWConfig& config) {
  std::unique_lock lock(mutex_);
  for (auto& [key, r] : replicas_) {
    AdamW& opt = r->optimizer;
    if (!same_except_lr(opt.config(), config)) {
      AdamW next(config);
      next.restore_state(opt.steps(), opt.state());
      opt = std::move(next);
    } else {
      opt.set_lr(config.lr);
    }
    opt.step(r->weights, r->grads);
    for (auto& [name, g] : r->grads) g.fill(0.0f);
  }
}

void ExpertStore::zero_grads() {
  std::unique_lock lock(mutex_);
  for (auto& [key, r] : replicas_)
    for (auto& [name, g] : r->grads) g.fill(0.0f);
}

int64_t ExpertStore::bytes() const {
  std::shared_lock lock(mutex_);
  int64_t total = 0;
  for (const auto& entry : replicas_) total += expert_replica_bytes(model_, entry.first.stage);
  return total;
}

void ExpertStore::save(const std::string& path) const {
  TensorMap tensors;
  std::map<std::string, std::string> metadata{
      {"format", kFormat}, {"version", kVersion}, {"hidden_size", std::to_string(model_.hidden_size)}};
  {
    std::shared_lock lock(mutex_);
    for (const auto& [key, r] : replicas_) {
      const TensorMap& state = r->optimizer.state();
      for (const auto& [name, w] : r->weights) {
        tensors.emplace(expert_tensor_name(key, name), w);
        for (const char* suffix : {".exp_avg", ".exp_avg_sq"}) {
          auto it = state.find(name + suffix);
          if (it == state.end()) throw_runtime_error("expert store: " + key.to_string() + " lacks AdamW state " + name + suffix);
          tensors.emplace(expert_tensor_name(key, name + suffix), it->second);
        }
      }
      metadata.emplace(kStepsPrefix + key.to_string(), std::to_string(r->optimizer.steps()));
    }
  }
  const std::string tmp = path + ".tmp";
  write_safetensors(tmp, tensors, metadata);
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) throw_input_error("expert checkpoint '" + path + "': cannot rename " + tmp + ": " + ec.message());
}

void ExpertStore::load(const std::string& path) {
  const auto fail = [&](const std::string& message) {
    throw_input_error("expert checkpoint '" + path + "': " + message);
  };
  const std::map<std::string, std::string> metadata = read_safetensors_metadata(path);
  auto meta = [&](const std::string& k) -> const std::string* {
    auto it = metadata.find(k);
    return it == metadata.end() ? nullptr : &it->second;
  };
  if (const std::string* f = meta("format"); !f || *f != kFormat)
    fail("not an expert-store checkpoint (metadata \"format\" is not \"" + std::string(kFormat) + "\")");
  if (const std::string* v = meta("version"); !v || *v != kVersion)
    fail("unsupported version \"" + (v ? *v : std::string()) + "\" (this build reads " + kVersion + ")");
  if (const std::string* h = meta("hidden_size"); !h || *h != std::to_string(model_.hidden_size))
    fail("saved for hidden_size " + (h ? *h : std::string("?")) + ", the model has " + std::to_string(model_.hidden_size));

  TensorMap tensors = read_safetensors(path);

  // Group by replica; every name must be one of a model expert's weights or moments.
  std::map<ExpertKey, TensorMap> weights;
  std::map<ExpertKey, TensorMap> moments;
  for (auto& [full, t] : tensors) {
    ExpertKey key;
    std::string rest;
    if (!parse_tensor_name(full, key, rest)) fail("tensor '" + full + "': unexpected tensor (not an expert's)");
    if (!key_exists(model_, key)) fail("tensor '" + full + "': the model has no expert " + key.to_string());
    const std::vector<std::string> names = expert_tensor_names(stage_of(model_, key).activation);
    std::string base = rest;
    bool moment = false;
    for (const char* suffix : {".exp_avg_sq", ".exp_avg"}) {
      if (base.ends_with(suffix)) {
        base.resize(base.size() - std::strlen(suffix));
        moment = true;
        break;
      }
    }
    if (std::find(names.begin(), names.end(), base) == names.end())
      fail("tensor '" + full + "': unexpected tensor for a " + to_string(stage_of(model_, key).activation) + " expert");
    const Shape want = expected_shape(model_, key, base);
    if (t.shape() != want)
      fail("tensor '" + full + "': shape " + shape_to_string(t.shape()) + ", expected " + shape_to_string(want));
    if (!all_finite(t)) fail("tensor '" + full + "': not finite");
    if (rest.ends_with(".exp_avg_sq")) {
      for (float v : t.values())
        if (v < 0) fail("tensor '" + full + "': negative second moment");
    }
    (moment ? moments : weights)[key].emplace(rest, std::move(t));
  }

  std::map<ExpertKey, std::unique_ptr<Replica>> loaded;
  std::set<std::string> step_keys;
  for (const auto& [k, v] : metadata)
    if (k.starts_with(kStepsPrefix)) step_keys.insert(k);
  std::set<ExpertKey> all;
  for (const auto& entry : weights) all.insert(entry.first);
  for (const auto& entry : moments) all.insert(entry.first);
  for (const ExpertKey& key : all) {
    TensorMap& w = weights[key];
    TensorMap& m = moments[key];
    for (const std::string& name : expert_tensor_names(stage_of(model_, key).activation)) {
      if (!w.count(name)) fail("tensor '" + expert_tensor_name(key, name) + "' is missing");
      for (const char* suffix : {".exp_avg", ".exp_avg_sq"})
        if (!m.count(name + suffix)) fail("tensor '" + expert_tensor_name(key, name + suffix) + "' is missing");
    }
    const std::string steps_key = kStepsPrefix + key.to_string();
    const std::string* steps_text = meta(steps_key);
    if (!steps_text) fail("metadata \"" + steps_key + "\" (the AdamW step count of " + key.to_string() + ") is missing");
    int64_t steps = -1;
    const auto r = std::from_chars(steps_text->data(), steps_text->data() + steps_text->size(), steps);
    if (r.ec != std::errc() || r.ptr != steps_text->data() + steps_text->size() || steps < 0)
      fail("metadata \"" + steps_key + "\" = \"" + *steps_text + "\" is not a step count");
    step_keys.erase(steps_key);
    auto replica_ptr = std::make_unique<Replica>(std::move(w));
    replica_ptr->optimizer.restore_state(steps, std::move(m));
    loaded.emplace(key, std::move(replica_ptr));
  }
  if (!step_keys.empty()) fail("metadata \"" + *step_keys.begin() + "\" names a replica with no tensors");

  std::unique_lock lock(mutex_);
  replicas_ = std::move(loaded);
  std::lock_guard cache_lock(cache_mutex_);
  cache_.clear();
}

}  // namespace sy
