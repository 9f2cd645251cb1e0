// Control calls of the client library to the coordinator and the workers' control servers.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "switchyard/core/config.h"
#include "switchyard/core/error.h"
#include "switchyard/core/secret.h"
#include "switchyard/transport/control.h"
#include "switchyard/wire/wire.h"

namespace sy::client_detail {

namespace pb = wire::pb;
using Millis = std::chrono::milliseconds;

// A control call at start-up or from a public call: failures throw naming `what`.
template <class Request, class Reply>
inline Reply call_or_throw(control::ControlClient& c, const Request& request, const std::string& what) {
  auto reply = c.call<Request, Reply>(request);
  if (!reply) wire::throw_control_error(what, reply.status());
  return std::move(reply).value();
}

// Control calls wait up to cluster.request_timeout_ms (its schema default until the coordinator
// has told the client the configured value). The secret is $SWITCHYARD_SECRET (core/secret.h):
// clients, the C API, Python and the admin commands all connect through here.
inline std::unique_ptr<control::ControlClient> connect_control(const std::string& endpoint, const std::string& name,
                                                        Millis call_timeout = Millis(ClusterConfig{}.request_timeout_ms)) {
  auto [host, port] = control::parse_endpoint(endpoint);
  control::ControlClient::Options o;
  o.name = name;
  o.call_timeout = call_timeout;
  o.secret = cluster_secret_from_env();
  auto c = control::ControlClient::connect(host, port, o);
  if (!c) throw Error(ErrorKind::transport, "coordinator " + endpoint + ": " + c.status().to_string());
  return std::move(c).value();
}

inline pb::ClusterInfoReply fetch_info(control::ControlClient& c, const std::string& endpoint) {
  return call_or_throw<pb::ClusterInfoRequest, pb::ClusterInfoReply>(c, {}, "coordinator " + endpoint);
}


}  // namespace sy::client_detail
