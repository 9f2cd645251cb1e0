// The CPU backend: host memory, and every op of ops.h by the sy::cpu function it names.
#include <cstdlib>
#include <cstring>
#include <new>

#include "switchyard/kernels/backend.h"

namespace sy {
namespace {

template <class T>
size_t bytes_of(int64_t count) {
  return static_cast<size_t>(count) * sizeof(T);
}

// ---- workspace per op (bytes); ops without scratch take the template ----

template <class Args>
size_t workspace(const Args&) {
  return 0;
}
size_t workspace(const LoadBalanceLossArgs& a) { return a.selection ? bytes_of<double>(2 * a.selection->experts) : 0; }
size_t workspace(const ImportanceArgs& a) { return bytes_of<double>(a.b * a.l); }
size_t workspace(const FfnForwardArgs& a) {
  return a.saved ? 0 : bytes_of<float>(cpu::ffn_saved_floats(a.rows, a.f, a.activation));
}
size_t workspace(const FfnBackwardArgs& a) {
  return bytes_of<float>(cpu::ffn_backward_scratch_floats(a.rows, a.f, a.activation));
}
size_t workspace(const DagForwardArgs& a) {
  return a.saved
             ? 0
             : bytes_of<float>(cpu::dag_saved_floats(a.nodes->tokens(), a.nodes->nodes(), a.d, a.dg, a.levels.size()));
}
size_t workspace(const DagBackwardArgs& a) {
  return bytes_of<float>(cpu::dag_backward_scratch_floats(a.nodes->tokens(), a.nodes->nodes(), a.d, a.dg));
}
size_t workspace(const CoefficientMixForwardArgs& a) { return bytes_of<float>(2 * a.n); }
size_t workspace(const CoefficientMixBackwardArgs& a) { return bytes_of<float>(2 * a.n); }

// ---- run per op ----

float* floats(void* ws) { return static_cast<float*>(ws); }

void exec(const AddInplaceArgs& a, void*) { cpu::add_inplace(a.x, a.n, a.y); }
void exec(const LinearForwardArgs& a, void*) { cpu::linear_forward(a.x, a.n, a.in, a.w, a.out, a.y, a.accumulate); }
void exec(const LinearBackwardInputArgs& a, void*) {
  cpu::linear_backward_input(a.dy, a.n, a.out, a.w, a.in, a.dx, a.accumulate);
}
void exec(const LinearBackwardWeightArgs& a, void*) { cpu::linear_backward_weight(a.dy, a.n, a.out, a.x, a.in, a.dw); }
void exec(const SoftmaxForwardArgs& a, void*) { cpu::softmax_forward(a.z, a.n, a.e, a.p, a.lse); }
void exec(const SoftmaxBackwardArgs& a, void*) { cpu::softmax_backward(a.dp, a.p, a.n, a.e, a.dz); }
void exec(const SelectExpertsArgs& a, void*) { *a.selection = cpu::select_experts(a.p, a.n, a.e, a.k_per_token); }
void exec(const ComputeGatesArgs& a, void*) { cpu::compute_gates(a.p, a.normalize, *a.selection); }
void exec(const ApplyCapacityArgs& a, void*) { cpu::apply_capacity(a.capacity_factor, *a.selection); }
void exec(const GatesBackwardArgs& a, void*) { cpu::gates_backward(a.p, *a.selection, a.normalize, a.dgate, a.dp); }
void exec(const LoadBalanceLossArgs& a, void* ws) {
  const double loss = cpu::load_balance_loss(a.p, *a.selection, a.alpha, a.dp, static_cast<double*>(ws));
  if (a.loss) *a.loss = loss;
}
void exec(const ZLossArgs& a, void*) {
  const double loss = cpu::z_loss(a.p, a.lse, a.n, a.e, a.beta, a.dz);
  if (a.loss) *a.loss = loss;
}
void exec(const ImportanceArgs& a, void* ws) {
  cpu::importance_from_attention(a.attention, a.b, a.h, a.l, a.causal_correction, a.importance,
                                 static_cast<double*>(ws));
}
void exec(const AllocateExpertsArgs& a, void*) {
  const std::vector<int32_t> k = cpu::allocate_experts(a.importance, a.sequences, a.length, a.params);
  if (!k.empty()) std::memcpy(a.k, k.data(), k.size() * sizeof(int32_t));
}
void exec(const GatherRowsArgs& a, void*) {
  cpu::gather_rows(a.src, a.d, {a.index, static_cast<size_t>(a.rows)}, a.dst);
}
void exec(const ScatterAddRowsArgs& a, void*) {
  cpu::scatter_add_rows(a.src, a.d, {a.index, static_cast<size_t>(a.rows)}, a.dst);
}
void exec(const FfnForwardArgs& a, void* ws) {
  cpu::ffn_forward_buffers(a.x, a.rows, a.d, a.f, a.activation, a.w, a.out, a.saved ? a.saved : floats(ws));
}
void exec(const FfnBackwardArgs& a, void* ws) {
  cpu::ffn_backward_buffers(a.dout, a.x, a.rows, a.d, a.f, a.activation, a.w, a.saved, a.dx, a.grads, floats(ws),
                            a.weight_segments);
}
void exec(const WeightedSumForwardArgs& a, void*) { cpu::weighted_sum_forward(*a.nodes, a.expert_out, a.d, a.m); }
void exec(const WeightedSumBackwardArgs& a, void*) {
  cpu::weighted_sum_backward(*a.nodes, a.expert_out, a.d, a.dm, a.d_expert_out, a.dgate);
}
void exec(const DagForwardArgs& a, void* ws) {
  cpu::dag_forward_buffers(*a.nodes, a.expert_out, a.u, a.d, a.dg, a.edges, a.levels, a.m,
                           a.saved ? a.saved : floats(ws));
}
void exec(const DagBackwardArgs& a, void* ws) {
  cpu::dag_backward_buffers(*a.nodes, a.expert_out, a.u, a.d, a.dg, a.edges, a.levels, a.saved, a.dm, a.d_expert_out,
                            a.dgate, a.du, a.grads, floats(ws));
}
void exec(const CoefficientMixForwardArgs& a, void* ws) {
  cpu::coefficient_mix_forward(a.u, a.n, a.d, a.wc, a.bc, a.m, a.s, a.m_out, a.coef, floats(ws));
}
void exec(const CoefficientMixBackwardArgs& a, void* ws) {
  cpu::coefficient_mix_backward(a.dm_out, a.u, a.n, a.d, a.wc, a.m, a.s, a.coef, a.dm, a.ds, a.du, a.dwc, a.dbc,
                                floats(ws));
}
void exec(const RmsNormForwardArgs& a, void*) { cpu::rmsnorm_forward(a.x, a.n, a.d, a.w, a.y, a.rstd); }
void exec(const RmsNormBackwardArgs& a, void*) { cpu::rmsnorm_backward(a.dy, a.x, a.n, a.d, a.w, a.rstd, a.dx, a.dw); }
void exec(const LayerNormForwardArgs& a, void*) {
  cpu::layernorm_forward(a.x, a.n, a.d, a.gamma, a.beta, a.y, a.mean, a.rstd);
}
void exec(const LayerNormBackwardArgs& a, void*) {
  cpu::layernorm_backward(a.dy, a.x, a.n, a.d, a.gamma, a.mean, a.rstd, a.dx, a.dgamma, a.dbeta);
}
void exec(const AdamWArgs& a, void*) {
  cpu::adamw_step(a.param, a.grad, a.exp_avg, a.exp_avg_sq, a.n, a.step, a.hyper);
}

class CpuBackend final : public Backend {
 public:
  std::string name() const override { return "cpu"; }
  Device device() const override { return Device::cpu; }
  void* allocate(size_t bytes) override {
    void* p = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
    if (!p && bytes) throw std::bad_alloc();
    return p;
  }
  void release(void* ptr) override { std::free(ptr); }
  void copy_from_host(void* dst, const void* src, size_t bytes) override {
    if (bytes) std::memcpy(dst, src, bytes);
  }
  void copy_to_host(void* dst, const void* src, size_t bytes) override {
    if (bytes) std::memcpy(dst, src, bytes);
  }
  void synchronize() override {}

  // The reference: every op.
  bool can_implement(const OpArgs&) const override { return true; }
  size_t workspace_size(const OpArgs& args) const override {
    return std::visit([](const auto& a) { return workspace(a); }, args);
  }
  void run(const OpArgs& args, void* ws) override {
    std::visit([ws](const auto& a) { exec(a, ws); }, args);
  }
};

}  // namespace

Backend& cpu_backend() {
  static CpuBackend backend;
  return backend;
}

}  // namespace sy
