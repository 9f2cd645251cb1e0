// The control channel: Boost.Asio TCP carrying length-prefixed Protocol Buffers messages.
//
// Small request/response RPC for the control plane (registration, placement, rendezvous,
// commands); bulk data never goes here. Wire format and compatibility rules: proto/control.proto.
//
//   ControlServer server(ControlServer::Options{});  // port 0: any free port
//   server.on<PublishRequest, PublishReply>([&](const PublishRequest& req, const PeerInfo& peer)
//       -> Result<PublishReply> { ...; return PublishReply{}; }, {.max_request_bytes = 4096});
//   server.start();                                   // serves on its own I/O thread
//   auto client = ControlClient::connect("127.0.0.1", server.port(), ControlClient::Options{});
//   Result<PublishReply> reply = (*client)->call<PublishRequest, PublishReply>(req);
//
// Authentication: with `secret` set on both sides, every connection runs a mutual HMAC-SHA256
// challenge-response over fresh nonces from both sides before any request (proto/control.proto,
// src/auth.h); a peer that cannot prove the secret is refused, logged with its endpoint, and
// never reaches a handler. A server without a secret only binds to loopback addresses.
//
// Robustness: the server drops (and logs, once, with the cause) a peer that sends a frame
// larger than the limits (`handshake_frame_bytes` until the handshake is done: nothing larger
// is ever allocated for an unauthenticated peer), bytes that are not a Frame, a first frame
// that is not a Hello, a Hello with another protocol version (after telling it why), a wrong
// proof, stalls for longer than the timeouts (a frame started, header included, must complete
// within `frame_timeout`; an authenticated peer silent for `idle_timeout` is dropped), or
// disconnects in the middle of a frame. A request larger than its type's `max_request_bytes`
// is answered with an error. Every other peer keeps being served. Clients never wait without a
// deadline; their errors name the server's endpoint; a client idle for half the server's idle
// timeout reconnects (with a new handshake) before its next call.
#pragma once

#include <google/protobuf/message.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "switchyard/transport/status.h"

namespace sy::control {

using transport::Result;
using transport::Status;
using transport::StatusCode;

// Bumped on incompatible wire changes; peers with another version are refused at the handshake.
// 2: cluster.proto worker requests as a oneof; 3: the authenticated handshake (AuthProof/AuthResult).
inline constexpr uint32_t kProtocolVersion = 3;

struct ChannelLimits {
  size_t max_frame_bytes = size_t{16} << 20;          // any frame after the handshake
  size_t handshake_frame_bytes = 4096;                // any frame before the handshake is done
  std::chrono::milliseconds handshake_timeout{5000};  // connect -> authenticated
  std::chrono::milliseconds frame_timeout{5000};      // a started frame (header included) must be complete within this
  std::chrono::milliseconds idle_timeout{300000};     // server: drop authenticated peers silent this long; 0 = never
};

// How the server treats one request type (ControlServer::on).
struct Route {
  size_t max_request_bytes = 0;  // serialized request; 0 = limits.max_frame_bytes
  // Runs on the server's handler thread instead of the I/O thread, so that a slow request
  // (parsing, planning) never delays the others; the reply is sent when it returns.
  bool heavy = false;
};

// Who sent a request, as the server's handlers see it.
struct PeerInfo {
  uint64_t connection_id = 0;
  std::string endpoint;  // "127.0.0.1:53122"
  std::string name;      // from the peer's Hello
};

// A message in flight: protobuf full type name and serialized bytes.
struct Payload {
  std::string type;
  std::string body;
};

class ControlServer {
 public:
  struct Options {
    std::string bind_address = "127.0.0.1";
    uint16_t port = 0;  // 0: any free port, see port()
    std::string name = "switchyard";
    ChannelLimits limits;
    uint32_t protocol_version = kProtocolVersion;
    // The cluster's shared secret (core/secret.h); empty = no authentication, loopback only.
    std::string secret;
    int heavy_threads = 1;  // threads running Route::heavy handlers
  };

  explicit ControlServer(Options options);
  ~ControlServer();  // stops
  ControlServer(const ControlServer&) = delete;
  ControlServer& operator=(const ControlServer&) = delete;

  // Registers the handler for requests of type `Request`; call before start(). Handlers run on
  // the server's single I/O thread, one at a time, and should be quick (no waiting on other
  // peers: let clients poll instead); `route.heavy` ones run on the handler thread(s), beside
  // the I/O thread. An error Result, or an exception, goes back to the caller as an error
  // reply; the connection stays up.
  template <class Request, class Reply>
  void on(std::function<Result<Reply>(const Request&, const PeerInfo&)> handler, Route route = {}) {
    add_handler(Request::descriptor()->full_name(), route,
                [handler](const std::string& body, const PeerInfo& peer) -> Result<Payload> {
                  Request request;
                  if (!request.ParseFromString(body))
                    return Status(StatusCode::protocol, "malformed " + Request::descriptor()->full_name());
                  Result<Reply> reply = handler(request, peer);
                  if (!reply) return reply.status();
                  return Payload{Reply::descriptor()->full_name(), reply->SerializeAsString()};
                });
  }

  // Binds, listens and starts the I/O thread. Throws sy::Error(transport) when it cannot bind,
  // sy::Error(config) for a non-loopback address without a secret (naming how to set one).
  void start();
  // Closes the listener and every connection and joins the I/O thread. Idempotent.
  void stop();

  uint16_t port() const;
  std::string endpoint() const;  // "127.0.0.1:port"

  struct Counters {
    uint64_t accepted = 0;  // connections that passed the handshake
    uint64_t dropped = 0;   // connections dropped for a protocol violation or timeout
    uint64_t refused = 0;   // of those, refused at authentication (no, or a wrong, proof)
    uint64_t requests = 0;  // requests answered
  };
  Counters counters() const;

 private:
  using RawHandler = std::function<Result<Payload>(const std::string& body, const PeerInfo&)>;
  void add_handler(const std::string& type, Route route, RawHandler handler);
  struct Impl;
  friend class ServerSession;
  std::unique_ptr<Impl> impl_;
};

class ControlClient {
 public:
  struct Options {
    std::string name;  // appears in the server's logs
    ChannelLimits limits;
    std::chrono::milliseconds connect_timeout{5000};
    std::chrono::milliseconds call_timeout{10000};
    uint32_t protocol_version = kProtocolVersion;
    // The cluster's shared secret (core/secret.h). Set: the server must prove it too, or the
    // connection is refused. Empty: only servers without a secret accept this client.
    std::string secret;
  };

  // Connects and performs the handshake (version; with a secret, the mutual proof). Errors name
  // "host:port"; a refusal says why (no secret, a wrong one, the server's side of it).
  static Result<std::unique_ptr<ControlClient>> connect(const std::string& host, uint16_t port, Options options);
  ~ControlClient();
  ControlClient(const ControlClient&) = delete;
  ControlClient& operator=(const ControlClient&) = delete;

  // One request, one reply, within `call_timeout`. After a transport-level failure (timeout,
  // disconnect, malformed reply) the client is broken and every later call fails at once; an
  // error reply from the handler leaves it usable. A client idle for half the server's idle
  // timeout first reconnects (a failed reconnect is such a failure).
  template <class Request, class Reply>
  Result<Reply> call(const Request& request) {
    Result<Payload> raw = call_raw(Payload{Request::descriptor()->full_name(), request.SerializeAsString()});
    if (!raw) return raw.status();
    Reply reply;
    if (raw->type != Reply::descriptor()->full_name() || !reply.ParseFromString(raw->body))
      return Status(StatusCode::protocol, "control channel to " + server_endpoint() + ": expected a " +
                                              Reply::descriptor()->full_name() + " reply, got '" + raw->type + "'");
    return reply;
  }
  Result<Payload> call_raw(const Payload& request);
  // A fresh connection and handshake to the same server (one that restarted, say); on success
  // the client is usable again, whatever broke it.
  Status reconnect();

  const std::string& server_endpoint() const;
  const std::string& server_name() const;
  bool broken() const;
  uint64_t reconnects() const;  // idle reconnects so far

 private:
  struct Impl;
  explicit ControlClient(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// "host:port" -> (host, port); throws sy::Error(config) on a malformed value.
std::pair<std::string, uint16_t> parse_endpoint(const std::string& host_port);

}  // namespace sy::control
