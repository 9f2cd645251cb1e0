#include "switchyard/placement/placement.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <set>

#include "switchyard/core/error.h"

namespace sy {

Placement Placement::round_robin(const ModelConfig& model, int workers) { return default_placement(model, workers, 1); }

Placement default_placement(const ModelConfig& model, int workers, int replicas) {
  if (workers < 1) throw_config_error("placement needs at least one worker, got " + std::to_string(workers));
  if (replicas < 1 || replicas > workers) {
    throw_config_error("default placement: replicas must be in 1..workers (" + std::to_string(workers) + "), got " +
                       std::to_string(replicas));
  }
  Placement p;
  int64_t n = 0;
  for (int l = 0; l < model.layers; ++l)
    for (size_t s = 0; s < model.layer.stages.size(); ++s)
      for (int e = 0; e < model.layer.stages[s].experts; ++e, ++n) {
        std::vector<int>& list = p.replicas[{l, static_cast<int>(s), e}];
        for (int r = 0; r < replicas; ++r) list.push_back(static_cast<int>((n + r) % workers));
      }
  return p;
}

std::vector<ExpertKey> Placement::experts_on(int worker) const {
  std::vector<ExpertKey> out;
  for (const auto& [key, list] : replicas) {
    if (std::find(list.begin(), list.end(), worker) != list.end()) out.push_back(key);
  }
  return out;
}

int64_t expert_weight_bytes(const ModelConfig& model, int stage) {
  if (stage < 0 || stage >= static_cast<int>(model.layer.stages.size()))
    throw_runtime_error("expert_weight_bytes: the model has no stage " + std::to_string(stage));
  const StageConfig& st = model.layer.stages[static_cast<size_t>(stage)];
  const int64_t matrices = st.activation == Activation::swiglu ? 3 : 2;
  return matrices * int64_t{st.ffn_hidden_size} * int64_t{model.hidden_size} * int64_t{sizeof(float)};
}

int64_t expert_replica_bytes(const ModelConfig& model, int stage) { return 4 * expert_weight_bytes(model, stage); }

int64_t expert_migration_bytes(const ModelConfig& model, int stage) { return 3 * expert_weight_bytes(model, stage); }

std::vector<int64_t> worker_replica_bytes(const Placement& placement, const ModelConfig& model, int workers) {
  std::vector<int64_t> bytes(static_cast<size_t>(std::max(workers, 0)), 0);
  for (const auto& [key, list] : placement.replicas) {
    const int64_t b = expert_replica_bytes(model, key.stage);
    for (int w : list)
      if (w >= 0 && w < workers) bytes[static_cast<size_t>(w)] += b;
  }
  return bytes;
}

void check_shares(const ExpertKey& key, const std::vector<double>& shares, size_t replicas) {
  const std::string where = "placement entry " + key.to_string() + ": shares";
  if (shares.size() != replicas)
    throw_config_error(where + " lists " + std::to_string(shares.size()) + " numbers for " + std::to_string(replicas) +
                       " workers");
  double sum = 0;
  for (double s : shares) {
    if (!(s >= 0.0) || !std::isfinite(s)) throw_config_error(where + ": " + std::to_string(s) + " is not a number >= 0");
    sum += s;
  }
  if (std::fabs(sum - 1.0) > 1e-6) throw_config_error(where + " sum to " + std::to_string(sum) + ", not 1");
}

namespace {
std::string mib(int64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f MiB", static_cast<double>(bytes) / (1024.0 * 1024.0));
  return buf;
}
}  // namespace

void check_worker_memory(const Placement& placement, const ModelConfig& model, int workers,
                         int64_t worker_memory_bytes, const std::string& source) {
  const std::vector<int64_t> need = worker_replica_bytes(placement, model, workers);
  for (int w = 0; w < workers; ++w) {
    const int64_t n = need[static_cast<size_t>(w)];
    if (n <= worker_memory_bytes) continue;
    throw_config_error(source + ": worker " + std::to_string(w) + " needs " + std::to_string(n) + " bytes (" + mib(n) +
                       ") for " + std::to_string(placement.experts_on(w).size()) +
                       " expert replicas (4 x weight bytes each: weights, gradients, AdamW moments), over its budget "
                       "of " + std::to_string(worker_memory_bytes) + " bytes (" + mib(worker_memory_bytes) +
                       ", cluster.worker_memory_mb)");
  }
}

Placement cluster_placement(const ModelConfig& model, const ClusterConfig& cluster) {
  if (!cluster.placement.empty())
    return load_placement(cluster.placement, model, cluster.workers, cluster.worker_memory_bytes());
  Placement p = default_placement(model, cluster.workers, cluster.replicas);
  check_worker_memory(p, model, cluster.workers, cluster.worker_memory_bytes(),
                      "default placement (round-robin, " + std::to_string(cluster.replicas) + " replica" +
                          (cluster.replicas == 1 ? "" : "s") + " per expert)");
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
    if (auto it = shares.find(key); it != shares.end()) check_shares(key, it->second, list.size());
  }
  for (const auto& [key, s] : shares)
    if (!replicas.count(key)) throw_config_error("placement: shares for " + key.to_string() + ", which is not placed");
  for (int l = 0; l < model.layers; ++l)
    for (size_t s = 0; s < model.layer.stages.size(); ++s)
      for (int e = 0; e < model.layer.stages[s].experts; ++e)
        if (!replicas.count({l, static_cast<int>(s), e}))
          throw_config_error("placement: expert " + ExpertKey{l, static_cast<int>(s), e}.to_string() + " is not placed");
}

std::vector<double> Placement::shares_of(const ExpertKey& key) const {
  if (auto it = shares.find(key); it != shares.end()) return it->second;
  const size_t n = workers_for(key).size();
  return std::vector<double>(n, 1.0 / static_cast<double>(n));
}

bool Placement::holds(int worker, const ExpertKey& key) const {
  auto it = replicas.find(key);
  return it != replicas.end() && std::find(it->second.begin(), it->second.end(), worker) != it->second.end();
}

const std::vector<int>& Placement::workers_for(const ExpertKey& key) const {
  auto it = replicas.find(key);
  if (it == replicas.end()) throw_runtime_error("placement epoch " + std::to_string(epoch) + " has no entry for " + key.to_string());
  return it->second;
}

}  // namespace sy
