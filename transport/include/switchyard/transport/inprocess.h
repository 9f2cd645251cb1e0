// In-process transport: the processes are threads of one process, each transport an endpoint
// of a shared `InProcessFabric` (a registry of endpoints by address).
//
// For tests of everything above the transport (scheduler, dispatch, the layer engine, a
// coordinator + workers + client in one process) without processes or a network. Semantics
// match UCX's tag matching: per (sender, tag) FIFO, a receive from P matches only P's sends,
// truncation errors, backpressure, and a transport that is destroyed counts as a failed peer
// for everyone connected to it. Transports connect by address (`connect_peer`, or `connect`
// for a fixed world) to others on the same fabric; an address from another fabric or process
// is unreachable. `disconnect_peer` fails this side's unmatched sends to and receives from the
// peer, and drops (failing them on the peer's side) the peer's messages not yet received.
// Copies happen at match time under the fabric's lock.
#pragma once

#include <memory>

#include "switchyard/transport/transport.h"

namespace sy::transport {

class InProcessFabric;

// A fabric to hand to every transport that should reach the others. `world_size` > 0: every
// transport on it must have that world size (a check for fixed-world tests); 0: any.
std::shared_ptr<InProcessFabric> make_inprocess_fabric(int world_size = 0);

// The process-wide fabric (world size 0) that make_transport("inprocess", ...) uses by default.
std::shared_ptr<InProcessFabric> default_inprocess_fabric();

// Transports alive on `fabric` now (for leak checks in tests).
size_t inprocess_fabric_endpoints(InProcessFabric& fabric);

// One process's endpoint on `fabric`.
std::unique_ptr<Transport> make_inprocess_transport(std::shared_ptr<InProcessFabric> fabric,
                                                    const TransportOptions& options);

}  // namespace sy::transport
