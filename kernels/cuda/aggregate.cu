// Aggregation of expert outputs on the device, as cpu/aggregate.cc: weighted sum, DAG-MoE
// structural aggregation and the coefficient mix, forward and backward. Token-local work runs
// one block per token over that token's nodes (no atomics: every output element has one
// writer, summed in the CPU's order); projections are cuBLAS SGEMMs. The DAG's `saved` and
// `scratch` buffers have the CPU's layout (cpu/dag_layout.h).
#include <string>

#include "../cpu/dag_layout.h"
#include "cuda_ops.h"
#include "device.cuh"
#include "switchyard/core/error.h"

namespace sy::cuda {

namespace {
// A default NodeList (no offsets at all) has no tokens.
int64_t token_count(const cpu::NodeList& nodes) { return nodes.offsets.empty() ? 0 : nodes.tokens(); }
int64_t saved_floats(const DagForwardArgs& a) {
  return cpu::dag_saved_floats(token_count(*a.nodes), a.nodes->nodes(), a.d, a.dg, a.levels.size());
}
int64_t scratch_floats(const DagBackwardArgs& a) {
  return cpu::dag_backward_scratch_floats(token_count(*a.nodes), a.nodes->nodes(), a.d, a.dg);
}
}  // namespace

DeviceNodes upload_nodes(const Context& ctx, Carver& ws, const cpu::NodeList& nodes) {
  DeviceNodes dn;
  dn.tokens = token_count(nodes);
  dn.nodes = nodes.nodes();
  dn.offsets = upload(ctx, ws, nodes.offsets);
  dn.row = upload(ctx, ws, nodes.row);
  dn.slot = upload(ctx, ws, nodes.slot);
  dn.gate = upload(ctx, ws, nodes.gate);
  return dn;
}

namespace {

// ---------- weighted sum ----------

// m_t = Σ_n g_n o_{row_n}
__global__ void weighted_sum_forward_kernel(DeviceNodes nodes, const float* expert_out, int64_t d, float* m) {
  const int64_t t = blockIdx.x, b = nodes.offsets[t], e = nodes.offsets[t + 1];
  for (int64_t c = threadIdx.x; c < d; c += blockDim.x) {
    float acc = 0.0f;
    for (int64_t j = b; j < e; ++j) acc += nodes.gate[j] * expert_out[nodes.row[j] * d + c];
    m[t * d + c] = acc;
  }
}

// d_expert_out[row] += g dm_t; dgate[slot] += dm_t · o_row. With du (the DAG's h⁰ backward):
// du_t += dm_t / K_t as well.
__global__ void node_rows_backward_kernel(DeviceNodes nodes, const float* expert_out, int64_t d, const float* dm,
                                          bool per_node_dm, float* d_expert_out, float* dgate, float* du) {
  const int64_t t = blockIdx.x, b = nodes.offsets[t], e = nodes.offsets[t + 1];
  const float inv_k = e > b ? 1.0f / static_cast<float>(e - b) : 0.0f;
  for (int64_t j = b; j < e; ++j) {
    const float g = nodes.gate[j];
    const int64_t row = nodes.row[j];
    const float* dmj = dm + (per_node_dm ? j : t) * d;
    float dot = 0.0f;
    for (int64_t c = threadIdx.x; c < d; c += blockDim.x) {
      d_expert_out[row * d + c] += g * dmj[c];
      dot += dmj[c] * expert_out[row * d + c];
      if (du) du[t * d + c] += dmj[c] * inv_k;
    }
    dot = block_sum(dot);
    if (threadIdx.x == 0) dgate[nodes.slot[j]] += dot;
  }
}

// ---------- DAG steps (cpu/aggregate.cc names them the same) ----------

// h⁰_j = g_j o_j + u_t / K_t
__global__ void node_inputs_kernel(DeviceNodes nodes, const float* expert_out, const float* u, int64_t d, float* h0) {
  const int64_t t = blockIdx.x, b = nodes.offsets[t], e = nodes.offsets[t + 1];
  const float inv_k = e > b ? 1.0f / static_cast<float>(e - b) : 0.0f;
  for (int64_t j = b; j < e; ++j)
    for (int64_t k = threadIdx.x; k < d; k += blockDim.x)
      h0[j * d + k] = nodes.gate[j] * expert_out[nodes.row[j] * d + k] + u[t * d + k] * inv_k;
}

// agg_j = Σ_{m ∈ pairs(j)} σ(p_j + q_m) ⊙ (r_j + s_m), pairs inside one token (causal: m <= j).
__global__ void edge_messages_kernel(DeviceNodes nodes, int64_t dg, bool causal, const float* pq, float* agg) {
  const int64_t t = blockIdx.x, b = nodes.offsets[t], e = nodes.offsets[t + 1];
  for (int64_t j = b; j < e; ++j) {
    const float* pj = pq + j * 4 * dg;
    const int64_t m_end = causal ? j + 1 : e;
    for (int64_t k = threadIdx.x; k < dg; k += blockDim.x) {
      float acc = 0.0f;
      for (int64_t mm = b; mm < m_end; ++mm) {
        const float* qm = pq + mm * 4 * dg;
        acc += sigmoidf(pj[k] + qm[dg + k]) * (pj[2 * dg + k] + qm[3 * dg + k]);
      }
      agg[j * dg + k] = acc;
    }
  }
}

// dpq (overwritten) from dagg through the pairwise gates. Node j's p parts collect over its
// pairs (j, m); its q parts over the pairs (j', j) that name it, j' ascending: the CPU's order.
__global__ void edge_messages_backward_kernel(DeviceNodes nodes, int64_t dg, bool causal, const float* pq,
                                              const float* dagg, float* dpq) {
  const int64_t t = blockIdx.x, b = nodes.offsets[t], e = nodes.offsets[t + 1];
  for (int64_t j = b; j < e; ++j) {
    const float* pj = pq + j * 4 * dg;
    float* dpj = dpq + j * 4 * dg;
    for (int64_t k = threadIdx.x; k < dg; k += blockDim.x) {
      float dp_edge = 0.0f, dp_node = 0.0f, dq_edge = 0.0f, dq_node = 0.0f;
      for (int64_t mm = b; mm < (causal ? j + 1 : e); ++mm) {  // pairs (j, mm)
        const float* qm = pq + mm * 4 * dg;
        const float s = sigmoidf(pj[k] + qm[dg + k]);
        const float node = pj[2 * dg + k] + qm[3 * dg + k];
        dp_edge += dagg[j * dg + k] * node * s * (1.0f - s);
        dp_node += dagg[j * dg + k] * s;
      }
      for (int64_t jj = causal ? j : b; jj < e; ++jj) {  // pairs (jj, j)
        const float* pjj = pq + jj * 4 * dg;
        const float s = sigmoidf(pjj[k] + pj[dg + k]);
        const float node = pjj[2 * dg + k] + pj[3 * dg + k];
        dq_edge += dagg[jj * dg + k] * node * s * (1.0f - s);
        dq_node += dagg[jj * dg + k] * s;
      }
      dpj[k] = dp_edge;
      dpj[dg + k] = dq_edge;
      dpj[2 * dg + k] = dp_node;
      dpj[3 * dg + k] = dq_node;
    }
  }
}

// Σ_{j ∈ t} rows[j] for every token: [nodes, width] → [tokens, width] (overwritten).
__global__ void token_sum_kernel(DeviceNodes nodes, const float* rows, int64_t width, float* out) {
  const int64_t t = blockIdx.x, b = nodes.offsets[t], e = nodes.offsets[t + 1];
  for (int64_t k = threadIdx.x; k < width; k += blockDim.x) {
    float acc = 0.0f;
    for (int64_t j = b; j < e; ++j) acc += rows[j * width + k];
    out[t * width + k] = acc;
  }
}

// Every node of token t gets row t: [tokens, width] → [nodes, width].
__global__ void broadcast_to_nodes_kernel(DeviceNodes nodes, const float* token_rows, int64_t width, float* node_rows) {
  const int64_t t = blockIdx.x, b = nodes.offsets[t], e = nodes.offsets[t + 1];
  for (int64_t j = b; j < e; ++j)
    for (int64_t k = threadIdx.x; k < width; k += blockDim.x) node_rows[j * width + k] = token_rows[t * width + k];
}

// [dg, 2dg] edge and node → [4dg, dg]: edge_left, edge_right, node_left, node_right.
__global__ void pack_pair_weights_kernel(const float* edge, const float* node, int64_t dg, float* w4) {
  SY_GRID_STRIDE(i, dg * dg) {
    const int64_t r = i / dg, c = i % dg;
    w4[(0 * dg + r) * dg + c] = edge[r * 2 * dg + c];
    w4[(1 * dg + r) * dg + c] = edge[r * 2 * dg + dg + c];
    w4[(2 * dg + r) * dg + c] = node[r * 2 * dg + c];
    w4[(3 * dg + r) * dg + c] = node[r * 2 * dg + dg + c];
  }
}

// The inverse of the packing, accumulated into the edge and node gradients.
__global__ void unpack_pair_grads_kernel(const float* dw4, int64_t dg, float* edge, float* node) {
  SY_GRID_STRIDE(i, dg * dg) {
    const int64_t r = i / dg, c = i % dg;
    edge[r * 2 * dg + c] += dw4[(0 * dg + r) * dg + c];
    edge[r * 2 * dg + dg + c] += dw4[(1 * dg + r) * dg + c];
    node[r * 2 * dg + c] += dw4[(2 * dg + r) * dg + c];
    node[r * 2 * dg + dg + c] += dw4[(3 * dg + r) * dg + c];
  }
}

// ---------- coefficient mix ----------

// c = softmax(logits + b_c) per token.
__global__ void coefficients_kernel(const float* logits, const float* bc, int64_t n, float* coef) {
  SY_GRID_STRIDE(t, n) {
    const float z0 = logits[2 * t] + bc[0], z1 = logits[2 * t + 1] + bc[1];
    const float mx = fmaxf(z0, z1);
    const float e0 = expf(z0 - mx), e1 = expf(z1 - mx);
    coef[2 * t] = e0 / (e0 + e1);
    coef[2 * t + 1] = e1 / (e0 + e1);
  }
}

__global__ void mix_kernel(const float* coef, const float* m, const float* s, int64_t n, int64_t d, float* m_out) {
  SY_GRID_STRIDE(i, n * d) {
    const int64_t t = i / d;
    m_out[i] = coef[2 * t] * m[i] + coef[2 * t + 1] * s[i];
  }
}

// Per token: dm, ds (overwritten) and the logits' gradient through the two-way softmax.
__global__ void mix_backward_kernel(const float* dm_out, const float* m, const float* s, const float* coef, int64_t d,
                                    float* dm, float* ds, float* dlogit) {
  const int64_t t = blockIdx.x;
  const float c0 = coef[2 * t], c1 = coef[2 * t + 1];
  float dc0 = 0.0f, dc1 = 0.0f;
  for (int64_t k = threadIdx.x; k < d; k += blockDim.x) {
    const float g = dm_out[t * d + k];
    dc0 += g * m[t * d + k];
    dc1 += g * s[t * d + k];
    dm[t * d + k] = c0 * g;
    ds[t * d + k] = c1 * g;
  }
  dc0 = block_sum(dc0);
  dc1 = block_sum(dc1);
  if (threadIdx.x == 0) {
    const float dot = c0 * dc0 + c1 * dc1;
    dlogit[2 * t] = c0 * (dc0 - dot);
    dlogit[2 * t + 1] = c1 * (dc1 - dot);
  }
}

// dbc += Σ_t dlogit_t (one block).
__global__ void bias_grad_kernel(const float* dlogit, int64_t n, float* dbc) {
  float g0 = 0.0f, g1 = 0.0f;
  for (int64_t t = threadIdx.x; t < n; t += blockDim.x) {
    g0 += dlogit[2 * t];
    g1 += dlogit[2 * t + 1];
  }
  g0 = block_sum(g0);
  g1 = block_sum(g1);
  if (threadIdx.x == 0) {
    dbc[0] += g0;
    dbc[1] += g1;
  }
}

// ---------- DAG orchestration (the CPU's dag_forward_buffers / dag_backward_buffers) ----------

unsigned token_blocks(const DeviceNodes& nodes) { return static_cast<unsigned>(nodes.tokens); }

struct DagRun {
  const Context& ctx;
  const DeviceNodes& nodes;
  int64_t d, dg;
  bool causal;
};

void token_sum(const DagRun& r, const float* rows, int64_t width, float* out) {
  token_sum_kernel<<<token_blocks(r.nodes), kThreads, 0, r.ctx.stream>>>(r.nodes, rows, width, out);
  check_launch("token_sum_kernel");
}

void broadcast_to_nodes(const DagRun& r, const float* token_rows, int64_t width, float* node_rows) {
  broadcast_to_nodes_kernel<<<token_blocks(r.nodes), kThreads, 0, r.ctx.stream>>>(r.nodes, token_rows, width,
                                                                                  node_rows);
  check_launch("broadcast_to_nodes_kernel");
}

// ln_out = LN(h^l); a = ln_out W_downᵀ; pq = a [edge_l, edge_r, node_l, node_r]ᵀ.
void level_projections(const DagRun& r, const cpu::DagLevelWeights& w, const cpu::DagLevelSaved& s) {
  const int64_t N = r.nodes.nodes, d = r.d, dg = r.dg;
  layernorm_forward(r.ctx, s.h, N, d, w.norm_weight, w.norm_bias, s.ln_out, s.ln_mean, s.ln_rstd);
  linear_forward(r.ctx, s.ln_out, N, d, w.down, dg, s.a, false);
  if (dg > 0) {
    pack_pair_weights_kernel<<<grid_for(dg * dg), kThreads, 0, r.ctx.stream>>>(w.edge, w.node, dg, s.w4);
    check_launch("pack_pair_weights_kernel");
  }
  linear_forward(r.ctx, s.a, N, dg, s.w4, 4 * dg, s.pq, false);
}

void edge_messages(const DagRun& r, const float* pq, float* agg) {
  edge_messages_kernel<<<token_blocks(r.nodes), kThreads, 0, r.ctx.stream>>>(r.nodes, r.dg, r.causal, pq, agg);
  check_launch("edge_messages_kernel");
}

// Backward of h^{l+1} = h^l + agg W_upᵀ (the last level went through per-token sums).
void up_projection_backward(const DagRun& r, const cpu::DagLevelWeights& w, const cpu::DagLevelGrads& gw, bool last,
                            const float* dm, const float* agg, const float* agg_sum, const cpu::DagScratch& sc) {
  const int64_t T = r.nodes.tokens, N = r.nodes.nodes, d = r.d, dg = r.dg;
  if (!last) {
    linear_backward_input(r.ctx, sc.dh, N, d, w.up, dg, sc.dagg, false);
    linear_backward_weight(r.ctx, sc.dh, N, d, agg, dg, gw.up);
    return;
  }
  linear_backward_input(r.ctx, dm, T, d, w.up, dg, sc.dagg_token, false);
  linear_backward_weight(r.ctx, dm, T, d, agg_sum, dg, gw.up);
  broadcast_to_nodes(r, sc.dagg_token, dg, sc.dagg);
}

// Backward of a = LN·W_downᵀ and pq = a W4ᵀ: weight grads (edge, node, down) and dln.
void level_projections_backward(const DagRun& r, const cpu::DagLevelWeights& w, const cpu::DagLevelGrads& gw,
                                const cpu::DagLevelSaved& s, const cpu::DagScratch& sc) {
  const int64_t N = r.nodes.nodes, d = r.d, dg = r.dg;
  linear_backward_input(r.ctx, sc.dpq, N, 4 * dg, s.w4, dg, sc.da, false);
  fill_zero(r.ctx, sc.dw4, 4 * dg * dg);
  linear_backward_weight(r.ctx, sc.dpq, N, 4 * dg, s.a, dg, sc.dw4);
  if (dg > 0) {
    unpack_pair_grads_kernel<<<grid_for(dg * dg), kThreads, 0, r.ctx.stream>>>(sc.dw4, dg, gw.edge, gw.node);
    check_launch("unpack_pair_grads_kernel");
  }
  linear_backward_weight(r.ctx, sc.da, N, dg, s.ln_out, d, gw.down);
  linear_backward_input(r.ctx, sc.da, N, dg, w.down, d, sc.dln, false);
}

void dag_forward(const DagRun& r, const float* expert_out, const float* u, std::span<const cpu::DagLevelWeights> levels,
                 float* m, float* saved) {
  const int64_t T = r.nodes.tokens, N = r.nodes.nodes, d = r.d, dg = r.dg;
  const size_t L = levels.size();
  const cpu::DagSavedLayout layout{T, N, d, dg, L};
  node_inputs_kernel<<<token_blocks(r.nodes), kThreads, 0, r.ctx.stream>>>(r.nodes, expert_out, u, d,
                                                                           layout.h(saved, 0));
  check_launch("node_inputs_kernel");
  for (size_t l = 0; l < L; ++l) {
    const cpu::DagLevelSaved s = layout.level(saved, l);
    level_projections(r, levels[l], s);
    edge_messages(r, s.pq, s.agg);
    if (l + 1 < L) {  // h^{l+1} = h^l + agg W_upᵀ
      copy_floats(r.ctx, layout.h(saved, l + 1), s.h, N * d);
      linear_forward(r.ctx, s.agg, N, dg, levels[l].up, d, layout.h(saved, l + 1), true);
    } else {
      token_sum(r, s.agg, dg, layout.agg_sum(saved));
    }
  }
  token_sum(r, layout.h(saved, L == 0 ? 0 : L - 1), d, m);
  if (L > 0) linear_forward(r.ctx, layout.agg_sum(saved), T, dg, levels[L - 1].up, d, m, true);
}

void dag_backward(const DagRun& r, const DagBackwardArgs& a, float* scratch) {
  const int64_t T = r.nodes.tokens, N = r.nodes.nodes, d = r.d, dg = r.dg;
  const size_t L = a.levels.size();
  const cpu::DagSavedLayout layout{T, N, d, dg, L};
  float* fwd = const_cast<float*>(a.saved);  // views only; backward reads them
  const cpu::DagScratch sc(scratch, T, N, d, dg);
  broadcast_to_nodes(r, a.dm, d, sc.dh);  // dh^L_j = dm_t
  for (size_t li = L; li-- > 0;) {
    const cpu::DagLevelSaved s = layout.level(fwd, li);
    up_projection_backward(r, a.levels[li], a.grads[li], li + 1 == L, a.dm, s.agg, layout.agg_sum(fwd), sc);
    edge_messages_backward_kernel<<<token_blocks(r.nodes), kThreads, 0, r.ctx.stream>>>(r.nodes, dg, r.causal, s.pq,
                                                                                        sc.dagg, sc.dpq);
    check_launch("edge_messages_backward_kernel");
    level_projections_backward(r, a.levels[li], a.grads[li], s, sc);
    // dh^l = dh^{l+1} (residual) + LN backward
    layernorm_backward(r.ctx, sc.dln, s.h, N, d, a.levels[li].norm_weight, s.ln_mean, s.ln_rstd, sc.dh,
                       a.grads[li].norm_weight, a.grads[li].norm_bias);
  }
  node_rows_backward_kernel<<<token_blocks(r.nodes), kThreads, 0, r.ctx.stream>>>(
      r.nodes, a.expert_out, d, sc.dh, /*per_node_dm=*/true, a.d_expert_out, a.dgate, a.du);
  check_launch("node_rows_backward_kernel (dag)");
}

}  // namespace

// ---------- the ops ----------

size_t workspace(const WeightedSumForwardArgs& a) {
  Carver ws(nullptr);
  upload_nodes({}, ws, *a.nodes);
  return ws.bytes();
}

void exec(const Context& ctx, const WeightedSumForwardArgs& a, void* workspace) {
  Carver ws(workspace);
  const DeviceNodes nodes = upload_nodes(ctx, ws, *a.nodes);
  if (nodes.tokens <= 0 || a.d == 0) return;
  weighted_sum_forward_kernel<<<token_blocks(nodes), kThreads, 0, ctx.stream>>>(nodes, a.expert_out, a.d, a.m);
  check_launch("weighted_sum_forward_kernel");
}

size_t workspace(const WeightedSumBackwardArgs& a) {
  Carver ws(nullptr);
  upload_nodes({}, ws, *a.nodes);
  return ws.bytes();
}

void exec(const Context& ctx, const WeightedSumBackwardArgs& a, void* workspace) {
  Carver ws(workspace);
  const DeviceNodes nodes = upload_nodes(ctx, ws, *a.nodes);
  if (nodes.tokens <= 0) return;
  node_rows_backward_kernel<<<token_blocks(nodes), kThreads, 0, ctx.stream>>>(
      nodes, a.expert_out, a.d, a.dm, /*per_node_dm=*/false, a.d_expert_out, a.dgate, nullptr);
  check_launch("node_rows_backward_kernel");
}

// Workspace: the forward activations when a.saved is null, then the node list.
size_t workspace(const DagForwardArgs& a) {
  Carver ws(nullptr);
  if (!a.saved) ws.take<float>(saved_floats(a));
  upload_nodes({}, ws, *a.nodes);
  return ws.bytes();
}

void exec(const Context& ctx, const DagForwardArgs& a, void* workspace) {
  Carver ws(workspace);
  float* saved = a.saved;
  if (!saved) saved = ws.take<float>(saved_floats(a));
  const DeviceNodes nodes = upload_nodes(ctx, ws, *a.nodes);
  if (nodes.tokens <= 0) return;
  dag_forward({ctx, nodes, a.d, a.dg, a.edges == DagEdges::causal}, a.expert_out, a.u, a.levels, a.m, saved);
}

// Workspace: backward's temporaries (the CPU's scratch layout), then the node list.
size_t workspace(const DagBackwardArgs& a) {
  Carver ws(nullptr);
  ws.take<float>(scratch_floats(a));
  upload_nodes({}, ws, *a.nodes);
  return ws.bytes();
}

void exec(const Context& ctx, const DagBackwardArgs& a, void* workspace) {
  SY_CHECK(a.grads.size() == a.levels.size(), "DAG backward needs the gradient buffers of every level");
  Carver ws(workspace);
  float* scratch = ws.take<float>(scratch_floats(a));
  const DeviceNodes nodes = upload_nodes(ctx, ws, *a.nodes);
  if (nodes.tokens <= 0) return;
  dag_backward({ctx, nodes, a.d, a.dg, a.edges == DagEdges::causal}, a, scratch);
}

size_t workspace(const CoefficientMixForwardArgs& a) { return static_cast<size_t>(2 * a.n) * sizeof(float); }

void exec(const Context& ctx, const CoefficientMixForwardArgs& a, void* workspace) {
  if (a.n == 0) return;
  float* logits = static_cast<float*>(workspace);
  linear_forward(ctx, a.u, a.n, a.d, a.wc, 2, logits, false);
  coefficients_kernel<<<grid_for(a.n), kThreads, 0, ctx.stream>>>(logits, a.bc, a.n, a.coef);
  check_launch("coefficients_kernel");
  if (a.d == 0) return;
  mix_kernel<<<grid_for(a.n * a.d), kThreads, 0, ctx.stream>>>(a.coef, a.m, a.s, a.n, a.d, a.m_out);
  check_launch("mix_kernel");
}

size_t workspace(const CoefficientMixBackwardArgs& a) { return static_cast<size_t>(2 * a.n) * sizeof(float); }

void exec(const Context& ctx, const CoefficientMixBackwardArgs& a, void* workspace) {
  if (a.n == 0) return;
  float* dlogit = static_cast<float*>(workspace);
  mix_backward_kernel<<<static_cast<unsigned>(a.n), kThreads, 0, ctx.stream>>>(a.dm_out, a.m, a.s, a.coef, a.d, a.dm,
                                                                               a.ds, dlogit);
  check_launch("mix_backward_kernel");
  bias_grad_kernel<<<1, kThreads, 0, ctx.stream>>>(dlogit, a.n, a.dbc);
  check_launch("bias_grad_kernel");
  linear_backward_weight(ctx, dlogit, a.n, 2, a.u, a.d, a.dwc);
  linear_backward_input(ctx, dlogit, a.n, 2, a.wc, a.d, a.du, true);
}

}  // namespace sy::cuda
