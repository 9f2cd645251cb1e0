#include "observed.h"

namespace sy {
namespace pb = wire::pb;

double unix_now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

void Observed::reset_model(int rows_, int experts_, int workers_) {
  if (rows_ == rows && experts_ == experts && workers_ == workers) return;  // counters go on
  rows = rows_;
  experts = experts_;
  workers = workers_;
  routed.assign(static_cast<size_t>(rows * experts), 0);
  computed.assign(routed.size(), 0);
  expert_worker_rows.clear();
}

namespace {
constexpr int64_t kMaxRows = int64_t{1} << 40;  // as the load window's bound on one report's count

Status check_histogram(const pb::LatencyHistogram& h, int client, const char* field) {
  if (h.buckets_size() != 0 && h.buckets_size() != wire::kLatencyBuckets)
    return Status(StatusCode::invalid_argument, "load report of client " + std::to_string(client) + ": " + field +
                                                    " has " + std::to_string(h.buckets_size()) + " buckets, not " +
                                                    std::to_string(wire::kLatencyBuckets));
  if (!(h.sum_seconds() >= 0 && h.sum_seconds() < 1e12))
    return Status(StatusCode::invalid_argument, "load report of client " + std::to_string(client) + ": " + field +
                                                    ".sum_seconds is " + std::to_string(h.sum_seconds()));
  return Status::ok();
}

void add_histogram(pb::LatencyHistogram& into, const pb::LatencyHistogram& h) {
  if (h.buckets_size() == 0) return;
  if (into.buckets_size() != wire::kLatencyBuckets) into.mutable_buckets()->Resize(wire::kLatencyBuckets, 0);
  for (int b = 0; b < wire::kLatencyBuckets; ++b) into.set_buckets(b, into.buckets(b) + h.buckets(b));
  into.set_sum_seconds(into.sum_seconds() + h.sum_seconds());
}
}  // namespace

Status Observed::check(const pb::LoadReportRequest& report) const {
  const int client = report.client_id();
  if (Status s = check_histogram(report.serve_latency(), client, "serve_latency"); !s) return s;
  if (Status s = check_histogram(report.step_latency(), client, "step_latency"); !s) return s;
  for (const pb::ExpertWorkerRows& e : report.expert_worker_rows())
    if (e.row() < 0 || e.row() >= rows || e.expert() < 0 || e.expert() >= experts || e.worker() < 0 ||
        e.worker() >= workers || e.rows() < 0 || e.rows() > kMaxRows)
      return Status(StatusCode::invalid_argument,
                    "load report of client " + std::to_string(client) + ": expert_worker_rows entry (row " +
                        std::to_string(e.row()) + ", expert " + std::to_string(e.expert()) + ", worker " +
                        std::to_string(e.worker()) + ", rows " + std::to_string(e.rows()) + ") is outside the model's " +
                        std::to_string(rows) + " x " + std::to_string(experts) + " x " + std::to_string(workers));
  return Status::ok();
}

// Called after LoadWindow::add accepted the counts (same shape).
void Observed::add(const pb::LoadReportRequest& report) {
  ++load_reports;
  const pb::LoadCounts& c = report.counts();
  for (int i = 0; i < c.routed_size() && static_cast<size_t>(i) < routed.size(); ++i) {
    routed[static_cast<size_t>(i)] += c.routed(i);
    computed[static_cast<size_t>(i)] += c.computed(i);
  }
  for (const pb::ExpertWorkerRows& e : report.expert_worker_rows())
    expert_worker_rows[{e.row(), e.expert(), e.worker()}] += e.rows();
  add_histogram(serve_latency, report.serve_latency());
  add_histogram(step_latency, report.step_latency());
}

void Observed::event(const std::string& kind, const std::string& text) {
  events.push_back({unix_now(), kind, text});
  while (events.size() > kMaxEvents) events.pop_front();
}

void Observed::rebalance_done(const pb::RebalanceRecord& r) {
  RebalanceTotals& t = rebalances[{r.source(), r.state()}];
  ++t.count;
  t.moved_replicas += r.moved_replicas();
  t.moved_bytes += r.moved_bytes();
  t.pause_seconds += r.pause_ms() / 1e3;
  t.copy_seconds += r.copy_seconds();
  std::string text = "epoch " + std::to_string(r.epoch()) + " (" + r.source() + ") " + r.state() + ": " +
                     std::to_string(r.moved_replicas()) + " replicas, " + std::to_string(r.moved_bytes()) + " bytes moved";
  if (!r.error().empty()) text += ": " + r.error();
  event(r.source() == "recovery" ? "recovery" : "rebalance", text);
}

void Observed::sample_balance(double avg, double min) {
  last_sample = std::chrono::steady_clock::now();
  balance.push_back({unix_now(), avg, min});
  while (balance.size() > kMaxSamples) balance.pop_front();
}

uint64_t Observed::recoveries() const {
  auto it = rebalances.find({"recovery", "committed"});
  return it == rebalances.end() ? 0 : it->second.count;
}

}  // namespace sy
