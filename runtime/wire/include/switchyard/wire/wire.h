// Conversions between the cluster's protobuf messages (cluster.proto) and the runtime's types,
// written once for the client, the worker and the coordinator.
#pragma once

#include <cstdint>

#include "cluster.pb.h"
#include "switchyard/placement/placement.h"

namespace sy::wire {

namespace pb = switchyard::cluster;
using PlacementEntries = google::protobuf::RepeatedPtrField<pb::ExpertPlacement>;

Placement placement_from_pb(const PlacementEntries& entries, uint64_t epoch);
void placement_to_pb(const Placement& placement, PlacementEntries* out);

}  // namespace sy::wire
