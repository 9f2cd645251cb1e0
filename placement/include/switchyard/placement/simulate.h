// A stated cost model for the step time of a placement (`switchyard placement simulate`,
// docs/placement.md "Simulator"). Per (layer, stage) row, each worker's time is
//   rows / rows_per_s                                  (expert compute)
// + bytes_intra / intra bandwidth + bytes_inter / inter bandwidth
// + messages × latency (intra or inter),
// where a worker's rows arrive from clients spread evenly over the N nodes (C per node),
// each row hidden_size floats (4 bytes) in and the same back out; a client whose rows reach
// the worker sends it one message each way (at most one per row). The step time is Σ_rows of
// the slowest worker's time — every row is one synchronous exchange. Rows of an expert split
// by the placement's shares whatever client they come from (the scheduler's rule), so the
// inter-node fraction of the bytes is (N − 1) / N for every placement; the model leaves out
// overlap of compute with transfer, congestion, and the gradient sync between replicas.
#pragma once

#include "switchyard/placement/planner.h"

namespace sy {

struct CostModel {
  double rows_per_s = 1e6;        // rows one worker computes per second (through one expert)
  int hidden_size = 4096;         // floats per row
  double intra_gbps = 1600;       // per worker, Gbit/s, inside a node
  double inter_gbps = 400;        // per worker, Gbit/s, between nodes
  double intra_latency_us = 2;    // per message
  double inter_latency_us = 5;
  int clients_per_node = 8;
};

struct SimResult {
  double step_ms = 0;
  double ideal_step_ms = 0;       // every row perfectly balanced, all traffic inside a node
  double balancedness = 0;
  double inter_node_fraction = 0; // of the bytes moved
};

// Throws sy::Error(input) for a placement that misses an expert of the load, a worker out of
// range, nodes not dividing workers or a cost figure <= 0.
SimResult simulate_placement(const Placement& placement, const LoadMatrix& load, int workers, int nodes, const CostModel& cost);

}  // namespace sy
