// The rebalance planner: from measured expert load to a placement (replica counts, workers,
// shares) that balances the rows every worker computes, moving as few bytes as it can.
//
//   load [R, E] (rows per expert of each (layer, stage) row)
//     ─► replica counts (hot experts get more, at most K replicas per worker per row)
//     ─► packing onto workers with unequal shares per replica
//     ─► with a current placement: keep replicas where they are unless balance needs the move
//
// Balancedness of a placement under a load, per row r: mean over workers of the rows planned
// onto them ÷ the max (1 = perfect). Overall: Σ_r mean_r ÷ Σ_r max_r — the ideal time of the
// step's exchanges over the time the slowest worker of each sets, when every row is one
// synchronous exchange. A replica's planned rows are its expert's load × its share.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "switchyard/placement/placement.h"

namespace sy {

// Rows per expert, one row per (layer, stage): `counts[r * experts + e]`. A row whose stage
// has fewer experts than `experts` holds zeros past `row_experts[r]`.
struct LoadMatrix {
  int experts = 0;                 // E: the widest stage
  std::vector<int> layer, stage;   // [R]: which (layer, stage) each row is
  std::vector<int> row_experts;    // [R]: experts of that stage (<= experts)
  std::vector<double> counts;      // [R * E], >= 0 and finite
  int rows() const { return static_cast<int>(layer.size()); }
  double at(int r, int e) const { return counts[static_cast<size_t>(r) * static_cast<size_t>(experts) + static_cast<size_t>(e)]; }
};

struct PlannerOptions {
  int workers = 0;           // G
  int slots_per_worker = 0;  // K: replicas one worker holds per (layer, stage) row
  int nodes = 1;             // N: workers form N nodes of G/N consecutive ids (N divides G)
  const Placement* current = nullptr;  // keep its replicas where balance allows
  int max_moves = -1;                  // new replicas (not in `current`) at most; -1: no cap (only with `current`)
  std::vector<int64_t> replica_bytes;  // [R]: bytes one replica of the row's stage moves (weights + AdamW moments); empty: 0
  // Fault tolerance: every expert on at least this many distinct workers (and, with nodes and
  // min_replicas >= 2, on two nodes), so that losing any min_replicas - 1 workers (or a node)
  // leaves it a replica. Replicas the balance did not ask for are standbys with share 0: they
  // compute no rows while another replica lives, and step like the others. At most G.
  int min_replicas = 1;
};

struct PlanResult {
  Placement placement;        // epoch 0; every expert of every row placed, with shares
  double balancedness = 0;    // of `placement` under the load
  double bound = 0;           // a provable upper bound of balancedness for this load, G and K
  int64_t moved_replicas = 0; // replicas not held by `current` (all of them without one)
  int64_t moved_bytes = 0;
  double plan_ms = 0;
  // Of all planned rows, the fraction whose expert has replicas on more than one node (0 with
  // one node): rows a hierarchical placement would keep inside a node.
  double cross_node_fraction = 0;
};

// Throws sy::Error(input) naming what is wrong: a shape or count that does not fit, K·G below
// the experts of a row, N not dividing G, a current placement for another model or cluster.
PlanResult plan_placement(const LoadMatrix& load, const PlannerOptions& options);

// Balancedness of any placement under `load` (definition above).
double placement_balancedness(const Placement& placement, const LoadMatrix& load, int workers);

}  // namespace sy
