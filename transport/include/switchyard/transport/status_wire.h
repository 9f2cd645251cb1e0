// sy::StatusCode ⇄ its protobuf enum (control.proto `StatusCode`), by name: a C++ ordinal
// never goes on the wire. Used by the control channel and the cluster's worker replies.
#pragma once

#include "control.pb.h"
#include "switchyard/transport/status.h"

namespace sy::transport {

switchyard::control::StatusCode status_code_to_pb(StatusCode code);
// OK or a number this build does not know reads as internal (it only arrives with an error).
StatusCode status_code_from_pb(switchyard::control::StatusCode code);

}  // namespace sy::transport
