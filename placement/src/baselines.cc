#include "switchyard/placement/baselines.h"

#include <algorithm>
#include <limits>
#include <numeric>
#include <set>

#include "row_search.h"
#include "switchyard/core/error.h"
#include "switchyard/placement/load_trace.h"

namespace sy {
namespace {

using planner_detail::replica_counts;

std::vector<double> row_loads(const LoadMatrix& load, int r) {
  std::vector<double> out;
  for (int e = 0; e < load.row_experts[static_cast<size_t>(r)]; ++e) out.push_back(load.at(r, e));
  return out;
}

void check(const LoadMatrix& load, int workers, int slots, int nodes) {
  check_load_matrix(load, "baseline load");
  if (workers < 1 || slots < 1 || nodes < 1 || workers % nodes != 0)
    throw_input_error("baseline: need workers >= 1, slots >= 1 and nodes dividing workers (got " + std::to_string(workers) + ", " +
                      std::to_string(slots) + ", " + std::to_string(nodes) + ")");
  for (int r = 0; r < load.rows(); ++r)
    if (int64_t{workers} * slots < load.row_experts[static_cast<size_t>(r)])
      throw_input_error("baseline: row " + std::to_string(r) + " has more experts than workers x slots");
}

}  // namespace

// EPLB-style: experts' replicas (all `slots` of them, at most `workers` per expert) packed
// onto `workers` workers, `per_worker` each, lightest first. Returns holders per expert
// (ids 0..workers-1).
std::vector<std::vector<int>> planner_detail::eplb_holders(const std::vector<double>& L, int workers, int per_worker) {
  const std::vector<int> count =
      replica_counts(L, workers, int64_t{per_worker} * workers, -std::numeric_limits<double>::infinity(), nullptr);
  std::vector<std::pair<double, int>> items;  // (load per replica, expert)
  for (size_t e = 0; e < L.size(); ++e)
    for (int i = 0; i < count[e]; ++i) items.push_back({L[e] / count[e], static_cast<int>(e)});
  std::stable_sort(items.begin(), items.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  std::set<std::pair<double, int>> room;
  for (int w = 0; w < workers; ++w) room.insert({0.0, w});
  std::vector<double> load(static_cast<size_t>(workers), 0.0);
  std::vector<int> used(static_cast<size_t>(workers), 0);
  std::vector<std::vector<int>> holders(L.size());
  for (const auto& [piece, e] : items) {
    auto& hs = holders[static_cast<size_t>(e)];
    auto it = room.begin();
    while (it != room.end() && std::find(hs.begin(), hs.end(), it->second) != hs.end()) ++it;
    if (it == room.end()) continue;  // every worker with room holds it already: one replica fewer
    const int w = it->second;
    room.erase(it);
    hs.push_back(w);
    load[static_cast<size_t>(w)] += piece;
    if (++used[static_cast<size_t>(w)] < per_worker) room.insert({load[static_cast<size_t>(w)], w});
  }
  return holders;
}

namespace {

std::vector<std::vector<int>> replicate_and_pack(const std::vector<double>& L, int workers, int per_worker) {
  return planner_detail::eplb_holders(L, workers, per_worker);
}

void put_row(Placement& p, const LoadMatrix& load, int r, const std::vector<std::vector<int>>& holders) {
  for (size_t e = 0; e < holders.size(); ++e)
    p.replicas[{load.layer[static_cast<size_t>(r)], load.stage[static_cast<size_t>(r)], static_cast<int>(e)}] = holders[e];
}

// Groups of consecutive experts packed onto nodes, the same number per node, heaviest first
// to the lightest node with room. Returns the node of each group.
std::vector<int> groups_to_nodes(const std::vector<double>& group_load, int nodes) {
  const int per_node = static_cast<int>(group_load.size()) / nodes;
  std::vector<int> order(group_load.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return group_load[static_cast<size_t>(a)] > group_load[static_cast<size_t>(b)]; });
  std::set<std::pair<double, int>> room;
  for (int n = 0; n < nodes; ++n) room.insert({0.0, n});
  std::vector<int> node_of(group_load.size()), used(static_cast<size_t>(nodes), 0);
  std::vector<double> load(static_cast<size_t>(nodes), 0.0);
  for (int g : order) {
    const int n = room.begin()->second;
    room.erase(room.begin());
    node_of[static_cast<size_t>(g)] = n;
    load[static_cast<size_t>(n)] += group_load[static_cast<size_t>(g)];
    if (++used[static_cast<size_t>(n)] < per_node) room.insert({load[static_cast<size_t>(n)], n});
  }
  return node_of;
}

std::vector<std::vector<int>> hierarchical_row(const std::vector<double>& L, int workers, int slots, int nodes) {
  const int E = static_cast<int>(L.size());
  int groups = nodes;
  for (int m : {4, 2})
    if (E % (nodes * m) == 0) {
      groups = nodes * m;
      break;
    }
  const int size = E / groups, per_node = workers / nodes;
  std::vector<double> group_load(static_cast<size_t>(groups), 0.0);
  for (int e = 0; e < E; ++e) group_load[static_cast<size_t>(e / size)] += L[static_cast<size_t>(e)];
  const std::vector<int> node_of = groups_to_nodes(group_load, nodes);
  std::vector<std::vector<int>> holders(L.size());
  for (int n = 0; n < nodes; ++n) {
    std::vector<int> experts;
    std::vector<double> sub;
    for (int e = 0; e < E; ++e)
      if (node_of[static_cast<size_t>(e / size)] == n) experts.push_back(e), sub.push_back(L[static_cast<size_t>(e)]);
    const auto inside = replicate_and_pack(sub, per_node, slots);
    for (size_t j = 0; j < experts.size(); ++j)
      for (int w : inside[j]) holders[static_cast<size_t>(experts[j])].push_back(n * per_node + w);
  }
  return holders;
}

}  // namespace

Placement round_robin_placement(const LoadMatrix& load, int workers) {
  check(load, workers, 1 << 30, 1);
  Placement p;
  int64_t n = 0;
  for (int r = 0; r < load.rows(); ++r)
    for (int e = 0; e < load.row_experts[static_cast<size_t>(r)]; ++e, ++n)
      p.replicas[{load.layer[static_cast<size_t>(r)], load.stage[static_cast<size_t>(r)], e}] = {static_cast<int>(n % workers)};
  return p;
}

Placement greedy_placement(const LoadMatrix& load, int workers, int slots_per_worker) {
  check(load, workers, slots_per_worker, 1);
  Placement p;
  for (int r = 0; r < load.rows(); ++r) put_row(p, load, r, replicate_and_pack(row_loads(load, r), workers, slots_per_worker));
  return p;
}

Placement hierarchical_placement(const LoadMatrix& load, int workers, int slots_per_worker, int nodes) {
  check(load, workers, slots_per_worker, nodes);
  Placement p;
  for (int r = 0; r < load.rows(); ++r) {
    const std::vector<double> L = row_loads(load, r);
    const bool fits = L.size() % static_cast<size_t>(nodes) == 0 &&
                      int64_t{slots_per_worker} * (workers / nodes) >= static_cast<int64_t>(L.size()) / nodes;
    put_row(p, load, r, fits ? hierarchical_row(L, workers, slots_per_worker, nodes) : replicate_and_pack(L, workers, slots_per_worker));
  }
  return p;
}

}  // namespace sy
