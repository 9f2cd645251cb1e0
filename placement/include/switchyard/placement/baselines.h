// Baseline placements the planner is measured against (bench/bench_placement.cc).
//
//  - round-robin: expert n of the trace (counting over rows, then experts) on worker n mod G,
//    one replica each, as default_placement does.
//  - greedy (written from DeepSeek EPLB's description, not its code): every one of the K·G
//    slots is used — each extra slot goes to the expert with the largest load / replicas —
//    then replicas by descending load / replicas go to the lightest worker that has fewer
//    than K and does not hold that expert yet; replicas of an expert share its rows evenly.
//  - hierarchical (EPLB's node-aware mode): experts form groups of consecutive ids (N·m
//    groups, m in 4, 2, 1, the largest that divides E); groups are packed onto nodes by load,
//    the same number per node; each node then replicates and packs its experts onto its own
//    workers as the greedy does. A row whose E is not a multiple of N falls back to greedy.
#pragma once

#include "switchyard/placement/planner.h"

namespace sy {

Placement round_robin_placement(const LoadMatrix& load, int workers);
Placement greedy_placement(const LoadMatrix& load, int workers, int slots_per_worker);
Placement hierarchical_placement(const LoadMatrix& load, int workers, int slots_per_worker, int nodes);

}  // namespace sy
