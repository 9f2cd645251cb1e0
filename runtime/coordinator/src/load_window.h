// The coordinator's load statistics: the clients' per-step row counts, kept for the last
// `cluster.rebalance.window_steps` steps and as an EMA (TensorRT-LLM's `load = 0.95·load + rows`,
// decayed once per step).
//
// A step is a training step number (every client's report of step n adds into one entry) or,
// for a serving client, one report (its requests since the previous one).
#pragma once

#include <cstdint>
#include <deque>
#include <vector>

#include "switchyard/core/status.h"
#include "switchyard/wire/wire.h"

namespace sy {

// Σ over rows of the mean over workers ÷ Σ over rows of the max (1 = even; 1 with no rows).
double worker_rows_balancedness(const std::vector<int64_t>& worker_rows, int rows, int workers, double* worst_row = nullptr);

class LoadWindow {
 public:
  // Shape of every report: `rows` (layer, stage) rows × `experts`, `workers` workers.
  void reset(int rows, int experts, int workers, int window_steps);
  // Adds a report; invalid_argument naming the field when its shape does not match.
  Status add(const wire::pb::LoadReportRequest& report);
  int steps() const { return static_cast<int>(entries_.size()); }
  // Computed rows per (row, expert) summed over the window.
  std::vector<double> computed() const;
  wire::pb::LoadWindow to_pb() const;

 private:
  struct Entry {
    uint64_t step = 0;  // 0: a serving report
    std::vector<int64_t> routed, computed, worker_rows;
  };
  Entry& entry_for(const wire::pb::LoadReportRequest& report);

  int rows_ = 0, experts_ = 0, workers_ = 0, window_ = 1;
  std::deque<Entry> entries_;
  std::vector<double> ema_;
};

}  // namespace sy
