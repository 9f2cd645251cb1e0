#include "switchyard/core/status.h"

namespace sy {

const char* status_code_name(StatusCode code) {
  switch (code) {
    case StatusCode::ok: return "ok";
    case StatusCode::no_resource: return "no_resource";
    case StatusCode::timeout: return "timeout";
    case StatusCode::peer_failed: return "peer_failed";
    case StatusCode::unreachable: return "unreachable";
    case StatusCode::invalid_argument: return "invalid_argument";
    case StatusCode::truncated: return "truncated";
    case StatusCode::protocol: return "protocol";
    case StatusCode::unsupported: return "unsupported";
    case StatusCode::internal: return "internal";
  }
  return "unknown";
}

std::string Status::to_string() const {
  if (is_ok()) return "ok";
  return std::string(status_code_name(code_)) + ": " + message_;
}

void Status::throw_if_error() const {
  if (!is_ok()) throw Error(ErrorKind::transport, to_string());
}

}  // namespace sy
