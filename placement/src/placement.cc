#include "switchyard/placement/placement.h"

#include <set>

#include "switchyard/core/error.h"

namespace sy {

std::string ExpertKey::to_string() const {
  return "layers." + std::to_string(layer) + ".stages." + std::to_string(stage) + ".experts." + std::to_string(expert);
}

Placement Placement::round_robin(const ModelConfig& model, int workers) {
  if (workers < 1) throw_config_error("placement needs at least one worker, got " + std::to_string(workers));
  Placement p;
  int n = 0;
  for (int l = 0; l < model.layers; ++l)
    for (size_t s = 0; s < model.layer.stages.size(); ++s)
      for (int e = 0; e < model.layer.stages[s].experts; ++e) p.replicas[{l, static_cast<int>(s), e}] = {n++ % workers};
  return p;
}

void Placement::validate(const ModelConfig& model, int workers) const {
  for (const auto& [key, list] : replicas) {
    const bool exists = key.layer >= 0 && key.layer < model.layers && key.stage >= 0 &&
                        key.stage < static_cast<int>(model.layer.stages.size()) && key.expert >= 0 &&
                        key.expert < model.layer.stages[static_cast<size_t>(key.stage)].experts;
    if (!exists) throw_config_error("placement entry " + key.to_string() + ": the model has no such expert");
    if (list.empty()) throw_config_error("placement entry " + key.to_string() + ": no workers listed");
    std::set<int> seen;
    for (int w : list) {
      if (w < 0 || w >= workers)
        throw_config_error("placement entry " + key.to_string() + ": worker " + std::to_string(w) +
                           " does not exist (workers 0.." + std::to_string(workers - 1) + ")");
      if (!seen.insert(w).second)
        throw_config_error("placement entry " + key.to_string() + ": worker " + std::to_string(w) + " listed twice");
    }
  }
  for (int l = 0; l < model.layers; ++l)
    for (size_t s = 0; s < model.layer.stages.size(); ++s)
      for (int e = 0; e < model.layer.stages[s].experts; ++e)
        if (!replicas.count({l, static_cast<int>(s), e}))
          throw_config_error("placement: expert " + ExpertKey{l, static_cast<int>(s), e}.to_string() + " is not placed");
}

const std::vector<int>& Placement::workers_for(const ExpertKey& key) const {
  auto it = replicas.find(key);
  if (it == replicas.end()) throw_runtime_error("placement epoch " + std::to_string(epoch) + " has no entry for " + key.to_string());
  return it->second;
}

}  // namespace sy
