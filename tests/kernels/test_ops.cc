// Each CPU kernel against the naive double reference, each backward against central finite
// differences of that reference, and the discrete parts (selection, capacity, allocation)
// against hand-worked cases.
#include <gtest/gtest.h>

#include <limits>
#include <random>

#include "../support/fd.h"
#include "../support/blas_rows.h"
#include "../support/random.h"
#include "../support/reference.h"
#include "switchyard/core/error.h"
#include "switchyard/kernels/cpu_ops.h"
#include "../../kernels/cpu/fast_sigmoid.h"
#include "../../kernels/cpu/swiglu.h"

namespace sy {
namespace {

using testing::central_difference;
using testing::expect_gradients_close;

using testing::randn;
std::vector<double> to_d(const std::vector<float>& v) { return {v.begin(), v.end()}; }

// Loss Σ out ⊙ G evaluated on the reference; FD over each input buffer.
TEST(DenseOps, RmsNormForwardBackward) {
  const int64_t n = 5, d = 7;
  auto x = randn(n * d, 1), w = randn(d, 2), G = randn(n * d, 3);
  std::vector<float> y(n * d), rstd(n), dx(n * d, 0), dw(d, 0);
  cpu::rmsnorm_forward(x.data(), n, d, w.data(), y.data(), rstd.data());
  cpu::rmsnorm_backward(G.data(), x.data(), n, d, w.data(), rstd.data(), dx.data(), dw.data());
  auto xd = to_d(x), wd = to_d(w);
  auto loss = [&] {
    double l = 0;
    for (int64_t r = 0; r < n; ++r) {
      ref::Vec row(xd.begin() + r * d, xd.begin() + (r + 1) * d);
      ref::Vec out = ref::rmsnorm(row, wd);
      for (int64_t c = 0; c < d; ++c) l += out[c] * G[r * d + c];
    }
    return l;
  };
  for (int64_t r = 0; r < n; ++r) {
    ref::Vec row(xd.begin() + r * d, xd.begin() + (r + 1) * d);
    ref::Vec out = ref::rmsnorm(row, wd);
    for (int64_t c = 0; c < d; ++c) EXPECT_NEAR(y[r * d + c], out[c], 1e-5);
  }
  std::vector<double> fdx, fdw;
  for (size_t i = 0; i < xd.size(); ++i) fdx.push_back(central_difference(xd, i, loss));
  for (size_t i = 0; i < wd.size(); ++i) fdw.push_back(central_difference(wd, i, loss));
  expect_gradients_close("rmsnorm dx", to_d(dx), fdx);
  expect_gradients_close("rmsnorm dw", to_d(dw), fdw);
}

TEST(DenseOps, LayerNormForwardBackward) {
  const int64_t n = 4, d = 9;
  auto x = randn(n * d, 4), g = randn(d, 5), b = randn(d, 6), G = randn(n * d, 7);
  std::vector<float> y(n * d), mean(n), rstd(n), dx(n * d, 0), dg(d, 0), db(d, 0);
  cpu::layernorm_forward(x.data(), n, d, g.data(), b.data(), y.data(), mean.data(), rstd.data());
  cpu::layernorm_backward(G.data(), x.data(), n, d, g.data(), mean.data(), rstd.data(), dx.data(), dg.data(), db.data());
  auto xd = to_d(x), gd = to_d(g), bd = to_d(b);
  auto loss = [&] {
    double l = 0;
    for (int64_t r = 0; r < n; ++r) {
      ref::Vec out = ref::layernorm(ref::Vec(xd.begin() + r * d, xd.begin() + (r + 1) * d), gd, bd);
      for (int64_t c = 0; c < d; ++c) l += out[c] * G[r * d + c];
    }
    return l;
  };
  for (int64_t r = 0; r < n; ++r) {
    ref::Vec out = ref::layernorm(ref::Vec(xd.begin() + r * d, xd.begin() + (r + 1) * d), gd, bd);
    for (int64_t c = 0; c < d; ++c) EXPECT_NEAR(y[r * d + c], out[c], 1e-5);
  }
  std::vector<double> fdx, fdg, fdb;
  for (size_t i = 0; i < xd.size(); ++i) fdx.push_back(central_difference(xd, i, loss));
  for (size_t i = 0; i < gd.size(); ++i) fdg.push_back(central_difference(gd, i, loss));
  for (size_t i = 0; i < bd.size(); ++i) fdb.push_back(central_difference(bd, i, loss));
  expect_gradients_close("layernorm dx", to_d(dx), fdx);
  expect_gradients_close("layernorm dgamma", to_d(dg), fdg);
  expect_gradients_close("layernorm dbeta", to_d(db), fdb);
}

TEST(RouterOps, SoftmaxForwardBackwardAndLogsumexp) {
  const int64_t n = 3, e = 6;
  auto z = randn(n * e, 8, 3.0f), G = randn(n * e, 9);
  std::vector<float> p(n * e), lse(n), dz(n * e, 0);
  cpu::softmax_forward(z.data(), n, e, p.data(), lse.data());
  cpu::softmax_backward(G.data(), p.data(), n, e, dz.data());
  auto zd = to_d(z);
  auto loss = [&] {
    double l = 0;
    for (int64_t r = 0; r < n; ++r) {
      ref::Vec pr = ref::softmax(ref::Vec(zd.begin() + r * e, zd.begin() + (r + 1) * e));
      for (int64_t c = 0; c < e; ++c) l += pr[c] * G[r * e + c];
    }
    return l;
  };
  for (int64_t r = 0; r < n; ++r) {
    ref::Vec row(zd.begin() + r * e, zd.begin() + (r + 1) * e);
    EXPECT_NEAR(lse[r], ref::logsumexp(row), 1e-5);
    ref::Vec pr = ref::softmax(row);
    for (int64_t c = 0; c < e; ++c) EXPECT_NEAR(p[r * e + c], pr[c], 1e-6);
  }
  std::vector<double> fd;
  for (size_t i = 0; i < zd.size(); ++i) fd.push_back(central_difference(zd, i, loss));
  expect_gradients_close("softmax dz", to_d(dz), fd);
}

TEST(RouterOps, TopKTiesGoToLowerIndex) {
  // Token 0: experts 1 and 3 tie at 0.3; expert 1 wins the second place.
  const std::vector<float> p = {0.1f, 0.3f, 0.05f, 0.3f, 0.25f, 0.4f, 0.1f, 0.2f, 0.3f, 0.0f};
  const std::vector<int32_t> k = {2, 3};
  cpu::Selection sel = cpu::select_experts(p.data(), 2, 5, k);
  ASSERT_EQ(sel.offsets, (std::vector<int64_t>{0, 2, 5}));
  EXPECT_EQ(sel.expert, (std::vector<int32_t>{1, 3, 0, 3, 2}));
  cpu::compute_gates(p.data(), true, sel);
  EXPECT_NEAR(sel.gate[0], 0.5f, 1e-6);
  EXPECT_NEAR(sel.gate[2], 0.4f / 0.9f, 1e-6);
  cpu::compute_gates(p.data(), false, sel);
  EXPECT_NEAR(sel.gate[2], 0.4f, 1e-7);
  const std::vector<int32_t> too_many = {6, 1};
  EXPECT_THROW(cpu::select_experts(p.data(), 2, 5, too_many), Error);
}

TEST(RouterOps, CapacityAdmitsHighestGatesFirst) {
  // 4 tokens, 2 experts, top-1: everyone prefers expert 0. cf=1 → c = ceil(1·4/2) = 2.
  const std::vector<float> p = {0.6f, 0.4f, 0.9f, 0.1f, 0.7f, 0.3f, 0.9f, 0.1f};
  const std::vector<int32_t> k(4, 1);
  cpu::Selection sel = cpu::select_experts(p.data(), 4, 2, k);
  cpu::compute_gates(p.data(), false, sel);
  cpu::apply_capacity(1.0, sel);
  // Gates on expert 0: 0.6, 0.9, 0.7, 0.9 → keep tokens 1 and 3 (0.9, tie → lower token first).
  EXPECT_EQ(sel.kept, (std::vector<uint8_t>{0, 1, 0, 1}));
  EXPECT_EQ(sel.dropped, 2);
  cpu::DispatchLayout layout = cpu::build_dispatch_layout(sel);
  EXPECT_EQ(layout.expert_offsets, (std::vector<int64_t>{0, 2, 2}));
  EXPECT_EQ(layout.token, (std::vector<int64_t>{1, 3}));
  cpu::NodeList nodes = cpu::build_node_list(sel, layout);
  EXPECT_EQ(nodes.offsets, (std::vector<int64_t>{0, 0, 1, 1, 2}));
}

// Gates (normalised, with drops) and both aux losses: FD over p and z.
TEST(RouterOps, GatesAndAuxLossBackward) {
  for (bool normalize : {true, false}) {
    const int64_t n = 6, e = 5;
    auto z = randn(n * e, 11, 2.0f);
    std::vector<float> p(n * e), lse(n);
    cpu::softmax_forward(z.data(), n, e, p.data(), lse.data());
    const std::vector<int32_t> k(n, 2);
    cpu::Selection sel = cpu::select_experts(p.data(), n, e, k);
    cpu::compute_gates(p.data(), normalize, sel);
    cpu::apply_capacity(0.8, sel);  // c = ceil(0.8·12/5) = 2 per expert: some drops
    ASSERT_GT(sel.dropped, 0);
    auto G = randn(sel.slots(), 12);
    for (int64_t s = 0; s < sel.slots(); ++s)
      if (!sel.kept[s]) G[s] = 0;  // a dropped slot contributes nothing
    std::vector<float> dp(n * e, 0), dz(n * e, 0);
    cpu::gates_backward(p.data(), sel, normalize, G.data(), dp.data());
    const double alpha = 0.3, beta = 0.05;
    cpu::load_balance_loss(p.data(), sel, alpha, dp.data());
    cpu::softmax_backward(dp.data(), p.data(), n, e, dz.data());
    cpu::z_loss(p.data(), lse.data(), n, e, beta, dz.data());
    // Reference with the selection held fixed.
    auto zd = to_d(z);
    std::vector<double> f(e, 0);
    for (int32_t i : sel.expert) f[i] += 1.0 / sel.slots();
    auto loss = [&] {
      double l = 0, zl = 0;
      std::vector<double> P(e, 0);
      for (int64_t t = 0; t < n; ++t) {
        ref::Vec row(zd.begin() + t * e, zd.begin() + (t + 1) * e);
        ref::Vec pr = ref::softmax(row);
        zl += std::pow(ref::logsumexp(row), 2);
        double denom = 0;
        for (int64_t s = sel.offsets[t]; s < sel.offsets[t + 1]; ++s) denom += pr[sel.expert[s]];
        if (!normalize) denom = 1;
        for (int64_t s = sel.offsets[t]; s < sel.offsets[t + 1]; ++s)
          if (sel.kept[s]) l += G[s] * pr[sel.expert[s]] / denom;
        for (int64_t i = 0; i < e; ++i) P[i] += pr[i] / n;
      }
      for (int64_t i = 0; i < e; ++i) l += alpha * e * f[i] * P[i];
      return l + beta * zl / n;
    };
    std::vector<double> fd;
    for (size_t i = 0; i < zd.size(); ++i) fd.push_back(central_difference(zd, i, loss));
    expect_gradients_close(normalize ? "router dz (normalized)" : "router dz", to_d(dz), fd);
  }
}

TEST(ExpertFfn, ForwardBackwardBothActivations) {
  for (Activation act : {Activation::swiglu, Activation::gelu}) {
    const int64_t rows = 5, d = 6, f = 8;
    auto x = randn(rows * d, 20), wg = randn(f * d, 21, 0.4f), wu = randn(f * d, 22, 0.4f),
         wd = randn(d * f, 23, 0.4f), G = randn(rows * d, 24);
    cpu::ExpertWeights w{act == Activation::swiglu ? wg.data() : nullptr, wu.data(), wd.data()};
    std::vector<float> out(rows * d), dx(rows * d, 0), dwg(f * d, 0), dwu(f * d, 0), dwd(d * f, 0);
    cpu::FfnCache cache;
    cpu::ffn_forward(x.data(), rows, d, f, act, w, out.data(), &cache);
    cpu::ffn_backward(G.data(), x.data(), rows, d, f, act, w, cache, dx.data(), {dwg.data(), dwu.data(), dwd.data()});
    ref::Params p{{"gate_proj.weight", to_d(wg)}, {"up_proj.weight", to_d(wu)}, {"down_proj.weight", to_d(wd)}};
    auto xd = to_d(x);
    auto loss = [&] {
      double l = 0;
      for (int64_t r = 0; r < rows; ++r) {
        ref::Vec o = ref::ffn(p, "", ref::Vec(xd.begin() + r * d, xd.begin() + (r + 1) * d), f, act);
        for (int64_t c = 0; c < d; ++c) l += o[c] * G[r * d + c];
      }
      return l;
    };
    for (int64_t r = 0; r < rows; ++r) {
      ref::Vec o = ref::ffn(p, "", ref::Vec(xd.begin() + r * d, xd.begin() + (r + 1) * d), f, act);
      for (int64_t c = 0; c < d; ++c) EXPECT_NEAR(out[r * d + c], o[c], 1e-5);
    }
    std::vector<double> fdx;
    for (size_t i = 0; i < xd.size(); ++i) fdx.push_back(central_difference(xd, i, loss));
    expect_gradients_close("ffn dx", to_d(dx), fdx);
    for (auto [name, grad] : {std::pair{"up_proj.weight", &dwu}, std::pair{"down_proj.weight", &dwd},
                              std::pair{"gate_proj.weight", &dwg}}) {
      if (act == Activation::gelu && std::string(name) == "gate_proj.weight") continue;
      std::vector<double> fd;
      for (size_t i = 0; i < p[name].size(); ++i) fd.push_back(central_difference(p[name], i, loss));
      expect_gradients_close(std::string("ffn d") + name, to_d(*grad), fd);
    }
  }
}

// Weight segments: one backward over all rows with segments {a, b, c} sums the weight
// gradients exactly as three backwards of those rows in turn (bit for bit); dx is per row.
TEST(ExpertFfn, WeightSegmentsSumLikeSeparateBackwards) {
  for (Activation act : {Activation::swiglu, Activation::gelu}) {
    const int64_t d = 16, f = 24;
    const std::vector<int64_t> segments{37, 0, 70, 21};
    const int64_t rows = 128;
    auto x = randn(rows * d, 30), wg = randn(f * d, 31, 0.3f), wu = randn(f * d, 32, 0.3f),
         wd = randn(d * f, 33, 0.3f), G = randn(rows * d, 34);
    const cpu::ExpertWeights w{act == Activation::swiglu ? wg.data() : nullptr, wu.data(), wd.data()};
    const int64_t saved_per_row = cpu::ffn_saved_floats(1, f, act), scratch_per_row = cpu::ffn_backward_scratch_floats(1, f, act);
    std::vector<float> out(rows * d), saved(rows * saved_per_row), scratch(rows * scratch_per_row);
    auto grads = [&](std::vector<float>& g) -> cpu::ExpertGrads { return {g.data(), g.data() + f * d, g.data() + 2 * f * d}; };
    // One backward, segmented.
    std::vector<float> dx_one(rows * d, 0), g_one(3 * f * d, 0);
    cpu::ffn_forward_buffers(x.data(), rows, d, f, act, w, out.data(), saved.data());
    cpu::ffn_backward_buffers(G.data(), x.data(), rows, d, f, act, w, saved.data(), dx_one.data(), grads(g_one),
                              scratch.data(), segments);
    // One backward per segment, in turn.
    std::vector<float> dx_each(rows * d, 0), g_each(3 * f * d, 0);
    int64_t first = 0;
    for (const int64_t n : segments) {
      cpu::ffn_forward_buffers(x.data() + first * d, n, d, f, act, w, out.data(), saved.data());
      cpu::ffn_backward_buffers(G.data() + first * d, x.data() + first * d, n, d, f, act, w, saved.data(),
                                dx_each.data() + first * d, grads(g_each), scratch.data());
      first += n;
    }
    // Bit for bit where the BLAS computes each row of a product alone; to rounding elsewhere
    // (the one forward's rows then differ in the last bits from the per-segment forwards').
    if (testing::blas_rows_independent()) {
      EXPECT_EQ(g_one, g_each) << "weight gradients, activation " << static_cast<int>(act);
      EXPECT_EQ(dx_one, dx_each) << "input gradients, activation " << static_cast<int>(act);
    } else {
      for (size_t i = 0; i < g_one.size(); ++i) EXPECT_NEAR(g_one[i], g_each[i], 1e-5) << "weight gradient " << i;
      for (size_t i = 0; i < dx_one.size(); ++i) EXPECT_NEAR(dx_one[i], dx_each[i], 1e-5) << "input gradient " << i;
    }
    // Segments that do not cover the rows are refused.
    const std::vector<int64_t> short_segments{37, 70};
    EXPECT_THROW(cpu::ffn_backward_buffers(G.data(), x.data(), rows, d, f, act, w, saved.data(), dx_one.data(),
                                           grads(g_one), scratch.data(), short_segments),
                 Error);
  }
}

// The FFN's sigmoid (kernels/cpu/fast_sigmoid.h): within 3 ulp of the exact sigmoid wherever
// it is a normal float, saturating to 0 and 1 far out; SwiGLU keeps a NaN in hg a NaN.
TEST(FastSigmoid, WithinThreeUlpOfTheExactSigmoidAndSaturates) {
  double worst = 0;
  for (int64_t i = -1000000; i <= 1000000; ++i) {
    const float x = static_cast<float>(i) * 1e-4f;  // [-100, 100]
    const double exact = 1.0 / (1.0 + std::exp(-static_cast<double>(x)));
    if (exact < 1e-37) continue;
    worst = std::max(worst, std::fabs(cpu::fast_sigmoid(x) - exact) / exact);
  }
  EXPECT_LE(worst, 3 * 5.96e-8) << "largest relative error over [-100, 100]";
  EXPECT_EQ(cpu::fast_sigmoid(1000.0f), 1.0f);
  EXPECT_EQ(cpu::fast_sigmoid(std::numeric_limits<float>::infinity()), 1.0f);
  EXPECT_LT(cpu::fast_sigmoid(-1000.0f), 1e-37f);
  EXPECT_GE(cpu::fast_sigmoid(-std::numeric_limits<float>::infinity()), 0.0f);

  const float nan = std::numeric_limits<float>::quiet_NaN();
  const std::vector<float> hg{nan, 1.0f, -2.0f}, hu{1.0f, 2.0f, nan};
  std::vector<float> act(3), dact{1.0f, 1.0f, 1.0f}, dg(3);
  cpu::swiglu_forward(hg.data(), hu.data(), act.data(), 3);
  cpu::swiglu_backward(hg.data(), hu.data(), dact.data(), dg.data(), 3);
  EXPECT_TRUE(std::isnan(act[0]) && std::isnan(act[2]) && std::isnan(dg[0]) && std::isnan(dact[0]) && std::isnan(dg[2]));
  EXPECT_FALSE(std::isnan(act[1]) || std::isnan(dg[1]) || std::isnan(dact[1]));
}

TEST(Allocation, ExactBudgetSumsAndBounds) {
  std::mt19937 gen(5);
  std::exponential_distribution<float> expo(1.0f);
  for (auto [k_avg, k_min, k_max] : {std::tuple{2.0, 1, 4}, std::tuple{1.5, 1, 3}, std::tuple{2.7, 2, 8},
                                     std::tuple{1.0, 1, 4}, std::tuple{4.0, 1, 4}}) {
    const int64_t B = 3, L = 37;
    std::vector<float> s(B * L);
    for (float& v : s) v = expo(gen);
    s[5] = 0.0f;  // a token nobody attends to
    const auto k = cpu::allocate_experts(s, B, L, {k_avg, k_min, k_max, Budget::exact});
    const auto kref = ref::allocate(to_d(s), B, L, k_avg, k_min, k_max, Budget::exact);
    for (int64_t b = 0; b < B; ++b) {
      int64_t total = 0;
      for (int64_t t = 0; t < L; ++t) {
        EXPECT_GE(k[b * L + t], k_min);
        EXPECT_LE(k[b * L + t], k_max);
        total += k[b * L + t];
      }
      EXPECT_EQ(total, static_cast<int64_t>(std::nearbyint(k_avg * L))) << "k_avg " << k_avg;
    }
    EXPECT_EQ(std::vector<int>(k.begin(), k.end()), kref) << "k_avg " << k_avg;
  }
}

TEST(Allocation, WorkedExampleAndRoundBudget) {
  // L = 4, k_avg 2 → 8 slots, k in [1, 4]; s = (2, 1, 0.5, 0.5): λ solves
  // clamp(2λ)+clamp(λ)+2·clamp(λ/2) = 8 → λ = 2: κ = (4, 2, 1, 1).
  const std::vector<float> s = {2.0f, 1.0f, 0.5f, 0.5f};
  EXPECT_EQ(cpu::allocate_experts(s, 1, 4, {2.0, 1, 4, Budget::exact}), (std::vector<int32_t>{4, 2, 1, 1}));
  // round: round_half_even(2·s) = (4, 2, 1, 1); with k_avg 1.25: (2.5→2, 1.25→1, .625→1, .625→1).
  EXPECT_EQ(cpu::allocate_experts(s, 1, 4, {2.0, 1, 4, Budget::round}), (std::vector<int32_t>{4, 2, 1, 1}));
  EXPECT_EQ(cpu::allocate_experts(s, 1, 4, {1.25, 1, 4, Budget::round}), (std::vector<int32_t>{2, 1, 1, 1}));
  // Fractional remainders: s = (1, 1, 1, 1), k_avg = 1.5 → 6 slots, κ = 1.5 each → ties to lower t.
  const std::vector<float> flat = {1, 1, 1, 1};
  EXPECT_EQ(cpu::allocate_experts(flat, 1, 4, {1.5, 1, 4, Budget::exact}), (std::vector<int32_t>{2, 2, 1, 1}));
  const std::vector<float> bad = {1, -1, 1, 1};
  EXPECT_THROW(cpu::allocate_experts(bad, 1, 4, {1.5, 1, 4, Budget::exact}), Error);
}

TEST(Allocation, ImportanceFromAttention) {
  const int64_t B = 2, H = 3, L = 5;
  std::mt19937 gen(3);
  std::uniform_real_distribution<float> uni(0.1f, 1.0f);
  std::vector<float> a(B * H * L * L);
  for (int64_t row = 0; row < B * H * L; ++row) {
    const int64_t q = row % L;
    float sum = 0;
    for (int64_t t = 0; t <= q; ++t) sum += (a[row * L + t] = uni(gen));
    for (int64_t t = 0; t <= q; ++t) a[row * L + t] /= sum;
  }
  for (bool causal : {false, true}) {
    const auto s = cpu::importance_from_attention(a.data(), B, H, L, causal);
    const auto r = ref::importance_from_attention(a, B, H, L, causal);
    for (size_t i = 0; i < s.size(); ++i) EXPECT_NEAR(s[i], r[i], 1e-5);
    for (int64_t b = 0; b < B; ++b) {
      double mean = 0;
      for (int64_t t = 0; t < L; ++t) mean += s[b * L + t] / L;
      EXPECT_NEAR(mean, 1.0, 1e-5);  // rows sum to 1, so the mean is 1 either way
    }
  }
  a[7] += 0.01f;  // a row no longer sums to 1
  try {
    cpu::importance_from_attention(a.data(), B, H, L, false);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("sums to"), std::string::npos) << e.what();
  }
}

TEST(Aggregation, CoefficientMixBackward) {
  const int64_t n = 4, d = 5;
  auto u = randn(n * d, 30), wc = randn(2 * d, 31), bc = randn(2, 32), m = randn(n * d, 33), s = randn(n * d, 34),
       G = randn(n * d, 35);
  std::vector<float> out(n * d), coef(2 * n), dm(n * d), ds(n * d), du(n * d, 0), dwc(2 * d, 0), dbc(2, 0);
  cpu::coefficient_mix_forward(u.data(), n, d, wc.data(), bc.data(), m.data(), s.data(), out.data(), coef.data());
  cpu::coefficient_mix_backward(G.data(), u.data(), n, d, wc.data(), m.data(), s.data(), coef.data(), dm.data(),
                                ds.data(), du.data(), dwc.data(), dbc.data());
  auto ud = to_d(u), wcd = to_d(wc), bcd = to_d(bc), md = to_d(m), sd = to_d(s);
  auto loss = [&] {
    double l = 0;
    for (int64_t t = 0; t < n; ++t) {
      ref::Vec z = ref::matvec(wcd, ref::Vec(ud.begin() + t * d, ud.begin() + (t + 1) * d), 2);
      ref::Vec c = ref::softmax({z[0] + bcd[0], z[1] + bcd[1]});
      for (int64_t k = 0; k < d; ++k) l += G[t * d + k] * (c[0] * md[t * d + k] + c[1] * sd[t * d + k]);
    }
    return l;
  };
  EXPECT_NEAR(loss(), [&] { double l = 0; for (int64_t i = 0; i < n * d; ++i) l += G[i] * out[i]; return l; }(), 1e-4);
  std::vector<double> fu, fw, fb, fm, fs;
  for (size_t i = 0; i < ud.size(); ++i) fu.push_back(central_difference(ud, i, loss));
  for (size_t i = 0; i < wcd.size(); ++i) fw.push_back(central_difference(wcd, i, loss));
  for (size_t i = 0; i < bcd.size(); ++i) fb.push_back(central_difference(bcd, i, loss));
  for (size_t i = 0; i < md.size(); ++i) fm.push_back(central_difference(md, i, loss));
  for (size_t i = 0; i < sd.size(); ++i) fs.push_back(central_difference(sd, i, loss));
  expect_gradients_close("mix du", to_d(du), fu);
  expect_gradients_close("mix dwc", to_d(dwc), fw);
  expect_gradients_close("mix dbc", to_d(dbc), fb);
  expect_gradients_close("mix dm", to_d(dm), fm);
  expect_gradients_close("mix ds", to_d(ds), fs);
}

}  // namespace
}  // namespace sy
