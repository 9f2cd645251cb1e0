// What every config harness runs on a config load_config_string accepted: the checks the
// processes run next (the coordinator and the workers re-read the client's config_to_yaml).
#pragma once

#include <string>

#include "fuzz_support.h"
#include "switchyard/core/config.h"
#include "switchyard/placement/load_trace.h"
#include "switchyard/placement/placement.h"

namespace sy::fuzz {

inline std::string after_first_line(const std::string& s) { return s.substr(s.find('\n') + 1); }

inline void check_accepted_config(const Config& c) {
  // The client sends config_to_yaml(config) as model_yaml; the coordinator and every worker
  // parse it with load_config_string. It must read back to the same effective config.
  const std::string yaml = config_to_yaml(c);
  Config again;
  must_succeed("load_config_string(config_to_yaml(config))", [&] { again = load_config_string(yaml, "model from client"); });
  if (after_first_line(config_to_yaml(again)) != after_first_line(yaml))
    bug("config_to_yaml does not round-trip:\n" + yaml + "\nread back as\n" + config_to_yaml(again));
  if (c.has_cluster && !parse_host_port(c.cluster.coordinator)) bug("accepted cluster.coordinator does not parse");
  (void)c.cluster.worker_memory_bytes();
  if (!c.has_model) return;
  (void)needs_importance(c.model);
  // Sizes the placement and the coordinator derive from the model (int64, must not overflow).
  for (int s = 0; s < static_cast<int>(c.model.layer.stages.size()); ++s) {
    if (expert_weight_bytes(c.model, s) <= 0) bug("expert_weight_bytes <= 0 for an accepted model");
    (void)expert_replica_bytes(c.model, s);
    (void)expert_migration_bytes(c.model, s);
  }
  (void)load_matrix_rows(c.model);
  // The coordinator's plan handler: the default placement (round-robin), memory checked.
  if (c.cluster.placement.empty())
    refuses_only_with({ErrorKind::config}, "cluster_placement", [&] { (void)cluster_placement(c.model, c.cluster); });
}

}  // namespace sy::fuzz
