// Fuzz target: every protobuf message a Switchyard server accepts (coordinator and worker
// control requests, rendezvous, the data-plane WorkerRequest) and the replies clients parse,
// without the Frame envelope: byte 0 picks the message type, the rest is its serialized body.
// See server_checks.h for what runs on each. A protobuf parse failure is a refusal.
#include <string>

#include "server_checks.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const auto messages = sy::fuzz::server_messages();
  const sy::fuzz::ServerMessage& m = messages[data[0] % messages.size()];
  m.check(std::string(reinterpret_cast<const char*>(data + 1), size - 1));
  return 0;
}
