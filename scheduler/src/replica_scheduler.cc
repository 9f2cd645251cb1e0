#include "switchyard/scheduler/replica_scheduler.h"

#include <algorithm>

#include "switchyard/core/error.h"

namespace sy {

int ReplicaScheduler::pick(const std::vector<int>& replicas, int64_t rows) {
  if (replicas.empty()) throw_runtime_error("replica scheduler: expert with no replicas");
  int best = -1;
  for (int w : replicas) {
    if (w < 0 || static_cast<size_t>(w) >= load_.size())
      throw_runtime_error("replica scheduler: worker " + std::to_string(w) + " out of range");
    if (best < 0 || load_[static_cast<size_t>(w)] < load_[static_cast<size_t>(best)]) best = w;
  }
  load_[static_cast<size_t>(best)] += rows;
  return best;
}

void ReplicaScheduler::reset() { std::fill(load_.begin(), load_.end(), 0); }

}  // namespace sy
