#include "switchyard/wire/wire.h"

#include "switchyard/core/error.h"
#include "switchyard/transport/status_wire.h"

namespace sy::wire {

Placement placement_from_pb(const PlacementEntries& entries, uint64_t epoch) {
  Placement p;
  p.epoch = epoch;
  for (const pb::ExpertPlacement& e : entries) {
    const ExpertKey key{e.layer(), e.stage(), e.expert()};
    p.replicas[key] = std::vector<int>(e.workers().begin(), e.workers().end());
    if (e.shares_size() > 0) p.shares[key] = std::vector<double>(e.shares().begin(), e.shares().end());
  }
  return p;
}

void placement_to_pb(const Placement& placement, PlacementEntries* out) {
  for (const auto& [key, workers] : placement.replicas) {
    pb::ExpertPlacement* e = out->Add();
    e->set_layer(key.layer);
    e->set_stage(key.stage);
    e->set_expert(key.expert);
    for (int w : workers) e->add_workers(w);
    if (auto it = placement.shares.find(key); it != placement.shares.end())
      for (double x : it->second) e->add_shares(x);
  }
}

ExpertKey key_from_pb(const pb::Segment& segment) { return {segment.layer(), segment.stage(), segment.expert()}; }

void key_to_pb(const ExpertKey& key, int64_t rows, pb::Segment* out) {
  out->set_layer(key.layer);
  out->set_stage(key.stage);
  out->set_expert(key.expert);
  out->set_rows(rows);
}

namespace {

pb::ErrorInfo make_error(pb::ErrorInfo::Kind kind, switchyard::control::StatusCode code, int worker, const std::string& message) {
  pb::ErrorInfo e;
  e.set_kind(kind);
  e.set_code(code);
  e.set_worker(worker);
  e.set_message("worker " + std::to_string(worker) + ": " + message);
  return e;
}

}  // namespace

pb::ErrorInfo error_info(const std::exception& e, int worker) {
  if (const auto* err = dynamic_cast<const Error*>(&e)) {
    switch (err->kind()) {
      case ErrorKind::input:
      case ErrorKind::config:
        return make_error(pb::ErrorInfo::BAD_REQUEST, switchyard::control::INVALID_ARGUMENT, worker, e.what());
      case ErrorKind::transport:
        return make_error(pb::ErrorInfo::PEER_DEAD, switchyard::control::PEER_FAILED, worker, e.what());
      case ErrorKind::runtime: break;
    }
  }
  return make_error(pb::ErrorInfo::INTERNAL, switchyard::control::INTERNAL, worker, e.what());
}

pb::ErrorInfo error_info(const Status& status, int worker) {
  const StatusCode c = status.code();
  const bool peer = c == StatusCode::peer_failed || c == StatusCode::timeout || c == StatusCode::unreachable;
  const bool bad = c == StatusCode::invalid_argument || c == StatusCode::protocol || c == StatusCode::truncated;
  return make_error(peer ? pb::ErrorInfo::PEER_DEAD : bad ? pb::ErrorInfo::BAD_REQUEST : pb::ErrorInfo::INTERNAL,
                    transport::status_code_to_pb(c), worker, status.message());
}

Status status_from(const pb::ErrorInfo& error) {
  switch (error.kind()) {
    case pb::ErrorInfo::PEER_DEAD: return Status(StatusCode::peer_failed, error.message());
    case pb::ErrorInfo::BAD_REQUEST: return Status(StatusCode::invalid_argument, error.message());
    default: return Status(StatusCode::internal, error.message());
  }
}

void throw_error(const Status& status) {
  switch (status.code()) {
    case StatusCode::invalid_argument: throw Error(ErrorKind::input, status.message());
    case StatusCode::peer_failed:
    case StatusCode::timeout:
    case StatusCode::unreachable: throw Error(ErrorKind::transport, status.message());
    default: throw Error(ErrorKind::runtime, status.message());
  }
}

void throw_control_error(const std::string& what, const Status& status) {
  const bool refused = status.code() == StatusCode::invalid_argument;
  throw Error(refused ? ErrorKind::config : ErrorKind::transport, what + ": " + status.to_string());
}

Result<RequestId> post_send(Transport& t, int peer, Tag tag, const void* data, size_t bytes) {
  for (;;) {
    auto r = t.post_send(peer, tag, data, bytes);
    if (r.is_ok() || r.status().code() != StatusCode::no_resource) return r;
    t.progress();
  }
}

Result<RequestId> post_recv(Transport& t, int peer, Tag tag, void* data, size_t bytes) {
  for (;;) {
    auto r = t.post_recv(peer, tag, data, bytes);
    if (r.is_ok() || r.status().code() != StatusCode::no_resource) return r;
    t.progress();
  }
}

Status OutgoingMessage::post(Transport& t, int peer, Tag header_tag, Tag payload_tag,
                             const google::protobuf::Message& msg, const void* payload, size_t payload_bytes) {
  header = msg.SerializeAsString();
  auto h = post_send(t, peer, header_tag, header.data(), header.size());
  if (!h) return h.status();
  requests.push_back(*h);
  if (payload_bytes == 0) return Status::ok();
  auto p = post_send(t, peer, payload_tag, payload, payload_bytes);
  if (!p) return p.status();
  requests.push_back(*p);
  return Status::ok();
}

void observe_latency(pb::LatencyHistogram& h, double seconds) {
  if (h.buckets_size() != kLatencyBuckets) h.mutable_buckets()->Resize(kLatencyBuckets, 0);
  int b = 0;
  while (b < kLatencyBuckets - 1 && seconds > kLatencyBounds[b]) ++b;
  h.set_buckets(b, h.buckets(b) + 1);
  h.set_sum_seconds(h.sum_seconds() + seconds);
}

}  // namespace sy::wire
