// GET /metrics: the Prometheus text exposition format (version 0.0.4). Names follow Prometheus
// conventions: base units (seconds, bytes), counters end in _total, one family per name with
// # HELP and # TYPE. The README's "Observability" section lists every family.
#include <charconv>
#include <cmath>
#include <sstream>

#include "coordinator_impl.h"

namespace sy {
namespace {

using Labels = std::vector<std::pair<std::string, std::string>>;

std::string number(double v) {
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  if (std::isnan(v)) return "NaN";
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
  return ec == std::errc() ? std::string(buf, end) : "NaN";
}

std::string escape_label(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (c == '\\') out += "\\\\";
    else if (c == '"') out += "\\\"";
    else if (c == '\n') out += "\\n";
    else out += c;
  }
  return out;
}

class Exposition {
 public:
  // Starts a family; every sample() until the next family() belongs to it.
  void family(const std::string& name, const char* type, const char* help) {
    out_ << "# HELP " << name << " " << help << "\n# TYPE " << name << " " << type << "\n";
  }
  void sample(const std::string& name, const Labels& labels, double value) {
    out_ << name;
    if (!labels.empty()) {
      out_ << "{";
      for (size_t i = 0; i < labels.size(); ++i)
        out_ << (i ? "," : "") << labels[i].first << "=\"" << escape_label(labels[i].second) << "\"";
      out_ << "}";
    }
    out_ << " " << number(value) << "\n";
  }
  void gauge(const std::string& name, const char* help, double value) {
    family(name, "gauge", help);
    sample(name, {}, value);
  }
  void counter(const std::string& name, const char* help, double value) {
    family(name, "counter", help);
    sample(name, {}, value);
  }
  void histogram(const std::string& name, const char* help, const wire::pb::LatencyHistogram& h) {
    family(name, "histogram", help);
    uint64_t cumulative = 0;
    for (int b = 0; b < wire::kLatencyBuckets; ++b) {
      cumulative += h.buckets_size() == wire::kLatencyBuckets ? h.buckets(b) : 0;
      const double le = b + 1 < wire::kLatencyBuckets ? wire::kLatencyBounds[b] : INFINITY;
      sample(name + "_bucket", {{"le", number(le)}}, static_cast<double>(cumulative));
    }
    sample(name + "_sum", {}, h.sum_seconds());
    sample(name + "_count", {}, static_cast<double>(cumulative));
  }
  std::string str() const { return out_.str(); }

 private:
  std::ostringstream out_;
};

std::string w_label(int w) { return std::to_string(w); }

}  // namespace

std::string Coordinator::Impl::metrics_text() const {
  std::lock_guard<std::mutex> lock(mu);
  const auto now = Clock::now();
  Exposition m;
  m.gauge("switchyard_workers_expected", "Worker slots of the cluster (cluster.workers).", cluster.workers);
  int alive_n = 0;
  for (const auto& [id, w] : members) alive_n += alive(w, now);
  m.gauge("switchyard_workers_alive", "Workers heartbeating within cluster.dead_after_ms and not fenced.", alive_n);
  m.gauge("switchyard_placement_epoch", "The committed placement's epoch.", static_cast<double>(epoch));
  m.gauge("switchyard_model_loaded", "1 when a model's experts are on the workers (committed).", committed ? 1 : 0);

  // Per worker.
  auto per_worker = [&](const std::string& name, const char* type, const char* help, auto value) {
    m.family(name, type, help);
    for (const auto& [id, w] : members) m.sample(name, {{"worker", w_label(id)}}, value(w));
  };
  per_worker("switchyard_worker_up", "gauge", "1 while the worker is alive (heartbeats, not fenced), else 0.",
             [&](const Member& w) { return alive(w, now) ? 1.0 : 0.0; });
  per_worker("switchyard_worker_fenced", "gauge", "1 once a client lost the worker: its replicas are never used again.",
             [](const Member& w) { return w.fenced.empty() ? 0.0 : 1.0; });
  m.family("switchyard_worker_rows_total", "counter", "Rows the worker's experts computed since it started.");
  for (const auto& [id, w] : members) {
    m.sample("switchyard_worker_rows_total", {{"worker", w_label(id)}, {"direction", "forward"}},
             static_cast<double>(w.info.rows_forward()));
    m.sample("switchyard_worker_rows_total", {{"worker", w_label(id)}, {"direction", "backward"}},
             static_cast<double>(w.info.rows_backward()));
  }
  per_worker("switchyard_worker_rows_per_second", "gauge", "Rows (forward + backward) per second over the last heartbeats.",
             [](const Member& w) { return w.info.rows_per_s(); });
  per_worker("switchyard_worker_received_bytes_total", "counter", "Request payload bytes the worker received from clients.",
             [](const Member& w) { return static_cast<double>(w.info.bytes_in()); });
  per_worker("switchyard_worker_sent_bytes_total", "counter", "Reply payload bytes the worker sent to clients.",
             [](const Member& w) { return static_cast<double>(w.info.bytes_out()); });
  per_worker("switchyard_worker_busy_seconds_total", "counter", "Seconds the worker spent handling client requests.",
             [](const Member& w) { return w.info.busy_seconds(); });
  per_worker("switchyard_worker_busy_ratio", "gauge", "Share of the last heartbeat interval the worker was busy (0..1).",
             [](const Member& w) { return w.info.busy_share(); });
  per_worker("switchyard_worker_replicas", "gauge", "Expert replicas the worker holds.",
             [](const Member& w) { return static_cast<double>(w.info.experts()); });
  per_worker("switchyard_worker_replica_bytes", "gauge", "Bytes of the worker's replicas (weights, gradients, AdamW moments).",
             [](const Member& w) { return static_cast<double>(w.info.expert_bytes()); });
  per_worker("switchyard_worker_optimizer_steps_total", "counter", "Optimizer steps the worker applied.",
             [](const Member& w) { return static_cast<double>(w.info.steps()); });
  per_worker("switchyard_worker_restarts_total", "counter", "Processes that replaced a lost one in the worker's slot.",
             [](const Member& w) { return static_cast<double>(w.info.restarts()); });
  per_worker("switchyard_worker_heartbeat_age_seconds", "gauge", "Seconds since the worker's last heartbeat.",
             [&](const Member& w) { return std::chrono::duration<double>(now - w.last_heartbeat).count(); });

  // Clients.
  int training_n = 0, serving_n = 0;
  for (const auto& [id, c] : clients) (c.info.training() ? training_n : serving_n)++;
  m.family("switchyard_clients_attached", "gauge", "Clients registered and not yet gone, by role.");
  m.sample("switchyard_clients_attached", {{"role", "training"}}, training_n);
  m.sample("switchyard_clients_attached", {{"role", "serving"}}, serving_n);
  m.family("switchyard_client_report_age_seconds", "gauge",
           "Seconds since each attached client's last load report (a training client reports every step: a stuck job's grows).");
  for (const auto& [id, c] : clients)
    m.sample("switchyard_client_report_age_seconds",
             {{"client", std::to_string(id)}, {"name", c.info.name()}, {"role", c.info.training() ? "training" : "serving"}},
             std::chrono::duration<double>(now - c.last_report).count());
  m.gauge("switchyard_training_step", "The highest training step a client reported.", static_cast<double>(max_training_step));
  m.counter("switchyard_load_reports_total", "Load reports the clients sent.", static_cast<double>(observed.load_reports));

  // The load window and per-expert rows.
  const int stages = model ? static_cast<int>(model->model.layer.stages.size()) : 1;
  auto expert_labels = [&](int row, int expert) {
    return Labels{{"layer", std::to_string(row / stages)}, {"stage", std::to_string(row % stages)}, {"expert", std::to_string(expert)}};
  };
  auto stage_experts = [&](int row) {
    return model ? static_cast<int>(model->model.layer.stages[static_cast<size_t>(row % stages)].experts) : 0;
  };
  if (model) {
    const pb::LoadWindow w = load.to_pb();
    m.gauge("switchyard_load_window_steps", "Steps (or serving reports) in the coordinator's load window.", w.steps());
    m.gauge("switchyard_balancedness_avg",
            "Balancedness of the window: sum over (layer, stage) of mean worker rows / sum of max worker rows (1 = even).",
            w.balancedness());
    m.gauge("switchyard_balancedness_min", "Balancedness of the window's worst (layer, stage) (mean / max worker rows).",
            w.balancedness_min());
    m.family("switchyard_expert_window_rows", "gauge", "Rows each expert computed over the load window (the heatmap).");
    const pb::LoadCounts& sum = w.sum();
    for (int r = 0; r < observed.rows; ++r)
      for (int e = 0; e < stage_experts(r); ++e)
        m.sample("switchyard_expert_window_rows", expert_labels(r, e), static_cast<double>(sum.computed(r * observed.experts + e)));
    m.family("switchyard_expert_routed_rows_total", "counter", "Assignments routed to each expert (before capacity drops).");
    for (int r = 0; r < observed.rows; ++r)
      for (int e = 0; e < stage_experts(r); ++e)
        m.sample("switchyard_expert_routed_rows_total", expert_labels(r, e),
                 static_cast<double>(observed.routed[static_cast<size_t>(r * observed.experts + e)]));
    m.family("switchyard_expert_computed_rows_total", "counter", "Rows each expert computed (after capacity drops).");
    for (int r = 0; r < observed.rows; ++r)
      for (int e = 0; e < stage_experts(r); ++e)
        m.sample("switchyard_expert_computed_rows_total", expert_labels(r, e),
                 static_cast<double>(observed.computed[static_cast<size_t>(r * observed.experts + e)]));
    m.family("switchyard_expert_rows_total", "counter",
             "Rows of each expert each worker was sent (the clients' dispatch plans, before any failover).");
    for (const auto& [key, rows] : observed.expert_worker_rows) {
      Labels l = expert_labels(std::get<0>(key), std::get<1>(key));
      l.emplace_back("worker", w_label(std::get<2>(key)));
      m.sample("switchyard_expert_rows_total", l, static_cast<double>(rows));
    }
    m.family("switchyard_expert_replica_share", "gauge", "Share of an expert's rows each of its replicas computes (the placement).");
    for (const auto& [key, workers] : placement.replicas) {
      const std::vector<double> shares = placement.shares_of(key);
      for (size_t i = 0; i < workers.size(); ++i) {
        Labels l = expert_labels(key.layer * stages + key.stage, key.expert);
        l.emplace_back("worker", w_label(workers[i]));
        m.sample("switchyard_expert_replica_share", l, shares[i]);
      }
    }
  }

  // Rebalances, failures, recoveries.
  m.family("switchyard_rebalances_total", "counter", "Rebalances that ended, by source and result (committed, failed).");
  for (const auto& [key, t] : observed.rebalances)
    m.sample("switchyard_rebalances_total", {{"source", key.first}, {"result", key.second}}, static_cast<double>(t.count));
  double moved_bytes = 0, moved_replicas = 0, pause = 0, copy = 0;
  for (const auto& [key, t] : observed.rebalances)
    if (key.second == "committed") {
      moved_bytes += static_cast<double>(t.moved_bytes);
      moved_replicas += static_cast<double>(t.moved_replicas);
      pause += t.pause_seconds;
      copy += t.copy_seconds;
    }
  m.counter("switchyard_rebalance_moved_bytes_total", "Bytes committed rebalances copied (weights and AdamW moments).", moved_bytes);
  m.counter("switchyard_rebalance_moved_replicas_total", "Replicas committed rebalances created.", moved_replicas);
  m.counter("switchyard_rebalance_pause_seconds_total", "Sum over committed rebalances of the longest time a worker spent copying.", pause);
  m.counter("switchyard_rebalance_copy_seconds_total", "Sum over committed rebalances of first copy to last verified.", copy);
  m.gauge("switchyard_rebalance_in_progress", "1 while a rebalance is copying.", migration ? 1 : 0);
  m.counter("switchyard_failovers_total", "Workers a client lost (fenced): their rows failed over to surviving replicas.",
            static_cast<double>(observed.failovers));
  m.counter("switchyard_worker_deaths_total", "Workers declared dead after cluster.dead_after_ms without a heartbeat.",
            static_cast<double>(observed.worker_deaths));
  m.counter("switchyard_worker_replacements_total", "Worker processes that registered into a lost worker's slot.",
            static_cast<double>(observed.replacements));
  m.counter("switchyard_recoveries_total", "Committed recoveries: every expert back at its replica count after a loss.",
            static_cast<double>(observed.recoveries()));

  m.histogram("switchyard_serve_request_duration_seconds",
              "Serving requests as clients timed them: the forward of the first layer's experts to the end of the last's.",
              observed.serve_latency);
  m.histogram("switchyard_train_step_duration_seconds",
              "Training iterations as clients timed them: one optimizer step call to the next (the first from its forward).",
              observed.step_latency);
  return m.str();
}

}  // namespace sy
