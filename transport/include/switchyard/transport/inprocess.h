// In-process transport: the ranks are threads of one process and share an `InProcessFabric`.
//
// For unit tests of everything above the transport (scheduler, dispatch, the layer engine)
// without processes or a network. Semantics match UCX's tag matching: per (sender, tag) FIFO,
// truncation errors, backpressure, and a rank whose transport is destroyed counts as a failed
// peer for everyone else. Copies happen at match time under the fabric's lock.
#pragma once

#include <memory>

#include "switchyard/transport/transport.h"

namespace sy::transport {

class InProcessFabric;

// A fabric for `world_size` ranks; hand it to every rank's transport.
std::shared_ptr<InProcessFabric> make_inprocess_fabric(int world_size);

// One rank's endpoint. `options.world_size` must equal the fabric's.
std::unique_ptr<Transport> make_inprocess_transport(std::shared_ptr<InProcessFabric> fabric,
                                                    const TransportOptions& options);

}  // namespace sy::transport
