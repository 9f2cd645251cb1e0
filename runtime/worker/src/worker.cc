#include "switchyard/worker/worker.h"

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <future>
#include <set>
#include <tuple>
#include <variant>

#include "switchyard/core/config.h"
#include "switchyard/core/secret.h"
#include "switchyard/core/wake_fd.h"
#include "switchyard/core/log.h"
#include "switchyard/core/trace.h"
#include "switchyard/placement/placement.h"
#include "switchyard/transport/control.h"
#include "switchyard/transport/factory.h"
#include "switchyard/transport/rendezvous.h"
#include "switchyard/wire/wire.h"
#include "switchyard/worker/expert_store.h"
#include "worker_migration.h"

namespace sy {
namespace {

namespace pb = wire::pb;
using namespace std::chrono_literals;
using Millis = std::chrono::milliseconds;

// One attached client: a dynamic peer of the worker's transport, and the header receive
// posted for its next request.
struct ClientConnection {
  int id = 0;  // the client's data-plane id
  std::string name;
  std::string address;       // to connect on the serving thread
  std::vector<char> header;  // outlives the receive posted into it (released before erase)
  transport::RequestId header_request{};
  bool connected = false, header_posted = false, dead = false;
  bool stepped = false;  // it has sent a StepOp: a training client
};

struct PendingStep {
  ClientConnection* client;
  uint64_t request_id;
  pb::StepOp op;  // the epoch the client routed with, the prepared epoch to migrate to, its dead workers
};

// A phase of one optimizer step: (step, phase, attempt); the group of clients asking for it.
using StepKey = std::tuple<uint64_t, int, uint32_t>;
StepKey step_key(const pb::StepOp& op) { return {op.step(), static_cast<int>(op.phase()), op.attempt()}; }

// The tag of one expert's gradient exchange: distinct per step (mod 2^14), attempt (mod 2^4) and
// expert, so a message left over from a failed attempt never matches a later one.
transport::Tag reduce_tag(uint64_t step, uint32_t attempt, int expert_index) {
  return wire::kReplicaReduceTagBase + ((((step & 0x3fff) << 4) | (attempt & 0xf)) << 20) +
         static_cast<transport::Tag>(expert_index);
}

// A request that fails with this is answered with its ErrorInfo; the client is kept.
void require(bool ok, const std::string& message) {
  if (!ok) throw Error(ErrorKind::input, message);
}

// WorkerOptions::backend, or the usable backend WorkerOptions::device names.
Backend& worker_backend(const WorkerOptions& options) {
  if (options.backend) return *options.backend;
  if (Backend* b = find_backend(options.device)) return *b;
  throw Error(ErrorKind::input, "worker: device '" + options.device + "' is not usable in this process");
}

class Worker {
 public:
  Worker(const WorkerOptions& options, const std::atomic<bool>& stop)
      : options_(options), backend_(worker_backend(options)), stop_(stop) {}

  int run() {
    start_control_server();
    register_with_coordinator();
    join_workers_world();
    migration_ = std::make_unique<WorkerMigration>(WorkerMigration::Env{
        transport_.get(), &store_, &placement_,
        [this](const pb::MigrationReportRequest& r) { return coordinator_call<pb::MigrationReportRequest, pb::MigrationReportReply>(r).status(); },
        id_, label_, request_timeout_,
        [this] { return training_client_attached(); }, [this] { held_changed(); },
        [this](uint64_t epoch) { holds_epoch_ = epoch; }, [this](int w) { return rank_of(w); }});
    std::thread heartbeat([this] { heartbeat_loop(); });
    serve();
    heartbeat_stop_ = true;
    heartbeat.join();
    server_->stop();
    return fenced_ || coordinator_lost_ ? 4 : 0;
  }

 private:
  // Clients attach here: the reply carries our address; the serving thread connects theirs.
  void start_control_server() {
    control::ControlServer::Options so;
    so.bind_address = options_.bind_host;
    so.name = "switchyard-worker";
    so.secret = cluster_secret_from_env();
    server_ = std::make_unique<control::ControlServer>(so);
    // Size limits per request type, as the coordinator's table: an attach carries a name and a
    // UCX address, a migration the next placement and its copies (as a rebalance request).
    constexpr size_t KiB = 1024, MiB = 1024 * 1024;
    server_->on<pb::AttachRequest, pb::AttachReply>(
        [this](const pb::AttachRequest& req, const control::PeerInfo&) { return attach(req); },
        control::Route{.max_request_bytes = 16 * KiB});
    server_->on<pb::MigrateRequest, pb::MigrateReply>(
        [this](const pb::MigrateRequest& req, const control::PeerInfo&) {
          queue_task(req);
          return Result<pb::MigrateReply>(pb::MigrateReply{});
        },
        control::Route{.max_request_bytes = 8 * MiB});
    server_->on<pb::EpochNoticeRequest, pb::EpochNoticeReply>(
        [this](const pb::EpochNoticeRequest& req, const control::PeerInfo&) {
          queue_task(req);
          return Result<pb::EpochNoticeReply>(pb::EpochNoticeReply{});
        },
        control::Route{.max_request_bytes = 1 * KiB});
    server_->start();
  }

  void register_with_coordinator() {
    auto [host, port] = control::parse_endpoint(options_.coordinator);
    control::ControlClient::Options co;
    co.name = "worker pid " + std::to_string(::getpid());
    co.secret = cluster_secret_from_env();
    pb::RegisterWorkerRequest reg;
    reg.set_requested_id(options_.requested_id);
    reg.set_pid(static_cast<uint32_t>(::getpid()));
    reg.set_host(transport::default_process_label());
    reg.set_control_endpoint(server_->endpoint());
    reg.set_replaces_pid(options_.replaces_pid);
    reg.set_device(backend_.name());
    // Launchers start every rank at once: the coordinator may not listen yet; a restarting one
    // may drop the channel. Retry both until connect_timeout_ms; a refusal is final.
    const auto connect_deadline = std::chrono::steady_clock::now() + Millis(options_.connect_timeout_ms);
    Result<pb::RegisterWorkerReply> r = Status(StatusCode::unreachable, "not tried");
    for (;;) {
      auto c = control::ControlClient::connect(host, port, co);
      if (c.is_ok()) {
        coordinator_ = std::move(c).value();
        r = coordinator_->call<pb::RegisterWorkerRequest, pb::RegisterWorkerReply>(reg);
        if (r || !coordinator_->broken()) break;
      } else {
        r = c.status();
      }
      if (std::chrono::steady_clock::now() > connect_deadline || stop_) break;
      std::this_thread::sleep_for(200ms);
    }
    if (!r) throw Error(ErrorKind::transport, "worker: register with " + options_.coordinator + ": " + r.status().to_string());
    registration_ = std::move(r).value();
    id_ = registration_.worker_id();
    set_log_id("worker", id_);
    rank_ = registration_.data_plane_id();
    idle_spin_ = std::chrono::microseconds(registration_.idle_spin_us());
    request_timeout_ = Millis(registration_.request_timeout_ms());
    label_ = "worker " + std::to_string(id_) + " (" + transport::default_process_label() + ")";
    trace::set_process_name(label_);
    SY_LOG(info, "runtime", label_ << " registered with " << options_.coordinator << " (" << registration_.transport()
                                   << ", UCX peer failure detection "
                                   << (registration_.ucx_peer_failure() ? "requested" : "off") << ")");
  }

  // This process's one transport: the workers' fixed world (replica reduction) and, as dynamic
  // peers, the clients. A replacement of a lost worker has a fresh data-plane id outside that
  // world: it connects to the other workers one by one (MigrateRequest.peers), and takes the
  // loaded model, holding no replica until a rebalance copies some here.
  void join_workers_world() {
    const int world = registration_.workers_expected();
    const bool replacement = rank_ != id_;
    transport::TransportOptions to;
    to.rank = rank_;
    to.world_size = replacement ? 0 : world;
    to.label = label_;
    transport::BackendOptions backend;
    backend.ucx.peer_error_handling = registration_.ucx_peer_failure();
    transport_ = transport::make_transport(registration_.transport(), to, backend);
    if (!registration_.model_yaml().empty()) take_loaded_model();
    address_ = transport_->local_address();
    address_ready_ = true;  // attach (control thread) may answer from now on
    if (!replacement) {
      const Status s = transport::bootstrap_transport(*transport_, *coordinator_, "workers-data-plane",
                                                      Millis(registration_.startup_timeout_ms()));
      if (!s) throw Error(ErrorKind::transport, label_ + ": joining the workers' data-plane world: " + s.to_string());
      for (int w = 0; w < world; ++w) peer_rank_[w] = w;
    }
    if (Status s = publish_address(*coordinator_); !s)  // the heartbeats publish it once the coordinator is back
      SY_LOG(warn, "runtime", label_ << ": publishing its data-plane address: " << s.to_string() << "; again later");
  }

  // Tells the coordinator where peers reach this process (at start, and when a heartbeat reply
  // says it does not know: a coordinator restarted from a state file written before).
  Status publish_address(control::ControlClient& client) const {
    pb::PublishAddressRequest pub;
    pub.set_worker_id(id_);
    pub.set_pid(static_cast<uint32_t>(::getpid()));
    pub.set_data_plane_address(address_);
    return client.call<pb::PublishAddressRequest, pb::PublishAddressReply>(pub).status();
  }

  // A replacement: the cluster's model with an empty store (the rebalance fills it).
  void take_loaded_model() {
    config_ = std::make_unique<Config>(load_config_string(registration_.model_yaml(), "model from the coordinator"));
    store_ = std::make_unique<ExpertStore>(config_->model, backend_);
    placement_ = wire::placement_from_pb(registration_.placement(), registration_.placement_epoch());
    SY_LOG(info, "runtime", label_ << ": replaces a lost worker (data-plane id " << rank_
                                   << "); waiting for replicas of placement epoch > " << placement_.epoch);
  }

  // A worker id's data-plane id: the slot's process as last told (MigrateRequest.peers).
  transport::Rank rank_of(int worker) const {
    auto it = peer_rank_.find(worker);
    return it == peer_rank_.end() ? worker : it->second;
  }

  // Connects the workers a rebalance lists that this transport has no endpoint to (a
  // replacement, or every peer when this is one); a slot's previous process is disconnected.
  void connect_workers(const google::protobuf::RepeatedPtrField<pb::WorkerPeer>& peers) {
    const std::vector<transport::Rank> have = transport_->peers();
    auto connected = [&](transport::Rank r) { return std::find(have.begin(), have.end(), r) != have.end(); };
    for (const pb::WorkerPeer& p : peers) {
      if (p.worker_id() == id_) continue;
      auto it = peer_rank_.find(p.worker_id());
      if (it != peer_rank_.end() && it->second == p.data_plane_id() && connected(it->second)) continue;
      if (it != peer_rank_.end() && it->second != p.data_plane_id() && connected(it->second))
        (void)transport_->disconnect_peer(it->second);
      if (connected(p.data_plane_id())) (void)transport_->disconnect_peer(p.data_plane_id());  // failed: reconnect
      if (Status s = transport_->connect_peer(p.data_plane_id(), p.data_plane_address()); !s) {
        SY_LOG(warn, "runtime", label_ << ": cannot connect worker " << p.worker_id() << ": " << s.to_string());
        continue;
      }
      peer_rank_[p.worker_id()] = p.data_plane_id();
      SY_LOG(info, "runtime", label_ << ": connected worker " << p.worker_id() << " (data-plane id "
                                     << p.data_plane_id() << ")");
    }
  }

  Result<pb::AttachReply> attach(const pb::AttachRequest& req) {
    // Registration made us visible before the transport exists: a client that attaches in
    // between waits (bounded) for it.
    const auto ready_deadline = std::chrono::steady_clock::now() + Millis(options_.connect_timeout_ms);
    while (!address_ready_) {
      if (std::chrono::steady_clock::now() > ready_deadline || stop_)
        return Status(StatusCode::unreachable, "the worker has no data-plane transport yet");
      std::this_thread::sleep_for(1ms);
    }
    auto id = transport::address_rank(req.client_address());
    if (!id) return id.status();
    if (*id != req.client_id() || req.client_id() < wire::kFirstClientId)
      return Status(StatusCode::invalid_argument, "client '" + req.client_name() + "' attaches as id " +
                                                      std::to_string(req.client_id()) + " with the address of id " +
                                                      std::to_string(*id));
    auto conn = std::make_unique<ClientConnection>();
    conn->id = req.client_id();
    conn->name = req.client_name();
    conn->address = req.client_address();
    pb::AttachReply reply;
    reply.set_worker_address(address_);
    reply.set_client_id(static_cast<uint32_t>(conn->id));
    {
      std::lock_guard<std::mutex> lock(attach_mu_);
      attached_.push_back(std::move(conn));
    }
    wake_.notify();
    return reply;
  }

  control::ControlClient::Options coordinator_options(const std::string& what) const {
    control::ControlClient::Options co;
    co.name = label_ + " " + what;
    co.call_timeout = request_timeout_;
    co.connect_timeout = Millis(registration_.heartbeat_ms());
    co.secret = cluster_secret_from_env();
    return co;
  }

  // A call on the serving thread's channel to the coordinator; a broken channel (the
  // coordinator restarted) is reconnected, and a call that broke it is made once more.
  template <class Request, class Reply>
  Result<Reply> coordinator_call(const Request& request) {
    if (coordinator_->broken()) (void)coordinator_->reconnect();
    auto r = coordinator_->call<Request, Reply>(request);
    if (r || !coordinator_->broken() || !coordinator_->reconnect()) return r;
    return coordinator_->call<Request, Reply>(request);
  }

  // Heartbeats every heartbeat_ms. While the coordinator is away (a restart) the data plane goes
  // on and this reconnects; after cluster.coordinator_timeout_ms without it (and a few heartbeats
  // more, so that clients, which give up at the timeout, name the coordinator as the cause and not
  // a worker that left) the worker exits.
  void heartbeat_loop() {
    auto [host, port] = control::parse_endpoint(options_.coordinator);
    std::unique_ptr<control::ControlClient> client;
    const Millis grace(registration_.coordinator_timeout_ms() + 4 * registration_.heartbeat_ms());
    auto last_ok = std::chrono::steady_clock::now();
    while (!heartbeat_stop_) {
      if (!client) {
        auto c = control::ControlClient::connect(host, port, coordinator_options("heartbeat"));
        client = c ? std::move(c).value() : nullptr;
      } else if (client->broken()) {
        (void)client->reconnect();
      }
      if (client && beat(*client)) last_ok = std::chrono::steady_clock::now();
      if (fenced_ || coordinator_lost_) return;
      const auto away = std::chrono::steady_clock::now() - last_ok;
      if (away > grace) {
        SY_LOG(error, "runtime", label_ << ": the coordinator " << options_.coordinator << " has been unreachable for "
                                        << std::chrono::duration_cast<Millis>(away).count()
                                        << " ms (cluster.coordinator_timeout_ms " << grace.count() << ")");
        coordinator_lost_ = true;
        return;
      }
      for (uint32_t waited = 0; waited < registration_.heartbeat_ms() && !heartbeat_stop_; waited += 10)
        std::this_thread::sleep_for(10ms);
    }
  }

  // One heartbeat; false when the coordinator did not take it.
  bool beat(control::ControlClient& client) {
    pb::HeartbeatRequest hb;
    hb.set_worker_id(id_);
    hb.set_rows_forward(rows_forward_.load());
    hb.set_rows_backward(rows_backward_.load());
    hb.set_experts(experts_held_.load());
    hb.set_expert_bytes(expert_bytes_.load());
    hb.set_steps(steps_.load());
    hb.set_pid(static_cast<uint32_t>(::getpid()));
    hb.set_holds_epoch(holds_epoch_.load());
    hb.set_bytes_in(bytes_in_.load());
    hb.set_bytes_out(bytes_out_.load());
    hb.set_busy_seconds(static_cast<double>(busy_ns_.load()) * 1e-9);
    auto reply = client.call<pb::HeartbeatRequest, pb::HeartbeatReply>(hb);
    if (!reply) {
      if (client.broken()) return false;  // away: reconnect next time
      // It answers but does not know this worker: restarted without cluster.state_file.
      SY_LOG(error, "runtime", label_ << ": the coordinator refused a heartbeat (" << reply.status().message()
                                      << "); it restarted without this cluster's state (cluster.state_file)");
      coordinator_lost_ = true;
      return false;
    }
    set_log_epoch("worker", reply->placement_epoch());
    if (reply->needs_address() && address_ready_)
      if (Status s = publish_address(client); !s) SY_LOG(warn, "runtime", label_ << ": publishing its address: " << s.to_string());
    if (!reply->fenced().empty()) {
      SY_LOG(error, "runtime", label_ << ": fenced by the coordinator (" << reply->fenced()
                                      << "); its replicas are no longer used, exiting");
      fenced_ = true;
    }
    return true;
  }

  // Rebalance requests from the control thread, run in order on the serving thread.
  void queue_task(WorkerMigration::Task task) {
    {
      std::lock_guard<std::mutex> lock(tasks_mu_);
      tasks_.push_back(std::move(task));
    }
    wake_.notify();
  }
  void run_tasks() {
    std::vector<WorkerMigration::Task> tasks;
    {
      std::lock_guard<std::mutex> lock(tasks_mu_);
      tasks.swap(tasks_);
    }
    for (const WorkerMigration::Task& t : tasks) {
      trace::Span span("migration");
      if (const auto* m = std::get_if<pb::MigrateRequest>(&t)) connect_workers(m->peers());
      migration_->handle(t);
    }
  }

  // An attached client has sent a StepOp: a training job is (still) attached.
  bool training_client_attached() const {
    for (const auto& c : clients_)
      if (!c->dead && c->stepped) return true;
    return false;
  }

  void held_changed() {
    experts_held_ = static_cast<uint32_t>(store_->keys().size());
    expert_bytes_ = static_cast<uint64_t>(store_->bytes());
  }

  void serve() {
    auto idle_since = std::chrono::steady_clock::now();
    while (!stop_ && !coordinator_lost_ && !fenced_) {
      run_tasks();
      migration_->report_when_ready();
      take_attached();
      transport_->progress();
      bool busy = reap_replies();
      for (auto& c : clients_) {
        if (c->dead) continue;
        try {
          busy |= poll_client(*c);
        } catch (const Error& e) {
          SY_LOG(warn, "runtime", label_ << ": dropping client '" << c->name << "': " << e.what());
          c->dead = true;
        }
      }
      drop_dead_clients();
      // Spin briefly after traffic (the next request often follows at once), then sleep on the
      // transport's events and the control thread's wake-ups, so idle workers leave the cores
      // to busy ones. The timeout bounds how late a stop or a lost coordinator is noticed.
      const auto now = std::chrono::steady_clock::now();
      if (busy) {
        idle_since = now;
      } else if (now - idle_since > idle_spin_) {
        const int fd = wake_.fd();
        if (transport_->wait_for_events(50ms, std::span(&fd, 1))) wake_.drain();
      }
    }
    for (const auto deadline = std::chrono::steady_clock::now() + 1s;  // replies still on their way
         !replies_.empty() && std::chrono::steady_clock::now() < deadline;) {
      transport_->progress();
      reap_replies();
    }
    if (coordinator_lost_) SY_LOG(error, "runtime", label_ << ": lost the coordinator, shutting down");
  }

  // Clients the control thread accepted become peers of the transport (this thread owns it).
  void take_attached() {
    std::vector<std::unique_ptr<ClientConnection>> fresh;
    {
      std::lock_guard<std::mutex> lock(attach_mu_);
      fresh.swap(attached_);
    }
    for (auto& c : fresh) {
      const Status s = transport_->connect_peer(c->id, c->address);
      if (!s) {
        SY_LOG(warn, "runtime", label_ << ": cannot connect client '" << c->name << "': " << s.to_string());
        continue;
      }
      c->connected = true;
      clients_.push_back(std::move(c));
    }
  }

  // A departed client: its step requests go with it, its endpoint is closed (the posted header
  // receive fails and is released while the buffer is alive), then it is forgotten.
  void drop_dead_clients() {
    for (auto& [step, waiting] : pending_steps_)
      std::erase_if(waiting, [](const PendingStep& p) { return p.client->dead; });
    for (auto& c : clients_) {
      if (!c->dead) continue;
      if (c->connected) {
        (void)transport_->disconnect_peer(c->id);
        if (c->header_posted) (void)transport_->wait(c->header_request, request_timeout_);
        c->connected = false;
      }
      std::erase_if(forward_cache_, [&](const auto& entry) { return std::get<0>(entry.first) == c->id; });
      finish_replies_to(*c);
    }
    std::erase_if(clients_, [](const std::unique_ptr<ClientConnection>& c) { return c->dead; });
  }

  // Handles a request when its header has arrived.
  bool poll_client(ClientConnection& c) {
    if (!c.header_posted) {
      c.header.resize(wire::kMaxHeaderBytes);
      auto r = wire::post_recv(*transport_, c.id, wire::kRequestTag, c.header.data(), c.header.size());
      if (!r) throw Error(ErrorKind::transport, "client '" + c.name + "': " + r.status().to_string());
      c.header_request = *r;
      c.header_posted = true;
    }
    auto done = transport_->test(c.header_request);
    if (!done) {
      c.header_posted = false;  // failed: released
      throw Error(ErrorKind::transport, "client '" + c.name + "': " + done.status().to_string());
    }
    if (!done->done) return false;
    c.header_posted = false;
    pb::WorkerRequest req;
    if (done->bytes == 0 || !req.ParseFromArray(c.header.data(), static_cast<int>(done->bytes)))
      throw Error(ErrorKind::transport, "client '" + c.name + "' sent a malformed request header (" +
                                            std::to_string(done->bytes) + " bytes)");
    const auto busy_start = std::chrono::steady_clock::now();
    handle(c, req);
    busy_ns_ += std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - busy_start).count();
    return true;
  }

  std::vector<char> receive_payload(ClientConnection& c, uint64_t bytes) {
    std::vector<char> payload(bytes);
    bytes_in_ += bytes;
    if (bytes == 0) return payload;
    auto rid = wire::post_recv(*transport_, c.id, wire::kRequestPayloadTag, payload.data(), bytes);
    Status st = rid ? transport_->wait(*rid, request_timeout_) : rid.status();
    if (!st) {
      // Close the endpoint while `payload` is alive: the receive may still be posted into it.
      (void)transport_->disconnect_peer(c.id);
      if (rid) (void)transport_->wait(*rid, request_timeout_);
      c.connected = false;
      c.dead = true;
      throw Error(ErrorKind::transport, label_ + ": payload from client '" + c.name + "': " + st.to_string());
    }
    return payload;
  }

  // Posts a reply and goes on: its sends complete while the next request computes
  // (reap_replies). A send that fails drops the client.
  void reply(ClientConnection& c, uint64_t request_id, const pb::ErrorInfo* error, std::vector<float> payload = {},
             double compute_seconds = 0) {
    pb::WorkerReply rep;
    rep.set_compute_seconds(compute_seconds);
    rep.set_request_id(request_id);
    if (error) *rep.mutable_error() = *error;
    if (error) payload.clear();
    rep.set_payload_bytes(payload.size() * sizeof(float));
    bytes_out_ += payload.size() * sizeof(float);
    PendingReply& r = replies_.emplace_back(PendingReply{&c, {}, std::move(payload)});
    const Status s = r.out.post(*transport_, c.id, wire::kReplyTag, wire::kReplyPayloadTag, rep, r.payload.data(),
                                r.payload.size() * sizeof(float));
    if (!s) throw Error(ErrorKind::transport, label_ + ": reply to client '" + c.name + "': " + s.to_string());
  }

  // Releases the replies whose sends completed; a failed one drops its client. True when one
  // completed (traffic).
  bool reap_replies() {
    bool moved = false;
    for (auto it = replies_.begin(); it != replies_.end();) {
      std::optional<Status> failed;
      std::erase_if(it->out.requests, [&](transport::RequestId r) {
        auto t = transport_->test(r);
        if (!t) failed = t.status();
        return !t || t->done;
      });
      if (failed && !it->client->dead) {
        SY_LOG(warn, "runtime", label_ << ": dropping client '" << it->client->name << "': reply: " << failed->to_string());
        it->client->dead = true;
      }
      if (!it->out.requests.empty()) {
        ++it;
        continue;
      }
      moved = true;
      it = replies_.erase(it);
    }
    return moved;
  }

  // Before a client is forgotten (its endpoint closed): its replies' sends end, failing.
  void finish_replies_to(const ClientConnection& c) {
    for (auto it = replies_.begin(); it != replies_.end();) {
      if (it->client != &c) {
        ++it;
        continue;
      }
      for (transport::RequestId r : it->out.requests) (void)transport_->wait(r, request_timeout_);
      it = replies_.erase(it);
    }
  }

  void handle(ClientConnection& c, const pb::WorkerRequest& req) {
    // Shared: a training forward keeps its rows where they landed until their backward.
    const auto received = std::make_shared<const std::vector<char>>(receive_payload(c, req.payload_bytes()));
    const std::vector<char>& payload = *received;
    std::vector<float> out;
    const auto compute_start = std::chrono::steady_clock::now();
    try {
      switch (req.op_case()) {
        case pb::WorkerRequest::kLoadModel: load_model(req.load_model(), payload); break;
        case pb::WorkerRequest::kForward: {
          trace::Span span("expert forward", segments_where(req.forward().segments()));
          out = forward(c, req.forward(), received);
          break;
        }
        case pb::WorkerRequest::kBackward: {
          trace::Span span("expert backward", segments_where(req.backward().segments()));
          out = backward(c, req.backward(), payload);
          break;
        }
        case pb::WorkerRequest::kStep: {
          c.stepped = true;
          const StepKey key = step_key(req.step());
          std::vector<PendingStep>& group = pending_steps_[key];
          group.push_back({&c, req.request_id(), req.step()});
          if (group.size() >= std::max<uint32_t>(1, req.step().group_size())) step(key);
          return;  // replies go out in step()
        }
        case pb::WorkerRequest::kFetch: out = fetch_tensors(req.fetch()); break;
        case pb::WorkerRequest::kZeroGrads: require_store().zero_grads(); break;
        case pb::WorkerRequest::kCheckpoint: checkpoint(req.checkpoint()); break;
        case pb::WorkerRequest::kDetach:  // the client is leaving: no reply, forget it
          c.dead = true;
          SY_LOG(info, "runtime", label_ << ": client '" << c.name << "' detached");
          return;
        case pb::WorkerRequest::OP_NOT_SET:
          throw Error(ErrorKind::input, "request " + std::to_string(req.request_id()) +
                                            " carries no operation (a client of another version?)");
      }
    } catch (const std::exception& e) {
      const pb::ErrorInfo error = wire::error_info(e, id_);
      reply(c, req.request_id(), &error);
      return;
    }
    const double compute_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - compute_start).count();
    reply(c, req.request_id(), nullptr, std::move(out), compute_seconds);
  }

  // "layers.0.stages.1" of a request's first segment, for its trace span.
  static std::string segments_where(const google::protobuf::RepeatedPtrField<pb::Segment>& segments) {
    if (!trace::enabled() || segments.empty()) return {};
    const ExpertKey k = wire::key_from_pb(segments.Get(0));
    return "layers." + std::to_string(k.layer) + ".stages." + std::to_string(k.stage);
  }

  ExpertStore& require_store() {
    require(store_ != nullptr, "no model loaded on this worker");
    return *store_;
  }

  // With the client's placement: exactly the replicas it puts here (a worker a rebalance has not
  // yet told to drop old replicas saves none of those; a file holding others is refused).
  void checkpoint(const pb::CheckpointOp& op) {
    const std::string path = op.dir() + "/worker-" + std::to_string(id_) + ".safetensors";
    ExpertStore& store = require_store();
    std::optional<std::vector<ExpertKey>> mine;
    if (op.placed()) mine = wire::placement_from_pb(op.placement(), op.placement_epoch()).experts_on(id_);
    switch (op.action()) {
      case pb::CheckpointOp::SAVE:
        if (mine)
          for (const ExpertKey& key : *mine)
            require(store.holds(key), label_ + " holds no replica of " + key.to_string() + ", which placement epoch " +
                                          std::to_string(op.placement_epoch()) + " puts here");
        store.save(path, mine ? &*mine : nullptr);
        return;
      case pb::CheckpointOp::RESTORE:
        if (mine && mine->empty() && !std::filesystem::exists(path)) {
          store.clear();  // the checkpoint places nothing here and has no file for this worker
        } else {
          store.load(path, mine ? &*mine : nullptr);
        }
        forward_cache_.clear();
        holds_epoch_ = std::max<uint64_t>(placement_.epoch, 1);  // a replacement holds its slot's replicas again
        held_changed();
        return;
      default: throw Error(ErrorKind::input, "checkpoint request without an action");
    }
  }

  void load_model(const pb::LoadModelOp& op, const std::vector<char>& payload) {
    auto config = std::make_unique<Config>(load_config_string(op.model_yaml(), "model from client"));
    const ModelConfig& m = config->model;
    auto store = std::make_unique<ExpertStore>(m, backend_);
    require(payload.size() % sizeof(float) == 0, "LOAD_MODEL payload is not whole floats");
    const std::span<const float> floats(reinterpret_cast<const float*>(payload.data()), payload.size() / sizeof(float));
    size_t off = 0;
    for (const pb::Segment& s : op.experts()) {
      const ExpertKey key = wire::key_from_pb(s);
      require(expert_exists(m, key), "LOAD_MODEL: the model has no expert " + key.to_string());
      const ExpertGeometry geometry = ExpertGeometry::of(m, key.stage);
      const size_t n = static_cast<size_t>(encoded_expert_floats(geometry, false));
      require(off + n <= floats.size(), "LOAD_MODEL payload too short");
      store->add(key, decode_expert(geometry, floats.subspan(off, n), false, "LOAD_MODEL " + key.to_string()).weights);
      off += n;
    }
    require(off == floats.size(), "LOAD_MODEL payload has trailing bytes");
    placement_ = wire::placement_from_pb(op.placement(), op.placement_epoch());
    migration_->forget();
    config_ = std::move(config);
    store_ = std::move(store);
    forward_cache_.clear();
    held_changed();
    holds_epoch_ = placement_.epoch;
    SY_LOG(info, "runtime", label_ << ": loaded " << experts_held_.load() << " expert replicas");
  }

  // The segments' rows, checked against the payload.
  int64_t segment_rows(const google::protobuf::RepeatedPtrField<pb::Segment>& segments, size_t payload_bytes,
                       const char* what) const {
    const int64_t d = config_->model.hidden_size;
    int64_t total = 0;
    for (const pb::Segment& s : segments) {
      require(s.rows() >= 0, std::string(what) + ": negative row count");
      total += s.rows();
    }
    require(static_cast<int64_t>(payload_bytes) == total * d * static_cast<int64_t>(sizeof(float)),
            std::string(what) + " payload of " + std::to_string(payload_bytes) + " bytes for " + std::to_string(total) +
                " rows of width " + std::to_string(d));
    return total;
  }

  std::vector<float> forward(ClientConnection& c, const pb::ForwardOp& op,
                             const std::shared_ptr<const std::vector<char>>& payload) {
    ExpertStore& store = require_store();
    const int64_t d = config_->model.hidden_size;
    const int64_t total = segment_rows(op.segments(), payload->size(), "FORWARD");
    const float* x = reinterpret_cast<const float*>(payload->data());
    std::vector<float> out(static_cast<size_t>(total * d));
    std::vector<uint64_t> ids;
    int64_t row = 0;
    for (const pb::Segment& s : op.segments()) {
      if (op.keep_for_backward()) {
        const uint64_t id = next_store_request_++;
        store.forward(wire::key_from_pb(s), id, x + row * d, s.rows(), out.data() + row * d, payload);
        ids.push_back(id);
      } else {
        store.infer(wire::key_from_pb(s), x + row * d, s.rows(), out.data() + row * d);  // serving: keep nothing
      }
      row += s.rows();
    }
    if (op.keep_for_backward()) forward_cache_[{c.id, op.dispatch_id(), op.chunk()}] = std::move(ids);
    rows_forward_ += static_cast<uint64_t>(total);
    return out;
  }

  std::vector<float> backward(ClientConnection& c, const pb::BackwardOp& op, const std::vector<char>& payload) {
    ExpertStore& store = require_store();
    auto it = forward_cache_.find({c.id, op.dispatch_id(), op.chunk()});
    require(it != forward_cache_.end(), "BACKWARD for dispatch " + std::to_string(op.dispatch_id()) + " chunk " +
                                            std::to_string(op.chunk()) + " without its FORWARD");
    const int64_t d = config_->model.hidden_size;
    const int64_t total = segment_rows(op.segments(), payload.size(), "BACKWARD");
    require(it->second.size() == static_cast<size_t>(op.segments_size()), "BACKWARD does not match its FORWARD's layout");
    const float* g = reinterpret_cast<const float*>(payload.data());
    std::vector<float> out(static_cast<size_t>(total * d));
    int64_t row = 0;
    for (int i = 0; i < op.segments_size(); ++i) {
      const pb::Segment& s = op.segments(i);
      store.backward(wire::key_from_pb(s), it->second[static_cast<size_t>(i)], g + row * d, s.rows(), out.data() + row * d);
      row += s.rows();
    }
    forward_cache_.erase(it);
    rows_backward_ += static_cast<uint64_t>(total);
    return out;
  }

  // The gradients or weights of the listed experts, encoded one after the other (core/expert.h).
  std::vector<float> fetch_tensors(const pb::FetchOp& op) {
    ExpertStore& store = require_store();
    require(op.what() == pb::FetchOp::GRADS || op.what() == pb::FetchOp::WEIGHTS, "FETCH without what to fetch");
    std::vector<float> out;
    for (const pb::Segment& s : op.experts()) {
      const ExpertKey key = wire::key_from_pb(s);
      require(store.holds(key), "this worker holds no replica of " + key.to_string());
      const ExpertGeometry geometry = ExpertGeometry::of(config_->model, key.stage);
      encode_expert_weights(geometry, op.what() == pb::FetchOp::GRADS ? store.grads_copy(key) : store.weights_copy(key), out);
    }
    return out;
  }

  // REDUCE: the sum of each replicated expert's gradients among its live replicas held here, in
  // worker-id order, so every replica ends with bit-identical gradients (and therefore weights).
  // Kept pending until APPLY: a failed reduction changes nothing.
  std::map<ExpertKey, std::vector<float>> reduce_replicas(uint64_t step, uint32_t attempt, const std::set<int>& dead) {
    release_abandoned();
    std::map<ExpertKey, std::vector<float>> sums;
    int index = 0;
    for (const auto& [key, workers] : placement_.replicas) {
      ++index;
      std::vector<int> live;
      for (int w : workers)
        if (!dead.count(w)) live.push_back(w);
      if (live.size() < 2 || !placement_.holds(id_, key) || dead.count(id_) || !store_->holds(key)) continue;
      std::vector<float> mine = store_->flat_grads(key);
      std::map<int, std::vector<float>> all;
      exchange_with_replicas(key, live, reduce_tag(step, attempt, index), mine, all, dead);
      all[id_] = std::move(mine);
      std::vector<float> sum(all.begin()->second.size(), 0.0f);
      for (const auto& [w, v] : all)  // ascending worker id on every replica
        for (size_t i = 0; i < v.size(); ++i) sum[i] += v[i];
      sums.emplace(key, std::move(sum));
    }
    return sums;
  }

  // The buffers of failed exchanges, once none of their requests is pending any more.
  void release_abandoned() {
    transport_->progress();
    for (Abandoned& a : abandoned_)
      std::erase_if(a.requests, [&](transport::RequestId r) {
        auto t = transport_->test(r);
        return !t || t->done;  // failed (released) or done
      });
    std::erase_if(abandoned_, [](const Abandoned& a) { return a.requests.empty(); });
  }

  void apply_sums(const std::map<ExpertKey, std::vector<float>>& sums) {
    for (const auto& [key, sum] : sums) store_->set_flat_grads(key, sum);
  }

  // Sends `mine` to every other live replica holder and receives theirs into `all`, failing as
  // soon as one of them fails or the coordinator declares it dead. On failure the live peers stay
  // connected (the next attempt needs them): the buffers that requests may still point into are
  // kept (abandoned_) until those requests end, then it throws.
  void exchange_with_replicas(const ExpertKey& key, const std::vector<int>& workers, transport::Tag tag,
                              std::vector<float>& mine, std::map<int, std::vector<float>>& all,
                              const std::set<int>& dead) {
    std::vector<std::pair<int, transport::RequestId>> reqs;
    Status st;
    for (int w : workers) {
      if (w == id_ || !st) continue;
      all[w].resize(mine.size());
      auto s = wire::post_send(*transport_, rank_of(w), tag, mine.data(), mine.size() * sizeof(float));
      auto r = s ? wire::post_recv(*transport_, rank_of(w), tag, all[w].data(), mine.size() * sizeof(float)) : s;
      if (s) reqs.emplace_back(w, *s);
      if (r && s) reqs.emplace_back(w, *r);
      st = !s ? s.status() : r.status();
    }
    if (st) st = await_peers(reqs, dead);
    if (st) return;
    Abandoned a{std::move(mine), std::move(all), {}};
    for (const auto& [w, r] : reqs) a.requests.push_back(r);
    abandoned_.push_back(std::move(a));
    throw Error(ErrorKind::transport, label_ + ": reducing gradients of " + key.to_string() + " among its replicas: " +
                                          st.to_string());
  }

  // Until every request completed, one failed, or the coordinator declares dead a replica holder
  // the step's clients did not know dead (`dead`): the attempt is void then, on every survivor
  // (one waiting on a peer that gave up on the dead worker would wait forever), and the clients
  // reduce again without it. UCX may never report a dead peer, hence the coordinator.
  Status await_peers(std::vector<std::pair<int, transport::RequestId>>& reqs, const std::set<int>& dead) {
    const auto start = std::chrono::steady_clock::now();
    auto next_check = start + Millis(registration_.heartbeat_ms());
    std::vector<bool> done(reqs.size(), false);
    for (size_t left = reqs.size(); left > 0;) {
      transport_->progress();
      const size_t before = left;
      for (size_t i = 0; i < reqs.size(); ++i) {
        if (done[i]) continue;
        auto t = transport_->test(reqs[i].second);
        if (!t) return t.status();
        if (t->done) done[i] = true, --left;
      }
      if (left == 0) break;
      // Nothing moved: sleep on the transport's events, leaving the core to the peers being
      // waited for (it spun here, and on shared cores took the CPU from them).
      if (left == before) transport_->wait_for_events(1ms);
      const auto now = std::chrono::steady_clock::now();
      if (now - start > request_timeout_) return silent_peers(reqs, done);
      if (now < next_check) continue;
      next_check = now + Millis(registration_.heartbeat_ms());
      auto info = coordinator_call<pb::ClusterInfoRequest, pb::ClusterInfoReply>(pb::ClusterInfoRequest{});
      if (!info) continue;  // away (a restart?): UCX errors and the request timeout still bound the wait
      for (const pb::WorkerInfo& w : info->workers()) {
        if (dead.count(w.worker_id()) || placement_.experts_on(w.worker_id()).empty()) continue;
        if (w.alive() && w.data_plane_id() == rank_of(w.worker_id())) continue;
        const std::string why = w.alive() ? "replaced by pid " + std::to_string(w.pid())
                                : w.fenced() ? "fenced"
                                             : "no heartbeat for " + std::to_string(w.ms_since_heartbeat()) + " ms";
        return Status(StatusCode::peer_failed,
                      "worker " + std::to_string(w.worker_id()) + " is dead (" + why + ", says the coordinator)");
      }
    }
    return Status::ok();
  }

  // The timeout of await_peers, naming the replica holders whose send or receive never completed.
  Status silent_peers(const std::vector<std::pair<int, transport::RequestId>>& reqs, const std::vector<bool>& done) const {
    std::set<int> silent;
    for (size_t i = 0; i < reqs.size(); ++i)
      if (!done[i]) silent.insert(reqs[i].first);
    std::string names;
    for (int w : silent) names += (names.empty() ? "worker " : ", worker ") + std::to_string(w);
    return Status(StatusCode::timeout, "no answer within " + std::to_string(request_timeout_.count()) + " ms from " +
                                           names + " (placement epoch " + std::to_string(placement_.epoch) + ")");
  }

  // One phase of an optimizer step, once its whole group asked. REDUCE replaces the pending sums
  // (a retry reduces again, with the rows of a dead worker re-sent to survivors in between);
  // APPLY writes them and runs AdamW. Replies go to every client of the group.
  void step(const StepKey& key) {
    std::optional<pb::ErrorInfo> error;
    const std::vector<PendingStep>& group = pending_steps_[key];
    const pb::StepOp& op = group.front().op;
    try {
      ExpertStore& store = require_store();
      if (op.phase() == pb::StepOp::REDUCE) {
        run_tasks();
        uint64_t routed = 0;  // the epoch this step's clients routed with decides the reduction
        std::set<int> dead;
        bool agree = true;
        for (const PendingStep& p : group) {
          routed = std::max(routed, p.op.placement_epoch());
          const std::set<int> theirs(p.op.dead_workers().begin(), p.op.dead_workers().end());
          agree &= &p == &group.front() || theirs == dead;
          dead.insert(theirs.begin(), theirs.end());
        }
        // A client that has not noticed a loss has not re-sent the lost worker's share of its
        // rows: reduce once every client of the group names the same lost workers.
        if (!agree)
          throw Error(ErrorKind::transport, "the clients of step " + std::to_string(op.step()) +
                                                " name different lost workers; reducing again once they agree");
        migration_->follow_clients_epoch(routed);
        trace::Span span("replica reduce");
        pending_sums_.reset();
        pending_sums_ = {op.step(), reduce_replicas(op.step(), op.attempt(), dead)};
      } else {
        require(pending_sums_ && pending_sums_->first == op.step(),
                "APPLY of step " + std::to_string(op.step()) + " without its REDUCE");
        trace::Span span("optimizer");
        apply_sums(pending_sums_->second);
        pending_sums_.reset();
        const pb::AdamWSettings& a = op.adamw();
        store.step(AdamWConfig{a.lr(), a.beta1(), a.beta2(), a.eps(), a.weight_decay()});
        ++steps_;
      }
    } catch (const std::exception& e) {
      error = wire::error_info(e, id_);
    }
    if (op.phase() == pb::StepOp::APPLY)
      for (const PendingStep& p : group)
        if (p.op.migrate_epoch()) migration_->after_step(p.op.migrate_epoch());
    for (const PendingStep& p : pending_steps_[key]) {
      try {
        reply(*p.client, p.request_id, error ? &*error : nullptr);
      } catch (const Error& e) {  // that client is gone; the others still get theirs
        SY_LOG(warn, "runtime", label_ << ": dropping client '" << p.client->name << "': " << e.what());
        p.client->dead = true;
      }
    }
    pending_steps_.erase(key);
  }

  WorkerOptions options_;
  Backend& backend_;  // the replicas' memory and compute (WorkerOptions::device)
  const std::atomic<bool>& stop_;
  std::unique_ptr<control::ControlServer> server_;
  std::unique_ptr<control::ControlClient> coordinator_;
  pb::RegisterWorkerReply registration_;  // id, world size, timeouts, transport
  std::unique_ptr<transport::Transport> transport_;  // used by the serving thread only
  std::string address_;                              // its address, for attach
  std::atomic<bool> address_ready_{false};
  int id_ = -1;
  transport::Rank rank_ = -1;            // this process's data-plane id (id_, or a replacement's own)
  std::map<int, transport::Rank> peer_rank_;  // worker id → the data-plane id connected for it
  std::atomic<uint64_t> holds_epoch_{0};  // heartbeat: the placement epoch its replicas match
  WakeFd wake_;  // the control thread's hand-offs (attaches, rebalance tasks) wake the serving thread
  std::chrono::microseconds idle_spin_{0};  // cluster.idle_spin_us: spin after traffic, then sleep
  std::string label_ = "worker";
  Millis request_timeout_{10000};
  std::atomic<bool> heartbeat_stop_{false}, coordinator_lost_{false}, fenced_{false};
  std::mutex attach_mu_;
  std::vector<std::unique_ptr<ClientConnection>> attached_;  // handed from the control thread
  std::vector<std::unique_ptr<ClientConnection>> clients_;   // owned by the serving thread
  std::unique_ptr<Config> config_;
  std::unique_ptr<ExpertStore> store_;
  Placement placement_;  // of the loaded model, for the replica reduction
  // (client, dispatch, chunk) → store ids of its segments' forwards
  std::map<std::tuple<int, uint64_t, uint32_t>, std::vector<uint64_t>> forward_cache_;
  // Replies whose sends are in flight, with what they send (a std::list: posted buffers stay put).
  struct PendingReply {
    ClientConnection* client;
    wire::OutgoingMessage out;
    std::vector<float> payload;
  };
  std::list<PendingReply> replies_;
  std::map<StepKey, std::vector<PendingStep>> pending_steps_;
  struct Abandoned {  // a failed gradient exchange: what its requests may still read or write
    std::vector<float> mine;
    std::map<int, std::vector<float>> all;
    std::vector<transport::RequestId> requests;
  };
  std::vector<Abandoned> abandoned_;
  std::optional<std::pair<uint64_t, std::map<ExpertKey, std::vector<float>>>> pending_sums_;  // REDUCE → APPLY
  std::unique_ptr<WorkerMigration> migration_;  // this worker's side of rebalances (serving thread)
  std::mutex tasks_mu_;
  std::vector<WorkerMigration::Task> tasks_;  // from the control thread
  uint64_t next_store_request_ = 1;
  std::atomic<uint64_t> rows_forward_{0}, rows_backward_{0}, steps_{0}, expert_bytes_{0};
  std::atomic<uint32_t> experts_held_{0};
  std::atomic<uint64_t> bytes_in_{0}, bytes_out_{0};  // client payloads, for the heartbeat (metrics)
  std::atomic<int64_t> busy_ns_{0};                    // handling client requests
};

}  // namespace

int run_worker(const WorkerOptions& options, const std::atomic<bool>& stop) {
  trace::start_from_env("worker pid " + std::to_string(::getpid()));
  Worker worker(options, stop);
  const int code = worker.run();
  trace::flush();
  return code;
}

}  // namespace sy
