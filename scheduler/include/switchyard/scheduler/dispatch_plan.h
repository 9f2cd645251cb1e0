// The per-step dispatch decision for one (layer, stage): which replica computes which rows.
//
//   dispatch layout (rows grouped by expert, from routing)
//     ─► plan_dispatch(layout's expert offsets, placement, live workers, load)
//     ─► DispatchPlan: per worker, the chunks of expert rows it computes, in packing order
//
// Each expert's rows are split over its live replicas in the placement's shares (an even split
// when it has none; shares renormalized over the live replicas): each replica gets its share
// rounded down, and the rows left over go one each to the largest remainders, ties to the
// replica listed first. A replica's rows form one chunk, in replica order. The split depends on
// the rows and shares only, so a rebalance that moves a replica moves exactly its rows.
// `load` accumulates the rows planned per worker (e.g. over the stages of a step).
// Dead workers (not in `live`) get nothing: re-planning without a worker is how a failed worker's
// rows move to its surviving replicas. The plan is computed once per forward and reused by the
// backward of the same dispatch (the handle keeps it), so both move the same rows; a worker lost
// in between gets its rows re-planned alone (plan_failover), the rest of the plan stands.
#pragma once

#include <cstdint>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "switchyard/core/status.h"
#include "switchyard/placement/placement.h"

namespace sy {

// Rows [first_row, first_row + rows) of the dispatch layout, all of one expert.
struct DispatchChunk {
  int expert = 0;
  int64_t first_row = 0;
  int64_t rows = 0;
};

// What one worker computes: its chunks in packing order (the order its rows travel).
struct WorkerDispatch {
  int worker = 0;
  std::vector<DispatchChunk> chunks;
  int64_t rows = 0;  // Σ chunk rows
};

struct DispatchPlan {
  int layer = 0;
  int stage = 0;
  int64_t rows = 0;                     // all rows of the layout
  std::vector<WorkerDispatch> workers;  // ascending worker id; only workers with rows
};

// Load carried between plans of one step: rows planned per worker id (grows as needed).
using WorkerLoad = std::vector<int64_t>;

// `expert_offsets` of the dispatch layout ([experts + 1], rows of expert i are
// [offsets[i], offsets[i+1])). Fails naming the expert when the placement has no entry for it
// (invalid_argument) or none of its replicas is live (unreachable). `load` grows by the plan.
Result<DispatchPlan> plan_dispatch(std::span<const int64_t> expert_offsets, int layer, int stage,
                                   const Placement& placement, const std::set<int>& live, WorkerLoad& load);

// Failover: the chunks a lost worker was given (or computed, when backward needs them again),
// split over the live replicas of their experts by the same rule. Chunks keep their layout rows,
// so results land where the lost worker's would have; `rows` of the plan = Σ lost rows.
Result<DispatchPlan> plan_failover(std::span<const DispatchChunk> lost, int layer, int stage, const Placement& placement,
                                   const std::set<int>& live, WorkerLoad& load);

}  // namespace sy
