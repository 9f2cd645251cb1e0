// The cluster's wire, written once for the client, the worker and the coordinator:
// conversions between cluster.proto and the runtime's types, the error model of a worker
// request, and the message discipline on the data plane.
//
// Data plane: every process has one transport; a client and a worker address each other by
// their cluster ids (workers 0..N-1, clients from kFirstClientId, never reused). A message is
// a protobuf header (WorkerRequest / WorkerReply) on one tag followed, when payload_bytes > 0,
// by the raw payload on the next tag. Messages between a pair match in posting order.
#pragma once

#include <cstdint>
#include <iterator>
#include <string>
#include <vector>

#include "cluster.pb.h"
#include "switchyard/core/expert.h"
#include "switchyard/core/status.h"
#include "switchyard/placement/placement.h"
#include "switchyard/transport/transport.h"

namespace sy::wire {

namespace pb = switchyard::cluster;
using PlacementEntries = google::protobuf::RepeatedPtrField<pb::ExpertPlacement>;
using transport::RequestId;
using transport::Tag;
using transport::Transport;

inline constexpr Tag kRequestTag = 1;
inline constexpr Tag kRequestPayloadTag = 2;
inline constexpr Tag kReplyTag = 3;
inline constexpr Tag kReplyPayloadTag = 4;
inline constexpr Tag kReplicaReduceTagBase = 1000;  // between workers: + the expert's index
inline constexpr size_t kMaxHeaderBytes = size_t{1} << 20;
inline constexpr int kFirstClientId = 1 << 19;      // client data-plane ids: kFirstClientId + n

// Upper bounds (seconds) of the request latency histograms clients report (LatencyHistogram:
// one count per bound, then one above the last) and the coordinator exports at /metrics.
inline constexpr double kLatencyBounds[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                            0.25,  0.5,    1,     2.5,  5,     10,   30};
inline constexpr int kLatencyBuckets = static_cast<int>(std::size(kLatencyBounds)) + 1;
// Adds one observation of `seconds` to `h` (buckets sized on first use).
void observe_latency(pb::LatencyHistogram& h, double seconds);

// ---- conversions -------------------------------------------------------------------------
Placement placement_from_pb(const PlacementEntries& entries, uint64_t epoch);
void placement_to_pb(const Placement& placement, PlacementEntries* out);
ExpertKey key_from_pb(const pb::Segment& segment);
void key_to_pb(const ExpertKey& key, int64_t rows, pb::Segment* out);

// ---- errors of a worker request ------------------------------------------------------------
// The worker's report of a failure caught at its request boundary: sy::Error(input) is a bad
// request, sy::Error(transport) a dead peer, anything else internal.
pb::ErrorInfo error_info(const std::exception& e, int worker);
pb::ErrorInfo error_info(const Status& status, int worker);
// The client's view: PEER_DEAD → peer_failed, BAD_REQUEST → invalid_argument, else internal.
Status status_from(const pb::ErrorInfo& error);
// At the API edge (ClusterClient's public calls): invalid_argument (a worker refused the data
// the user gave) → sy::Error(input); peer_failed, timeout, unreachable → sy::Error(transport);
// anything else → sy::Error(runtime).
[[noreturn]] void throw_error(const Status& status);
// A control call (to the coordinator or a worker's control server) that failed, at the API
// edge: invalid_argument means the server refused the request itself — a bad model config, a
// placement that does not fit the model or the cluster (the coordinator's plan handler), an
// unknown worker id — and is a config error (exit 2) carrying the server's message, which names
// the key or file; anything else (timeout, dead or unreachable server, malformed reply) is a
// transport error (exit 4). Messages: "<what>: <status>".
[[noreturn]] void throw_control_error(const std::string& what, const Status& status);

// ---- message discipline ----------------------------------------------------------------------
// Posts, progressing and retrying on backpressure; any other failure is returned.
Result<RequestId> post_send(Transport& t, int peer, Tag tag, const void* data, size_t bytes);
Result<RequestId> post_recv(Transport& t, int peer, Tag tag, void* data, size_t bytes);

// An outgoing message: keeps the serialized header alive until its sends complete.
struct OutgoingMessage {
  std::string header;
  std::vector<RequestId> requests;
  Status post(Transport& t, int peer, Tag header_tag, Tag payload_tag, const google::protobuf::Message& msg,
              const void* payload, size_t payload_bytes);
};

}  // namespace sy::wire
