#include "switchyard/client/cluster_client.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <limits>
#include <optional>
#include <set>
#include <thread>

#include "switchyard/core/error.h"
#include "switchyard/core/expert.h"
#include "switchyard/core/log.h"
#include "switchyard/core/trace.h"
#include "switchyard/placement/load_trace.h"
#include "switchyard/scheduler/dispatch_plan.h"
#include "switchyard/transport/control.h"
#include "switchyard/transport/factory.h"
#include "switchyard/wire/wire.h"
#include "checkpoint_dir.h"
#include "client_impl.h"
#include "control_calls.h"

namespace sy {
namespace {
using namespace std::chrono_literals;
using client_detail::call_or_throw;
using client_detail::connect_control;
using client_detail::fetch_info;
}  // namespace

// ---------------------------------------------------------------------------------------------

// Connects the data plane to worker `w` through its control server. A replacement (a new
// process in the slot of a lost one) takes rows only under a placement newer than the
// coordinator's now (the rebalance that gives it replicas); one that holds its replicas, under
// the coordinator's epoch (a client behind it still routes with the lost predecessor's entries).
void ClusterClient::Impl::attach(const pb::WorkerInfo& w, uint64_t coordinator_epoch) {
  WorkerLink link;
  link.label = "worker " + std::to_string(w.worker_id()) + " (" + w.host() + ", " + w.control_endpoint() + ")";
  link.peer = w.data_plane_id();
  auto wc = connect_control(w.control_endpoint(), name, request_timeout);
  pb::AttachRequest req;
  req.set_client_name(name);
  req.set_client_id(client_id);
  req.set_client_address(transport->local_address());
  const pb::AttachReply rep = call_or_throw<pb::AttachRequest, pb::AttachReply>(*wc, req, "attaching to " + link.label);
  if (Status s = transport->connect_peer(link.peer, rep.worker_address()); !s)
    throw Error(ErrorKind::transport, "connecting the data plane to " + link.label + ": " + s.to_string());
  auto old = links.find(w.worker_id());
  if (old != links.end() || w.replacement()) link.routable_from_epoch = coordinator_epoch + (w.replacement() ? 1 : 0);
  if (old != links.end()) {
    if (old->second.broken.empty()) (void)transport->disconnect_peer(old->second.peer);
    SY_LOG(info, "runtime", name << ": attached " << link.label << ", the replacement of lost " << old->second.label);
  }
  links[w.worker_id()] = std::move(link);
}

void ClusterClient::Impl::sync_links(const pb::ClusterInfoReply& info) {
  for (const pb::WorkerInfo& w : info.workers()) {
    if (!w.alive() || w.data_plane_address().empty() || lost_unreported.count(w.worker_id())) continue;
    auto it = links.find(w.worker_id());
    if (it != links.end() && it->second.peer == w.data_plane_id()) {  // that process (lost or not)
      if (!w.replacement()) it->second.routable_from_epoch = std::min(it->second.routable_from_epoch, info.placement_epoch());
      continue;
    }
    try {
      attach(w, info.placement_epoch());
    } catch (const Error& e) {  // again at the next change; rows do not go there meanwhile
      SY_LOG(warn, "runtime", name << ": cannot attach worker " << w.worker_id() << ": " << e.what());
      continue;
    }
  }
  membership_version = info.membership_version();
}

namespace {

// Every expected worker is alive; or a model is loaded and each of its experts has a live
// replica (a worker was lost and the job goes on without it).
bool ready_to_attach(const pb::ClusterInfoReply& info, int& alive) {
  std::set<int> live;
  for (const pb::WorkerInfo& w : info.workers())
    if (w.alive()) live.insert(w.worker_id());
  alive = static_cast<int>(live.size());
  if (alive == info.workers_expected()) return true;
  if (!info.model_committed() || info.placement_size() == 0) return false;
  for (const pb::ExpertPlacement& e : info.placement())
    if (std::none_of(e.workers().begin(), e.workers().end(), [&](int w) { return live.count(w) > 0; })) return false;
  return true;
}
}  // namespace

ClusterClient::ClusterClient(const std::string& coordinator, const std::string& name, int connect_timeout_ms)
    : impl_(std::make_unique<Impl>()) {
  Impl& im = *impl_;
  im.coordinator_endpoint = coordinator;
  im.name = name;
  trace::start_from_env("client '" + name + "' pid " + std::to_string(::getpid()));
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
    if (ready_to_attach(info, alive)) break;
    if (Clock::now() > deadline)
      throw Error(ErrorKind::transport, "cluster at " + coordinator + " has " + std::to_string(alive) + " of " +
                                            std::to_string(info.workers_expected()) + " workers alive after " +
                                            std::to_string(im.startup_timeout.count()) + " ms (cluster.startup_timeout_ms)");
    std::this_thread::sleep_for(100ms);
    info = fetch_info(*im.coordinator, coordinator);
  }
  im.request_timeout = Millis(info.request_timeout_ms());
  im.coordinator_timeout = Millis(info.coordinator_timeout_ms());
  im.reply_spin = std::chrono::microseconds(info.client_spin_us());
  im.chunk_rows = info.chunk_rows();
  im.liveness_check = Millis(info.liveness_check_ms());
  im.checkpoints.every_steps = static_cast<int>(info.checkpoint_every_steps());
  im.checkpoints.dir = info.checkpoint_dir();
  im.checkpoints.keep = std::max(1, static_cast<int>(info.checkpoint_keep()));
  if (im.request_timeout != Millis(ClusterConfig{}.request_timeout_ms))
    im.coordinator = connect_control(coordinator, name, im.request_timeout);
  pb::RegisterClientRequest reg;
  reg.set_name(name);
  const int id = call_or_throw<pb::RegisterClientRequest, pb::RegisterClientReply>(*im.coordinator, reg,
                                                                                    "registering with " + coordinator)
                     .client_id();
  im.client_id = id;
  set_log_role_if_unset("client", id);
  transport::TransportOptions to;
  to.rank = id;
  to.world_size = 0;  // dynamic peers only: the workers
  to.label = name;
  transport::BackendOptions backend;
  backend.ucx.peer_error_handling = info.ucx_peer_failure();
  im.transport = transport::make_transport(info.transport(), to, backend);
  im.workers_expected = info.workers_expected();
  for (const pb::WorkerInfo& w : info.workers())
    if (w.alive()) im.attach(w, info.placement_epoch());
  im.membership_version = info.membership_version();
}

ClusterClient::~ClusterClient() {
  // Tell the coordinator and every worker we are leaving (best effort).
  Impl& im = *impl_;
  if (im.serve_latency.buckets_size() > 0 && im.config) {  // the last serving requests' load and latency
    pb::LoadReportRequest last;
    last.set_client_id(im.client_id);
    last.set_placement_epoch(placement_.epoch);
    *last.mutable_counts() = im.counts;
    im.take_observations(last);
    if (auto r = im.coordinator->call<pb::LoadReportRequest, pb::LoadReportReply>(last); !r)
      SY_LOG(debug, "runtime", im.name << ": final load report: " << r.status().to_string());
  }
  pb::UnregisterClientRequest bye;
  bye.set_client_id(im.client_id);
  (void)im.coordinator->call<pb::UnregisterClientRequest, pb::UnregisterClientReply>(bye);
  for (auto& [id, l] : im.links) {
    if (!l.broken.empty()) continue;
    pb::WorkerRequest req;
    req.mutable_detach();
    wire::OutgoingMessage out;
    if (out.post(*im.transport, l.peer, wire::kRequestTag, wire::kRequestPayloadTag, req, nullptr, 0))
      (void)im.transport->wait_all(out.requests, im.liveness_check);
    (void)im.transport->disconnect_peer(l.peer);
  }
}

int ClusterClient::workers() const { return impl_->workers_expected; }

void ClusterClient::set_training(bool training) { training_ = impl_->training = training; }

uint64_t ClusterClient::workers_lost() const { return impl_->workers_lost; }

void ClusterClient::load_model(const Config& config, const TensorMap& weights) {
  Impl& im = *impl_;
  const ModelConfig& model = config.require_model();
  const std::string yaml = config_to_yaml(config);
  pb::PlanPlacementRequest plan;
  plan.set_model_yaml(yaml);
  const pb::PlanPlacementReply placed =
      call_or_throw<pb::PlanPlacementRequest, pb::PlanPlacementReply>(*im.coordinator, plan, "placing the model");
  placement_ = wire::placement_from_pb(placed.placement(), placed.placement_epoch());
  im.routing_epoch = placement_.epoch;
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
      if (!calls_of.count(worker))
        throw Error(ErrorKind::transport, "placing the model: " + im.usable(worker).message());
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
      im.routing_epoch = placement_.epoch;
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
  set_log_epoch("client", placement_.epoch);
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
  im.journal.clear();
  for (int l = 0; l < layers; ++l)
    impl_->layer_experts.push_back(std::make_unique<TimedExperts>(std::make_unique<RemoteExperts>(*this, l), im, l, layers));
}

ExpertCompute& ClusterClient::experts(int layer) {
  if (layer < 0 || static_cast<size_t>(layer) >= impl_->layer_experts.size())
    throw Error(ErrorKind::runtime, "no model loaded, or no layer " + std::to_string(layer));
  return *impl_->layer_experts[static_cast<size_t>(layer)];
}

namespace {
// One request per attached worker not lost, each filled by `fill`.
template <class Fill>
std::vector<Call> broadcast(ClusterClient::Impl& im, Fill fill) {
  std::vector<Call> calls;
  for (auto& [id, l] : im.links) {
    if (!l.broken.empty()) continue;
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
  for (const WorkerDispatch& wd : plan.workers) {
    if (wd.worker < workers) im.counts.mutable_worker_rows()->at(row * workers + wd.worker) += wd.rows;
    for (const DispatchChunk& chunk : wd.chunks) im.expert_worker_rows[{row, chunk.expert, wd.worker}] += chunk.rows;
  }
}

ClusterClient::MigrateAsk ClusterClient::report_load(uint64_t step_number) {
  Impl& im = *impl_;
  pb::LoadReportRequest req;
  req.set_client_id(im.client_id);
  req.set_step(step_number);
  req.set_training(training_);
  req.set_placement_epoch(placement_.epoch);
  *req.mutable_counts() = im.counts;
  im.take_observations(req);
  for (auto* field : {im.counts.mutable_routed(), im.counts.mutable_computed(), im.counts.mutable_worker_rows()})
    std::fill(field->begin(), field->end(), 0);
  im.last_report = Clock::now();
  auto reported = im.coordinator_call<pb::LoadReportRequest, pb::LoadReportReply>(req);
  if (!reported && im.coordinator->broken()) {  // away (a restart?): the data plane goes on
    im.coordinator_away(reported.status());
    return {.coordinator_away = true};
  }
  if (!reported) throw Error(ErrorKind::transport, "reporting load to " + im.coordinator_endpoint + ": " + reported.status().to_string());
  if (im.coordinator_away_since) {
    SY_LOG(info, "runtime", im.name << ": the coordinator " << im.coordinator_endpoint << " answers again");
    im.coordinator_away_since.reset();
  }
  im.report_lost_workers();
  const pb::LoadReportReply& reply = *reported;
  if (reply.membership_version() != im.membership_version) {  // a worker joined: attach before routing to it
    auto info = im.coordinator_call<pb::ClusterInfoRequest, pb::ClusterInfoReply>(pb::ClusterInfoRequest{});
    if (info) im.sync_links(*info);
  }
  if (reply.placement_epoch() > placement_.epoch && reply.placement_size() > 0)
    switch_placement(wire::placement_from_pb(reply.placement(), reply.placement_epoch()));
  return {.epoch = reply.migrate_epoch(), .at_step = reply.migrate_at_step(), .checkpoint = reply.write_checkpoint()};
}

void ClusterClient::switch_placement(Placement next) {
  SY_LOG(info, "runtime", impl_->name << ": placement epoch " << placement_.epoch << " -> " << next.epoch);
  placement_ = std::move(next);
  impl_->routing_epoch = placement_.epoch;
  set_log_epoch("client", placement_.epoch);
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
    auto decided = im.coordinator_call<pb::EpochDecisionRequest, pb::EpochDecisionReply>(req);
    if (!decided && im.coordinator->broken()) {  // away: ask again (a restart forgets the rebalance)
      im.coordinator_away(decided.status());
      std::this_thread::sleep_for(im.liveness_check);
      continue;
    }
    if (!decided && decided.status().code() == StatusCode::invalid_argument) {
      SY_LOG(warn, "runtime", im.name << ": the coordinator does not know epoch " << epoch << " (restarted?): "
                                      << "staying on epoch " << placement_.epoch);
      return;  // the workers abort a prepared epoch that the clients do not route with
    }
    if (!decided)
      throw Error(ErrorKind::transport, "asking " + im.coordinator_endpoint + " about epoch " + std::to_string(epoch) +
                                            ": " + decided.status().to_string());
    const pb::EpochDecisionReply& r = *decided;
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

namespace {

// One phase of an optimizer step: the phase's requests to every live worker, exchanged.
struct StepPhase {
  std::vector<Call> calls;
  bool retry = false;   // REDUCE: a replica holder was lost, or a reduction met a dead peer
  Status cause;         // why, for the error when retries run out
};

}  // namespace

// The optimizer step in two phases (wire: StepOp). REDUCE is retried, with the backward work of
// lost workers recomputed on survivors first, until it succeeds on every live worker; then APPLY.
// Workers that hold no replica (new holders of a rebalance) are best effort.
void ClusterClient::step(const AdamWConfig& adamw, int group_size, uint64_t step_number) {
  Impl& im = *impl_;
  im.step_reached();
  const MigrateAsk load = report_load(step_number);
  // At the step the coordinator named, or at once when past it (a restarted coordinator names a
  // boundary from the steps it has seen since).
  const bool migrate = load.epoch > 0 && load.at_step <= step_number;
  const std::string what = "STEP " + std::to_string(step_number);
  auto holds = [&](int w) { return !placement_.experts_on(w).empty(); };
  auto run_phase = [&](pb::StepOp::Phase phase, uint32_t attempt) {
    StepPhase p;
    const std::set<int> live = im.live_workers();
    p.calls = broadcast(im, [&](pb::WorkerRequest& r) {
      pb::StepOp* op = r.mutable_step();
      op->set_step(step_number);
      op->set_group_size(static_cast<uint32_t>(group_size));
      op->set_placement_epoch(placement_.epoch);
      op->set_phase(phase);
      op->set_attempt(attempt);
      if (migrate) op->set_migrate_epoch(load.epoch);
      for (int w = 0; w < im.workers_expected; ++w)
        if (!live.count(w)) op->add_dead_workers(w);
      pb::AdamWSettings* a = op->mutable_adamw();
      a->set_lr(adamw.lr);
      a->set_beta1(adamw.beta1);
      a->set_beta2(adamw.beta2);
      a->set_eps(adamw.eps);
      a->set_weight_decay(adamw.weight_decay);
    });
    if (Status s = im.exchange(p.calls, what, &exchange_seconds_); !s) wire::throw_error(s);  // a timeout, a malformed reply
    // Only the survivors' answers decide a retry: they answer every client of a data-parallel
    // group alike. A worker lost after its partners reduced with it has contributed; one lost
    // before makes them fail (or, named lost by one client only, disagree) and answer peer_failed.
    for (const Call& c : p.calls) {
      if (!c.error && c.error.code() == StatusCode::peer_failed) p.retry = true, p.cause = c.error;
      if (!c.error && c.error.code() != StatusCode::peer_failed) {
        const Status s(c.error.code(), what + " failed on " + c.error.message());
        if (holds(c.worker)) wire::throw_error(s);
        SY_LOG(warn, "runtime", im.name << ": " << s.message() << " (the worker holds no replica; training goes on)");
      }
    }
    return p;
  };
  const uint32_t max_attempts = 16;  // StepOp.attempt is distinct mod 16 in the workers' tags
  for (uint32_t attempt = 0;; ++attempt) {
    RemoteExperts::replay_lost_backward(*this);  // throws naming an expert left without a replica
    const StepPhase reduced = run_phase(pb::StepOp::REDUCE, attempt);
    if (!reduced.retry) break;
    if (attempt + 1 == max_attempts)
      wire::throw_error(Status(StatusCode::peer_failed, what + ": the replica reduction failed " +
                                                            std::to_string(max_attempts) + " times; last: " +
                                                            reduced.cause.message()));
    // A reduction met a dead peer: lose the workers the coordinator declares dead, then again.
    const std::map<int, std::string> dead = im.dead_among(im.live_workers());
    for (const auto& [w, why] : dead) im.lose_worker(w, what + ": " + im.label(w) + " is dead (" + why + ")");
    if (dead.empty()) std::this_thread::sleep_for(im.liveness_check);
    SY_LOG(warn, "runtime", im.name << ": " << what << ": reducing again without the lost workers ("
                                    << reduced.cause.message() << ")");
  }
  run_phase(pb::StepOp::APPLY, 0);  // a worker lost now is fenced; the survivors have stepped
  im.journal.clear();
  im.last_step = step_number;
  if (migrate) await_epoch(load.epoch);
  const int every = im.checkpoints.every_steps;
  if (every > 0 && step_number % static_cast<uint64_t>(every) == 0) {
    if (load.checkpoint || (load.coordinator_away && group_size == 1))
      periodic_checkpoint(step_number);
    else if (load.coordinator_away)
      SY_LOG(warn, "runtime",
             im.name << ": no checkpoint of step " << step_number << ": the coordinator, which "
                     << "names the rank of the group that writes it, is away");
  }
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
  impl_->journal.clear();
  std::vector<Call> calls = broadcast(*impl_, [](pb::WorkerRequest& r) { r.mutable_zero_grads(); });
  impl_->call(calls, "ZERO_GRADS");
}

// ---- checkpoints (README "Checkpoints"; the layout: checkpoint_dir.h) --------------------------

namespace {

// The model part of a config as YAML (a checkpoint's model.yaml; what restore compares).
std::string model_yaml_of(const ModelConfig& model) {
  Config c;
  c.has_model = true;
  c.model = model;
  return config_to_yaml(c);
}

// A CheckpointOp for every live worker, with the placement (each saves or restores exactly
// the replicas it puts there).
std::vector<Call> checkpoint_calls(ClusterClient::Impl& im, pb::CheckpointOp::Action action, const std::string& dir,
                                   const Placement& placement) {
  return broadcast(im, [&](pb::WorkerRequest& r) {
    pb::CheckpointOp* op = r.mutable_checkpoint();
    op->set_action(action);
    op->set_dir(dir);
    op->set_placed(true);
    op->set_placement_epoch(placement.epoch);
    wire::placement_to_pb(placement, op->mutable_placement());
  });
}

// Every worker the placement puts a replica on is attached and not lost, or a transport error
// saying which is not: a checkpoint without its replicas would be incomplete, a restore would
// leave them out.
// After a restore every worker holds what the placement puts on it, a replacement too (it took
// no rows before: its slot's replicas were its lost predecessor's).
void every_worker_holds_its_replicas(ClusterClient::Impl& im) {
  for (auto& [w, link] : im.links) link.routable_from_epoch = 0;
}

void require_holders(ClusterClient::Impl& im, const Placement& placement, const std::string& what) {
  for (const auto& [key, workers] : placement.replicas)
    for (int w : workers)
      if (Status s = im.usable(w); !s)
        throw Error(ErrorKind::transport, what + ": " + key.to_string() + " has a replica on worker " +
                                              std::to_string(w) + " in placement epoch " +
                                              std::to_string(placement.epoch) +
                                              ", which is not usable: " + s.message());
}

// The first expert whose replica set differs, as "E on workers [..] in the checkpoint, [..] here".
std::string placement_difference(const Placement& saved, const Placement& current) {
  auto workers_text = [](const Placement& p, const ExpertKey& k) {
    auto it = p.replicas.find(k);
    if (it == p.replicas.end()) return std::string("none");
    std::vector<int> w = it->second;
    std::sort(w.begin(), w.end());
    std::string t = "[";
    for (size_t i = 0; i < w.size(); ++i) t += (i ? ", " : "") + std::to_string(w[i]);
    return t + "]";
  };
  std::set<ExpertKey> keys;
  for (const auto* p : {&saved, &current})
    for (const auto& [k, w] : p->replicas) keys.insert(k);
  for (const ExpertKey& k : keys) {
    const std::string a = workers_text(saved, k), b = workers_text(current, k);
    if (a != b) return k.to_string() + " is on workers " + a + " in the checkpoint, " + b + " in the cluster";
  }
  return "";
}

}  // namespace

CheckpointInfo ClusterClient::write_checkpoint(const std::string& dir, uint64_t step_number) {
  Impl& im = *impl_;
  if (!im.config) throw Error(ErrorKind::runtime, "checkpoint: no model loaded");
  const std::string what = "checkpoint " + dir;
  require_holders(im, placement_, what);
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) throw_input_error(what + ": cannot create the directory: " + ec.message());
  std::vector<Call> calls = checkpoint_calls(im, pb::CheckpointOp::SAVE, dir, placement_);
  im.call(calls, "SAVE " + dir);
  client_detail::CheckpointManifest manifest;
  manifest.step = step_number;
  manifest.placement_epoch = placement_.epoch;
  for (const Call& c : calls) manifest.workers.push_back(c.worker);
  client_detail::write_checkpoint_files(dir, manifest, placement_to_yaml(placement_), model_yaml_of(im.config->model));
  return {dir, step_number, placement_.epoch};
}

namespace {
// Workers resolve a relative directory against their own working directory: send an absolute one.
std::string absolute_dir(const std::string& dir) {
  std::error_code ec;
  const std::filesystem::path p = std::filesystem::absolute(dir, ec);
  return ec ? dir : p.string();
}
}  // namespace

CheckpointInfo ClusterClient::save_checkpoint(const std::string& given_dir) {
  Impl& im = *impl_;
  const std::string dir = absolute_dir(given_dir);
  uint64_t step_number = im.last_step;
  if (step_number == 0) {  // not this client's training (`switchyard checkpoint save`): the job's
    const pb::ClusterInfoReply info = fetch_info(*im.coordinator, im.coordinator_endpoint);
    for (const pb::ClientInfo& c : info.clients())
      if (c.training()) step_number = std::max(step_number, c.step());
  }
  return write_checkpoint(dir, step_number);
}

// The workers write into step-S.tmp; then it is renamed and `latest` moved (publish_checkpoint).
void ClusterClient::periodic_checkpoint(uint64_t step_number) {
  Impl& im = *impl_;
  for (const auto& [key, workers] : placement_.replicas)
    for (int w : workers)
      if (!im.usable(w)) {  // recovery will re-replicate it; a later checkpoint has it all
        SY_LOG(warn, "runtime",
               im.name << ": no checkpoint of step " << step_number << ": worker " << w << ", which holds a replica of "
                       << key.to_string() << ", is lost");
        return;
      }
  const auto start = Clock::now();
  const std::string root = im.checkpoints.dir;
  const std::string tmp = root + "/" + client_detail::step_dir_name(step_number) + ".tmp";
  std::error_code ec;
  std::filesystem::remove_all(tmp, ec);  // a crash's leftover
  write_checkpoint(tmp, step_number);
  client_detail::publish_checkpoint(root, step_number, im.checkpoints.keep);
  SY_LOG(info, "runtime",
         im.name << ": checkpoint of step " << step_number << " written to " << root << "/"
                 << client_detail::step_dir_name(step_number) << " in "
                 << std::chrono::duration<double>(Clock::now() - start).count() << " s");
}

CheckpointInfo ClusterClient::restore_checkpoint(const std::string& given_dir) {
  Impl& im = *impl_;
  const std::string dir = absolute_dir(given_dir);
  if (!im.config) throw Error(ErrorKind::runtime, "checkpoint restore: no model loaded");
  const std::optional<std::string> resolved = client_detail::resolve_checkpoint(dir);
  if (!resolved) {  // worker files only: each worker checks its file against the placement
    require_holders(im, placement_, "restoring " + dir);
    std::vector<Call> calls = checkpoint_calls(im, pb::CheckpointOp::RESTORE, dir, placement_);
    im.call(calls, "RESTORE " + dir);
    every_worker_holds_its_replicas(im);
    return {dir, 0, placement_.epoch};
  }
  const std::string& d = *resolved;
  const client_detail::CheckpointManifest manifest = client_detail::read_manifest(d);
  const ModelConfig& model = im.config->model;
  if (client_detail::read_checkpoint_text(d, client_detail::kModelFile) != model_yaml_of(model))
    throw_input_error("checkpoint " + d + " holds another model (" + d + "/" + client_detail::kModelFile +
                      ") than the cluster's");
  const std::string placement_path = d + "/" + client_detail::kPlacementFile;
  Placement saved;
  try {
    saved = parse_placement(client_detail::read_checkpoint_text(d, client_detail::kPlacementFile), placement_path,
                            model, im.workers_expected, std::numeric_limits<int64_t>::max());
  } catch (const Error& e) {
    if (e.kind() != ErrorKind::config) throw;
    throw_input_error("checkpoint " + d + ": its placement does not fit this cluster: " + e.what());
  }
  if (const std::string diff = placement_difference(saved, placement_); !diff.empty())
    throw_input_error(
        "checkpoint " + d + " was written under another placement (epoch " + std::to_string(manifest.placement_epoch) +
        ") than the cluster's (epoch " + std::to_string(placement_.epoch) + "): " + diff +
        "; restoring it would leave the workers holding other replicas than the coordinator places. "
        "Start the cluster with `cluster.placement: " +
        placement_path + "`, or move it there first with `switchyard rebalance --cluster HOST:PORT --placement " +
        placement_path + "`, then restore");
  for (const auto& [key, workers] : placement_.replicas)
    for (int w : workers) {
      const std::string file = client_detail::worker_file(d, w);
      if (std::find(manifest.workers.begin(), manifest.workers.end(), w) == manifest.workers.end() ||
          !std::filesystem::exists(file))
        throw_input_error("checkpoint " + d + ": worker file '" + file + "' (replicas of worker " + std::to_string(w) +
                          ", e.g. " + key.to_string() + ") does not exist");
    }
  require_holders(im, placement_, "restoring " + d);
  std::vector<Call> calls = checkpoint_calls(im, pb::CheckpointOp::RESTORE, d, placement_);
  im.call(calls, "RESTORE " + d);
  every_worker_holds_its_replicas(im);
  im.last_step = manifest.step;
  SY_LOG(info, "runtime",
         im.name << ": restored checkpoint " << d << " (step " << manifest.step << ", placement epoch "
                 << manifest.placement_epoch << ")");
  return {d, manifest.step, manifest.placement_epoch};
}

ClusterClient::CopyCounts ClusterClient::copies() const { return impl_->copies; }

double ClusterClient::worker_compute_seconds() const { return impl_->worker_compute_seconds; }

std::vector<uint64_t> ClusterClient::rows_sent() const {
  std::vector<uint64_t> rows(static_cast<size_t>(workers()), 0);
  for (const auto& [id, l] : impl_->links) rows[static_cast<size_t>(id)] = l.rows_sent;
  return rows;
}

}  // namespace sy
