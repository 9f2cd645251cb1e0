// Every op of ops.h on every compiled backend, ggml test-backend-ops style: ONE table of op
// cases below. Two modes, each one ctest entry per (backend, op):
//
//   BackendOps/Compare.Op/<backend>_<op>: the op on that backend against the same op on the
//     CPU backend (the reference) with the row's tolerance. On the CPU backend itself the
//     tolerance is 0: two runs must agree bit for bit (the ops are deterministic).
//   BackendOps/Grad.Op/<backend>_<op>: every backward op on that backend against central
//     finite differences of the CPU forward op, loss Σ G ⊙ forward(inputs) in double.
//
// A backend compiled but without a device here, or an op the backend cannot implement,
// is reported as skipped (GTEST_SKIP), never as passed.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "../support/fd.h"
#include "../support/random.h"
#include "switchyard/kernels/backend.h"

namespace sy {
namespace {

using testing::expect_gradients_close;
using testing::randn;

// Named outputs of one run, as doubles.
using Outputs = std::vector<std::pair<std::string, std::vector<double>>>;

struct Unsupported {
  std::string op;
};

// One backend run: uploads inputs, owns every buffer (and workspace) until the end of the run.
class Device {
 public:
  explicit Device(Backend& b) : b_(b) {}
  Device(const Device&) = delete;
  Device& operator=(const Device&) = delete;
  ~Device() {
    for (void* p : owned_) b_.release(p);
  }
  template <class T>
  T* put(const std::vector<T>& host) {
    T* p = static_cast<T*>(alloc(host.size() * sizeof(T)));
    b_.copy_from_host(p, host.data(), host.size() * sizeof(T));
    return p;
  }
  float* zeros(int64_t n) { return put(std::vector<float>(static_cast<size_t>(n), 0.0f)); }
  std::vector<double> get(const float* p, int64_t n) {
    std::vector<float> h(static_cast<size_t>(n));
    b_.synchronize();
    b_.copy_to_host(h.data(), p, h.size() * sizeof(float));
    return {h.begin(), h.end()};
  }
  // can_implement → workspace_size → run; the workspace lives until the end of the run.
  void run(const OpArgs& args) {
    if (!b_.can_implement(args)) throw Unsupported{op_name(args)};
    const size_t bytes = b_.workspace_size(args);
    b_.run(args, bytes ? alloc(bytes) : nullptr);
    b_.synchronize();
  }

 private:
  void* alloc(size_t bytes) {
    void* p = b_.allocate(bytes);
    owned_.push_back(p);
    return p;
  }
  Backend& b_;
  std::vector<void*> owned_;
};

template <class T>
std::vector<double> to_d(const std::vector<T>& v) {
  return {v.begin(), v.end()};
}
double dot(const std::vector<double>& a, const std::vector<float>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// Sizes of one case; each op reads the fields it needs.
struct Shape {
  const char* label = "";
  int64_t n = 0;  // tokens / rows
  int64_t e = 4;  // experts
  int64_t k = 2;  // experts per token
  int64_t d = 4;  // model width
  int64_t f = 3;  // FFN hidden size; DAG width dg
  double cf = 0;  // capacity factor (0: no drops)
  int levels = 1;
  bool normalize = true;  // gates
  bool causal = false;    // DAG edges, importance correction
  Activation act = Activation::swiglu;
  int64_t segments = 0;  // FFN backward: weight gradients summed over this many row segments (0: one)
  bool fd = true;  // false: too large for finite differences, compare mode only
};

// A backward op as a differentiable problem: `backward` runs the op (and the forward it needs)
// on a backend and returns "d" + name for every input in `wrt`; `loss` is Σ G ⊙ forward(wrt) on
// the CPU backend's forward op. `state` keeps the inputs that wrt points into alive.
struct GradProblem {
  std::vector<std::pair<std::string, std::vector<float>*>> wrt;
  std::function<double()> loss;
  std::function<Outputs(Device&)> backward;
  std::shared_ptr<void> state;
};

struct OpCase {
  const char* op;  // ops.h kName
  std::vector<Shape> shapes;
  // max |backend − cpu| <= tol · max(1, max |cpu|), per output. FP32 on a device: 1e-6 where the
  // device sums in the CPU's order or in double (element-wise ops, the losses), 1e-5 where a
  // float reduction runs in another order (GEMMs, row norms, dot products), 1e-4 for the FFN.
  double tol;
  std::function<Outputs(Device&, const Shape&)> forward;  // forward, host and optimizer ops
  std::function<GradProblem(const Shape&)> backward;      // backward ops
};

// ---------- shared set-up: routing on the host ----------

struct Routing {
  std::vector<float> p, lse;
  cpu::Selection sel;
  cpu::DispatchLayout layout;
  cpu::NodeList nodes;
};
Routing route(const Shape& s, uint32_t seed) {
  Routing r;
  const auto z = randn(static_cast<size_t>(s.n * s.e), seed, 2.0f);
  r.p.resize(z.size());
  r.lse.resize(static_cast<size_t>(s.n));
  cpu::softmax_forward(z.data(), s.n, s.e, r.p.data(), r.lse.data());
  r.sel = cpu::select_experts(r.p.data(), s.n, s.e, std::vector<int32_t>(static_cast<size_t>(s.n), s.k));
  cpu::compute_gates(r.p.data(), s.normalize, r.sel);
  cpu::apply_capacity(s.cf, r.sel);
  r.layout = cpu::build_dispatch_layout(r.sel);
  r.nodes = cpu::build_node_list(r.sel, r.layout);
  return r;
}
// Node gates from per-slot gates (what the gradient dgate is indexed by).
cpu::NodeList with_gates(cpu::NodeList nodes, const std::vector<float>& gate_by_slot) {
  for (size_t j = 0; j < nodes.gate.size(); ++j) nodes.gate[j] = gate_by_slot[static_cast<size_t>(nodes.slot[j])];
  return nodes;
}
Outputs selection_outputs(const cpu::Selection& s) {
  return {{"offsets", to_d(s.offsets)}, {"expert", to_d(s.expert)}, {"gate", to_d(s.gate)},
          {"kept", to_d(s.kept)},       {"denom", to_d(s.denom)},   {"dropped", {static_cast<double>(s.dropped)}}};
}

// DAG level parameters, host side, named l<level>.<tensor>.
struct DagParams {
  static constexpr const char* kNames[6] = {"norm_weight", "norm_bias", "down", "edge", "node", "up"};
  std::vector<std::vector<float>> w;  // 6 per level
  DagParams(const Shape& s, uint32_t seed) {
    const int64_t d = s.d, dg = s.f;
    for (int l = 0; l < s.levels; ++l) {
      const int64_t sizes[6] = {d, d, dg * d, 2 * dg * dg, 2 * dg * dg, d * dg};
      for (int i = 0; i < 6; ++i) {
        auto v = randn(static_cast<size_t>(sizes[i]), seed + static_cast<uint32_t>(10 * l + i), i == 0 ? 0.1f : 0.4f);
        if (i == 0)
          for (float& x : v) x += 1.0f;
        w.push_back(std::move(v));
      }
    }
  }
  std::vector<cpu::DagLevelWeights> upload(Device& dev) const {
    std::vector<cpu::DagLevelWeights> out;
    for (size_t l = 0; l * 6 < w.size(); ++l) {
      const auto* v = &w[l * 6];
      out.push_back({dev.put(v[0]), dev.put(v[1]), dev.put(v[2]), dev.put(v[3]), dev.put(v[4]), dev.put(v[5])});
    }
    return out;
  }
  std::string name(size_t i) const { return "l" + std::to_string(i / 6) + "." + kNames[i % 6]; }
};

// ---------- the table ----------

const std::vector<Shape> kRouted = {
    {.label = "top2", .n = 9, .e = 4, .k = 2, .d = 6, .f = 5, .levels = 2},
    {.label = "drops_and_empty_experts", .n = 5, .e = 8, .k = 2, .d = 4, .f = 3, .cf = 0.6, .levels = 1},
    {.label = "no_tokens", .n = 0, .e = 4, .k = 2, .d = 4, .f = 3, .levels = 2},
};

std::vector<OpCase> make_table() {
  std::vector<OpCase> t;

  // ----- dense (in = d, out = f) -----
  t.push_back({"add_inplace",
               {{.label = "large", .n = 10000}, {.label = "one", .n = 1}, {.label = "empty", .n = 0}},
               1e-6,
               [](Device& dev, const Shape& s) {
                 float* y = dev.put(randn(static_cast<size_t>(s.n), 78));
                 dev.run(AddInplaceArgs{.x = dev.put(randn(static_cast<size_t>(s.n), 79)), .n = s.n, .y = y});
                 return Outputs{{"y", dev.get(y, s.n)}};
               },
               {}});
  const std::vector<Shape> linear_shapes = {{.label = "small", .n = 5, .d = 4, .f = 3},
                                            {.label = "large", .n = 200, .d = 64, .f = 48, .fd = false},
                                            {.label = "no_rows", .n = 0, .d = 4, .f = 3}};
  t.push_back(
      {"linear_forward",
       linear_shapes,
       1e-5,
       [](Device& dev, const Shape& s) {
         const float* x = dev.put(randn(static_cast<size_t>(s.n * s.d), 80));
         const float* w = dev.put(randn(static_cast<size_t>(s.f * s.d), 81));
         float *y = dev.zeros(s.n * s.f), *y_acc = dev.put(randn(static_cast<size_t>(s.n * s.f), 82));
         dev.run(LinearForwardArgs{.x = x, .n = s.n, .in = s.d, .out = s.f, .w = w, .y = y});
         dev.run(LinearForwardArgs{.x = x, .n = s.n, .in = s.d, .out = s.f, .w = w, .y = y_acc, .accumulate = true});
         return Outputs{{"y", dev.get(y, s.n * s.f)}, {"y_accumulated", dev.get(y_acc, s.n * s.f)}};
       },
       {}});
  // Σ G ⊙ (x Wᵀ) on the CPU backend's linear_forward.
  struct LinearSt {
    std::vector<float> x, w, G;
  };
  auto linear_state = [](const Shape& s) {
    return std::make_shared<LinearSt>(LinearSt{randn(static_cast<size_t>(s.n * s.d), 83),
                                               randn(static_cast<size_t>(s.f * s.d), 84),
                                               randn(static_cast<size_t>(s.n * s.f), 85)});
  };
  auto linear_loss = [](std::shared_ptr<LinearSt> st, const Shape& s) {
    return [st, s] {
      Device cpu(cpu_backend());
      float* y = cpu.zeros(s.n * s.f);
      cpu.run(LinearForwardArgs{.x = cpu.put(st->x), .n = s.n, .in = s.d, .out = s.f, .w = cpu.put(st->w), .y = y});
      return dot(cpu.get(y, s.n * s.f), st->G);
    };
  };
  t.push_back({"linear_backward_input", linear_shapes, 1e-5, {}, [=](const Shape& s) {
                 auto st = linear_state(s);
                 GradProblem g;
                 g.wrt = {{"x", &st->x}};
                 g.loss = linear_loss(st, s);
                 g.backward = [st, s](Device& dev) {
                   float *dx = dev.zeros(s.n * s.d), *dx_over = dev.put(randn(static_cast<size_t>(s.n * s.d), 86));
                   const float *dy = dev.put(st->G), *w = dev.put(st->w);
                   dev.run(LinearBackwardInputArgs{.dy = dy, .n = s.n, .out = s.f, .in = s.d, .w = w, .dx = dx});
                   dev.run(LinearBackwardInputArgs{
                       .dy = dy, .n = s.n, .out = s.f, .in = s.d, .w = w, .dx = dx_over, .accumulate = false});
                   return Outputs{{"dx", dev.get(dx, s.n * s.d)}, {"dx_overwritten", dev.get(dx_over, s.n * s.d)}};
                 };
                 g.state = st;
                 return g;
               }});
  t.push_back({"linear_backward_weight", linear_shapes, 1e-5, {}, [=](const Shape& s) {
                 auto st = linear_state(s);
                 GradProblem g;
                 g.wrt = {{"w", &st->w}};
                 g.loss = linear_loss(st, s);
                 g.backward = [st, s](Device& dev) {
                   float* dw = dev.zeros(s.f * s.d);
                   dev.run(LinearBackwardWeightArgs{
                       .dy = dev.put(st->G), .x = dev.put(st->x), .n = s.n, .out = s.f, .in = s.d, .dw = dw});
                   return Outputs{{"dw", dev.get(dw, s.f * s.d)}};
                 };
                 g.state = st;
                 return g;
               }});

  // ----- router -----
  t.push_back({"softmax_forward",
               {{.label = "wide", .n = 333, .e = 16}, {.label = "one", .n = 1, .e = 1}, {.label = "empty", .n = 0}},
               1e-5,
               [](Device& dev, const Shape& s) {
                 const auto z = randn(static_cast<size_t>(s.n * s.e), 1, 3.0f);
                 float* p = dev.zeros(s.n * s.e);
                 float* lse = dev.zeros(s.n);
                 dev.run(SoftmaxForwardArgs{.z = dev.put(z), .n = s.n, .e = s.e, .p = p, .lse = lse});
                 return Outputs{{"p", dev.get(p, s.n * s.e)}, {"lse", dev.get(lse, s.n)}};
               },
               {}});
  t.push_back({"softmax_backward",
               {{.label = "small", .n = 4, .e = 6}, {.label = "wide", .n = 200, .e = 16, .fd = false}, {.n = 0}},
               1e-5,
               {},
               [](const Shape& s) {
                 struct St {
                   std::vector<float> z, G;
                 };
                 auto st = std::make_shared<St>(
                     St{randn(static_cast<size_t>(s.n * s.e), 2, 3.0f), randn(static_cast<size_t>(s.n * s.e), 3)});
                 GradProblem g;
                 g.wrt = {{"z", &st->z}};
                 g.loss = [st, s] {
                   Device cpu(cpu_backend());
                   float* p = cpu.zeros(s.n * s.e);
                   cpu.run(SoftmaxForwardArgs{.z = st->z.data(), .n = s.n, .e = s.e, .p = p});
                   return dot(cpu.get(p, s.n * s.e), st->G);
                 };
                 g.backward = [st, s](Device& dev) {
                   float* p = dev.zeros(s.n * s.e);
                   float* dz = dev.zeros(s.n * s.e);
                   dev.run(SoftmaxForwardArgs{.z = dev.put(st->z), .n = s.n, .e = s.e, .p = p});
                   dev.run(SoftmaxBackwardArgs{.dp = dev.put(st->G), .p = p, .n = s.n, .e = s.e, .dz = dz});
                   return Outputs{{"dz", dev.get(dz, s.n * s.e)}};
                 };
                 g.state = st;
                 return g;
               }});
  t.push_back({"select_experts",
               kRouted,
               0.0,
               [](Device& dev, const Shape& s) {
                 const Routing r = route(s, 4);
                 std::vector<int32_t> k(static_cast<size_t>(s.n));
                 for (int64_t i = 0; i < s.n; ++i) k[static_cast<size_t>(i)] = static_cast<int32_t>(1 + i % s.k);
                 cpu::Selection sel;
                 dev.run(SelectExpertsArgs{.p = r.p.data(), .n = s.n, .e = s.e, .k_per_token = k, .selection = &sel});
                 return selection_outputs(sel);
               },
               {}});
  t.push_back({"compute_gates",
               kRouted,
               0.0,
               [](Device& dev, const Shape& s) {
                 Routing r = route(s, 5);
                 dev.run(ComputeGatesArgs{.p = r.p.data(), .normalize = s.normalize, .selection = &r.sel});
                 return selection_outputs(r.sel);
               },
               {}});
  t.push_back({"apply_capacity",
               kRouted,
               0.0,
               [](Device& dev, const Shape& s) {
                 Routing r = route(s, 6);
                 dev.run(ApplyCapacityArgs{.capacity_factor = 0.7, .selection = &r.sel});
                 return selection_outputs(r.sel);
               },
               {}});
  auto gates_shapes = kRouted;
  gates_shapes.push_back({.label = "unnormalized_drops", .n = 6, .e = 5, .k = 2, .cf = 0.8, .normalize = false});
  t.push_back({"gates_backward", gates_shapes, 1e-6, {}, [](const Shape& s) {
                 struct St {
                   Routing r;
                   std::vector<float> G;
                 };
                 auto st = std::make_shared<St>();
                 st->r = route(s, 7);
                 st->G = randn(static_cast<size_t>(st->r.sel.slots()), 8);
                 for (size_t j = 0; j < st->G.size(); ++j)
                   if (!st->r.sel.kept[j]) st->G[j] = 0;  // a dropped slot contributes nothing
                 GradProblem g;
                 g.wrt = {{"p", &st->r.p}};
                 g.loss = [st, s] {
                   cpu::Selection sel = st->r.sel;  // the selection held fixed
                   Device cpu(cpu_backend());
                   cpu.run(ComputeGatesArgs{.p = st->r.p.data(), .normalize = s.normalize, .selection = &sel});
                   double l = 0;
                   for (size_t j = 0; j < sel.gate.size(); ++j) l += static_cast<double>(st->G[j]) * sel.gate[j];
                   return l;
                 };
                 g.backward = [st, s](Device& dev) {
                   float* dp = dev.zeros(s.n * s.e);
                   dev.run(GatesBackwardArgs{.p = dev.put(st->r.p),
                                             .selection = &st->r.sel,
                                             .normalize = s.normalize,
                                             .dgate = dev.put(st->G),
                                             .dp = dp});
                   return Outputs{{"dp", dev.get(dp, s.n * s.e)}};
                 };
                 g.state = st;
                 return g;
               }});
  t.push_back({"load_balance_loss", kRouted, 1e-6, {}, [](const Shape& s) {
                 auto st = std::make_shared<Routing>(route(s, 9));
                 GradProblem g;
                 g.wrt = {{"p", &st->p}};
                 g.loss = [st] {
                   double loss = 0;
                   Device cpu(cpu_backend());
                   cpu.run(LoadBalanceLossArgs{.p = st->p.data(), .selection = &st->sel, .alpha = 0.3, .loss = &loss});
                   return loss;
                 };
                 g.backward = [st, s](Device& dev) {
                   double loss = 0;
                   float* dp = dev.zeros(s.n * s.e);
                   dev.run(LoadBalanceLossArgs{
                       .p = dev.put(st->p), .selection = &st->sel, .alpha = 0.3, .dp = dp, .loss = &loss});
                   return Outputs{{"dp", dev.get(dp, s.n * s.e)}, {"loss", {loss}}};
                 };
                 g.state = st;
                 return g;
               }});
  t.push_back({"z_loss", {{.label = "small", .n = 5, .e = 6}, {.n = 0}}, 1e-6, {}, [](const Shape& s) {
                 auto st = std::make_shared<std::vector<float>>(randn(static_cast<size_t>(s.n * s.e), 10, 2.0f));
                 // lse and p from the softmax forward, then the z-loss (its gradient is with respect to z).
                 auto run = [st, s](Device& dev, bool grad) {
                   double loss = 0;
                   float* p = dev.zeros(s.n * s.e);
                   float* lse = dev.zeros(s.n);
                   float* dz = grad ? dev.zeros(s.n * s.e) : nullptr;
                   dev.run(SoftmaxForwardArgs{.z = dev.put(*st), .n = s.n, .e = s.e, .p = p, .lse = lse});
                   dev.run(ZLossArgs{.p = p, .lse = lse, .n = s.n, .e = s.e, .beta = 0.05, .dz = dz, .loss = &loss});
                   Outputs o{{"loss", {loss}}};
                   if (grad) o.push_back({"dz", dev.get(dz, s.n * s.e)});
                   return o;
                 };
                 GradProblem g;
                 g.wrt = {{"z", st.get()}};
                 g.loss = [run] {
                   Device cpu(cpu_backend());
                   return run(cpu, false)[0].second[0];
                 };
                 g.backward = [run](Device& dev) { return run(dev, true); };
                 g.state = st;
                 return g;
               }});

  // ----- dynamic allocation -----
  t.push_back(
      {"importance_from_attention",
       {{.label = "causal", .n = 5, .e = 3, .k = 2, .causal = true}, {.label = "plain", .n = 7, .e = 1, .k = 3}},
       1e-6,
       [](Device& dev, const Shape& s) {
         const int64_t B = s.k, H = s.e, L = s.n;  // sequences, heads, length
         std::mt19937 gen(11);
         std::uniform_real_distribution<float> uni(0.1f, 1.0f);
         std::vector<float> a(static_cast<size_t>(B * H * L * L), 0.0f);
         for (int64_t row = 0; row < B * H * L; ++row) {
           const int64_t q = row % L;
           float sum = 0;
           for (int64_t c = 0; c <= q; ++c) sum += (a[static_cast<size_t>(row * L + c)] = uni(gen));
           for (int64_t c = 0; c <= q; ++c) a[static_cast<size_t>(row * L + c)] /= sum;
         }
         float* imp = dev.zeros(B * L);
         dev.run(ImportanceArgs{
             .attention = dev.put(a), .b = B, .h = H, .l = L, .causal_correction = s.causal, .importance = imp});
         return Outputs{{"importance", dev.get(imp, B * L)}};
       },
       {}});
  t.push_back({"allocate_experts",
               {{.label = "exact", .n = 37, .e = 3, .k = 2}, {.label = "one_token", .n = 1, .e = 1, .k = 1}},
               0.0,
               [](Device& dev, const Shape& s) {
                 std::mt19937 gen(12);
                 std::exponential_distribution<float> expo(1.0f);
                 std::vector<float> imp(static_cast<size_t>(s.e * s.n));
                 for (float& v : imp) v = expo(gen);
                 imp[0] = 0.0f;  // a token nobody attends to
                 std::vector<int32_t> k(imp.size());
                 dev.run(AllocateExpertsArgs{.importance = imp,
                                             .sequences = s.e,
                                             .length = s.n,
                                             .params = {.k_avg = 2.0, .k_min = 1, .k_max = 4, .budget = Budget::exact},
                                             .k = k.data()});
                 return Outputs{{"k", to_d(k)}};
               },
               {}});

  // ----- pack / unpack -----
  t.push_back({"gather_rows",
               kRouted,
               0.0,
               [](Device& dev, const Shape& s) {
                 const Routing r = route(s, 13);
                 const auto x = randn(static_cast<size_t>(s.n * s.d), 14);
                 const int64_t rows = r.layout.rows();
                 float* packed = dev.zeros(rows * s.d);
                 dev.run(GatherRowsArgs{
                     .src = dev.put(x), .d = s.d, .index = dev.put(r.layout.token), .rows = rows, .dst = packed});
                 return Outputs{{"packed", dev.get(packed, rows * s.d)}};
               },
               {}});
  // Unpack is the backward of pack: one scatter per expert (tokens are distinct within one).
  t.push_back(
      {"scatter_add_rows", kRouted, 1e-6, {}, [](const Shape& s) {
         struct St {
           Routing r;
           std::vector<float> x, G;
         };
         auto st = std::make_shared<St>();
         st->r = route(s, 15);
         st->x = randn(static_cast<size_t>(s.n * s.d), 16);
         st->G = randn(static_cast<size_t>(st->r.layout.rows() * s.d), 17);
         GradProblem g;
         g.wrt = {{"x", &st->x}};
         g.loss = [st, s] {
           Device cpu(cpu_backend());
           const int64_t rows = st->r.layout.rows();
           float* packed = cpu.zeros(rows * s.d);
           cpu.run(GatherRowsArgs{
               .src = st->x.data(), .d = s.d, .index = st->r.layout.token.data(), .rows = rows, .dst = packed});
           return dot(cpu.get(packed, rows * s.d), st->G);
         };
         g.backward = [st, s](Device& dev) {
           float* dx = dev.zeros(s.n * s.d);
           const float* G = dev.put(st->G);
           const int64_t* token = dev.put(st->r.layout.token);
           for (int64_t i = 0; i < s.e; ++i) {
             const int64_t b = st->r.layout.expert_offsets[static_cast<size_t>(i)];
             dev.run(ScatterAddRowsArgs{
                 .src = G + b * s.d, .d = s.d, .index = token + b, .rows = st->r.layout.expert_rows(i), .dst = dx});
           }
           return Outputs{{"dx", dev.get(dx, s.n * s.d)}};
         };
         g.state = st;
         return g;
       }});

  // ----- expert FFN -----
  std::vector<Shape> ffn_fwd;
  for (Activation act : {Activation::swiglu, Activation::gelu})
    for (int64_t rows : {0, 1, 37, 300}) ffn_fwd.push_back({.label = "", .n = rows, .d = 96, .f = 160, .act = act});
  t.push_back(
      {"ffn_forward",
       ffn_fwd,
       1e-4,
       [](Device& dev, const Shape& s) {
         const bool swiglu = s.act == Activation::swiglu;
         const auto x = randn(static_cast<size_t>(s.n * s.d), 18), wg = randn(static_cast<size_t>(s.f * s.d), 19, 0.1f),
                    wu = randn(static_cast<size_t>(s.f * s.d), 20, 0.1f),
                    wd = randn(static_cast<size_t>(s.d * s.f), 21, 0.1f);
         const cpu::ExpertWeights w{swiglu ? dev.put(wg) : nullptr, dev.put(wu), dev.put(wd)};
         const float* xd = dev.put(x);
         const int64_t saved_n = cpu::ffn_saved_floats(s.n, s.f, s.act);
         float *out = dev.zeros(s.n * s.d), *out2 = dev.zeros(s.n * s.d), *saved = dev.zeros(saved_n);
         // Inference (activations in the workspace) and training (kept in `saved`).
         dev.run(FfnForwardArgs{.x = xd, .rows = s.n, .d = s.d, .f = s.f, .activation = s.act, .w = w, .out = out});
         dev.run(FfnForwardArgs{
             .x = xd, .rows = s.n, .d = s.d, .f = s.f, .activation = s.act, .w = w, .out = out2, .saved = saved});
         return Outputs{{"out", dev.get(out, s.n * s.d)},
                        {"out_training", dev.get(out2, s.n * s.d)},
                        {"saved", dev.get(saved, saved_n)}};
       },
       {}});
  std::vector<Shape> ffn_bwd;
  for (Activation act : {Activation::swiglu, Activation::gelu}) {
    ffn_bwd.push_back({.label = "small", .n = 5, .d = 6, .f = 8, .act = act});
    ffn_bwd.push_back({.label = "no_rows", .n = 0, .d = 6, .f = 8, .act = act});
    ffn_bwd.push_back({.label = "large", .n = 200, .d = 32, .f = 48, .act = act, .fd = false});
    ffn_bwd.push_back({.label = "small_segmented", .n = 5, .d = 6, .f = 8, .act = act, .segments = 3});
    ffn_bwd.push_back({.label = "large_segmented", .n = 200, .d = 32, .f = 48, .act = act, .segments = 3, .fd = false});
  }
  t.push_back(
      {"ffn_backward", ffn_bwd, 1e-4, {}, [](const Shape& s) {
         struct St {
           std::vector<float> x, w_gate, w_up, w_down, G;
         };
         auto st = std::make_shared<St>(
             St{randn(static_cast<size_t>(s.n * s.d), 22), randn(static_cast<size_t>(s.f * s.d), 23, 0.4f),
                randn(static_cast<size_t>(s.f * s.d), 24, 0.4f), randn(static_cast<size_t>(s.d * s.f), 25, 0.4f),
                randn(static_cast<size_t>(s.n * s.d), 26)});
         const bool swiglu = s.act == Activation::swiglu;
         // Forward on dev; `saved` kept when given.
         auto forward = [st, s, swiglu](Device& dev, float* saved, cpu::ExpertWeights& w, const float*& x) {
           w = {swiglu ? dev.put(st->w_gate) : nullptr, dev.put(st->w_up), dev.put(st->w_down)};
           x = dev.put(st->x);
           float* out = dev.zeros(s.n * s.d);
           dev.run(FfnForwardArgs{
               .x = x, .rows = s.n, .d = s.d, .f = s.f, .activation = s.act, .w = w, .out = out, .saved = saved});
           return out;
         };
         GradProblem g;
         g.wrt = {{"x", &st->x}, {"w_up", &st->w_up}, {"w_down", &st->w_down}};
         if (swiglu) g.wrt.push_back({"w_gate", &st->w_gate});
         g.loss = [st, s, forward] {
           Device cpu(cpu_backend());
           cpu::ExpertWeights w;
           const float* x = nullptr;
           return dot(cpu.get(forward(cpu, nullptr, w, x), s.n * s.d), st->G);
         };
         g.backward = [st, s, swiglu, forward](Device& dev) {
           cpu::ExpertWeights w;
           const float* x = nullptr;
           float* saved = dev.zeros(cpu::ffn_saved_floats(s.n, s.f, s.act));
           forward(dev, saved, w, x);
           float *dx = dev.zeros(s.n * s.d), *dg = dev.zeros(s.f * s.d), *du = dev.zeros(s.f * s.d),
                 *dd = dev.zeros(s.d * s.f);
           std::vector<int64_t> segments;  // s.segments near-equal parts, the last one the rest
           for (int64_t i = 0, left = s.n; i < s.segments; ++i, left -= segments.back())
             segments.push_back(i + 1 == s.segments ? left : s.n / s.segments);
           dev.run(FfnBackwardArgs{.dout = dev.put(st->G),
                                   .x = x,
                                   .rows = s.n,
                                   .d = s.d,
                                   .f = s.f,
                                   .activation = s.act,
                                   .w = w,
                                   .saved = saved,
                                   .dx = dx,
                                   .grads = {swiglu ? dg : nullptr, du, dd},
                                   .weight_segments = segments});
           Outputs o{
               {"dx", dev.get(dx, s.n * s.d)}, {"dw_up", dev.get(du, s.f * s.d)}, {"dw_down", dev.get(dd, s.d * s.f)}};
           if (swiglu) o.push_back({"dw_gate", dev.get(dg, s.f * s.d)});
           return o;
         };
         g.state = st;
         return g;
       }});

  // ----- aggregation -----
  t.push_back({"weighted_sum_forward",
               kRouted,
               1e-6,
               [](Device& dev, const Shape& s) {
                 const Routing r = route(s, 27);
                 const auto o = randn(static_cast<size_t>(r.layout.rows() * s.d), 28);
                 float* m = dev.zeros(s.n * s.d);
                 dev.run(WeightedSumForwardArgs{.nodes = &r.nodes, .expert_out = dev.put(o), .d = s.d, .m = m});
                 return Outputs{{"m", dev.get(m, s.n * s.d)}};
               },
               {}});
  t.push_back({"weighted_sum_backward", kRouted, 1e-5, {}, [](const Shape& s) {
                 struct St {
                   Routing r;
                   std::vector<float> expert_out, gate, G;
                 };
                 auto st = std::make_shared<St>();
                 st->r = route(s, 29);
                 st->expert_out = randn(static_cast<size_t>(st->r.layout.rows() * s.d), 30);
                 st->gate = st->r.sel.gate;
                 st->G = randn(static_cast<size_t>(s.n * s.d), 31);
                 GradProblem g;
                 g.wrt = {{"expert_out", &st->expert_out}, {"gate", &st->gate}};
                 g.loss = [st, s] {
                   const cpu::NodeList nodes = with_gates(st->r.nodes, st->gate);
                   Device cpu(cpu_backend());
                   float* m = cpu.zeros(s.n * s.d);
                   cpu.run(
                       WeightedSumForwardArgs{.nodes = &nodes, .expert_out = st->expert_out.data(), .d = s.d, .m = m});
                   return dot(cpu.get(m, s.n * s.d), st->G);
                 };
                 g.backward = [st, s](Device& dev) {
                   const cpu::NodeList nodes = with_gates(st->r.nodes, st->gate);
                   const int64_t rows = st->r.layout.rows(), slots = st->r.sel.slots();
                   float *dout = dev.zeros(rows * s.d), *dgate = dev.zeros(slots);
                   dev.run(WeightedSumBackwardArgs{.nodes = &nodes,
                                                   .expert_out = dev.put(st->expert_out),
                                                   .d = s.d,
                                                   .dm = dev.put(st->G),
                                                   .d_expert_out = dout,
                                                   .dgate = dgate});
                   return Outputs{{"dexpert_out", dev.get(dout, rows * s.d)}, {"dgate", dev.get(dgate, slots)}};
                 };
                 g.state = st;
                 return g;
               }});
  std::vector<Shape> dag_shapes;
  for (bool causal : {false, true}) {
    for (int levels : {0, 1, 2})
      dag_shapes.push_back({.label = "", .n = 5, .e = 4, .k = 2, .d = 4, .f = 3, .levels = levels, .causal = causal});
    dag_shapes.push_back(
        {.label = "drops", .n = 6, .e = 6, .k = 3, .d = 4, .f = 2, .cf = 0.6, .levels = 2, .causal = causal});
    dag_shapes.push_back({.label = "no_tokens", .n = 0, .e = 4, .k = 2, .d = 4, .f = 3, .levels = 2, .causal = causal});
    dag_shapes.push_back(
        {.label = "large", .n = 120, .e = 8, .k = 3, .d = 48, .f = 16, .levels = 2, .causal = causal, .fd = false});
  }
  t.push_back(
      {"dag_forward",
       dag_shapes,
       1e-5,
       [](Device& dev, const Shape& s) {
         const Routing r = route(s, 32);
         const DagParams params(s, 33);
         const auto levels = params.upload(dev);
         const float* o = dev.put(randn(static_cast<size_t>(r.layout.rows() * s.d), 34));
         const float* u = dev.put(randn(static_cast<size_t>(s.n * s.d), 35));
         const int64_t saved_n = cpu::dag_saved_floats(s.n, r.nodes.nodes(), s.d, s.f, levels.size());
         float *m = dev.zeros(s.n * s.d), *m2 = dev.zeros(s.n * s.d), *saved = dev.zeros(saved_n);
         const DagEdges edges = s.causal ? DagEdges::causal : DagEdges::all;
         DagForwardArgs a{
             .nodes = &r.nodes, .expert_out = o, .u = u, .d = s.d, .dg = s.f, .edges = edges, .levels = levels, .m = m};
         dev.run(a);  // inference: activations in the workspace
         a.m = m2;
         a.saved = saved;
         dev.run(a);
         return Outputs{{"m", dev.get(m, s.n * s.d)}, {"m_training", dev.get(m2, s.n * s.d)}};
       },
       {}});
  t.push_back({"dag_backward", dag_shapes, 1e-5, {}, [](const Shape& s) {
                 struct St {
                   Routing r;
                   DagParams params;
                   std::vector<float> expert_out, u, gate, G;
                 };
                 auto st = std::make_shared<St>(St{route(s, 36), DagParams(s, 37), {}, {}, {}, {}});
                 st->expert_out = randn(static_cast<size_t>(st->r.layout.rows() * s.d), 38);
                 st->u = randn(static_cast<size_t>(s.n * s.d), 39);
                 st->gate = st->r.sel.gate;
                 st->G = randn(static_cast<size_t>(s.n * s.d), 40);
                 const DagEdges edges = s.causal ? DagEdges::causal : DagEdges::all;
                 GradProblem g;
                 g.wrt = {{"expert_out", &st->expert_out}, {"u", &st->u}, {"gate", &st->gate}};
                 for (size_t i = 0; i < st->params.w.size(); ++i)
                   g.wrt.push_back({st->params.name(i), &st->params.w[i]});
                 g.loss = [st, s, edges] {
                   const cpu::NodeList nodes = with_gates(st->r.nodes, st->gate);
                   Device cpu(cpu_backend());
                   const auto levels = st->params.upload(cpu);
                   float* m = cpu.zeros(s.n * s.d);
                   cpu.run(DagForwardArgs{.nodes = &nodes,
                                          .expert_out = st->expert_out.data(),
                                          .u = st->u.data(),
                                          .d = s.d,
                                          .dg = s.f,
                                          .edges = edges,
                                          .levels = levels,
                                          .m = m});
                   return dot(cpu.get(m, s.n * s.d), st->G);
                 };
                 g.backward = [st, s, edges](Device& dev) {
                   const cpu::NodeList nodes = with_gates(st->r.nodes, st->gate);
                   const auto levels = st->params.upload(dev);
                   const int64_t rows = st->r.layout.rows(), slots = st->r.sel.slots();
                   float* saved = dev.zeros(cpu::dag_saved_floats(s.n, nodes.nodes(), s.d, s.f, levels.size()));
                   const float *o = dev.put(st->expert_out), *u = dev.put(st->u);
                   float* m = dev.zeros(s.n * s.d);
                   dev.run(DagForwardArgs{.nodes = &nodes,
                                          .expert_out = o,
                                          .u = u,
                                          .d = s.d,
                                          .dg = s.f,
                                          .edges = edges,
                                          .levels = levels,
                                          .m = m,
                                          .saved = saved});
                   std::vector<float*> grad_bufs;
                   for (const auto& w : st->params.w) grad_bufs.push_back(dev.zeros(static_cast<int64_t>(w.size())));
                   std::vector<cpu::DagLevelGrads> grads;
                   for (size_t l = 0; l < levels.size(); ++l) {
                     float* const* b = &grad_bufs[l * 6];
                     grads.push_back({b[0], b[1], b[2], b[3], b[4], b[5]});
                   }
                   float *dout = dev.zeros(rows * s.d), *dgate = dev.zeros(slots), *du = dev.zeros(s.n * s.d);
                   dev.run(DagBackwardArgs{.nodes = &nodes,
                                           .expert_out = o,
                                           .u = u,
                                           .d = s.d,
                                           .dg = s.f,
                                           .edges = edges,
                                           .levels = levels,
                                           .saved = saved,
                                           .dm = dev.put(st->G),
                                           .d_expert_out = dout,
                                           .dgate = dgate,
                                           .du = du,
                                           .grads = grads});
                   Outputs out{{"dexpert_out", dev.get(dout, rows * s.d)},
                               {"dgate", dev.get(dgate, slots)},
                               {"du", dev.get(du, s.n * s.d)}};
                   for (size_t i = 0; i < grad_bufs.size(); ++i)
                     out.push_back({"d" + st->params.name(i),
                                    dev.get(grad_bufs[i], static_cast<int64_t>(st->params.w[i].size()))});
                   return out;
                 };
                 g.state = st;
                 return g;
               }});
  const std::vector<Shape> rows_shapes = {{.label = "small", .n = 4, .d = 5},
                                          {.label = "large", .n = 150, .d = 64, .fd = false},
                                          {.label = "no_rows", .n = 0, .d = 5}};
  t.push_back({"coefficient_mix_forward",
               rows_shapes,
               1e-5,
               [](Device& dev, const Shape& s) {
                 const int64_t nd = s.n * s.d;
                 float *out = dev.zeros(nd), *coef = dev.zeros(2 * s.n);
                 dev.run(CoefficientMixForwardArgs{.u = dev.put(randn(static_cast<size_t>(nd), 41)),
                                                   .n = s.n,
                                                   .d = s.d,
                                                   .wc = dev.put(randn(static_cast<size_t>(2 * s.d), 42)),
                                                   .bc = dev.put(randn(2, 43)),
                                                   .m = dev.put(randn(static_cast<size_t>(nd), 44)),
                                                   .s = dev.put(randn(static_cast<size_t>(nd), 45)),
                                                   .m_out = out,
                                                   .coef = coef});
                 return Outputs{{"m_out", dev.get(out, nd)}, {"coef", dev.get(coef, 2 * s.n)}};
               },
               {}});
  t.push_back({"coefficient_mix_backward", rows_shapes, 1e-5, {}, [](const Shape& s) {
                 const size_t nd = static_cast<size_t>(s.n * s.d);
                 struct St {
                   std::vector<float> u, wc, bc, m, s, G;
                 };
                 auto st = std::make_shared<St>(St{randn(nd, 46), randn(static_cast<size_t>(2 * s.d), 47), randn(2, 48),
                                                   randn(nd, 49), randn(nd, 50), randn(nd, 51)});
                 auto forward = [st, s](Device& dev, float* coef) {
                   float* out = dev.zeros(s.n * s.d);
                   dev.run(CoefficientMixForwardArgs{.u = dev.put(st->u),
                                                     .n = s.n,
                                                     .d = s.d,
                                                     .wc = dev.put(st->wc),
                                                     .bc = dev.put(st->bc),
                                                     .m = dev.put(st->m),
                                                     .s = dev.put(st->s),
                                                     .m_out = out,
                                                     .coef = coef});
                   return out;
                 };
                 GradProblem g;
                 g.wrt = {{"u", &st->u}, {"wc", &st->wc}, {"bc", &st->bc}, {"m", &st->m}, {"s", &st->s}};
                 g.loss = [st, s, forward] {
                   Device cpu(cpu_backend());
                   return dot(cpu.get(forward(cpu, cpu.zeros(2 * s.n)), s.n * s.d), st->G);
                 };
                 g.backward = [st, s, forward](Device& dev) {
                   const int64_t n = s.n * s.d;
                   float* coef = dev.zeros(2 * s.n);
                   forward(dev, coef);
                   float *dm = dev.zeros(n), *ds = dev.zeros(n), *du = dev.zeros(n), *dwc = dev.zeros(2 * s.d),
                         *dbc = dev.zeros(2);
                   dev.run(CoefficientMixBackwardArgs{.dm_out = dev.put(st->G),
                                                      .u = dev.put(st->u),
                                                      .n = s.n,
                                                      .d = s.d,
                                                      .wc = dev.put(st->wc),
                                                      .m = dev.put(st->m),
                                                      .s = dev.put(st->s),
                                                      .coef = coef,
                                                      .dm = dm,
                                                      .ds = ds,
                                                      .du = du,
                                                      .dwc = dwc,
                                                      .dbc = dbc});
                   return Outputs{{"du", dev.get(du, n)},
                                  {"dwc", dev.get(dwc, 2 * s.d)},
                                  {"dbc", dev.get(dbc, 2)},
                                  {"dm", dev.get(dm, n)},
                                  {"ds", dev.get(ds, n)}};
                 };
                 g.state = st;
                 return g;
               }});

  // ----- norms -----
  t.push_back({"rmsnorm_forward",
               rows_shapes,
               1e-5,
               [](Device& dev, const Shape& s) {
                 float *y = dev.zeros(s.n * s.d), *rstd = dev.zeros(s.n);
                 dev.run(RmsNormForwardArgs{.x = dev.put(randn(static_cast<size_t>(s.n * s.d), 52)),
                                            .n = s.n,
                                            .d = s.d,
                                            .w = dev.put(randn(static_cast<size_t>(s.d), 53)),
                                            .y = y,
                                            .rstd = rstd});
                 return Outputs{{"y", dev.get(y, s.n * s.d)}, {"rstd", dev.get(rstd, s.n)}};
               },
               {}});
  t.push_back({"rmsnorm_backward", rows_shapes, 1e-5, {}, [](const Shape& s) {
                 struct St {
                   std::vector<float> x, w, G;
                 };
                 auto st = std::make_shared<St>(St{randn(static_cast<size_t>(s.n * s.d), 54),
                                                   randn(static_cast<size_t>(s.d), 55),
                                                   randn(static_cast<size_t>(s.n * s.d), 56)});
                 auto forward = [st, s](Device& dev, float* rstd) {
                   float* y = dev.zeros(s.n * s.d);
                   dev.run(RmsNormForwardArgs{
                       .x = dev.put(st->x), .n = s.n, .d = s.d, .w = dev.put(st->w), .y = y, .rstd = rstd});
                   return y;
                 };
                 GradProblem g;
                 g.wrt = {{"x", &st->x}, {"w", &st->w}};
                 g.loss = [st, s, forward] {
                   Device cpu(cpu_backend());
                   return dot(cpu.get(forward(cpu, cpu.zeros(s.n)), s.n * s.d), st->G);
                 };
                 g.backward = [st, s, forward](Device& dev) {
                   float *rstd = dev.zeros(s.n), *dx = dev.zeros(s.n * s.d), *dw = dev.zeros(s.d);
                   forward(dev, rstd);
                   dev.run(RmsNormBackwardArgs{.dy = dev.put(st->G),
                                               .x = dev.put(st->x),
                                               .n = s.n,
                                               .d = s.d,
                                               .w = dev.put(st->w),
                                               .rstd = rstd,
                                               .dx = dx,
                                               .dw = dw});
                   return Outputs{{"dx", dev.get(dx, s.n * s.d)}, {"dw", dev.get(dw, s.d)}};
                 };
                 g.state = st;
                 return g;
               }});
  t.push_back(
      {"layernorm_forward",
       rows_shapes,
       1e-5,
       [](Device& dev, const Shape& s) {
         float *y = dev.zeros(s.n * s.d), *mean = dev.zeros(s.n), *rstd = dev.zeros(s.n);
         dev.run(LayerNormForwardArgs{.x = dev.put(randn(static_cast<size_t>(s.n * s.d), 57)),
                                      .n = s.n,
                                      .d = s.d,
                                      .gamma = dev.put(randn(static_cast<size_t>(s.d), 58)),
                                      .beta = dev.put(randn(static_cast<size_t>(s.d), 59)),
                                      .y = y,
                                      .mean = mean,
                                      .rstd = rstd});
         return Outputs{{"y", dev.get(y, s.n * s.d)}, {"mean", dev.get(mean, s.n)}, {"rstd", dev.get(rstd, s.n)}};
       },
       {}});
  t.push_back(
      {"layernorm_backward", rows_shapes, 1e-5, {}, [](const Shape& s) {
         struct St {
           std::vector<float> x, gamma, beta, G;
         };
         auto st =
             std::make_shared<St>(St{randn(static_cast<size_t>(s.n * s.d), 60), randn(static_cast<size_t>(s.d), 61),
                                     randn(static_cast<size_t>(s.d), 62), randn(static_cast<size_t>(s.n * s.d), 63)});
         auto forward = [st, s](Device& dev, float* mean, float* rstd) {
           float* y = dev.zeros(s.n * s.d);
           dev.run(LayerNormForwardArgs{.x = dev.put(st->x),
                                        .n = s.n,
                                        .d = s.d,
                                        .gamma = dev.put(st->gamma),
                                        .beta = dev.put(st->beta),
                                        .y = y,
                                        .mean = mean,
                                        .rstd = rstd});
           return y;
         };
         GradProblem g;
         g.wrt = {{"x", &st->x}, {"gamma", &st->gamma}, {"beta", &st->beta}};
         g.loss = [st, s, forward] {
           Device cpu(cpu_backend());
           return dot(cpu.get(forward(cpu, cpu.zeros(s.n), cpu.zeros(s.n)), s.n * s.d), st->G);
         };
         g.backward = [st, s, forward](Device& dev) {
           float *mean = dev.zeros(s.n), *rstd = dev.zeros(s.n);
           float *dx = dev.zeros(s.n * s.d), *dgamma = dev.zeros(s.d), *dbeta = dev.zeros(s.d);
           forward(dev, mean, rstd);
           dev.run(LayerNormBackwardArgs{.dy = dev.put(st->G),
                                         .x = dev.put(st->x),
                                         .n = s.n,
                                         .d = s.d,
                                         .gamma = dev.put(st->gamma),
                                         .mean = mean,
                                         .rstd = rstd,
                                         .dx = dx,
                                         .dgamma = dgamma,
                                         .dbeta = dbeta});
           return Outputs{
               {"dx", dev.get(dx, s.n * s.d)}, {"dgamma", dev.get(dgamma, s.d)}, {"dbeta", dev.get(dbeta, s.d)}};
         };
         g.state = st;
         return g;
       }});

  // ----- optimizer -----
  t.push_back(
      {"adamw",
       {{.label = "large", .n = 10000}, {.label = "one", .n = 1}, {.label = "empty", .n = 0}},
       1e-6,
       [](Device& dev, const Shape& s) {
         const size_t n = static_cast<size_t>(s.n);
         auto v = randn(n, 64, 0.01f);
         for (float& x : v) x = x * x;
         float *p = dev.put(randn(n, 65)), *m = dev.put(randn(n, 66, 0.1f)), *vv = dev.put(v);
         dev.run(AdamWArgs{.param = p,
                           .grad = dev.put(randn(n, 67)),
                           .exp_avg = m,
                           .exp_avg_sq = vv,
                           .n = s.n,
                           .step = 3,
                           .hyper = {.lr = 1e-2, .weight_decay = 0.1}});
         return Outputs{{"param", dev.get(p, s.n)}, {"exp_avg", dev.get(m, s.n)}, {"exp_avg_sq", dev.get(vv, s.n)}};
       },
       {}});
  return t;
}

const std::vector<OpCase>& table() {
  static const std::vector<OpCase> t = make_table();
  return t;
}

Backend* usable_backend(const std::string& name) {
  for (Backend* b : backends())
    if (b->name() == name) return b;
  return nullptr;
}

std::string shape_label(const OpCase& c, size_t i) {
  const Shape& s = c.shapes[i];
  return std::string(c.op) + " shape " + std::to_string(i) + (*s.label ? std::string(" (") + s.label + ")" : "");
}

// Every output within tol · max(1, max |ref|); tol 0 is bit-exact.
void expect_outputs_close(const Outputs& got, const Outputs& ref, double tol, const std::string& where) {
  ASSERT_EQ(got.size(), ref.size()) << where;
  for (size_t o = 0; o < ref.size(); ++o) {
    const auto& [name, r] = ref[o];
    ASSERT_EQ(got[o].first, name) << where;
    const auto& g = got[o].second;
    ASSERT_EQ(g.size(), r.size()) << where << " " << name;
    double scale = 1.0;
    for (double v : r) scale = std::max(scale, std::fabs(v));
    for (size_t i = 0; i < r.size(); ++i) {
      const double err = std::fabs(g[i] - r[i]);
      if (!(err <= tol * scale) && !(tol == 0 && std::memcmp(&g[i], &r[i], sizeof(double)) == 0)) {
        ADD_FAILURE() << where << " " << name << "[" << i << "]: " << g[i] << " vs cpu " << r[i] << " (tolerance "
                      << tol * scale << ")";
        return;
      }
    }
  }
}

// Runs one shape of a case on a backend; throws Unsupported when the backend cannot.
Outputs run_case(const OpCase& c, const Shape& s, Backend& b) {
  Device dev(b);
  if (c.forward) return c.forward(dev, s);
  return c.backward(s).backward(dev);
}

using Param = std::tuple<std::string, size_t>;  // backend name, table row

std::string param_name(const ::testing::TestParamInfo<Param>& info) {
  return std::get<0>(info.param) + "_" + table()[std::get<1>(info.param)].op;
}

class Compare : public ::testing::TestWithParam<Param> {};
class Grad : public ::testing::TestWithParam<Param> {};

TEST_P(Compare, Op) {
  const auto& [backend_name, row] = GetParam();
  const OpCase& c = table()[row];
  Backend* b = usable_backend(backend_name);
  if (!b) GTEST_SKIP() << "backend '" << backend_name << "' compiled but not usable here (no device)";
  const double tol = b == &cpu_backend() ? 0.0 : c.tol;
  std::vector<std::string> skipped;
  for (size_t i = 0; i < c.shapes.size(); ++i) {
    const std::string where = backend_name + " " + shape_label(c, i);
    SCOPED_TRACE(where);
    const Outputs ref = run_case(c, c.shapes[i], cpu_backend());
    Outputs got;
    try {
      got = run_case(c, c.shapes[i], *b);
    } catch (const Unsupported&) {
      skipped.push_back(where);
      continue;
    }
    expect_outputs_close(got, ref, tol, where);
  }
  if (skipped.size() == c.shapes.size()) GTEST_SKIP() << backend_name << " cannot implement " << c.op;
  for (const auto& s : skipped) std::printf("[ skipped ] %s: cannot implement\n", s.c_str());
}

// Finite differences of the CPU forward: the loss is evaluated in double on float inputs
// perturbed by ±h; the denominator is the perturbation the floats actually hold.
constexpr float kFdStep = 3e-3f;

TEST_P(Grad, Op) {
  const auto& [backend_name, row] = GetParam();
  const OpCase& c = table()[row];
  Backend* b = usable_backend(backend_name);
  if (!b) GTEST_SKIP() << "backend '" << backend_name << "' compiled but not usable here (no device)";
  bool ran = false;
  for (size_t i = 0; i < c.shapes.size(); ++i) {
    if (!c.shapes[i].fd) continue;
    const std::string where = backend_name + " " + shape_label(c, i);
    SCOPED_TRACE(where);
    GradProblem g = c.backward(c.shapes[i]);
    Outputs analytic;
    try {
      Device dev(*b);
      analytic = g.backward(dev);
    } catch (const Unsupported&) {
      std::printf("[ skipped ] %s: cannot implement\n", where.c_str());
      continue;
    }
    ran = true;
    for (auto& [name, values] : g.wrt) {
      const auto it =
          std::find_if(analytic.begin(), analytic.end(), [&](const auto& o) { return o.first == "d" + name; });
      ASSERT_NE(it, analytic.end()) << where << ": no gradient d" << name;
      std::vector<double> fd(values->size());
      for (size_t j = 0; j < values->size(); ++j) {
        float& x = (*values)[j];
        const float keep = x, plus = keep + kFdStep, minus = keep - kFdStep;
        x = plus;
        const double lp = g.loss();
        x = minus;
        const double lm = g.loss();
        x = keep;
        fd[j] = (lp - lm) / (static_cast<double>(plus) - static_cast<double>(minus));
      }
      expect_gradients_close(where + " d" + name, it->second, fd, /*rtol=*/1e-2, /*atol_frac=*/1e-2);
    }
  }
  if (!ran) GTEST_SKIP() << backend_name << " cannot implement " << c.op;
}

std::vector<size_t> rows_where(bool backward) {
  std::vector<size_t> rows;
  for (size_t i = 0; i < table().size(); ++i)
    if (static_cast<bool>(table()[i].backward) == backward) rows.push_back(i);
  return rows;
}
std::vector<size_t> all_rows() {
  std::vector<size_t> rows(table().size());
  for (size_t i = 0; i < rows.size(); ++i) rows[i] = i;
  return rows;
}

INSTANTIATE_TEST_SUITE_P(BackendOps, Compare,
                         ::testing::Combine(::testing::ValuesIn(compiled_backends()), ::testing::ValuesIn(all_rows())),
                         param_name);
INSTANTIATE_TEST_SUITE_P(BackendOps, Grad,
                         ::testing::Combine(::testing::ValuesIn(compiled_backends()),
                                            ::testing::ValuesIn(rows_where(/*backward=*/true))),
                         param_name);

// Every op of OpArgs has a row in the table.
TEST(BackendOps, TableCoversEveryOp) {
  std::vector<std::string> missing;
  auto check = [&](const char* name) {
    const bool found =
        std::any_of(table().begin(), table().end(), [&](const OpCase& c) { return std::string(c.op) == name; });
    if (!found) missing.push_back(name);
  };
  [&]<size_t... I>(std::index_sequence<I...>) { (check(std::variant_alternative_t<I, OpArgs>::kName), ...); }
  (std::make_index_sequence<std::variant_size_v<OpArgs>>{});
  EXPECT_TRUE(missing.empty()) << "ops without a test row: " << ::testing::PrintToString(missing);
}

// The AdamW op must be able to replace runtime/src/optimizer.cc's AdamW::step loop bit for bit:
// this is that loop, transcribed.
TEST(BackendOps, AdamWMatchesTheRuntimeOptimizerLoop) {
  const int64_t n = 4097;
  const cpu::AdamWHyper hy{.lr = 3e-3, .beta1 = 0.85, .beta2 = 0.995, .eps = 1e-7, .weight_decay = 0.05};
  auto p = randn(n, 70), m = randn(n, 71, 0.1f), v = randn(n, 72, 0.1f);
  for (float& x : v) x = x * x;
  auto p_ref = p, m_ref = m, v_ref = v;
  for (int64_t steps = 1; steps <= 3; ++steps) {
    const auto grad = randn(n, 73 + static_cast<uint32_t>(steps));
    run_with_own_workspace(cpu_backend(), AdamWArgs{.param = p.data(),
                                                    .grad = grad.data(),
                                                    .exp_avg = m.data(),
                                                    .exp_avg_sq = v.data(),
                                                    .n = n,
                                                    .step = steps,
                                                    .hyper = hy});
    // runtime/src/optimizer.cc, AdamW::step (steps_ already incremented):
    const double bc1 = 1.0 - std::pow(hy.beta1, static_cast<double>(steps));
    const double bc2 = 1.0 - std::pow(hy.beta2, static_cast<double>(steps));
    const float b1 = static_cast<float>(hy.beta1), b2 = static_cast<float>(hy.beta2), eps = static_cast<float>(hy.eps),
                decay = static_cast<float>(hy.lr * hy.weight_decay);
    const float step_size = static_cast<float>(hy.lr / bc1);
    const float inv_sqrt_bc2 = static_cast<float>(1.0 / std::sqrt(bc2));
    float *pd = p_ref.data(), *md = m_ref.data(), *vd = v_ref.data();
    const float* gd = grad.data();
    for (int64_t i = 0; i < n; ++i) {
      md[i] = b1 * md[i] + (1.0f - b1) * gd[i];
      vd[i] = b2 * vd[i] + (1.0f - b2) * gd[i] * gd[i];
      pd[i] -= decay * pd[i];
      pd[i] -= step_size * md[i] / (std::sqrt(vd[i]) * inv_sqrt_bc2 + eps);
    }
  }
  EXPECT_EQ(0, std::memcmp(p.data(), p_ref.data(), n * sizeof(float)));
  EXPECT_EQ(0, std::memcmp(m.data(), m_ref.data(), n * sizeof(float)));
  EXPECT_EQ(0, std::memcmp(v.data(), v_ref.data(), n * sizeof(float)));
}

// An op the backend lacks answers false without throwing, and run() refuses it.
TEST(BackendOps, UnsupportedOpsAnswerFalse) {
  for (Backend* b : backends()) {
    const OpArgs args = DagBackwardArgs{};
    bool can = true;
    EXPECT_NO_THROW(can = b->can_implement(args)) << b->name();
    if (!can) {
      EXPECT_ANY_THROW(b->run(args, nullptr)) << b->name();
    }
  }
}

}  // namespace
}  // namespace sy
