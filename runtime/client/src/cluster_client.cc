#include "switchyard/client/cluster_client.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <set>
#include <thread>

#include "switchyard/core/error.h"
#include "switchyard/core/expert.h"
#include "switchyard/core/log.h"
#include "switchyard/placement/load_trace.h"
#include "switchyard/scheduler/dispatch_plan.h"
#include "switchyard/transport/control.h"
#include "switchyard/transport/factory.h"
#include "switchyard/wire/wire.h"
#include "control_calls.h"

namespace sy {
namespace {
namespace pb = wire::pb;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;
using Millis = std::chrono::milliseconds;
using client_detail::call_or_throw;
using client_detail::connect_control;
using client_detail::fetch_info;
}  // namespace

// ---------------------------------------------------------------------------------------------

struct WorkerLink {
  std::string label;  // "worker 2 (host:pid 123, 127.0.0.1:4000)"
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
  // in flight
  wire::OutgoingMessage out;
  std::vector<char> header;
  transport::RequestId header_request{}, payload_request{};
  enum class Stage { header, payload, done } stage = Stage::header;
};

struct ClusterClient::Impl {
  std::string coordinator_endpoint, name;
  std::unique_ptr<control::ControlClient> coordinator;
  std::unique_ptr<transport::Transport> transport;  // this process's one data-plane endpoint
  std::map<int, WorkerLink> links;
  std::unique_ptr<Config> config;
  uint64_t next_request = 1;
  Millis request_timeout{10000}, startup_timeout{120000}, liveness_check{500};
  std::vector<std::unique_ptr<ExpertCompute>> layer_experts;
  double worker_compute_seconds = 0;  // Σ over round trips of the slowest worker's compute
  int client_id = 0;
  // Load since the last report (pb::LoadCounts shape: [rows × experts], [rows × workers]).
  pb::LoadCounts counts;
  int stages = 1;
  Clock::time_point last_report;

  Status usable(int w) const {
    auto it = links.find(w);
    if (it == links.end())
      return Status(StatusCode::invalid_argument, "placement names worker " + std::to_string(w) + " which is not attached");
    if (!it->second.broken.empty())
      return Status(StatusCode::peer_failed, it->second.label + " is unusable after an earlier failure: " + it->second.broken);
    return Status::ok();
  }
  const std::string& label(int w) const { return links.at(w).label; }

  std::set<int> live_workers() const {
    std::set<int> live;
    for (const auto& [id, l] : links)
      if (l.broken.empty()) live.insert(id);
    return live;
  }

  // Public calls: a failed round trip throws at this edge.
  void call(std::vector<Call>& calls, const std::string& what, double* waited_seconds = nullptr) {
    if (Status s = round_trip(calls, what, waited_seconds); !s) wire::throw_error(s);
  }

  // Sends every call, then progresses until all replies arrived. Fails naming the worker on a
  // worker error, a transport failure, a worker the coordinator declares dead, or the timeout.
  Status round_trip(std::vector<Call>& calls, const std::string& what, double* waited_seconds) {
    const auto start = Clock::now();
    if (Status s = send(calls, what); !s) return s;
    return receive(calls, what, start, waited_seconds);
  }

  // The two halves of a round trip (a dispatch, and its combine). On failure both leave the
  // workers of `calls` disconnected and their links unusable (abandon).
  Status send(std::vector<Call>& calls, const std::string& what) {
    Status s = post_all(calls, what);
    if (!s) fail_calls(calls, what, s);
    return s;
  }
  Status receive(std::vector<Call>& calls, const std::string& what, Clock::time_point start, double* waited_seconds) {
    double slowest_compute = 0;  // the workers compute in parallel: the slowest bounds the wait
    Status s = await_replies(calls, what, start, slowest_compute);
    for (Call& c : calls)  // sends are complete once the replies are in; release them
      if (s) s = transport->wait_all(c.out.requests, request_timeout);
    if (!s) {
      fail_calls(calls, what, s);
      return s;
    }
    const double waited = std::chrono::duration<double>(Clock::now() - start).count();
    if (waited_seconds) *waited_seconds += waited - std::min(waited, slowest_compute);
    worker_compute_seconds += slowest_compute;
    return Status::ok();
  }
  void fail_calls(std::vector<Call>& calls, const std::string& what, const Status& s) {
    SY_LOG(error, "runtime", what << ": " << s.message());
    abandon(calls, s.message());
  }

  Status post_all(std::vector<Call>& calls, const std::string& what) {
    for (Call& c : calls) {
      if (Status s = usable(c.worker); !s) return Status(s.code(), what + ": " + s.message());
      c.request.set_payload_bytes(c.payload_bytes);
      Status s = c.out.post(*transport, c.worker, wire::kRequestTag, wire::kRequestPayloadTag, c.request, c.payload,
                            c.payload_bytes);
      c.header.resize(wire::kMaxHeaderBytes);
      auto r = s ? wire::post_recv(*transport, c.worker, wire::kReplyTag, c.header.data(), c.header.size())
                 : Result<transport::RequestId>(s);
      if (!r) return Status(r.status().code(), what + " to " + label(c.worker) + ": " + r.status().to_string());
      c.header_request = *r;
      c.stage = Call::Stage::header;
    }
    return Status::ok();
  }

  Status await_replies(std::vector<Call>& calls, const std::string& what, Clock::time_point start,
                       double& slowest_compute) {
    const auto deadline = start + request_timeout;
    auto next_liveness_check = start + liveness_check;
    for (;;) {
      transport->progress();
      bool all_done = true;
      for (Call& c : calls) {
        if (Status s = advance(c, what, slowest_compute); !s) return s;
        all_done &= c.stage == Call::Stage::done;
      }
      if (all_done) return Status::ok();
      const auto now = Clock::now();
      if (now > next_liveness_check) {
        next_liveness_check = now + liveness_check;
        if (Status s = check_liveness(calls, what); !s) return s;
      }
      if (now > deadline)
        for (const Call& c : calls)
          if (c.stage != Call::Stage::done)
            return Status(StatusCode::timeout, what + ": " + label(c.worker) + " did not answer within " +
                                                   std::to_string(request_timeout.count()) + " ms");
    }
  }

  // Moves one call on when its header or payload has arrived.
  Status advance(Call& c, const std::string& what, double& slowest_compute) {
    if (c.stage == Call::Stage::done) return Status::ok();
    auto t = transport->test(c.stage == Call::Stage::header ? c.header_request : c.payload_request);
    if (!t) return Status(StatusCode::peer_failed, what + ": " + label(c.worker) + " failed: " + t.status().to_string());
    if (!t->done) return Status::ok();
    if (c.stage == Call::Stage::payload) {
      c.stage = Call::Stage::done;
      return Status::ok();
    }
    pb::WorkerReply rep;
    if (!rep.ParseFromArray(c.header.data(), static_cast<int>(t->bytes)))
      return Status(StatusCode::protocol, what + ": malformed reply from " + label(c.worker));
    if (rep.has_error()) {
      const Status s = wire::status_from(rep.error());
      return Status(s.code(), what + " failed on " + s.message());
    }
    if (rep.request_id() != c.request.request_id())
      return Status(StatusCode::protocol, what + ": " + label(c.worker) + " answered request " +
                                              std::to_string(rep.request_id()) + " instead of " +
                                              std::to_string(c.request.request_id()));
    slowest_compute = std::max(slowest_compute, rep.compute_seconds());
    c.reply.assign(rep.payload_bytes() / sizeof(float), 0.0f);
    if (rep.payload_bytes() == 0) {
      c.stage = Call::Stage::done;
      return Status::ok();
    }
    auto r = wire::post_recv(*transport, c.worker, wire::kReplyPayloadTag, c.reply.data(), rep.payload_bytes());
    if (!r) return Status(r.status().code(), what + ": " + label(c.worker) + ": " + r.status().to_string());
    c.payload_request = *r;
    c.stage = Call::Stage::payload;
    return Status::ok();
  }

  // A worker the coordinator declares dead fails the wait at once (UCX may never report it).
  Status check_liveness(const std::vector<Call>& calls, const std::string& what) {
    auto info = coordinator->call<pb::ClusterInfoRequest, pb::ClusterInfoReply>(pb::ClusterInfoRequest{});
    if (!info) return Status(StatusCode::peer_failed, what + ": the coordinator " + coordinator_endpoint +
                                                          " does not answer: " + info.status().to_string());
    for (const pb::WorkerInfo& w : info->workers())
      for (const Call& c : calls)
        if (c.stage != Call::Stage::done && c.worker == w.worker_id() && !w.alive())
          return Status(StatusCode::peer_failed, what + ": " + label(c.worker) + " is dead (no heartbeat for " +
                                                     std::to_string(w.ms_since_heartbeat()) + " ms, says the coordinator)");
    return Status::ok();
  }

  // After a failed round trip: disconnect the workers of these calls, so requests still in
  // flight end (failing) while the calls' buffers are alive and no late reply is ever taken
  // for the answer to another request; the links stay unusable.
  void abandon(std::vector<Call>& calls, const std::string& reason) {
    for (Call& c : calls) {
      WorkerLink& l = links.at(c.worker);
      if (!l.broken.empty()) continue;
      l.broken = reason;
      (void)transport->disconnect_peer(c.worker);
    }
    std::vector<transport::RequestId> pending;
    for (Call& c : calls) {
      pending.insert(pending.end(), c.out.requests.begin(), c.out.requests.end());
      if (c.stage == Call::Stage::header) pending.push_back(c.header_request);
      if (c.stage == Call::Stage::payload) pending.push_back(c.payload_request);
    }
    for (transport::RequestId r : pending) (void)transport->wait(r, request_timeout);  // fails at once: released
  }
};

// ---------------------------------------------------------------------------------------------

// The routed experts of one layer, computed on the workers. Per stage, the forward's plan is
// the handle that the backward reuses.
class RemoteExperts final : public ExpertCompute {
 public:
  RemoteExperts(ClusterClient& client, int layer) : client_(client), layer_(layer) {}

  void forward(int stage, const cpu::DispatchLayout& layout, const Tensor& tokens, Tensor& output) override {
    ClusterClient::Impl& im = *client_.impl_;
    WorkerLoad load;
    if (layer_ == 0 && stage == 0) client_.at_request_boundary();
    auto plan = plan_dispatch(layout.expert_offsets, layer_, stage, client_.placement_, im.live_workers(), load);
    if (!plan) wire::throw_error(plan.status());
    client_.count_load(layer_, stage, layout, *plan);
    Handle& h = handles_[stage];
    h = Handle{std::move(plan).value(), im.next_request++};
    const int64_t d = tokens.dim(1);
    // Pack once: each worker's rows straight from the tokens, in the plan's order.
    output = exchange(h, /*forward=*/true, pack(h.plan, d, [&](int64_t r) { return tokens.data() + layout.token[r] * d; }), d);
  }

  void backward(int stage, const cpu::DispatchLayout&, const Tensor& grad_output, Tensor& grad_input) override {
    auto hit = handles_.find(stage);
    if (hit == handles_.end()) throw Error(ErrorKind::runtime, "backward of stage " + std::to_string(stage) + " without forward");
    const int64_t d = grad_output.dim(1);
    grad_input = exchange(hit->second, /*forward=*/false,
                          pack(hit->second.plan, d, [&](int64_t r) { return grad_output.data() + r * d; }), d);
    handles_.erase(hit);
  }

 private:
  struct Handle {
    DispatchPlan plan;
    uint64_t dispatch_id = 0;
  };

  // Per worker of the plan, its rows in packing order; `row(r)` points at layout row r.
  template <class RowOf>
  static std::vector<std::vector<float>> pack(const DispatchPlan& plan, int64_t d, RowOf row) {
    std::vector<std::vector<float>> out(plan.workers.size());
    for (size_t w = 0; w < plan.workers.size(); ++w) {
      out[w].resize(static_cast<size_t>(plan.workers[w].rows * d));
      float* dst = out[w].data();
      for (const DispatchChunk& c : plan.workers[w].chunks)
        for (int64_t r = c.first_row; r < c.first_row + c.rows; ++r, dst += d)
          std::memcpy(dst, row(r), sizeof(float) * static_cast<size_t>(d));
    }
    return out;
  }

  // A dispatch in flight: the rows it sent (alive until combine) and its requests. Not moved
  // once posted (the transport holds pointers into its rows and serialized headers).
  struct InFlight {
    const DispatchPlan* plan = nullptr;
    std::vector<std::vector<float>> rows;  // per plan worker, in packing order
    std::vector<Call> calls;
    std::string what;
    Clock::time_point start;
  };

  Tensor exchange(const Handle& h, bool forward, std::vector<std::vector<float>> rows, int64_t d) {
    const std::unique_ptr<InFlight> f = dispatch(h, forward, std::move(rows));
    return combine(*f, d);
  }

  // Sends each worker of the plan its rows (the payload stays in the returned handle).
  std::unique_ptr<InFlight> dispatch(const Handle& h, bool forward, std::vector<std::vector<float>> rows) {
    ClusterClient::Impl& im = *client_.impl_;
    auto handle = std::make_unique<InFlight>(InFlight{&h.plan, std::move(rows), std::vector<Call>(h.plan.workers.size()),
                                                      std::string(forward ? "FORWARD" : "BACKWARD") + " layer " +
                                                          std::to_string(layer_) + " stage " + std::to_string(h.plan.stage),
                                                      Clock::now()});
    InFlight& f = *handle;
    for (size_t w = 0; w < f.calls.size(); ++w) {
      const WorkerDispatch& wd = h.plan.workers[w];
      Call& c = f.calls[w];
      c.worker = wd.worker;
      c.request.set_request_id(im.next_request++);
      auto* segments = forward ? c.request.mutable_forward()->mutable_segments() : c.request.mutable_backward()->mutable_segments();
      if (forward) {
        c.request.mutable_forward()->set_dispatch_id(h.dispatch_id);
        c.request.mutable_forward()->set_keep_for_backward(client_.training_);
        im.links.at(wd.worker).rows_sent += static_cast<uint64_t>(wd.rows);
      } else {
        c.request.mutable_backward()->set_dispatch_id(h.dispatch_id);
      }
      for (const DispatchChunk& ch : wd.chunks) wire::key_to_pb({layer_, h.plan.stage, ch.expert}, ch.rows, segments->Add());
      c.payload = f.rows[w].data();
      c.payload_bytes = f.rows[w].size() * sizeof(float);
    }
    if (Status s = im.send(f.calls, f.what); !s) wire::throw_error(s);
    return handle;
  }

  // Waits for the replies and writes them into the layout's rows of the result ([plan.rows, d]).
  Tensor combine(InFlight& f, int64_t d) {
    ClusterClient::Impl& im = *client_.impl_;
    if (Status s = im.receive(f.calls, f.what, f.start, &client_.exchange_seconds_); !s) wire::throw_error(s);
    Tensor out({f.plan->rows, d});
    for (size_t w = 0; w < f.calls.size(); ++w) {
      const std::vector<float>& r = f.calls[w].reply;
      if (r.size() != f.rows[w].size())
        throw Error(ErrorKind::transport, f.what + ": worker " + std::to_string(f.calls[w].worker) + " returned " +
                                              std::to_string(r.size()) + " values for " + std::to_string(f.rows[w].size()));
      const float* src = r.data();
      for (const DispatchChunk& c : f.plan->workers[w].chunks) {
        std::memcpy(out.data() + c.first_row * d, src, sizeof(float) * static_cast<size_t>(c.rows * d));
        src += c.rows * d;
      }
    }
    return out;
  }

  ClusterClient& client_;
  int layer_;
  std::map<int, Handle> handles_;
};

// ---------------------------------------------------------------------------------------------

namespace {
// Connects the data plane to worker `w` through its control server.
void attach(ClusterClient::Impl& im, const pb::WorkerInfo& w, int client_id) {
  WorkerLink link;
  link.label = "worker " + std::to_string(w.worker_id()) + " (" + w.host() + ", " + w.control_endpoint() + ")";
  auto wc = connect_control(w.control_endpoint(), im.name, im.request_timeout);
  pb::AttachRequest req;
  req.set_client_name(im.name);
  req.set_client_id(client_id);
  req.set_client_address(im.transport->local_address());
  const pb::AttachReply rep = call_or_throw<pb::AttachRequest, pb::AttachReply>(*wc, req, "attaching to " + link.label);
  if (Status s = im.transport->connect_peer(w.worker_id(), rep.worker_address()); !s)
    throw Error(ErrorKind::transport, "connecting the data plane to " + link.label + ": " + s.to_string());
  im.links.emplace(w.worker_id(), std::move(link));
}
}  // namespace

ClusterClient::ClusterClient(const std::string& coordinator, const std::string& name, int connect_timeout_ms)
    : impl_(std::make_unique<Impl>()) {
  Impl& im = *impl_;
  im.coordinator_endpoint = coordinator;
  im.name = name;
  const auto connect_deadline = Clock::now() + Millis(connect_timeout_ms);
  for (;;) {  // under a launcher the coordinator may still be starting
    try {
      im.coordinator = connect_control(coordinator, name);
      break;
    } catch (const Error&) {
      if (Clock::now() > connect_deadline) throw;
      std::this_thread::sleep_for(100ms);
    }
  }
  pb::ClusterInfoReply info = fetch_info(*im.coordinator, coordinator);
  im.startup_timeout = Millis(info.startup_timeout_ms());
  const auto deadline = Clock::now() + im.startup_timeout;
  for (;;) {
    int alive = 0;
    for (const pb::WorkerInfo& w : info.workers()) alive += w.alive();
    if (alive == info.workers_expected() && info.workers_size() == info.workers_expected()) break;
    if (Clock::now() > deadline)
      throw Error(ErrorKind::transport, "cluster at " + coordinator + " has " + std::to_string(alive) + " of " +
                                            std::to_string(info.workers_expected()) + " workers alive after " +
                                            std::to_string(im.startup_timeout.count()) + " ms (cluster.startup_timeout_ms)");
    std::this_thread::sleep_for(100ms);
    info = fetch_info(*im.coordinator, coordinator);
  }
  im.request_timeout = Millis(info.request_timeout_ms());
  im.liveness_check = Millis(info.liveness_check_ms());
  if (im.request_timeout != Millis(ClusterConfig{}.request_timeout_ms))
    im.coordinator = connect_control(coordinator, name, im.request_timeout);
  pb::RegisterClientRequest reg;
  reg.set_name(name);
  const int id = call_or_throw<pb::RegisterClientRequest, pb::RegisterClientReply>(*im.coordinator, reg,
                                                                                    "registering with " + coordinator)
                     .client_id();
  im.client_id = id;
  transport::TransportOptions to;
  to.rank = id;
  to.world_size = 0;  // dynamic peers only: the workers
  to.label = name;
  transport::BackendOptions backend;
  backend.ucx.peer_error_handling = info.ucx_peer_failure();
  im.transport = transport::make_transport(info.transport(), to, backend);
  for (const pb::WorkerInfo& w : info.workers()) attach(im, w, id);
}

ClusterClient::~ClusterClient() {
  // Tell the coordinator and every worker we are leaving (best effort).
  Impl& im = *impl_;
  pb::UnregisterClientRequest bye;
  bye.set_client_id(im.client_id);
  (void)im.coordinator->call<pb::UnregisterClientRequest, pb::UnregisterClientReply>(bye);
  for (auto& [id, l] : im.links) {
    if (!l.broken.empty()) continue;
    pb::WorkerRequest req;
    req.mutable_detach();
    wire::OutgoingMessage out;
    if (out.post(*im.transport, id, wire::kRequestTag, wire::kRequestPayloadTag, req, nullptr, 0))
      (void)im.transport->wait_all(out.requests, im.liveness_check);
    (void)im.transport->disconnect_peer(id);
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
  const pb::PlanPlacementReply placed =
      call_or_throw<pb::PlanPlacementRequest, pb::PlanPlacementReply>(*im.coordinator, plan, "placing the model");
  placement_ = wire::placement_from_pb(placed.placement(), placed.placement_epoch());
  im.config = std::make_unique<Config>(load_config_string(yaml, "model"));
  // Per worker: its experts' weights, encoded one after the other (core/expert.h).
  std::map<int, std::vector<float>> payloads;
  // Every worker gets the model (one holding no replica yet can receive some in a rebalance).
  std::map<int, Call> calls_of;
  for (const auto& [worker, link] : im.links) {
    Call& c = calls_of[worker];
    c.worker = worker;
    c.request.set_request_id(im.next_request++);
    c.request.mutable_load_model()->set_model_yaml(yaml);
    c.request.mutable_load_model()->set_placement_epoch(placed.placement_epoch());
    *c.request.mutable_load_model()->mutable_placement() = placed.placement();
  }
  for (const auto& [key, workers] : placement_.replicas) {
    const TensorMap w = extract_expert_weights(model, weights, key);
    for (int worker : workers) {
      Call& c = calls_of.at(worker);
      wire::key_to_pb(key, 1, c.request.mutable_load_model()->add_experts());
      encode_expert_weights(ExpertGeometry::of(model, key.stage), w, payloads[worker]);
    }
  }
  std::vector<Call> calls;
  for (auto& [worker, c] : calls_of) {
    c.payload = payloads[worker].data();
    c.payload_bytes = payloads[worker].size() * sizeof(float);
    calls.push_back(std::move(c));
  }
  im.call(calls, "LOAD_MODEL");
  pb::CommitPlacementRequest commit;
  commit.set_placement_epoch(placed.placement_epoch());
  call_or_throw<pb::CommitPlacementRequest, pb::CommitPlacementReply>(*im.coordinator, commit, "committing the placement");
  make_layer_experts(model.layers);
}

void ClusterClient::use_loaded_model(const Config& config) {
  Impl& im = *impl_;
  const auto deadline = Clock::now() + im.startup_timeout;
  for (;;) {
    const pb::ClusterInfoReply info = fetch_info(*im.coordinator, im.coordinator_endpoint);
    if (info.model_committed()) {
      if (info.model_yaml() != config_to_yaml(config))
        throw Error(ErrorKind::config, "the cluster at " + im.coordinator_endpoint + " holds another model than " + config.source);
      placement_ = wire::placement_from_pb(info.placement(), info.placement_epoch());
      im.config = std::make_unique<Config>(load_config_string(info.model_yaml(), "model"));
      break;
    }
    if (Clock::now() > deadline)
      throw Error(ErrorKind::transport, "no model was loaded on the cluster within " +
                                            std::to_string(im.startup_timeout.count()) + " ms (cluster.startup_timeout_ms)");
    std::this_thread::sleep_for(50ms);
  }
  make_layer_experts(config.model.layers);
}

void ClusterClient::make_layer_experts(int layers) {
  Impl& im = *impl_;
  const LoadMatrix rows = load_matrix_rows(im.config->model);  // the coordinator's report shape
  im.stages = static_cast<int>(im.config->model.layer.stages.size());
  const int widest = rows.experts;
  im.counts.Clear();
  im.counts.set_rows(rows.rows());
  im.counts.set_experts(widest);
  im.counts.set_workers(workers());
  im.counts.mutable_routed()->Resize(rows.rows() * widest, 0);
  im.counts.mutable_computed()->Resize(rows.rows() * widest, 0);
  im.counts.mutable_worker_rows()->Resize(rows.rows() * workers(), 0);
  im.last_report = Clock::now();
  impl_->layer_experts.clear();
  for (int l = 0; l < layers; ++l) impl_->layer_experts.push_back(std::make_unique<RemoteExperts>(*this, l));
}

ExpertCompute& ClusterClient::experts(int layer) {
  if (layer < 0 || static_cast<size_t>(layer) >= impl_->layer_experts.size())
    throw Error(ErrorKind::runtime, "no model loaded, or no layer " + std::to_string(layer));
  return *impl_->layer_experts[static_cast<size_t>(layer)];
}

namespace {
// One request per attached worker, each filled by `fill`.
template <class Fill>
std::vector<Call> broadcast(ClusterClient::Impl& im, Fill fill) {
  std::vector<Call> calls;
  for (auto& [id, l] : im.links) {
    Call c;
    c.worker = id;
    c.request.set_request_id(im.next_request++);
    fill(c.request);
    calls.push_back(std::move(c));
  }
  return calls;
}
}  // namespace

// ---- load statistics and placement epochs -----------------------------------------------------

void ClusterClient::count_load(int layer, int stage, const cpu::DispatchLayout& layout, const DispatchPlan& plan) {
  Impl& im = *impl_;
  const int row = layer * im.stages + stage, experts = im.counts.experts(), workers = im.counts.workers();
  for (int64_t e = 0; e < layout.experts && e < experts; ++e) {
    const int64_t computed = layout.expert_rows(e);
    const int64_t routed = layout.routed.empty() ? computed : layout.routed[static_cast<size_t>(e)];
    im.counts.mutable_routed()->at(row * experts + static_cast<int>(e)) += routed;
    im.counts.mutable_computed()->at(row * experts + static_cast<int>(e)) += computed;
  }
  for (const WorkerDispatch& wd : plan.workers)
    if (wd.worker < workers) im.counts.mutable_worker_rows()->at(row * workers + wd.worker) += wd.rows;
}

ClusterClient::MigrateAsk ClusterClient::report_load(uint64_t step_number) {
  Impl& im = *impl_;
  pb::LoadReportRequest req;
  req.set_client_id(im.client_id);
  req.set_step(step_number);
  req.set_training(training_);
  req.set_placement_epoch(placement_.epoch);
  *req.mutable_counts() = im.counts;
  for (auto* field : {im.counts.mutable_routed(), im.counts.mutable_computed(), im.counts.mutable_worker_rows()})
    std::fill(field->begin(), field->end(), 0);
  im.last_report = Clock::now();
  pb::LoadReportReply reply = call_or_throw<pb::LoadReportRequest, pb::LoadReportReply>(
      *im.coordinator, req, "reporting load to " + im.coordinator_endpoint);
  if (reply.placement_epoch() > placement_.epoch && reply.placement_size() > 0)
    switch_placement(wire::placement_from_pb(reply.placement(), reply.placement_epoch()));
  return {reply.migrate_epoch(), reply.migrate_at_step()};
}

void ClusterClient::switch_placement(Placement next) {
  SY_LOG(info, "runtime", impl_->name << ": placement epoch " << placement_.epoch << " -> " << next.epoch);
  placement_ = std::move(next);
}

// Serving: between requests, at most every kReportInterval, report and follow the epoch.
void ClusterClient::at_request_boundary() {
  constexpr auto kReportInterval = 20ms;
  if (training_ || Clock::now() - impl_->last_report < kReportInterval) return;
  report_load(0);
}

// After a training step that ran a rebalance's copies: wait for the coordinator's verdict and
// switch to the new epoch when it committed, before the next forward.
void ClusterClient::await_epoch(uint64_t epoch) {
  Impl& im = *impl_;
  const auto deadline = Clock::now() + 3 * im.request_timeout;
  for (;;) {
    pb::EpochDecisionRequest req;
    req.set_epoch(epoch);
    const pb::EpochDecisionReply r = call_or_throw<pb::EpochDecisionRequest, pb::EpochDecisionReply>(
        *im.coordinator, req, "asking " + im.coordinator_endpoint + " about epoch " + std::to_string(epoch));
    if (r.verdict() == pb::EpochDecisionReply::COMMITTED) return switch_placement(wire::placement_from_pb(r.placement(), epoch));
    if (r.verdict() == pb::EpochDecisionReply::ABORTED) {
      SY_LOG(warn, "runtime", im.name << ": rebalance to epoch " << epoch << " failed; staying on epoch " << placement_.epoch);
      return;
    }
    if (Clock::now() > deadline)
      throw Error(ErrorKind::transport, "the coordinator decided nothing about epoch " + std::to_string(epoch) + " within " +
                                            std::to_string(3 * im.request_timeout.count()) + " ms");
    std::this_thread::sleep_for(1ms);
  }
}

void ClusterClient::step(const AdamWConfig& adamw, int group_size, uint64_t step_number) {
  Impl& im = *impl_;
  const MigrateAsk load = report_load(step_number);
  const bool migrate = load.epoch > 0 && load.at_step == step_number;
  std::vector<Call> calls = broadcast(*impl_, [&](pb::WorkerRequest& r) {
    pb::StepOp* op = r.mutable_step();
    op->set_step(step_number);
    op->set_group_size(static_cast<uint32_t>(group_size));
    op->set_placement_epoch(placement_.epoch);
    if (migrate) op->set_migrate_epoch(load.epoch);
    pb::AdamWSettings* a = op->mutable_adamw();
    a->set_lr(adamw.lr);
    a->set_beta1(adamw.beta1);
    a->set_beta2(adamw.beta2);
    a->set_eps(adamw.eps);
    a->set_weight_decay(adamw.weight_decay);
  });
  // Workers holding replicas must step; the others (new holders of a rebalance) are best effort.
  std::vector<Call> optional;
  for (auto it = calls.begin(); it != calls.end();)
    if (placement_.experts_on(it->worker).empty()) {
      if (im.usable(it->worker)) optional.push_back(std::move(*it));  // a broken one is skipped
      it = calls.erase(it);
    } else {
      ++it;
    }
  const std::string what = "STEP " + std::to_string(step_number);
  const auto start = Clock::now();
  if (Status s = im.send(calls, what); !s) wire::throw_error(s);
  const Status sent_optional = im.send(optional, what);
  if (Status s = im.receive(calls, what, start, &exchange_seconds_); !s) wire::throw_error(s);
  if (Status s = sent_optional ? im.receive(optional, what, start, nullptr) : sent_optional; !s)
    SY_LOG(warn, "runtime", im.name << ": " << s.message() << " (the worker holds no replica; training goes on)");
  if (migrate) await_epoch(load.epoch);
}

namespace {
// Asks each worker in `keys` for the listed experts' tensors (gradients or weights) and adds
// them into one map under the model's weight names (replicas of one expert add up).
TensorMap fetch_expert_tensors(ClusterClient::Impl& im, const std::map<int, std::vector<ExpertKey>>& keys,
                               pb::FetchOp::What what) {
  const ModelConfig& model = im.config->model;
  const std::string name = what == pb::FetchOp::GRADS ? "FETCH_GRADS" : "FETCH_WEIGHTS";
  std::vector<Call> calls;
  for (const auto& [w, list] : keys) {
    Call c;
    c.worker = w;
    c.request.set_request_id(im.next_request++);
    c.request.mutable_fetch()->set_what(what);
    for (const ExpertKey& k : list) wire::key_to_pb(k, 1, c.request.mutable_fetch()->add_experts());
    calls.push_back(std::move(c));
  }
  im.call(calls, name);
  TensorMap out;
  size_t ci = 0;
  for (const auto& [w, list] : keys) {
    const std::vector<float>& r = calls[ci++].reply;
    size_t off = 0;
    for (const ExpertKey& k : list) {
      const ExpertGeometry geometry = ExpertGeometry::of(model, k.stage);
      const size_t n = static_cast<size_t>(encoded_expert_floats(geometry, false));
      if (off + n > r.size())
        throw Error(ErrorKind::transport, name + " reply from worker " + std::to_string(w) + " is too short");
      const ExpertTensors t = decode_expert(geometry, std::span(r).subspan(off, n), false, "worker " + std::to_string(w));
      off += n;
      for (const auto& [tensor_name, tensor] : t.weights) {
        auto [it, fresh] = out.try_emplace(expert_param_name(model, k, tensor_name), tensor.shape());
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
  return fetch_expert_tensors(*impl_, keys, pb::FetchOp::GRADS);
}

TensorMap ClusterClient::fetch_replica_weights(int worker) {
  std::map<int, std::vector<ExpertKey>> keys;
  for (const auto& [key, workers] : placement_.replicas)
    if (std::find(workers.begin(), workers.end(), worker) != workers.end()) keys[worker].push_back(key);
  if (keys.empty()) return {};
  return fetch_expert_tensors(*impl_, keys, pb::FetchOp::WEIGHTS);
}

void ClusterClient::zero_expert_grads() {
  std::vector<Call> calls = broadcast(*impl_, [](pb::WorkerRequest& r) { r.mutable_zero_grads(); });
  impl_->call(calls, "ZERO_GRADS");
}

void ClusterClient::save_checkpoint(const std::string& dir) {
  std::vector<Call> calls = broadcast(*impl_, [&](pb::WorkerRequest& r) {
    r.mutable_checkpoint()->set_action(pb::CheckpointOp::SAVE);
    r.mutable_checkpoint()->set_dir(dir);
  });
  impl_->call(calls, "SAVE " + dir);
}

void ClusterClient::restore_checkpoint(const std::string& dir) {
  std::vector<Call> calls = broadcast(*impl_, [&](pb::WorkerRequest& r) {
    r.mutable_checkpoint()->set_action(pb::CheckpointOp::RESTORE);
    r.mutable_checkpoint()->set_dir(dir);
  });
  impl_->call(calls, "RESTORE " + dir);
}

double ClusterClient::worker_compute_seconds() const { return impl_->worker_compute_seconds; }

std::vector<uint64_t> ClusterClient::rows_sent() const {
  std::vector<uint64_t> rows(static_cast<size_t>(workers()), 0);
  for (const auto& [id, l] : impl_->links) rows[static_cast<size_t>(id)] = l.rows_sent;
  return rows;
}

}  // namespace sy
