#include "switchyard/transport/factory.h"

#include <algorithm>

namespace sy::transport {

std::unique_ptr<Transport> make_transport(std::string_view kind, const TransportOptions& options,
                                          const BackendOptions& backend) {
  const std::vector<std::string> compiled = compiled_transports();
  if (std::find(compiled.begin(), compiled.end(), kind) == compiled.end()) {
    std::string list;
    for (const std::string& k : compiled) list += (list.empty() ? "" : ", ") + k;
    throw Error(ErrorKind::transport, "unknown transport '" + std::string(kind) + "': this build has " + list);
  }
  if (kind == "inprocess")
    return make_inprocess_transport(backend.fabric ? backend.fabric : default_inprocess_fabric(), options);
  if (kind == "ucx") return make_ucx_transport(options, backend.ucx);
  return make_nccl_transport(options, backend.nccl);
}

}  // namespace sy::transport
