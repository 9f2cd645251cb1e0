// Router: softmax, expert selection, gates, capacity, auxiliary losses; DA-MoE allocation.
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <numeric>
#include <string>

#include "switchyard/core/error.h"
#include "switchyard/kernels/cpu_ops.h"
#include "parallel.h"

namespace sy::cpu {

void softmax_forward(const float* z, int64_t n, int64_t e, float* p, float* lse) {
#pragma omp parallel for schedule(static) if(worth_threads(n * e))
  for (int64_t t = 0; t < n; ++t) {
    const float* zr = z + t * e;
    float* pr = p + t * e;
    float mx = zr[0];
    for (int64_t i = 1; i < e; ++i) mx = std::max(mx, zr[i]);
    float sum = 0.0f;
    for (int64_t i = 0; i < e; ++i) {
      pr[i] = std::exp(zr[i] - mx);
      sum += pr[i];
    }
    const float inv = 1.0f / sum;
    for (int64_t i = 0; i < e; ++i) pr[i] *= inv;
    if (lse) lse[t] = mx + std::log(sum);
  }
}

void softmax_backward(const float* dp, const float* p, int64_t n, int64_t e, float* dz) {
#pragma omp parallel for schedule(static) if(worth_threads(n * e))
  for (int64_t t = 0; t < n; ++t) {
    const float* pr = p + t * e;
    const float* dpr = dp + t * e;
    float dot = 0.0f;
    for (int64_t i = 0; i < e; ++i) dot += pr[i] * dpr[i];
    float* dzr = dz + t * e;
    for (int64_t i = 0; i < e; ++i) dzr[i] += pr[i] * (dpr[i] - dot);
  }
}

void drop_top_experts(int n, Selection& sel) {
  for (int64_t t = 0; t < sel.tokens; ++t) {  // select_experts lists each token's experts best first
    const int64_t begin = sel.offsets[static_cast<size_t>(t)], end = sel.offsets[static_cast<size_t>(t + 1)];
    for (int64_t j = begin; j < std::min(end, begin + n); ++j) sel.kept[static_cast<size_t>(j)] = 0;
  }
}

Selection select_experts(const float* p, int64_t n, int64_t e, std::span<const int32_t> k_per_token) {
  SY_CHECK(static_cast<int64_t>(k_per_token.size()) == n, "one expert count per token");
  Selection sel;
  sel.tokens = n;
  sel.experts = e;
  sel.offsets.resize(static_cast<size_t>(n + 1));
  sel.offsets[0] = 0;
  for (int64_t t = 0; t < n; ++t) {
    const int32_t k = k_per_token[static_cast<size_t>(t)];
    if (k < 0 || k > e) throw_input_error("token " + std::to_string(t) + " asks for " + std::to_string(k) +
                                          " experts of " + std::to_string(e));
    sel.offsets[static_cast<size_t>(t + 1)] = sel.offsets[static_cast<size_t>(t)] + k;
  }
  const int64_t slots = sel.offsets[static_cast<size_t>(n)];
  sel.expert.resize(static_cast<size_t>(slots));
  sel.gate.resize(static_cast<size_t>(slots));
  sel.kept.assign(static_cast<size_t>(slots), 1);
  sel.denom.assign(static_cast<size_t>(n), 1.0f);
#pragma omp parallel if(worth_threads(n * e))
  {
    std::vector<int32_t> idx(static_cast<size_t>(e));
#pragma omp for schedule(static)
    for (int64_t t = 0; t < n; ++t) {
      const float* pr = p + t * e;
      const int64_t k = sel.offsets[static_cast<size_t>(t + 1)] - sel.offsets[static_cast<size_t>(t)];
      std::iota(idx.begin(), idx.end(), 0);
      auto before = [pr](int32_t a, int32_t b) { return pr[a] > pr[b] || (pr[a] == pr[b] && a < b); };
      std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), before);
      std::copy(idx.begin(), idx.begin() + k, sel.expert.begin() + sel.offsets[static_cast<size_t>(t)]);
    }
  }
  return sel;
}

void compute_gates(const float* p, bool normalize, Selection& sel) {
  const int64_t e = sel.experts;
#pragma omp parallel for schedule(static) if(worth_threads(sel.tokens * e))
  for (int64_t t = 0; t < sel.tokens; ++t) {
    const float* pr = p + t * e;
    const int64_t b = sel.offsets[static_cast<size_t>(t)], end = sel.offsets[static_cast<size_t>(t + 1)];
    float denom = 1.0f;
    if (normalize) {
      float s = 0.0f;
      for (int64_t j = b; j < end; ++j) s += pr[sel.expert[static_cast<size_t>(j)]];
      denom = std::max(s, FLT_EPSILON);
    }
    sel.denom[static_cast<size_t>(t)] = denom;
    for (int64_t j = b; j < end; ++j) sel.gate[static_cast<size_t>(j)] = pr[sel.expert[static_cast<size_t>(j)]] / denom;
  }
}

void apply_capacity(double capacity_factor, Selection& sel) {
  sel.dropped = 0;
  if (capacity_factor <= 0.0) return;
  const int64_t slots = sel.slots();
  const int64_t cap = static_cast<int64_t>(std::ceil(capacity_factor * static_cast<double>(slots) /
                                                     static_cast<double>(sel.experts)));
  // Bucket slots by expert, in token order (slots are stored token-major).
  std::vector<std::vector<int64_t>> by_expert(static_cast<size_t>(sel.experts));
  for (int64_t s = 0; s < slots; ++s) by_expert[static_cast<size_t>(sel.expert[static_cast<size_t>(s)])].push_back(s);
  for (auto& list : by_expert) {
    if (static_cast<int64_t>(list.size()) <= cap) continue;
    // Highest gate first; ties: lower token index, which is the lower slot index.
    std::stable_sort(list.begin(), list.end(), [&](int64_t a, int64_t b) {
      return sel.gate[static_cast<size_t>(a)] > sel.gate[static_cast<size_t>(b)];
    });
    for (size_t j = static_cast<size_t>(cap); j < list.size(); ++j) {
      sel.kept[static_cast<size_t>(list[j])] = 0;
      ++sel.dropped;
    }
  }
}

void gates_backward(const float* p, const Selection& sel, bool normalize, const float* dgate, float* dp) {
  const int64_t e = sel.experts;
#pragma omp parallel for schedule(static) if(worth_threads(sel.tokens * e))
  for (int64_t t = 0; t < sel.tokens; ++t) {
    const float* pr = p + t * e;
    float* dpr = dp + t * e;
    const int64_t b = sel.offsets[static_cast<size_t>(t)], end = sel.offsets[static_cast<size_t>(t + 1)];
    if (!normalize) {
      for (int64_t j = b; j < end; ++j)
        if (sel.kept[static_cast<size_t>(j)]) dpr[sel.expert[static_cast<size_t>(j)]] += dgate[j];
      continue;
    }
    const float denom = sel.denom[static_cast<size_t>(t)];
    // g_i = p_i / s for kept i; s = Σ_{S_t} p (all selected, kept or dropped), unless clamped.
    float cross = 0.0f;  // Σ_kept dg_j p_j
    for (int64_t j = b; j < end; ++j) {
      if (!sel.kept[static_cast<size_t>(j)]) continue;
      const int32_t i = sel.expert[static_cast<size_t>(j)];
      dpr[i] += dgate[j] / denom;
      cross += dgate[j] * pr[i];
    }
    const bool clamped = denom <= FLT_EPSILON;
    if (clamped) continue;
    const float ds = -cross / (denom * denom);
    for (int64_t j = b; j < end; ++j) dpr[sel.expert[static_cast<size_t>(j)]] += ds;
  }
}

double load_balance_loss(const float* p, const Selection& sel, double alpha, float* dp) {
  if (alpha == 0.0 || sel.tokens == 0) return 0.0;
  std::vector<double> scratch(static_cast<size_t>(2 * sel.experts));
  return load_balance_loss(p, sel, alpha, dp, scratch.data());
}

double load_balance_loss(const float* p, const Selection& sel, double alpha, float* dp, double* scratch) {
  if (alpha == 0.0 || sel.tokens == 0) return 0.0;
  const int64_t e = sel.experts, n = sel.tokens;
  std::span<double> f(scratch, static_cast<size_t>(e)), mean_p(scratch + e, static_cast<size_t>(e));
  std::fill(f.begin(), f.end(), 0.0);
  std::fill(mean_p.begin(), mean_p.end(), 0.0);
  for (int32_t i : sel.expert) f[static_cast<size_t>(i)] += 1.0;
  const double n_assign = static_cast<double>(sel.slots());
  if (n_assign > 0)
    for (auto& v : f) v /= n_assign;
  for (int64_t t = 0; t < n; ++t)
    for (int64_t i = 0; i < e; ++i) mean_p[static_cast<size_t>(i)] += p[t * e + i];
  double loss = 0.0;
  for (int64_t i = 0; i < e; ++i) loss += f[static_cast<size_t>(i)] * mean_p[static_cast<size_t>(i)] / n;
  loss *= alpha * static_cast<double>(e);
  if (dp) {
    for (int64_t t = 0; t < n; ++t)
      for (int64_t i = 0; i < e; ++i)
        dp[t * e + i] += static_cast<float>(alpha * static_cast<double>(e) * f[static_cast<size_t>(i)] / n);
  }
  return loss;
}

double z_loss(const float* p, const float* lse, int64_t n, int64_t e, double beta, float* dz) {
  if (beta == 0.0 || n == 0) return 0.0;
  double loss = 0.0;
  for (int64_t t = 0; t < n; ++t) loss += static_cast<double>(lse[t]) * lse[t];
  loss *= beta / static_cast<double>(n);
  if (dz) {
    for (int64_t t = 0; t < n; ++t) {
      const float c = static_cast<float>(beta * 2.0 * lse[t] / static_cast<double>(n));
      for (int64_t i = 0; i < e; ++i) dz[t * e + i] += c * p[t * e + i];
    }
  }
  return loss;
}

std::vector<float> importance_from_attention(const float* attention, int64_t b, int64_t h, int64_t l,
                                             bool causal_correction) {
  std::vector<double> acc(static_cast<size_t>(b * l));
  std::vector<float> s(static_cast<size_t>(b * l));
  importance_from_attention(attention, b, h, l, causal_correction, s.data(), acc.data());
  return s;
}

void importance_from_attention(const float* attention, int64_t b, int64_t h, int64_t l, bool causal_correction,
                               float* s, double* scratch) {
  double* acc = scratch;
  std::fill(acc, acc + b * l, 0.0);
  for (int64_t bi = 0; bi < b; ++bi) {
    for (int64_t hi = 0; hi < h; ++hi) {
      for (int64_t q = 0; q < l; ++q) {
        const float* row = attention + ((bi * h + hi) * l + q) * l;
        double sum = 0.0;
        for (int64_t t = 0; t < l; ++t) {
          if (!std::isfinite(row[t]) || row[t] < 0.0f)
            throw_input_error("attention[" + std::to_string(bi) + "," + std::to_string(hi) + "," +
                              std::to_string(q) + "," + std::to_string(t) + "] is not a probability");
          sum += row[t];
          acc[bi * l + t] += row[t];
        }
        if (std::fabs(sum - 1.0) > 1e-3)
          throw_input_error("attention row [" + std::to_string(bi) + "," + std::to_string(hi) + "," +
                            std::to_string(q) + ",:] sums to " + std::to_string(sum) + ", not 1 (tolerance 1e-3)");
      }
    }
  }
  for (int64_t bi = 0; bi < b; ++bi) {
    double mean = 0.0;
    for (int64_t t = 0; t < l; ++t) {
      double v = acc[bi * l + t] / static_cast<double>(h);
      if (causal_correction) v /= static_cast<double>(l - t);
      acc[bi * l + t] = v;
      mean += v;
    }
    mean /= static_cast<double>(l);
    for (int64_t t = 0; t < l; ++t) {
      const double v = acc[bi * l + t];
      s[bi * l + t] = static_cast<float>(causal_correction && mean > 0 ? v / mean : v);
    }
  }
}

namespace {

// Water-filling for one sequence: Σ_t clamp(λ s_t, lo, hi) = budget, solved exactly on the
// piecewise-linear, non-decreasing left side by sweeping its breakpoints.
double solve_water_level(std::span<const float> s, double lo, double hi, double budget) {
  struct Breakpoint {
    double lambda;
    double slope_change;  // Σ s gained (entering the free range) or lost (leaving it)
    double const_change;  // constant part change
  };
  std::vector<Breakpoint> bps;
  double constant = 0.0;  // value of Σ clamp at λ → 0⁺: lo for every token
  for (float sv : s) {
    constant += lo;
    if (sv <= 0.0f) continue;  // stays at lo for every λ
    bps.push_back({lo / sv, static_cast<double>(sv), -lo});
    bps.push_back({hi / sv, -static_cast<double>(sv), hi});
  }
  std::sort(bps.begin(), bps.end(), [](const Breakpoint& a, const Breakpoint& b) { return a.lambda < b.lambda; });
  double slope = 0.0;
  for (const Breakpoint& bp : bps) {
    const double value_at_bp = constant + slope * bp.lambda;
    if (value_at_bp >= budget && slope > 0.0) return (budget - constant) / slope;
    slope += bp.slope_change;
    constant += bp.const_change;
  }
  return slope > 0.0 ? (budget - constant) / slope : (bps.empty() ? 0.0 : bps.back().lambda);
}

}  // namespace

std::vector<int32_t> allocate_experts(std::span<const float> importance, int64_t sequences, int64_t length,
                                      const AllocationParams& params) {
  SY_CHECK(static_cast<int64_t>(importance.size()) == sequences * length, "importance has one value per token");
  SY_CHECK(params.k_min >= 1 && params.k_min <= params.k_max, "1 <= k_min <= k_max");
  for (size_t i = 0; i < importance.size(); ++i)
    if (!std::isfinite(importance[i]) || importance[i] < 0.0f)
      throw_input_error("importance[" + std::to_string(i) + "] = " + std::to_string(importance[i]) +
                        " is not a finite non-negative number");
  std::vector<int32_t> k(importance.size());
  const double lo = params.k_min, hi = params.k_max;
  for (int64_t b = 0; b < sequences; ++b) {
    std::span<const float> s = importance.subspan(static_cast<size_t>(b * length), static_cast<size_t>(length));
    int32_t* kb = k.data() + b * length;
    if (params.budget == Budget::round) {
      for (int64_t t = 0; t < length; ++t) {
        const double v = std::nearbyint(params.k_avg * static_cast<double>(s[static_cast<size_t>(t)]));
        kb[t] = static_cast<int32_t>(std::clamp(v, lo, hi));
      }
      continue;
    }
    const double budget = std::nearbyint(params.k_avg * static_cast<double>(length));  // round half even
    if (budget <= lo * static_cast<double>(length)) {
      std::fill(kb, kb + length, params.k_min);
      continue;
    }
    if (budget >= hi * static_cast<double>(length)) {
      std::fill(kb, kb + length, params.k_max);
      continue;
    }
    const double lambda = solve_water_level(s, lo, hi, budget);
    std::vector<double> kappa(static_cast<size_t>(length));
    int64_t assigned = 0;
    for (int64_t t = 0; t < length; ++t) {
      kappa[static_cast<size_t>(t)] = std::clamp(lambda * s[static_cast<size_t>(t)], lo, hi);
      kb[t] = static_cast<int32_t>(std::floor(kappa[static_cast<size_t>(t)]));
      assigned += kb[t];
    }
    int64_t remaining = static_cast<int64_t>(budget) - assigned;
    // Largest fractional part first, ties: lower t; never above k_max.
    std::vector<int64_t> order(static_cast<size_t>(length));
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t c) {
      const double fa = kappa[static_cast<size_t>(a)] - std::floor(kappa[static_cast<size_t>(a)]);
      const double fc = kappa[static_cast<size_t>(c)] - std::floor(kappa[static_cast<size_t>(c)]);
      return fa > fc;
    });
    for (int64_t j = 0; j < length && remaining > 0; ++j) {
      const int64_t t = order[static_cast<size_t>(j)];
      if (kb[t] < params.k_max) {
        ++kb[t];
        --remaining;
      }
    }
    if (remaining != 0)
      throw_runtime_error("expert allocation could not place " + std::to_string(remaining) + " slots of sequence " +
                          std::to_string(b));
  }
  return k;
}

}  // namespace sy::cpu
