#include "switchyard/scheduler/dispatch_plan.h"

#include <algorithm>
#include <map>

namespace sy {
namespace {

// The live replica with the fewest planned rows; ties to the first listed.
int least_loaded(const std::vector<int>& replicas, const std::set<int>& live, const WorkerLoad& load) {
  int best = -1;
  for (int w : replicas) {
    if (!live.count(w)) continue;
    if (best < 0 || load[static_cast<size_t>(w)] < load[static_cast<size_t>(best)]) best = w;
  }
  return best;
}

}  // namespace

Result<DispatchPlan> plan_dispatch(std::span<const int64_t> expert_offsets, int layer, int stage,
                                   const Placement& placement, const std::set<int>& live, WorkerLoad& load) {
  DispatchPlan plan{layer, stage, expert_offsets.empty() ? 0 : expert_offsets.back(), {}};
  std::map<int, WorkerDispatch> by_worker;
  for (size_t i = 0; i + 1 < expert_offsets.size(); ++i) {
    const int64_t begin = expert_offsets[i], rows = expert_offsets[i + 1] - begin;
    if (rows == 0) continue;
    const ExpertKey key{layer, stage, static_cast<int>(i)};
    auto it = placement.replicas.find(key);
    if (it == placement.replicas.end() || it->second.empty())
      return Status(StatusCode::invalid_argument, "the placement has no replica of " + key.to_string());
    int64_t live_replicas = 0;
    for (int w : it->second) {
      if (w < 0) return Status(StatusCode::invalid_argument, "the placement names worker " + std::to_string(w));
      if (static_cast<size_t>(w) >= load.size()) load.resize(static_cast<size_t>(w) + 1, 0);
      live_replicas += live.count(w) ? 1 : 0;
    }
    if (live_replicas == 0)
      return Status(StatusCode::unreachable, "no live replica of " + key.to_string() + " (all its workers are dead)");
    const int64_t chunk = (rows + live_replicas - 1) / live_replicas;
    for (int64_t off = 0; off < rows; off += chunk) {
      const int64_t n = std::min(chunk, rows - off);
      const int w = least_loaded(it->second, live, load);
      load[static_cast<size_t>(w)] += n;
      WorkerDispatch& wd = by_worker[w];
      wd.worker = w;
      wd.chunks.push_back({static_cast<int>(i), begin + off, n});
      wd.rows += n;
    }
  }
  for (auto& [w, wd] : by_worker) plan.workers.push_back(std::move(wd));
  return plan;
}

}  // namespace sy
