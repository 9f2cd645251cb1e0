#include "switchyard/engine/layer_engine.h"

#include <algorithm>
#include <cstring>

#include "switchyard/core/error.h"
#include "switchyard/core/expert.h"
#include "switchyard/core/trace.h"
#include "switchyard/engine/layer_weights.h"

namespace sy {
namespace {

// dst += src on the backend.
void add_into(OpRunner& ops, FloatBuffer& dst, const FloatBuffer& src) {
  ops.run(AddInplaceArgs{.x = src.data(), .n = dst.numel(), .y = dst.data()});
}

bool is_host(const Backend& b) { return b.device() == Device::cpu; }

// A [rows, d] result handed to the engine through a Tensor: on a host backend a tensor of its
// own (as before Buffers); on a device backend a view of `owner`, zeroed, which this object keeps.
Tensor handed_out(OpRunner& ops, FloatBuffer& owner, Shape shape) {
  if (is_host(ops.backend())) return Tensor(std::move(shape));
  owner = FloatBuffer(ops.backend(), std::move(shape));
  return owner.tensor();
}

}  // namespace

// ---------------- LocalExperts ----------------

LocalExperts::LocalExperts(const ModelConfig& model, const TensorMap& weights, TensorMap* grads, std::string prefix,
                           Backend& backend)
    : model_(model),
      weights_(weights),
      grads_(grads),
      prefix_(std::move(prefix)),
      ops_(backend) {
  const size_t stages = model.layer.stages.size();
  saved_.resize(stages);
  inputs_.resize(stages);
  index_.resize(stages);
  outputs_.resize(stages);
  grad_inputs_.resize(stages);
}

void LocalExperts::forward(int stage, const cpu::DispatchLayout& layout, const Tensor& tokens, Tensor& output) {
  const StageConfig& st = model_.layer.stages.at(static_cast<size_t>(stage));
  const int64_t d = model_.hidden_size, f = st.ffn_hidden_size;
  const size_t si = static_cast<size_t>(stage);
  Backend& backend = ops_.backend();
  FloatBuffer& input = inputs_[si];  // kept for backward
  input = FloatBuffer(backend, {layout.rows(), d});
  ops_.run(GatherRowsArgs{.src = tokens.data(),
                          .d = d,
                          .index = on_backend(backend, layout.token, index_[si]),
                          .rows = layout.rows(),
                          .dst = input.data()});
  output = handed_out(ops_, outputs_[si], {layout.rows(), d});
  FloatBuffer& saved = saved_[si];  // kept for backward; capacity reused
  saved.resize(backend, {cpu::ffn_saved_floats(layout.rows(), f, st.activation)});
  for (int64_t i = 0; i < st.experts; ++i) {
    const int64_t begin = layout.expert_offsets[static_cast<size_t>(i)], rows = layout.expert_rows(i);
    if (rows == 0) continue;
    const std::string ep = expert_param_prefix(prefix_, stage, i);
    cpu::ExpertWeights w;
    if (st.activation == Activation::swiglu) w.gate = weights_.at(ep + "gate_proj.weight").data();
    w.up = weights_.at(ep + "up_proj.weight").data();
    w.down = weights_.at(ep + "down_proj.weight").data();
    ops_.run(FfnForwardArgs{.x = input.data() + begin * d,
                            .rows = rows,
                            .d = d,
                            .f = f,
                            .activation = st.activation,
                            .w = w,
                            .out = output.data() + begin * d,
                            .saved = saved.data() + cpu::ffn_saved_floats(begin, f, st.activation)});
  }
}

void LocalExperts::backward(int stage, const cpu::DispatchLayout& layout, const Tensor& grad_output,
                            Tensor* grad_input) {
  if (!grads_) throw_runtime_error("LocalExperts::backward without a gradient map");
  const StageConfig& st = model_.layer.stages.at(static_cast<size_t>(stage));
  const int64_t d = model_.hidden_size, f = st.ffn_hidden_size;
  const FloatBuffer& input = inputs_[static_cast<size_t>(stage)];
  const FloatBuffer& saved = saved_[static_cast<size_t>(stage)];
  if (saved.numel() != cpu::ffn_saved_floats(layout.rows(), f, st.activation))
    throw_runtime_error("LocalExperts::backward of stage " + std::to_string(stage) + " without its forward");
  if (grad_input) *grad_input = handed_out(ops_, grad_inputs_[static_cast<size_t>(stage)], {layout.rows(), d});
  for (int64_t i = 0; i < st.experts; ++i) {
    const int64_t begin = layout.expert_offsets[static_cast<size_t>(i)], rows = layout.expert_rows(i);
    if (rows == 0) continue;
    const std::string ep = expert_param_prefix(prefix_, stage, i);
    cpu::ExpertWeights w;
    cpu::ExpertGrads g;
    if (st.activation == Activation::swiglu) {
      w.gate = weights_.at(ep + "gate_proj.weight").data();
      g.gate = grads_->at(ep + "gate_proj.weight").data();
    }
    w.up = weights_.at(ep + "up_proj.weight").data();
    w.down = weights_.at(ep + "down_proj.weight").data();
    g.up = grads_->at(ep + "up_proj.weight").data();
    g.down = grads_->at(ep + "down_proj.weight").data();
    ops_.run(FfnBackwardArgs{.dout = grad_output.data() + begin * d,
                             .x = input.data() + begin * d,
                             .rows = rows,
                             .d = d,
                             .f = f,
                             .activation = st.activation,
                             .w = w,
                             .saved = saved.data() + cpu::ffn_saved_floats(begin, f, st.activation),
                             .dx = grad_input ? grad_input->data() + begin * d : nullptr,
                             .grads = g});
  }
}

// ---------------- LayerEngine ----------------

// Every buffer is the engine backend's memory; p_host and the index structures are host memory.
struct LayerEngine::StageState {
  FloatBuffer norm_input;       // what this stage's norm saw (r_{s-1}, or x for input_norm)
  FloatBuffer norm_rstd;
  bool normed = false;
  FloatBuffer u;                // stage input
  FloatBuffer logits;           // router logits (buffer reused step to step)
  FloatBuffer p, lse;           // router probabilities and logsumexp
  std::vector<float> p_host;    // device backend: p copied for the host ops
  cpu::Selection selection;
  cpu::DispatchLayout layout;
  cpu::NodeList nodes;
  IndexBuffer token_index;      // device backend: layout.token uploaded (the unpack's indices)
  Tensor expert_out;            // packed expert outputs (ExpertCompute's; the backend's memory)
  FloatBuffer aggregated;       // m before the shared-expert mix
  FloatBuffer dag_saved;        // DagForwardArgs::saved
  FloatBuffer shared_saved;     // FfnForwardArgs::saved of the shared expert
  FloatBuffer shared_out;
  FloatBuffer coef;
};

LayerEngine::LayerEngine(const ModelConfig& model, const TensorMap& weights, ExpertCompute& experts, std::string prefix,
                         Backend& backend)
    : model_(model),
      weights_(weights),
      experts_(experts),
      prefix_(std::move(prefix)),
      ops_(backend) {
  if (!is_host(backend)) host_ops_ = std::make_unique<OpRunner>(cpu_backend());
  for (size_t s = 0; s < model.layer.stages.size(); ++s) states_.push_back(std::make_unique<StageState>());
  stats_.resize(model.layer.stages.size());
}

LayerEngine::~LayerEngine() = default;

const Tensor& LayerEngine::param(const std::string& name) const {
  auto it = weights_.find(prefix_ + name);
  if (it == weights_.end()) throw_input_error("missing tensor '" + prefix_ + name + "'");
  return it->second;
}

float* LayerEngine::grad(TensorMap& grads, const std::string& name) const {
  auto it = grads.find(prefix_ + name);
  if (it == grads.end()) throw_runtime_error("gradient map has no entry '" + prefix_ + name + "'");
  return it->second.data();
}

void LayerEngine::set_drop_top_experts(int n) {
  if (n < 0) throw_input_error("drop_top_experts must be >= 0, got " + std::to_string(n));
  drop_top_ = n;
}

double LayerEngine::aux_loss() const {
  double total = 0.0;
  for (const StageStats& s : stats_) total += s.load_balance_loss + s.z_loss;
  return total;
}

Tensor LayerEngine::forward(const Tensor& x, const ImportanceInput& importance) {
  Tensor y({x.rank() == 2 ? x.dim(0) : 0, model_.hidden_size});
  Backend& b = ops_.backend();
  if (is_host(b)) {
    forward_into(x, y, importance);
    return y;
  }
  // A device backend: the host tensors copied in, the output copied out.
  const FloatBuffer xd = FloatBuffer::from_host(b, x.data(), x.shape());
  FloatBuffer yd(b, y.shape()), ad, id;
  Tensor at, it;
  ImportanceInput imp;
  if (importance.attention) {
    ad = FloatBuffer::from_host(b, importance.attention->data(), importance.attention->shape());
    at = ad.tensor();
    imp.attention = &at;
  }
  if (importance.importance) {
    id = FloatBuffer::from_host(b, importance.importance->data(), importance.importance->shape());
    it = id.tensor();
    imp.importance = &it;
  }
  Tensor xv = xd.tensor(), yv = yd.tensor();
  forward_into(xv, yv, imp);
  yd.download(y.data());
  return y;
}

void LayerEngine::forward_into(const Tensor& x, Tensor& y, const ImportanceInput& importance) {
  const int64_t d = model_.hidden_size;
  if (x.rank() != 2 || x.dim(1) != d)
    throw_input_error("layer input has shape " + shape_to_string(x.shape()) + ", expected [T, " +
                      std::to_string(d) + "] (hidden_size " + std::to_string(d) + ")");
  const int64_t T = x.dim(0);
  if (y.shape() != x.shape())
    throw_input_error("layer output buffer has shape " + shape_to_string(y.shape()) + ", expected " +
                      shape_to_string(x.shape()));
  input_shape_ = x.shape();
  Backend& backend = ops_.backend();
  FloatBuffer yb = borrow_buffer(backend, y);
  yb.fill_zero();
  FloatBuffer residual = borrow_buffer(backend, x).clone();  // r_{s-1}
  for (size_t si = 0; si < model_.layer.stages.size(); ++si) {
    const int s = static_cast<int>(si);
    StageState& st = *states_[si];
    FloatBuffer u;
    const bool norm = s >= 1 || model_.layer.input_norm == InputNorm::rmsnorm;
    st.normed = norm;
    if (norm) {
      const Tensor& w = s == 0 ? param("input_norm.weight") : param("stages." + std::to_string(s) + ".norm.weight");
      st.norm_input = residual.clone();
      st.norm_rstd.resize(backend, {T});
      u = FloatBuffer(backend, {T, d});
      ops_.run(RmsNormForwardArgs{
          .x = residual.data(), .n = T, .d = d, .w = w.data(), .y = u.data(), .rstd = st.norm_rstd.data()});
    } else {
      u = residual.clone();
    }
    FloatBuffer m = stage_forward(s, std::move(u), importance);
    add_into(ops_, yb, m);
    if (si + 1 < model_.layer.stages.size()) add_into(ops_, residual, m);
  }
}

FloatBuffer LayerEngine::stage_forward(int s, FloatBuffer u_in, const ImportanceInput& importance) {
  states_[static_cast<size_t>(s)]->u = std::move(u_in);
  const FloatBuffer& u = states_[static_cast<size_t>(s)]->u;
  const std::string where = trace::enabled() ? prefix_ + "stages." + std::to_string(s) : std::string();
  const std::vector<int32_t> k = experts_per_token(s, u.dim(0), importance);
  {
    trace::Span span("route", where);
    route(s, u, k);
  }
  {
    trace::Span span("experts", where);
    dispatch_and_shared_expert(s, u);
  }
  trace::Span span("aggregate", where);
  aggregate(s, u);
  FloatBuffer m = mix_shared_expert(s, u);
  record_stats(s, k);
  return m;
}

// K_t: the stage's k for top-k routing; DA-MoE's allocation from token importance otherwise.
std::vector<int32_t> LayerEngine::experts_per_token(int s, int64_t T, const ImportanceInput& importance) {
  const StageConfig& cfg = model_.layer.stages[static_cast<size_t>(s)];
  if (cfg.routing.kind == RoutingKind::topk) return std::vector<int32_t>(static_cast<size_t>(T), cfg.routing.k);
  std::vector<float> imp;
  int64_t sequences = 1, length = T;
  if (importance.attention) {
    const Tensor& a = *importance.attention;
    if (a.rank() != 4 || a.dim(2) != a.dim(3))
      throw_input_error("attention has shape " + shape_to_string(a.shape()) + ", expected [B, H, L, L]");
    if (a.dim(0) * a.dim(2) != T)
      throw_input_error("attention has shape " + shape_to_string(a.shape()) + ": B·L = " +
                        std::to_string(a.dim(0) * a.dim(2)) + " but the input has " + std::to_string(T) + " tokens");
    sequences = a.dim(0);
    length = a.dim(2);
    FloatBuffer computed(ops_.backend(), {T});  // then copied to the host for the allocation
    ops_.run(ImportanceArgs{.attention = a.data(),
                            .b = a.dim(0),
                            .h = a.dim(1),
                            .l = a.dim(2),
                            .causal_correction = cfg.routing.causal_correction,
                            .importance = computed.data()});
    imp = computed.to_host();
  } else if (importance.importance) {
    const Tensor& i = *importance.importance;
    if (!(i.rank() == 1 && i.dim(0) == T) && !(i.rank() == 2 && i.dim(0) * i.dim(1) == T))
      throw_input_error("importance has shape " + shape_to_string(i.shape()) + ", expected [" + std::to_string(T) +
                        "] or [B, L] with B·L = " + std::to_string(T));
    if (i.rank() == 2) {
      sequences = i.dim(0);
      length = i.dim(1);
    }
    imp = borrow_buffer(ops_.backend(), i).to_host();
  } else {
    throw_input_error("stage " + std::to_string(s) +
                      " uses routing.kind: dynamic and needs token importance (--attention or --importance)");
  }
  std::vector<int32_t> k(static_cast<size_t>(T));
  host_ops().run(AllocateExpertsArgs{.importance = imp,
                               .sequences = sequences,
                               .length = length,
                               .params = {cfg.routing.k_avg, cfg.routing.k_min, cfg.routing.k_max, cfg.routing.budget},
                               .k = k.data()});
  return k;
}

// Router softmax, the K_t best experts per token, gates, capacity; the dispatch layout.
void LayerEngine::route(int s, const FloatBuffer& u, const std::vector<int32_t>& k) {
  const StageConfig& cfg = model_.layer.stages[static_cast<size_t>(s)];
  StageState& st = *states_[static_cast<size_t>(s)];
  const int64_t T = u.dim(0), d = model_.hidden_size, E = cfg.experts;
  Backend& backend = ops_.backend();
  st.logits.resize(backend, {T * E});
  ops_.run(LinearForwardArgs{.x = u.data(),
                             .n = T,
                             .in = d,
                             .out = E,
                             .w = param("stages." + std::to_string(s) + ".router.weight").data(),
                             .y = st.logits.data()});
  st.p.resize(backend, {T, E});
  st.lse.resize(backend, {T});
  ops_.run(SoftmaxForwardArgs{.z = st.logits.data(), .n = T, .e = E, .p = st.p.data(), .lse = st.lse.data()});
  const float* p = st.p.host_data(st.p_host);  // the host ops read p on the host
  OpRunner& host = host_ops();
  host.run(SelectExpertsArgs{.p = p, .n = T, .e = E, .k_per_token = k, .selection = &st.selection});
  host.run(ComputeGatesArgs{.p = p, .normalize = cfg.routing.normalize, .selection = &st.selection});
  host.run(ApplyCapacityArgs{.capacity_factor = cfg.capacity_factor, .selection = &st.selection});
  if (drop_top_ > 0) cpu::drop_top_experts(drop_top_, st.selection);
  st.layout = cpu::build_dispatch_layout(st.selection);
  st.nodes = cpu::build_node_list(st.selection, st.layout);
}

// The routed experts compute the layout's rows (packed by the ExpertCompute).
void LayerEngine::dispatch(int s, const FloatBuffer& u) {
  StageState& st = *states_[static_cast<size_t>(s)];
  experts_.forward(s, st.layout, u.tensor(), st.expert_out);
  if (st.expert_out.numel() != st.layout.rows() * model_.hidden_size)
    throw_runtime_error("expert compute returned " + shape_to_string(st.expert_out.shape()) + " for " +
                        std::to_string(st.layout.rows()) + " rows");
}

// The routed experts and, when the stage has one, the shared expert. While the routed rows are
// away (ExpertCompute::waits_for_rows), a second thread computes the shared expert: the overlap the
// math allows, since the next stage routes on RMSNorm(r_s), which needs this stage's m. The two
// touch disjoint state (experts_ and the layout, against ops_ and the shared buffers); the
// numbers are those of running them in turn.
void LayerEngine::dispatch_and_shared_expert(int s, const FloatBuffer& u) {
  const SharedExpertConfig& shared = model_.layer.stages[static_cast<size_t>(s)].shared_expert;
  if (!shared.enabled) return dispatch(s, u);
  // Below this much work (tokens × shared hidden size) handing the shared expert over costs what
  // it saves: cartesian.yaml serving through 4 workers, p50 at 1024 tokens 6.1-6.5 -> 5.6-5.7 ms,
  // at 256 tokens no gain and a worse p99.
  constexpr int64_t kMinOverlapWork = int64_t{512} * 64;
  if (!experts_.waits_for_rows() || u.dim(0) * shared.ffn_hidden_size < kMinOverlapWork) {
    dispatch(s, u);
    return shared_expert_forward(s, u);
  }
  if (!side_) side_ = std::make_unique<SideThread>();
  side_->start([this, s, &u] { shared_expert_forward(s, u); });
  try {
    dispatch(s, u);
  } catch (...) {
    side_->wait();  // u and the stage's buffers must outlive the shared expert; its own error is lost
    throw;
  }
  side_->wait();
}

// The shared expert S(u_t) of every token into st.shared_out (its activations kept for backward).
void LayerEngine::shared_expert_forward(int s, const FloatBuffer& u) {
  const StageConfig& cfg = model_.layer.stages[static_cast<size_t>(s)];
  StageState& st = *states_[static_cast<size_t>(s)];
  Backend& backend = ops_.backend();
  const int64_t T = u.dim(0), d = model_.hidden_size, fs = cfg.shared_expert.ffn_hidden_size;
  const std::string sp = "stages." + std::to_string(s) + ".";
  cpu::ExpertWeights w{param(sp + "shared.gate_proj.weight").data(), param(sp + "shared.up_proj.weight").data(),
                       param(sp + "shared.down_proj.weight").data()};
  st.shared_out = FloatBuffer(backend, {T, d});
  st.shared_saved.resize(backend, {cpu::ffn_saved_floats(T, fs, Activation::swiglu)});
  if (T > 0)
    ops_.run(FfnForwardArgs{.x = u.data(),
                            .rows = T,
                            .d = d,
                            .f = fs,
                            .activation = Activation::swiglu,
                            .w = w,
                            .out = st.shared_out.data(),
                            .saved = st.shared_saved.data()});
}

// Weighted sum or DAG aggregation of each token's expert outputs.
void LayerEngine::aggregate(int s, const FloatBuffer& u) {
  const StageConfig& cfg = model_.layer.stages[static_cast<size_t>(s)];
  StageState& st = *states_[static_cast<size_t>(s)];
  const int64_t T = u.dim(0), d = model_.hidden_size;
  const std::string sp = "stages." + std::to_string(s) + ".";
  st.aggregated = FloatBuffer(ops_.backend(), {T, d});
  if (cfg.aggregation.kind == AggregationKind::weighted_sum) {
    ops_.run(WeightedSumForwardArgs{
        .nodes = &st.nodes, .expert_out = st.expert_out.data(), .d = d, .m = st.aggregated.data()});
    return;
  }
  std::vector<cpu::DagLevelWeights> levels;
  for (int l = 0; l < cfg.aggregation.levels; ++l) {
    const std::string dp = sp + "dag." + std::to_string(l) + ".";
    levels.push_back({param(dp + "norm.weight").data(), param(dp + "norm.bias").data(), param(dp + "down.weight").data(),
                      param(dp + "edge.weight").data(), param(dp + "node.weight").data(), param(dp + "up.weight").data()});
  }
  // resize, not assign: the buffer of the previous step is reused.
  st.dag_saved.resize(ops_.backend(),
                      {cpu::dag_saved_floats(st.nodes.tokens(), st.nodes.nodes(), d, cfg.aggregation.dim, levels.size())});
  ops_.run(DagForwardArgs{.nodes = &st.nodes,
                          .expert_out = st.expert_out.data(),
                          .u = u.data(),
                          .d = d,
                          .dg = cfg.aggregation.dim,
                          .edges = cfg.aggregation.edges,
                          .levels = levels,
                          .m = st.aggregated.data(),
                          .saved = st.dag_saved.data()});
}

// m = aggregated, plus the shared expert's st.shared_out (added or mixed by coefficients) when the
// stage has one.
FloatBuffer LayerEngine::mix_shared_expert(int s, const FloatBuffer& u) {
  const StageConfig& cfg = model_.layer.stages[static_cast<size_t>(s)];
  StageState& st = *states_[static_cast<size_t>(s)];
  if (!cfg.shared_expert.enabled) return st.aggregated.clone();
  Backend& backend = ops_.backend();
  const int64_t T = u.dim(0), d = model_.hidden_size;
  const std::string sp = "stages." + std::to_string(s) + ".";
  if (cfg.shared_expert.mix == SharedMix::add) {
    FloatBuffer m = st.aggregated.clone();
    add_into(ops_, m, st.shared_out);
    return m;
  }
  FloatBuffer m(backend, {T, d});
  st.coef.resize(backend, {T, 2});
  ops_.run(CoefficientMixForwardArgs{.u = u.data(),
                                     .n = T,
                                     .d = d,
                                     .wc = param(sp + "shared_coef.weight").data(),
                                     .bc = param(sp + "shared_coef.bias").data(),
                                     .m = st.aggregated.data(),
                                     .s = st.shared_out.data(),
                                     .m_out = m.data(),
                                     .coef = st.coef.data()});
  return m;
}

// Statistics (K_t histogram, rows per expert) and the auxiliary losses of the forward.
void LayerEngine::record_stats(int s, const std::vector<int32_t>& k) {
  const StageConfig& cfg = model_.layer.stages[static_cast<size_t>(s)];
  const StageState& st = *states_[static_cast<size_t>(s)];
  StageStats& stats = stats_[static_cast<size_t>(s)];
  const int64_t T = st.u.dim(0), E = cfg.experts;
  stats.tokens = T;
  stats.assignments = st.selection.slots();
  stats.dropped = st.selection.dropped;
  stats.k_histogram.assign(static_cast<size_t>(E + 1), 0);
  for (int32_t kt : k) ++stats.k_histogram[static_cast<size_t>(kt)];
  stats.k = k;
  stats.mean_k = T ? static_cast<double>(stats.assignments) / static_cast<double>(T) : 0.0;
  stats.expert_rows.resize(static_cast<size_t>(E));
  for (int64_t i = 0; i < E; ++i) stats.expert_rows[static_cast<size_t>(i)] = st.layout.expert_rows(i);
  ops_.run(LoadBalanceLossArgs{.p = st.p.data(),
                               .selection = &st.selection,
                               .alpha = cfg.aux_loss.load_balance,
                               .dp = nullptr,
                               .loss = &stats.load_balance_loss});
  ops_.run(ZLossArgs{.p = st.p.data(),
                     .lse = st.lse.data(),
                     .n = T,
                     .e = E,
                     .beta = cfg.aux_loss.z_loss,
                     .dz = nullptr,
                     .loss = &stats.z_loss});
}

Tensor LayerEngine::backward(const Tensor& grad_y, TensorMap& grads, double aux_scale) {
  Tensor dx(input_shape_);
  Backend& b = ops_.backend();
  if (is_host(b)) {
    backward_into(grad_y, grads, dx, aux_scale);
    return dx;
  }
  const FloatBuffer gd = FloatBuffer::from_host(b, grad_y.data(), grad_y.shape());
  FloatBuffer dxd(b, input_shape_);
  Tensor gv = gd.tensor(), dxv = dxd.tensor();
  backward_into(gv, grads, dxv, aux_scale);
  dxd.download(dx.data());
  return dx;
}

void LayerEngine::backward_into(const Tensor& grad_y, TensorMap& grads, Tensor& grad_x, double aux_scale) {
  backward_stages(grad_y, grads, &grad_x, aux_scale);
}

void LayerEngine::backward_params(const Tensor& grad_y, TensorMap& grads, double aux_scale) {
  Backend& b = ops_.backend();
  if (is_host(b)) return backward_stages(grad_y, grads, nullptr, aux_scale);
  const FloatBuffer gd = FloatBuffer::from_host(b, grad_y.data(), grad_y.shape());
  backward_stages(gd.tensor(), grads, nullptr, aux_scale);
}

void LayerEngine::backward_stages(const Tensor& grad_y, TensorMap& grads, Tensor* grad_x, double aux_scale) {
  const int64_t d = model_.hidden_size;
  if (grad_y.shape() != input_shape_)
    throw_input_error("grad_output has shape " + shape_to_string(grad_y.shape()) + ", the layer output has " +
                      shape_to_string(input_shape_));
  if (grad_x && grad_x->shape() != input_shape_)
    throw_input_error("grad_input buffer has shape " + shape_to_string(grad_x->shape()) + ", the layer input has " +
                      shape_to_string(input_shape_));
  const int64_t T = input_shape_.at(0);
  Backend& backend = ops_.backend();
  FloatBuffer grad_x_buffer = grad_x ? borrow_buffer(backend, *grad_x) : FloatBuffer();
  FloatBuffer dr_next(backend, {T, d});  // dL/dr_s from later stages
  for (size_t si = model_.layer.stages.size(); si-- > 0;) {
    const int s = static_cast<int>(si);
    StageState& st = *states_[si];
    FloatBuffer dm = borrow_buffer(backend, grad_y).clone();
    add_into(ops_, dm, dr_next);
    // Stage 0's input gradient is dL/dx, and the input norm's weight gradient when it has one.
    const bool input_grad = si > 0 || grad_x || st.normed;
    FloatBuffer du = stage_backward(s, dm, grads, aux_scale, input_grad);
    if (!input_grad) break;
    FloatBuffer scratch;  // r_s = r_{s-1} + m_s; stage 0's dL/dr_{-1} is dL/dx, written in place
    FloatBuffer& dr_prev = si == 0 && grad_x ? grad_x_buffer : (scratch = FloatBuffer(backend, {T, d}));
    dr_prev.copy_from(dr_next);
    if (st.normed) {
      const std::string wname = s == 0 ? "input_norm.weight" : "stages." + std::to_string(s) + ".norm.weight";
      ops_.run(RmsNormBackwardArgs{.dy = du.data(),
                                   .x = st.norm_input.data(),
                                   .n = T,
                                   .d = d,
                                   .w = param(wname).data(),
                                   .rstd = st.norm_rstd.data(),
                                   .dx = dr_prev.data(),
                                   .dw = grad(grads, wname)});
    } else {
      add_into(ops_, dr_prev, du);
    }
    if (si > 0) dr_next = std::move(scratch);
  }
}

FloatBuffer LayerEngine::stage_backward(int s, const FloatBuffer& dm, TensorMap& grads, double aux_scale,
                                        bool input_grad) {
  const StageConfig& cfg = model_.layer.stages[static_cast<size_t>(s)];
  StageState& st = *states_[static_cast<size_t>(s)];
  const std::string sp = "stages." + std::to_string(s) + ".";
  trace::Span stage_span("stage backward", trace::enabled() ? prefix_ + sp : std::string());
  const int64_t T = st.u.dim(0), d = model_.hidden_size;
  const float* u = st.u.data();
  Backend& backend = ops_.backend();
  FloatBuffer du(backend, {T, d});

  // Shared expert and mix.
  FloatBuffer d_agg;
  if (cfg.shared_expert.enabled) {
    FloatBuffer d_shared;
    if (cfg.shared_expert.mix == SharedMix::add) {
      d_agg = dm.clone();
      d_shared = dm.clone();
    } else {
      d_shared = FloatBuffer(backend, {T, d});
      d_agg = FloatBuffer(backend, {T, d});
      ops_.run(CoefficientMixBackwardArgs{.dm_out = dm.data(),
                                          .u = u,
                                          .n = T,
                                          .d = d,
                                          .wc = param(sp + "shared_coef.weight").data(),
                                          .m = st.aggregated.data(),
                                          .s = st.shared_out.data(),
                                          .coef = st.coef.data(),
                                          .dm = d_agg.data(),
                                          .ds = d_shared.data(),
                                          .du = du.data(),
                                          .dwc = grad(grads, sp + "shared_coef.weight"),
                                          .dbc = grad(grads, sp + "shared_coef.bias")});
    }
    cpu::ExpertWeights w{param(sp + "shared.gate_proj.weight").data(), param(sp + "shared.up_proj.weight").data(),
                         param(sp + "shared.down_proj.weight").data()};
    cpu::ExpertGrads g{grad(grads, sp + "shared.gate_proj.weight"), grad(grads, sp + "shared.up_proj.weight"),
                       grad(grads, sp + "shared.down_proj.weight")};
    if (T > 0)
      ops_.run(FfnBackwardArgs{.dout = d_shared.data(),
                               .x = u,
                               .rows = T,
                               .d = d,
                               .f = cfg.shared_expert.ffn_hidden_size,
                               .activation = Activation::swiglu,
                               .w = w,
                               .saved = st.shared_saved.data(),
                               .dx = input_grad ? du.data() : nullptr,
                               .grads = g});
  } else {
    d_agg = dm.clone();
  }

  // Aggregation.
  FloatBuffer dgate(backend, {st.selection.slots()});
  FloatBuffer d_expert_out(backend, {st.layout.rows(), d});
  if (cfg.aggregation.kind == AggregationKind::weighted_sum) {
    ops_.run(WeightedSumBackwardArgs{.nodes = &st.nodes,
                                     .expert_out = st.expert_out.data(),
                                     .d = d,
                                     .dm = d_agg.data(),
                                     .d_expert_out = d_expert_out.data(),
                                     .dgate = dgate.data()});
  } else {
    std::vector<cpu::DagLevelWeights> levels;
    std::vector<cpu::DagLevelGrads> level_grads;
    for (int l = 0; l < cfg.aggregation.levels; ++l) {
      const std::string dp = sp + "dag." + std::to_string(l) + ".";
      levels.push_back({param(dp + "norm.weight").data(), param(dp + "norm.bias").data(), param(dp + "down.weight").data(),
                        param(dp + "edge.weight").data(), param(dp + "node.weight").data(), param(dp + "up.weight").data()});
      level_grads.push_back({grad(grads, dp + "norm.weight"), grad(grads, dp + "norm.bias"),
                             grad(grads, dp + "down.weight"), grad(grads, dp + "edge.weight"),
                             grad(grads, dp + "node.weight"), grad(grads, dp + "up.weight")});
    }
    if (st.dag_saved.numel() !=
        cpu::dag_saved_floats(st.nodes.tokens(), st.nodes.nodes(), d, cfg.aggregation.dim, levels.size()))
      throw_runtime_error("DAG backward needs the forward activations of every level");
    ops_.run(DagBackwardArgs{.nodes = &st.nodes,
                             .expert_out = st.expert_out.data(),
                             .u = u,
                             .d = d,
                             .dg = cfg.aggregation.dim,
                             .edges = cfg.aggregation.edges,
                             .levels = levels,
                             .saved = st.dag_saved.data(),
                             .dm = d_agg.data(),
                             .d_expert_out = d_expert_out.data(),
                             .dgate = dgate.data(),
                             .du = du.data(),
                             .grads = level_grads});
  }

  // Experts, then unpack their input gradients per expert (tokens are distinct within one expert).
  Tensor d_packed;
  {
    trace::Span span("experts backward", trace::enabled() ? prefix_ + sp : std::string());
    experts_.backward(s, st.layout, d_expert_out.tensor(), input_grad ? &d_packed : nullptr);
  }
  if (input_grad) unpack_input_grads(s, d_packed, du);
  router_backward(s, dgate, grads, aux_scale, input_grad ? &du : nullptr);
  return du;
}

void LayerEngine::unpack_input_grads(int s, const Tensor& d_packed, FloatBuffer& du) {
  StageState& st = *states_[static_cast<size_t>(s)];
  const int64_t d = model_.hidden_size, E = model_.layer.stages[static_cast<size_t>(s)].experts;
  const int64_t* token_index = on_backend(ops_.backend(), st.layout.token, st.token_index);
  for (int64_t i = 0; i < E; ++i) {
    const int64_t begin = st.layout.expert_offsets[static_cast<size_t>(i)], rows = st.layout.expert_rows(i);
    ops_.run(ScatterAddRowsArgs{.src = d_packed.data() + begin * d,
                                .d = d,
                                .index = token_index + begin,
                                .rows = rows,
                                .dst = du.data()});
  }
}

// Router: gates, load-balance loss → dp → softmax → dz (+ z-loss) → W_r and (du not null) u.
void LayerEngine::router_backward(int s, const FloatBuffer& dgate, TensorMap& grads, double aux_scale, FloatBuffer* du) {
  const StageConfig& cfg = model_.layer.stages[static_cast<size_t>(s)];
  StageState& st = *states_[static_cast<size_t>(s)];
  const std::string sp = "stages." + std::to_string(s) + ".";
  const int64_t T = st.u.dim(0), d = model_.hidden_size, E = cfg.experts;
  Backend& backend = ops_.backend();
  FloatBuffer dp(backend, {T, E}), dz(backend, {T, E});
  ops_.run(GatesBackwardArgs{.p = st.p.data(),
                             .selection = &st.selection,
                             .normalize = cfg.routing.normalize,
                             .dgate = dgate.data(),
                             .dp = dp.data()});
  ops_.run(LoadBalanceLossArgs{.p = st.p.data(),
                               .selection = &st.selection,
                               .alpha = cfg.aux_loss.load_balance * aux_scale,
                               .dp = dp.data()});
  ops_.run(SoftmaxBackwardArgs{.dp = dp.data(), .p = st.p.data(), .n = T, .e = E, .dz = dz.data()});
  ops_.run(
      ZLossArgs{.p = st.p.data(), .lse = st.lse.data(), .n = T, .e = E, .beta = cfg.aux_loss.z_loss * aux_scale, .dz = dz.data()});
  ops_.run(LinearBackwardWeightArgs{
      .dy = dz.data(), .x = st.u.data(), .n = T, .out = E, .in = d, .dw = grad(grads, sp + "router.weight")});
  if (du)
    ops_.run(LinearBackwardInputArgs{
        .dy = dz.data(), .n = T, .out = E, .in = d, .w = param(sp + "router.weight").data(), .dx = du->data()});
}

}  // namespace sy
