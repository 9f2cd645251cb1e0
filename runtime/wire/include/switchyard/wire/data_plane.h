// Private to runtime/: the message discipline between a client and a worker over one
// 2-rank data-plane transport (client = rank 0, worker = rank 1). A message is a protobuf
// header (WorkerRequest / WorkerReply) on one tag, followed — when payload_bytes > 0 — by the
// raw payload on the next tag. Messages between a pair match in posting order.
#pragma once

#include <google/protobuf/message.h>

#include <chrono>
#include <string>
#include <vector>

#include "cluster.pb.h"
#include "switchyard/core/error.h"
#include "switchyard/transport/transport.h"

namespace sy::cluster {

using transport::RequestId;
using transport::Tag;
using transport::Timeout;
using transport::Transport;

inline constexpr Tag kRequestTag = 1;
inline constexpr Tag kRequestPayloadTag = 2;
inline constexpr Tag kReplyTag = 3;
inline constexpr Tag kReplyPayloadTag = 4;
inline constexpr Tag kReplicaReduceTagBase = 1000;  // worker world: + expert index
inline constexpr size_t kMaxHeaderBytes = size_t{1} << 20;

// Throws sy::Error(transport) with `what` prefixed when the status is not ok.
inline void check(const transport::Status& status, const std::string& what) {
  if (!status.is_ok()) throw Error(ErrorKind::transport, what + ": " + status.to_string());
}
template <class T>
T check(transport::Result<T> result, const std::string& what) {
  if (!result.is_ok()) throw Error(ErrorKind::transport, what + ": " + result.status().to_string());
  return std::move(result).value();
}

// Posts retrying on backpressure (progressing in between).
inline RequestId post_send(Transport& t, int peer, Tag tag, const void* data, size_t bytes, const std::string& what) {
  for (;;) {
    auto r = t.post_send(peer, tag, data, bytes);
    if (r.is_ok()) return *r;
    if (r.status().code() != transport::StatusCode::no_resource) check(r.status(), what);
    t.progress();
  }
}
inline RequestId post_recv(Transport& t, int peer, Tag tag, void* data, size_t bytes, const std::string& what) {
  for (;;) {
    auto r = t.post_recv(peer, tag, data, bytes);
    if (r.is_ok()) return *r;
    if (r.status().code() != transport::StatusCode::no_resource) check(r.status(), what);
    t.progress();
  }
}

// An outgoing message: keeps the serialized header alive until its sends complete.
struct OutgoingMessage {
  std::string header;
  std::vector<RequestId> requests;
  void post(Transport& t, int peer, Tag header_tag, Tag payload_tag, const google::protobuf::Message& msg,
            const void* payload, size_t payload_bytes, const std::string& what) {
    header = msg.SerializeAsString();
    requests.push_back(post_send(t, peer, header_tag, header.data(), header.size(), what));
    if (payload_bytes > 0) requests.push_back(post_send(t, peer, payload_tag, payload, payload_bytes, what));
  }
};

}  // namespace sy::cluster
