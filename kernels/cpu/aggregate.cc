// Aggregation of expert outputs: weighted sum, DAG-MoE structural aggregation, and the
// coefficient mix of a shared expert.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "dag_layout.h"
#include "switchyard/core/error.h"
#include "switchyard/kernels/cpu_ops.h"
#include "parallel.h"

namespace sy::cpu {
namespace {

inline float sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }

// [dg, 2dg] edge and node matrices → one [4dg, dg] matrix: edge_left, edge_right, node_left, node_right.
void pack_pair_weights(const DagLevelWeights& w, int64_t dg, float* w4) {
  for (int64_t r = 0; r < dg; ++r) {
    for (int64_t c = 0; c < dg; ++c) {
      w4[(0 * dg + r) * dg + c] = w.edge[r * 2 * dg + c];
      w4[(1 * dg + r) * dg + c] = w.edge[r * 2 * dg + dg + c];
      w4[(2 * dg + r) * dg + c] = w.node[r * 2 * dg + c];
      w4[(3 * dg + r) * dg + c] = w.node[r * 2 * dg + dg + c];
    }
  }
}

}  // namespace

void weighted_sum_forward(const NodeList& nodes, const float* expert_out, int64_t d, float* m) {
  const int64_t n = nodes.tokens();
#pragma omp parallel for schedule(static) if(worth_threads(n * d))
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
#pragma omp parallel for schedule(static) if(worth_threads(n * d))
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

// ---------- DAG-MoE structural aggregation, step by step ----------
//
// Forward per level l: LN(h^l) → a = LN·W_downᵀ → pq = a·[edge_l, edge_r, node_l, node_r]ᵀ →
// agg_j = Σ_{m ∈ pairs(j)} σ(p_j + q_m) ⊙ (node terms) → h^{l+1} = h^l + agg·W_upᵀ. The last
// level only forms Σ_j agg_j per token, and m_t = Σ_j h^{L-1}_j + (Σ_j agg_j) W_upᵀ.
namespace {

// Token t's nodes are [begin(t), end(t)).
int64_t node_begin(const NodeList& nodes, int64_t t) { return nodes.offsets[static_cast<size_t>(t)]; }
int64_t node_end(const NodeList& nodes, int64_t t) { return nodes.offsets[static_cast<size_t>(t + 1)]; }

// h⁰_j = g_j o_j + u_t / K_t
void node_inputs(const NodeList& nodes, const float* expert_out, const float* u, int64_t d, float* h0) {
  const int64_t T = nodes.tokens();
#pragma omp parallel for schedule(static) if(worth_threads(T * d))
  for (int64_t t = 0; t < T; ++t) {
    const int64_t b = node_begin(nodes, t), e = node_end(nodes, t);
    const float inv_k = e > b ? 1.0f / static_cast<float>(e - b) : 0.0f;
    for (int64_t j = b; j < e; ++j) {
      const float g = nodes.gate[static_cast<size_t>(j)];
      const float* o = expert_out + nodes.row[static_cast<size_t>(j)] * d;
      float* h = h0 + j * d;
      for (int64_t k = 0; k < d; ++k) h[k] = g * o[k] + u[t * d + k] * inv_k;
    }
  }
}

// ln_out = LN(h^l); a = ln_out W_downᵀ; pq = a [edge_l, edge_r, node_l, node_r]ᵀ.
void level_projections(const DagLevelWeights& w, int64_t N, int64_t d, int64_t dg, const DagLevelSaved& s) {
  layernorm_forward(s.h, N, d, w.norm_weight, w.norm_bias, s.ln_out, s.ln_mean, s.ln_rstd);
  linear_forward(s.ln_out, N, d, w.down, dg, s.a);
  pack_pair_weights(w, dg, s.w4);
  linear_forward(s.a, N, dg, s.w4, 4 * dg, s.pq);
}

// agg_j = Σ_{m ∈ pairs(j)} σ(p_j + q_m) ⊙ (r_j + s_m), pairs inside one token (causal: m <= j).
void edge_messages(const NodeList& nodes, int64_t dg, DagEdges edges, const float* pq, float* agg) {
  const int64_t T = nodes.tokens();
#pragma omp parallel for schedule(static) if(worth_threads(T * dg))
  for (int64_t t = 0; t < T; ++t) {
    const int64_t b = node_begin(nodes, t), e = node_end(nodes, t);
    // Pairs stay inside a token: zero its rows here, while they are in cache.
    std::memset(agg + b * dg, 0, sizeof(float) * static_cast<size_t>((e - b) * dg));
    for (int64_t j = b; j < e; ++j) {
      const float* pj = pq + j * 4 * dg;
      float* aj = agg + j * dg;
      const int64_t m_end = edges == DagEdges::causal ? j + 1 : e;
      for (int64_t mm = b; mm < m_end; ++mm) {
        const float* qm = pq + mm * 4 * dg;
        for (int64_t k = 0; k < dg; ++k) aj[k] += sigmoid(pj[k] + qm[dg + k]) * (pj[2 * dg + k] + qm[3 * dg + k]);
      }
    }
  }
}

// h^{l+1} = h^l + agg W_upᵀ.
void node_update(const float* h_in, const float* agg, const float* up, int64_t N, int64_t d, int64_t dg, float* h_out) {
  std::memcpy(h_out, h_in, sizeof(float) * static_cast<size_t>(N * d));
  linear_forward(agg, N, dg, up, d, h_out, /*accumulate=*/true);
}

// Σ_{j ∈ t} rows[j] for every token: rows [nodes, width] → out [tokens, width] (overwritten).
void token_sum(const NodeList& nodes, const float* rows, int64_t width, float* out) {
  const int64_t T = nodes.tokens();
#pragma omp parallel for schedule(static) if(worth_threads(T * width))
  for (int64_t t = 0; t < T; ++t) {
    float* sum = out + t * width;
    std::memset(sum, 0, sizeof(float) * static_cast<size_t>(width));
    for (int64_t j = node_begin(nodes, t); j < node_end(nodes, t); ++j)
      for (int64_t k = 0; k < width; ++k) sum[k] += rows[j * width + k];
  }
}

// Every node of token t gets row t: token rows [tokens, width] → node rows [nodes, width].
void broadcast_to_nodes(const NodeList& nodes, const float* token_rows, int64_t width, float* node_rows) {
  const int64_t T = nodes.tokens();
#pragma omp parallel for schedule(static) if(worth_threads(T * width))
  for (int64_t t = 0; t < T; ++t)
    for (int64_t j = node_begin(nodes, t); j < node_end(nodes, t); ++j)
      std::memcpy(node_rows + j * width, token_rows + t * width, sizeof(float) * static_cast<size_t>(width));
}

// Backward of h^{l+1} = h^l + agg W_upᵀ: dagg = dh W_up, dW_up += dhᵀ agg. The last level
// went through per-token sums (forward), so its dagg is dm W_up per token, broadcast to nodes.
void up_projection_backward(const NodeList& nodes, const DagLevelWeights& w, const DagLevelGrads& gw, bool last,
                            const float* dh, const float* dm, const float* agg, const float* agg_sum, int64_t d,
                            int64_t dg, const DagScratch& sc) {
  const int64_t T = nodes.tokens(), N = nodes.nodes();
  if (!last) {
    linear_backward_input(dh, N, d, w.up, dg, sc.dagg, /*accumulate=*/false);
    linear_backward_weight(dh, N, d, agg, dg, gw.up);
    return;
  }
  linear_backward_input(dm, T, d, w.up, dg, sc.dagg_token, /*accumulate=*/false);
  linear_backward_weight(dm, T, d, agg_sum, dg, gw.up);
  broadcast_to_nodes(nodes, sc.dagg_token, dg, sc.dagg);
}

// dpq from dagg through the pairwise gates (overwritten).
void edge_messages_backward(const NodeList& nodes, int64_t dg, DagEdges edges, const float* pq, const float* dagg,
                            float* dpq) {
  const int64_t T = nodes.tokens();
#pragma omp parallel for schedule(static) if(worth_threads(T * dg))
  for (int64_t t = 0; t < T; ++t) {
    const int64_t b = node_begin(nodes, t), e = node_end(nodes, t);
    std::memset(dpq + b * 4 * dg, 0, sizeof(float) * static_cast<size_t>((e - b) * 4 * dg));  // this token's rows
    for (int64_t j = b; j < e; ++j) {
      const float* pj = pq + j * 4 * dg;
      const float* gj = dagg + j * dg;
      float* dpj = dpq + j * 4 * dg;
      const int64_t m_end = edges == DagEdges::causal ? j + 1 : e;
      for (int64_t mm = b; mm < m_end; ++mm) {
        const float* qm = pq + mm * 4 * dg;
        float* dqm = dpq + mm * 4 * dg;
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
}

// Backward of a = LN·W_downᵀ and pq = a W4ᵀ: weight grads (edge, node, down) and dln (overwritten).
void level_projections_backward(const DagLevelWeights& w, const DagLevelGrads& gw, const DagLevelSaved& s, int64_t N,
                                int64_t d, int64_t dg, const DagScratch& sc) {
  linear_backward_input(sc.dpq, N, 4 * dg, s.w4, dg, sc.da, /*accumulate=*/false);  // packed by forward
  std::fill(sc.dw4, sc.dw4 + 4 * dg * dg, 0.0f);
  linear_backward_weight(sc.dpq, N, 4 * dg, s.a, dg, sc.dw4);
  const float* dw4 = sc.dw4;
  for (int64_t r = 0; r < dg; ++r) {
    for (int64_t c = 0; c < dg; ++c) {
      gw.edge[r * 2 * dg + c] += dw4[(0 * dg + r) * dg + c];
      gw.edge[r * 2 * dg + dg + c] += dw4[(1 * dg + r) * dg + c];
      gw.node[r * 2 * dg + c] += dw4[(2 * dg + r) * dg + c];
      gw.node[r * 2 * dg + dg + c] += dw4[(3 * dg + r) * dg + c];
    }
  }
  linear_backward_weight(sc.da, N, dg, s.ln_out, d, gw.down);
  linear_backward_input(sc.da, N, dg, w.down, d, sc.dln, /*accumulate=*/false);
}

// Backward of h⁰_j = g_j o_j + u_t / K_t.
void node_inputs_backward(const NodeList& nodes, const float* expert_out, int64_t d, const float* dh,
                          float* d_expert_out, float* dgate, float* du) {
  const int64_t T = nodes.tokens();
#pragma omp parallel for schedule(static) if(worth_threads(T * d))
  for (int64_t t = 0; t < T; ++t) {
    const int64_t b = node_begin(nodes, t), e = node_end(nodes, t);
    if (e == b) continue;
    const float inv_k = 1.0f / static_cast<float>(e - b);
    for (int64_t j = b; j < e; ++j) {
      const float g = nodes.gate[static_cast<size_t>(j)];
      const int64_t row = nodes.row[static_cast<size_t>(j)];
      const float* o = expert_out + row * d;
      float* dout = d_expert_out + row * d;
      const float* dhj = dh + j * d;
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

}  // namespace

int64_t dag_saved_floats(int64_t tokens, int64_t nodes, int64_t d, int64_t dg, size_t levels) {
  return DagSavedLayout{tokens, nodes, d, dg, levels}.floats();
}

int64_t dag_backward_scratch_floats(int64_t tokens, int64_t nodes, int64_t d, int64_t dg) {
  return DagScratch::floats(tokens, nodes, d, dg);
}

void dag_forward_buffers(const NodeList& nodes, const float* expert_out, const float* u, int64_t d, int64_t dg,
                         DagEdges edges, std::span<const DagLevelWeights> levels, float* m, float* saved) {
  const int64_t T = nodes.tokens(), N = nodes.nodes();
  const size_t L = levels.size();
  const DagSavedLayout layout{T, N, d, dg, L};
  node_inputs(nodes, expert_out, u, d, layout.h(saved, 0));
  for (size_t l = 0; l < L; ++l) {
    const DagLevelSaved s = layout.level(saved, l);
    level_projections(levels[l], N, d, dg, s);
    edge_messages(nodes, dg, edges, s.pq, s.agg);
    if (l + 1 < L)
      node_update(s.h, s.agg, levels[l].up, N, d, dg, layout.h(saved, l + 1));
    else  // Σ_j (h^{L-1}_j + agg_j W_upᵀ) = Σ_j h^{L-1}_j + (Σ_j agg_j) W_upᵀ: one GEMM over tokens, not nodes
      token_sum(nodes, s.agg, dg, layout.agg_sum(saved));
  }
  token_sum(nodes, layout.h(saved, L == 0 ? 0 : L - 1), d, m);  // h^L itself is never formed (above)
  if (L > 0) linear_forward(layout.agg_sum(saved), T, dg, levels[L - 1].up, d, m, /*accumulate=*/true);
}

void dag_backward_buffers(const NodeList& nodes, const float* expert_out, const float* u, int64_t d, int64_t dg,
                          DagEdges edges, std::span<const DagLevelWeights> levels, const float* saved, const float* dm,
                          float* d_expert_out, float* dgate, float* du, std::span<const DagLevelGrads> grads,
                          float* scratch) {
  (void)u;  // h⁰'s gradient with respect to u does not depend on u
  const int64_t T = nodes.tokens(), N = nodes.nodes();
  const size_t L = levels.size();
  SY_CHECK(grads.size() == L, "DAG backward needs the gradient buffers of every level");
  const DagSavedLayout layout{T, N, d, dg, L};
  float* fwd = const_cast<float*>(saved);  // views only; backward reads them
  const DagScratch sc(scratch, T, N, d, dg);
  broadcast_to_nodes(nodes, dm, d, sc.dh);  // dh^L_j = dm_t
  for (size_t li = L; li-- > 0;) {
    const DagLevelSaved s = layout.level(fwd, li);
    up_projection_backward(nodes, levels[li], grads[li], li + 1 == L, sc.dh, dm, s.agg, layout.agg_sum(fwd), d, dg, sc);
    edge_messages_backward(nodes, dg, edges, s.pq, sc.dagg, sc.dpq);
    level_projections_backward(levels[li], grads[li], s, N, d, dg, sc);
    // dh^l = dh^{l+1} (residual) + LN backward
    layernorm_backward(sc.dln, s.h, N, d, levels[li].norm_weight, s.ln_mean, s.ln_rstd, sc.dh, grads[li].norm_weight,
                       grads[li].norm_bias);
  }
  node_inputs_backward(nodes, expert_out, d, sc.dh, d_expert_out, dgate, du);
}

void dag_forward(const NodeList& nodes, const float* expert_out, const float* u, int64_t d, int64_t dg, DagEdges edges,
                 std::span<const DagLevelWeights> levels, float* m, DagCache* cache) {
  DagCache local;
  DagCache& c = cache ? *cache : local;
  // resize, not assign: the buffer of the previous step is reused.
  c.saved.resize(static_cast<size_t>(dag_saved_floats(nodes.tokens(), nodes.nodes(), d, dg, levels.size())));
  dag_forward_buffers(nodes, expert_out, u, d, dg, edges, levels, m, c.saved.data());
}

void dag_backward(const NodeList& nodes, const float* expert_out, const float* u, int64_t d, int64_t dg, DagEdges edges,
                  std::span<const DagLevelWeights> levels, const DagCache& cache, const float* dm, float* d_expert_out,
                  float* dgate, float* du, std::span<const DagLevelGrads> grads) {
  const int64_t T = nodes.tokens(), N = nodes.nodes();
  SY_CHECK(static_cast<int64_t>(cache.saved.size()) == dag_saved_floats(T, N, d, dg, levels.size()),
           "DAG backward needs the forward cache of every level");
  cache.scratch.resize(static_cast<size_t>(dag_backward_scratch_floats(T, N, d, dg)));  // reused step to step
  dag_backward_buffers(nodes, expert_out, u, d, dg, edges, levels, cache.saved.data(), dm, d_expert_out, dgate, du,
                       grads, cache.scratch.data());
}

void coefficient_mix_forward(const float* u, int64_t n, int64_t d, const float* wc, const float* bc, const float* m,
                             const float* s, float* m_out, float* coef) {
  std::vector<float> logits(static_cast<size_t>(n * 2));
  coefficient_mix_forward(u, n, d, wc, bc, m, s, m_out, coef, logits.data());
}

void coefficient_mix_forward(const float* u, int64_t n, int64_t d, const float* wc, const float* bc, const float* m,
                             const float* s, float* m_out, float* coef, float* scratch) {
  float* logits = scratch;
  linear_forward(u, n, d, wc, 2, logits);
#pragma omp parallel for schedule(static) if(worth_threads(n * d))
  for (int64_t t = 0; t < n; ++t) {
    const float z0 = logits[2 * t] + bc[0], z1 = logits[2 * t + 1] + bc[1];
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
  coefficient_mix_backward(dm_out, u, n, d, wc, m, s, coef, dm, ds, du, dwc, dbc, dlogit.data());
}

void coefficient_mix_backward(const float* dm_out, const float* u, int64_t n, int64_t d, const float* wc,
                              const float* m, const float* s, const float* coef, float* dm, float* ds, float* du,
                              float* dwc, float* dbc, float* scratch) {
  float* dlogit = scratch;
#pragma omp parallel for schedule(static) if(worth_threads(n * d))
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
    dlogit[2 * t] = c0 * (dc0 - dot);
    dlogit[2 * t + 1] = c1 * (dc1 - dot);
  }
  for (int64_t t = 0; t < n; ++t) {
    dbc[0] += dlogit[2 * t];
    dbc[1] += dlogit[2 * t + 1];
  }
  linear_backward_weight(dlogit, n, 2, u, d, dwc);
  linear_backward_input(dlogit, n, 2, wc, d, du);
}

}  // namespace sy::cpu
