// The backend's operators as argument structs, one per op (forward and backward are separate
// ops), CUTLASS style: Backend::can_implement(args) → workspace_size(args) → run(args, workspace).
//
// Ownership: every pointer is the caller's and points to memory of the backend that runs the
// op (Backend::allocate), except where a field says "host". run() allocates nothing: scratch
// comes from `workspace` (workspace_size(args) bytes from the same backend's allocate(); null
// when the size is 0), and activations a backward op needs are a caller buffer (`saved`).
// Sizes and semantics (overwrite or += accumulate) are those of the sy::cpu function named on
// each struct (cpu_ops.h); the CPU backend calls exactly that function.
//
// Host ops: top-k selection, gates, capacity and expert allocation build or edit the host
// index structures (cpu::Selection, and with it DispatchLayout and NodeList via
// cpu::build_dispatch_layout / cpu::build_node_list). They run on the host, allocate host
// memory for those std::vectors, and only a host backend implements them. Ops that read a
// NodeList or Selection take it as a host pointer; a device backend would upload it into its
// workspace.
#pragma once

#include <cstdint>
#include <span>
#include <variant>

#include "switchyard/core/config.h"
#include "switchyard/kernels/cpu_ops.h"

namespace sy {

// ---------- dense ----------

struct AddInplaceArgs {  // cpu::add_inplace: y += x
  static constexpr const char* kName = "add_inplace";
  const float* x = nullptr;  // [n]
  int64_t n = 0;
  float* y = nullptr;  // [n]
};
struct LinearForwardArgs {  // cpu::linear_forward: y = x Wᵀ (y += with accumulate)
  static constexpr const char* kName = "linear_forward";
  const float* x = nullptr;  // [n, in]
  int64_t n = 0, in = 0, out = 0;
  const float* w = nullptr;  // [out, in]
  float* y = nullptr;        // [n, out]
  bool accumulate = false;
};
struct LinearBackwardInputArgs {  // cpu::linear_backward_input: dx += dy W (dx = dy W without accumulate)
  static constexpr const char* kName = "linear_backward_input";
  const float* dy = nullptr;  // [n, out]
  int64_t n = 0, out = 0, in = 0;
  const float* w = nullptr;  // [out, in]
  float* dx = nullptr;       // [n, in]
  bool accumulate = true;
};
struct LinearBackwardWeightArgs {  // cpu::linear_backward_weight: dW += dyᵀ x
  static constexpr const char* kName = "linear_backward_weight";
  const float* dy = nullptr;  // [n, out]
  const float* x = nullptr;   // [n, in]
  int64_t n = 0, out = 0, in = 0;
  float* dw = nullptr;  // [out, in]
};

// ---------- router ----------

struct SoftmaxForwardArgs {  // cpu::softmax_forward; p overwritten, lse optional
  static constexpr const char* kName = "softmax_forward";
  const float* z = nullptr;  // [n, e]
  int64_t n = 0, e = 0;
  float* p = nullptr;    // [n, e]
  float* lse = nullptr;  // [n] or null
};
struct SoftmaxBackwardArgs {  // cpu::softmax_backward; dz +=
  static constexpr const char* kName = "softmax_backward";
  const float* dp = nullptr;
  const float* p = nullptr;
  int64_t n = 0, e = 0;
  float* dz = nullptr;
};
struct SelectExpertsArgs {  // host op: cpu::select_experts into *selection
  static constexpr const char* kName = "select_experts";
  const float* p = nullptr;  // host [n, e]
  int64_t n = 0, e = 0;
  std::span<const int32_t> k_per_token;  // host [n]
  cpu::Selection* selection = nullptr;   // host, replaced
};
struct ComputeGatesArgs {  // host op: cpu::compute_gates
  static constexpr const char* kName = "compute_gates";
  const float* p = nullptr;  // host [tokens, experts]
  bool normalize = true;
  cpu::Selection* selection = nullptr;  // host, gates and denominators written
};
struct ApplyCapacityArgs {  // host op: cpu::apply_capacity
  static constexpr const char* kName = "apply_capacity";
  double capacity_factor = 0.0;
  cpu::Selection* selection = nullptr;  // host, kept/dropped written
};
struct GatesBackwardArgs {  // cpu::gates_backward; dp +=
  static constexpr const char* kName = "gates_backward";
  const float* p = nullptr;
  const cpu::Selection* selection = nullptr;  // host
  bool normalize = true;
  const float* dgate = nullptr;  // [slots]
  float* dp = nullptr;           // [tokens, experts]
};
struct LoadBalanceLossArgs {  // cpu::load_balance_loss; dp += (null: no gradient)
  static constexpr const char* kName = "load_balance_loss";
  const float* p = nullptr;
  const cpu::Selection* selection = nullptr;  // host
  double alpha = 0.0;
  float* dp = nullptr;
  double* loss = nullptr;  // host, written
};
struct ZLossArgs {  // cpu::z_loss; dz += (null: no gradient)
  static constexpr const char* kName = "z_loss";
  const float* p = nullptr;
  const float* lse = nullptr;
  int64_t n = 0, e = 0;
  double beta = 0.0;
  float* dz = nullptr;
  double* loss = nullptr;  // host, written
};

// ---------- DA-MoE dynamic allocation ----------

struct ImportanceArgs {  // cpu::importance_from_attention (throws on rows that are not distributions)
  static constexpr const char* kName = "importance_from_attention";
  const float* attention = nullptr;  // [b, h, l, l]
  int64_t b = 0, h = 0, l = 0;
  bool causal_correction = false;
  float* importance = nullptr;  // [b, l], overwritten
};
struct AllocateExpertsArgs {  // host op: cpu::allocate_experts
  static constexpr const char* kName = "allocate_experts";
  std::span<const float> importance;  // host [sequences, length]
  int64_t sequences = 0, length = 0;
  cpu::AllocationParams params;
  int32_t* k = nullptr;  // host [sequences, length], overwritten
};

// ---------- packing rows by expert ----------

struct GatherRowsArgs {  // pack, cpu::gather_rows: dst[r] = src[index[r]]
  static constexpr const char* kName = "gather_rows";
  const float* src = nullptr;
  int64_t d = 0;
  const int64_t* index = nullptr;  // [rows]
  int64_t rows = 0;
  float* dst = nullptr;  // [rows, d]
};
struct ScatterAddRowsArgs {  // unpack, cpu::scatter_add_rows: dst[index[r]] += src[r], indices distinct
  static constexpr const char* kName = "scatter_add_rows";
  const float* src = nullptr;  // [rows, d]
  int64_t d = 0;
  const int64_t* index = nullptr;  // [rows]
  int64_t rows = 0;
  float* dst = nullptr;
};

// ---------- expert FFN ----------

struct FfnForwardArgs {  // cpu::ffn_forward_buffers; out overwritten
  static constexpr const char* kName = "ffn_forward";
  const float* x = nullptr;  // [rows, d]
  int64_t rows = 0, d = 0, f = 0;
  Activation activation = Activation::swiglu;
  cpu::ExpertWeights w;  // gate null for gelu
  float* out = nullptr;  // [rows, d]
  // cpu::ffn_saved_floats(rows, f, activation) floats kept for FfnBackwardArgs, or null
  // (inference: the activations then live in the workspace).
  float* saved = nullptr;
};
struct FfnBackwardArgs {  // cpu::ffn_backward_buffers; dx += (may be null), grads +=
  static constexpr const char* kName = "ffn_backward";
  const float* dout = nullptr;
  const float* x = nullptr;
  int64_t rows = 0, d = 0, f = 0;
  Activation activation = Activation::swiglu;
  cpu::ExpertWeights w;
  const float* saved = nullptr;  // FfnForwardArgs::saved of the same rows
  float* dx = nullptr;
  cpu::ExpertGrads grads;
  // host: row counts summing to `rows`; the weight gradients are summed one product per
  // segment, in order (the grouping a caller must reproduce); empty: one segment.
  std::span<const int64_t> weight_segments{};
};

// ---------- aggregation ----------

struct WeightedSumForwardArgs {  // cpu::weighted_sum_forward; m overwritten
  static constexpr const char* kName = "weighted_sum_forward";
  const cpu::NodeList* nodes = nullptr;  // host
  const float* expert_out = nullptr;     // [rows, d]
  int64_t d = 0;
  float* m = nullptr;  // [tokens, d]
};
struct WeightedSumBackwardArgs {  // cpu::weighted_sum_backward; d_expert_out +=, dgate +=
  static constexpr const char* kName = "weighted_sum_backward";
  const cpu::NodeList* nodes = nullptr;  // host
  const float* expert_out = nullptr;
  int64_t d = 0;
  const float* dm = nullptr;
  float* d_expert_out = nullptr;
  float* dgate = nullptr;  // [slots]
};
struct DagForwardArgs {  // cpu::dag_forward_buffers; m overwritten
  static constexpr const char* kName = "dag_forward";
  const cpu::NodeList* nodes = nullptr;  // host
  const float* expert_out = nullptr;
  const float* u = nullptr;  // [tokens, d]
  int64_t d = 0, dg = 0;
  DagEdges edges = DagEdges::all;
  std::span<const cpu::DagLevelWeights> levels;  // host array of device pointers
  float* m = nullptr;
  // cpu::dag_saved_floats(tokens, nodes, d, dg, levels) floats for DagBackwardArgs, or null
  // (inference: workspace).
  float* saved = nullptr;
};
struct DagBackwardArgs {  // cpu::dag_backward_buffers; d_expert_out, dgate, du, grads +=
  static constexpr const char* kName = "dag_backward";
  const cpu::NodeList* nodes = nullptr;  // host
  const float* expert_out = nullptr;
  const float* u = nullptr;
  int64_t d = 0, dg = 0;
  DagEdges edges = DagEdges::all;
  std::span<const cpu::DagLevelWeights> levels;
  const float* saved = nullptr;  // DagForwardArgs::saved
  const float* dm = nullptr;
  float* d_expert_out = nullptr;
  float* dgate = nullptr;
  float* du = nullptr;
  std::span<const cpu::DagLevelGrads> grads;
};
struct CoefficientMixForwardArgs {  // cpu::coefficient_mix_forward; m_out, coef overwritten
  static constexpr const char* kName = "coefficient_mix_forward";
  const float* u = nullptr;
  int64_t n = 0, d = 0;
  const float* wc = nullptr;  // [2, d]
  const float* bc = nullptr;  // [2]
  const float* m = nullptr;
  const float* s = nullptr;
  float* m_out = nullptr;
  float* coef = nullptr;  // [n, 2]
};
struct CoefficientMixBackwardArgs {  // cpu::coefficient_mix_backward; dm, ds overwritten; du, dwc, dbc +=
  static constexpr const char* kName = "coefficient_mix_backward";
  const float* dm_out = nullptr;
  const float* u = nullptr;
  int64_t n = 0, d = 0;
  const float* wc = nullptr;
  const float* m = nullptr;
  const float* s = nullptr;
  const float* coef = nullptr;
  float *dm = nullptr, *ds = nullptr, *du = nullptr, *dwc = nullptr, *dbc = nullptr;
};

// ---------- norms ----------

struct RmsNormForwardArgs {  // cpu::rmsnorm_forward
  static constexpr const char* kName = "rmsnorm_forward";
  const float* x = nullptr;
  int64_t n = 0, d = 0;
  const float* w = nullptr;
  float* y = nullptr;
  float* rstd = nullptr;  // [n]
};
struct RmsNormBackwardArgs {  // cpu::rmsnorm_backward; dx +=, dw += (either may be null)
  static constexpr const char* kName = "rmsnorm_backward";
  const float* dy = nullptr;
  const float* x = nullptr;
  int64_t n = 0, d = 0;
  const float* w = nullptr;
  const float* rstd = nullptr;
  float* dx = nullptr;
  float* dw = nullptr;
};
struct LayerNormForwardArgs {  // cpu::layernorm_forward
  static constexpr const char* kName = "layernorm_forward";
  const float* x = nullptr;
  int64_t n = 0, d = 0;
  const float* gamma = nullptr;
  const float* beta = nullptr;
  float* y = nullptr;
  float* mean = nullptr;  // [n]
  float* rstd = nullptr;  // [n]
};
struct LayerNormBackwardArgs {  // cpu::layernorm_backward; dx, dgamma, dbeta += (each may be null)
  static constexpr const char* kName = "layernorm_backward";
  const float* dy = nullptr;
  const float* x = nullptr;
  int64_t n = 0, d = 0;
  const float* gamma = nullptr;
  const float* mean = nullptr;
  const float* rstd = nullptr;
  float* dx = nullptr;
  float* dgamma = nullptr;
  float* dbeta = nullptr;
};

// ---------- optimizer ----------

struct AdamWArgs {  // cpu::adamw_step: param, exp_avg, exp_avg_sq updated in place
  static constexpr const char* kName = "adamw";
  float* param = nullptr;
  const float* grad = nullptr;
  float* exp_avg = nullptr;
  float* exp_avg_sq = nullptr;
  int64_t n = 0;
  int64_t step = 1;  // 1-based number of this update
  cpu::AdamWHyper hyper;
};

// Any op; a backend dispatches on the alternative.
using OpArgs =
    std::variant<AddInplaceArgs, LinearForwardArgs, LinearBackwardInputArgs, LinearBackwardWeightArgs,
                 SoftmaxForwardArgs, SoftmaxBackwardArgs, SelectExpertsArgs, ComputeGatesArgs, ApplyCapacityArgs,
                 GatesBackwardArgs, LoadBalanceLossArgs, ZLossArgs, ImportanceArgs, AllocateExpertsArgs, GatherRowsArgs,
                 ScatterAddRowsArgs, FfnForwardArgs, FfnBackwardArgs, WeightedSumForwardArgs, WeightedSumBackwardArgs,
                 DagForwardArgs, DagBackwardArgs, CoefficientMixForwardArgs, CoefficientMixBackwardArgs,
                 RmsNormForwardArgs, RmsNormBackwardArgs, LayerNormForwardArgs, LayerNormBackwardArgs, AdamWArgs>;

inline const char* op_name(const OpArgs& args) {
  return std::visit([](const auto& a) { return std::decay_t<decltype(a)>::kName; }, args);
}

}  // namespace sy
