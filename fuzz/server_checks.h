// The messages the servers accept, by protobuf full name, each with what a server runs on it
// before any state or network is involved: the parse, then the pure validation and
// conversion functions its handler calls (wire::placement_from_pb, key_from_pb, status_from,
// load_config_string of model_yaml, parse_placement, the coordinator's LoadWindow::add, the
// worker's expert payload decoding). Shared by fuzz_control_frame, fuzz_server_messages and
// fuzz_worker_request.
#pragma once

#include <span>
#include <string>
#include <string_view>

namespace sy::fuzz {

struct ServerMessage {
  std::string_view type;           // protobuf full name, as Frame.type carries it
  void (*check)(const std::string& body);  // parses (a parse failure is a refusal) and checks
};

// Coordinator requests, rendezvous requests, worker control requests, and the replies the
// clients parse (their placements and errors reach the same conversions).
std::span<const ServerMessage> server_messages();

// A data-plane request as a worker receives it: a pb::WorkerRequest header, then its payload.
void check_worker_request(const std::string& header, std::string_view payload);

}  // namespace sy::fuzz
