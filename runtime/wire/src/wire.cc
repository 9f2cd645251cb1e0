#include "switchyard/wire/wire.h"

namespace sy::wire {

Placement placement_from_pb(const PlacementEntries& entries, uint64_t epoch) {
  Placement p;
  p.epoch = epoch;
  for (const pb::ExpertPlacement& e : entries)
    p.replicas[{e.layer(), e.stage(), e.expert()}] = std::vector<int>(e.workers().begin(), e.workers().end());
  return p;
}

void placement_to_pb(const Placement& placement, PlacementEntries* out) {
  for (const auto& [key, workers] : placement.replicas) {
    pb::ExpertPlacement* e = out->Add();
    e->set_layer(key.layer);
    e->set_stage(key.stage);
    e->set_expert(key.expert);
    for (int w : workers) e->add_workers(w);
  }
}

}  // namespace sy::wire
