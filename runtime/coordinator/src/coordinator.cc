#include "switchyard/coordinator/coordinator.h"

#include <chrono>
#include <map>
#include <mutex>

#include "switchyard/wire/wire.h"
#include "switchyard/core/error.h"
#include "switchyard/core/log.h"
#include "switchyard/placement/placement.h"
#include "switchyard/transport/control.h"
#include "switchyard/transport/rendezvous.h"

namespace sy {
namespace {
namespace pb = switchyard::cluster;
using Clock = std::chrono::steady_clock;
using transport::Result;
using transport::Status;
using transport::StatusCode;
}  // namespace

struct Coordinator::Impl {
  struct Member {
    pb::WorkerInfo info;
    Clock::time_point last_heartbeat;
    Clock::time_point previous_heartbeat;
    uint64_t previous_rows = 0;
    bool reported_dead = false;
  };

  ClusterConfig cluster;
  std::unique_ptr<control::ControlServer> server;
  std::unique_ptr<transport::RendezvousService> rendezvous;
  mutable std::mutex mu;
  std::map<int, Member> members;
  uint64_t epoch = 0;
  std::string model_yaml;
  bool committed = false;
  Placement placement;
  std::atomic<bool> shutdown{false};
  int next_client_id = wire::kFirstClientId;

  bool alive(const Member& m, Clock::time_point now) const {
    return now - m.last_heartbeat < std::chrono::milliseconds(cluster.dead_after_ms);
  }

  Result<pb::RegisterWorkerReply> register_worker(const pb::RegisterWorkerRequest& req) {
    std::lock_guard<std::mutex> lock(mu);
    int id = req.requested_id();
    if (id < 0) {
      id = 0;
      while (members.count(id)) ++id;
    }
    if (id >= cluster.workers)
      return Status(StatusCode::invalid_argument, "worker id " + std::to_string(id) + " is outside the cluster's " +
                                                      std::to_string(cluster.workers) + " workers (cluster.workers)");
    if (members.count(id) && alive(members[id], Clock::now()))
      return Status(StatusCode::invalid_argument, "worker id " + std::to_string(id) + " is already registered by pid " +
                                                      std::to_string(members[id].info.pid()));
    Member m;
    m.info.set_worker_id(id);
    m.info.set_pid(req.pid());
    m.info.set_host(req.host());
    m.info.set_control_endpoint(req.control_endpoint());
    m.last_heartbeat = m.previous_heartbeat = Clock::now();
    members[id] = m;
    SY_LOG(info, "runtime", "worker " << id << " registered: pid " << req.pid() << " at " << req.control_endpoint());
    pb::RegisterWorkerReply reply;
    reply.set_worker_id(id);
    reply.set_workers_expected(cluster.workers);
    reply.set_heartbeat_ms(static_cast<uint32_t>(cluster.heartbeat_ms));
    reply.set_ucx_peer_failure(cluster.ucx_peer_failure);
    reply.set_request_timeout_ms(static_cast<uint32_t>(cluster.request_timeout_ms));
    reply.set_startup_timeout_ms(static_cast<uint32_t>(cluster.startup_timeout_ms));
    reply.set_transport(cluster.transport);
    return reply;
  }

  // Client data-plane ids count up from kFirstClientId and are never reused (a late message of a
  // departed client must never match a new one).
  Result<pb::RegisterClientReply> register_client(const pb::RegisterClientRequest& req) {
    std::lock_guard<std::mutex> lock(mu);
    if (next_client_id > transport::kMaxRank)
      return Status(StatusCode::no_resource, "the cluster has given out every client id");
    pb::RegisterClientReply reply;
    reply.set_client_id(next_client_id++);
    SY_LOG(info, "runtime", "client '" << req.name() << "' registered as data-plane id " << reply.client_id());
    return reply;
  }

  Result<pb::HeartbeatReply> heartbeat(const pb::HeartbeatRequest& req) {
    std::lock_guard<std::mutex> lock(mu);
    auto it = members.find(req.worker_id());
    if (it == members.end()) return Status(StatusCode::invalid_argument, "heartbeat from unregistered worker " + std::to_string(req.worker_id()));
    Member& m = it->second;
    const auto now = Clock::now();
    const double secs = std::chrono::duration<double>(now - m.previous_heartbeat).count();
    const uint64_t rows = req.rows_forward() + req.rows_backward();
    if (secs >= 1.0) {  // recent load over about a second
      m.info.set_rows_per_s(static_cast<double>(rows - m.previous_rows) / secs);
      m.previous_rows = rows;
      m.previous_heartbeat = now;
    }
    m.last_heartbeat = now;
    m.reported_dead = false;
    m.info.set_rows_forward(req.rows_forward());
    m.info.set_rows_backward(req.rows_backward());
    m.info.set_experts(req.experts());
    m.info.set_expert_bytes(req.expert_bytes());
    m.info.set_steps(req.steps());
    pb::HeartbeatReply reply;
    reply.set_placement_epoch(epoch);
    return reply;
  }

  Result<pb::ClusterInfoReply> info() const {
    std::lock_guard<std::mutex> lock(mu);
    pb::ClusterInfoReply reply;
    reply.set_placement_epoch(epoch);
    reply.set_workers_expected(cluster.workers);
    const auto now = Clock::now();
    for (const auto& [id, m] : members) {
      pb::WorkerInfo* w = reply.add_workers();
      *w = m.info;
      w->set_alive(alive(m, now));
      w->set_ms_since_heartbeat(static_cast<uint64_t>(
          std::chrono::duration_cast<std::chrono::milliseconds>(now - m.last_heartbeat).count()));
    }
    reply.set_model_yaml(model_yaml);
    reply.set_model_committed(committed);
    wire::placement_to_pb(placement, reply.mutable_placement());
    reply.set_request_timeout_ms(static_cast<uint32_t>(cluster.request_timeout_ms));
    reply.set_ucx_tls(cluster.ucx_tls);
    reply.set_ucx_peer_failure(cluster.ucx_peer_failure);
    reply.set_startup_timeout_ms(static_cast<uint32_t>(cluster.startup_timeout_ms));
    reply.set_liveness_check_ms(static_cast<uint32_t>(cluster.liveness_check_ms));
    reply.set_transport(cluster.transport);
    return reply;
  }

  Result<pb::PlanPlacementReply> plan(const pb::PlanPlacementRequest& req) {
    std::lock_guard<std::mutex> lock(mu);
    try {
      const Config cfg = load_config_string(req.model_yaml(), "model from client");
      Placement p = cluster_placement(cfg.model, cluster);  // YAML file or round-robin; memory checked
      p.validate(cfg.model, cluster.workers);
      placement = std::move(p);
    } catch (const Error& e) {
      return Status(StatusCode::invalid_argument, e.what());
    }
    placement.epoch = ++epoch;
    model_yaml = req.model_yaml();
    committed = false;
    SY_LOG(info, "runtime", "placement epoch " << epoch << ": " << placement.replicas.size() << " experts");
    pb::PlanPlacementReply reply;
    reply.set_placement_epoch(epoch);
    wire::placement_to_pb(placement, reply.mutable_placement());
    return reply;
  }

  Result<pb::CommitPlacementReply> commit(const pb::CommitPlacementRequest& req) {
    std::lock_guard<std::mutex> lock(mu);
    if (req.placement_epoch() != epoch)
      return Status(StatusCode::invalid_argument, "commit of placement epoch " + std::to_string(req.placement_epoch()) +
                                                      " but the current epoch is " + std::to_string(epoch));
    committed = true;
    return pb::CommitPlacementReply{};
  }
};

Coordinator::Coordinator(const ClusterConfig& cluster) : impl_(std::make_unique<Impl>()) {
  impl_->cluster = cluster;
  const std::optional<HostPort> listen = parse_host_port(cluster.coordinator);
  if (!listen) throw Error(ErrorKind::config, "cluster.coordinator: '" + cluster.coordinator + "' is not host:port");
  control::ControlServer::Options so;
  so.bind_address = listen->host;
  so.port = static_cast<uint16_t>(listen->port);
  so.name = "switchyard-coordinator";
  impl_->server = std::make_unique<control::ControlServer>(so);
  impl_->rendezvous = std::make_unique<transport::RendezvousService>(*impl_->server);
  Impl* im = impl_.get();
  impl_->server->on<pb::RegisterWorkerRequest, pb::RegisterWorkerReply>(
      [im](const pb::RegisterWorkerRequest& r, const control::PeerInfo&) { return im->register_worker(r); });
  impl_->server->on<pb::RegisterClientRequest, pb::RegisterClientReply>(
      [im](const pb::RegisterClientRequest& r, const control::PeerInfo&) { return im->register_client(r); });
  impl_->server->on<pb::HeartbeatRequest, pb::HeartbeatReply>(
      [im](const pb::HeartbeatRequest& r, const control::PeerInfo&) { return im->heartbeat(r); });
  impl_->server->on<pb::ClusterInfoRequest, pb::ClusterInfoReply>(
      [im](const pb::ClusterInfoRequest&, const control::PeerInfo&) { return im->info(); });
  impl_->server->on<pb::PlanPlacementRequest, pb::PlanPlacementReply>(
      [im](const pb::PlanPlacementRequest& r, const control::PeerInfo&) { return im->plan(r); });
  impl_->server->on<pb::CommitPlacementRequest, pb::CommitPlacementReply>(
      [im](const pb::CommitPlacementRequest& r, const control::PeerInfo&) { return im->commit(r); });
  impl_->server->on<pb::ShutdownRequest, pb::ShutdownReply>([im](const pb::ShutdownRequest&, const control::PeerInfo& peer) {
    SY_LOG(info, "runtime", "shutdown requested by " << peer.name << " (" << peer.endpoint << ")");
    im->shutdown = true;
    return Result<pb::ShutdownReply>(pb::ShutdownReply{});
  });
  impl_->server->start();
}

Coordinator::~Coordinator() { stop(); }

std::string Coordinator::endpoint() const { return impl_->server->endpoint(); }

int Coordinator::registered_workers() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return static_cast<int>(impl_->members.size());
}

int Coordinator::alive_workers() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  int n = 0;
  const auto now = Clock::now();
  for (const auto& [id, m] : impl_->members) n += impl_->alive(m, now);
  return n;
}

bool Coordinator::shutdown_requested() const { return impl_->shutdown; }

void Coordinator::check_liveness() {
  std::lock_guard<std::mutex> lock(impl_->mu);
  const auto now = Clock::now();
  for (auto& [id, m] : impl_->members) {
    if (!impl_->alive(m, now) && !m.reported_dead) {
      m.reported_dead = true;
      SY_LOG(error, "runtime", "worker " << id << " (pid " << m.info.pid() << ", " << m.info.control_endpoint()
                                         << ") is dead: no heartbeat for " << impl_->cluster.dead_after_ms << " ms");
    }
  }
}

void Coordinator::stop() {
  if (impl_->server) impl_->server->stop();
}

}  // namespace sy
