// Per-step choice of replica for every (token, expert): least-loaded among the expert's
// replicas, counting rows already assigned in this step (ties: the first listed worker).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace sy {

class ReplicaScheduler {
 public:
  explicit ReplicaScheduler(int workers) : load_(static_cast<size_t>(workers), 0) {}
  // Picks a worker from `replicas` for `rows` rows of one expert and records the load.
  int pick(const std::vector<int>& replicas, int64_t rows);
  void reset();  // new step
  const std::vector<int64_t>& load() const { return load_; }

 private:
  std::vector<int64_t> load_;
};

}  // namespace sy
