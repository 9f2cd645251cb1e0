// The whole layer: engine forward against the double reference, engine backward against
// central finite differences of the reference, for every config in configs/models and for
// hand-made ones covering each option; plus the structural properties of METHODS.md.
#include <gtest/gtest.h>

#include <cstring>
#include <map>
#include <random>
#include <sstream>

#include "../support/fd.h"
#include "../support/guarded_device_backend.h"
#include "../support/recording_backend.h"
#include "../support/reference.h"
#include "switchyard/cli/toy_task.h"
#include "switchyard/core/error.h"
#include "switchyard/engine/layer_engine.h"
#include "switchyard/engine/layer_weights.h"
#include "switchyard/engine/moe_model.h"
#include "switchyard/engine/optimizer.h"
#include "switchyard/kernels/buffer.h"

namespace sy {
namespace {

struct Case {
  Config cfg;
  TensorMap weights;
  Tensor x, attention, grad_y;
  int64_t B = 2, L = 6;
};

// Random weights with every DAG `up` non-zero (so DAG gradients are exercised) and inputs.
Case make_case(const Config& cfg, uint64_t seed, int64_t B = 2, int64_t L = 6) {
  Case c{cfg, init_layer_weights(cfg.model, seed), {}, {}, {}, B, L};
  for (auto& [name, t] : c.weights) {
    RandomStream rng(seed + 100, name);
    if (name.ends_with("norm.weight") || name.ends_with("norm.bias") || name.ends_with("up.weight") ||
        name.ends_with("shared_coef.bias"))
      for (int64_t i = 0; i < t.numel(); ++i) t[i] += rng.uniform(-0.3f, 0.3f);
  }
  RandomStream rng(seed, "inputs");
  c.x = random_tokens(B * L, cfg.model.hidden_size, rng);
  c.grad_y = random_tokens(B * L, cfg.model.hidden_size, rng);
  if (needs_importance(cfg.model)) c.attention = random_attention(B, 2, L, 1.5f, rng);
  return c;
}

std::vector<std::vector<int>> reference_k(const Case& c) {
  std::vector<std::vector<int>> K;
  for (const StageConfig& st : c.cfg.model.layer.stages) {
    if (st.routing.kind == RoutingKind::topk) {
      K.emplace_back(static_cast<size_t>(c.B * c.L), st.routing.k);
    } else {
      const auto s = ref::importance_from_attention(c.attention.values(), c.B, 2, c.L, st.routing.causal_correction);
      K.push_back(ref::allocate(s, c.B, c.L, st.routing.k_avg, st.routing.k_min, st.routing.k_max, st.routing.budget));
    }
  }
  return K;
}

double ref_loss(const Case& c, const ref::Params& p, const ref::Mat& x, const std::vector<std::vector<int>>& K) {
  ref::LayerOut out = ref::layer(c.cfg.model, p, x, K);
  double l = out.aux;
  const int64_t d = c.cfg.model.hidden_size;
  for (size_t t = 0; t < x.size(); ++t)
    for (int64_t q = 0; q < d; ++q) l += out.y[t][q] * c.grad_y[static_cast<int64_t>(t) * d + q];
  return l;
}

void check_layer(const Config& cfg, uint64_t seed, int samples_per_tensor = 4) {
  Case c = make_case(cfg, seed);
  const int64_t d = cfg.model.hidden_size, T = c.B * c.L;
  TensorMap grads = zeros_like(c.weights);
  LocalExperts experts(cfg.model, c.weights, &grads);
  LayerEngine layer(cfg.model, c.weights, experts);
  const ImportanceInput imp{c.attention.empty() ? nullptr : &c.attention, nullptr};
  const Tensor y = layer.forward(c.x, imp);
  const Tensor dx = layer.backward(c.grad_y, grads);

  ref::Params p = ref::to_params(c.weights);
  ref::Mat xm = ref::to_mat(c.x);
  const auto K = reference_k(c);
  ref::LayerOut out = ref::layer(cfg.model, p, xm, K);
  double max_err = 0, max_val = 0;
  for (int64_t t = 0; t < T; ++t)
    for (int64_t q = 0; q < d; ++q) {
      max_err = std::max(max_err, std::fabs(out.y[t][q] - y[t * d + q]));
      max_val = std::max(max_val, std::fabs(out.y[t][q]));
    }
  EXPECT_LT(max_err, 1e-5 * std::max(1.0, max_val)) << cfg.source << ": forward differs from the reference";
  EXPECT_NEAR(layer.aux_loss(), out.aux, 1e-6 * std::max(1.0, out.aux));

  // dx: every entry.
  std::vector<double> fd, an;
  std::vector<double> xflat(c.x.values().begin(), c.x.values().end());
  auto loss_x = [&] {
    ref::Mat xx(T, ref::Vec(d));
    for (int64_t t = 0; t < T; ++t)
      for (int64_t q = 0; q < d; ++q) xx[t][q] = xflat[t * d + q];
    return ref_loss(c, p, xx, K);
  };
  for (size_t i = 0; i < xflat.size(); ++i) {
    fd.push_back(testing::central_difference(xflat, i, loss_x));
    an.push_back(dx[static_cast<int64_t>(i)]);
  }
  testing::expect_gradients_close(cfg.source + " grad_input", an, fd);

  // Every parameter tensor: a few sampled entries each.
  std::mt19937 gen(static_cast<uint32_t>(seed));
  for (auto& [name, vals] : p) {
    std::vector<double> a, f;
    std::uniform_int_distribution<size_t> pick(0, vals.size() - 1);
    for (int sidx = 0; sidx < samples_per_tensor; ++sidx) {
      const size_t i = pick(gen);
      f.push_back(testing::central_difference(vals, i, [&] { return ref_loss(c, p, xm, K); }));
      a.push_back(grads.at(name)[static_cast<int64_t>(i)]);
    }
    testing::expect_gradients_close(cfg.source + " " + name, a, f);
  }
}

Config small(const std::string& stage_yaml, const std::string& extra = "") {
  return load_config_string("model:\n  hidden_size: 12\n  layer:\n" + extra + "    stages:\n" + stage_yaml,
                            "inline");
}

TEST(LayerGradients, TopKWeightedSum) {
  check_layer(small("      - {experts: 5, ffn_hidden_size: 10, routing: {kind: topk, k: 2}, "
                    "aux_loss: {load_balance: 0.1, z_loss: 0.01}}\n"),
              1);
}
TEST(LayerGradients, TopKUnnormalizedGeluCapacityShared) {
  check_layer(small("      - {experts: 4, ffn_hidden_size: 8, activation: gelu, capacity_factor: 0.9,\n"
                    "         routing: {kind: topk, k: 2, normalize: false}, shared_expert: {ffn_hidden_size: 6}}\n"),
              2);
}
TEST(LayerGradients, DynamicExactCausalCorrection) {
  check_layer(small("      - {experts: 6, ffn_hidden_size: 8, routing: {kind: dynamic, k_avg: 2, k_min: 1, k_max: 4,"
                    " importance: {causal_correction: true}}, aux_loss: {load_balance: 0.05}}\n"),
              3);
}
TEST(LayerGradients, DagAllEdgesTwoLevelsCoefficientShared) {
  check_layer(small("      - {experts: 5, ffn_hidden_size: 8, routing: {k: 3}, aggregation: {kind: dag, levels: 2, dim: 4},"
                    " shared_expert: {ffn_hidden_size: 6, mix: coefficient}}\n"),
              4);
}
TEST(LayerGradients, DagCausalWithDynamicRoundBudgetAndDrops) {
  check_layer(small("      - {experts: 5, ffn_hidden_size: 8, capacity_factor: 1.0, routing: {kind: dynamic, k_avg: 2,"
                    " budget: round}, aggregation: {kind: dag, levels: 1, dim: 3, edges: causal}}\n"),
              5);
}
TEST(LayerGradients, TwoStagesWithInputNorm) {
  check_layer(small("      - {experts: 4, ffn_hidden_size: 6, routing: {k: 2}, shared_expert: {ffn_hidden_size: 4, mix: coefficient}}\n"
                    "      - {experts: 4, ffn_hidden_size: 6, routing: {k: 1}, aggregation: {kind: dag, levels: 1, dim: 3},"
                    " aux_loss: {load_balance: 0.1}}\n",
                    "    input_norm: rmsnorm\n"),
              6);
}

// Every shipped model config, forward and backward.
class ShippedConfig : public ::testing::TestWithParam<std::string> {};
TEST_P(ShippedConfig, MatchesReferenceAndFiniteDifferences) {
  check_layer(load_config(std::string(SY_SOURCE_DIR) + "/configs/models/" + GetParam() + ".yaml"), 11, 2);
}
INSTANTIATE_TEST_SUITE_P(Models, ShippedConfig,
                         ::testing::Values("topk", "dynamic", "dag", "cartesian", "combined"));

// ---- properties ----

Tensor run_forward(const Config& cfg, const TensorMap& w, const Tensor& x, const Tensor* attention = nullptr) {
  LocalExperts experts(cfg.model, w, nullptr);
  LayerEngine layer(cfg.model, w, experts);
  return layer.forward(x, {attention, nullptr});
}

TEST(LayerProperties, DagWithZeroLevelsOrZeroUpEqualsWeightedSumPlusInput) {
  const Config ws = small("      - {experts: 6, ffn_hidden_size: 8, routing: {k: 3}}\n");
  const Config dag0 = small("      - {experts: 6, ffn_hidden_size: 8, routing: {k: 3}, aggregation: {kind: dag, levels: 0}}\n");
  const Config dag2 = small("      - {experts: 6, ffn_hidden_size: 8, routing: {k: 3}, aggregation: {kind: dag, levels: 2}}\n");
  TensorMap w = init_layer_weights(ws.model, 9);
  RandomStream rng(9, "x");
  const Tensor x = random_tokens(10, 12, rng);
  const Tensor y_ws = run_forward(ws, w, x);
  const Tensor y0 = run_forward(dag0, w, x);
  const TensorMap w2 = init_layer_weights(dag2.model, 9);  // same names → same expert/router values; up = 0
  const Tensor y2 = run_forward(dag2, w2, x);
  for (int64_t i = 0; i < x.numel(); ++i) {
    EXPECT_NEAR(y0[i], y_ws[i] + x[i], 1e-5);
    EXPECT_NEAR(y2[i], y_ws[i] + x[i], 1e-5);
  }
}

TEST(LayerProperties, ZeroSecondStageEqualsStageOneAlone) {
  const std::string s1 = "      - {experts: 6, ffn_hidden_size: 8, routing: {k: 2}, shared_expert: {ffn_hidden_size: 4, mix: coefficient}}\n";
  const Config one = small(s1, "    input_norm: rmsnorm\n");
  const Config two = small(s1 + s1, "    input_norm: rmsnorm\n");
  TensorMap w1 = init_layer_weights(one.model, 4);
  TensorMap w2 = init_layer_weights(two.model, 4);
  for (auto& [name, t] : w2)
    if (name.rfind("stages.1.experts.", 0) == 0 || name.rfind("stages.1.shared.", 0) == 0) t.fill(0.0f);
  RandomStream rng(4, "x");
  const Tensor x = random_tokens(10, 12, rng);
  const Tensor y1 = run_forward(one, w1, x), y2 = run_forward(two, w2, x);
  for (int64_t i = 0; i < x.numel(); ++i) EXPECT_NEAR(y2[i], y1[i], 1e-6);
}

// The engine keeps its buffers from step to step (DAG caches and scratch included): a second
// batch of another size through the same engine must give exactly what a fresh engine gives.
TEST(LayerProperties, ReusedEngineEqualsFreshEngineOnTheNextBatch) {
  const Config cfg = load_config(std::string(SY_SOURCE_DIR) + "/configs/models/combined.yaml");
  const Case big = make_case(cfg, 21, 3, 8), next = make_case(cfg, 22, 2, 5);
  auto step = [&](LayerEngine& layer, const Case& c, TensorMap& grads) {
    const Tensor y = layer.forward(c.x, {&c.attention, nullptr});
    return std::pair<Tensor, Tensor>(y, layer.backward(c.grad_y, grads));
  };
  TensorMap grads_reused = zeros_like(next.weights), grads_fresh = zeros_like(next.weights);
  LocalExperts experts_reused(cfg.model, next.weights, &grads_reused);
  LayerEngine reused(cfg.model, next.weights, experts_reused);
  (void)step(reused, big, grads_reused);
  for (auto& [name, t] : grads_reused) t.fill(0.0f);
  const auto [y_reused, dx_reused] = step(reused, next, grads_reused);
  LocalExperts experts_fresh(cfg.model, next.weights, &grads_fresh);
  LayerEngine fresh(cfg.model, next.weights, experts_fresh);
  const auto [y_fresh, dx_fresh] = step(fresh, next, grads_fresh);
  ASSERT_EQ(y_reused.numel(), y_fresh.numel());
  for (int64_t i = 0; i < y_fresh.numel(); ++i) ASSERT_EQ(y_reused[i], y_fresh[i]) << "output " << i;
  for (int64_t i = 0; i < dx_fresh.numel(); ++i) ASSERT_EQ(dx_reused[i], dx_fresh[i]) << "grad_input " << i;
  for (const auto& [name, g] : grads_fresh)
    for (int64_t i = 0; i < g.numel(); ++i) ASSERT_EQ(grads_reused.at(name)[i], g[i]) << name << " " << i;
}

TEST(LayerProperties, DynamicStatsReportExactBudget) {
  const Config cfg = load_config(std::string(SY_SOURCE_DIR) + "/configs/models/dynamic.yaml");
  Case c = make_case(cfg, 3, 4, 16);
  LocalExperts experts(cfg.model, c.weights, nullptr);
  LayerEngine layer(cfg.model, c.weights, experts);
  layer.forward(c.x, {&c.attention, nullptr});
  const StageStats& st = layer.stats()[0];
  EXPECT_EQ(st.assignments, 4 * static_cast<int64_t>(std::nearbyint(2.0 * 16)));
  EXPECT_DOUBLE_EQ(st.mean_k, 2.0);
  int64_t tokens = 0;
  for (size_t k = 0; k < st.k_histogram.size(); ++k) {
    tokens += st.k_histogram[k];
    if (k < 1 || k > 4) {
      EXPECT_EQ(st.k_histogram[k], 0);
    }
  }
  EXPECT_EQ(tokens, 64);
}

TEST(LayerErrors, DynamicWithoutImportanceOrWrongShapes) {
  const Config cfg = load_config(std::string(SY_SOURCE_DIR) + "/configs/models/dynamic.yaml");
  Case c = make_case(cfg, 3);
  LocalExperts experts(cfg.model, c.weights, nullptr);
  LayerEngine layer(cfg.model, c.weights, experts);
  auto expect_error = [&](const ImportanceInput& imp, const std::string& needle) {
    try {
      layer.forward(c.x, imp);
      ADD_FAILURE() << "expected an error mentioning '" << needle << "'";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::input);
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_error({}, "needs token importance");
  Tensor wrong({3, 2, 6, 6});
  expect_error({&wrong, nullptr}, "B·L");
  Tensor imp_wrong({5});
  expect_error({nullptr, &imp_wrong}, "importance has shape");
  Tensor bad_x({4, 7});
  EXPECT_THROW(layer.forward(bad_x, {&c.attention, nullptr}), Error);
}

TEST(LayerWeights, MissingUnexpectedAndMisshapenTensorsAreNamed) {
  const Config cfg = load_config(std::string(SY_SOURCE_DIR) + "/configs/models/dag.yaml");
  TensorMap w = init_layer_weights(cfg.model, 1);
  EXPECT_NO_THROW(check_layer_weights(cfg.model, w, "w.safetensors"));
  auto expect_named = [&](TensorMap bad, const std::string& needle) {
    try {
      check_layer_weights(cfg.model, bad, "w.safetensors");
      ADD_FAILURE() << "expected an error naming " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("w.safetensors"), std::string::npos) << e.what();
    }
  };
  TensorMap missing = w;
  missing.erase("stages.0.dag.1.edge.weight");
  expect_named(missing, "stages.0.dag.1.edge.weight");
  TensorMap extra = w;
  extra.emplace("stages.0.experts.99.up_proj.weight", Tensor({1}));
  expect_named(extra, "stages.0.experts.99.up_proj.weight");
  TensorMap shape = w;
  shape.at("stages.0.router.weight") = Tensor({3, 3});
  expect_named(shape, "stages.0.router.weight");
  TensorMap nan = w;
  nan.at("stages.0.router.weight")[0] = std::nanf("");
  expect_named(nan, "non-finite");
  // DAG up is initialised to zero, everything else is not.
  for (const auto& [name, t] : w) {
    if (name.ends_with("up.weight") && name.find(".dag.") != std::string::npos) {
      for (float v : t.values()) EXPECT_EQ(v, 0.0f) << name;
    }
  }
}

// ---- the backend seam ----

using OpCounts = std::map<std::string, int>;

OpCounts minus(OpCounts a, const OpCounts& b) {
  for (const auto& [name, n] : b)
    if ((a[name] -= n) == 0) a.erase(name);
  return a;
}

void expect_bit_equal(const Tensor& a, const Tensor& b, const std::string& what) {
  ASSERT_EQ(a.shape(), b.shape()) << what;
  EXPECT_EQ(0, std::memcmp(a.data(), b.data(), sizeof(float) * static_cast<size_t>(a.numel()))) << what;
}

// Two stages covering every op of the engine: input norm, top-k with capacity drops, coefficient
// shared mix, weighted sum; then DA-MoE allocation, DAG aggregation, added shared expert.
Config seam_config() {
  return small(
      "      - {experts: 5, ffn_hidden_size: 8, capacity_factor: 0.9, routing: {k: 2},"
      " shared_expert: {ffn_hidden_size: 6, mix: coefficient}, aux_loss: {load_balance: 0.1, z_loss: 0.01}}\n"
      "      - {experts: 4, ffn_hidden_size: 6, routing: {kind: dynamic, k_avg: 2, k_min: 1, k_max: 3},"
      " aggregation: {kind: dag, levels: 1, dim: 3}, shared_expert: {ffn_hidden_size: 4},"
      " aux_loss: {load_balance: 0.05, z_loss: 0.02}}\n",
      "    input_norm: rmsnorm\n");
}

// The engine and the local experts run every op through the Backend they were given: a recording
// backend sees exactly the ops the config implies (an op computed by calling sy::cpu directly
// would be missing from the counts), the results equal the plain CPU engine bit for bit, and a
// second step on the same engine allocates no workspace (one buffer per object, grown as needed).
// backward_params: backward's gradients, bit for bit, step after step, on every shipped config
// (two layers: the upper layer still needs its dL/dx).
class BackwardParams : public ::testing::TestWithParam<std::string> {};
TEST_P(BackwardParams, SameGradientsAsBackwardBitForBit) {
  Config cfg = load_config(std::string(SY_SOURCE_DIR) + "/configs/models/" + GetParam() + ".yaml");
  cfg.model.layers = 2;
  const TensorMap w = init_model_weights(cfg.model, 5);
  const int64_t B = 2, L = 6;
  RandomStream rng(5, "backward-params");
  const Tensor x = random_tokens(B * L, cfg.model.hidden_size, rng), g = random_tokens(B * L, cfg.model.hidden_size, rng);
  const Tensor attention = needs_importance(cfg.model) ? random_attention(B, 2, L, 1.5f, rng) : Tensor();
  const ImportanceInput imp{needs_importance(cfg.model) ? &attention : nullptr, nullptr};
  MoeModel full(cfg, w), params(cfg, w);
  for (int step = 0; step < 2; ++step) {
    expect_bit_equal(params.forward(x, imp), full.forward(x, imp), "output");
    full.backward(g);
    params.backward_params(g);
    for (const auto& [name, t] : full.grads()) expect_bit_equal(params.grads().at(name), t, name);
    full.step({.lr = 1e-2});
    params.step({.lr = 1e-2});
  }
}
INSTANTIATE_TEST_SUITE_P(Models, BackwardParams, ::testing::Values("topk", "dynamic", "dag", "cartesian", "combined"));

// Records whether the engine asked its experts for input gradients.
class GradInputRecorder final : public ExpertCompute {
 public:
  explicit GradInputRecorder(ExpertCompute& inner) : inner_(inner) {}
  void forward(int stage, const cpu::DispatchLayout& layout, const Tensor& tokens, Tensor& output) override {
    inner_.forward(stage, layout, tokens, output);
  }
  void backward(int stage, const cpu::DispatchLayout& layout, const Tensor& grad_output, Tensor* grad_input) override {
    asked.push_back(grad_input != nullptr);
    inner_.backward(stage, layout, grad_output, grad_input);
  }
  std::vector<bool> asked;  // per backward call, in call order (last stage first)

 private:
  ExpertCompute& inner_;
};

// Only a first stage fed x itself skips its input gradients (experts and router); with an
// input norm, dL/du is needed for the norm's weight, and later stages always need theirs.
TEST(BackwardParams, OnlyAFirstStageWithoutInputNormSkipsItsInputGradients) {
  for (const auto& [model, asked] : std::vector<std::pair<std::string, std::vector<bool>>>{
           {"topk", {false}}, {"cartesian", {true, true}}}) {
    const Case c = make_case(load_config(std::string(SY_SOURCE_DIR) + "/configs/models/" + model + ".yaml"), 7);
    TensorMap grads = zeros_like(c.weights);
    LocalExperts local(c.cfg.model, c.weights, &grads);
    GradInputRecorder experts(local);
    test_support::RecordingBackend backend;
    LayerEngine layer(c.cfg.model, c.weights, experts, "", backend);
    layer.forward(c.x);
    const OpCounts before = backend.ops;
    layer.backward_params(c.grad_y, grads);
    EXPECT_EQ(experts.asked, asked) << model;
    EXPECT_EQ(minus(backend.ops, before)["linear_backward_input"], model == "topk" ? 0 : 2) << model;
  }
}

TEST(LayerBackendSeam, EveryOpGoesThroughTheGivenBackend) {
  const Config cfg = seam_config();
  const Case c = make_case(cfg, 31);
  const ImportanceInput imp{&c.attention, nullptr};

  TensorMap grads_plain = zeros_like(c.weights);
  LocalExperts experts_plain(cfg.model, c.weights, &grads_plain);
  LayerEngine plain(cfg.model, c.weights, experts_plain);
  const Tensor y_plain = plain.forward(c.x, imp);
  const Tensor dx_plain = plain.backward(c.grad_y, grads_plain);

  test_support::RecordingBackend engine_backend, expert_backend;
  TensorMap grads = zeros_like(c.weights);
  LocalExperts experts(cfg.model, c.weights, &grads, "", expert_backend);
  LayerEngine layer(cfg.model, c.weights, experts, "", engine_backend);
  const Tensor y = layer.forward(c.x, imp);
  const OpCounts engine_fwd = engine_backend.ops, experts_fwd = expert_backend.ops;
  const Tensor dx = layer.backward(c.grad_y, grads);
  const OpCounts engine_bwd = minus(engine_backend.ops, engine_fwd),
                 experts_bwd = minus(expert_backend.ops, experts_fwd);

  expect_bit_equal(y, y_plain, "output");
  expect_bit_equal(dx, dx_plain, "grad_input");
  for (const auto& [name, g] : grads_plain) expect_bit_equal(grads.at(name), g, name);
  EXPECT_EQ(layer.aux_loss(), plain.aux_loss());

  OpCounts fwd, bwd, efwd, ebwd;
  for (size_t s = 0; s < cfg.model.layer.stages.size(); ++s) {
    const StageConfig& st = cfg.model.layer.stages[s];
    int busy = 0;  // experts with rows
    for (int64_t rows : layer.stats()[s].expert_rows) busy += rows > 0;
    ASSERT_GT(busy, 0);
    ++fwd["rmsnorm_forward"];  // input_norm, then the stage norm
    ++bwd["rmsnorm_backward"];
    for (const char* op : {"linear_forward", "softmax_forward", "select_experts", "compute_gates", "apply_capacity",
                           "load_balance_loss", "z_loss"})
      ++fwd[op];
    for (const char* op : {"gates_backward", "load_balance_loss", "softmax_backward", "z_loss",
                           "linear_backward_weight", "linear_backward_input"})
      ++bwd[op];
    if (st.routing.kind == RoutingKind::dynamic) {
      ++fwd["importance_from_attention"];
      ++fwd["allocate_experts"];
    }
    const bool ws = st.aggregation.kind == AggregationKind::weighted_sum;
    ++fwd[ws ? "weighted_sum_forward" : "dag_forward"];
    ++bwd[ws ? "weighted_sum_backward" : "dag_backward"];
    ASSERT_TRUE(st.shared_expert.enabled);
    ++fwd["ffn_forward"];
    ++bwd["ffn_backward"];
    if (st.shared_expert.mix == SharedMix::coefficient) {
      ++fwd["coefficient_mix_forward"];
      ++bwd["coefficient_mix_backward"];
    }
    bwd["scatter_add_rows"] += st.experts;  // one per expert
    ++fwd["add_inplace"];                   // y += m
    if (s + 1 < cfg.model.layer.stages.size()) ++fwd["add_inplace"];  // the residual
    if (st.shared_expert.mix == SharedMix::add) ++fwd["add_inplace"];
    ++bwd["add_inplace"];  // dm = grad_y + dL/dr_s
    ++efwd["gather_rows"];
    efwd["ffn_forward"] += busy;
    ebwd["ffn_backward"] += busy;
  }
  EXPECT_GT(layer.stats()[0].dropped, 0);  // capacity did drop assignments
  EXPECT_EQ(engine_fwd, fwd);
  EXPECT_EQ(engine_bwd, bwd);
  EXPECT_EQ(experts_fwd, efwd);
  EXPECT_EQ(experts_bwd, ebwd);

  // A second step on the same engine and experts: the workspaces are already large enough.
  const int allocations = engine_backend.allocations, expert_allocations = expert_backend.allocations;
  EXPECT_GT(allocations, 0);  // DAG backward, load-balance loss and importance use scratch
  for (auto& [name, g] : grads) g.fill(0.0f);
  const Tensor y2 = layer.forward(c.x, imp);
  const Tensor dx2 = layer.backward(c.grad_y, grads);
  expect_bit_equal(y2, y_plain, "second output");
  expect_bit_equal(dx2, dx_plain, "second grad_input");
  EXPECT_EQ(engine_backend.allocations, allocations);
  EXPECT_EQ(expert_backend.allocations, expert_allocations);
}

// A device backend's path through the engine, run here on a stand-in (GuardedDeviceBackend:
// device() == cuda, the CPU kernels underneath, and its memory PROT_NONE outside its own calls,
// so any host access to "device" memory crashes the test): weights and gradients are
// BufferMaps, activations Buffers of the backend, the host ops run on the CPU backend over
// downloaded probabilities (the device backend refuses them, as CUDA does), and the numbers
// equal the plain CPU engine bit for bit, for every shipped config and the seam config. The
// real CUDA comparison is tests/runtime/test_layer_device.cc.
TEST(LayerBackendSeam, DeviceBackendPathEqualsTheCpuEngine) {
  std::vector<Config> configs{seam_config()};
  for (const char* m : {"topk", "dynamic", "dag", "cartesian", "combined"})
    configs.push_back(load_config(std::string(SY_SOURCE_DIR) + "/configs/models/" + m + ".yaml"));
  for (const Config& cfg : configs) {
    const Case c = make_case(cfg, 41);
    const ImportanceInput imp{c.attention.empty() ? nullptr : &c.attention, nullptr};
    TensorMap grads_plain = zeros_like(c.weights);
    LocalExperts experts_plain(cfg.model, c.weights, &grads_plain);
    LayerEngine plain(cfg.model, c.weights, experts_plain);
    const Tensor y_plain = plain.forward(c.x, imp);
    const Tensor dx_plain = plain.backward(c.grad_y, grads_plain);

    test_support::GuardedDeviceBackend device;
    BufferMap w(device, c.weights), grads(device, zeros_like(c.weights));
    LocalExperts experts(cfg.model, w.tensors(), &grads.tensors(), "", device);
    LayerEngine layer(cfg.model, w.tensors(), experts, "", device);
    for (int step = 0; step < 2; ++step) {  // a second step reuses (and resizes) every buffer
      for (auto& [name, g] : grads.tensors()) borrow_buffer(device, g).fill_zero();
      const Tensor y = layer.forward(c.x, imp);
      const Tensor dx = layer.backward(c.grad_y, grads.tensors());
      expect_bit_equal(y, y_plain, cfg.source + " output");
      expect_bit_equal(dx, dx_plain, cfg.source + " grad_input");
      const TensorMap g = grads.to_host();
      for (const auto& [name, t] : grads_plain) expect_bit_equal(g.at(name), t, cfg.source + " " + name);
      EXPECT_EQ(layer.aux_loss(), plain.aux_loss()) << cfg.source;
    }
    for (const char* host_op : {"select_experts", "compute_gates", "apply_capacity", "allocate_experts"})
      EXPECT_EQ(device.ops.count(host_op), 0u) << cfg.source << ": " << host_op << " asked of the device backend";
    EXPECT_GT(device.ops["ffn_forward"], 0) << cfg.source;
    EXPECT_GT(device.allocations, 0) << cfg.source;  // the activations are the backend's memory
  }
}

// The guard is real: a host read of the stand-in's memory outside a backend call dies.
TEST(LayerBackendSeam, GuardedDeviceMemoryCrashesOnAHostRead) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  test_support::GuardedDeviceBackend device;
  FloatBuffer b(device, {4});
  const Tensor view = b.tensor();
  EXPECT_DEATH(
      {
        volatile float v = view[0];
        (void)v;
      },
      "");
  EXPECT_EQ(b.to_host(), std::vector<float>(4, 0.0f));
}

// MoeModel on a device backend (the guarded stand-in), two layers: owned weights copied to the
// backend, gradients and AdamW there; forward, backward and a step equal the CPU model's.
TEST(LayerBackendSeam, MoeModelOnADeviceBackendEqualsTheCpuModel) {
  Config cfg = load_config(std::string(SY_SOURCE_DIR) + "/configs/models/cartesian.yaml");
  cfg.model.layers = 2;
  const TensorMap w = init_model_weights(cfg.model, 9);
  RandomStream rng(9, "moe-model-device");
  const Tensor x = random_tokens(24, cfg.model.hidden_size, rng), g = random_tokens(24, cfg.model.hidden_size, rng);
  test_support::GuardedDeviceBackend device;
  MoeModel cpu(cfg, w), dev(cfg, w, device);
  auto on_host = [&](const Tensor& t) {  // a view of the backend's memory, copied out
    Tensor h(t.shape());
    device.copy_to_host(h.data(), t.data(), sizeof(float) * static_cast<size_t>(t.numel()));
    return h;
  };
  for (int step = 0; step < 2; ++step) {
    expect_bit_equal(dev.forward(x), cpu.forward(x), "output");
    expect_bit_equal(dev.backward(g), cpu.backward(g), "grad_input");
    for (const auto& [name, t] : cpu.grads()) {
      ASSERT_TRUE(dev.grads().at(name).borrowed()) << name;
      expect_bit_equal(on_host(dev.grads().at(name)), t, name);
    }
    cpu.step({.lr = 1e-2});
    dev.step({.lr = 1e-2});
    for (const auto& [name, t] : cpu.weights()) expect_bit_equal(on_host(dev.weights().at(name)), t, name);
  }
  EXPECT_EQ(device.ops.count("select_experts"), 0u);
  EXPECT_GT(device.ops["adamw"], 0);
}

// train-toy's device path (teacher, student, gradients and AdamW on the guarded stand-in): the
// same loss curve and evaluations as the CPU run, bit for bit, for a dynamic and a DAG config.
TEST(LayerBackendSeam, ToyTaskOnADeviceBackendEqualsTheCpuRun) {
  for (const char* m : {"dynamic", "combined"}) {
    const Config cfg = load_config(std::string(SY_SOURCE_DIR) + "/configs/models/" + m + ".yaml");
    ToyTaskOptions opt;
    opt.steps = 3;
    opt.sequences = 2;
    opt.seq_len = 8;
    opt.progress = false;
    std::ostringstream out_cpu, out_dev;
    const ToyTaskResult cpu = run_toy_task(cfg, opt, out_cpu);
    test_support::GuardedDeviceBackend device;
    opt.backend = &device;
    const ToyTaskResult dev = run_toy_task(cfg, opt, out_dev);
    EXPECT_EQ(dev.losses, cpu.losses) << m;
    EXPECT_EQ(dev.first_eval, cpu.first_eval) << m;
    EXPECT_EQ(dev.last_eval, cpu.last_eval) << m;
    EXPECT_GT(device.ops["adamw"], 0) << m;
  }
}

// AdamW on a device backend (the guarded stand-in): moments in its memory, the same numbers.
TEST(LayerBackendSeam, AdamWOnADeviceBackendEqualsThePlainOptimizer) {
  const Config cfg = seam_config();
  TensorMap params = init_layer_weights(cfg.model, 2), grads = zeros_like(params);
  AdamWConfig ac;
  ac.lr = 0.01;
  ac.weight_decay = 0.1;
  test_support::GuardedDeviceBackend device;
  BufferMap params_device(device, params);
  AdamW opt(ac, device), plain(ac);
  for (int step = 0; step < 3; ++step) {
    for (auto& [name, g] : grads) {
      RandomStream rng(static_cast<uint64_t>(step), name);
      for (int64_t i = 0; i < g.numel(); ++i) g[i] = rng.uniform(-1.0f, 1.0f);
    }
    BufferMap grads_device(device, grads);
    opt.step(params_device.tensors(), grads_device.tensors());
    plain.step(params, grads);
  }
  EXPECT_EQ(device.ops, (OpCounts{{"adamw", 3 * static_cast<int>(params.size())}}));
  const TensorMap after = params_device.to_host();
  for (const auto& [name, p] : params) expect_bit_equal(after.at(name), p, name);
  ASSERT_EQ(opt.state().size(), plain.state().size());
  for (const auto& [name, m] : plain.state()) {
    const Tensor& dm = opt.state().at(name);
    ASSERT_EQ(dm.shape(), m.shape()) << name;
    Tensor h(m.shape());
    device.copy_to_host(h.data(), dm.data(), sizeof(float) * static_cast<size_t>(m.numel()));
    expect_bit_equal(h, m, name);
  }
}

// AdamW's update of every tensor is the backend's adamw op, bit for bit the plain optimizer.
TEST(LayerBackendSeam, AdamWStepsThroughTheGivenBackend) {
  const Config cfg = seam_config();
  TensorMap params = init_layer_weights(cfg.model, 2), params_plain = params, grads = zeros_like(params);
  AdamWConfig ac;
  ac.lr = 0.01;
  ac.weight_decay = 0.1;
  test_support::RecordingBackend backend;
  AdamW opt(ac, backend), plain(ac);
  for (int step = 0; step < 3; ++step) {
    for (auto& [name, g] : grads) {
      RandomStream rng(static_cast<uint64_t>(step), name);
      for (int64_t i = 0; i < g.numel(); ++i) g[i] = rng.uniform(-1.0f, 1.0f);
    }
    opt.step(params, grads);
    plain.step(params_plain, grads);
  }
  EXPECT_EQ(backend.ops, (OpCounts{{"adamw", 3 * static_cast<int>(params.size())}}));
  EXPECT_EQ(backend.allocations, 0);
  for (const auto& [name, p] : params_plain) expect_bit_equal(params.at(name), p, name);
  for (const auto& [name, m] : plain.state()) expect_bit_equal(opt.state().at(name), m, name);
}

}  // namespace
}  // namespace sy
