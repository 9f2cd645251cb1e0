// make_transport: any compiled transport by name, so that code above the transport (the
// runtime, its tests) picks the backend from configuration: "ucx" between processes,
// "inprocess" for a cluster of threads in one process, "nccl" between GPUs (fixed world only).
#pragma once

#include <memory>
#include <string_view>

#include "switchyard/transport/inprocess.h"
#include "switchyard/transport/nccl.h"
#include "switchyard/transport/transport.h"
#include "switchyard/transport/ucx.h"

namespace sy::transport {

// Backend-specific settings; each backend reads its own.
struct BackendOptions {
  UcxOptions ucx;
  NcclOptions nccl;
  // inprocess: the fabric to join; null means default_inprocess_fabric(), so that every
  // transport of the process made this way can reach the others by address.
  std::shared_ptr<InProcessFabric> fabric;
};

// Builds the transport `kind` ("ucx" | "inprocess" | "nccl"). Throws sy::Error(transport) for
// a kind that is not compiled into this build (the message names it and lists
// compiled_transports()) and, as the backends' own constructors do, when the backend cannot
// start (UCX init, no GPU).
std::unique_ptr<Transport> make_transport(std::string_view kind, const TransportOptions& options,
                                          const BackendOptions& backend = {});

}  // namespace sy::transport
