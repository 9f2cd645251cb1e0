// GET /api/state: what the dashboard page polls (JSON): members, clients, the placement, the
// load window per (layer·stage, expert) and per worker, balancedness over time, the timeline.
#include <nlohmann/json.hpp>

#include "coordinator_impl.h"

namespace sy {
namespace {
using nlohmann::json;
using Millis = std::chrono::milliseconds;

const char* worker_state(bool alive, bool fenced) { return alive ? "alive" : fenced ? "lost" : "dead"; }

json rebalance_json(const pb::RebalanceRecord& r) {
  return {{"epoch", r.epoch()},
          {"state", r.state()},
          {"source", r.source()},
          {"moved_replicas", r.moved_replicas()},
          {"moved_bytes", r.moved_bytes()},
          {"dropped_replicas", r.dropped_replicas()},
          {"pause_ms", r.pause_ms()},
          {"balancedness_before", r.balancedness_before()},
          {"balancedness_after", r.balancedness_after()},
          {"at_step", r.at_step()},
          {"error", r.error()}};
}
}  // namespace

std::string Coordinator::Impl::state_json() const {
  std::lock_guard<std::mutex> lock(mu);
  const auto now = Clock::now();
  json out;
  out["time"] = unix_now();
  out["coordinator"] = server->endpoint();
  out["epoch"] = epoch;
  out["workers_expected"] = cluster.workers;
  out["model_loaded"] = committed;
  out["training_step"] = max_training_step;
  json workers = json::array();
  for (const auto& [id, m] : members)
    workers.push_back({{"id", id},
                       {"pid", m.info.pid()},
                       {"host", m.info.host()},
                       {"endpoint", m.info.control_endpoint()},
                       {"state", worker_state(alive(m, now), !m.fenced.empty())},
                       {"replicas", m.info.experts()},
                       {"rows_forward", m.info.rows_forward()},
                       {"rows_backward", m.info.rows_backward()},
                       {"rows_per_s", m.info.rows_per_s()},
                       {"busy_share", m.info.busy_share()},
                       {"bytes_in", m.info.bytes_in()},
                       {"bytes_out", m.info.bytes_out()},
                       {"restarts", m.info.restarts()},
                       {"replacement", m.info.replacement()},
                       {"heartbeat_age_ms", std::chrono::duration_cast<Millis>(now - m.last_heartbeat).count()}});
  out["workers"] = std::move(workers);
  json cl = json::array();
  for (const auto& [id, c] : clients)
    cl.push_back({{"id", id},
                  {"name", c.info.name()},
                  {"training", c.info.training()},
                  {"step", c.info.step()},
                  {"epoch", c.info.placement_epoch()},
                  {"last_report_ms", std::chrono::duration_cast<Millis>(now - c.last_report).count()}});
  out["clients"] = std::move(cl);

  const int stages = model ? static_cast<int>(model->model.layer.stages.size()) : 1;
  json rows = json::array();
  for (int r = 0; r < observed.rows; ++r)
    rows.push_back({{"layer", r / stages},
                    {"stage", r % stages},
                    {"experts", model->model.layer.stages[static_cast<size_t>(r % stages)].experts}});
  out["rows"] = std::move(rows);
  json placed = json::array();
  for (const auto& [key, ws] : placement.replicas)
    placed.push_back({{"layer", key.layer}, {"stage", key.stage}, {"expert", key.expert}, {"workers", ws},
                      {"shares", placement.shares_of(key)}});
  out["placement"] = std::move(placed);

  json load_json = {{"steps", 0}, {"balancedness", 1.0}, {"balancedness_min", 1.0},
                    {"expert_rows", json::array()}, {"worker_rows", json::array()}};
  if (model) {
    const pb::LoadWindow w = load.to_pb();
    const pb::LoadCounts& s = w.sum();
    load_json["steps"] = w.steps();
    load_json["balancedness"] = w.balancedness();
    load_json["balancedness_min"] = w.balancedness_min();
    for (int r = 0; r < s.rows(); ++r) {
      json er = json::array(), wr = json::array();
      for (int e = 0; e < s.experts(); ++e) er.push_back(s.computed(r * s.experts() + e));
      for (int k = 0; k < s.workers(); ++k) wr.push_back(s.worker_rows(r * s.workers() + k));
      load_json["expert_rows"].push_back(std::move(er));
      load_json["worker_rows"].push_back(std::move(wr));
    }
  }
  out["load"] = std::move(load_json);
  json samples = json::array();
  for (const Observed::BalanceSample& b : observed.balance) samples.push_back(json::array({b.unix_seconds, b.avg, b.min}));
  out["balance_history"] = std::move(samples);
  json events = json::array();
  for (const Observed::Event& e : observed.events) events.push_back({{"time", e.unix_seconds}, {"kind", e.kind}, {"text", e.text}});
  out["events"] = std::move(events);
  json rebalances = json::array();
  if (migration) rebalances.push_back(rebalance_json(migration->record));
  for (const pb::RebalanceRecord& r : history) rebalances.push_back(rebalance_json(r));
  out["rebalances"] = std::move(rebalances);
  out["totals"] = {{"failovers", observed.failovers},
                   {"worker_deaths", observed.worker_deaths},
                   {"recoveries", observed.recoveries()},
                   {"load_reports", observed.load_reports}};
  return out.dump();
}

}  // namespace sy
