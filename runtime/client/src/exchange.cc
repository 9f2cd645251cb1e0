// Round trips with the workers: send every call, wait for every reply, notice lost workers.
#include <algorithm>

#include "client_impl.h"
#include "switchyard/core/log.h"

namespace sy {

Status ClusterClient::Impl::usable(int w) const {
  auto it = links.find(w);
  if (it == links.end())
    return Status(StatusCode::unreachable, "worker " + std::to_string(w) + " is not attached (it was not alive)");
  if (!it->second.broken.empty())
    return Status(StatusCode::peer_failed, it->second.label + " was lost: " + it->second.broken);
  return Status::ok();
}

std::string ClusterClient::Impl::label(int w) const {
  auto it = links.find(w);
  return it == links.end() ? "worker " + std::to_string(w) : it->second.label;
}

std::set<int> ClusterClient::Impl::live_workers() const {
  std::set<int> live;
  for (const auto& [id, l] : links)
    if (l.broken.empty() && routing_epoch >= l.routable_from_epoch) live.insert(id);
  return live;
}

void ClusterClient::Impl::call(std::vector<Call>& calls, const std::string& what, double* waited_seconds) {
  if (Status s = exchange(calls, what, waited_seconds); !s) wire::throw_error(s);
  for (const Call& c : calls) {
    if (c.lost) wire::throw_error(Status(StatusCode::peer_failed, what + ": " + usable(c.worker).message()));
    if (!c.error) wire::throw_error(Status(c.error.code(), what + " failed on " + c.error.message()));
  }
}

Status ClusterClient::Impl::exchange(std::vector<Call>& calls, const std::string& what, double* waited_seconds) {
  const auto start = Clock::now();
  // Each worker computes its calls one after the other, the workers in parallel: the busiest
  // bounds the wait.
  std::map<int, double> compute_of;
  Status s = post_all(calls, what);
  if (s) s = await_replies(calls, what, start, compute_of);
  for (Call& c : calls)  // sends are complete once the replies are in; release them
    if (s && !c.lost) s = transport->wait_all(c.out.requests, request_timeout);
  if (!s) {
    SY_LOG(error, "runtime", what << ": " << s.message());
    abandon(calls, s.message());
    return s;
  }
  double slowest_compute = 0;
  for (const auto& [w, seconds] : compute_of) slowest_compute = std::max(slowest_compute, seconds);
  const double waited = std::chrono::duration<double>(Clock::now() - start).count();
  if (waited_seconds) *waited_seconds += waited - std::min(waited, slowest_compute);
  worker_compute_seconds += slowest_compute;
  return Status::ok();
}

Status ClusterClient::Impl::post_all(std::vector<Call>& calls, const std::string& what) {
  for (Call& c : calls) {
    c.stage = Call::Stage::header;
    if (Status s = usable(c.worker); !s) {
      c.lost = true;
      continue;
    }
    c.request.set_payload_bytes(c.payload_bytes);
    Status s = c.out.post(*transport, peer(c.worker), wire::kRequestTag, wire::kRequestPayloadTag, c.request, c.payload,
                          c.payload_bytes);
    if (!c.header) c.header.reset(new char[wire::kMaxHeaderBytes]);
    auto r = s ? wire::post_recv(*transport, peer(c.worker), wire::kReplyTag, c.header.get(), wire::kMaxHeaderBytes)
               : Result<transport::RequestId>(s);
    if (r) {
      c.header_request = *r;
      continue;
    }
    if (r.status().code() != StatusCode::peer_failed && r.status().code() != StatusCode::unreachable)
      return Status(r.status().code(), what + " to " + label(c.worker) + ": " + r.status().to_string());
    c.stage = Call::Stage::done;  // no reply receive was posted
    lose(c, what + ": " + r.status().to_string());
  }
  return Status::ok();
}

Status ClusterClient::Impl::await_replies(std::vector<Call>& calls, const std::string& what, Clock::time_point start,
                                          std::map<int, double>& compute_of) {
  const auto deadline = start + request_timeout;
  auto next_liveness_check = start + liveness_check;
  auto last_moved = start;
  for (;;) {
    transport->progress();
    std::set<int> waiting;
    // Workers with a call still waiting for its reply header: their later calls wait, so that
    // reply payloads are received in the order the worker sends them.
    std::set<int> header_pending;
    bool moved = false;
    for (Call& c : calls) {
      if (c.lost || c.stage == Call::Stage::done) continue;
      if (header_pending.count(c.worker)) continue;
      const Call::Stage before = c.stage;
      Status s = advance(c, what, compute_of[c.worker]);
      if (s.code() == StatusCode::peer_failed) lose(c, s.message());
      else if (!s) return s;
      moved |= c.lost || c.stage != before;
      if (!c.lost && c.stage != Call::Stage::done) waiting.insert(c.worker);
      if (!c.lost && c.stage == Call::Stage::header) header_pending.insert(c.worker);
    }
    if (waiting.empty()) return Status::ok();
    const auto now = Clock::now();
    // A short spin (a reply often follows at once), then sleep on the transport's events: a
    // waiting client leaves the cores to the workers computing its request.
    if (moved) last_moved = now;
    else if (now - last_moved > reply_spin) transport->wait_for_events(std::chrono::milliseconds(1));
    if (now > next_liveness_check) {  // UCX may never report a dead peer: ask the coordinator
      next_liveness_check = now + liveness_check;
      const std::map<int, std::string> dead = dead_among(waiting);
      for (Call& c : calls)
        if (!c.lost && dead.count(c.worker)) lose(c, what + ": " + label(c.worker) + " is dead (" + dead.at(c.worker) + ")");
    }
    if (now > deadline)
      for (const Call& c : calls)
        if (!c.lost && c.stage != Call::Stage::done)
          return Status(StatusCode::timeout, what + ": " + label(c.worker) + " did not answer within " +
                                                 std::to_string(request_timeout.count()) + " ms");
  }
}

// Moves one call on when its header or payload has arrived (adding the worker's compute time to
// `computed`). peer_failed: the worker is lost.
Status ClusterClient::Impl::advance(Call& c, const std::string& what, double& computed) {
  auto t = transport->test(c.stage == Call::Stage::header ? c.header_request : c.payload_request);
  if (!t) return Status(StatusCode::peer_failed, what + ": " + label(c.worker) + " failed: " + t.status().to_string());
  if (!t->done) return Status::ok();
  if (c.stage == Call::Stage::payload) {
    c.stage = Call::Stage::done;
    return Status::ok();
  }
  pb::WorkerReply rep;
  if (!rep.ParseFromArray(c.header.get(), static_cast<int>(t->bytes)))
    return Status(StatusCode::protocol, what + ": malformed reply from " + label(c.worker));
  if (rep.request_id() != c.request.request_id())
    return Status(StatusCode::protocol, what + ": " + label(c.worker) + " answered request " +
                                            std::to_string(rep.request_id()) + " instead of " +
                                            std::to_string(c.request.request_id()));
  if (rep.has_error()) {
    c.error = wire::status_from(rep.error());
    c.stage = Call::Stage::done;
    return Status::ok();
  }
  computed += rep.compute_seconds();
  float* into = c.reply_into;
  if (into && rep.payload_bytes() != c.reply_floats * sizeof(float))
    return Status(StatusCode::protocol, what + ": " + label(c.worker) + " answered " + std::to_string(rep.payload_bytes()) +
                                            " bytes for " + std::to_string(c.reply_floats) + " values");
  if (rep.payload_bytes() == 0) {
    c.stage = Call::Stage::done;
    return Status::ok();
  }
  if (!into) {
    c.reply.resize(rep.payload_bytes() / sizeof(float));
    into = c.reply.data();
  }
  auto r = wire::post_recv(*transport, peer(c.worker), wire::kReplyPayloadTag, into, rep.payload_bytes());
  if (!r) return Status(StatusCode::peer_failed, what + ": " + label(c.worker) + ": " + r.status().to_string());
  c.payload_request = *r;
  c.stage = Call::Stage::payload;
  return Status::ok();
}

std::map<int, std::string> ClusterClient::Impl::dead_among(const std::set<int>& ids) {
  std::map<int, std::string> dead;
  auto info = coordinator_call<pb::ClusterInfoRequest, pb::ClusterInfoReply>(pb::ClusterInfoRequest{});
  if (!info) {
    SY_LOG(warn, "runtime", name << ": the coordinator " << coordinator_endpoint
                                 << " does not answer a liveness check: " << info.status().to_string());
    return dead;
  }
  for (const pb::WorkerInfo& w : info->workers()) {
    if (!ids.count(w.worker_id())) continue;
    if (w.alive() && links.count(w.worker_id()) && w.data_plane_id() != peer(w.worker_id()))
      dead[w.worker_id()] = "replaced by pid " + std::to_string(w.pid()) + ", says the coordinator";
    else if (!w.alive())
      dead[w.worker_id()] = w.fenced() ? "fenced, says the coordinator"
                                       : "no heartbeat for " + std::to_string(w.ms_since_heartbeat()) +
                                             " ms, says the coordinator";
  }
  return dead;
}

bool ClusterClient::Impl::reconnect_coordinator() {
  if (!coordinator->reconnect()) return false;
  SY_LOG(info, "runtime", name << ": reconnected to the coordinator " << coordinator_endpoint);
  return true;
}

void ClusterClient::Impl::coordinator_away(const Status& why) {
  const auto now = Clock::now();
  if (!coordinator_away_since) {
    coordinator_away_since = now;
    SY_LOG(warn, "runtime", name << ": the coordinator " << coordinator_endpoint << " does not answer ("
                                 << why.message() << "); going on for up to " << coordinator_timeout.count()
                                 << " ms (cluster.coordinator_timeout_ms)");
  }
  const auto away = std::chrono::duration_cast<Millis>(now - *coordinator_away_since);
  if (away > coordinator_timeout)
    throw Error(ErrorKind::transport, "the coordinator " + coordinator_endpoint + " has been unreachable for " +
                                          std::to_string(away.count()) + " ms (cluster.coordinator_timeout_ms " +
                                          std::to_string(coordinator_timeout.count()) + "): " + why.message());
}

// Requests still posted into a call's buffers end (failing) once its endpoint is closed.
void ClusterClient::Impl::release(Call& c) {
  std::vector<transport::RequestId> pending = c.out.requests;
  if (c.stage == Call::Stage::header) pending.push_back(c.header_request);
  if (c.stage == Call::Stage::payload) pending.push_back(c.payload_request);
  for (transport::RequestId r : pending) (void)transport->wait(r, request_timeout);  // fails at once: released
  c.out.requests.clear();
}

void ClusterClient::Impl::lose(Call& c, const std::string& reason) {
  c.lost = true;
  lose_worker(c.worker, reason);
  release(c);
}

void ClusterClient::Impl::lose_worker(int w, const std::string& reason) {
  auto it = links.find(w);
  if (it == links.end() || !it->second.broken.empty()) return;
  WorkerLink& l = it->second;
  l.broken = reason;
  ++workers_lost;
  (void)transport->disconnect_peer(l.peer);
  SY_LOG(warn, "runtime", name << ": lost " << l.label << ": " << reason);
  lost_unreported[w] = reason;
  report_lost_workers();
}

// The coordinator fences what it is told; those it could not be told about wait for the next try.
void ClusterClient::Impl::report_lost_workers() {
  for (auto it = lost_unreported.begin(); it != lost_unreported.end();) {
    pb::WorkerLostRequest req;
    req.set_worker_id(it->first);
    req.set_data_plane_id(peer(it->first));
    req.set_client_id(client_id);
    req.set_reason(it->second);
    req.set_training(training);
    if (auto r = coordinator_call<pb::WorkerLostRequest, pb::WorkerLostReply>(req); !r) {
      SY_LOG(warn, "runtime", name << ": could not tell the coordinator that worker " << it->first
                                   << " was lost (again at the next load report): " << r.status().to_string());
      return;
    }
    it = lost_unreported.erase(it);
  }
}

// After a failed round trip: disconnect the workers of these calls, so requests still in
// flight end (failing) while the calls' buffers are alive and no late reply is ever taken
// for the answer to another request; the links stay unusable.
void ClusterClient::Impl::abandon(std::vector<Call>& calls, const std::string& reason) {
  for (Call& c : calls) {
    auto it = links.find(c.worker);
    if (it == links.end() || !it->second.broken.empty()) continue;
    it->second.broken = reason;
    (void)transport->disconnect_peer(it->second.peer);
  }
  for (Call& c : calls)
    if (!c.lost) release(c);
}

}  // namespace sy
