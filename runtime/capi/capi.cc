// The C API over MoeModel and ClusterClient. Every entry point runs its body through
// `guarded`, which turns the C++ error model (sy::Error kinds, std exceptions) into a
// sy_status and this thread's message: nothing is thrown across the boundary.
#include "switchyard/switchyard.h"

#include <exception>
#include <memory>
#include <new>
#include <string>

#include "switchyard/client/cluster_client.h"
#include "switchyard/core/config.h"
#include "switchyard/core/error.h"
#include "switchyard/core/io.h"
#include "switchyard/engine/moe_model.h"
#include "switchyard/kernels/buffer.h"
#include "switchyard/kernels/cpu_ops.h"

struct sy_tensors {
  sy::TensorMap map;
};

struct sy_model {
  sy::Config config;
  std::unique_ptr<sy::ClusterClient> client;  // attached only; outlives `model`
  std::unique_ptr<sy::MoeModel> model;
};

namespace {

thread_local std::string g_last_error;

sy_status status_of(sy::ErrorKind kind) {
  switch (kind) {
    case sy::ErrorKind::config: return SY_ERR_CONFIG;
    case sy::ErrorKind::input: return SY_ERR_INPUT;
    case sy::ErrorKind::transport: return SY_ERR_TRANSPORT;
    case sy::ErrorKind::runtime: break;
  }
  return SY_ERR_RUNTIME;
}

template <class F>
sy_status guarded(const char* call, F&& body) {
  try {
    body();
    return SY_OK;
  } catch (const sy::Error& e) {
    g_last_error = std::string(call) + ": " + e.what();
    return status_of(e.kind());
  } catch (const std::bad_alloc&) {
    g_last_error = std::string(call) + ": out of memory";
  } catch (const std::exception& e) {
    g_last_error = std::string(call) + ": " + e.what();
  } catch (...) {
    g_last_error = std::string(call) + ": unknown error";
  }
  return SY_ERR_RUNTIME;
}

template <class T>
T& require(T* p, const char* what) {
  if (!p) sy::throw_input_error(std::string(what) + " is NULL");
  return *p;
}

const char* require_text(const char* s, const char* what) {
  if (!s) sy::throw_input_error(std::string(what) + " is NULL");
  return s;
}

sy::Shape shape_of(const int64_t* shape, int32_t ndim, const std::string& what) {
  if (ndim < 0 || ndim > 8) sy::throw_input_error(what + ": ndim " + std::to_string(ndim) + " (0..8 supported)");
  if (ndim > 0 && !shape) sy::throw_input_error(what + ": shape is NULL");
  sy::Shape s(shape, shape + ndim);
  for (int64_t d : s)
    if (d < 0) sy::throw_input_error(what + ": negative dimension in " + sy::shape_to_string(s));
  return s;
}

// The caller's buffer as a tensor, without a copy.
sy::Tensor borrow(const sy_tensor* t, const std::string& what) {
  if (!t) sy::throw_input_error(what + " is NULL");
  sy::Shape s = shape_of(t->shape, t->ndim, what);
  if (!t->data && sy::shape_numel(s) > 0) sy::throw_input_error(what + ": data is NULL");
  return sy::Tensor::borrow(t->data, std::move(s));
}

void describe(sy::Tensor& t, sy_tensor* out) {
  out->data = t.data();
  out->shape = t.shape().data();
  out->ndim = static_cast<int32_t>(t.shape().size());
}

// Borrowed tensors stay borrowed (the model reads the caller's memory); owned ones are copied.
sy::TensorMap alias_or_copy(const sy::TensorMap& src) {
  sy::TensorMap out;
  for (const auto& [name, t] : src) {
    if (t.borrowed())
      out.emplace(name, sy::Tensor::borrow(const_cast<float*>(t.data()), t.shape()));
    else
      out.emplace(name, t);  // a copy
  }
  return out;
}

// sy_model_options.backend: NULL/"" is the cpu; otherwise a usable backend by name, or an input
// error naming the option and the value.
sy::Backend& backend_option(const char* name) {
  if (!name || !*name) return sy::cpu_backend();
  if (sy::Backend* b = sy::find_backend(name)) return *b;
  bool compiled = false;
  for (const std::string& n : sy::compiled_backends()) compiled = compiled || n == name;
  sy::throw_input_error(std::string("options.backend '") + name + "': " +
                        (compiled ? "compiled but no device usable here" : "not a backend of this build"));
}

// Device work of a call is finished before it returns (the caller reads its outputs next).
void finish(sy_model& m) {
  if (m.model->backend().device() != sy::Device::cpu) m.model->backend().synchronize();
}

sy::AdamWConfig adamw_of(const sy_adamw* a) {
  if (!a) return {};
  return {.lr = a->lr, .beta1 = a->beta1, .beta2 = a->beta2, .eps = a->eps, .weight_decay = a->weight_decay};
}

sy::Tensor& find(sy::TensorMap& map, const char* name, const char* what) {
  auto it = map.find(require_text(name, "name"));
  if (it == map.end()) sy::throw_input_error(std::string(what) + " has no tensor '" + name + "'");
  return it->second;
}

const sy::StageStats& stage_stats(const sy_model& m, int32_t layer, int32_t stage) {
  const auto& stats = m.model->layer(layer).stats();
  if (stage < 0 || stage >= static_cast<int32_t>(stats.size()))
    sy::throw_input_error("stage " + std::to_string(stage) + " out of range (" + std::to_string(stats.size()) +
                          " stages)");
  return stats[static_cast<size_t>(stage)];
}

sy::ClusterClient& attached(sy_model& m, const char* what) {
  if (!m.client) sy::throw_runtime_error(std::string(what) + ": the experts are local (in the caller's weights)");
  return *m.client;
}

}  // namespace

extern "C" {

int sy_api_version(void) { return SY_API_VERSION; }

const char* sy_last_error(void) { return g_last_error.c_str(); }

const char* sy_blas_core(void) { return sy::cpu::blas_core_name(); }

sy_adamw sy_adamw_defaults(void) {
  const sy::AdamWConfig d;
  return {d.lr, d.beta1, d.beta2, d.eps, d.weight_decay};
}

// ---- Tensor maps ----

sy_status sy_tensors_create(sy_tensors** out) {
  return guarded("sy_tensors_create", [&] { require(out, "out") = new sy_tensors{}; });
}

sy_status sy_tensors_load(const char* path, sy_tensors** out) {
  return guarded("sy_tensors_load", [&] {
    auto t = std::make_unique<sy_tensors>();
    t->map = sy::read_safetensors(require_text(path, "path"));
    require(out, "out") = t.release();
  });
}

sy_status sy_tensors_save(const sy_tensors* tensors, const char* path) {
  return guarded("sy_tensors_save",
                 [&] { sy::write_safetensors(require_text(path, "path"), require(tensors, "tensors").map); });
}

sy_status sy_tensors_init(const char* config_yaml, uint64_t seed, sy_tensors** out) {
  return guarded("sy_tensors_init", [&] {
    const sy::Config cfg = sy::load_config_string(require_text(config_yaml, "config_yaml"), "<config text>");
    auto t = std::make_unique<sy_tensors>();
    t->map = sy::init_model_weights(cfg.require_model(), seed);
    require(out, "out") = t.release();
  });
}

sy_status sy_tensors_borrow(sy_tensors* tensors, const char* name, float* data, const int64_t* shape, int32_t ndim) {
  return guarded("sy_tensors_borrow", [&] {
    const std::string n = require_text(name, "name");
    if (n.empty()) sy::throw_input_error("empty tensor name");
    const sy_tensor view{data, shape, ndim};
    require(tensors, "tensors").map.insert_or_assign(n, borrow(&view, "tensor '" + n + "'"));
  });
}

sy_status sy_tensors_count(const sy_tensors* tensors, size_t* count) {
  return guarded("sy_tensors_count", [&] { require(count, "count") = require(tensors, "tensors").map.size(); });
}

sy_status sy_tensors_name(const sy_tensors* tensors, size_t i, const char** name) {
  return guarded("sy_tensors_name", [&] {
    const auto& map = require(tensors, "tensors").map;
    if (i >= map.size())
      sy::throw_input_error("index " + std::to_string(i) + " out of range (" + std::to_string(map.size()) + " tensors)");
    require(name, "name") = std::next(map.begin(), static_cast<std::ptrdiff_t>(i))->first.c_str();
  });
}

sy_status sy_tensors_get(const sy_tensors* tensors, const char* name, sy_tensor* out) {
  return guarded("sy_tensors_get", [&] {
    auto& map = const_cast<sy_tensors&>(require(tensors, "tensors")).map;
    describe(find(map, name, "the map"), &require(out, "out"));
  });
}

void sy_tensors_destroy(sy_tensors* tensors) { delete tensors; }

sy_status sy_npy_save(const char* path, const sy_tensor* tensor) {
  return guarded("sy_npy_save", [&] { sy::write_npy(require_text(path, "path"), borrow(tensor, "tensor")); });
}

sy_status sy_npy_load(const char* path, sy_tensors** out) {
  return guarded("sy_npy_load", [&] {
    auto t = std::make_unique<sy_tensors>();
    t->map.emplace("array", sy::read_npy(require_text(path, "path")));
    require(out, "out") = t.release();
  });
}

// ---- Models ----

sy_status sy_model_create(const char* config_yaml, const sy_tensors* weights, const sy_model_options* options,
                          sy_model** out) {
  return guarded("sy_model_create", [&] {
    require(out, "out");
    auto m = std::make_unique<sy_model>();
    m->config = sy::load_config_string(require_text(config_yaml, "config_yaml"), "<config text>");
    m->config.require_model();
    const sy::TensorMap& w = require(weights, "weights").map;
    const sy_model_options opts = options ? *options : sy_model_options{};
    sy::Backend& backend = backend_option(opts.backend);
    const bool local = !opts.coordinator || !*opts.coordinator;
    if (!local && backend.device() != sy::Device::cpu)
      sy::throw_input_error("options.backend '" + backend.name() + "' with a coordinator: attached models run on the cpu");
    if (local) {
      m->model = std::make_unique<sy::MoeModel>(m->config, alias_or_copy(w), backend);
    } else {
      m->client = std::make_unique<sy::ClusterClient>(opts.coordinator, opts.client_name ? opts.client_name : "c-api");
      m->client->set_training(!opts.serving);
      if (opts.use_loaded_model)
        m->client->use_loaded_model(m->config);
      else
        m->client->load_model(m->config, w);
      m->model = std::make_unique<sy::MoeModel>(m->config, alias_or_copy(w), *m->client);
    }
    *out = m.release();
  });
}

void sy_model_destroy(sy_model* model) { delete model; }  // destructors do not throw

sy_status sy_model_get_info(const sy_model* model, sy_model_info* out) {
  return guarded("sy_model_get_info", [&] {
    const sy::ModelConfig& mc = require(model, "model").config.model;
    sy_model_info& info = require(out, "out");
    info.layers = mc.layers;
    info.stages = static_cast<int32_t>(mc.layer.stages.size());
    info.hidden_size = mc.hidden_size;
    info.needs_importance = sy::needs_importance(mc) ? 1 : 0;
    info.experts_local = model->model->experts_local() ? 1 : 0;
  });
}

sy_status sy_model_forward(sy_model* model, int32_t layer, const sy_tensor* x, sy_tensor* y,
                           const sy_tensor* attention, const sy_tensor* importance) {
  return guarded("sy_model_forward", [&] {
    sy_model& m = require(model, "model");
    const sy::Tensor xt = borrow(x, "x");
    sy::Tensor yt = borrow(y, "y");
    sy::Tensor at, it;
    sy::ImportanceInput imp;
    if (attention) {
      at = borrow(attention, "attention");
      imp.attention = &at;
    }
    if (importance) {
      it = borrow(importance, "importance");
      imp.importance = &it;
    }
    if (attention && importance) sy::throw_input_error("give attention or importance, not both");
    m.model->forward_layer(layer, xt, yt, imp);
    finish(m);
  });
}

sy_status sy_model_backward(sy_model* model, int32_t layer, const sy_tensor* grad_y, sy_tensor* grad_x,
                            double aux_scale, sy_tensors* grads) {
  return guarded("sy_model_backward", [&] {
    sy_model& m = require(model, "model");
    const sy::Tensor gy = borrow(grad_y, "grad_y");
    sy::Tensor gx = borrow(grad_x, "grad_x");
    m.model->backward_layer(layer, gy, gx, grads ? &grads->map : nullptr, aux_scale);
    finish(m);
  });
}

sy_status sy_model_aux_loss(const sy_model* model, int32_t layer, double* loss) {
  return guarded("sy_model_aux_loss",
                 [&] { require(loss, "loss") = require(model, "model").model->layer(layer).aux_loss(); });
}

sy_status sy_model_stage_stats(const sy_model* model, int32_t layer, int32_t stage, sy_stage_stats* out) {
  return guarded("sy_model_stage_stats", [&] {
    const sy::StageStats& st = stage_stats(require(model, "model"), layer, stage);
    sy_stage_stats& o = require(out, "out");
    o.tokens = st.tokens;
    o.experts = static_cast<int64_t>(st.expert_rows.size());
    o.assignments = st.assignments;
    o.dropped = st.dropped;
    o.mean_k = st.mean_k;
    o.load_balance_loss = st.load_balance_loss;
    o.z_loss = st.z_loss;
    o.k = st.k.data();
    o.k_histogram = st.k_histogram.data();
    o.expert_rows = st.expert_rows.data();
  });
}

sy_status sy_model_weight(const sy_model* model, const char* name, sy_tensor* out) {
  return guarded("sy_model_weight", [&] {
    auto& map = const_cast<sy::TensorMap&>(require(model, "model").model->weights());
    describe(find(map, name, "the model"), &require(out, "out"));
  });
}

sy_status sy_model_grad(const sy_model* model, const char* name, sy_tensor* out) {
  return guarded("sy_model_grad", [&] {
    auto& map = const_cast<sy_model&>(require(model, "model")).model->mutable_grads();
    describe(find(map, name, "the model's gradients"), &require(out, "out"));
  });
}

sy_status sy_model_zero_grads(sy_model* model) {
  return guarded("sy_model_zero_grads", [&] {
    sy::MoeModel& mm = *require(model, "model").model;
    for (auto& [name, g] : mm.mutable_grads()) sy::borrow_buffer(mm.backend(), g).fill_zero();
    finish(*model);
  });
}

sy_status sy_model_rebind(sy_model* model, const char* name, float* data) {
  return guarded("sy_model_rebind", [&] {
    if (!data) sy::throw_input_error("data is NULL");
    require(model, "model").model->rebind_weight(require_text(name, "name"), data);
  });
}

sy_status sy_model_step(sy_model* model, const sy_adamw* adamw, int32_t group_size) {
  return guarded("sy_model_step", [&] {
    if (group_size < 1) sy::throw_input_error("group_size must be >= 1");
    require(model, "model").model->step(adamw_of(adamw), group_size);
    finish(*model);
  });
}

sy_status sy_model_step_experts(sy_model* model, const sy_adamw* adamw, int32_t group_size) {
  return guarded("sy_model_step_experts", [&] {
    if (group_size < 1) sy::throw_input_error("group_size must be >= 1");
    require(model, "model").model->step_experts(adamw_of(adamw), group_size);
  });
}

sy_status sy_model_set_drop_top_experts(sy_model* model, int32_t n) {
  return guarded("sy_model_set_drop_top_experts", [&] {
    for (const auto& layer : require(model, "model").model->layers()) layer->set_drop_top_experts(n);
  });
}

sy_status sy_model_save_checkpoint(sy_model* model, const char* dir) {
  return guarded("sy_model_save_checkpoint", [&] {
    attached(require(model, "model"), "save_checkpoint").save_checkpoint(require_text(dir, "dir"));
  });
}

sy_status sy_model_restore_checkpoint(sy_model* model, const char* dir) {
  return guarded("sy_model_restore_checkpoint", [&] {
    sy_model& m = require(model, "model");
    const sy::CheckpointInfo restored = attached(m, "restore_checkpoint").restore_checkpoint(require_text(dir, "dir"));
    if (restored.step > 0) m.model->set_steps(restored.step);  // the experts' step numbers go on from it
  });
}

sy_status sy_model_fetch_expert_grads(sy_model* model, sy_tensors** out) {
  return guarded("sy_model_fetch_expert_grads", [&] {
    auto t = std::make_unique<sy_tensors>();
    t->map = attached(require(model, "model"), "fetch_expert_grads").fetch_expert_grads();
    require(out, "out") = t.release();
  });
}

}  // extern "C"
