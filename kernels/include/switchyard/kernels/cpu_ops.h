// CPU reference kernels for one MoE stage, forward and backward (METHODS.md §1, §2, §4).
//
// Conventions: row-major float32; a linear weight W is [out, in] (PyTorch layout) so
// linear(x) = x Wᵀ. Gradient outputs named `d*` are *accumulated* into (+=) unless the
// function says otherwise, so one buffer can collect contributions from several paths.
// GEMMs go through OpenBLAS (its own threads); element-wise loops use OpenMP.
//
// Allocation: the numeric kernels have a form that takes every buffer from the caller
// (`*_buffers` functions, or a trailing `scratch` argument) and allocates nothing; the
// older forms (FfnCache, DagCache, returned vectors) size std::vectors and call those.
// The host index structures (Selection, DispatchLayout, NodeList, allocate_experts' K)
// are built on the host with std::vector; those functions allocate host memory.
// The Backend op table (ops.h) calls the allocation-free forms.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "switchyard/core/config.h"
#include "switchyard/core/error.h"

namespace sy::cpu {

// The GEMM library's kernel family (OpenBLAS's core name, e.g. "SkylakeX"; "Prescott" is its
// generic SSE3 fallback on CPUs it does not recognise: scripts/with-blas-core.sh).
const char* blas_core_name();

// ---------- dense building blocks ----------

// y = x Wᵀ (+ y if accumulate). x: [n, in], W: [out, in], y: [n, out].
void linear_forward(const float* x, int64_t n, int64_t in, const float* w, int64_t out, float* y,
                    bool accumulate = false);
// dx += dy W (dx = dy W when accumulate is false). dy: [n, out], dx: [n, in].
void linear_backward_input(const float* dy, int64_t n, int64_t out, const float* w, int64_t in, float* dx,
                           bool accumulate = true);
// dW += dyᵀ x. dW: [out, in].
void linear_backward_weight(const float* dy, int64_t n, int64_t out, const float* x, int64_t in, float* dw);

// y += x element-wise (n floats): residual and gradient sums.
void add_inplace(const float* x, int64_t n, float* y);

constexpr float kRmsNormEps = 1e-6f;
constexpr float kLayerNormEps = 1e-5f;

// y = x / sqrt(mean(x²) + eps) ⊙ w; stores rstd per row.
void rmsnorm_forward(const float* x, int64_t n, int64_t d, const float* w, float* y, float* rstd);
// dx += ∂/∂x, dw += ∂/∂w.
void rmsnorm_backward(const float* dy, const float* x, int64_t n, int64_t d, const float* w, const float* rstd,
                      float* dx, float* dw);

// y = (x − mean) * rstd ⊙ γ + β (biased variance); stores mean and rstd per row.
void layernorm_forward(const float* x, int64_t n, int64_t d, const float* gamma, const float* beta, float* y,
                       float* mean, float* rstd);
void layernorm_backward(const float* dy, const float* x, int64_t n, int64_t d, const float* gamma,
                        const float* mean, const float* rstd, float* dx, float* dgamma, float* dbeta);

// ---------- router ----------

// p = softmax(z) row-wise in float32; lse (optional) = logsumexp per row.
void softmax_forward(const float* z, int64_t n, int64_t e, float* p, float* lse);
// dz += p ⊙ (dp − Σ p dp).
void softmax_backward(const float* dp, const float* p, int64_t n, int64_t e, float* dz);

// The experts chosen per token (CSR over tokens), in gate order: highest probability
// first, ties to the lower expert index. `kept[s] == 0` marks an assignment dropped by capacity.
struct Selection {
  int64_t tokens = 0;
  int64_t experts = 0;
  std::vector<int64_t> offsets;  // [tokens + 1]
  std::vector<int32_t> expert;   // [slots]
  std::vector<float> gate;       // [slots]
  std::vector<uint8_t> kept;     // [slots]
  std::vector<float> denom;      // [tokens] normalisation denominator (1 when normalize=false)
  int64_t dropped = 0;

  int64_t slots() const { return static_cast<int64_t>(expert.size()); }
};

// S_t = the k_t largest p_{t,i}; k_per_token has one entry per token (1 <= k_t <= e).
Selection select_experts(const float* p, int64_t n, int64_t e, std::span<const int32_t> k_per_token);
// g = p / Σ_{S_t} p (denominator clamped at FLT_EPSILON) when normalize, else g = p.
void compute_gates(const float* p, bool normalize, Selection& sel);
// capacity_factor > 0: each expert keeps at most ceil(cf · N_assign / E) assignments, highest
// gate first (ties: lower token). Marks kept=0 and counts `dropped`. cf == 0: no-op.
void apply_capacity(double capacity_factor, Selection& sel);
// Evaluation only (the robustness test of CartesianMoE): marks each token's `n` highest-
// probability selected experts kept=0, as capacity drops are (gates not renormalised).
void drop_top_experts(int n, Selection& sel);
// dp += ∂L/∂p given dgate per slot (zero for dropped slots is implied).
void gates_backward(const float* p, const Selection& sel, bool normalize, const float* dgate, float* dp);

// Switch load-balance loss α·E·Σ f_i P_i (f from the pre-drop selection); adds its gradient to dp.
// dp may be null to skip the gradient.
double load_balance_loss(const float* p, const Selection& sel, double alpha, float* dp);
// Same, with caller scratch of 2·experts doubles.
double load_balance_loss(const float* p, const Selection& sel, double alpha, float* dp, double* scratch);
// z-loss β·mean_t lse_t²; adds its gradient to dz (null to skip).
double z_loss(const float* p, const float* lse, int64_t n, int64_t e, double beta, float* dz);

// ---------- packing rows by expert ----------

// Where each kept (token, expert) assignment sits in the packed expert input: rows grouped
// by expert (expert 0 first), tokens ascending inside a group. Dispatch, the expert FFNs,
// combine and both backward passes reuse one layout.
struct DispatchLayout {
  int64_t experts = 0;
  std::vector<int64_t> expert_offsets;  // [experts + 1]
  std::vector<int64_t> token;           // [rows] source token of each packed row
  std::vector<int64_t> slot;            // [rows] Selection slot of each packed row
  std::vector<int64_t> routed;          // [experts] assignments per expert before capacity drops
  int64_t rows() const { return static_cast<int64_t>(token.size()); }
  int64_t expert_rows(int64_t i) const {
    return expert_offsets[static_cast<size_t>(i + 1)] - expert_offsets[static_cast<size_t>(i)];
  }
};
DispatchLayout build_dispatch_layout(const Selection& sel);
// dst[r] = src[index[r]] for every row r (rows of width d).
void gather_rows(const float* src, int64_t d, std::span<const int64_t> index, float* dst);
// dst[index[r]] += src[r]; the indices in one call must be distinct (true within one expert).
void scatter_add_rows(const float* src, int64_t d, std::span<const int64_t> index, float* dst);

// ---------- DA-MoE dynamic allocation ----------

// s_{b,t} = (1/H) Σ_h Σ_q A[b,h,q,t]; with causal_correction divided by (L − t) and rescaled to
// mean 1 per sequence. Validates that every attention row sums to 1 within 1e-3.
std::vector<float> importance_from_attention(const float* attention, int64_t b, int64_t h, int64_t l,
                                             bool causal_correction);
// Same into s [b, l], with caller scratch of b·l doubles.
void importance_from_attention(const float* attention, int64_t b, int64_t h, int64_t l, bool causal_correction,
                               float* s, double* scratch);
struct AllocationParams {
  double k_avg = 2.0;
  int k_min = 1;
  int k_max = 4;
  Budget budget = Budget::exact;
};
// K_t per token for `sequences` sequences of `length` tokens (importance laid out [sequences, length]).
std::vector<int32_t> allocate_experts(std::span<const float> importance, int64_t sequences, int64_t length,
                                      const AllocationParams& params);

// ---------- expert FFN ----------

struct ExpertWeights {  // one expert; gate is null for gelu
  const float* gate = nullptr;  // [f, d]
  const float* up = nullptr;    // [f, d]
  const float* down = nullptr;  // [d, f]
};
struct ExpertGrads {  // accumulated into
  float* gate = nullptr;
  float* up = nullptr;
  float* down = nullptr;
};
// Activations kept for backward, [rows, f] each (h_gate empty for gelu).
struct FfnCache {
  std::vector<float> h_gate, h_up, act;
};
// out = E(x) for `rows` rows; out is overwritten.
void ffn_forward(const float* x, int64_t rows, int64_t d, int64_t f, Activation activation, const ExpertWeights& w,
                 float* out, FfnCache* cache);
// dx += ∂/∂x (dx may be null), grads += ∂/∂W.
void ffn_backward(const float* dout, const float* x, int64_t rows, int64_t d, int64_t f, Activation activation,
                  const ExpertWeights& w, const FfnCache& cache, float* dx, const ExpertGrads& grads);

// The same activations in one caller buffer: h_up, act, then h_gate (swiglu only), [rows, f] each.
inline int64_t ffn_saved_floats(int64_t rows, int64_t f, Activation activation) {
  return rows * f * (activation == Activation::swiglu ? 3 : 2);
}
// Backward's temporaries: ∂/∂act, then ∂/∂h_gate (swiglu only), [rows, f] each.
inline int64_t ffn_backward_scratch_floats(int64_t rows, int64_t f, Activation activation) {
  return rows * f * (activation == Activation::swiglu ? 2 : 1);
}
// ffn_forward / ffn_backward on caller buffers (bit-identical to the FfnCache forms).
void ffn_forward_buffers(const float* x, int64_t rows, int64_t d, int64_t f, Activation activation,
                         const ExpertWeights& w, float* out, float* saved);
// `weight_segments` (row counts summing to rows; empty: all rows): grads += one product per
// segment, in order, so the sums group as if each segment had been its own backward.
// Every backend checks them with check_weight_segments (throws a runtime Error).
inline void check_weight_segments(std::span<const int64_t> weight_segments, int64_t rows) {
  int64_t segment_rows = 0;
  for (const int64_t n : weight_segments) segment_rows += n;
  if (!weight_segments.empty() && segment_rows != rows)
    throw_runtime_error("ffn backward: weight segments hold " + std::to_string(segment_rows) + " rows, not " +
                        std::to_string(rows));
}
void ffn_backward_buffers(const float* dout, const float* x, int64_t rows, int64_t d, int64_t f, Activation activation,
                          const ExpertWeights& w, const float* saved, float* dx, const ExpertGrads& grads,
                          float* scratch, std::span<const int64_t> weight_segments = {});

// ---------- aggregation ----------

// The nodes a token aggregates: the kept slots of a Selection, in gate order, each pointing at
// the row of the packed expert-output matrix that holds o_{t,i}.
struct NodeList {
  std::vector<int64_t> offsets;  // [tokens + 1]
  std::vector<int64_t> row;      // [nodes] row in the packed expert outputs
  std::vector<int64_t> slot;     // [nodes] slot in the Selection
  std::vector<float> gate;       // [nodes]
  int64_t tokens() const { return static_cast<int64_t>(offsets.size()) - 1; }
  int64_t nodes() const { return static_cast<int64_t>(row.size()); }
};

NodeList build_node_list(const Selection& sel, const DispatchLayout& layout);

// m_t = Σ_n g_n o_{row_n}; m overwritten.
void weighted_sum_forward(const NodeList& nodes, const float* expert_out, int64_t d, float* m);
// d_expert_out[row] += g dm_t (overwrite semantics not needed), dgate[slot] += dm_t · o.
void weighted_sum_backward(const NodeList& nodes, const float* expert_out, int64_t d, const float* dm,
                           float* d_expert_out, float* dgate);

struct DagLevelWeights {
  const float* norm_weight;  // [d]
  const float* norm_bias;    // [d]
  const float* down;         // [dg, d]
  const float* edge;         // [dg, 2dg]
  const float* node;         // [dg, 2dg]
  const float* up;           // [d, dg]
};
struct DagLevelGrads {
  float* norm_weight;
  float* norm_bias;
  float* down;
  float* edge;
  float* node;
  float* up;
};
// Kept by the caller from step to step: the buffers keep their capacity, so a training loop
// does not fault in fresh pages for every step.
struct DagCache {
  std::vector<float> saved;            // dag_saved_floats(): the forward activations (layout in aggregate.cc)
  mutable std::vector<float> scratch;  // dag_backward_scratch_floats(): backward's temporaries
};
// Forward activations of every level: per level h^l, LN mean/rstd/output, a, pq, agg and the
// pair weights split in halves ([4dg, dg]); then Σ_j agg_j of the last level. h^L is never formed.
int64_t dag_saved_floats(int64_t tokens, int64_t nodes, int64_t d, int64_t dg, size_t levels);
int64_t dag_backward_scratch_floats(int64_t tokens, int64_t nodes, int64_t d, int64_t dg);
// DAG-MoE structural aggregation (METHODS.md §2.2); m overwritten.
void dag_forward(const NodeList& nodes, const float* expert_out, const float* u, int64_t d, int64_t dg,
                 DagEdges edges, std::span<const DagLevelWeights> levels, float* m, DagCache* cache);
void dag_backward(const NodeList& nodes, const float* expert_out, const float* u, int64_t d, int64_t dg,
                  DagEdges edges, std::span<const DagLevelWeights> levels, const DagCache& cache, const float* dm,
                  float* d_expert_out, float* dgate, float* du, std::span<const DagLevelGrads> grads);
// dag_forward / dag_backward on caller buffers of dag_saved_floats() and dag_backward_scratch_floats().
void dag_forward_buffers(const NodeList& nodes, const float* expert_out, const float* u, int64_t d, int64_t dg,
                         DagEdges edges, std::span<const DagLevelWeights> levels, float* m, float* saved);
void dag_backward_buffers(const NodeList& nodes, const float* expert_out, const float* u, int64_t d, int64_t dg,
                          DagEdges edges, std::span<const DagLevelWeights> levels, const float* saved, const float* dm,
                          float* d_expert_out, float* dgate, float* du, std::span<const DagLevelGrads> grads,
                          float* scratch);

// mix: coefficient — c = softmax(u W_cᵀ + b_c); m_out = c0·m + c1·s. coef: [n, 2] stored.
void coefficient_mix_forward(const float* u, int64_t n, int64_t d, const float* wc, const float* bc,
                             const float* m, const float* s, float* m_out, float* coef);
// Same, with caller scratch of 2n floats (the logits).
void coefficient_mix_forward(const float* u, int64_t n, int64_t d, const float* wc, const float* bc, const float* m,
                             const float* s, float* m_out, float* coef, float* scratch);
// dm_out → dm, ds (overwritten), du, dwc, dbc (accumulated).
void coefficient_mix_backward(const float* dm_out, const float* u, int64_t n, int64_t d, const float* wc,
                              const float* m, const float* s, const float* coef, float* dm, float* ds, float* du,
                              float* dwc, float* dbc);
// Same, with caller scratch of 2n floats.
void coefficient_mix_backward(const float* dm_out, const float* u, int64_t n, int64_t d, const float* wc,
                              const float* m, const float* s, const float* coef, float* dm, float* ds, float* du,
                              float* dwc, float* dbc, float* scratch);

// ---------- optimizer ----------

struct AdamWHyper {
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.0;
};
// One decoupled-weight-decay Adam update of n parameters; `step` is the 1-based number of this
// update (bias corrections 1 − βᵗ). Same float arithmetic as runtime's AdamW::step.
void adamw_step(float* param, const float* grad, float* exp_avg, float* exp_avg_sq, int64_t n, int64_t step,
                const AdamWHyper& hyper);

}  // namespace sy::cpu
