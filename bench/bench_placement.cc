// The rebalance planner (issue 10) against round-robin and the EPLB-style greedy baselines
// (global and hierarchical) on synthetic Zipf traces (placement/zipf_trace.h, fixed seeds),
// its bound, its planning time, and how a plan made on a past window holds up on a drifting
// trace. Ends with `name: value` headline lines (scripts/run-bench.sh collects them).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <vector>

#include "switchyard/placement/baselines.h"
#include "switchyard/placement/planner.h"
#include "switchyard/placement/zipf_trace.h"

namespace sy {
namespace {

struct Case {
  int rows, experts, workers, slots, nodes;
  double skew;
};

LoadMatrix trace(const Case& c, uint64_t seed) {
  ZipfTraceOptions o;
  o.rows = c.rows;
  o.experts = c.experts;
  o.skew = c.skew;
  o.rows_per_step = 16384.0 * 8;  // 16k tokens, top-8
  o.seed = seed;
  return zipf_trace(o)[0];
}

PlannerOptions options(const Case& c) {
  PlannerOptions o;
  o.workers = c.workers;
  o.slots_per_worker = c.slots;
  o.nodes = c.nodes;
  return o;
}

double ms_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t).count();
}

struct Worst {
  double vs_greedy = 1e9, vs_bound = 1e9;
};

void run_table(Worst& worst) {
  std::printf("%-4s %4s %5s %2s %2s %4s | %6s %6s %6s %7s %6s | %8s %6s\n", "rows", "E", "G", "K", "N", "s", "rr", "greedy",
              "hier", "planner", "bound", "plan_ms", "xnode");
  uint64_t seed = 1000;
  for (int E : {64, 256})
    for (int G : {16, 64})
      for (int K : {4, 8})
        for (double s : {0.8, 1.2, 1.6})
          for (int N : {1, 4}) {
            const Case c{8, E, G, K, N, s};
            if (K * G < E) continue;
            const LoadMatrix load = trace(c, ++seed);
            const PlanResult res = plan_placement(load, options(c));
            const double rr = placement_balancedness(round_robin_placement(load, G), load, G);
            const double greedy = placement_balancedness(greedy_placement(load, G, K), load, G);
            const double hier = placement_balancedness(hierarchical_placement(load, G, K, N), load, G);
            worst.vs_greedy = std::min({worst.vs_greedy, res.balancedness / greedy, res.balancedness / hier});
            // With K·G = E there is no slot to split an expert over: the bound (which assumes
            // splitting) is loose there, so those traces are shown but left out of vs_bound.
            const bool spare = K * G > E;
            if (spare) worst.vs_bound = std::min(worst.vs_bound, res.balancedness / res.bound);
            std::printf("%-4d %4d %5d %2d %2d %4.1f | %6.4f %6.4f %6.4f %7.4f %6.4f | %8.2f %6.3f%s\n", c.rows, E, G, K, N, s, rr,
                        greedy, hier, res.balancedness, res.bound, res.plan_ms, res.cross_node_fraction,
                        spare ? "" : "  (no spare slot)");
          }
}

double median_plan_ms(const Case& c, int repeats) {
  const LoadMatrix load = trace(c, 7);
  std::vector<double> ms;
  for (int i = 0; i < repeats; ++i) ms.push_back(plan_placement(load, options(c)).plan_ms);
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

// Plan on steps [0, window) of a drifting trace, measure the mean balancedness over the
// following `ahead` steps; and the same replanning before every step on the window before it.
void future_balance(double* held, double* replanned) {
  const Case c{8, 256, 64, 8, 1, 1.2};
  ZipfTraceOptions o;
  o.rows = c.rows;
  o.experts = c.experts;
  o.skew = c.skew;
  o.rows_per_step = 16384.0 * 8;
  o.steps = 40;
  o.drift = 0.02;
  o.skew_drift = 0.005;
  o.seed = 99;
  const std::vector<LoadMatrix> steps = zipf_trace(o);
  const size_t window = 20;
  const PlanResult plan = plan_placement(sum_steps(steps, 0, window), options(c));
  double a = 0, b = 0;
  PlannerOptions every = options(c);
  PlanResult last = plan;
  for (size_t t = window; t < steps.size(); ++t) {
    a += placement_balancedness(plan.placement, steps[t], c.workers);
    every.current = &last.placement;
    PlanResult next = plan_placement(sum_steps(steps, t - window, t), every);
    b += placement_balancedness(next.placement, steps[t], c.workers);
    last = std::move(next);
  }
  *held = a / static_cast<double>(steps.size() - window);
  *replanned = b / static_cast<double>(steps.size() - window);
}

}  // namespace
}  // namespace sy

int main() {
  using namespace sy;
  const auto start = std::chrono::steady_clock::now();
  Worst worst;
  run_table(worst);
  const double plan_ms = median_plan_ms({61, 256, 64, 8, 1, 1.2}, 5);
  const double plan_ms_nodes = median_plan_ms({61, 256, 64, 8, 8, 1.2}, 3);
  double held = 0, replanned = 0;
  future_balance(&held, &replanned);
  const Case large{1, 4096, 16384, 2, 1, 1.2};
  const LoadMatrix big = trace(large, 5);
  const PlanResult big_plan = plan_placement(big, options(large));
  std::printf("61x256x64 K=8 with 8 nodes: plan %.2f ms\n", plan_ms_nodes);
  std::printf("4096 experts x 16384 workers K=2: balancedness %.4f, bound %.4f\n", big_plan.balancedness, big_plan.bound);
  std::printf("bench time %.1f s\n", ms_since(start) / 1e3);
  std::printf("placement_balance_vs_greedy_min: %.4f\n", worst.vs_greedy);
  std::printf("placement_balance_vs_bound_min: %.4f\n", worst.vs_bound);
  std::printf("placement_plan_ms: %.2f\n", plan_ms);
  std::printf("placement_future_balance: %.4f\n", held);
  std::printf("placement_future_balance_replan_every_step: %.4f\n", replanned);
  std::printf("placement_plan_large_ms: %.1f\n", big_plan.plan_ms);
  return 0;
}
