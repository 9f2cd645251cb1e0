// The rebalance driver: a new placement (from YAML or planned from the load window) becomes
// the committed epoch with nothing lost, or the old epoch stays.
//
//   validate (model, workers, memory while both placements exist) → copies: new holder ← a
//   current holder → prepare every worker (MigrateRequest) → copies run (training: inside the
//   step after the next report, so every client and worker agrees on the boundary; serving:
//   between requests) → every copy verified (MigrationReport) → commit epoch E+1 → workers
//   learn it (COMMIT), clients switch before their next forward → once every active client
//   routes with E+1, workers drop the replicas E+1 no longer places on them (DROP_OLD).
//
// Any failure (a worker dead, silent past the deadline, a copy that does not verify) aborts:
// epoch E stays, workers discard the replicas the copies made, the request fails naming the
// worker.
#include <algorithm>
#include <cmath>

#include "coordinator_impl.h"
#include "switchyard/core/error.h"
#include "switchyard/core/log.h"
#include "switchyard/placement/load_trace.h"
#include "switchyard/placement/planner.h"

namespace sy {
namespace {

using Millis = std::chrono::milliseconds;

// The window's computed rows as a planner load matrix of the model's (layer, stage) rows.
LoadMatrix window_matrix(const ModelConfig& model, const LoadWindow& load) {
  LoadMatrix m = load_matrix_rows(model);
  m.counts = load.computed();
  return m;
}

// Replicas a worker holds per (layer, stage): the setting, or ceil(experts / workers) + 1.
int slots_per_worker(const ModelConfig& model, const ClusterConfig& cluster, int requested) {
  if (requested > 0) return requested;
  if (cluster.rebalance.slots_per_worker > 0) return cluster.rebalance.slots_per_worker;
  const int widest = load_matrix_rows(model).experts;
  return std::min(widest, (widest + cluster.workers - 1) / cluster.workers + 1);
}

PlanResult plan_from_window(const ModelConfig& model, const ClusterConfig& cluster, const LoadWindow& load,
                            const Placement& current, int slots, int max_moves) {
  PlannerOptions o;
  o.workers = cluster.workers;
  o.slots_per_worker = slots_per_worker(model, cluster, slots);
  o.current = &current;
  o.max_moves = max_moves;
  o.min_replicas = std::min(cluster.rebalance.min_replicas, cluster.workers);
  const LoadMatrix m = window_matrix(model, load);
  for (int r = 0; r < m.rows(); ++r) o.replica_bytes.push_back(expert_migration_bytes(model, m.stage[static_cast<size_t>(r)]));
  return plan_placement(m, o);
}

// Both placements at once: what every worker holds while replicas copy.
Placement union_of(const Placement& a, const Placement& b) {
  Placement u = a;
  u.shares.clear();
  for (const auto& [key, workers] : b.replicas) {
    std::vector<int>& list = u.replicas[key];
    for (int w : workers)
      if (std::find(list.begin(), list.end(), w) == list.end()) list.push_back(w);
  }
  return u;
}

}  // namespace

// Heavy (the handler thread): the placement is parsed or planned from a snapshot taken under the
// lock, without it, so heartbeats go on; the rebalance starts only if nothing changed meanwhile.
Result<pb::RebalanceReply> Coordinator::Impl::rebalance(const pb::RebalanceRequest& req) {
  ModelConfig model_now;
  Placement current;
  LoadWindow window_now;
  uint64_t epoch_now = 0;
  {
    std::lock_guard<std::mutex> lock(mu);
    if (!model || !committed) return Status(StatusCode::invalid_argument, "rebalance: no model is loaded on the cluster");
    if (migration)
      return Status(StatusCode::invalid_argument,
                    "rebalance: the rebalance to epoch " + std::to_string(migration->next.epoch) + " is still running");
    model_now = model->model;
    current = placement;
    window_now = load;
    epoch_now = epoch;
  }
  const LoadMatrix window = window_matrix(model_now, window_now);
  const double before = placement_balancedness(current, window, cluster.workers);
  Placement next;
  std::string source;
  double after = 0;
  try {
    if (!req.placement_yaml().empty()) {
      const std::string file = req.placement_source().empty() ? "rebalance placement" : req.placement_source();
      next = parse_placement(req.placement_yaml(), file, model_now, cluster.workers, cluster.worker_memory_bytes());
      after = placement_balancedness(next, window, cluster.workers);
      source = "placement file";  // the record's source kind
    } else if (req.from_load()) {
      if (window_now.steps() == 0) return Status(StatusCode::invalid_argument, "rebalance --from-load: no load measured yet");
      const int max_moves = req.max_moves() == -2 ? cluster.rebalance.max_moves : req.max_moves();
      PlanResult plan = plan_from_window(model_now, cluster, window_now, current, req.slots_per_worker(), max_moves);
      next = std::move(plan.placement);
      after = plan.balancedness;
      source = "from load";
    } else {
      return Status(StatusCode::invalid_argument, "rebalance: give a placement or ask to plan from the load");
    }
  } catch (const Error& e) {
    return Status(StatusCode::invalid_argument, e.what());
  }
  std::lock_guard<std::mutex> lock(mu);
  if (migration)
    return Status(StatusCode::invalid_argument,
                  "rebalance: the rebalance to epoch " + std::to_string(migration->next.epoch) + " is still running");
  if (epoch != epoch_now || !model || !committed)
    return Status(StatusCode::invalid_argument, "rebalance: the placement changed (epoch " + std::to_string(epoch_now) +
                                                    " -> " + std::to_string(epoch) + ") while this one was planned; retry");
  auto epoch_started = start_rebalance(std::move(next), source, before, after);
  if (!epoch_started) return epoch_started.status();
  pb::RebalanceReply reply;
  reply.set_epoch(*epoch_started);
  return reply;
}

// Caller holds mu (a load report, on the I/O thread): the check is quick; the planning runs on
// the policy thread from a snapshot, and its rebalance starts only if nothing changed meanwhile.
void Coordinator::Impl::maybe_rebalance_by_policy(uint64_t step) {
  const RebalancePolicy& policy = cluster.rebalance;
  if (policy.every_steps <= 0 || migration || !committed || step == 0 || step == last_policy_step ||
      step % static_cast<uint64_t>(policy.every_steps) != 0 || policy_planning)
    return;
  last_policy_step = step;
  policy_planning = true;
  if (policy_thread.joinable()) policy_thread.join();  // finished: it cleared policy_planning
  policy_thread = std::thread([this, step, model_now = model->model, window_now = load, current = placement] {
    plan_by_policy(step, model_now, window_now, current);
  });
}

void Coordinator::Impl::plan_by_policy(uint64_t step, const ModelConfig& model_now, const LoadWindow& window_now,
                                       const Placement& current) {
  const RebalancePolicy& policy = cluster.rebalance;
  std::optional<PlanResult> plan;
  const double before = placement_balancedness(current, window_matrix(model_now, window_now), cluster.workers);
  try {
    plan = plan_from_window(model_now, cluster, window_now, current, 0, policy.max_moves);
  } catch (const Error& e) {
    SY_LOG(warn, "runtime", "rebalance policy at step " << step << ": " << e.what());
  }
  std::lock_guard<std::mutex> lock(mu);
  policy_planning = false;
  if (!plan || shutdown || migration || epoch != current.epoch) return;
  if (plan->balancedness < before + policy.min_gain) {
    SY_LOG(debug, "runtime", "rebalance policy at step " << step << ": planned balancedness " << plan->balancedness
                                                          << " does not beat " << before << " by " << policy.min_gain);
    return;
  }
  auto started = start_rebalance(std::move(plan->placement), "policy", before, plan->balancedness);
  if (!started) SY_LOG(warn, "runtime", "rebalance policy at step " << step << ": " << started.status().message());
}

void Coordinator::Impl::maybe_recover() {
  const auto now = Clock::now();
  if (!recovery_due || migration || !committed || !model) return;  // load reports call this: cheap when nothing is due
  if (recovery_failed_at && now - *recovery_failed_at < Millis(cluster.dead_after_ms)) return;
  // Fenced workers (a client lost them) and the slots of replaced ones leave the placement; new
  // replicas go to live workers (a replacement among them).
  auto kept = [&](int w) {
    return members.count(w) && members.at(w).fenced.empty() && !members.at(w).info.replacement();
  };
  Placement next = placement;
  std::map<int, int> held;  // replicas per live worker in `next`
  for (const auto& [id, m] : members) {  // copy targets: live, and reachable on the data plane
    if (!alive(m, now)) continue;
    if (!m.info.data_plane_address().empty()) held[id] = 0;
    else if (now - m.registered_at < Millis(cluster.dead_after_ms)) return;  // a replacement is starting: wait for it
  }
  for (const auto& [key, workers] : placement.replicas)
    for (int w : workers)
      if (held.count(w) && kept(w)) ++held[w];
  int restored = 0, lost = 0;
  for (auto& [key, workers] : next.replicas) {
    const size_t want = workers.size();
    std::erase_if(workers, [&](int w) { return !kept(w); });
    if (workers.size() == want) continue;
    next.shares.erase(key);  // an even split over the replicas it has now
    lost += static_cast<int>(want - workers.size());
    if (workers.empty()) continue;  // nothing to copy from: the job fails naming it
    while (workers.size() < want) {
      int best = -1;
      for (const auto& [w, n] : held)
        if (std::find(workers.begin(), workers.end(), w) == workers.end() && (best < 0 || n < held[best])) best = w;
      if (best < 0) break;  // every live worker holds it already
      workers.push_back(best);
      ++held[best];
      ++restored;
    }
  }
  if (lost == 0) {
    recovery_due = false;
    return;
  }
  if (!lost_since) lost_since = now;
  std::string gone;
  for (const auto& [key, workers] : next.replicas)
    if (workers.empty()) gone += (gone.empty() ? "" : ", ") + key.to_string();
  if (!gone.empty()) {  // the clients fail naming them; `switchyard checkpoint restore` brings them back
    recovery_failed_at = now;
    SY_LOG(error, "runtime", "recovery impossible: no replica left of " << gone);
    return;
  }
  auto started = start_rebalance(next, "recovery", 0, 0);
  recovery_due = !started;  // a failed start is tried again; a failed recovery sets it when it ends
  if (!started) {
    recovery_failed_at = now;
    SY_LOG(error, "runtime", "recovery of " << lost << " lost replicas: " << started.status().message());
    return;
  }
  SY_LOG(warn, "runtime", "recovery to epoch " << *started << ": " << lost << " replicas were on lost workers, "
                                               << restored << " are copied to live workers");
}

bool Coordinator::Impl::holds_its_replicas(int w, Clock::time_point now) const {
  auto it = members.find(w);
  return it != members.end() && alive(it->second, now) && !it->second.info.replacement();
}

void Coordinator::Impl::maybe_admit() {
  const auto now = Clock::now();
  if (migration || !committed || !model || recovery_due) return;
  std::map<int, int> held;  // replicas per live worker
  std::vector<int> joiners;
  for (const auto& [id, m] : members) {
    if (!alive(m, now)) continue;
    held[id] = 0;
    if (m.info.replacement() && !m.info.data_plane_address().empty()) joiners.push_back(id);
  }
  if (joiners.empty()) return;
  if (admit_failed_at && now - *admit_failed_at < Millis(cluster.dead_after_ms)) return;
  Placement next = placement;
  for (const auto& [key, workers] : next.replicas)
    for (int w : workers)
      if (held.count(w)) ++held[w];
  int moved = 0;
  for (;;) {  // one replica at a time: from the worker holding most to the joiner holding fewest
    const int j = *std::min_element(joiners.begin(), joiners.end(), [&](int a, int b) { return held[a] < held[b]; });
    int donor = -1;
    for (const auto& [w, n] : held)
      if (holds_its_replicas(w, now) && (donor < 0 || n > held[donor])) donor = w;
    if (donor < 0 || held[donor] - held[j] <= 1) break;
    bool found = false;
    for (auto it = next.replicas.rbegin(); it != next.replicas.rend() && !found; ++it) {
      std::vector<int>& workers = it->second;
      auto d = std::find(workers.begin(), workers.end(), donor);
      if (d == workers.end() || std::find(workers.begin(), workers.end(), j) != workers.end()) continue;
      *d = j;
      next.shares.erase(it->first);
      found = true;
    }
    if (!found) break;
    --held[donor], ++held[j], ++moved;
  }
  if (moved == 0) {  // nothing to give it (more workers than replicas): it stays an empty member
    for (int j : joiners) members.at(j).info.set_replacement(false);
    ++membership_version;
    save_state();
    return;
  }
  const LoadMatrix window = window_matrix(model->model, load);
  const double before = placement_balancedness(placement, window, cluster.workers);
  const double after = placement_balancedness(next, window, cluster.workers);
  auto started = start_rebalance(std::move(next), "join", before, after);
  if (!started) {
    admit_failed_at = now;
    SY_LOG(error, "runtime", "join of replacement workers: " << started.status().message());
    return;
  }
  admit_failed_at.reset();
  SY_LOG(info, "runtime", "join to epoch " << *started << ": " << moved << " replicas move to " << joiners.size()
                                           << " replacement worker(s)");
}

Result<uint64_t> Coordinator::Impl::start_rebalance(Placement next, const std::string& source, double before,
                                                    double after) {
  const ModelConfig& m = model->model;
  next.epoch = last_epoch + 1;
  Migration mig;
  try {
    next.validate(m, cluster.workers);
    check_worker_memory(union_of(placement, next), m, cluster.workers, cluster.worker_memory_bytes(),
                        "rebalance to epoch " + std::to_string(next.epoch) + " (while both placements exist)");
  } catch (const Error& e) {
    return Status(StatusCode::invalid_argument, e.what());
  }
  const auto now = Clock::now();
  std::map<int, int> sends;  // copies each current holder serves, to spread them
  uint64_t moved_bytes = 0;
  uint32_t dropped = 0;
  for (const auto& [key, workers] : next.replicas) {
    std::vector<int> holders = placement.workers_for(key);  // a replacement holds none of its slot's yet
    std::erase_if(holders, [&](int h) { return members.count(h) && members.at(h).info.replacement(); });
    for (int w : holders) dropped += std::find(workers.begin(), workers.end(), w) == workers.end();
    for (int w : workers) {
      if (std::find(holders.begin(), holders.end(), w) != holders.end()) continue;
      if (!members.count(w) || !alive(members.at(w), now))
        return Status(StatusCode::unreachable, "rebalance: worker " + std::to_string(w) + " (new holder of " +
                                                   key.to_string() + ") is not alive");
      int from = -1;
      for (int h : holders)
        if (members.count(h) && alive(members.at(h), now) && (from < 0 || sends[h] < sends[from])) from = h;
      if (from < 0) return Status(StatusCode::unreachable, "rebalance: no live holder of " + key.to_string() + " to copy from");
      ++sends[from];
      pb::ReplicaCopy& c = mig.copies.emplace_back();
      c.set_layer(key.layer);
      c.set_stage(key.stage);
      c.set_expert(key.expert);
      c.set_from_worker(from);
      c.set_to_worker(w);
      mig.involved.insert(from);
      mig.involved.insert(w);
      moved_bytes += static_cast<uint64_t>(expert_migration_bytes(m, key.stage));
    }
  }
  mig.at_step = training_client_active(now);
  if (mig.at_step)  // every worker takes part in the step boundary
    for (const auto& [id, member] : members)
      if (alive(member, now)) mig.involved.insert(id);
  mig.next = std::move(next);
  pb::RebalanceRecord& r = mig.record;
  r.set_epoch(mig.next.epoch);
  r.set_state("copying");
  r.set_source(source);
  r.set_moved_replicas(static_cast<uint32_t>(mig.copies.size()));
  r.set_moved_bytes(moved_bytes);
  r.set_dropped_replicas(dropped);
  r.set_balancedness_before(before);
  r.set_balancedness_after(after);
  last_epoch = mig.next.epoch;
  migration = std::move(mig);
  verdicts[last_epoch] = pb::EpochDecisionReply::PENDING;
  SY_LOG(info, "runtime", "rebalance to epoch " << last_epoch << " (" << source << "): " << migration->copies.size()
                                                << " replicas to copy (" << moved_bytes << " bytes), " << dropped
                                                << " to drop, planned balancedness " << before << " -> " << after);
  if (driver.joinable()) driver.join();  // the previous one has finished (migration was empty)
  driver = std::thread([this, e = last_epoch] { drive(e); });
  return last_epoch;
}

void Coordinator::Impl::join_driver() {
  if (policy_thread.joinable()) policy_thread.join();  // it may start a driver: first
  if (driver.joinable()) driver.join();
}

Result<pb::RebalanceStatusReply> Coordinator::Impl::rebalance_status(const pb::RebalanceStatusRequest& req) const {
  std::lock_guard<std::mutex> lock(mu);
  pb::RebalanceStatusReply reply;
  if (migration && migration->next.epoch == req.epoch()) {
    *reply.mutable_record() = migration->record;
    return reply;
  }
  for (const pb::RebalanceRecord& r : history)
    if (r.epoch() == req.epoch()) {
      *reply.mutable_record() = r;
      reply.set_done(true);
      return reply;
    }
  return Status(StatusCode::invalid_argument, "no rebalance to epoch " + std::to_string(req.epoch()));
}

Result<pb::EpochDecisionReply> Coordinator::Impl::epoch_decision(const pb::EpochDecisionRequest& req) const {
  std::lock_guard<std::mutex> lock(mu);
  pb::EpochDecisionReply reply;
  auto it = verdicts.find(req.epoch());
  if (it == verdicts.end()) return Status(StatusCode::invalid_argument, "no rebalance to epoch " + std::to_string(req.epoch()));
  reply.set_verdict(it->second);
  if (it->second == pb::EpochDecisionReply::COMMITTED) wire::placement_to_pb(placement, reply.mutable_placement());
  return reply;
}

Result<pb::MigrationReportReply> Coordinator::Impl::migration_report(const pb::MigrationReportRequest& req) {
  std::lock_guard<std::mutex> lock(mu);
  if (migration && migration->next.epoch == req.epoch()) {
    (req.ready() ? migration->ready : migration->reports)[req.worker_id()] = req;
    changed.notify_all();
  }
  return pb::MigrationReportReply{};
}

// ---- the driver thread -----------------------------------------------------------------------

namespace {

// Control calls from the driver to the workers' control servers, one connection per worker.
class WorkerCalls {
 public:
  WorkerCalls(Millis timeout, std::string secret) : timeout_(timeout), secret_(std::move(secret)) {}
  template <class Req, class Rep>
  Status call(int worker, const std::string& endpoint, const Req& req) {
    auto& link = links_[worker];
    if (!link || link->broken()) {
      auto [host, port] = control::parse_endpoint(endpoint);
      control::ControlClient::Options o;
      o.name = "coordinator (rebalance)";
      o.call_timeout = timeout_;
      o.secret = secret_;
      auto c = control::ControlClient::connect(host, port, o);
      if (!c) return Status(c.status().code(), "worker " + std::to_string(worker) + ": " + c.status().to_string());
      link = std::move(c).value();
    }
    auto r = link->call<Req, Rep>(req);
    if (!r) return Status(r.status().code(), "worker " + std::to_string(worker) + ": " + r.status().to_string());
    return Status::ok();
  }

 private:
  Millis timeout_;
  std::string secret_;
  std::map<int, std::unique_ptr<control::ControlClient>> links_;
};

}  // namespace

Status Coordinator::Impl::await_reports(std::unique_lock<std::mutex>& lock, bool ready, Clock::time_point since) {
  Migration& mig = *migration;
  const auto& got = ready ? mig.ready : mig.reports;
  const Millis grace(2 * cluster.request_timeout_ms);
  for (;;) {
    const auto now = Clock::now();
    bool all = true;
    for (int w : mig.involved) {
      auto it = got.find(w);
      if (it != got.end() && !it->second.ok())
        return Status(StatusCode::peer_failed, "worker " + std::to_string(w) + ": " + it->second.error());
      if (it != got.end()) continue;
      all = false;
      if (!members.count(w) || !alive(members.at(w), now))
        return Status(StatusCode::peer_failed, "worker " + std::to_string(w) + " died during the rebalance (no heartbeat)");
    }
    if (all) return Status::ok();
    const bool before_step = !ready && mig.at_step && !mig.step_reached;
    const auto deadline = before_step ? since + Millis(cluster.startup_timeout_ms)
                          : !ready && mig.at_step ? *mig.step_reached + grace
                                                  : since + grace;
    if (now > deadline) {
      if (before_step)
        return Status(StatusCode::timeout, "no training step reached step " + std::to_string(mig.at_step_n) +
                                               " within cluster.startup_timeout_ms");
      std::string silent;
      for (int w : mig.involved)
        if (!got.count(w)) silent += (silent.empty() ? "" : ", ") + std::to_string(w);
      return Status(StatusCode::timeout, "worker " + silent + " did not report " +
                                             (ready ? "its receive buffers ready" : "its copies") + " in time");
    }
    if (shutdown) return Status(StatusCode::unreachable, "the coordinator is shutting down");
    changed.wait_for(lock, Millis(20));
  }
}

void Coordinator::Impl::drive(uint64_t next_epoch) {
  WorkerCalls calls{Millis(cluster.request_timeout_ms), secret};
  std::map<int, std::string> endpoints;  // alive workers
  pb::MigrateRequest prepare;
  bool at_step = false;
  {
    std::lock_guard<std::mutex> lock(mu);
    const auto now = Clock::now();
    for (const auto& [id, m] : members) {
      if (!alive(m, now)) continue;
      endpoints[id] = m.info.control_endpoint();
      if (m.info.data_plane_address().empty()) continue;
      pb::WorkerPeer* peer = prepare.add_peers();
      peer->set_worker_id(id);
      peer->set_data_plane_id(m.info.data_plane_id());
      peer->set_data_plane_address(m.info.data_plane_address());
    }
    prepare.set_epoch(next_epoch);
    wire::placement_to_pb(migration->next, prepare.mutable_placement());
    for (const pb::ReplicaCopy& c : migration->copies) *prepare.add_copies() = c;
    at_step = migration->at_step;
    prepare.set_at_step_boundary(at_step);
  }
  const auto started = Clock::now();
  Status outcome;
  for (const auto& [w, endpoint] : endpoints)
    if (outcome) outcome = calls.call<pb::MigrateRequest, pb::MigrateReply>(w, endpoint, prepare);
  if (outcome && !at_step) {  // between requests: once every receiver has its buffers, go
    std::unique_lock<std::mutex> lock(mu);
    outcome = await_reports(lock, /*ready=*/true, Clock::now());
    std::set<int> involved = migration->involved;
    lock.unlock();
    pb::EpochNoticeRequest go;
    go.set_epoch(next_epoch);
    go.set_action(pb::EpochNoticeRequest::COPY);
    for (int w : involved)
      if (outcome) outcome = calls.call<pb::EpochNoticeRequest, pb::EpochNoticeReply>(w, endpoints.at(w), go);
  }
  {
    std::unique_lock<std::mutex> lock(mu);
    Migration& mig = *migration;
    if (outcome && mig.at_step) {
      mig.at_step_n = max_training_step + 1;  // every client reports this step before its StepOp
      mig.record.set_at_step(mig.at_step_n);
    }
    if (outcome) outcome = await_reports(lock, /*ready=*/false, Clock::now());
    double pause = 0;
    for (const auto& [w, rep] : mig.reports) pause = std::max(pause, rep.seconds());
    mig.record.set_pause_ms(pause * 1e3);
    mig.record.set_copy_seconds(std::chrono::duration<double>(Clock::now() - started).count());
    if (outcome) {
      placement = mig.next;
      this->epoch = next_epoch;
      set_log_epoch("coordinator", next_epoch);
      for (auto& [id, m] : members)  // the new placement knows what a replacement holds
        if (m.info.replacement() && alive(m, Clock::now()) && endpoints.count(id)) {
          m.info.set_replacement(false);
          ++membership_version;
        }
      save_state();
      mig.verdict = pb::EpochDecisionReply::COMMITTED;
      mig.record.set_state("committed");
      if (mig.record.source() == "recovery" && lost_since) {
        mig.record.set_since_loss_seconds(std::chrono::duration<double>(Clock::now() - *lost_since).count());
        lost_since.reset();
        SY_LOG(info, "runtime", "recovery: every expert is back at its replica count "
                                    << mig.record.since_loss_seconds() << " s after the first loss");
      }
    } else {
      mig.verdict = pb::EpochDecisionReply::ABORTED;
      mig.record.set_state("failed");
      mig.record.set_error(outcome.message());
    }
    verdicts[next_epoch] = mig.verdict;
    observed.rebalance_done(mig.record);  // its verdict is the moment the metrics count
    mig.at_step_n = 0;
    changed.notify_all();
  }
  pb::EpochNoticeRequest notice;
  notice.set_epoch(next_epoch);
  notice.set_action(outcome ? pb::EpochNoticeRequest::COMMIT : pb::EpochNoticeRequest::ABORT);
  for (const auto& [w, endpoint] : endpoints)
    if (Status s = calls.call<pb::EpochNoticeRequest, pb::EpochNoticeReply>(w, endpoint, notice); !s)
      SY_LOG(warn, "runtime", "rebalance to epoch " << next_epoch << ": telling " << s.message());
  if (outcome) {  // old replicas go once every active client routes with the new epoch
    std::unique_lock<std::mutex> lock(mu);
    const auto deadline = Clock::now() + Millis(cluster.request_timeout_ms);
    for (;;) {
      bool behind = false;
      const auto now = Clock::now();
      for (const auto& [id, c] : clients) behind |= client_active(c, now) && c.info.placement_epoch() < next_epoch;
      if (!behind || now > deadline || shutdown) {
        if (behind) SY_LOG(warn, "runtime", "rebalance to epoch " << next_epoch << ": dropping old replicas with clients still behind");
        break;
      }
      changed.wait_for(lock, Millis(20));
    }
  }
  if (outcome) {
    notice.set_action(pb::EpochNoticeRequest::DROP_OLD);
    for (const auto& [w, endpoint] : endpoints)
      if (Status s = calls.call<pb::EpochNoticeRequest, pb::EpochNoticeReply>(w, endpoint, notice); !s)
        SY_LOG(warn, "runtime", "rebalance to epoch " << next_epoch << ": dropping old replicas on " << s.message());
  }
  std::lock_guard<std::mutex> lock(mu);
  pb::RebalanceRecord& r = migration->record;
  if (outcome)
    SY_LOG(info, "runtime", "rebalance epoch " << next_epoch << " committed: " << r.moved_replicas() << " replicas ("
                                               << r.moved_bytes() << " bytes) copied, " << r.dropped_replicas()
                                               << " dropped, pause " << r.pause_ms() << " ms");
  else
    SY_LOG(error, "runtime", "rebalance to epoch " << next_epoch << " failed, epoch " << this->epoch << " stays: " << r.error());
  if (r.source() == "recovery" && !outcome) {
    recovery_failed_at = Clock::now();
    recovery_due = true;
  }
  history.push_front(r);
  if (history.size() > 16) history.pop_back();
  migration.reset();  // a worker lost meanwhile is recovered at the next load report
  changed.notify_all();
}

}  // namespace sy
