#include "switchyard/coordinator/coordinator.h"

#include <algorithm>

#include "coordinator_impl.h"
#include "switchyard/core/error.h"
#include "switchyard/core/log.h"
#include "switchyard/core/secret.h"
#include "switchyard/placement/load_trace.h"

namespace sy {

// A slot's member can be replaced when its process is gone: fenced, or silent past dead_after_ms.
bool Coordinator::Impl::replaceable(const Member& m, Clock::time_point now) const { return !alive(m, now); }

// Caller holds mu: the first slot never registered, else the first whose process is gone
// (fenced first); cluster.workers when there is none.
int Coordinator::Impl::open_slot(Clock::time_point now) const {
  int id = 0;
  while (members.count(id)) ++id;
  for (int pass = 0; pass < 2 && id >= cluster.workers; ++pass)
    for (const auto& [slot, m] : members)
      if (pass == 0 ? !m.fenced.empty() : replaceable(m, now)) return slot;
  return id;
}

// The workers that form the cluster take slots 0..workers-1 with data-plane ids equal to them. A
// process registering into the slot of a lost one (`switchyard up` restarting it, or a new
// worker when every slot is taken) is a *replacement*: a fresh data-plane id (ids are never
// reused while peers that knew the old holder live), no fixed world, the model if one is
// loaded, and no replicas until a rebalance (recovery or join) copies them to it.
Result<pb::RegisterWorkerReply> Coordinator::Impl::register_worker(const pb::RegisterWorkerRequest& req) {
  std::lock_guard<std::mutex> lock(mu);
  const auto now = Clock::now();
  const int id = req.requested_id() < 0 ? open_slot(now) : req.requested_id();
  if (id >= cluster.workers)
    return Status(StatusCode::invalid_argument, "worker id " + std::to_string(id) + " is outside the cluster's " +
                                                    std::to_string(cluster.workers) + " workers (cluster.workers)");
  auto previous = members.find(id);
  if (previous != members.end() && previous->second.info.pid() == req.pid() &&
      previous->second.info.host() == req.host() && previous->second.fenced.empty())
    return registration_reply(previous->second.info, previous->second.info.replacement());  // its retry: the reply was lost
  const bool known_gone = previous != members.end() && req.replaces_pid() != 0 &&
                          req.replaces_pid() == previous->second.info.pid();
  if (previous != members.end() && !known_gone && !replaceable(previous->second, now))
    return Status(StatusCode::invalid_argument, "worker id " + std::to_string(id) + " is already registered by pid " +
                                                    std::to_string(previous->second.info.pid()));
  Member m;
  m.info.set_worker_id(id);
  m.info.set_pid(req.pid());
  m.info.set_host(req.host());
  m.info.set_control_endpoint(req.control_endpoint());
  m.info.set_device(req.device().empty() ? "cpu" : req.device());
  m.info.set_data_plane_id(id);
  m.registered_at = m.last_heartbeat = m.previous_heartbeat = now;
  const bool replacing = previous != members.end();
  if (replacing) {
    if (next_worker_data_plane_id >= wire::kFirstClientId)
      return Status(StatusCode::no_resource, "the cluster has given out every worker data-plane id");
    m.info.set_data_plane_id(next_worker_data_plane_id++);
    m.info.set_replacement(true);
    m.info.set_restarts(previous->second.info.restarts() + 1);
    SY_LOG(warn, "runtime", "worker " << id << " (pid " << previous->second.info.pid() << ") is replaced by pid "
                                      << req.pid() << " (data-plane id " << m.info.data_plane_id() << ")");
    ++observed.replacements;
    observed.event("worker", "worker " + std::to_string(id) + " (pid " + std::to_string(previous->second.info.pid()) +
                                 ") replaced by pid " + std::to_string(req.pid()));
    if (committed && !placement.experts_on(id).empty()) {  // its replicas went with its predecessor
      recovery_failed_at.reset();
      recovery_due = true;
      if (!lost_since) lost_since = now;
    }
  }
  members[id] = m;
  ++membership_version;
  save_state();
  SY_LOG(info, "runtime", "worker " << id << " registered: pid " << req.pid() << " at " << req.control_endpoint());
  if (!replacing) observed.event("worker", "worker " + std::to_string(id) + " registered: pid " + std::to_string(req.pid()));
  return registration_reply(m.info, replacing);
}

// Caller holds mu: the settings a worker runs with, and for a replacement the loaded model.
pb::RegisterWorkerReply Coordinator::Impl::registration_reply(const pb::WorkerInfo& w, bool replacing) const {
  pb::RegisterWorkerReply reply;
  reply.set_worker_id(w.worker_id());
  reply.set_workers_expected(cluster.workers);
  reply.set_heartbeat_ms(static_cast<uint32_t>(cluster.heartbeat_ms));
  reply.set_ucx_peer_failure(cluster.ucx_peer_failure);
  reply.set_request_timeout_ms(static_cast<uint32_t>(cluster.request_timeout_ms));
  reply.set_startup_timeout_ms(static_cast<uint32_t>(cluster.startup_timeout_ms));
  reply.set_transport(cluster.transport);
  reply.set_coordinator_timeout_ms(static_cast<uint32_t>(cluster.coordinator_timeout_ms));
  reply.set_data_plane_id(w.data_plane_id());
  reply.set_idle_spin_us(static_cast<uint32_t>(cluster.idle_spin_us));
  if (replacing && committed) {
    reply.set_model_yaml(model_yaml);
    reply.set_placement_epoch(epoch);
    wire::placement_to_pb(placement, reply.mutable_placement());
  }
  return reply;
}

Result<pb::PublishAddressReply> Coordinator::Impl::publish_address(const pb::PublishAddressRequest& req) {
  std::lock_guard<std::mutex> lock(mu);
  auto it = members.find(req.worker_id());
  if (it == members.end() || it->second.info.pid() != req.pid())
    return Status(StatusCode::invalid_argument, "address of worker " + std::to_string(req.worker_id()) + " from pid " +
                                                    std::to_string(req.pid()) + ", which does not hold that id");
  auto rank = transport::address_rank(req.data_plane_address());
  if (!rank || *rank != it->second.info.data_plane_id())
    return Status(StatusCode::invalid_argument, "worker " + std::to_string(req.worker_id()) +
                                                    " published an address that is not of its data-plane id " +
                                                    std::to_string(it->second.info.data_plane_id()));
  it->second.info.set_data_plane_address(req.data_plane_address());
  ++membership_version;
  save_state();
  maybe_recover();  // one due for its predecessor waited for it
  maybe_admit();
  changed.notify_all();
  return pb::PublishAddressReply{};
}

// Client data-plane ids count up from kFirstClientId and are never reused (a late message of a
// departed client must never match a new one).
Result<pb::RegisterClientReply> Coordinator::Impl::register_client(const pb::RegisterClientRequest& req) {
  std::lock_guard<std::mutex> lock(mu);
  if (next_client_id > transport::kMaxRank)
    return Status(StatusCode::no_resource, "the cluster has given out every client id");
  pb::RegisterClientReply reply;
  reply.set_client_id(next_client_id++);
  Client& c = clients[reply.client_id()];
  c.info.set_client_id(reply.client_id());
  c.info.set_name(req.name());
  c.last_report = Clock::now();
  save_state();
  SY_LOG(info, "runtime", "client '" << req.name() << "' registered as data-plane id " << reply.client_id());
  observed.event("client", "client '" + req.name() + "' attached (id " + std::to_string(reply.client_id()) + ")");
  return reply;
}

Result<pb::UnregisterClientReply> Coordinator::Impl::unregister_client(const pb::UnregisterClientRequest& req) {
  std::lock_guard<std::mutex> lock(mu);
  clients.erase(req.client_id());
  changed.notify_all();
  return pb::UnregisterClientReply{};
}

Result<pb::HeartbeatReply> Coordinator::Impl::heartbeat(const pb::HeartbeatRequest& req) {
  std::lock_guard<std::mutex> lock(mu);
  auto it = members.find(req.worker_id());
  if (it == members.end()) return Status(StatusCode::invalid_argument, "heartbeat from unregistered worker " + std::to_string(req.worker_id()));
  Member& m = it->second;
  if (req.pid() != 0 && req.pid() != m.info.pid())
    return Status(StatusCode::invalid_argument, "heartbeat for worker " + std::to_string(req.worker_id()) + " from pid " +
                                                    std::to_string(req.pid()) + ", but pid " +
                                                    std::to_string(m.info.pid()) + " holds that id");
  if (!m.fenced.empty()) {
    pb::HeartbeatReply reply;
    reply.set_fenced(m.fenced);
    return reply;
  }
  const auto now = Clock::now();
  const double secs = std::chrono::duration<double>(now - m.previous_heartbeat).count();
  const uint64_t rows = req.rows_forward() + req.rows_backward();
  if (secs >= 1.0) {  // recent load over about a second
    m.info.set_rows_per_s(static_cast<double>(rows - m.previous_rows) / secs);
    m.info.set_busy_share(std::clamp((req.busy_seconds() - m.previous_busy) / secs, 0.0, 1.0));
    m.previous_rows = rows;
    m.previous_busy = req.busy_seconds();
    m.previous_heartbeat = now;
  }
  m.last_heartbeat = now;
  m.reported_dead = false;
  m.info.set_rows_forward(req.rows_forward());
  m.info.set_rows_backward(req.rows_backward());
  m.info.set_experts(req.experts());
  m.info.set_expert_bytes(req.expert_bytes());
  m.info.set_steps(req.steps());
  m.info.set_bytes_in(req.bytes_in());
  m.info.set_bytes_out(req.bytes_out());
  m.info.set_busy_seconds(req.busy_seconds());
  if (m.info.replacement() && req.holds_epoch() > 0) {  // it took part in a rebalance, or restored a checkpoint
    m.info.set_replacement(false);
    ++membership_version;  // clients route to it now
    save_state();
  }
  pb::HeartbeatReply reply;
  reply.set_placement_epoch(epoch);
  reply.set_needs_address(m.info.data_plane_address().empty());
  return reply;
}

Result<pb::WorkerLostReply> Coordinator::Impl::worker_lost(const pb::WorkerLostRequest& req) {
  std::lock_guard<std::mutex> lock(mu);
  auto it = members.find(req.worker_id());
  if (it == members.end())
    return Status(StatusCode::invalid_argument, "worker " + std::to_string(req.worker_id()) + " is not a member");
  Member& m = it->second;
  if (req.data_plane_id() != m.info.data_plane_id()) return pb::WorkerLostReply{};  // a predecessor: gone already
  Client& c = clients[req.client_id()];  // a restarted coordinator may hear of the client here first
  c.info.set_client_id(req.client_id());
  c.info.set_training(req.training());
  c.last_report = Clock::now();
  if (m.fenced.empty()) {
    m.fenced = "client " + std::to_string(req.client_id()) + " lost it: " + req.reason();
    m.info.set_fenced(true);
    SY_LOG(error, "runtime", "worker " << req.worker_id() << " (pid " << m.info.pid() << ") is fenced: " << m.fenced);
    ++observed.failovers;
    observed.event("failure", "worker " + std::to_string(req.worker_id()) + " (pid " + std::to_string(m.info.pid()) +
                                  ") lost and fenced: " + m.fenced);
    save_state();
    recovery_failed_at.reset();  // news: plan the recovery again now
    recovery_due = true;
    maybe_recover();
  }
  changed.notify_all();
  return pb::WorkerLostReply{};
}

Result<pb::ClusterInfoReply> Coordinator::Impl::info() const {
  std::lock_guard<std::mutex> lock(mu);
  pb::ClusterInfoReply reply;
  reply.set_placement_epoch(epoch);
  reply.set_workers_expected(cluster.workers);
  reply.set_membership_version(membership_version);
  reply.set_idle_spin_us(static_cast<uint32_t>(cluster.idle_spin_us));
  reply.set_client_spin_us(static_cast<uint32_t>(cluster.client_spin_us));
  reply.set_chunk_rows(static_cast<uint32_t>(cluster.chunk_rows));
  const auto now = Clock::now();
  for (const auto& [id, m] : members) {
    pb::WorkerInfo* w = reply.add_workers();
    *w = m.info;
    w->set_alive(alive(m, now));
    w->set_ms_since_heartbeat(static_cast<uint64_t>(
        std::chrono::duration_cast<std::chrono::milliseconds>(now - m.last_heartbeat).count()));
  }
  for (const auto& [id, c] : clients) {
    pb::ClientInfo* ci = reply.add_clients();
    *ci = c.info;
    ci->set_ms_since_report(static_cast<uint64_t>(
        std::chrono::duration_cast<std::chrono::milliseconds>(now - c.last_report).count()));
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
  reply.set_coordinator_timeout_ms(static_cast<uint32_t>(cluster.coordinator_timeout_ms));
  reply.set_checkpoint_every_steps(static_cast<uint32_t>(cluster.checkpoint_every_steps));
  reply.set_checkpoint_dir(cluster.checkpoint_dir);
  reply.set_checkpoint_keep(static_cast<uint32_t>(cluster.checkpoint_keep));
  if (model) *reply.mutable_load() = load.to_pb();
  if (migration) *reply.add_rebalances() = migration->record;
  for (const pb::RebalanceRecord& r : history) *reply.add_rebalances() = r;
  return reply;
}

// Heavy (the handler thread): parsing the model and planning run without the lock, so
// heartbeats and every other request go on meanwhile; the result is installed under it.
Result<pb::PlanPlacementReply> Coordinator::Impl::plan(const pb::PlanPlacementRequest& req) {
  {
    std::lock_guard<std::mutex> lock(mu);
    if (migration) return Status(StatusCode::invalid_argument, "a rebalance to epoch " + std::to_string(migration->next.epoch) + " is in progress");
  }
  std::unique_ptr<Config> cfg;
  Placement p;
  LoadMatrix rows;
  try {
    cfg = std::make_unique<Config>(load_config_string(req.model_yaml(), "model from client"));
    p = cluster_placement(cfg->model, cluster);  // YAML file or round-robin; memory checked
    p.validate(cfg->model, cluster.workers);
    rows = load_matrix_rows(cfg->model);  // the reports' shape
  } catch (const Error& e) {
    return Status(StatusCode::invalid_argument, e.what());
  }
  std::lock_guard<std::mutex> lock(mu);
  if (migration) return Status(StatusCode::invalid_argument, "a rebalance to epoch " + std::to_string(migration->next.epoch) + " is in progress");
  placement = std::move(p);
  load.reset(rows.rows(), rows.experts, cluster.workers, cluster.rebalance.window_steps);
  observed.reset_model(rows.rows(), rows.experts, cluster.workers);
  model = std::move(cfg);
  placement.epoch = epoch = last_epoch = last_epoch + 1;
  set_log_epoch("coordinator", epoch);
  model_yaml = req.model_yaml();
  committed = false;
  max_training_step = last_policy_step = last_checkpoint_step = 0;
  save_state();
  SY_LOG(info, "runtime", "placement epoch " << epoch << ": " << placement.replicas.size() << " experts");
  observed.event("model", "model loaded: placement epoch " + std::to_string(epoch) + ", " +
                              std::to_string(placement.replicas.size()) + " experts");
  pb::PlanPlacementReply reply;
  reply.set_placement_epoch(epoch);
  wire::placement_to_pb(placement, reply.mutable_placement());
  return reply;
}

Result<pb::CommitPlacementReply> Coordinator::Impl::commit(const pb::CommitPlacementRequest& req) {
  std::lock_guard<std::mutex> lock(mu);
  if (req.placement_epoch() != epoch)
    return Status(StatusCode::invalid_argument, "commit of placement epoch " + std::to_string(req.placement_epoch()) +
                                                    " but the current epoch is " + std::to_string(epoch));
  committed = true;
  save_state();
  return pb::CommitPlacementReply{};
}

Result<pb::LoadReportReply> Coordinator::Impl::report_load(const pb::LoadReportRequest& req) {
  std::lock_guard<std::mutex> lock(mu);
  if (!model) return Status(StatusCode::invalid_argument, "load report before a model was loaded");
  if (Status s = observed.check(req); !s) return s;
  if (Status s = load.add(req); !s) return s;
  observed.add(req);
  if (observed.sample_due()) {
    const pb::LoadWindow w = load.to_pb();
    observed.sample_balance(w.balancedness(), w.balancedness_min());
  }
  Client& c = clients[req.client_id()];
  c.info.set_client_id(req.client_id());
  c.info.set_placement_epoch(req.placement_epoch());
  c.info.set_training(req.training());
  c.info.set_step(req.step());
  c.last_report = Clock::now();
  if (req.training()) {
    max_training_step = std::max(max_training_step, req.step());
    if (migration && migration->at_step_n > 0 && req.step() >= migration->at_step_n && !migration->step_reached)
      migration->step_reached = Clock::now();
    maybe_rebalance_by_policy(req.step());
  }
  maybe_recover();
  maybe_admit();
  changed.notify_all();
  pb::LoadReportReply reply;
  reply.set_placement_epoch(epoch);
  reply.set_membership_version(membership_version);
  // One writer per checkpointed step: the first training client to report it (the ranks of a
  // data-parallel group all report the same step number, none an older one once a rank reported
  // the next). An older step is a run resumed from a checkpoint: its steps are written again.
  const auto every = static_cast<uint64_t>(cluster.checkpoint_every_steps);
  if (req.training() && req.step() < last_checkpoint_step) last_checkpoint_step = 0;
  if (req.training() && every > 0 && req.step() > 0 && req.step() % every == 0 && req.step() > last_checkpoint_step) {
    last_checkpoint_step = req.step();
    reply.set_write_checkpoint(true);
  }
  if (req.placement_epoch() < epoch) wire::placement_to_pb(placement, reply.mutable_placement());
  if (migration && migration->at_step && migration->at_step_n > 0) {
    reply.set_migrate_epoch(migration->next.epoch);
    reply.set_migrate_at_step(migration->at_step_n);
  }
  return reply;
}

Coordinator::Coordinator(const ClusterConfig& cluster) : impl_(std::make_unique<Impl>()) {
  impl_->cluster = cluster;
  impl_->next_worker_data_plane_id = cluster.workers;
  impl_->load_state();
  const std::optional<HostPort> listen = parse_host_port(cluster.coordinator);
  if (!listen) throw Error(ErrorKind::config, "cluster.coordinator: '" + cluster.coordinator + "' is not host:port");
  control::ControlServer::Options so;
  so.bind_address = listen->host;
  so.port = static_cast<uint16_t>(listen->port);
  so.name = "switchyard-coordinator";
  so.secret = impl_->secret = cluster_secret(cluster);
  impl_->server = std::make_unique<control::ControlServer>(so);
  impl_->rendezvous = std::make_unique<transport::RendezvousService>(*impl_->server);
  Impl* im = impl_.get();
  control::ControlServer& sv = *impl_->server;
  // Every request type once: its size limit (the serialized request) and whether it is heavy
  // (runs beside the I/O thread: parsing a model or a placement, planning).
  constexpr size_t KiB = 1024, MiB = 1024 * 1024;
  constexpr bool heavy = true, quick = false;
#define SY_HANDLE(Req, Rep, method, limit, kind)                                                               \
  sv.on<pb::Req, pb::Rep>([im](const pb::Req& r, const control::PeerInfo&) { return im->method(r); }, \
                          control::Route{.max_request_bytes = (limit), .heavy = (kind)})
  SY_HANDLE(RegisterWorkerRequest, RegisterWorkerReply, register_worker, 16 * KiB, quick);
  SY_HANDLE(RegisterClientRequest, RegisterClientReply, register_client, 16 * KiB, quick);
  SY_HANDLE(UnregisterClientRequest, UnregisterClientReply, unregister_client, 1 * KiB, quick);
  SY_HANDLE(HeartbeatRequest, HeartbeatReply, heartbeat, 1 * KiB, quick);
  SY_HANDLE(WorkerLostRequest, WorkerLostReply, worker_lost, 16 * KiB, quick);
  SY_HANDLE(PublishAddressRequest, PublishAddressReply, publish_address, 16 * KiB, quick);  // a UCX address
  SY_HANDLE(PlanPlacementRequest, PlanPlacementReply, plan, 1 * MiB, heavy);  // the model's YAML
  SY_HANDLE(CommitPlacementRequest, CommitPlacementReply, commit, 1 * KiB, quick);
  SY_HANDLE(LoadReportRequest, LoadReportReply, report_load, 8 * MiB, quick);  // rows per (layer, stage, expert)
  SY_HANDLE(RebalanceRequest, RebalanceReply, rebalance, 8 * MiB, heavy);      // a placement YAML, or planning
  SY_HANDLE(RebalanceStatusRequest, RebalanceStatusReply, rebalance_status, 1 * KiB, quick);
  SY_HANDLE(EpochDecisionRequest, EpochDecisionReply, epoch_decision, 1 * KiB, quick);
  SY_HANDLE(MigrationReportRequest, MigrationReportReply, migration_report, 1 * MiB, quick);
#undef SY_HANDLE
  sv.on<pb::ClusterInfoRequest, pb::ClusterInfoReply>(
      [im](const pb::ClusterInfoRequest&, const control::PeerInfo&) { return im->info(); },
      control::Route{.max_request_bytes = 1 * KiB});
  sv.on<pb::ShutdownRequest, pb::ShutdownReply>([im](const pb::ShutdownRequest&, const control::PeerInfo& peer) {
    SY_LOG(info, "runtime", "shutdown requested by " << peer.name << " (" << peer.endpoint << ")");
    im->shutdown = true;
    return Result<pb::ShutdownReply>(pb::ShutdownReply{});
  }, control::Route{.max_request_bytes = 1 * KiB});
  sv.start();
  impl_->start_http();
}

Coordinator::~Coordinator() { stop(); }

std::string Coordinator::endpoint() const { return impl_->server->endpoint(); }

std::string Coordinator::http_endpoint() const { return impl_->http ? impl_->http->endpoint() : ""; }

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
      if (m.fenced.empty()) {
        ++impl_->observed.worker_deaths;
        impl_->observed.event("failure", "worker " + std::to_string(id) + " (pid " + std::to_string(m.info.pid()) +
                                             ") dead: no heartbeat for " + std::to_string(impl_->cluster.dead_after_ms) + " ms");
      }
    }
  }
  set_log_epoch("coordinator", impl_->epoch);
  impl_->maybe_recover();  // due after a loss or a replacement; a failed start is retried from here
  impl_->maybe_admit();
  impl_->changed.notify_all();
}

void Coordinator::stop() {
  impl_->shutdown = true;
  impl_->changed.notify_all();
  impl_->join_driver();
  if (impl_->http) impl_->http->stop();
  if (impl_->server) impl_->server->stop();
}

}  // namespace sy
