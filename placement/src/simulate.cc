#include "switchyard/placement/simulate.h"

#include <algorithm>

#include "switchyard/core/error.h"

namespace sy {
namespace {

void check_cost(const CostModel& c, int workers, int nodes) {
  if (workers < 1 || nodes < 1 || workers % nodes != 0)
    throw_input_error("simulate: nodes (" + std::to_string(nodes) + ") must be >= 1 and divide the workers (" + std::to_string(workers) + ")");
  if (!(c.rows_per_s > 0) || c.hidden_size < 1 || !(c.intra_gbps > 0) || !(c.inter_gbps > 0) || !(c.intra_latency_us >= 0) ||
      !(c.inter_latency_us >= 0) || c.clients_per_node < 1)
    throw_input_error("simulate: rows_per_s, hidden_size, bandwidths and clients_per_node must be > 0, latencies >= 0");
}

struct WorkerTime {
  double seconds = 0, intra_bytes = 0, inter_bytes = 0;
};

WorkerTime worker_time(double rows, int nodes, const CostModel& c, bool all_intra) {
  WorkerTime t;
  if (rows <= 0) return t;
  const double bytes = rows * c.hidden_size * 4.0 * 2.0;  // in and back out
  const double local = all_intra ? 1.0 : 1.0 / nodes;
  t.intra_bytes = bytes * local;
  t.inter_bytes = bytes - t.intra_bytes;
  const double clients = static_cast<double>(c.clients_per_node) * nodes;
  const double messages = 2 * std::min(clients, std::max(1.0, rows));
  const double intra_msgs = messages * local, inter_msgs = messages - intra_msgs;
  t.seconds = rows / c.rows_per_s + t.intra_bytes / (c.intra_gbps * 1e9 / 8) + t.inter_bytes / (c.inter_gbps * 1e9 / 8) +
              (intra_msgs * c.intra_latency_us + inter_msgs * c.inter_latency_us) * 1e-6;
  return t;
}

}  // namespace

SimResult simulate_placement(const Placement& placement, const LoadMatrix& load, int workers, int nodes, const CostModel& cost) {
  check_cost(cost, workers, nodes);
  SimResult out;
  out.balancedness = placement_balancedness(placement, load, workers);  // also checks the placement covers the load
  std::vector<double> rows(static_cast<size_t>(workers));
  double intra = 0, inter = 0, step = 0, ideal = 0;
  for (int r = 0; r < load.rows(); ++r) {
    std::fill(rows.begin(), rows.end(), 0.0);
    double total = 0;
    for (int e = 0; e < load.row_experts[static_cast<size_t>(r)]; ++e) {
      const double L = load.at(r, e);
      if (L == 0) continue;
      const ExpertKey key{load.layer[static_cast<size_t>(r)], load.stage[static_cast<size_t>(r)], e};
      const std::vector<int>& ws = placement.workers_for(key);
      const std::vector<double> s = placement.shares_of(key);
      for (size_t i = 0; i < ws.size(); ++i) rows[static_cast<size_t>(ws[i])] += L * s[i];
      total += L;
    }
    double slowest = 0;
    for (double x : rows) {
      const WorkerTime t = worker_time(x, nodes, cost, false);
      slowest = std::max(slowest, t.seconds);
      intra += t.intra_bytes;
      inter += t.inter_bytes;
    }
    step += slowest;
    ideal += worker_time(total / workers, nodes, cost, true).seconds;
  }
  out.step_ms = step * 1e3;
  out.ideal_step_ms = ideal * 1e3;
  out.inter_node_fraction = intra + inter > 0 ? inter / (intra + inter) : 0.0;
  return out;
}

}  // namespace sy
