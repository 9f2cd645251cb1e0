// Aggregation of expert outputs: weighted sum, DAG-MoE structural aggregation, and the
// coefficient mix of a shared expert.
#include <cmath>
#include <cstring>

#include "switchyard/core/error.h"
#include "switchyard/kernels/cpu_ops.h"

namespace sy::cpu {
namespace {

inline float sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }

// [dg, 2dg] edge and node matrices → one [4dg, dg] matrix: edge_left, edge_right, node_left, node_right.
void pack_pair_weights(const DagLevelWeights& w, int64_t dg, std::vector<float>& w4) {
  w4.resize(static_cast<size_t>(4 * dg * dg));
  for (int64_t r = 0; r < dg; ++r) {
    for (int64_t c = 0; c < dg; ++c) {
      w4[static_cast<size_t>((0 * dg + r) * dg + c)] = w.edge[r * 2 * dg + c];
      w4[static_cast<size_t>((1 * dg + r) * dg + c)] = w.edge[r * 2 * dg + dg + c];
      w4[static_cast<size_t>((2 * dg + r) * dg + c)] = w.node[r * 2 * dg + c];
      w4[static_cast<size_t>((3 * dg + r) * dg + c)] = w.node[r * 2 * dg + dg + c];
    }
  }
}

}  // namespace

void weighted_sum_forward(const NodeList& nodes, const float* expert_out, int64_t d, float* m) {
  const int64_t n = nodes.tokens();
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < n; ++t) {
    float* mt = m + t * d;
    std::memset(mt, 0, sizeof(float) * static_cast<size_t>(d));
    for (int64_t j = nodes.offsets[static_cast<size_t>(t)]; j < nodes.offsets[static_cast<size_t>(t + 1)]; ++j) {
      const float g = nodes.gate[static_cast<size_t>(j)];
      const float* o = expert_out + nodes.row[static_cast<size_t>(j)] * d;
      for (int64_t c = 0; c < d; ++c) mt[c] += g * o[c];
    }
  }
}

void weighted_sum_backward(const NodeList& nodes, const float* expert_out, int64_t d, const float* dm,
                           float* d_expert_out, float* dgate) {
  const int64_t n = nodes.tokens();
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < n; ++t) {
    const float* dmt = dm + t * d;
    for (int64_t j = nodes.offsets[static_cast<size_t>(t)]; j < nodes.offsets[static_cast<size_t>(t + 1)]; ++j) {
      const float g = nodes.gate[static_cast<size_t>(j)];
      const int64_t row = nodes.row[static_cast<size_t>(j)];
      const float* o = expert_out + row * d;
      float* dout = d_expert_out + row * d;
      float dot = 0.0f;
      for (int64_t c = 0; c < d; ++c) {
        dout[c] += g * dmt[c];
        dot += dmt[c] * o[c];
      }
      dgate[nodes.slot[static_cast<size_t>(j)]] += dot;
    }
  }
}

void dag_forward(const NodeList& nodes, const float* expert_out, const float* u, int64_t d, int64_t dg,
                 DagEdges edges, std::span<const DagLevelWeights> levels, float* m, DagCache* cache) {
  const int64_t T = nodes.tokens(), N = nodes.nodes();
  const size_t L = levels.size();
  DagCache local;
  DagCache& c = cache ? *cache : local;
  // resize, not assign: the buffers of the previous step are reused.
  c.h.resize(L + 1);
  c.ln_mean.resize(L);
  c.ln_rstd.resize(L);
  c.ln_out.resize(L);
  c.a.resize(L);
  c.pq.resize(L);
  c.agg.resize(L);
  c.w4.resize(L);

  // h⁰_j = g_j o_j + u_t / K_t
  c.h[0].resize(static_cast<size_t>(N * d));
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < T; ++t) {
    const int64_t b = nodes.offsets[static_cast<size_t>(t)], e = nodes.offsets[static_cast<size_t>(t + 1)];
    const float inv_k = e > b ? 1.0f / static_cast<float>(e - b) : 0.0f;
    for (int64_t j = b; j < e; ++j) {
      const float g = nodes.gate[static_cast<size_t>(j)];
      const float* o = expert_out + nodes.row[static_cast<size_t>(j)] * d;
      float* h = c.h[0].data() + j * d;
      for (int64_t k = 0; k < d; ++k) h[k] = g * o[k] + u[t * d + k] * inv_k;
    }
  }

  for (size_t l = 0; l < L; ++l) {
    const DagLevelWeights& w = levels[l];
    const float* h_in = c.h[l].data();
    c.ln_mean[l].resize(static_cast<size_t>(N));
    c.ln_rstd[l].resize(static_cast<size_t>(N));
    c.ln_out[l].resize(static_cast<size_t>(N * d));
    layernorm_forward(h_in, N, d, w.norm_weight, w.norm_bias, c.ln_out[l].data(), c.ln_mean[l].data(),
                      c.ln_rstd[l].data());
    c.a[l].resize(static_cast<size_t>(N * dg));
    linear_forward(c.ln_out[l].data(), N, d, w.down, dg, c.a[l].data());
    pack_pair_weights(w, dg, c.w4[l]);
    c.pq[l].resize(static_cast<size_t>(N * 4 * dg));
    linear_forward(c.a[l].data(), N, dg, c.w4[l].data(), 4 * dg, c.pq[l].data());
    c.agg[l].resize(static_cast<size_t>(N * dg));
    const float* pq = c.pq[l].data();
    float* agg = c.agg[l].data();
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < T; ++t) {
      const int64_t b = nodes.offsets[static_cast<size_t>(t)], e = nodes.offsets[static_cast<size_t>(t + 1)];
      // Pairs stay inside a token: zero its rows here, while they are in cache.
      std::memset(agg + b * dg, 0, sizeof(float) * static_cast<size_t>((e - b) * dg));
      for (int64_t j = b; j < e; ++j) {
        const float* pj = pq + j * 4 * dg;
        float* aj = agg + j * dg;
        const int64_t m_end = edges == DagEdges::causal ? j + 1 : e;
        for (int64_t mm = b; mm < m_end; ++mm) {
          const float* qm = pq + mm * 4 * dg;
          for (int64_t k = 0; k < dg; ++k)
            aj[k] += sigmoid(pj[k] + qm[dg + k]) * (pj[2 * dg + k] + qm[3 * dg + k]);
        }
      }
    }
    if (l + 1 < L) {
      c.h[l + 1] = c.h[l];
      linear_forward(agg, N, dg, w.up, d, c.h[l + 1].data(), /*accumulate=*/true);
    } else {
      // Last level: only Σ_j h^L_j is needed, and Σ_j (h^{L-1}_j + agg_j W_upᵀ) =
      // Σ_j h^{L-1}_j + (Σ_j agg_j) W_upᵀ — one GEMM over tokens instead of nodes.
      c.agg_sum.resize(static_cast<size_t>(T * dg));
#pragma omp parallel for schedule(static)
      for (int64_t t = 0; t < T; ++t) {
        float* sum = c.agg_sum.data() + t * dg;
        std::memset(sum, 0, sizeof(float) * static_cast<size_t>(dg));
        for (int64_t j = nodes.offsets[static_cast<size_t>(t)]; j < nodes.offsets[static_cast<size_t>(t + 1)]; ++j)
          for (int64_t k = 0; k < dg; ++k) sum[k] += agg[j * dg + k];
      }
    }
  }

  const float* h_last = c.h[L == 0 ? 0 : L - 1].data();  // h^L itself is never formed (above)
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < T; ++t) {
    float* mt = m + t * d;
    std::memset(mt, 0, sizeof(float) * static_cast<size_t>(d));
    for (int64_t j = nodes.offsets[static_cast<size_t>(t)]; j < nodes.offsets[static_cast<size_t>(t + 1)]; ++j)
      for (int64_t k = 0; k < d; ++k) mt[k] += h_last[j * d + k];
  }
  if (L > 0) linear_forward(c.agg_sum.data(), T, dg, levels[L - 1].up, d, m, /*accumulate=*/true);
}

void dag_backward(const NodeList& nodes, const float* expert_out, const float* u, int64_t d, int64_t dg,
                  DagEdges edges, std::span<const DagLevelWeights> levels, const DagCache& cache, const float* dm,
                  float* d_expert_out, float* dgate, float* du, std::span<const DagLevelGrads> grads) {
  const int64_t T = nodes.tokens(), N = nodes.nodes();
  const size_t L = levels.size();
  SY_REQUIRE(grads.size() == L && cache.h.size() == L + 1 && cache.w4.size() == L,
             "DAG backward needs the forward cache of every level");
  DagCache::Scratch& sc = cache.scratch;  // buffers reused from step to step
  // dh^L_j = dm_t
  std::vector<float>& dh = sc.dh;
  dh.resize(static_cast<size_t>(N * d));
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < T; ++t)
    for (int64_t j = nodes.offsets[static_cast<size_t>(t)]; j < nodes.offsets[static_cast<size_t>(t + 1)]; ++j)
      std::memcpy(dh.data() + j * d, dm + t * d, sizeof(float) * static_cast<size_t>(d));

  std::vector<float>&dagg = sc.dagg, &dpq = sc.dpq, &da = sc.da, &dln = sc.dln;
  for (size_t li = L; li-- > 0;) {
    const DagLevelWeights& w = levels[li];
    const DagLevelGrads& gw = grads[li];
    // h^{l+1} = h^l + agg W_upᵀ; the last level went through per-token sums (see forward).
    dagg.resize(static_cast<size_t>(N * dg));
    if (li + 1 < L) {
      linear_backward_input(dh.data(), N, d, w.up, dg, dagg.data(), /*accumulate=*/false);
      linear_backward_weight(dh.data(), N, d, cache.agg[li].data(), dg, gw.up);
    } else {
      std::vector<float>& dagg_token = sc.dagg_token;
      dagg_token.resize(static_cast<size_t>(T * dg));
      linear_backward_input(dm, T, d, w.up, dg, dagg_token.data(), /*accumulate=*/false);
      linear_backward_weight(dm, T, d, cache.agg_sum.data(), dg, gw.up);
#pragma omp parallel for schedule(static)
      for (int64_t t = 0; t < T; ++t)
        for (int64_t j = nodes.offsets[static_cast<size_t>(t)]; j < nodes.offsets[static_cast<size_t>(t + 1)]; ++j)
          std::memcpy(dagg.data() + j * dg, dagg_token.data() + t * dg, sizeof(float) * static_cast<size_t>(dg));
    }
    // pairwise gates
    const float* pq = cache.pq[li].data();
    dpq.resize(static_cast<size_t>(N * 4 * dg));
    float* dpqp = dpq.data();
    const float* dap = dagg.data();
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < T; ++t) {
      const int64_t b = nodes.offsets[static_cast<size_t>(t)], e = nodes.offsets[static_cast<size_t>(t + 1)];
      std::memset(dpqp + b * 4 * dg, 0, sizeof(float) * static_cast<size_t>((e - b) * 4 * dg));  // this token's rows
      for (int64_t j = b; j < e; ++j) {
        const float* pj = pq + j * 4 * dg;
        const float* gj = dap + j * dg;
        float* dpj = dpqp + j * 4 * dg;
        const int64_t m_end = edges == DagEdges::causal ? j + 1 : e;
        for (int64_t mm = b; mm < m_end; ++mm) {
          const float* qm = pq + mm * 4 * dg;
          float* dqm = dpqp + mm * 4 * dg;
          for (int64_t k = 0; k < dg; ++k) {
            const float s = sigmoid(pj[k] + qm[dg + k]);
            const float node = pj[2 * dg + k] + qm[3 * dg + k];
            const float d_node = gj[k] * s;
            const float d_edge = gj[k] * node * s * (1.0f - s);
            dpj[k] += d_edge;
            dqm[dg + k] += d_edge;
            dpj[2 * dg + k] += d_node;
            dqm[3 * dg + k] += d_node;
          }
        }
      }
    }
    da.resize(static_cast<size_t>(N * dg));  // packed by forward, same weights
    linear_backward_input(dpq.data(), N, 4 * dg, cache.w4[li].data(), dg, da.data(), /*accumulate=*/false);
    std::vector<float>& dw4 = sc.dw4;
    dw4.assign(static_cast<size_t>(4 * dg * dg), 0.0f);
    linear_backward_weight(dpq.data(), N, 4 * dg, cache.a[li].data(), dg, dw4.data());
    for (int64_t r = 0; r < dg; ++r) {
      for (int64_t c = 0; c < dg; ++c) {
        gw.edge[r * 2 * dg + c] += dw4[static_cast<size_t>((0 * dg + r) * dg + c)];
        gw.edge[r * 2 * dg + dg + c] += dw4[static_cast<size_t>((1 * dg + r) * dg + c)];
        gw.node[r * 2 * dg + c] += dw4[static_cast<size_t>((2 * dg + r) * dg + c)];
        gw.node[r * 2 * dg + dg + c] += dw4[static_cast<size_t>((3 * dg + r) * dg + c)];
      }
    }
    linear_backward_weight(da.data(), N, dg, cache.ln_out[li].data(), d, gw.down);
    dln.resize(static_cast<size_t>(N * d));
    linear_backward_input(da.data(), N, dg, w.down, d, dln.data(), /*accumulate=*/false);
    // dh^l = dh^{l+1} (residual) + LN backward
    layernorm_backward(dln.data(), cache.h[li].data(), N, d, w.norm_weight, cache.ln_mean[li].data(),
                       cache.ln_rstd[li].data(), dh.data(), gw.norm_weight, gw.norm_bias);
  }

  // h⁰_j = g_j o_j + u_t / K_t
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < T; ++t) {
    const int64_t b = nodes.offsets[static_cast<size_t>(t)], e = nodes.offsets[static_cast<size_t>(t + 1)];
    if (e == b) continue;
    const float inv_k = 1.0f / static_cast<float>(e - b);
    for (int64_t j = b; j < e; ++j) {
      const float g = nodes.gate[static_cast<size_t>(j)];
      const int64_t row = nodes.row[static_cast<size_t>(j)];
      const float* o = expert_out + row * d;
      float* dout = d_expert_out + row * d;
      const float* dhj = dh.data() + j * d;
      float dot = 0.0f;
      for (int64_t k = 0; k < d; ++k) {
        dout[k] += g * dhj[k];
        dot += dhj[k] * o[k];
        du[t * d + k] += dhj[k] * inv_k;
      }
      dgate[nodes.slot[static_cast<size_t>(j)]] += dot;
    }
  }
}

void coefficient_mix_forward(const float* u, int64_t n, int64_t d, const float* wc, const float* bc,
                             const float* m, const float* s, float* m_out, float* coef) {
  std::vector<float> logits(static_cast<size_t>(n * 2));
  linear_forward(u, n, d, wc, 2, logits.data());
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < n; ++t) {
    const float z0 = logits[static_cast<size_t>(2 * t)] + bc[0], z1 = logits[static_cast<size_t>(2 * t + 1)] + bc[1];
    const float mx = std::max(z0, z1);
    const float e0 = std::exp(z0 - mx), e1 = std::exp(z1 - mx);
    const float c0 = e0 / (e0 + e1), c1 = e1 / (e0 + e1);
    coef[2 * t] = c0;
    coef[2 * t + 1] = c1;
    for (int64_t k = 0; k < d; ++k) m_out[t * d + k] = c0 * m[t * d + k] + c1 * s[t * d + k];
  }
}

void coefficient_mix_backward(const float* dm_out, const float* u, int64_t n, int64_t d, const float* wc,
                              const float* m, const float* s, const float* coef, float* dm, float* ds, float* du,
                              float* dwc, float* dbc) {
  std::vector<float> dlogit(static_cast<size_t>(n * 2));
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < n; ++t) {
    const float c0 = coef[2 * t], c1 = coef[2 * t + 1];
    float dc0 = 0.0f, dc1 = 0.0f;
    for (int64_t k = 0; k < d; ++k) {
      const float g = dm_out[t * d + k];
      dc0 += g * m[t * d + k];
      dc1 += g * s[t * d + k];
      dm[t * d + k] = c0 * g;
      ds[t * d + k] = c1 * g;
    }
    const float dot = c0 * dc0 + c1 * dc1;
    dlogit[static_cast<size_t>(2 * t)] = c0 * (dc0 - dot);
    dlogit[static_cast<size_t>(2 * t + 1)] = c1 * (dc1 - dot);
  }
  for (int64_t t = 0; t < n; ++t) {
    dbc[0] += dlogit[static_cast<size_t>(2 * t)];
    dbc[1] += dlogit[static_cast<size_t>(2 * t + 1)];
  }
  linear_backward_weight(dlogit.data(), n, 2, u, d, dwc);
  linear_backward_input(dlogit.data(), n, 2, wc, d, du);
}

}  // namespace sy::cpu
