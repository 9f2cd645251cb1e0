// Fuzz target: a data-plane request as a worker receives it: a pb::WorkerRequest header
// (its own message on kRequestTag), then its payload (kRequestPayloadTag). Input: a 2-byte
// little-endian header length, the header, the payload. What a worker runs on it before it
// touches its expert store: the parse, LOAD_MODEL's model_yaml, expert keys, payload decoding
// and placement (server_checks.h). The FORWARD/BACKWARD segment-against-payload check is a
// private member of the worker (runtime/worker/src/worker.cc segment_rows), not reachable here.
#include <string>
#include <string_view>

#include "server_checks.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  size_t n = static_cast<size_t>(data[0]) | static_cast<size_t>(data[1]) << 8;
  if (n > size - 2) n = size - 2;
  const std::string header(reinterpret_cast<const char*>(data + 2), n);
  const std::string_view payload(reinterpret_cast<const char*>(data + 2 + n), size - 2 - n);
  sy::fuzz::check_worker_request(header, payload);
  return 0;
}
