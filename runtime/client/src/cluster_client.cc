#include "switchyard/client/cluster_client.h"

#include "switchyard/core/expert.h"
#include "switchyard/engine/moe_model.h"

#include <chrono>
#include <cstring>
#include <thread>

#include "cluster.pb.h"
#include "switchyard/wire/data_plane.h"
#include "switchyard/wire/wire.h"
#include "switchyard/core/error.h"
#include "switchyard/core/log.h"
#include "switchyard/scheduler/replica_scheduler.h"
#include "switchyard/transport/control.h"
#include "switchyard/transport/ucx.h"

namespace sy {
namespace {
namespace pb = switchyard::cluster;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

std::unique_ptr<control::ControlClient> connect_coordinator(const std::string& endpoint, const std::string& name) {
  auto [host, port] = control::parse_endpoint(endpoint);
  control::ControlClient::Options o;
  o.name = name;
  return cluster::check(control::ControlClient::connect(host, port, o), "coordinator " + endpoint);
}

pb::ClusterInfoReply fetch_info(control::ControlClient& c, const std::string& endpoint) {
  return cluster::check(c.call<pb::ClusterInfoRequest, pb::ClusterInfoReply>(pb::ClusterInfoRequest{}),
                        "coordinator " + endpoint);
}

// Logs once where the failure is decided, then throws (a client is often torn down while the
// exception unwinds, so the log line is what survives).
[[noreturn]] void fail(ErrorKind kind, const std::string& message) {
  SY_LOG(error, "runtime", message);
  throw Error(kind, message);
}

}  // namespace

ClusterStatus query_cluster_status(const std::string& coordinator) {
  auto c = connect_coordinator(coordinator, "switchyard status");
  const pb::ClusterInfoReply info = fetch_info(*c, coordinator);
  ClusterStatus s;
  s.placement_epoch = info.placement_epoch();
  s.workers_expected = info.workers_expected();
  s.model_loaded = info.model_committed();
  s.placement = wire::placement_from_pb(info.placement(), info.placement_epoch());
  for (const pb::WorkerInfo& w : info.workers())
    s.workers.push_back({w.worker_id(), w.pid(), w.host(), w.control_endpoint(), w.alive(), w.rows_forward(),
                         w.rows_backward(), w.steps(), w.experts(), w.expert_bytes(), w.rows_per_s(),
                         w.ms_since_heartbeat()});
  return s;
}

void request_cluster_shutdown(const std::string& coordinator) {
  auto c = connect_coordinator(coordinator, "switchyard shutdown");
  cluster::check(c->call<pb::ShutdownRequest, pb::ShutdownReply>(pb::ShutdownRequest{}), "coordinator " + coordinator);
}

// ---------------------------------------------------------------------------------------------

struct WorkerLink {
  int id = 0;
  std::string label;  // "worker 2 (host:pid 123)"
  std::unique_ptr<transport::Transport> transport;
  uint64_t rows_sent = 0;
  std::string broken;  // why the link was closed after a failed request; empty while healthy
};

// One request to one worker and its reply.
struct Call {
  int worker = 0;
  pb::WorkerRequest request;
  const void* payload = nullptr;
  size_t payload_bytes = 0;
  std::vector<float> reply;  // reply payload
  // internal
  cluster::OutgoingMessage out;
  std::vector<char> header;
  transport::RequestId header_request{}, payload_request{};
  int stage = 0;  // 0 header pending, 1 payload pending, 2 done
};

struct ClusterClient::Impl {
  std::string coordinator_endpoint, name;
  std::unique_ptr<control::ControlClient> coordinator;
  std::map<int, WorkerLink> links;
  std::unique_ptr<Config> config;
  uint64_t next_request = 1;
  int request_timeout_ms = 10000;
  std::vector<std::unique_ptr<ExpertCompute>> layer_experts;
  double worker_compute_seconds = 0;  // Σ over round trips of the slowest worker's compute

  WorkerLink& link(int w) {
    auto it = links.find(w);
    if (it == links.end()) throw Error(ErrorKind::transport, "placement names worker " + std::to_string(w) + " which is not attached");
    if (!it->second.broken.empty())
      throw Error(ErrorKind::transport, it->second.label + " is unusable after an earlier failure: " + it->second.broken);
    return it->second;
  }

  // After a failed round trip: close the links that still have requests in flight, while the
  // calls' buffers are alive (closing cancels the requests), so nothing writes into them later
  // and a late reply can never be taken for the answer to another request.
  void abandon(std::vector<Call>& calls, const std::string& reason) {
    for (Call& c : calls) {
      auto it = links.find(c.worker);
      if (it == links.end() || !it->second.transport) continue;
      it->second.transport.reset();
      if (it->second.broken.empty()) it->second.broken = reason;
    }
  }

  // Sends every call, then progresses until all replies arrived. Fails naming the worker on a
  // worker error, a transport failure, a worker the coordinator declares dead, or the timeout.
  void round_trip(std::vector<Call>& calls, const std::string& what, double* waited_seconds = nullptr) {
    try {
      round_trip_unguarded(calls, what, waited_seconds);
    } catch (const std::exception& e) {
      abandon(calls, e.what());
      throw;
    }
  }

  void round_trip_unguarded(std::vector<Call>& calls, const std::string& what, double* waited_seconds) {
    const auto start = Clock::now();
    double slowest_compute = 0;  // the workers compute in parallel: the slowest one bounds the wait
    for (Call& c : calls) {
      WorkerLink& l = link(c.worker);
      c.request.set_payload_bytes(c.payload_bytes);
      c.out.post(*l.transport, 1, cluster::kRequestTag, cluster::kRequestPayloadTag, c.request, c.payload, c.payload_bytes,
                 what + " to " + l.label);
      c.header.resize(cluster::kMaxHeaderBytes);
      c.header_request = cluster::post_recv(*l.transport, 1, cluster::kReplyTag, c.header.data(), c.header.size(), l.label);
      c.stage = 0;
    }
    const auto deadline = start + std::chrono::milliseconds(request_timeout_ms);
    auto next_liveness_check = start + 500ms;
    for (;;) {
      bool all_done = true;
      for (Call& c : calls) {
        if (c.stage == 2) continue;
        WorkerLink& l = link(c.worker);
        l.transport->progress();
        const transport::RequestId rid = c.stage == 0 ? c.header_request : c.payload_request;
        auto t = l.transport->test(rid);
        if (!t.is_ok()) fail(ErrorKind::transport, what + ": " + l.label + " failed: " + t.status().to_string());
        if (!t->done) {
          all_done = false;
          continue;
        }
        if (c.stage == 0) {
          pb::WorkerReply rep;
          if (!rep.ParseFromArray(c.header.data(), static_cast<int>(t->bytes)))
            fail(ErrorKind::transport, what + ": malformed reply from " + l.label);
          if (!rep.error().empty()) fail(ErrorKind::runtime, what + " failed on " + rep.error());
          if (rep.request_id() != c.request.request_id())
            fail(ErrorKind::transport, what + ": " + l.label + " answered request " + std::to_string(rep.request_id()) +
                                           " instead of " + std::to_string(c.request.request_id()));
          slowest_compute = std::max(slowest_compute, rep.compute_seconds());
          c.reply.assign(rep.payload_bytes() / sizeof(float), 0.0f);
          if (rep.payload_bytes() > 0) {
            c.payload_request = cluster::post_recv(*l.transport, 1, cluster::kReplyPayloadTag, c.reply.data(),
                                                   rep.payload_bytes(), l.label);
            c.stage = 1;
            all_done = false;
          } else {
            c.stage = 2;
          }
        } else {
          c.stage = 2;
        }
      }
      if (all_done) break;
      const auto now = Clock::now();
      if (now > next_liveness_check) {
        next_liveness_check = now + 500ms;
        const pb::ClusterInfoReply info = fetch_info(*coordinator, coordinator_endpoint);
        for (const pb::WorkerInfo& w : info.workers())
          for (const Call& c : calls)
            if (c.stage != 2 && c.worker == w.worker_id() && !w.alive())
              fail(ErrorKind::transport, what + ": " + link(c.worker).label + " is dead (no heartbeat for " +
                                                    std::to_string(w.ms_since_heartbeat()) + " ms, says the coordinator)");
      }
      if (now > deadline) {
        for (const Call& c : calls)
          if (c.stage != 2)
            fail(ErrorKind::transport, what + ": " + link(c.worker).label + " did not answer within " +
                                                  std::to_string(request_timeout_ms) + " ms");
      }
    }
    // Sends are complete once the replies are in, but release their requests.
    for (Call& c : calls) {
      WorkerLink& l = link(c.worker);
      cluster::check(l.transport->wait_all(c.out.requests, std::chrono::milliseconds(request_timeout_ms)), what + " to " + l.label);
    }
    const double waited = std::chrono::duration<double>(Clock::now() - start).count();
    if (waited_seconds) *waited_seconds += waited - std::min(waited, slowest_compute);
    worker_compute_seconds += slowest_compute;
  }
};

// ---------------------------------------------------------------------------------------------

// The routed experts of one layer, computed on the workers. The per-worker split of a
// stage's rows is kept from forward to backward (the dispatch handle).
class RemoteExperts final : public ExpertCompute {
 public:
  RemoteExperts(ClusterClient& client, int layer) : client_(client), layer_(layer) {}

  void forward(int stage, const cpu::DispatchLayout& layout, const Tensor& input, Tensor& output) override {
    ClusterClient::Impl& im = *client_.impl_;
    Handle& h = handles_[stage];
    h = Handle{};
    h.request_id = im.next_request++;
    // Choose replicas: chunks of each expert's rows go to the least-loaded replica so far.
    ReplicaScheduler scheduler(client_.workers());
    std::map<int, Part> parts;
    for (int64_t i = 0; i < layout.experts; ++i) {
      const int64_t begin = layout.expert_offsets[static_cast<size_t>(i)], rows = layout.expert_rows(i);
      if (rows == 0) continue;
      const std::vector<int>& replicas = client_.placement_.workers_for({layer_, stage, static_cast<int>(i)});
      const int64_t chunk = (rows + static_cast<int64_t>(replicas.size()) - 1) / static_cast<int64_t>(replicas.size());
      for (int64_t off = 0; off < rows; off += chunk) {
        const int64_t n = std::min(chunk, rows - off);
        const int w = scheduler.pick(replicas, n);
        Part& p = parts[w];
        p.segments.push_back({static_cast<int>(i), begin + off, n});
      }
    }
    exchange_parts(pb::WorkerRequest::FORWARD, stage, h.request_id, parts, input, output, layout.rows());
    h.parts = std::move(parts);
  }

  void backward(int stage, const cpu::DispatchLayout& layout, const Tensor& grad_output, Tensor& grad_input) override {
    auto hit = handles_.find(stage);
    if (hit == handles_.end()) throw Error(ErrorKind::runtime, "backward of stage " + std::to_string(stage) + " without forward");
    Handle& h = hit->second;
    exchange_parts(pb::WorkerRequest::BACKWARD, stage, h.request_id, h.parts, grad_output, grad_input, layout.rows());
    handles_.erase(hit);
  }

 private:
  struct SegmentRef {
    int expert;
    int64_t first_row;  // in the packed layout
    int64_t rows;
  };
  struct Part {
    std::vector<SegmentRef> segments;
    std::vector<float> buffer;
  };

  // Sends each worker its segments' rows of `src` (packed layout) and writes the replies into
  // `dst` ([rows, d], same layout). Forward and backward move the same segments.
  void exchange_parts(pb::WorkerRequest::Op op, int stage, uint64_t request_id, std::map<int, Part>& parts,
                      const Tensor& src, Tensor& dst, int64_t rows) {
    ClusterClient::Impl& im = *client_.impl_;
    const int64_t d = im.config->model.hidden_size;
    const std::string what = std::string(pb::WorkerRequest::Op_Name(op)) + " layer " + std::to_string(layer_) +
                             " stage " + std::to_string(stage);
    std::vector<Call> calls;
    calls.reserve(parts.size());
    for (auto& [w, p] : parts) {
      Call c;
      c.worker = w;
      c.request.set_op(op);
      c.request.set_request_id(request_id);
      c.request.set_keep_for_backward(client_.training_);
      int64_t total = 0;
      for (const auto& seg : p.segments) total += seg.rows;
      p.buffer.resize(static_cast<size_t>(total * d));
      int64_t row = 0;
      for (const auto& seg : p.segments) {
        std::memcpy(p.buffer.data() + row * d, src.data() + seg.first_row * d, sizeof(float) * static_cast<size_t>(seg.rows * d));
        row += seg.rows;
        pb::Segment* out = c.request.add_segments();
        out->set_layer(layer_);
        out->set_stage(stage);
        out->set_expert(seg.expert);
        out->set_rows(seg.rows);
      }
      c.payload = p.buffer.data();
      c.payload_bytes = p.buffer.size() * sizeof(float);
      if (op == pb::WorkerRequest::FORWARD) im.link(w).rows_sent += static_cast<uint64_t>(total);
      calls.push_back(std::move(c));
    }
    im.round_trip(calls, what, &client_.exchange_seconds_);
    dst = Tensor({rows, d});
    size_t ci = 0;
    for (auto& [w, p] : parts) {
      const std::vector<float>& r = calls[ci++].reply;
      if (r.size() != p.buffer.size())
        fail(ErrorKind::transport, what + ": worker " + std::to_string(w) + " returned " + std::to_string(r.size()) +
                                       " values for " + std::to_string(p.buffer.size()));
      int64_t row = 0;
      for (const auto& seg : p.segments) {
        std::memcpy(dst.data() + seg.first_row * d, r.data() + row * d, sizeof(float) * static_cast<size_t>(seg.rows * d));
        row += seg.rows;
      }
      p.buffer = {};
    }
  }
  struct Handle {
    uint64_t request_id = 0;
    std::map<int, Part> parts;
  };
  ClusterClient& client_;
  int layer_;
  std::map<int, Handle> handles_;
};

// ---------------------------------------------------------------------------------------------

ClusterClient::ClusterClient(const std::string& coordinator, const std::string& name, int ready_timeout_ms)
    : impl_(std::make_unique<Impl>()) {
  impl_->coordinator_endpoint = coordinator;
  impl_->name = name;
  const auto deadline = Clock::now() + std::chrono::milliseconds(ready_timeout_ms);
  // Under a launcher the coordinator may still be starting: retry until the deadline.
  for (;;) {
    try {
      impl_->coordinator = connect_coordinator(coordinator, name);
      break;
    } catch (const Error&) {
      if (Clock::now() > deadline) throw;
      std::this_thread::sleep_for(100ms);
    }
  }
  pb::ClusterInfoReply info;
  for (;;) {
    info = fetch_info(*impl_->coordinator, coordinator);
    int alive = 0;
    for (const pb::WorkerInfo& w : info.workers()) alive += w.alive();
    if (alive == info.workers_expected() && info.workers_size() == info.workers_expected()) break;
    if (Clock::now() > deadline)
      throw Error(ErrorKind::transport, "cluster at " + coordinator + " has " + std::to_string(alive) + " of " +
                                            std::to_string(info.workers_expected()) + " workers alive after " +
                                            std::to_string(ready_timeout_ms) + " ms");
    std::this_thread::sleep_for(100ms);
  }
  impl_->request_timeout_ms = static_cast<int>(info.request_timeout_ms());
  for (const pb::WorkerInfo& w : info.workers()) {
    WorkerLink link;
    link.id = w.worker_id();
    link.label = "worker " + std::to_string(w.worker_id()) + " (" + w.host() + ", " + w.control_endpoint() + ")";
    transport::TransportOptions to;
    to.rank = 0;
    to.world_size = 2;
    to.label = name;
    transport::UcxOptions ucx;
    ucx.peer_error_handling = info.ucx_peer_failure();
    link.transport = transport::make_ucx_transport(to, ucx);
    auto [host, port] = control::parse_endpoint(w.control_endpoint());
    control::ControlClient::Options co;
    co.name = name;
    auto wc = cluster::check(control::ControlClient::connect(host, port, co), "attaching to " + link.label);
    pb::AttachRequest req;
    req.set_client_name(name);
    req.set_client_address(link.transport->local_address());
    const pb::AttachReply rep = cluster::check(wc->call<pb::AttachRequest, pb::AttachReply>(req), "attaching to " + link.label);
    cluster::check(link.transport->connect({link.transport->local_address(), rep.worker_address()}),
                   "connecting the data plane to " + link.label);
    impl_->links.emplace(link.id, std::move(link));
  }
}

ClusterClient::~ClusterClient() {
  // Tell every worker we are leaving so it drops our endpoint at once (best effort).
  for (auto& [id, l] : impl_->links) {
    if (!l.broken.empty() || !l.transport) continue;
    try {
      pb::WorkerRequest req;
      req.set_op(pb::WorkerRequest::DETACH);
      cluster::OutgoingMessage out;
      out.post(*l.transport, 1, cluster::kRequestTag, cluster::kRequestPayloadTag, req, nullptr, 0, "DETACH");
      (void)l.transport->wait_all(out.requests, std::chrono::milliseconds(200));
    } catch (const std::exception&) {
    }
  }
}

int ClusterClient::workers() const {
  int n = 0;
  for (const auto& [id, l] : impl_->links) n = std::max(n, id + 1);
  return n;
}

void ClusterClient::load_model(const Config& config, const TensorMap& weights) {
  Impl& im = *impl_;
  const ModelConfig& model = config.require_model();
  const std::string yaml = config_to_yaml(config);
  pb::PlanPlacementRequest plan;
  plan.set_model_yaml(yaml);
  const pb::PlanPlacementReply placed = cluster::check(
      im.coordinator->call<pb::PlanPlacementRequest, pb::PlanPlacementReply>(plan), "placing the model");
  placement_ = wire::placement_from_pb(placed.placement(), placed.placement_epoch());
  im.config = std::make_unique<Config>(load_config_string(yaml, "model"));
  // Per worker: its experts' weights, concatenated in segment order.
  std::map<int, std::vector<float>> payloads;
  std::vector<Call> calls;
  std::map<int, size_t> call_of;
  for (const auto& [key, workers] : placement_.replicas) {
    for (int w : workers) {
      if (!call_of.count(w)) {
        call_of[w] = calls.size();
        Call c;
        c.worker = w;
        c.request.set_op(pb::WorkerRequest::LOAD_MODEL);
        c.request.set_request_id(im.next_request++);
        c.request.set_model_yaml(yaml);
        *c.request.mutable_placement() = placed.placement();
        calls.push_back(std::move(c));
      }
      Call& c = calls[call_of[w]];
      pb::Segment* s = c.request.add_segments();
      s->set_layer(key.layer);
      s->set_stage(key.stage);
      s->set_expert(key.expert);
      s->set_rows(1);
      encode_expert(ExpertGeometry::of(model, key.stage), {extract_expert_weights(model, weights, key), {}, 0}, false,
                    payloads[w]);
    }
  }
  for (Call& c : calls) {
    c.payload = payloads[c.worker].data();
    c.payload_bytes = payloads[c.worker].size() * sizeof(float);
  }
  im.round_trip(calls, "LOAD_MODEL");
  pb::CommitPlacementRequest commit;
  commit.set_placement_epoch(placed.placement_epoch());
  cluster::check(im.coordinator->call<pb::CommitPlacementRequest, pb::CommitPlacementReply>(commit), "committing the placement");
  im.layer_experts.clear();
  for (int l = 0; l < model.layers; ++l) im.layer_experts.push_back(std::make_unique<RemoteExperts>(*this, l));
}

void ClusterClient::use_loaded_model(const Config& config) {
  Impl& im = *impl_;
  const auto deadline = Clock::now() + 60s;
  for (;;) {
    const pb::ClusterInfoReply info = fetch_info(*im.coordinator, im.coordinator_endpoint);
    if (info.model_committed()) {
      if (info.model_yaml() != config_to_yaml(config))
        throw Error(ErrorKind::config, "the cluster at " + im.coordinator_endpoint + " holds another model than " + config.source);
      placement_ = wire::placement_from_pb(info.placement(), info.placement_epoch());
      im.config = std::make_unique<Config>(load_config_string(info.model_yaml(), "model"));
      break;
    }
    if (Clock::now() > deadline) throw Error(ErrorKind::transport, "no model was loaded on the cluster within 60 s");
    std::this_thread::sleep_for(50ms);
  }
  im.layer_experts.clear();
  for (int l = 0; l < config.model.layers; ++l) im.layer_experts.push_back(std::make_unique<RemoteExperts>(*this, l));
}

ExpertCompute& ClusterClient::experts(int layer) {
  if (layer < 0 || static_cast<size_t>(layer) >= impl_->layer_experts.size())
    throw Error(ErrorKind::runtime, "no model loaded, or no layer " + std::to_string(layer));
  return *impl_->layer_experts[static_cast<size_t>(layer)];
}

namespace {
std::vector<Call> broadcast(ClusterClient::Impl& im, pb::WorkerRequest::Op op) {
  std::vector<Call> calls;
  for (auto& [id, l] : im.links) {
    Call c;
    c.worker = id;
    c.request.set_op(op);
    c.request.set_request_id(im.next_request++);
    calls.push_back(std::move(c));
  }
  return calls;
}
}  // namespace

void ClusterClient::step(const AdamWConfig& adamw, int group_size, uint64_t step_number) {
  std::vector<Call> calls = broadcast(*impl_, pb::WorkerRequest::STEP);
  for (Call& c : calls) {
    c.request.set_step(step_number);
    c.request.set_group_size(static_cast<uint32_t>(group_size));
    c.request.set_lr(adamw.lr);
    c.request.set_beta1(adamw.beta1);
    c.request.set_beta2(adamw.beta2);
    c.request.set_eps(adamw.eps);
    c.request.set_weight_decay(adamw.weight_decay);
  }
  impl_->round_trip(calls, "STEP " + std::to_string(step_number), &exchange_seconds_);
}

namespace {
// Asks each worker in `keys` for the listed experts' tensors (gradients or weights) and adds
// them into one map under the model's weight names.
TensorMap fetch_expert_tensors(ClusterClient::Impl& im, const std::map<int, std::vector<ExpertKey>>& keys,
                               pb::WorkerRequest::Op op) {
  const ModelConfig& model = im.config->model;
  std::vector<Call> calls;
  for (const auto& [w, list] : keys) {
    Call c;
    c.worker = w;
    c.request.set_op(op);
    c.request.set_request_id(im.next_request++);
    for (const ExpertKey& k : list) {
      pb::Segment* s = c.request.add_segments();
      s->set_layer(k.layer);
      s->set_stage(k.stage);
      s->set_expert(k.expert);
      s->set_rows(1);
    }
    calls.push_back(std::move(c));
  }
  im.round_trip(calls, pb::WorkerRequest::Op_Name(op));
  TensorMap out;
  size_t ci = 0;
  for (const auto& [w, list] : keys) {
    const std::vector<float>& r = calls[ci++].reply;
    size_t off = 0;
    for (const ExpertKey& k : list) {
      const ExpertGeometry geometry = ExpertGeometry::of(model, k.stage);
      const size_t n = static_cast<size_t>(encoded_expert_floats(geometry, false));
      if (off + n > r.size())
        fail(ErrorKind::transport, pb::WorkerRequest::Op_Name(op) + " reply from worker " + std::to_string(w) + " is too short");
      const ExpertTensors t = decode_expert(geometry, std::span(r).subspan(off, n), false, "worker " + std::to_string(w));
      off += n;
      for (const auto& [name, tensor] : t.weights) {  // replicas of one expert add up (gradients)
        auto [it, fresh] = out.try_emplace(expert_param_name(model, k, name), tensor.shape());
        for (int64_t i = 0; i < tensor.numel(); ++i) it->second[i] += tensor[i];
      }
    }
  }
  return out;
}
}  // namespace

TensorMap ClusterClient::fetch_expert_grads() {
  std::map<int, std::vector<ExpertKey>> keys;
  for (const auto& [key, workers] : placement_.replicas)
    for (int w : workers) keys[w].push_back(key);
  return fetch_expert_tensors(*impl_, keys, pb::WorkerRequest::FETCH_GRADS);
}

TensorMap ClusterClient::fetch_replica_weights(int worker) {
  std::map<int, std::vector<ExpertKey>> keys;
  for (const auto& [key, workers] : placement_.replicas)
    if (std::find(workers.begin(), workers.end(), worker) != workers.end()) keys[worker].push_back(key);
  if (keys.empty()) return {};
  return fetch_expert_tensors(*impl_, keys, pb::WorkerRequest::FETCH_WEIGHTS);
}

void ClusterClient::zero_expert_grads() {
  std::vector<Call> calls = broadcast(*impl_, pb::WorkerRequest::ZERO_GRADS);
  impl_->round_trip(calls, "ZERO_GRADS");
}

void ClusterClient::save_checkpoint(const std::string& dir) {
  std::vector<Call> calls = broadcast(*impl_, pb::WorkerRequest::SAVE);
  for (Call& c : calls) c.request.set_path(dir);
  impl_->round_trip(calls, "SAVE " + dir);
}

void ClusterClient::restore_checkpoint(const std::string& dir) {
  std::vector<Call> calls = broadcast(*impl_, pb::WorkerRequest::RESTORE);
  for (Call& c : calls) c.request.set_path(dir);
  impl_->round_trip(calls, "RESTORE " + dir);
}

double ClusterClient::worker_compute_seconds() const { return impl_->worker_compute_seconds; }

std::vector<uint64_t> ClusterClient::rows_sent() const {
  std::vector<uint64_t> rows(static_cast<size_t>(workers()), 0);
  for (const auto& [id, l] : impl_->links) rows[static_cast<size_t>(id)] = l.rows_sent;
  return rows;
}

}  // namespace sy
