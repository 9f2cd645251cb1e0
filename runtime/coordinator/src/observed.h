// What the coordinator keeps only to show it (README "Observability"): totals since it started
// (the counters of /metrics), a timeline of events and the balancedness over time (the
// dashboard). Guarded by the coordinator's mutex; it never steers the cluster.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "switchyard/core/status.h"
#include "switchyard/wire/wire.h"

namespace sy {

struct Observed {
  struct Event {
    double unix_seconds = 0;
    std::string kind;  // "worker", "failure", "rebalance", "recovery", "client", "model"
    std::string text;
  };
  struct BalanceSample {
    double unix_seconds = 0, avg = 1, min = 1;
  };
  struct RebalanceTotals {
    uint64_t count = 0, moved_replicas = 0, moved_bytes = 0;
    double pause_seconds = 0, copy_seconds = 0;
  };

  // Totals of the clients' load reports since the model was loaded.
  int rows = 0, experts = 0, workers = 0;
  std::vector<int64_t> routed, computed;                                // [rows × experts]
  std::map<std::tuple<int, int, int>, int64_t> expert_worker_rows;     // (row, expert, worker)
  wire::pb::LatencyHistogram serve_latency, step_latency;
  uint64_t load_reports = 0;

  uint64_t failovers = 0;      // workers fenced after a client lost them (their rows moved to survivors)
  uint64_t worker_deaths = 0;  // workers declared dead (heartbeats stopped for dead_after_ms)
  uint64_t replacements = 0;   // processes that registered into a lost worker's slot
  std::map<std::pair<std::string, std::string>, RebalanceTotals> rebalances;  // (source, result)

  std::deque<Event> events;  // oldest first, at most kMaxEvents
  std::deque<BalanceSample> balance;  // oldest first, one per second with reports, at most kMaxSamples
  std::chrono::steady_clock::time_point last_sample{};

  static constexpr size_t kMaxEvents = 200, kMaxSamples = 900;

  // A new model: the per-expert totals restart when its shape differs (else they go on).
  void reset_model(int rows_, int experts_, int workers_);
  // invalid_argument naming the field when a report's observations do not fit the model.
  Status check(const wire::pb::LoadReportRequest& report) const;
  void add(const wire::pb::LoadReportRequest& report);
  void event(const std::string& kind, const std::string& text);
  void rebalance_done(const wire::pb::RebalanceRecord& r);
  // At most once a second: the window's balancedness, for the dashboard's history.
  bool sample_due() const { return std::chrono::steady_clock::now() - last_sample >= std::chrono::seconds(1); }
  void sample_balance(double avg, double min);
  uint64_t recoveries() const;  // committed rebalances of source "recovery"
};

double unix_now();

}  // namespace sy
