// Synthetic expert-load traces (bench, tests, docs/placement.md "Zipf traces").
//
// Per row, expert popularity follows Zipf's law over a per-row random ranking:
// p(expert at rank i) ∝ 1 / (i + 1)^s, ranks a seeded random permutation of the experts.
// Each step routes `rows_per_step` rows (T tokens × k) per row; an expert's count is the
// multinomial's normal approximation, μ + sqrt(μ (1 − p)) · z rounded and clamped at 0, with
// μ = rows_per_step · p. Drifting traces change slowly between steps: every expert's
// log-popularity takes a Gaussian random-walk step of standard deviation `drift` (so experts
// slowly trade ranks), and s a uniform step of up to ±skew_drift (kept in [0.2, 3]):
// p_e ∝ exp(walk_e) / (rank_e + 1)^s. Fully determined by the options (seed included).
#pragma once

#include <cstdint>
#include <vector>

#include "switchyard/placement/planner.h"

namespace sy {

struct ZipfTraceOptions {
  int rows = 1;                 // (layer, stage) rows, row r = layer r, stage 0
  int experts = 8;
  double rows_per_step = 4096;  // T·k routed rows per row per step
  double skew = 1.0;            // s
  int steps = 1;
  double drift = 0;             // per step: std. dev. of each expert's log-popularity step
  double skew_drift = 0;        // per step: max change of s
  uint64_t seed = 1;
};

// One load matrix per step.
std::vector<LoadMatrix> zipf_trace(const ZipfTraceOptions& options);
// Steps [begin, end) summed (the planner's input for a window).
LoadMatrix sum_steps(const std::vector<LoadMatrix>& steps, size_t begin, size_t end);

}  // namespace sy
