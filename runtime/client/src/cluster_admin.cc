#include "switchyard/client/cluster_admin.h"

#include <thread>

#include "control_calls.h"
#include "switchyard/core/log.h"

namespace sy {
namespace {
using namespace client_detail;
using Clock = std::chrono::steady_clock;

template <class T>
std::vector<T> to_vector(const google::protobuf::RepeatedField<T>& f) {
  return {f.begin(), f.end()};
}

ClusterLoad load_from_pb(const pb::LoadWindow& w) {
  ClusterLoad l;
  l.steps = w.steps();
  l.rows = w.sum().rows();
  l.experts = w.sum().experts();
  l.workers = w.sum().workers();
  l.routed = to_vector(w.sum().routed());
  l.computed = to_vector(w.sum().computed());
  l.worker_rows = to_vector(w.sum().worker_rows());
  l.ema = to_vector(w.ema());
  l.balancedness = w.balancedness();
  l.balancedness_min = w.balancedness_min();
  return l;
}

RebalanceInfo rebalance_from_pb(const pb::RebalanceRecord& r) {
  RebalanceInfo i;
  i.epoch = r.epoch();
  i.state = r.state();
  i.source = r.source();
  i.error = r.error();
  i.moved_replicas = r.moved_replicas();
  i.dropped_replicas = r.dropped_replicas();
  i.moved_bytes = r.moved_bytes();
  i.at_step = r.at_step();
  i.pause_ms = r.pause_ms();
  i.copy_seconds = r.copy_seconds();
  i.balancedness_before = r.balancedness_before();
  i.balancedness_after = r.balancedness_after();
  i.since_loss_seconds = r.since_loss_seconds();
  return i;
}

}  // namespace

ClusterStatus query_cluster_status(const std::string& coordinator) {
  auto c = connect_control(coordinator, "switchyard status");
  const pb::ClusterInfoReply info = fetch_info(*c, coordinator);
  ClusterStatus s;
  s.placement_epoch = info.placement_epoch();
  s.workers_expected = info.workers_expected();
  s.model_loaded = info.model_committed();
  s.placement = wire::placement_from_pb(info.placement(), info.placement_epoch());
  for (const pb::WorkerInfo& w : info.workers())
    s.workers.push_back({w.worker_id(), w.pid(), w.host(), w.control_endpoint(), w.alive(), w.rows_forward(),
                         w.rows_backward(), w.steps(), w.experts(), w.expert_bytes(), w.rows_per_s(),
                         w.ms_since_heartbeat(), w.fenced(), w.data_plane_id(), w.restarts(), w.replacement(),
                         w.device().empty() ? "cpu" : w.device()});
  for (const pb::ClientInfo& ci : info.clients())
    s.clients.push_back({ci.client_id(), ci.name(), ci.placement_epoch(), ci.training(), ci.step(), ci.ms_since_report()});
  if (info.has_load()) s.load = load_from_pb(info.load());
  for (const pb::RebalanceRecord& r : info.rebalances()) s.rebalances.push_back(rebalance_from_pb(r));
  return s;
}

void request_cluster_shutdown(const std::string& coordinator) {
  auto c = connect_control(coordinator, "switchyard shutdown");
  call_or_throw<pb::ShutdownRequest, pb::ShutdownReply>(*c, {}, "coordinator " + coordinator);
}

RebalanceInfo rebalance_cluster(const std::string& coordinator, const RebalanceOptions& options) {
  auto c = connect_control(coordinator, "switchyard rebalance");
  const pb::ClusterInfoReply info = fetch_info(*c, coordinator);
  pb::RebalanceRequest req;
  req.set_placement_yaml(options.placement_yaml);
  req.set_placement_source(options.placement_source);
  req.set_from_load(options.from_load);
  req.set_slots_per_worker(options.slots_per_worker);
  req.set_max_moves(options.max_moves);
  auto started = c->call<pb::RebalanceRequest, pb::RebalanceReply>(req);
  if (!started) {  // refused: a bad placement, no model, one already running
    const bool refused = started.status().code() == StatusCode::invalid_argument;
    throw Error(refused ? ErrorKind::config : ErrorKind::transport, "rebalance: " + started.status().message());
  }
  // The driver's own deadlines bound it: copies within 2 × request_timeout_ms of the step
  // boundary, which a training job reaches within startup_timeout_ms.
  const auto deadline = Clock::now() + Millis(info.startup_timeout_ms() + 4 * info.request_timeout_ms());
  pb::RebalanceStatusRequest ask;
  ask.set_epoch(started->epoch());
  for (;;) {
    const auto st = call_or_throw<pb::RebalanceStatusRequest, pb::RebalanceStatusReply>(
        *c, ask, "rebalance status from " + coordinator);
    if (st.done()) {
      RebalanceInfo r = rebalance_from_pb(st.record());
      if (r.state != "committed")
        throw Error(ErrorKind::transport, "rebalance to epoch " + std::to_string(r.epoch) +
                                              " failed (the placement in force stays): " + r.error);
      return r;
    }
    if (Clock::now() > deadline)
      throw Error(ErrorKind::transport, "rebalance to epoch " + std::to_string(started->epoch()) + " did not finish");
    std::this_thread::sleep_for(Millis(5));
  }
}

}  // namespace sy
