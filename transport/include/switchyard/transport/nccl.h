// NCCL transport: GPU (CUDA device) memory between GPUs, one rank per GPU.
//
// Built when CUDA and NCCL are found (compiled_transports() lists "nccl"); in builds without
// them `make_nccl_transport` throws. Bootstrap as for every transport: rank 0's `local_address`
// carries a fresh ncclUniqueId; `connect` takes it from address 0 and creates the communicator
// (ncclCommInitRankConfig, non-blocking, bounded by `init_timeout`).
//
// Mapping: `exchange_counts` and `exchange_rows` are grouped ncclSend/ncclRecv inside
// ncclGroupStart/End on the transport's stream, waited with a deadline (ncclCommAbort on
// timeout, after which the transport is unusable). `post_send`/`post_recv` are single
// ncclSend/ncclRecv with a CUDA event as completion; NCCL has no tags, so sends and receives
// between two ranks match in posting order and `tag` is only reported in errors. Memory kind
// must be `cuda`; registration is bookkeeping only.
#pragma once

#include <memory>

#include "switchyard/transport/transport.h"

namespace sy::transport {

struct NcclOptions {
  int device = -1;  // CUDA device; -1: rank % device count
  Timeout init_timeout{60000};
};

// True when this build has the NCCL transport.
bool nccl_transport_compiled();
// Number of CUDA devices usable here; 0 without CUDA, driver or GPU.
int cuda_device_count();

// Minimal device-memory helpers for staging (tests, benchmarks, host fallbacks). Without CUDA
// they return `unsupported`. `device_copy` is cudaMemcpy with cudaMemcpyDefault (any direction).
Result<void*> device_allocate(size_t bytes, int device = 0);
void device_free(void* pointer);
Status device_copy(void* destination, const void* source, size_t bytes);

// Throws sy::Error(transport) when NCCL is not compiled in or no GPU can be used.
std::unique_ptr<Transport> make_nccl_transport(const TransportOptions& options, const NcclOptions& nccl = {});

}  // namespace sy::transport
