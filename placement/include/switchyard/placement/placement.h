// Expert placement: which workers hold a replica of each (layer, stage, expert), versioned by
// epoch. Starts from YAML (runtime issue) or the default round-robin spread below.
#pragma once

#include <compare>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "switchyard/core/config.h"

namespace sy {

struct ExpertKey {
  int layer = 0;
  int stage = 0;
  int expert = 0;
  auto operator<=>(const ExpertKey&) const = default;
  std::string to_string() const;  // "layers.0.stages.1.experts.5"
};

class Placement {
 public:
  uint64_t epoch = 0;
  std::map<ExpertKey, std::vector<int>> replicas;  // expert → worker ids (first = primary)

  // Default: expert number n (counting over layers, stages, experts in order) goes to worker
  // n mod workers, one replica each.
  static Placement round_robin(const ModelConfig& model, int workers);
  // Every expert of the model placed at least once, on workers in [0, workers), no expert
  // twice on one worker, no entry for an expert the model lacks. Throws a config error
  // naming the entry.
  void validate(const ModelConfig& model, int workers) const;
  const std::vector<int>& workers_for(const ExpertKey& key) const;
};

}  // namespace sy
