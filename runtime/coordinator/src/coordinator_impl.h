// The coordinator's state, shared by its two halves: membership and control handlers
// (coordinator.cc) and the rebalance driver (rebalance.cc). One mutex guards it; the control
// server's I/O thread runs the quick handlers (never waiting), its handler thread the heavy
// ones (plan, rebalance: they parse and plan without the lock, so heartbeats go on), the driver
// runs on its own thread and waits on `changed`.
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>

#include "http_server.h"
#include "load_window.h"
#include "observed.h"
#include "switchyard/coordinator/coordinator.h"
#include "switchyard/core/config.h"
#include "switchyard/placement/placement.h"
#include "switchyard/transport/control.h"
#include "switchyard/transport/rendezvous.h"
#include "switchyard/wire/wire.h"

namespace sy {

namespace pb = wire::pb;
using Clock = std::chrono::steady_clock;

struct Coordinator::Impl {
  struct Member {
    pb::WorkerInfo info;
    Clock::time_point registered_at;
    Clock::time_point last_heartbeat;
    Clock::time_point previous_heartbeat;
    uint64_t previous_rows = 0;
    double previous_busy = 0;
    bool reported_dead = false;
    std::string fenced;  // why a client lost it; non-empty: never alive again (a restart registers anew)
  };
  struct Client {
    pb::ClientInfo info;
    Clock::time_point last_report;
  };
  // The rebalance in progress (at most one).
  struct Migration {
    Placement next;                    // epoch = the one it makes
    std::vector<pb::ReplicaCopy> copies;
    std::set<int> involved;            // workers that copy or receive
    bool at_step = false;              // training: copies run inside step `at_step_n`
    uint64_t at_step_n = 0;            // 0 until the workers are prepared
    std::optional<Clock::time_point> step_reached;  // a client reported step at_step_n
    std::map<int, pb::MigrationReportRequest> ready;    // between requests: receive buffers allocated
    std::map<int, pb::MigrationReportRequest> reports;  // copies done (or failed)
    pb::EpochDecisionReply::Verdict verdict = pb::EpochDecisionReply::PENDING;
    pb::RebalanceRecord record;
  };

  ClusterConfig cluster;
  std::string secret;  // the cluster's shared secret (core/secret.h): the control server and the driver's calls
  std::unique_ptr<control::ControlServer> server;
  std::unique_ptr<transport::RendezvousService> rendezvous;
  std::unique_ptr<HttpServer> http;  // cluster.http: /metrics, the dashboard (http.cc)
  mutable std::mutex mu;
  std::condition_variable changed;  // a report, a migration report, a heartbeat: the driver re-checks
  std::map<int, Member> members;
  std::map<int, Client> clients;
  uint64_t epoch = 0;       // the committed placement's
  uint64_t last_epoch = 0;  // the highest handed out (a rebalance in progress makes epoch + 1)
  std::string model_yaml;
  std::unique_ptr<Config> model;  // parsed model_yaml
  bool committed = false;
  Placement placement;
  LoadWindow load;
  uint64_t max_training_step = 0;
  uint64_t last_policy_step = 0;
  uint64_t last_checkpoint_step = 0;  // the latest step whose checkpoint a client was told to write
  std::optional<Migration> migration;
  std::deque<pb::RebalanceRecord> history;  // latest first
  Observed observed;  // totals, events and samples for /metrics and the dashboard
  std::optional<Clock::time_point> lost_since;  // a fenced worker is still in the placement since
  std::optional<Clock::time_point> recovery_failed_at;  // retried after dead_after_ms, or at a new loss
  std::optional<Clock::time_point> admit_failed_at;     // a join that failed to start: again after dead_after_ms
  bool recovery_due = false;  // a worker was fenced (or a recovery failed) since the last plan
  std::map<uint64_t, pb::EpochDecisionReply::Verdict> verdicts;  // epoch → how its rebalance ended
  std::thread driver;
  std::thread policy_thread;     // the rebalance policy's planning (one at a time)
  bool policy_planning = false;  // policy_thread is planning
  std::atomic<bool> shutdown{false};
  int next_client_id = wire::kFirstClientId;
  int next_worker_data_plane_id = 0;  // set to cluster.workers at start: replacements' ids
  uint64_t membership_version = 0;    // a worker registered or published its address

  bool alive(const Member& m, Clock::time_point now) const {
    return m.fenced.empty() && now - m.last_heartbeat < std::chrono::milliseconds(cluster.dead_after_ms);
  }
  bool client_active(const Client& c, Clock::time_point now) const {
    return now - c.last_report < std::chrono::milliseconds(cluster.dead_after_ms);
  }
  // A client reported a training step within startup_timeout_ms (steps may be slow): a
  // rebalance then uses a step boundary.
  bool training_client_active(Clock::time_point now) const {
    for (const auto& [id, c] : clients)
      if (c.info.training() && now - c.last_report < std::chrono::milliseconds(cluster.startup_timeout_ms)) return true;
    return false;
  }

  // coordinator.cc: membership, placement of a model, load statistics.
  Result<pb::RegisterWorkerReply> register_worker(const pb::RegisterWorkerRequest& req);
  Result<pb::RegisterClientReply> register_client(const pb::RegisterClientRequest& req);
  Result<pb::UnregisterClientReply> unregister_client(const pb::UnregisterClientRequest& req);
  Result<pb::HeartbeatReply> heartbeat(const pb::HeartbeatRequest& req);
  bool replaceable(const Member& m, Clock::time_point now) const;
  int open_slot(Clock::time_point now) const;
  pb::RegisterWorkerReply registration_reply(const pb::WorkerInfo& w, bool replacing) const;
  Result<pb::PublishAddressReply> publish_address(const pb::PublishAddressRequest& req);
  Result<pb::WorkerLostReply> worker_lost(const pb::WorkerLostRequest& req);
  Result<pb::ClusterInfoReply> info() const;
  Result<pb::PlanPlacementReply> plan(const pb::PlanPlacementRequest& req);
  Result<pb::CommitPlacementReply> commit(const pb::CommitPlacementRequest& req);
  Result<pb::LoadReportReply> report_load(const pb::LoadReportRequest& req);

  // rebalance.cc: the rebalance driver.
  Result<pb::RebalanceReply> rebalance(const pb::RebalanceRequest& req);
  Result<pb::RebalanceStatusReply> rebalance_status(const pb::RebalanceStatusRequest& req) const;
  Result<pb::EpochDecisionReply> epoch_decision(const pb::EpochDecisionRequest& req) const;
  Result<pb::MigrationReportReply> migration_report(const pb::MigrationReportRequest& req);
  // Caller holds mu: the policy's check after a training report of `step`; planning runs on
  // policy_thread (plan_by_policy, which takes mu only to start the rebalance).
  void maybe_rebalance_by_policy(uint64_t step);
  void plan_by_policy(uint64_t step, const ModelConfig& model_now, const LoadWindow& window_now, const Placement& current);
  // Caller holds mu: after a worker was fenced, a rebalance that drops it from the placement and
  // gives each expert that lost a replica a new one on a live worker with room (copied, weights
  // and AdamW state, from a surviving replica), when no rebalance is running.
  void maybe_recover();
  // Caller holds mu: a replacement worker that holds nothing gets replicas, moved from the
  // workers holding most, until replica counts differ by at most one ("join" rebalance), when
  // no rebalance is running and no recovery is due.
  void maybe_admit();
  // A live worker whose replicas are the ones the placement lists for it (not a replacement
  // still empty): a copy source, and kept by a recovery.
  bool holds_its_replicas(int w, Clock::time_point now) const;
  // Caller holds mu: starts the driver thread for `next` (epoch set here).
  Result<uint64_t> start_rebalance(Placement next, const std::string& source, double before, double after);
  void drive(uint64_t next_epoch);
  // Caller holds `lock`: until every involved worker reported (`ready`: its buffers; else its
  // copies), one failed or died, or the deadline (2 × request_timeout_ms from `since`; a
  // training rebalance waits up to startup_timeout_ms for its step first).
  Status await_reports(std::unique_lock<std::mutex>& lock, bool ready, Clock::time_point since);
  void join_driver();

  // metrics.cc, dashboard_state.cc: what cluster.http serves (each takes mu).
  std::string metrics_text() const;
  std::string state_json() const;
  void start_http();  // http.cc

  // state_file.cc: cluster.state_file. save_state: caller holds mu.
  void save_state() const;
  void load_state();
};

}  // namespace sy
