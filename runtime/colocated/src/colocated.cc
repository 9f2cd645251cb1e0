#include "switchyard/colocated/colocated.h"

#include <cstring>
#include <span>
#include <string>

#include "switchyard/core/error.h"
#include "switchyard/core/trace.h"

namespace sy {
namespace {

void check(const Status& s, const std::string& what) {
  if (!s) throw Error(ErrorKind::transport, what + ": " + s.to_string());
}

// The all-to-all of one row per rank (`bytes` each): every rank's row r goes to rank r.
void exchange_one_row_each(transport::Transport& t, const void* send, void* recv, size_t bytes,
                           transport::Timeout timeout, const std::string& what) {
  const std::vector<int64_t> ones(static_cast<size_t>(t.world_size()), 1);
  check(t.exchange_rows(transport::ExchangeLayout(ones, ones), {.send = send, .recv = recv, .row_bytes = bytes}, timeout),
        what);
}

}  // namespace

// One layer's stages: what the forward of each stage exchanged, for its backward.
class ColocatedExperts::Layer final : public ExpertCompute {
 public:
  Layer(ColocatedExperts& group, int layer) : g_(group), layer_(layer) {}

  void forward(int stage, const cpu::DispatchLayout& layout, const Tensor& tokens, Tensor& output) override {
    const std::string where = trace::enabled() ? "layers." + std::to_string(layer_) + ".stages." + std::to_string(stage) : "";
    Stage& st = begin_stage(stage, layout);
    const int64_t d = tokens.dim(1), rows = layout_rows(layout);
    std::vector<float>& packed = st.send;  // pack: row r is token layout.token[r]
    packed.resize(static_cast<size_t>(rows * d));
    {
      trace::Span span("pack", where);
      for (int64_t r = 0; r < rows; ++r)
        std::memcpy(packed.data() + r * d, tokens.data() + layout.token[r] * d, sizeof(float) * static_cast<size_t>(d));
    }
    const size_t in_floats = static_cast<size_t>(st.rows.total_recv_rows() * d);
    st.arrived.resize(in_floats);
    move_rows(st.rows, packed.data(), st.arrived.data(), d, "dispatch");
    auto by_expert = std::make_shared<std::vector<float>>(in_floats);  // kept by the store for backward
    st.computed.resize(in_floats);
    {
      trace::Span span("expert forward", where);
      st.regroup(st.arrived.data(), by_expert->data(), d, /*to_experts=*/true);
      for_each_expert(stage, st, [&](const ExpertKey& key, int, int64_t first, int64_t n) {
        g_.store_.forward(key, st.id, by_expert->data() + first * d, n, st.computed.data() + first * d, by_expert);
      });
      st.regroup(st.computed.data(), st.arrived.data(), d, /*to_experts=*/false);
    }
    output = Tensor({rows, d});
    move_rows(st.rows.reversed(), st.arrived.data(), output.data(), d, "combine");
  }

  // No grad_input wanted: the experts compute their weight gradients only and nothing goes back.
  void backward(int stage, const cpu::DispatchLayout& layout, const Tensor& grad_output, Tensor* grad_input) override {
    auto it = stages_.find(stage);
    if (it == stages_.end() || !it->second.forwarded)
      throw Error(ErrorKind::runtime, "co-located backward of layer " + std::to_string(layer_) + " stage " +
                                          std::to_string(stage) + " without its forward");
    Stage& st = it->second;
    const int64_t d = grad_output.dim(1);
    const size_t in_floats = static_cast<size_t>(st.rows.total_recv_rows() * d);
    st.arrived.resize(in_floats);
    st.send.resize(in_floats);
    st.computed.resize(in_floats);
    move_rows(st.rows, grad_output.data(), st.arrived.data(), d, "backward dispatch");  // in layout order already
    {
      trace::Span span("expert backward");
      st.regroup(st.arrived.data(), st.send.data(), d, /*to_experts=*/true);
      for_each_expert(stage, st, [&](const ExpertKey& key, int j, int64_t first, int64_t n) {
        g_.store_.backward(key, st.id, st.send.data() + first * d, n, grad_input ? st.computed.data() + first * d : nullptr,
                           st.rows_by_source(j));
      });
      if (grad_input) st.regroup(st.computed.data(), st.arrived.data(), d, /*to_experts=*/false);
    }
    st.forwarded = false;
    if (!grad_input) return;
    *grad_input = Tensor({layout_rows(layout), d});
    move_rows(st.rows.reversed(), st.arrived.data(), grad_input->data(), d, "backward combine");
  }

 private:
  // What one stage's forward exchanged, and its buffers (kept across steps: no page faults).
  // Rows arrive grouped by source rank, then by our expert; each expert computes all its rows
  // in ONE product, so they are regrouped by expert, then by source rank (the global token
  // order, as in the single process) and back.
  struct Stage {
    transport::ExchangeLayout rows;
    std::vector<int64_t> counts_in;  // [source rank][local expert]: rows each rank sends each of ours
    int ranks = 0, per = 0;          // source ranks, our experts of the stage
    uint64_t id = 0;                 // the store request id of this forward
    bool forwarded = false;
    // Expert order: expert_counts[j * ranks + s] rows of our expert j from source s, and
    // arrival_first[s * per + j] the first row of that run in arrival order.
    std::vector<int64_t> expert_counts, arrival_first;
    // send: the forward's packed rows, then the backward's output gradients in expert order.
    std::vector<float> send, arrived, computed;

    void set_counts(int n, int experts, std::vector<int64_t> in) {
      ranks = n;
      per = experts;
      counts_in = std::move(in);
      expert_counts.assign(counts_in.size(), 0);
      arrival_first.assign(counts_in.size(), 0);
      for (size_t i = 1; i < counts_in.size(); ++i) arrival_first[i] = arrival_first[i - 1] + counts_in[i - 1];
      for (int s = 0; s < ranks; ++s)
        for (int j = 0; j < per; ++j) expert_counts[static_cast<size_t>(j * ranks + s)] = counts_in[static_cast<size_t>(s * per + j)];
    }
    // Our expert j's rows per source rank, in rank order.
    std::span<const int64_t> rows_by_source(int j) const {
      return std::span(expert_counts).subspan(static_cast<size_t>(j * ranks), static_cast<size_t>(ranks));
    }
    // Copies rows from arrival order into expert order (to_experts) or back.
    void regroup(const float* from, float* to, int64_t d, bool to_experts) const {
      int64_t expert_row = 0;
      for (int j = 0; j < per; ++j)
        for (int s = 0; s < ranks; ++s) {
          const int64_t n = expert_counts[static_cast<size_t>(j * ranks + s)];
          const int64_t arrival_row = arrival_first[static_cast<size_t>(s * per + j)];
          const int64_t src = to_experts ? arrival_row : expert_row, dst = to_experts ? expert_row : arrival_row;
          if (n > 0) std::memcpy(to + dst * d, from + src * d, sizeof(float) * static_cast<size_t>(n * d));
          expert_row += n;
        }
    }
  };

  static int64_t layout_rows(const cpu::DispatchLayout& layout) {
    return layout.expert_offsets.empty() ? 0 : layout.expert_offsets.back();
  }

  int experts_per_rank(int stage) const {
    return g_.model_.layer.stages[static_cast<size_t>(stage)].experts / g_.ranks();
  }

  // Exchanges the per-expert row counts of a stage's forward and sets up its row layout; the
  // previous forward's activations (one never followed by backward: serving) are released.
  Stage& begin_stage(int stage, const cpu::DispatchLayout& layout) {
    Stage& st = stages_[stage];
    const int n = g_.ranks(), per = experts_per_rank(stage);
    if (st.forwarded) g_.store_.drop_request(st.id);
    std::vector<int64_t> counts_out(static_cast<size_t>(n * per));
    for (size_t e = 0; e < counts_out.size(); ++e) counts_out[e] = layout.expert_offsets[e + 1] - layout.expert_offsets[e];
    std::vector<int64_t> counts_in(counts_out.size(), 0);
    exchange_one_row_each(g_.transport_, counts_out.data(), counts_in.data(), sizeof(int64_t) * static_cast<size_t>(per),
                          g_.timeout_, what("counts"));
    st.set_counts(n, per, std::move(counts_in));
    std::vector<int64_t> send(static_cast<size_t>(n), 0), recv(static_cast<size_t>(n), 0);
    for (int r = 0; r < n; ++r)
      for (int j = 0; j < per; ++j) {
        send[static_cast<size_t>(r)] += counts_out[static_cast<size_t>(r * per + j)];
        recv[static_cast<size_t>(r)] += st.counts_in[static_cast<size_t>(r * per + j)];
      }
    st.rows = transport::ExchangeLayout(send, recv);
    st.id = next_id_++;
    st.forwarded = true;
    return st;
  }

  // f(key, our expert index j, first row in expert order, rows) for each of our experts of the
  // stage with rows.
  template <class F>
  void for_each_expert(int stage, const Stage& st, F f) const {
    int64_t row = 0;
    for (int j = 0; j < st.per; ++j) {
      int64_t rows = 0;
      for (const int64_t n : st.rows_by_source(j)) rows += n;
      if (rows > 0) f(ExpertKey{layer_, stage, g_.transport_.rank() * st.per + j}, j, row, rows);
      row += rows;
    }
  }

  void move_rows(const transport::ExchangeLayout& layout, const float* send, float* recv, int64_t d,
                 const std::string& step) {
    trace::Span span("exchange", step);
    check(g_.transport_.exchange_rows(layout, {.send = send, .recv = recv, .row_bytes = sizeof(float) * static_cast<size_t>(d)},
                                      g_.timeout_),
          what(step));
  }

  std::string what(const std::string& step) const {
    return "co-located " + step + " of layer " + std::to_string(layer_) + " on rank " +
           std::to_string(g_.transport_.rank());
  }

  ColocatedExperts& g_;
  int layer_;
  std::map<int, Stage> stages_;
  uint64_t next_id_ = 1;
};

ColocatedExperts::ColocatedExperts(transport::Transport& transport, const ModelConfig& model, const TensorMap& weights,
                                   transport::Timeout timeout)
    : transport_(transport), model_(model), timeout_(timeout), store_(model) {
  const int n = transport.world_size();
  if (n < 1) throw Error(ErrorKind::config, "co-located experts need a transport with a fixed world of ranks");
  for (size_t s = 0; s < model.layer.stages.size(); ++s)
    if (model.layer.stages[s].experts % n != 0)
      throw Error(ErrorKind::config, "model.layer.stages[" + std::to_string(s) + "].experts (" +
                                         std::to_string(model.layer.stages[s].experts) +
                                         ") is not a multiple of the co-located ranks (" + std::to_string(n) + ")");
  for (int l = 0; l < model.layers; ++l) {
    layers_.push_back(std::make_unique<Layer>(*this, l));
    for (int s = 0; s < static_cast<int>(model.layer.stages.size()); ++s)
      for (int e = 0; e < model.layer.stages[static_cast<size_t>(s)].experts; ++e)
        if (owner(s, e) == transport.rank()) store_.add({l, s, e}, extract_expert_weights(model, weights, {l, s, e}));
  }
}

ColocatedExperts::~ColocatedExperts() = default;

int ColocatedExperts::owner(int stage, int expert) const {
  return expert / (model_.layer.stages[static_cast<size_t>(stage)].experts / ranks());
}

ExpertCompute& ColocatedExperts::experts(int layer) { return *layers_.at(static_cast<size_t>(layer)); }

void ColocatedExperts::step(const AdamWConfig& adamw, int, uint64_t) { store_.step(adamw); }

void ColocatedExperts::all_reduce_sum(std::vector<float>& values, const std::string& what) {
  const size_t n = static_cast<size_t>(ranks()), len = values.size();
  std::vector<float> send(len * n), all(len * n);
  for (size_t r = 0; r < n; ++r) std::copy(values.begin(), values.end(), send.begin() + static_cast<std::ptrdiff_t>(r * len));
  exchange_one_row_each(transport_, send.data(), all.data(), sizeof(float) * len, timeout_,
                        "co-located all-reduce of " + what + " on rank " + std::to_string(transport_.rank()));
  for (size_t i = 0; i < len; ++i) {
    float sum = 0;
    for (size_t r = 0; r < n; ++r) sum += all[r * len + i];  // rank order
    values[i] = sum;
  }
}

void ColocatedExperts::sum_dense_grads(TensorMap& grads) {
  std::vector<float> flat;
  for (const auto& [name, t] : grads) flat.insert(flat.end(), t.values().begin(), t.values().end());
  all_reduce_sum(flat, "the dense gradients");
  size_t off = 0;
  for (auto& [name, t] : grads)
    for (int64_t i = 0; i < t.numel(); ++i) t[i] = flat[off++];
}

}  // namespace sy
