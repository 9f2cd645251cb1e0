// Naive double-precision reference of one MoE layer (METHODS.md), written straight from the
// equations with no shared code from kernels/: loops, no BLAS, no packing. Tests compare the
// float32 kernels and the engine against it, and take finite differences of it in double.
#pragma once

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <map>
#include <numeric>
#include <string>
#include <vector>

#include "switchyard/core/config.h"
#include "switchyard/core/io.h"

namespace sy::ref {

using Vec = std::vector<double>;
using Mat = std::vector<Vec>;  // rows
using Params = std::map<std::string, Vec>;  // flat, same names as the safetensors file

inline Params to_params(const TensorMap& w) {
  Params p;
  for (const auto& [n, t] : w) p[n] = Vec(t.values().begin(), t.values().end());
  return p;
}
inline Mat to_mat(const Tensor& t) {
  Mat m(static_cast<size_t>(t.dim(0)), Vec(static_cast<size_t>(t.dim(1))));
  for (int64_t r = 0; r < t.dim(0); ++r)
    for (int64_t c = 0; c < t.dim(1); ++c) m[r][c] = t[r * t.dim(1) + c];
  return m;
}

// y = W x for W stored [out, in] row-major.
inline Vec matvec(const Vec& w, const Vec& x, size_t out) {
  const size_t in = x.size();
  Vec y(out, 0.0);
  for (size_t o = 0; o < out; ++o)
    for (size_t i = 0; i < in; ++i) y[o] += w[o * in + i] * x[i];
  return y;
}
inline Vec rmsnorm(const Vec& x, const Vec& w) {
  double ss = 0;
  for (double v : x) ss += v * v;
  const double r = 1.0 / std::sqrt(ss / x.size() + 1e-6);
  Vec y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = x[i] * r * w[i];
  return y;
}
inline Vec layernorm(const Vec& x, const Vec& g, const Vec& b) {
  double mu = 0, var = 0;
  for (double v : x) mu += v;
  mu /= x.size();
  for (double v : x) var += (v - mu) * (v - mu);
  var /= x.size();
  const double r = 1.0 / std::sqrt(var + 1e-5);
  Vec y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = (x[i] - mu) * r * g[i] + b[i];
  return y;
}
inline double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }
inline Vec softmax(const Vec& z) {
  const double mx = *std::max_element(z.begin(), z.end());
  Vec p(z.size());
  double s = 0;
  for (size_t i = 0; i < z.size(); ++i) s += (p[i] = std::exp(z[i] - mx));
  for (double& v : p) v /= s;
  return p;
}
inline double logsumexp(const Vec& z) {
  const double mx = *std::max_element(z.begin(), z.end());
  double s = 0;
  for (double v : z) s += std::exp(v - mx);
  return mx + std::log(s);
}

inline Vec ffn(const Params& p, const std::string& pre, const Vec& x, size_t f, Activation act) {
  const size_t d = x.size();
  Vec up = matvec(p.at(pre + "up_proj.weight"), x, f), h(f);
  if (act == Activation::swiglu) {
    Vec gate = matvec(p.at(pre + "gate_proj.weight"), x, f);
    for (size_t i = 0; i < f; ++i) h[i] = gate[i] * sigmoid(gate[i]) * up[i];
  } else {
    for (size_t i = 0; i < f; ++i) h[i] = 0.5 * up[i] * (1.0 + std::erf(up[i] / std::sqrt(2.0)));
  }
  return matvec(p.at(pre + "down_proj.weight"), h, d);
}

// Token importance from attention [B, H, L, L] (flattened), METHODS.md §2.1.
inline Vec importance_from_attention(const std::vector<float>& a, size_t B, size_t H, size_t L, bool causal) {
  Vec s(B * L, 0.0);
  for (size_t b = 0; b < B; ++b) {
    for (size_t h = 0; h < H; ++h)
      for (size_t q = 0; q < L; ++q)
        for (size_t t = 0; t < L; ++t) s[b * L + t] += a[((b * H + h) * L + q) * L + t] / H;
    if (causal) {
      double mean = 0;
      for (size_t t = 0; t < L; ++t) mean += (s[b * L + t] /= double(L - t));
      mean /= L;
      for (size_t t = 0; t < L; ++t) s[b * L + t] /= mean;
    }
  }
  return s;
}

// Exact-budget allocation by bisection on λ (independent of the kernel's breakpoint sweep).
inline std::vector<int> allocate(const Vec& s, size_t B, size_t L, double k_avg, int k_min, int k_max, Budget budget) {
  std::vector<int> k(B * L);
  for (size_t b = 0; b < B; ++b) {
    if (budget == Budget::round) {
      for (size_t t = 0; t < L; ++t)
        k[b * L + t] = static_cast<int>(std::clamp(std::nearbyint(k_avg * s[b * L + t]), double(k_min), double(k_max)));
      continue;
    }
    const double total = std::nearbyint(k_avg * L);
    if (total <= double(k_min) * L || total >= double(k_max) * L) {
      for (size_t t = 0; t < L; ++t) k[b * L + t] = total <= double(k_min) * L ? k_min : k_max;
      continue;
    }
    auto sum_at = [&](double lam) {
      double acc = 0;
      for (size_t t = 0; t < L; ++t) acc += std::clamp(lam * s[b * L + t], double(k_min), double(k_max));
      return acc;
    };
    double lo = 0, hi = 1;
    while (sum_at(hi) < total) hi *= 2;
    for (int it = 0; it < 200; ++it) {
      const double mid = 0.5 * (lo + hi);
      (sum_at(mid) < total ? lo : hi) = mid;
    }
    Vec kappa(L);
    int assigned = 0;
    for (size_t t = 0; t < L; ++t) {
      kappa[t] = std::clamp(hi * s[b * L + t], double(k_min), double(k_max));
      k[b * L + t] = static_cast<int>(std::floor(kappa[t] + 1e-9));
      assigned += k[b * L + t];
    }
    std::vector<size_t> order(L);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](size_t x, size_t y) {
      return kappa[x] - std::floor(kappa[x] + 1e-9) > kappa[y] - std::floor(kappa[y] + 1e-9) + 1e-12;
    });
    for (size_t j = 0; j < L && assigned < total; ++j)
      if (k[b * L + order[j]] < k_max) {
        ++k[b * L + order[j]];
        ++assigned;
      }
  }
  return k;
}

struct StageOut {
  Mat m;
  double aux = 0;
  long dropped = 0;
};

inline StageOut stage(const ModelConfig& model, int s, const Params& p, const Mat& u, const std::vector<int>& K) {
  const StageConfig& c = model.layer.stages[s];
  const size_t T = u.size(), d = model.hidden_size, E = c.experts;
  const std::string sp = "stages." + std::to_string(s) + ".";
  // Router, selection, gates.
  Mat prob(T);
  Vec lse(T);
  std::vector<std::vector<int>> sel(T);
  Mat gate(T);
  for (size_t t = 0; t < T; ++t) {
    Vec z = matvec(p.at(sp + "router.weight"), u[t], E);
    prob[t] = softmax(z);
    lse[t] = logsumexp(z);
    std::vector<int> idx(E);
    std::iota(idx.begin(), idx.end(), 0);
    std::stable_sort(idx.begin(), idx.end(), [&](int a, int b) { return prob[t][a] > prob[t][b]; });
    sel[t].assign(idx.begin(), idx.begin() + K[t]);
    double denom = 0;
    for (int i : sel[t]) denom += prob[t][i];
    denom = c.routing.normalize ? std::max(denom, double(FLT_EPSILON)) : 1.0;
    for (int i : sel[t]) gate[t].push_back(prob[t][i] / denom);
  }
  // Aux losses on the pre-drop selection.
  double aux = 0;
  size_t n_assign = 0;
  for (auto& s_t : sel) n_assign += s_t.size();
  if (c.aux_loss.load_balance > 0) {
    Vec f(E, 0), P(E, 0);
    for (auto& s_t : sel)
      for (int i : s_t) f[i] += 1.0 / n_assign;
    for (size_t t = 0; t < T; ++t)
      for (size_t i = 0; i < E; ++i) P[i] += prob[t][i] / T;
    double lb = 0;
    for (size_t i = 0; i < E; ++i) lb += f[i] * P[i];
    aux += c.aux_loss.load_balance * E * lb;
  }
  if (c.aux_loss.z_loss > 0) {
    double zl = 0;
    for (double v : lse) zl += v * v;
    aux += c.aux_loss.z_loss * zl / T;
  }
  // Capacity.
  std::vector<std::vector<char>> kept(T);
  for (size_t t = 0; t < T; ++t) kept[t].assign(sel[t].size(), 1);
  long dropped = 0;
  if (c.capacity_factor > 0) {
    const long cap = static_cast<long>(std::ceil(c.capacity_factor * n_assign / double(E)));
    for (size_t i = 0; i < E; ++i) {
      std::vector<std::pair<size_t, size_t>> a;  // (t, j)
      for (size_t t = 0; t < T; ++t)
        for (size_t j = 0; j < sel[t].size(); ++j)
          if (sel[t][j] == int(i)) a.push_back({t, j});
      std::stable_sort(a.begin(), a.end(), [&](auto x, auto y) { return gate[x.first][x.second] > gate[y.first][y.second]; });
      for (size_t r = cap; r < a.size(); ++r) {
        kept[a[r].first][a[r].second] = 0;
        ++dropped;
      }
    }
  }
  // Experts and aggregation.
  Mat m(T, Vec(d, 0.0));
  for (size_t t = 0; t < T; ++t) {
    std::vector<Vec> outs;
    Vec g;
    for (size_t j = 0; j < sel[t].size(); ++j) {
      if (!kept[t][j]) continue;
      outs.push_back(ffn(p, sp + "experts." + std::to_string(sel[t][j]) + ".", u[t], c.ffn_hidden_size, c.activation));
      g.push_back(gate[t][j]);
    }
    const size_t Kt = outs.size();
    if (c.aggregation.kind == AggregationKind::weighted_sum) {
      for (size_t j = 0; j < Kt; ++j)
        for (size_t q = 0; q < d; ++q) m[t][q] += g[j] * outs[j][q];
    } else if (Kt > 0) {
      const size_t dg = c.aggregation.dim;
      std::vector<Vec> h(Kt, Vec(d));
      for (size_t j = 0; j < Kt; ++j)
        for (size_t q = 0; q < d; ++q) h[j][q] = g[j] * outs[j][q] + u[t][q] / Kt;
      for (int l = 0; l < c.aggregation.levels; ++l) {
        const std::string dp = sp + "dag." + std::to_string(l) + ".";
        std::vector<Vec> a(Kt);
        for (size_t j = 0; j < Kt; ++j)
          a[j] = matvec(p.at(dp + "down.weight"), layernorm(h[j], p.at(dp + "norm.weight"), p.at(dp + "norm.bias")), dg);
        std::vector<Vec> nh = h;
        for (size_t j = 0; j < Kt; ++j) {
          Vec sum(dg, 0.0);
          const size_t m_end = c.aggregation.edges == DagEdges::causal ? j + 1 : Kt;
          for (size_t mm = 0; mm < m_end; ++mm) {
            Vec cat(a[j]);
            cat.insert(cat.end(), a[mm].begin(), a[mm].end());
            Vec e = matvec(p.at(dp + "edge.weight"), cat, dg), nd = matvec(p.at(dp + "node.weight"), cat, dg);
            for (size_t q = 0; q < dg; ++q) sum[q] += sigmoid(e[q]) * nd[q];
          }
          Vec upd = matvec(p.at(dp + "up.weight"), sum, d);
          for (size_t q = 0; q < d; ++q) nh[j][q] += upd[q];
        }
        h = nh;
      }
      for (size_t j = 0; j < Kt; ++j)
        for (size_t q = 0; q < d; ++q) m[t][q] += h[j][q];
    }
    if (c.shared_expert.enabled) {
      Vec sh = ffn(p, sp + "shared.", u[t], c.shared_expert.ffn_hidden_size, Activation::swiglu);
      if (c.shared_expert.mix == SharedMix::add) {
        for (size_t q = 0; q < d; ++q) m[t][q] += sh[q];
      } else {
        Vec z = matvec(p.at(sp + "shared_coef.weight"), u[t], 2);
        z[0] += p.at(sp + "shared_coef.bias")[0];
        z[1] += p.at(sp + "shared_coef.bias")[1];
        Vec cf = softmax(z);
        for (size_t q = 0; q < d; ++q) m[t][q] = cf[0] * m[t][q] + cf[1] * sh[q];
      }
    }
  }
  return {m, aux, dropped};
}

struct LayerOut {
  Mat y;
  double aux = 0;
};

// K per stage: the caller supplies each stage's K_t (from the reference allocation or all k).
inline LayerOut layer(const ModelConfig& model, const Params& p, const Mat& x, const std::vector<std::vector<int>>& K) {
  const size_t T = x.size(), d = model.hidden_size;
  LayerOut out;
  out.y.assign(T, Vec(d, 0.0));
  Mat r = x;
  for (size_t s = 0; s < model.layer.stages.size(); ++s) {
    Mat u = r;
    if (s == 0 && model.layer.input_norm == InputNorm::rmsnorm)
      for (size_t t = 0; t < T; ++t) u[t] = rmsnorm(r[t], p.at("input_norm.weight"));
    if (s >= 1)
      for (size_t t = 0; t < T; ++t) u[t] = rmsnorm(r[t], p.at("stages." + std::to_string(s) + ".norm.weight"));
    StageOut so = stage(model, static_cast<int>(s), p, u, K[s]);
    out.aux += so.aux;
    for (size_t t = 0; t < T; ++t)
      for (size_t q = 0; q < d; ++q) {
        out.y[t][q] += so.m[t][q];
        r[t][q] += so.m[t][q];
      }
  }
  return out;
}

}  // namespace sy::ref
