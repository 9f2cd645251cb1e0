// Fuzz target: a control-channel frame body (switchyard.control.Frame), parsed as the
// ControlServer and ControlClient parse it (transport/src/control.cc, not edited here): the
// Frame, then a Hello / HelloReply, or the body dispatched by `type` into the request type a
// coordinator or worker handler registers (server_checks.h), or a reply's error code and text
// mapped back to a Status and an sy::Error. A protobuf parse failure is a refusal.
#include <string>

#include "control.pb.h"
#include "fuzz_support.h"
#include "server_checks.h"
#include "switchyard/transport/control.h"
#include "switchyard/transport/status_wire.h"
#include "switchyard/wire/wire.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  switchyard::control::Frame frame;
  if (!frame.ParseFromArray(data, static_cast<int>(size))) return 0;
  if (frame.type() == switchyard::control::Hello::descriptor()->full_name()) {
    switchyard::control::Hello hello;
    if (hello.ParseFromString(frame.body())) (void)(hello.protocol_version() == sy::control::kProtocolVersion);
    return 0;
  }
  if (frame.type() == switchyard::control::HelloReply::descriptor()->full_name()) {
    switchyard::control::HelloReply reply;
    (void)reply.ParseFromString(frame.body());
    return 0;
  }
  if (frame.is_reply() && !frame.error().empty()) {  // an error reply: the client's Status, then the edge
    const sy::StatusCode code = sy::transport::status_code_from_pb(frame.error_code());
    if (code == sy::StatusCode::ok) sy::fuzz::bug("an error reply mapped to StatusCode::ok");
    sy::fuzz::refuses_only_with({sy::ErrorKind::input, sy::ErrorKind::config, sy::ErrorKind::transport,
                                 sy::ErrorKind::runtime},
                                "wire::throw_error", [&] { sy::wire::throw_error(sy::Status(code, frame.error())); });
    return 0;
  }
  for (const sy::fuzz::ServerMessage& m : sy::fuzz::server_messages())
    if (m.type == frame.type()) m.check(frame.body());
  return 0;
}
