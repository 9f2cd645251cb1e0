// The routed experts of one layer, computed on the workers (an ExpertCompute for the engine):
//
//   plan (plan_dispatch) → pack each worker's rows → exchange → each reply row to its layout row
//
// Failover: a worker lost on the way has its chunks re-planned over the surviving replicas of
// their experts (plan_failover) and sent there; a backward whose activations the lost worker
// held first recomputes the forward there (the replicas' weights are bit-identical). In
// training, while some expert has two replicas, the rows each worker computed backward for are
// kept until the optimizer step, so that a worker lost before its gradients were reduced has its
// contribution recomputed on a survivor (replay_lost_backward) and no gradient goes missing.
#include <cstring>
#include <set>

#include "client_impl.h"
#include "switchyard/core/error.h"
#include "switchyard/core/log.h"

namespace sy {
namespace {

// One worker's share of a dispatch: its chunks, under its own dispatch id (the worker keeps the
// activations under it; a failover part gets a fresh one), and the rows it is sent.
struct Part {
  WorkerDispatch dispatch;
  uint64_t dispatch_id = 0;
  std::vector<float> inputs;  // forward rows, in packing order
  std::vector<float> grads;   // backward rows, in packing order
};

enum class Op { infer, forward, backward };  // forward keeps activations for backward

// The rows of `wd`'s chunks in packing order; `row(r)` points at layout row r.
template <class RowOf>
std::vector<float> pack(const WorkerDispatch& wd, int64_t d, RowOf row) {
  std::vector<float> out(static_cast<size_t>(wd.rows * d));
  float* dst = out.data();
  for (const DispatchChunk& c : wd.chunks)
    for (int64_t r = c.first_row; r < c.first_row + c.rows; ++r, dst += d)
      std::memcpy(dst, row(r), sizeof(float) * static_cast<size_t>(d));
  return out;
}

// Layout row r inside a buffer packed for `wd`, or nullptr when `wd` does not hold it.
const float* find_row(const WorkerDispatch& wd, const std::vector<float>& packed, int64_t r, int64_t d) {
  int64_t off = 0;
  for (const DispatchChunk& c : wd.chunks) {
    if (r >= c.first_row && r < c.first_row + c.rows) return packed.data() + (off + r - c.first_row) * d;
    off += c.rows;
  }
  return nullptr;
}

bool any_replicated(const Placement& p) {
  for (const auto& [key, workers] : p.replicas)
    if (workers.size() > 1) return true;
  return false;
}

}  // namespace

class RemoteExperts::Flow {
 public:
  Flow(ClusterClient& client, int layer, int stage)
      : im_(*client.impl_), client_(client), layer_(layer), stage_(stage),
        d_(client.impl_->config->model.hidden_size) {}

  std::string what(Op op) const {
    return std::string(op == Op::backward ? "BACKWARD" : "FORWARD") + " layer " + std::to_string(layer_) + " stage " +
           std::to_string(stage_);
  }

  // Runs `op` for every part, each reply row into `out` at its layout row (when `out`), failing
  // lost parts over until every row has its answer. `recompute`: the parts' workers do not hold
  // their activations yet (forward them first). Returns the parts as they ended.
  std::vector<Part> run(std::vector<Part> parts, Op op, Tensor* out, bool recompute = false) {
    std::vector<Part> done;
    while (!parts.empty()) {
      std::vector<Part> lost;
      if (recompute) lost = exchange(parts, Op::forward, nullptr);
      for (Part& p : exchange(parts, op, out)) lost.push_back(std::move(p));
      for (Part& p : parts) done.push_back(std::move(p));
      parts = fail_over(lost, op);
      recompute = op == Op::backward;
    }
    return done;
  }

  // New parts on the surviving replicas for the rows of `lost`, with their forward (and
  // backward) rows. Throws naming the experts left without a live replica.
  std::vector<Part> fail_over(const std::vector<Part>& lost, Op op) {
    if (lost.empty()) return {};
    std::vector<DispatchChunk> chunks;
    std::string from;
    for (const Part& p : lost) {
      chunks.insert(chunks.end(), p.dispatch.chunks.begin(), p.dispatch.chunks.end());
      from += (from.empty() ? "" : "; ") + im_.usable(p.dispatch.worker).message();
    }
    WorkerLoad load;
    auto plan = plan_failover(chunks, layer_, stage_, client_.placement_, im_.live_workers(), load);
    if (!plan) throw Error(ErrorKind::transport, what(op) + ": " + plan.status().message() + "; " + from);
    std::vector<Part> parts;
    for (const WorkerDispatch& wd : plan->workers) {
      Part p{wd, im_.next_request++, gather(wd, lost, &Part::inputs, op), {}};
      if (op == Op::backward) p.grads = gather(wd, lost, &Part::grads, op);
      parts.push_back(std::move(p));
    }
    SY_LOG(warn, "runtime", im_.name << ": " << what(op) << ": " << plan->rows << " rows of " << from
                                     << " go to " << parts.size() << " surviving replica holder(s)");
    return parts;
  }

 private:
  // The rows of `wd` from the lost parts' buffers (`field`).
  std::vector<float> gather(const WorkerDispatch& wd, const std::vector<Part>& lost, std::vector<float> Part::*field,
                            Op op) const {
    return pack(wd, d_, [&](int64_t r) {
      for (const Part& p : lost)
        if (const float* row = (p.*field).empty() ? nullptr : find_row(p.dispatch, p.*field, r, d_)) return row;
      throw Error(ErrorKind::runtime, what(op) + ": the rows of a lost worker were not kept, so they cannot be "
                                                 "sent elsewhere (layout row " + std::to_string(r) + ")");
    });
  }

  // Round trips for `parts`, at most one part per worker in each (replies from one worker share
  // tags and are told apart by order only); replies land in `out`. Returns the lost parts
  // (removed from `parts`).
  std::vector<Part> exchange(std::vector<Part>& parts, Op op, Tensor* out) {
    std::vector<Part> lost, kept;
    while (!parts.empty()) {
      std::vector<Part> round, later;
      std::set<int> in_round;
      for (Part& p : parts) (in_round.insert(p.dispatch.worker).second ? round : later).push_back(std::move(p));
      for (Part& p : exchange_round(round, op, out)) lost.push_back(std::move(p));
      for (Part& p : round) kept.push_back(std::move(p));
      parts = std::move(later);
    }
    parts = std::move(kept);
    return lost;
  }

  std::vector<Part> exchange_round(std::vector<Part>& parts, Op op, Tensor* out) {
    std::vector<Call> calls(parts.size());
    for (size_t i = 0; i < parts.size(); ++i) fill(calls[i], parts[i], op);
    if (Status s = im_.exchange(calls, what(op), &client_.exchange_seconds_); !s) wire::throw_error(s);
    std::vector<Part> lost, kept;
    for (size_t i = 0; i < parts.size(); ++i) {
      const Call& c = calls[i];
      if (c.lost) {
        lost.push_back(std::move(parts[i]));
        continue;
      }
      if (!c.error) wire::throw_error(Status(c.error.code(), what(op) + " failed on " + c.error.message()));
      if (out) place(c, parts[i].dispatch, *out, op);
      kept.push_back(std::move(parts[i]));
    }
    parts = std::move(kept);
    return lost;
  }

  void fill(Call& c, const Part& p, Op op) {
    c.worker = p.dispatch.worker;
    c.request.set_request_id(im_.next_request++);
    google::protobuf::RepeatedPtrField<pb::Segment>* segments;
    if (op == Op::backward) {
      c.request.mutable_backward()->set_dispatch_id(p.dispatch_id);
      segments = c.request.mutable_backward()->mutable_segments();
    } else {
      c.request.mutable_forward()->set_dispatch_id(p.dispatch_id);
      c.request.mutable_forward()->set_keep_for_backward(op == Op::forward);
      segments = c.request.mutable_forward()->mutable_segments();
    }
    for (const DispatchChunk& ch : p.dispatch.chunks) wire::key_to_pb({layer_, stage_, ch.expert}, ch.rows, segments->Add());
    const std::vector<float>& rows = op == Op::backward ? p.grads : p.inputs;
    c.payload = rows.data();
    c.payload_bytes = rows.size() * sizeof(float);
  }

  // A reply's rows, in the part's packing order, to their layout rows of `out`.
  void place(const Call& c, const WorkerDispatch& wd, Tensor& out, Op op) const {
    if (c.reply.size() != static_cast<size_t>(wd.rows * d_))
      throw Error(ErrorKind::transport, what(op) + ": " + im_.label(c.worker) + " returned " + std::to_string(c.reply.size()) +
                                            " values for " + std::to_string(wd.rows * d_));
    const float* src = c.reply.data();
    for (const DispatchChunk& ch : wd.chunks) {
      std::memcpy(out.data() + ch.first_row * d_, src, sizeof(float) * static_cast<size_t>(ch.rows * d_));
      src += ch.rows * d_;
    }
  }

  ClusterClient::Impl& im_;
  ClusterClient& client_;
  int layer_, stage_;
  int64_t d_;
};

struct RemoteExperts::Handle {
  std::vector<Part> parts;
};

RemoteExperts::RemoteExperts(ClusterClient& client, int layer) : client_(client), layer_(layer) {}
RemoteExperts::~RemoteExperts() = default;

bool RemoteExperts::keeps_rows() const { return client_.training_ && any_replicated(client_.placement_); }

void RemoteExperts::forward(int stage, const cpu::DispatchLayout& layout, const Tensor& tokens, Tensor& output) {
  ClusterClient::Impl& im = *client_.impl_;
  if (layer_ == 0 && stage == 0) client_.at_request_boundary();
  WorkerLoad load;
  auto plan = plan_dispatch(layout.expert_offsets, layer_, stage, client_.placement_, im.live_workers(), load);
  if (!plan) wire::throw_error(plan.status());
  client_.count_load(layer_, stage, layout, *plan);
  const int64_t d = tokens.dim(1);
  std::vector<Part> parts;
  for (const WorkerDispatch& wd : plan->workers) {  // pack once, straight from the tokens
    parts.push_back({wd, im.next_request++, pack(wd, d, [&](int64_t r) { return tokens.data() + layout.token[r] * d; }), {}});
    im.links.at(wd.worker).rows_sent += static_cast<uint64_t>(wd.rows);
  }
  output = Tensor({plan->rows, d});
  Flow flow(client_, layer_, stage);
  parts = flow.run(std::move(parts), client_.training_ ? Op::forward : Op::infer, &output);
  if (!keeps_rows())
    for (Part& p : parts) std::vector<float>().swap(p.inputs);
  handles_[stage] = std::make_unique<Handle>(Handle{std::move(parts)});
}

void RemoteExperts::backward(int stage, const cpu::DispatchLayout&, const Tensor& grad_output, Tensor& grad_input) {
  auto hit = handles_.find(stage);
  if (hit == handles_.end()) throw Error(ErrorKind::runtime, "backward of stage " + std::to_string(stage) + " without forward");
  const int64_t d = grad_output.dim(1);
  std::vector<Part> parts = std::move(hit->second->parts);
  handles_.erase(hit);
  for (Part& p : parts) p.grads = pack(p.dispatch, d, [&](int64_t r) { return grad_output.data() + r * d; });
  grad_input = Tensor({grad_output.dim(0), d});
  Flow flow(client_, layer_, stage);
  parts = flow.run(std::move(parts), Op::backward, &grad_input);
  if (!keeps_rows()) return;
  for (Part& p : parts)
    client_.impl_->journal.push_back({layer_, stage, std::move(p.dispatch), std::move(p.inputs), std::move(p.grads)});
}

void RemoteExperts::replay_lost_backward(ClusterClient& client) {
  ClusterClient::Impl& im = *client.impl_;
  std::map<std::pair<int, int>, std::vector<Part>> lost;  // (layer, stage) → parts of lost workers
  std::vector<BackwardRecord> kept;
  for (BackwardRecord& r : im.journal) {
    if (im.usable(r.dispatch.worker)) {
      kept.push_back(std::move(r));
      continue;
    }
    lost[{r.layer, r.stage}].push_back({std::move(r.dispatch), 0, std::move(r.inputs), std::move(r.grads)});
  }
  im.journal = std::move(kept);
  for (auto& [where, parts] : lost) {
    Flow flow(client, where.first, where.second);
    for (Part& p : flow.run(flow.fail_over(parts, Op::backward), Op::backward, nullptr, /*recompute=*/true))
      im.journal.push_back({where.first, where.second, std::move(p.dispatch), std::move(p.inputs), std::move(p.grads)});
  }
}

}  // namespace sy
