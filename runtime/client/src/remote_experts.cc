// The routed experts of one layer, computed on the workers (an ExpertCompute for the engine):
//
//   plan (plan_dispatch) → pack each worker's rows → exchange → each reply row to its layout row
//
// Each worker's rows go in requests of cluster.chunk_rows rows, all posted at once, so the
// worker computes one while the next arrives and its answers come back while it computes the
// rest. An answer whose rows are contiguous in the layout is received straight into the output
// rows; a backward that keeps no copy of its rows sends them from the output gradients in place.
// ClusterClient::copies() counts the rows copied on the way.
//
// Failover: a worker lost on the way has its chunks re-planned over the surviving replicas of
// their experts (plan_failover) and sent there; a backward whose activations the lost worker
// held first recomputes the forward there (the replicas' weights are bit-identical). In
// training, while some expert has two replicas, the rows each worker computed backward for are
// kept until the optimizer step, so that a worker lost before its gradients were reduced has its
// contribution recomputed on a survivor (replay_lost_backward) and no gradient goes missing.
#include <algorithm>
#include <cstring>
#include <optional>
#include <set>

#include "client_impl.h"
#include "switchyard/core/error.h"
#include "switchyard/core/log.h"
#include "switchyard/core/trace.h"

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

// One request of a part: rows [begin, end) of its packing order, at most cluster.chunk_rows.
struct Piece {
  uint32_t index = 0;  // ForwardOp/BackwardOp.chunk
  int64_t begin = 0, end = 0;
  int64_t layout_row = -1;  // its first layout row when its rows are contiguous in the layout, else -1
};

// Calls `f(chunk, first, rows)` for every run of `wd`'s chunks inside packing rows [begin, end):
// `first` is the run's first layout row.
template <class F>
void for_each_run(const WorkerDispatch& wd, int64_t begin, int64_t end, F f) {
  int64_t off = 0;
  for (const DispatchChunk& c : wd.chunks) {
    const int64_t b = std::max(begin, off), e = std::min(end, off + c.rows);
    if (b < e) f(c, c.first_row + b - off, e - b);
    off += c.rows;
  }
}

// `wd`'s rows as requests. chunk_rows 0: one request (its rows contiguous in the layout or not).
// Else pieces of an expert's rows share a request while they are contiguous in the layout and
// the request stays within chunk_rows rows, so every answer lands in place. Serving cuts an
// expert's rows every chunk_rows rows; training does not (`split_experts` false): a worker's
// weight gradients then sum over the same rows in one product as in the single process.
// A dispatch of no rows is one empty request.
std::vector<Piece> pieces(const WorkerDispatch& wd, int64_t chunk_rows, bool split_experts) {
  std::vector<Piece> out;
  if (chunk_rows <= 0) {
    int64_t first = -1, next = -1;
    bool contiguous = true;
    for_each_run(wd, 0, wd.rows, [&](const DispatchChunk&, int64_t f, int64_t rows) {
      contiguous &= next < 0 || f == next;
      if (first < 0) first = f;
      next = f + rows;
    });
    out.push_back({0, 0, wd.rows, contiguous ? first : -1});
    return out;
  }
  int64_t off = 0;
  for (const DispatchChunk& c : wd.chunks) {
    const int64_t step = split_experts ? chunk_rows : std::max<int64_t>(c.rows, 1);
    for (int64_t b = 0; b < c.rows; b += step) {
      const int64_t n = std::min(step, c.rows - b);
      Piece* last = out.empty() ? nullptr : &out.back();
      if (last && last->end == off + b && last->layout_row + (last->end - last->begin) == c.first_row + b &&
          last->end - last->begin + n <= chunk_rows) {
        last->end += n;
        continue;
      }
      out.push_back({static_cast<uint32_t>(out.size()), off + b, off + b + n, c.first_row + b});
    }
    off += c.rows;
  }
  if (out.empty()) out.push_back({0, 0, 0, -1});
  return out;
}

bool any_replicated(const Placement& p) {
  for (const auto& [key, workers] : p.replicas)
    if (workers.size() > 1) return true;
  return false;
}

}  // namespace

class RemoteExperts::Flow {
 public:
  // `grads`: a backward's output gradients (by layout row), sent from there where the parts do
  // not keep their own copy.
  Flow(ClusterClient& client, int layer, int stage, const Tensor* grads = nullptr)
      : im_(*client.impl_), client_(client), layer_(layer), stage_(stage),
        d_(client.impl_->config->model.hidden_size), grads_(grads) {}

  std::string where() const {
    return trace::enabled() ? "layers." + std::to_string(layer_) + ".stages." + std::to_string(stage_) : std::string();
  }

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
      if (recompute) lost = exchange_round(parts, Op::forward, nullptr);
      for (Part& p : exchange_round(parts, op, out)) lost.push_back(std::move(p));
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
    im_.copies.rows_packed += static_cast<uint64_t>(wd.rows);
    return pack(wd, d_, [&](int64_t r) {
      if (field == &Part::grads && grads_) return grads_->data() + r * d_;
      for (const Part& p : lost)
        if (const float* row = (p.*field).empty() ? nullptr : find_row(p.dispatch, p.*field, r, d_)) return row;
      throw Error(ErrorKind::runtime, what(op) + ": the rows of a lost worker were not kept, so they cannot be "
                                                 "sent elsewhere (layout row " + std::to_string(r) + ")");
    });
  }

  // One round trip for `parts`, each split into requests of cluster.chunk_rows rows, all sent
  // at once: the worker computes the first while the rest arrive and answers each when done;
  // replies land in `out`. Returns the lost parts (removed from `parts`).
  std::vector<Part> exchange_round(std::vector<Part>& parts, Op op, Tensor* out) {
    std::vector<std::pair<size_t, Piece>> of;  // calls[j] sends piece of[j].second of parts[of[j].first]
    for (size_t i = 0; i < parts.size(); ++i)
      for (const Piece& pc : pieces(parts[i].dispatch, im_.chunk_rows, op == Op::infer)) of.emplace_back(i, pc);
    std::vector<Call> calls(of.size());
    for (size_t j = 0; j < of.size(); ++j) fill(calls[j], parts[of[j].first], of[j].second, op, out);
    {
      trace::Span span("exchange", where());
      if (Status s = im_.exchange(calls, what(op), &client_.exchange_seconds_); !s) wire::throw_error(s);
    }
    trace::Span span("combine", where());
    std::vector<bool> part_lost(parts.size(), false);
    for (size_t j = 0; j < of.size(); ++j) {
      const Call& c = calls[j];
      if (c.lost) {
        part_lost[of[j].first] = true;
        continue;
      }
      if (!c.error) wire::throw_error(Status(c.error.code(), what(op) + " failed on " + c.error.message()));
      im_.copies.rows_received += static_cast<uint64_t>(of[j].second.end - of[j].second.begin);
      if (out && !c.reply_into) place(c, parts[of[j].first].dispatch, of[j].second, *out, op);
    }
    std::vector<Part> lost, kept;
    for (size_t i = 0; i < parts.size(); ++i) (part_lost[i] ? lost : kept).push_back(std::move(parts[i]));
    parts = std::move(kept);
    return lost;
  }

  void fill(Call& c, const Part& p, const Piece& pc, Op op, Tensor* out) {
    c.worker = p.dispatch.worker;
    c.request.set_request_id(im_.next_request++);
    google::protobuf::RepeatedPtrField<pb::Segment>* segments;
    if (op == Op::backward) {
      c.request.mutable_backward()->set_dispatch_id(p.dispatch_id);
      c.request.mutable_backward()->set_chunk(pc.index);
      segments = c.request.mutable_backward()->mutable_segments();
    } else {
      c.request.mutable_forward()->set_dispatch_id(p.dispatch_id);
      c.request.mutable_forward()->set_chunk(pc.index);
      c.request.mutable_forward()->set_keep_for_backward(op == Op::forward);
      segments = c.request.mutable_forward()->mutable_segments();
    }
    for_each_run(p.dispatch, pc.begin, pc.end, [&](const DispatchChunk& ch, int64_t, int64_t rows) {
      wire::key_to_pb({layer_, stage_, ch.expert}, rows, segments->Add());
    });
    const int64_t rows = pc.end - pc.begin;
    c.payload = payload_of(c, p, pc, op);
    c.payload_bytes = static_cast<size_t>(rows * d_) * sizeof(float);
    im_.copies.rows_sent += static_cast<uint64_t>(rows);
    if (out && rows > 0 && pc.layout_row >= 0) {  // the answer lands in its output rows
      c.reply_into = out->data() + pc.layout_row * d_;
      c.reply_floats = static_cast<size_t>(rows * d_);
    }
  }

  // Where a request's rows are sent from: the part's packed rows, else (a backward that keeps no
  // copy) the output gradients in place, packed for this call only when not contiguous.
  const float* payload_of(Call& c, const Part& p, const Piece& pc, Op op) {
    const std::vector<float>& packed = op == Op::backward ? p.grads : p.inputs;
    if (pc.end == pc.begin || !packed.empty()) return packed.data() + pc.begin * d_;
    if (op != Op::backward || !grads_)
      throw Error(ErrorKind::runtime, what(op) + ": the rows for " + im_.label(p.dispatch.worker) + " were not kept");
    if (pc.layout_row >= 0) return grads_->data() + pc.layout_row * d_;
    c.staged_payload.resize(static_cast<size_t>((pc.end - pc.begin) * d_));
    float* dst = c.staged_payload.data();
    for_each_run(p.dispatch, pc.begin, pc.end, [&](const DispatchChunk&, int64_t first, int64_t rows) {
      std::memcpy(dst, grads_->data() + first * d_, sizeof(float) * static_cast<size_t>(rows * d_));
      dst += rows * d_;
    });
    im_.copies.rows_packed += static_cast<uint64_t>(pc.end - pc.begin);
    return c.staged_payload.data();
  }

  // A reply that did not land in place: its rows, in packing order, to their layout rows of `out`.
  void place(const Call& c, const WorkerDispatch& wd, const Piece& pc, Tensor& out, Op op) const {
    const int64_t rows = pc.end - pc.begin;
    if (c.reply.size() != static_cast<size_t>(rows * d_))
      throw Error(ErrorKind::transport, what(op) + ": " + im_.label(c.worker) + " returned " + std::to_string(c.reply.size()) +
                                            " values for " + std::to_string(rows * d_));
    const float* src = c.reply.data();
    for_each_run(wd, pc.begin, pc.end, [&](const DispatchChunk&, int64_t first, int64_t n) {
      std::memcpy(out.data() + first * d_, src, sizeof(float) * static_cast<size_t>(n * d_));
      src += n * d_;
    });
    im_.copies.rows_unpacked += static_cast<uint64_t>(rows);
  }

  ClusterClient::Impl& im_;
  ClusterClient& client_;
  int layer_, stage_;
  int64_t d_;
  const Tensor* grads_;
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
  auto pack_span = std::make_optional<trace::Span>(
      "pack", trace::enabled() ? "layers." + std::to_string(layer_) + ".stages." + std::to_string(stage) : "");
  for (const WorkerDispatch& wd : plan->workers) {  // pack once, straight from the tokens
    parts.push_back({wd, im.next_request++, pack(wd, d, [&](int64_t r) { return tokens.data() + layout.token[r] * d; }), {}});
    im.links.at(wd.worker).rows_sent += static_cast<uint64_t>(wd.rows);
    im.copies.rows_packed += static_cast<uint64_t>(wd.rows);
  }
  pack_span.reset();
  output = Tensor({plan->rows, d});
  Flow flow(client_, layer_, stage);
  parts = flow.run(std::move(parts), client_.training_ ? Op::forward : Op::infer, &output);
  if (!keeps_rows())
    for (Part& p : parts) std::vector<float>().swap(p.inputs);
  handles_[stage] = std::make_unique<Handle>(Handle{std::move(parts)});
}

void RemoteExperts::backward(int stage, const cpu::DispatchLayout&, const Tensor& grad_output, Tensor* wanted_grad_input) {
  auto hit = handles_.find(stage);
  if (hit == handles_.end()) throw Error(ErrorKind::runtime, "backward of stage " + std::to_string(stage) + " without forward");
  const int64_t d = grad_output.dim(1);
  std::vector<Part> parts = std::move(hit->second->parts);
  handles_.erase(hit);
  if (keeps_rows())  // for failover after this backward: the rows each worker was sent
    for (Part& p : parts) {
      p.grads = pack(p.dispatch, d, [&](int64_t r) { return grad_output.data() + r * d; });
      client_.impl_->copies.rows_packed += static_cast<uint64_t>(p.dispatch.rows);
    }
  Tensor dropped;
  Tensor& grad_input = wanted_grad_input ? *wanted_grad_input : dropped;
  grad_input = Tensor({grad_output.dim(0), d});
  Flow flow(client_, layer_, stage, &grad_output);
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
