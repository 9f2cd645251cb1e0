#include "load_window.h"

#include <algorithm>
#include <limits>
#include <string>

namespace sy {
namespace {
namespace pb = wire::pb;

// Counts are >= 0; sums saturate instead of overflowing (a report is bounded, a window of many
// clients' reports of many steps need not be).
int64_t sat_add(int64_t a, int64_t b) { return a > std::numeric_limits<int64_t>::max() - b ? std::numeric_limits<int64_t>::max() : a + b; }

void add_into(std::vector<int64_t>& sum, const google::protobuf::RepeatedField<int64_t>& values) {
  for (int i = 0; i < values.size(); ++i) sum[static_cast<size_t>(i)] = sat_add(sum[static_cast<size_t>(i)], values[i]);
}

constexpr int64_t kMaxReportedRows = int64_t{1} << 40;  // rows of one (layer, stage) in one report
}  // namespace

double worker_rows_balancedness(const std::vector<int64_t>& worker_rows, int rows, int workers, double* worst_row) {
  double mean_sum = 0, max_sum = 0, worst = 1;
  for (int r = 0; r < rows; ++r) {
    int64_t total = 0, most = 0;
    for (int w = 0; w < workers; ++w) {
      const int64_t v = worker_rows[static_cast<size_t>(r * workers + w)];
      total = sat_add(total, v);
      most = std::max(most, v);
    }
    if (most == 0) continue;
    const double mean = static_cast<double>(total) / workers;
    mean_sum += mean;
    max_sum += static_cast<double>(most);
    worst = std::min(worst, mean / static_cast<double>(most));
  }
  if (worst_row) *worst_row = worst;
  return max_sum > 0 ? mean_sum / max_sum : 1.0;
}

void LoadWindow::reset(int rows, int experts, int workers, int window_steps) {
  rows_ = rows;
  experts_ = experts;
  workers_ = workers;
  window_ = std::max(1, window_steps);
  entries_.clear();
  ema_.assign(static_cast<size_t>(rows * experts), 0.0);
}

LoadWindow::Entry& LoadWindow::entry_for(const pb::LoadReportRequest& report) {
  if (report.step() > 0)
    for (Entry& e : entries_)
      if (e.step == report.step()) return e;
  for (double& v : ema_) v *= 0.95;  // a new step: decay once
  const size_t re = static_cast<size_t>(rows_ * experts_), rw = static_cast<size_t>(rows_ * workers_);
  entries_.push_back({report.step(), std::vector<int64_t>(re), std::vector<int64_t>(re), std::vector<int64_t>(rw)});
  while (entries_.size() > static_cast<size_t>(window_)) entries_.pop_front();
  return entries_.back();
}

Status LoadWindow::add(const pb::LoadReportRequest& report) {
  const pb::LoadCounts& c = report.counts();
  const int re = rows_ * experts_, rw = rows_ * workers_;
  if (c.rows() != rows_ || c.experts() != experts_ || c.workers() != workers_ || c.routed_size() != re ||
      c.computed_size() != re || c.worker_rows_size() != rw)
    return Status(StatusCode::invalid_argument,
                  "load report of client " + std::to_string(report.client_id()) + " has shape rows " +
                      std::to_string(c.rows()) + " x experts " + std::to_string(c.experts()) + " x workers " +
                      std::to_string(c.workers()) + "; the cluster's model has " + std::to_string(rows_) + " x " +
                      std::to_string(experts_) + " x " + std::to_string(workers_));
  for (const auto* field : {&c.routed(), &c.computed(), &c.worker_rows()})
    for (int64_t v : *field)
      if (v < 0 || v > kMaxReportedRows)
        return Status(StatusCode::invalid_argument, "load report of client " + std::to_string(report.client_id()) +
                                                        " has a count of " + std::to_string(v) + " rows (allowed 0.." +
                                                        std::to_string(kMaxReportedRows) + ")");
  Entry& e = entry_for(report);
  add_into(e.routed, c.routed());
  add_into(e.computed, c.computed());
  add_into(e.worker_rows, c.worker_rows());
  for (int i = 0; i < re; ++i) ema_[static_cast<size_t>(i)] += static_cast<double>(c.computed(i));
  return Status::ok();
}

std::vector<double> LoadWindow::computed() const {
  std::vector<double> out(static_cast<size_t>(rows_ * experts_), 0.0);
  for (const Entry& e : entries_)
    for (size_t i = 0; i < out.size(); ++i) out[i] += static_cast<double>(e.computed[i]);
  return out;
}

pb::LoadWindow LoadWindow::to_pb() const {
  pb::LoadWindow out;
  out.set_steps(static_cast<uint32_t>(entries_.size()));
  pb::LoadCounts* sum = out.mutable_sum();
  sum->set_rows(rows_);
  sum->set_experts(experts_);
  sum->set_workers(workers_);
  std::vector<int64_t> routed(static_cast<size_t>(rows_ * experts_)), computed(routed.size()),
      worker_rows(static_cast<size_t>(rows_ * workers_));
  for (const Entry& e : entries_)
    for (size_t i = 0; i < routed.size(); ++i) {
      routed[i] = sat_add(routed[i], e.routed[i]);
      computed[i] = sat_add(computed[i], e.computed[i]);
    }
  for (const Entry& e : entries_)
    for (size_t i = 0; i < worker_rows.size(); ++i) worker_rows[i] = sat_add(worker_rows[i], e.worker_rows[i]);
  *sum->mutable_routed() = {routed.begin(), routed.end()};
  *sum->mutable_computed() = {computed.begin(), computed.end()};
  *sum->mutable_worker_rows() = {worker_rows.begin(), worker_rows.end()};
  *out.mutable_ema() = {ema_.begin(), ema_.end()};
  double worst = 1;
  out.set_balancedness(worker_rows_balancedness(worker_rows, rows_, workers_, &worst));
  out.set_balancedness_min(worst);
  return out;
}

}  // namespace sy
