#include "switchyard/scheduler/dispatch_plan.h"

#include <algorithm>
#include <cmath>
#include <map>

namespace sy {
namespace {

// Rows per replica of one expert: each live replica's share of `rows` (shares renormalized over
// the live replicas; an even split when they have none), rounded down, and the remaining rows
// one each to the largest fractional parts, ties to the replica listed first. The split depends
// on nothing else, so moving a replica to another worker moves exactly its rows.
std::vector<int64_t> split_rows(int64_t rows, const std::vector<int>& replicas, const std::vector<double>& shares,
                                const std::set<int>& live) {
  const size_t n = replicas.size();
  std::vector<double> weight(n, 0.0);
  double total = 0;
  for (size_t i = 0; i < n; ++i)
    if (live.count(replicas[i])) total += weight[i] = shares[i];
  if (total <= 0)  // live replicas with no planned share: even
    for (size_t i = 0; i < n; ++i) total += weight[i] = live.count(replicas[i]) ? 1.0 : 0.0;
  std::vector<int64_t> out(n, 0);
  std::vector<double> frac(n, -1.0);
  int64_t given = 0;
  for (size_t i = 0; i < n; ++i) {
    if (weight[i] <= 0) continue;
    const double exact = static_cast<double>(rows) * weight[i] / total;
    out[i] = std::min(rows, static_cast<int64_t>(std::floor(exact)));
    frac[i] = exact - static_cast<double>(out[i]);
    given += out[i];
  }
  std::vector<size_t> order;
  for (size_t i = 0; i < n; ++i)
    if (weight[i] > 0) order.push_back(i);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return frac[a] > frac[b]; });
  for (size_t k = 0; given < rows; k = (k + 1) % order.size(), ++given) ++out[order[k]];
  return out;
}

}  // namespace

namespace {

// Splits rows [begin, begin + rows) of `key` over its live replicas (split_rows) into `by_worker`.
Status place_rows(const ExpertKey& key, int64_t begin, int64_t rows, const Placement& placement,
                  const std::set<int>& live, WorkerLoad& load, std::map<int, WorkerDispatch>& by_worker) {
  auto it = placement.replicas.find(key);
  if (it == placement.replicas.end() || it->second.empty())
    return Status(StatusCode::invalid_argument, "the placement has no replica of " + key.to_string());
  const std::vector<int>& replicas = it->second;
  bool any_live = false;
  for (int w : replicas) {
    if (w < 0) return Status(StatusCode::invalid_argument, "the placement names worker " + std::to_string(w));
    if (static_cast<size_t>(w) >= load.size()) load.resize(static_cast<size_t>(w) + 1, 0);
    any_live |= live.count(w) > 0;
  }
  if (!any_live) {
    std::string held;
    for (int w : replicas) held += (held.empty() ? "" : ", ") + std::to_string(w);
    return Status(StatusCode::unreachable, "no live replica of " + key.to_string() + " (its workers " + held +
                                               " are all dead)");
  }
  const std::vector<double> shares = placement.shares_of(key);
  if (shares.size() != replicas.size())
    return Status(StatusCode::invalid_argument, "the placement's shares of " + key.to_string() + " do not match its replicas");
  const std::vector<int64_t> split = split_rows(rows, replicas, shares, live);
  int64_t off = 0;
  for (size_t r = 0; r < replicas.size(); ++r) {
    if (split[r] == 0) continue;
    const int w = replicas[r];
    load[static_cast<size_t>(w)] += split[r];
    WorkerDispatch& wd = by_worker[w];
    wd.worker = w;
    wd.chunks.push_back({key.expert, begin + off, split[r]});
    wd.rows += split[r];
    off += split[r];
  }
  return Status::ok();
}

DispatchPlan collect(int layer, int stage, int64_t rows, std::map<int, WorkerDispatch>& by_worker) {
  DispatchPlan plan{layer, stage, rows, {}};
  for (auto& [w, wd] : by_worker) plan.workers.push_back(std::move(wd));
  return plan;
}

}  // namespace

Result<DispatchPlan> plan_dispatch(std::span<const int64_t> expert_offsets, int layer, int stage,
                                   const Placement& placement, const std::set<int>& live, WorkerLoad& load) {
  std::map<int, WorkerDispatch> by_worker;
  for (size_t i = 0; i + 1 < expert_offsets.size(); ++i) {
    const int64_t begin = expert_offsets[i], rows = expert_offsets[i + 1] - begin;
    if (rows == 0) continue;
    if (Status s = place_rows({layer, stage, static_cast<int>(i)}, begin, rows, placement, live, load, by_worker); !s)
      return s;
  }
  return collect(layer, stage, expert_offsets.empty() ? 0 : expert_offsets.back(), by_worker);
}

Result<DispatchPlan> plan_failover(std::span<const DispatchChunk> lost, int layer, int stage, const Placement& placement,
                                   const std::set<int>& live, WorkerLoad& load) {
  std::map<int, WorkerDispatch> by_worker;
  int64_t rows = 0;
  for (const DispatchChunk& c : lost) {
    if (Status s = place_rows({layer, stage, c.expert}, c.first_row, c.rows, placement, live, load, by_worker); !s)
      return s;
    rows += c.rows;
  }
  return collect(layer, stage, rows, by_worker);
}

}  // namespace sy
