#include "switchyard/worker/expert_store.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>
#include <limits>
#include <set>
#include <string_view>

#include "switchyard/core/error.h"
#include "switchyard/engine/layer_weights.h"

namespace sy {
namespace {

constexpr const char* kFormat = "switchyard.expert_store";
constexpr const char* kVersion = "2";  // 2: names as in the model weight file

using CheckpointFail = std::function<void(const std::string&)>;  // throws
constexpr const char* kStepsPrefix = "adam_steps.";

cpu::ExpertWeights weights_of(const TensorMap& w, Activation activation) {
  cpu::ExpertWeights out;
  if (activation == Activation::swiglu) out.gate = w.at("gate_proj.weight").data();
  out.up = w.at("up_proj.weight").data();
  out.down = w.at("down_proj.weight").data();
  return out;
}

// The expert FFN forward of `rows` rows; `saved` keeps the activations for backward (null: the
// runner's workspace holds them, forward-only).
FfnForwardArgs ffn_forward_args(const ExpertGeometry& g, const TensorMap& weights, const float* x, int64_t rows,
                                float* out, float* saved) {
  return FfnForwardArgs{.x = x,
                        .rows = rows,
                        .d = g.d,
                        .f = g.f,
                        .activation = g.activation,
                        .w = weights_of(weights, g.activation),
                        .out = out,
                        .saved = saved};
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

ExpertStore::Replica::Replica(ExpertTensors t, Backend& backend) : Replica(std::move(t), TensorMap{}, backend) {}

ExpertStore::Replica::Replica(ExpertTensors t, TensorMap zero_grads, Backend& backend)
    : on_device(backend.device() != Device::cpu), optimizer(AdamWConfig{}, backend) {
  TensorMap g = zero_grads.empty() ? zeros_like(t.weights) : std::move(zero_grads);
  if (on_device) {
    device_weights = BufferMap(backend, t.weights);
    device_grads = BufferMap(backend, g);
  } else {
    host_weights = std::move(t.weights);
    host_grads = std::move(g);
  }
  optimizer.restore_state(t.step, std::move(t.moments));
}

ExpertStore::ExpertStore(const ModelConfig& model, Backend& backend)
    : model_(model), backend_(backend), on_device_(backend.device() != Device::cpu) {}

std::unique_lock<std::mutex> ExpertStore::device_turn() const {
  return on_device_ ? std::unique_lock(device_mutex_) : std::unique_lock<std::mutex>();
}

void ExpertStore::run_op(const OpArgs& args) const {
  std::unique_ptr<OpRunner> runner;
  {
    std::lock_guard lock(runner_mutex_);
    if (!idle_runners_.empty()) {
      runner = std::move(idle_runners_.back());
      idle_runners_.pop_back();
    }
  }
  if (!runner) runner = std::make_unique<OpRunner>(backend_);
  auto give_back = [&] {
    std::lock_guard lock(runner_mutex_);
    idle_runners_.push_back(std::move(runner));
  };
  try {
    runner->run(args);
    backend_.synchronize();
  } catch (...) {
    give_back();
    throw;
  }
  give_back();
}

ExpertStore::Replica& ExpertStore::replica(const ExpertKey& key) const {
  auto it = replicas_.find(key);
  if (it == replicas_.end()) throw_runtime_error("expert store holds no replica of " + key.to_string());
  return *it->second;
}

ExpertStore::Replica& ExpertStore::host_replica(const ExpertKey& key, const char* what) const {
  Replica& r = replica(key);
  if (on_device_)
    throw_runtime_error(std::string("expert store: ") + what + "() of " + key.to_string() + ": the replica lives in " +
                        backend_.name() + " memory (use the copying accessors)");
  return r;
}

std::unique_ptr<ExpertStore::Replica> ExpertStore::make_replica(ExpertTensors tensors, TensorMap zero_grads) const {
  auto turn = device_turn();
  return std::make_unique<Replica>(std::move(tensors), std::move(zero_grads), backend_);
}

void ExpertStore::add(const ExpertKey& key, TensorMap weights) {
  if (!expert_exists(model_, key)) throw_input_error("expert store: the model has no expert " + key.to_string());
  add(key, ExpertTensors::fresh(ExpertGeometry::of(model_, key.stage), std::move(weights)));
}

void ExpertStore::add(const ExpertKey& key, ExpertTensors tensors) {
  if (!expert_exists(model_, key)) throw_input_error("expert store: the model has no expert " + key.to_string());
  tensors.validate(ExpertGeometry::of(model_, key.stage), "expert " + key.to_string());
  insert(key, make_replica(std::move(tensors), {}));
}

void ExpertStore::add_verified(const ExpertKey& key, ExpertTensors tensors, TensorMap zero_grads) {
  if (!expert_exists(model_, key)) throw_input_error("expert store: the model has no expert " + key.to_string());
  const ExpertGeometry geometry = ExpertGeometry::of(model_, key.stage);
  tensors.validate_shapes(geometry, "expert " + key.to_string());
  for (const std::string& name : geometry.tensor_names()) {
    auto g = zero_grads.find(name);
    if (g == zero_grads.end() || g->second.shape() != geometry.shape(name))
      throw_input_error("expert " + key.to_string() + ": gradient buffer '" + name + "' is missing or misshapen");
  }
  insert(key, make_replica(std::move(tensors), std::move(zero_grads)));
}

void ExpertStore::insert(const ExpertKey& key, std::unique_ptr<Replica> r) {
  std::unique_lock lock(mutex_);
  if (!replicas_.emplace(key, std::move(r)).second)
    throw_input_error("expert store already holds a replica of " + key.to_string());
}

ExpertTensors ExpertStore::tensors_of(const ExpertKey& key) const {
  std::shared_lock lock(mutex_);
  const Replica& r = replica(key);
  auto turn = device_turn();
  return {to_host(backend_, r.weights()), to_host(backend_, r.optimizer.state()), r.optimizer.steps()};
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

void ExpertStore::forward(const ExpertKey& key, uint64_t request_id, const float* x, int64_t rows, float* out,
                          std::shared_ptr<const void> x_owner) {
  if (rows < 0) throw_runtime_error("expert store: negative row count for " + key.to_string());
  std::shared_lock lock(mutex_);
  const Replica& r = replica(key);
  const ExpertGeometry g = ExpertGeometry::of(model_, key.stage);
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
  if (on_device_) {
    device_forward(g, r, x, rows, out, &act);
  } else {
    if (x_owner) {
      act.x = x;
      act.x_owner = std::move(x_owner);
    } else {
      act.x_copy.assign(x, x + rows * g.d);
      act.x = act.x_copy.data();
      rows_copied_ += rows;
    }
    act.saved.resize(static_cast<size_t>(cpu::ffn_saved_floats(rows, g.f, g.activation)));
    if (rows > 0) run_op(ffn_forward_args(g, r.weights(), x, rows, out, act.saved.data()));
  }
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
  const ExpertGeometry g = ExpertGeometry::of(model_, key.stage);
  if (on_device_)
    device_forward(g, r, x, rows, out, nullptr);
  else if (rows > 0)
    run_op(ffn_forward_args(g, r.weights(), x, rows, out, nullptr));  // null: the runner's workspace
}

void ExpertStore::device_forward(const ExpertGeometry& g, const Replica& r, const float* x, int64_t rows, float* out,
                                 Activations* act) const {
  if (rows == 0) return;
  auto turn = device_turn();
  FloatBuffer device_x = FloatBuffer::from_host(backend_, x, {rows, g.d});
  FloatBuffer device_out(backend_, {rows, g.d});
  float* saved = nullptr;  // infer: the runner's workspace
  if (act) {
    act->device_saved = FloatBuffer(backend_, {cpu::ffn_saved_floats(rows, g.f, g.activation)});
    saved = act->device_saved.data();
  }
  run_op(ffn_forward_args(g, r.weights(), device_x.data(), rows, device_out.data(), saved));
  device_out.download(out);
  if (act) {
    act->x = device_x.data();
    act->device_x = std::move(device_x);
  }
}

void ExpertStore::backward(const ExpertKey& key, uint64_t request_id, const float* grad_out, int64_t rows,
                           float* grad_in, std::span<const int64_t> weight_segments) {
  std::shared_lock lock(mutex_);
  Replica& r = replica(key);
  const ExpertGeometry g = ExpertGeometry::of(model_, key.stage);
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
  std::lock_guard grad_lock(r.grad_mutex);
  auto turn = device_turn();
  // A device store computes on device copies of grad_out and dx (zeros, as on the host).
  FloatBuffer device_dout, device_dx;
  const float* dout = grad_out;
  float* dx = grad_in;
  if (on_device_) {
    device_dout = FloatBuffer::from_host(backend_, grad_out, {rows, g.d});
    dout = device_dout.data();
    if (grad_in) device_dx = FloatBuffer(backend_, {rows, g.d});
    dx = grad_in ? device_dx.data() : nullptr;
  } else if (grad_in) {
    std::memset(grad_in, 0, static_cast<size_t>(rows * g.d) * sizeof(float));
  }
  run_op(FfnBackwardArgs{.dout = dout,
                         .x = act.x,
                         .rows = rows,
                         .d = g.d,
                         .f = g.f,
                         .activation = g.activation,
                         .w = weights_of(r.weights(), g.activation),
                         .saved = on_device_ ? act.device_saved.data() : act.saved.data(),
                         .dx = dx,
                         .grads = grads_of(r.grads(), g.activation),
                         .weight_segments = weight_segments});
  if (on_device_ && grad_in) device_dx.download(grad_in);
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
  return host_replica(key, "grads").grads();
}

const TensorMap& ExpertStore::weights(const ExpertKey& key) const {
  std::shared_lock lock(mutex_);
  return host_replica(key, "weights").weights();
}

TensorMap ExpertStore::weights_copy(const ExpertKey& key) const {
  std::shared_lock lock(mutex_);
  const Replica& r = replica(key);
  auto turn = device_turn();
  return to_host(backend_, r.weights());
}

TensorMap ExpertStore::grads_copy(const ExpertKey& key) const {
  std::shared_lock lock(mutex_);
  Replica& r = replica(key);
  auto turn = device_turn();
  return to_host(backend_, r.grads());
}

std::vector<float> ExpertStore::flat_grads(const ExpertKey& key) const {
  std::shared_lock lock(mutex_);
  Replica& r = replica(key);
  auto turn = device_turn();
  std::vector<float> out;
  for (const auto& [name, t] : r.grads()) {
    const size_t offset = out.size();
    out.resize(offset + static_cast<size_t>(t.numel()));
    borrow_buffer(backend_, t).download(out.data() + offset);
  }
  return out;
}

void ExpertStore::set_flat_grads(const ExpertKey& key, std::span<const float> values) {
  std::shared_lock lock(mutex_);
  Replica& r = replica(key);
  std::lock_guard grad_lock(r.grad_mutex);
  auto turn = device_turn();
  size_t total = 0;
  for (const auto& [name, t] : r.grads()) total += static_cast<size_t>(t.numel());
  if (values.size() != total)
    throw_runtime_error("expert store: " + std::to_string(values.size()) + " gradient values for " + key.to_string() +
                        ", which has " + std::to_string(total));
  size_t offset = 0;
  for (auto& [name, t] : r.grads()) {
    borrow_buffer(backend_, t).upload(values.data() + offset);
    offset += static_cast<size_t>(t.numel());
  }
}

const AdamW& ExpertStore::optimizer(const ExpertKey& key) const {
  std::shared_lock lock(mutex_);
  return replica(key).optimizer;
}

void ExpertStore::step(const AdamWConfig& config) {
  std::unique_lock lock(mutex_);
  auto turn = device_turn();
  for (auto& [key, r] : replicas_) {
    AdamW& opt = r->optimizer;
    if (!same_except_lr(opt.config(), config)) {
      AdamW next(config, opt.backend());
      next.restore_state(opt.steps(), opt.state());
      opt = std::move(next);
    } else {
      opt.set_lr(config.lr);
    }
    opt.step(r->weights(), r->grads());
    fill_zero(backend_, r->grads());
  }
}

void ExpertStore::zero_grads() {
  std::unique_lock lock(mutex_);
  auto turn = device_turn();
  for (auto& [key, r] : replicas_) fill_zero(backend_, r->grads());
}

int64_t ExpertStore::bytes() const {
  std::shared_lock lock(mutex_);
  int64_t total = 0;
  for (const auto& entry : replicas_) total += expert_replica_bytes(model_, entry.first.stage);
  return total;
}

void ExpertStore::save(const std::string& path, const std::vector<ExpertKey>* only) const {
  TensorMap tensors;
  std::map<std::string, std::string> metadata{
      {"format", kFormat}, {"version", kVersion}, {"hidden_size", std::to_string(model_.hidden_size)}};
  for (const ExpertKey& key : only ? *only : keys()) {
    ExpertTensors t = tensors_of(key);
    for (TensorMap* part : {&t.weights, &t.moments})
      for (auto& [name, tensor] : *part) tensors.emplace(expert_param_name(model_, key, name), std::move(tensor));
    metadata.emplace(kStepsPrefix + key.to_string(), std::to_string(t.step));
  }
  // write_safetensors is atomic itself (path.tmp, fsync, rename); the directory is made here.
  const std::filesystem::path dir = std::filesystem::path(path).parent_path();
  std::error_code ec;
  if (!dir.empty()) std::filesystem::create_directories(dir, ec);
  if (ec) throw_input_error("expert checkpoint '" + path + "': cannot create directory " + dir.string() + ": " + ec.message());
  write_safetensors(path, tensors, metadata);
}

namespace {

using Metadata = std::map<std::string, std::string>;

// Checks format, version and hidden size; returns the version (1: every name carries
// "layers.{l}.", 2: names as in the model's weight file).
int checkpoint_version(const Metadata& metadata, const ModelConfig& model, const CheckpointFail& fail) {
  auto meta = [&](const std::string& k) -> const std::string* {
    auto it = metadata.find(k);
    return it == metadata.end() ? nullptr : &it->second;
  };
  if (const std::string* f = meta("format"); !f || *f != kFormat)
    fail("not an expert-store checkpoint (metadata \"format\" is not \"" + std::string(kFormat) + "\")");
  const std::string* v = meta("version");
  if (!v || (*v != "1" && *v != kVersion))
    fail("unsupported version \"" + (v ? *v : std::string()) + "\" (this build reads 1 and " + kVersion + ")");
  if (const std::string* h = meta("hidden_size"); !h || *h != std::to_string(model.hidden_size))
    fail("saved for hidden_size " + (h ? *h : std::string("?")) + ", the model has " + std::to_string(model.hidden_size));
  return *v == "1" ? 1 : 2;
}

// Sorts a checkpoint's tensors into replicas; every name must be one of a model expert's
// weights or moments, of the right shape, finite.
std::map<ExpertKey, ExpertTensors> group_by_replica(TensorMap tensors, const ModelConfig& model, int version,
                                                    const CheckpointFail& fail) {
  std::map<ExpertKey, ExpertTensors> replicas;
  for (auto& [full, t] : tensors) {
    ExpertKey key;
    std::string rest;
    if (!parse_expert_param_name(model, full, key, rest, version == 1))
      fail("tensor '" + full + "': unexpected tensor (not an expert's)");
    if (!expert_exists(model, key)) fail("tensor '" + full + "': the model has no expert " + key.to_string());
    const ExpertGeometry geometry = ExpertGeometry::of(model, key.stage);
    std::string base = rest;
    bool moment = false;
    for (const char* suffix : {".exp_avg_sq", ".exp_avg"}) {
      if (base.ends_with(suffix)) {
        base.resize(base.size() - std::strlen(suffix));
        moment = true;
        break;
      }
    }
    const std::vector<std::string>& names = geometry.tensor_names();
    if (std::find(names.begin(), names.end(), base) == names.end())
      fail("tensor '" + full + "': unexpected tensor for a " + to_string(geometry.activation) + " expert");
    const Shape want = geometry.shape(base);
    if (t.shape() != want)
      fail("tensor '" + full + "': shape " + shape_to_string(t.shape()) + ", expected " + shape_to_string(want));
    for (float v : t.values())
      if (!std::isfinite(v)) fail("tensor '" + full + "': not finite");
    if (rest.ends_with(".exp_avg_sq"))
      for (float v : t.values())
        if (v < 0) fail("tensor '" + full + "': negative second moment");
    ExpertTensors& replica = replicas[key];
    (moment ? replica.moments : replica.weights).emplace(rest, std::move(t));
  }
  return replicas;
}

// Every replica has all its tensors and its AdamW step count; no step count names a replica
// without tensors.
void complete_replicas(std::map<ExpertKey, ExpertTensors>& replicas, const Metadata& metadata,
                       const ModelConfig& model, const CheckpointFail& fail) {
  std::set<std::string> step_keys;
  for (const auto& [k, v] : metadata)
    if (k.starts_with(kStepsPrefix)) step_keys.insert(k);
  for (auto& [key, t] : replicas) {
    for (const std::string& name : ExpertGeometry::of(model, key.stage).tensor_names()) {
      if (!t.weights.count(name)) fail("tensor '" + expert_param_name(model, key, name) + "' is missing");
      for (const char* suffix : {".exp_avg", ".exp_avg_sq"})
        if (!t.moments.count(name + suffix))
          fail("tensor '" + expert_param_name(model, key, name + suffix) + "' is missing");
    }
    const std::string steps_key = kStepsPrefix + key.to_string();
    auto it = metadata.find(steps_key);
    if (it == metadata.end())
      fail("metadata \"" + steps_key + "\" (the AdamW step count of " + key.to_string() + ") is missing");
    const std::string& text = it->second;
    const auto r = std::from_chars(text.data(), text.data() + text.size(), t.step);
    if (r.ec != std::errc() || r.ptr != text.data() + text.size() || t.step < 0)
      fail("metadata \"" + steps_key + "\" = \"" + text + "\" is not a step count");
    step_keys.erase(steps_key);
  }
  if (!step_keys.empty()) fail("metadata \"" + *step_keys.begin() + "\" names a replica with no tensors");
}

}  // namespace

void ExpertStore::load(const std::string& path, const std::vector<ExpertKey>* expect) {
  const CheckpointFail fail = [&](const std::string& message) {
    throw_input_error("expert checkpoint '" + path + "': " + message);
  };
  const Metadata metadata = read_safetensors_metadata(path);
  const int version = checkpoint_version(metadata, model_, fail);
  std::map<ExpertKey, ExpertTensors> replicas = group_by_replica(read_safetensors(path), model_, version, fail);
  complete_replicas(replicas, metadata, model_, fail);
  if (expect) {
    for (const ExpertKey& key : *expect)
      if (!replicas.count(key))
        fail("holds no replica of " + key.to_string() + ", which the placement puts on this worker");
    for (const auto& [key, t] : replicas)
      if (std::find(expect->begin(), expect->end(), key) == expect->end())
        fail("holds a replica of " + key.to_string() + ", which the placement does not put on this worker");
  }

  std::map<ExpertKey, std::unique_ptr<Replica>> loaded;
  for (auto& [key, t] : replicas) loaded.emplace(key, make_replica(std::move(t), {}));
  std::unique_lock lock(mutex_);
  replicas_ = std::move(loaded);
  std::lock_guard cache_lock(cache_mutex_);
  cache_.clear();
}

void ExpertStore::clear() {
  std::unique_lock lock(mutex_);
  replicas_.clear();
  std::lock_guard cache_lock(cache_mutex_);
  cache_.clear();
}

}  // namespace sy
