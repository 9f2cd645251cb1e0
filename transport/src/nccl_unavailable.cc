// The NCCL transport in builds without CUDA/NCCL: present, never usable.
#include "switchyard/transport/nccl.h"

namespace sy::transport {

bool nccl_transport_compiled() { return false; }
int cuda_device_count() { return 0; }

Result<void*> device_allocate(size_t, int) {
  return Status(StatusCode::unsupported, "device_allocate: this build has no CUDA");
}
void device_free(void*) {}
Status device_copy(void*, const void*, size_t) {
  return Status(StatusCode::unsupported, "device_copy: this build has no CUDA");
}

std::unique_ptr<Transport> make_nccl_transport(const TransportOptions&, const NcclOptions&) {
  throw Error(ErrorKind::transport, "nccl transport: this build has no CUDA/NCCL (configure with CUDA and NCCL found)");
}

}  // namespace sy::transport
