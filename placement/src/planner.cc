// The rebalance planner (planner.h). Per (layer, stage) row, independently:
//   1. replica counts: greedy, each extra slot to the expert with the largest load / count,
//      until that ratio is at most the row's mean worker load (row_search.cc);
//   2. packing: experts by descending load onto the least loaded workers with a free slot,
//      water-filling each expert's load over its replicas (unequal shares);
//   3. local search off the most loaded worker: shift rows along a path of shared experts
//      to a lighter worker (changes shares only), else add a replica on the least loaded
//      worker with a free slot; until the row's bound, no gain or an iteration cap.
// A row that ends above its bound is also planned from the EPLB greedy's replicas (step 3
// only) and keeps the better of the two. With nodes, steps 1-3 run first over nodes (K·G/N slots each: an expert spans nodes only
// when it is hotter than a node's mean), then per node over its workers, then step 3 over
// the whole row with new replicas preferring the expert's node.
// With `current`, each row also starts from the current replicas and shares, runs step 3
// with new replicas counted against max_moves, and keeps that plan unless the fresh one is
// more than 0.5% better balanced (and fits the remaining moves).
#include "switchyard/placement/planner.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <map>
#include <numeric>
#include <optional>

#include "row_search.h"
#include "switchyard/core/error.h"
#include "switchyard/placement/load_trace.h"

namespace sy {
namespace {

using planner_detail::replica_counts;
using planner_detail::row_bound;
using planner_detail::RowPlan;
using planner_detail::RowSearch;
using planner_detail::SearchLimits;

constexpr double kStopSlack = 1e-3;     // local search stops within 0.1% of the bound
constexpr double kKeepTolerance = 0.005;  // keep replicas unless a fresh plan is 0.5% better

std::vector<double> row_loads(const LoadMatrix& load, int r) {
  const int n = load.row_experts[static_cast<size_t>(r)];
  std::vector<double> out(static_cast<size_t>(n));
  for (int e = 0; e < n; ++e) out[static_cast<size_t>(e)] = load.at(r, e);
  return out;
}

int64_t iteration_cap(size_t experts, int workers) { return 8 * static_cast<int64_t>(experts) + 8 * int64_t{workers} + 64; }

struct RowResult {
  RowPlan plan;
  double max = 0;
};

RowResult single_level(const std::vector<double>& L, int workers, int slots, int node_size) {
  const double total = std::accumulate(L.begin(), L.end(), 0.0);
  RowSearch search(L, workers, slots, node_size);
  search.pack(replica_counts(L, workers, int64_t{slots} * workers, total / workers, nullptr));
  search.improve({row_bound(L, workers, slots) * (1 + kStopSlack), iteration_cap(L.size(), workers)});
  return {search.plan(), search.max_load()};
}

// Nodes first (an expert spans nodes only where the node-level balance needs it), then each
// node's workers, then the whole row.
RowResult two_level(const std::vector<double>& L, int workers, int slots, int nodes) {
  const int per_node = workers / nodes;
  const RowResult by_node = single_level(L, nodes, slots * per_node, 0);
  RowPlan merged;
  merged.holders.resize(L.size());
  merged.pieces.resize(L.size());
  for (int n = 0; n < nodes; ++n) {
    std::vector<int> experts;
    std::vector<double> sub;
    for (size_t e = 0; e < L.size(); ++e)
      for (size_t i = 0; i < by_node.plan.holders[e].size(); ++i)
        if (by_node.plan.holders[e][i] == n) experts.push_back(static_cast<int>(e)), sub.push_back(by_node.plan.pieces[e][i]);
    if (experts.empty()) continue;
    const RowResult inside = single_level(sub, per_node, slots, 0);
    for (size_t j = 0; j < experts.size(); ++j)
      for (size_t i = 0; i < inside.plan.holders[j].size(); ++i) {
        merged.holders[static_cast<size_t>(experts[j])].push_back(n * per_node + inside.plan.holders[j][i]);
        merged.pieces[static_cast<size_t>(experts[j])].push_back(inside.plan.pieces[j][i]);
      }
  }
  RowSearch search(L, workers, slots, per_node);
  search.start_from(merged);
  search.improve({row_bound(L, workers, slots) * (1 + kStopSlack), iteration_cap(L.size(), workers)});
  return {search.plan(), search.max_load()};
}

// The EPLB greedy's replicas as a starting point, shares then optimized by the local search:
// never worse than that baseline.
RowResult from_greedy(const std::vector<double>& L, int workers, int slots, int node_size) {
  RowPlan start;
  start.holders = planner_detail::eplb_holders(L, workers, slots);
  for (size_t e = 0; e < L.size(); ++e)
    start.pieces.emplace_back(start.holders[e].size(), L[e] / static_cast<double>(start.holders[e].size()));
  RowSearch search(L, workers, slots, node_size);
  search.start_from(start);
  search.improve({row_bound(L, workers, slots) * (1 + kStopSlack), iteration_cap(L.size(), workers)});
  return {search.plan(), search.max_load()};
}

RowResult fresh_row(const std::vector<double>& L, const PlannerOptions& o) {
  RowResult best = o.nodes > 1 ? two_level(L, o.workers, o.slots_per_worker, o.nodes)
                               : single_level(L, o.workers, o.slots_per_worker, 0);
  if (best.max <= row_bound(L, o.workers, o.slots_per_worker) * (1 + kStopSlack)) return best;
  RowResult other = from_greedy(L, o.workers, o.slots_per_worker, o.nodes > 1 ? o.workers / o.nodes : 0);
  return other.max < best.max ? other : best;
}

ExpertKey key_of(const LoadMatrix& load, int r, int e) {
  return {load.layer[static_cast<size_t>(r)], load.stage[static_cast<size_t>(r)], e};
}

// The current placement's replicas of row r, with pieces from its shares.
RowPlan current_row(const Placement& current, const LoadMatrix& load, int r, const std::vector<double>& L) {
  RowPlan p;
  for (int e = 0; e < static_cast<int>(L.size()); ++e) {
    const ExpertKey key = key_of(load, r, e);
    if (!current.replicas.count(key)) throw_input_error("current placement does not place expert " + key.to_string());
    p.holders.push_back(current.workers_for(key));
    std::vector<double> s = current.shares_of(key);
    for (double& x : s) x *= L[static_cast<size_t>(e)];
    p.pieces.push_back(std::move(s));
  }
  return p;
}

int64_t moves_between(const RowPlan& plan, const std::vector<std::vector<int>>& sorted_current) {
  int64_t n = 0;
  for (size_t e = 0; e < plan.holders.size(); ++e)
    for (int w : plan.holders[e]) n += !std::binary_search(sorted_current[e].begin(), sorted_current[e].end(), w);
  return n;
}

double plan_max(const RowPlan& plan, int workers) {
  std::vector<double> l(static_cast<size_t>(workers), 0.0);
  for (size_t e = 0; e < plan.holders.size(); ++e)
    for (size_t i = 0; i < plan.holders[e].size(); ++i) l[static_cast<size_t>(plan.holders[e][i])] += plan.pieces[e][i];
  return *std::max_element(l.begin(), l.end());
}

// Row r against `current`: the incremental plan unless the fresh one is clearly better and
// fits the moves left. Updates `budget`.
RowPlan plan_against_current(const LoadMatrix& load, int r, const PlannerOptions& o, int64_t* budget) {
  const std::vector<double> L = row_loads(load, r);
  const RowPlan cur = current_row(*o.current, load, r, L);
  std::vector<std::vector<int>> sorted = cur.holders;
  for (auto& h : sorted) std::sort(h.begin(), h.end());
  const RowResult fresh = fresh_row(L, o);
  const int64_t fresh_moves = moves_between(fresh.plan, sorted);
  RowSearch search(L, o.workers, o.slots_per_worker, o.nodes > 1 ? o.workers / o.nodes : 0);
  if (!search.start_from(cur))
    throw_input_error("current placement holds more than " + std::to_string(o.slots_per_worker) +
                      " replicas (--slots-per-worker) on one worker in layer " + std::to_string(load.layer[static_cast<size_t>(r)]) +
                      " stage " + std::to_string(load.stage[static_cast<size_t>(r)]));
  int64_t left = *budget;
  const double stop = std::max(row_bound(L, o.workers, o.slots_per_worker) * (1 + kStopSlack), fresh.max * (1 + kKeepTolerance * 0.8));
  search.improve({stop, iteration_cap(L.size(), o.workers), &left, &sorted});
  const double tiny = 1e-9 * std::max(1.0, fresh.max);
  if (search.max_load() > fresh.max * (1 + kKeepTolerance) + tiny && fresh_moves <= *budget) {
    *budget -= fresh_moves;
    return fresh.plan;
  }
  *budget = left;
  return search.plan();
}

void check_options(const LoadMatrix& load, const PlannerOptions& o) {
  check_load_matrix(load, "planner load");
  if (o.workers < 1) throw_input_error("planner: workers must be >= 1, got " + std::to_string(o.workers));
  if (o.slots_per_worker < 1) throw_input_error("planner: slots per worker must be >= 1, got " + std::to_string(o.slots_per_worker));
  if (o.nodes < 1 || o.workers % o.nodes != 0)
    throw_input_error("planner: nodes (" + std::to_string(o.nodes) + ") must be >= 1 and divide the workers (" + std::to_string(o.workers) + ")");
  if (o.min_replicas < 1 || o.min_replicas > o.workers)
    throw_input_error("planner: min_replicas must be 1.." + std::to_string(o.workers) + " (the workers), got " +
                      std::to_string(o.min_replicas));
  if (o.max_moves < -1) throw_input_error("planner: max_moves must be >= 0 (or -1: no cap), got " + std::to_string(o.max_moves));
  if (!o.replica_bytes.empty() && o.replica_bytes.size() != static_cast<size_t>(load.rows()))
    throw_input_error("planner: replica_bytes lists " + std::to_string(o.replica_bytes.size()) + " rows, the load has " + std::to_string(load.rows()));
  for (int r = 0; r < load.rows(); ++r) {
    const int64_t slots = int64_t{o.slots_per_worker} * o.workers;
    if (slots < load.row_experts[static_cast<size_t>(r)])
      throw_input_error("planner: row " + std::to_string(r) + " (layer " + std::to_string(load.layer[static_cast<size_t>(r)]) + ", stage " +
                        std::to_string(load.stage[static_cast<size_t>(r)]) + ") has " + std::to_string(load.row_experts[static_cast<size_t>(r)]) +
                        " experts, more than the " + std::to_string(slots) + " slots (workers x slots per worker)");
  }
}

void check_current(const LoadMatrix& load, const PlannerOptions& o) {
  std::map<std::pair<int, int>, int> row_of;
  for (int r = 0; r < load.rows(); ++r) row_of[{load.layer[static_cast<size_t>(r)], load.stage[static_cast<size_t>(r)]}] = r;
  for (const auto& [key, list] : o.current->replicas) {
    auto it = row_of.find({key.layer, key.stage});
    if (it == row_of.end() || key.expert < 0 || key.expert >= load.row_experts[static_cast<size_t>(it->second)])
      throw_input_error("current placement places expert " + key.to_string() + ", which the load has no row or column for");
    for (int w : list)
      if (w < 0 || w >= o.workers)
        throw_input_error("current placement puts expert " + key.to_string() + " on worker " + std::to_string(w) + ", the cluster has workers 0.." +
                          std::to_string(o.workers - 1));
  }
}

// A row plan's experts as placement entries: empty replicas dropped, shares renormalized.
void add_row(Placement& out, const LoadMatrix& load, int r, const RowPlan& plan) {
  for (int e = 0; e < static_cast<int>(plan.holders.size()); ++e) {
    std::vector<int> ws;
    std::vector<double> ps;
    const auto& hs = plan.holders[static_cast<size_t>(e)];
    const auto& pc = plan.pieces[static_cast<size_t>(e)];
    const double total = std::accumulate(pc.begin(), pc.end(), 0.0);
    for (size_t i = 0; i < hs.size(); ++i)
      if (total <= 0 || pc[i] > 1e-12 * total) ws.push_back(hs[i]), ps.push_back(pc[i]);
    if (ws.empty()) ws.push_back(hs[static_cast<size_t>(std::max_element(pc.begin(), pc.end()) - pc.begin())]), ps.push_back(total);
    const ExpertKey key = key_of(load, r, e);
    if (ws.size() > 1) {
      std::vector<double> shares(ws.size(), 1.0 / static_cast<double>(ws.size()));
      if (total > 0) {
        double sum = 0;
        for (double p : ps) sum += p;
        double acc = 0;
        for (size_t i = 0; i + 1 < ps.size(); ++i) acc += (shares[i] = ps[i] / sum);
        shares.back() = std::max(0.0, 1.0 - acc);
      }
      out.shares[key] = std::move(shares);
    }
    out.replicas[key] = std::move(ws);
  }
}

// Rows by how far the current placement is from their bound, largest first, so that a move
// cap goes where it helps most.
std::vector<int> row_order(const LoadMatrix& load, const PlannerOptions& o) {
  std::vector<int> order(static_cast<size_t>(load.rows()));
  std::iota(order.begin(), order.end(), 0);
  if (!o.current) return order;
  std::vector<double> excess(order.size());
  for (int r = 0; r < load.rows(); ++r) {
    const std::vector<double> L = row_loads(load, r);
    excess[static_cast<size_t>(r)] = plan_max(current_row(*o.current, load, r, L), o.workers) - row_bound(L, o.workers, o.slots_per_worker);
  }
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return excess[static_cast<size_t>(a)] > excess[static_cast<size_t>(b)]; });
  return order;
}

// Standby replicas (share 0) until every expert has min_replicas distinct workers and, with
// nodes, spans two of them: on a worker that holds it in `current` if any, else on the one with
// the fewest replicas of the row, another node first.
void spread(Placement& p, const LoadMatrix& load, int r, const PlannerOptions& o) {
  const int per_node = o.workers / o.nodes;
  std::vector<int> held(static_cast<size_t>(o.workers), 0);
  for (int e = 0; e < load.row_experts[static_cast<size_t>(r)]; ++e)
    for (int w : p.replicas.at(key_of(load, r, e))) ++held[static_cast<size_t>(w)];
  for (int e = 0; e < load.row_experts[static_cast<size_t>(r)]; ++e) {
    const ExpertKey key = key_of(load, r, e);
    std::vector<int>& ws = p.replicas.at(key);
    auto one_node = [&] {
      return std::all_of(ws.begin(), ws.end(), [&](int w) { return w / per_node == ws.front() / per_node; });
    };
    auto wanted = [&] {
      return static_cast<int>(ws.size()) < o.min_replicas || (o.nodes > 1 && o.min_replicas >= 2 && one_node());
    };
    while (wanted()) {
      int best = -1;
      auto better = [&](int w) {
        if (best < 0) return true;
        const bool cur_w = o.current && o.current->holds(w, key), cur_b = o.current && o.current->holds(best, key);
        if (cur_w != cur_b) return cur_w;
        const bool new_node_w = w / per_node != ws.front() / per_node, new_node_b = best / per_node != ws.front() / per_node;
        if (o.nodes > 1 && new_node_w != new_node_b) return new_node_w;
        return held[static_cast<size_t>(w)] < held[static_cast<size_t>(best)];
      };
      for (int w = 0; w < o.workers; ++w)
        if (std::find(ws.begin(), ws.end(), w) == ws.end() && better(w)) best = w;
      if (best < 0) break;  // every worker holds it
      std::vector<double> shares = p.shares_of(key);
      ws.push_back(best);
      shares.push_back(0.0);
      p.shares[key] = std::move(shares);
      ++held[static_cast<size_t>(best)];
    }
  }
}

void account(PlanResult& result, const LoadMatrix& load, const PlannerOptions& o) {
  const int per_node = o.workers / o.nodes;
  double crossing = 0, all = 0, bound_sum = 0, mean_sum = 0;
  for (int r = 0; r < load.rows(); ++r) {
    const std::vector<double> L = row_loads(load, r);
    const double total = std::accumulate(L.begin(), L.end(), 0.0);
    if (total > 0) mean_sum += total / o.workers, bound_sum += row_bound(L, o.workers, o.slots_per_worker);
    const int64_t bytes = o.replica_bytes.empty() ? 0 : o.replica_bytes[static_cast<size_t>(r)];
    for (int e = 0; e < static_cast<int>(L.size()); ++e) {
      const ExpertKey key = key_of(load, r, e);
      const std::vector<int>& ws = result.placement.replicas.at(key);
      for (int w : ws)
        if (!o.current || !o.current->holds(w, key)) ++result.moved_replicas, result.moved_bytes += bytes;
      const auto [lo, hi] = std::minmax_element(ws.begin(), ws.end());
      all += L[static_cast<size_t>(e)];
      if (*lo / per_node != *hi / per_node) crossing += L[static_cast<size_t>(e)];
    }
  }
  result.cross_node_fraction = all > 0 ? crossing / all : 0.0;
  result.bound = bound_sum > 0 ? mean_sum / bound_sum : 1.0;
  result.balancedness = placement_balancedness(result.placement, load, o.workers);
}

}  // namespace

PlanResult plan_placement(const LoadMatrix& load, const PlannerOptions& options) {
  const auto start = std::chrono::steady_clock::now();
  check_options(load, options);
  if (options.current) check_current(load, options);
  int64_t budget = options.max_moves < 0 || !options.current ? std::numeric_limits<int64_t>::max() : options.max_moves;
  std::vector<RowPlan> plans(static_cast<size_t>(load.rows()));
  for (int r : row_order(load, options))
    plans[static_cast<size_t>(r)] = options.current ? plan_against_current(load, r, options, &budget) : fresh_row(row_loads(load, r), options).plan;
  PlanResult result;
  for (int r = 0; r < load.rows(); ++r) {
    add_row(result.placement, load, r, plans[static_cast<size_t>(r)]);
    spread(result.placement, load, r, options);
  }
  account(result, load, options);
  result.plan_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  return result;
}

double placement_balancedness(const Placement& placement, const LoadMatrix& load, int workers) {
  if (workers < 1) throw_input_error("balancedness: workers must be >= 1, got " + std::to_string(workers));
  std::vector<double> per(static_cast<size_t>(workers));
  double mean_sum = 0, max_sum = 0;
  for (int r = 0; r < load.rows(); ++r) {
    std::fill(per.begin(), per.end(), 0.0);
    double total = 0;
    for (int e = 0; e < load.row_experts[static_cast<size_t>(r)]; ++e) {
      const double L = load.at(r, e);
      if (L == 0) continue;
      const ExpertKey key = key_of(load, r, e);
      if (!placement.replicas.count(key)) throw_input_error("balancedness: the placement does not place expert " + key.to_string());
      const std::vector<int>& ws = placement.workers_for(key);
      const std::vector<double> s = placement.shares_of(key);
      for (size_t i = 0; i < ws.size(); ++i) {
        if (ws[i] < 0 || ws[i] >= workers)
          throw_input_error("balancedness: expert " + key.to_string() + " is on worker " + std::to_string(ws[i]) + ", outside 0.." + std::to_string(workers - 1));
        per[static_cast<size_t>(ws[i])] += L * s[i];
      }
      total += L;
    }
    if (total <= 0) continue;
    mean_sum += total / workers;
    max_sum += *std::max_element(per.begin(), per.end());
  }
  return max_sum > 0 ? mean_sum / max_sum : 1.0;
}

}  // namespace sy
