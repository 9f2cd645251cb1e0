#include "switchyard/worker/worker.h"

#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <thread>

#include "switchyard/wire/data_plane.h"
#include "switchyard/wire/wire.h"
#include "switchyard/core/config.h"
#include "switchyard/core/log.h"
#include "switchyard/placement/placement.h"
#include "switchyard/worker/expert_store.h"
#include "switchyard/engine/optimizer.h"
#include "switchyard/transport/control.h"
#include "switchyard/transport/rendezvous.h"
#include "switchyard/transport/ucx.h"

namespace sy {
namespace {

namespace pb = switchyard::cluster;
using namespace std::chrono_literals;
using cluster::OutgoingMessage;

// One attached client: its 2-rank transport and the header receive posted for its next request.
struct ClientConnection {
  uint32_t id = 0;
  std::string name;
  std::vector<char> header;  // declared before the transport: it outlives the receive posted into it
  std::unique_ptr<transport::Transport> transport;
  transport::RequestId header_request{};
  bool header_posted = false;
  bool dead = false;
};

struct PendingStep {
  ClientConnection* client;
  uint64_t request_id;
};

class Worker {
 public:
  Worker(const WorkerOptions& options, const std::atomic<bool>& stop) : options_(options), stop_(stop) {}

  int run() {
    // 1. Our control server: clients attach here.
    control::ControlServer::Options so;
    so.bind_address = options_.bind_host;
    so.name = "switchyard-worker";
    server_ = std::make_unique<control::ControlServer>(so);
    server_->on<pb::AttachRequest, pb::AttachReply>(
        [this](const pb::AttachRequest& req, const control::PeerInfo&) { return attach(req); });
    server_->start();

    // 2. Register with the coordinator.
    auto [host, port] = control::parse_endpoint(options_.coordinator);
    control::ControlClient::Options co;
    co.name = "worker pid " + std::to_string(::getpid());
    // Launchers start every rank at once: the coordinator may not listen yet. Retry for a minute.
    const auto connect_deadline = std::chrono::steady_clock::now() + 60s;
    for (;;) {
      auto c = control::ControlClient::connect(host, port, co);
      if (c.is_ok()) {
        coordinator_ = std::move(c).value();
        break;
      }
      if (std::chrono::steady_clock::now() > connect_deadline || stop_)
        cluster::check(c.status(), "worker: coordinator " + options_.coordinator);
      std::this_thread::sleep_for(200ms);
    }
    pb::RegisterWorkerRequest reg;
    reg.set_requested_id(options_.requested_id);
    reg.set_pid(static_cast<uint32_t>(::getpid()));
    reg.set_host(transport::default_process_label());
    reg.set_control_endpoint(server_->endpoint());
    const pb::RegisterWorkerReply r = cluster::check(
        coordinator_->call<pb::RegisterWorkerRequest, pb::RegisterWorkerReply>(reg), "worker: register with " + options_.coordinator);
    id_ = r.worker_id();
    label_ = "worker " + std::to_string(id_) + " (" + transport::default_process_label() + ")";
    heartbeat_ms_ = r.heartbeat_ms();
    ucx_.peer_error_handling = r.ucx_peer_failure();
    SY_LOG(info, "runtime", label_ << " registered with " << options_.coordinator << " (UCX peer failure detection "
                                   << (ucx_.peer_error_handling ? "requested" : "off") << ")");

    // 3. The workers' world, for reducing gradients among replicas.
    transport::TransportOptions to;
    to.rank = id_;
    to.world_size = r.workers_expected();
    to.label = label_;
    peers_ = transport::make_ucx_transport(to, ucx_);
    cluster::check(transport::bootstrap_transport(*peers_, *coordinator_, "workers-ucx", 120s),
                   label_ + ": joining the workers' data-plane world");

    // 4. Heartbeats on their own connection and thread.
    std::thread heartbeat([this] { heartbeat_loop(); });
    serve();
    heartbeat_stop_ = true;
    heartbeat.join();
    server_->stop();
    return 0;
  }

 private:
  transport::Result<pb::AttachReply> attach(const pb::AttachRequest& req) {
    auto conn = std::make_unique<ClientConnection>();
    transport::TransportOptions to;
    to.rank = 1;
    to.world_size = 2;
    to.label = label_;
    conn->transport = transport::make_ucx_transport(to, ucx_);
    const std::string own = conn->transport->local_address();
    transport::Status st = conn->transport->connect({req.client_address(), own});
    if (!st.is_ok()) return st;
    pb::AttachReply reply;
    reply.set_worker_address(own);
    std::lock_guard<std::mutex> lock(attach_mu_);
    conn->id = next_client_id_++;
    conn->name = req.client_name();
    reply.set_client_id(conn->id);
    attached_.push_back(std::move(conn));
    return reply;
  }

  void heartbeat_loop() {
    auto [host, port] = control::parse_endpoint(options_.coordinator);
    control::ControlClient::Options co;
    co.name = label_ + " heartbeat";
    auto client = control::ControlClient::connect(host, port, co);
    if (!client) {
      SY_LOG(error, "runtime", label_ << ": heartbeat connection failed: " << client.status().to_string());
      return;
    }
    while (!heartbeat_stop_) {
      pb::HeartbeatRequest hb;
      hb.set_worker_id(id_);
      hb.set_rows_forward(rows_forward_.load());
      hb.set_rows_backward(rows_backward_.load());
      hb.set_experts(experts_held_.load());
      hb.set_expert_bytes(expert_bytes_.load());
      hb.set_steps(steps_.load());
      auto reply = (*client)->call<pb::HeartbeatRequest, pb::HeartbeatReply>(hb);
      if (!reply) {
        SY_LOG(warn, "runtime", label_ << ": heartbeat failed: " << reply.status().to_string());
        if ((*client)->broken()) {
          coordinator_lost_ = true;
          return;
        }
      }
      for (uint32_t waited = 0; waited < heartbeat_ms_ && !heartbeat_stop_; waited += 10) std::this_thread::sleep_for(10ms);
    }
  }

  void serve() {
    auto idle_since = std::chrono::steady_clock::now();
    while (!stop_ && !coordinator_lost_) {
      {
        std::lock_guard<std::mutex> lock(attach_mu_);
        for (auto& c : attached_) clients_.push_back(std::move(c));
        attached_.clear();
      }
      bool busy = false;
      for (auto& c : clients_) {
        if (c->dead) continue;
        try {
          busy |= poll_client(*c);
        } catch (const Error& e) {
          SY_LOG(warn, "runtime", label_ << ": dropping client '" << c->name << "': " << e.what());
          c->dead = true;
        }
      }
      for (auto& [step, waiting] : pending_steps_)  // a departed client's step requests go with it
        std::erase_if(waiting, [](const PendingStep& p) { return p.client->dead; });
      std::erase_if(clients_, [](const std::unique_ptr<ClientConnection>& c) { return c->dead; });
      if (peers_) peers_->progress();
      // Busy-poll while there is traffic; back off when idle so several workers share few cores.
      const auto now = std::chrono::steady_clock::now();
      if (busy) idle_since = now;
      else if (now - idle_since > 2ms) std::this_thread::sleep_for(100us);
    }
    if (coordinator_lost_) SY_LOG(error, "runtime", label_ << ": lost the coordinator, shutting down");
  }

  // Progresses one client; handles a request when its header has arrived.
  bool poll_client(ClientConnection& c) {
    transport::Transport& t = *c.transport;
    if (!c.header_posted) {
      c.header.resize(cluster::kMaxHeaderBytes);
      c.header_request = cluster::post_recv(t, 0, cluster::kRequestTag, c.header.data(), c.header.size(), label_);
      c.header_posted = true;
    }
    t.progress();
    auto done = t.test(c.header_request);
    if (!done.is_ok()) throw Error(ErrorKind::transport, "client '" + c.name + "': " + done.status().to_string());
    if (!done->done) return false;
    c.header_posted = false;
    pb::WorkerRequest req;
    if (done->bytes == 0 || !req.ParseFromArray(c.header.data(), static_cast<int>(done->bytes)))
      throw Error(ErrorKind::transport, "client '" + c.name + "' sent a malformed request header (" +
                                            std::to_string(done->bytes) + " bytes)");
    handle(c, req);
    return true;
  }

  std::vector<char> receive_payload(ClientConnection& c, uint64_t bytes) {
    std::vector<char> payload(bytes);
    if (bytes == 0) return payload;
    auto rid = cluster::post_recv(*c.transport, 0, cluster::kRequestPayloadTag, payload.data(), bytes, label_);
    transport::Status st = c.transport->wait(rid, std::chrono::milliseconds(60000));
    if (!st.is_ok()) {
      // Close the endpoint while `payload` is alive: the receive may still be posted into it.
      c.transport.reset();
      c.dead = true;
      cluster::check(st, label_ + ": payload from client '" + c.name + "'");
    }
    return payload;
  }

  void reply(ClientConnection& c, uint64_t request_id, const std::string& error, const void* payload, size_t bytes,
             double compute_seconds = 0) {
    pb::WorkerReply rep;
    rep.set_compute_seconds(compute_seconds);
    rep.set_request_id(request_id);
    rep.set_error(error);
    rep.set_payload_bytes(error.empty() ? bytes : 0);
    OutgoingMessage out;
    out.post(*c.transport, 0, cluster::kReplyTag, cluster::kReplyPayloadTag, rep, payload, error.empty() ? bytes : 0,
             label_ + ": reply to '" + c.name + "'");
    cluster::check(c.transport->wait_all(out.requests, std::chrono::milliseconds(60000)),
                   label_ + ": reply to client '" + c.name + "'");
  }

  static ExpertKey key_of(const pb::Segment& s) { return {s.layer(), s.stage(), s.expert()}; }

  void handle(ClientConnection& c, const pb::WorkerRequest& req) {
    std::vector<char> payload = receive_payload(c, req.payload_bytes());
    std::vector<float> out;
    const auto compute_start = std::chrono::steady_clock::now();
    try {
      switch (req.op()) {
        case pb::WorkerRequest::LOAD_MODEL: load_model(req, payload); break;
        case pb::WorkerRequest::FORWARD: out = forward(c, req, payload); break;
        case pb::WorkerRequest::BACKWARD: out = backward(c, req, payload); break;
        case pb::WorkerRequest::STEP:
          pending_steps_[req.step()].push_back({&c, req.request_id()});
          if (pending_steps_[req.step()].size() >= std::max<uint32_t>(1, req.group_size())) step(req);
          return;  // replies go out in step()
        case pb::WorkerRequest::FETCH_GRADS: out = fetch_tensors(req, /*grads=*/true); break;
        case pb::WorkerRequest::FETCH_WEIGHTS: out = fetch_tensors(req, /*grads=*/false); break;
        case pb::WorkerRequest::ZERO_GRADS: require_store().zero_grads(); break;
        case pb::WorkerRequest::SAVE: require_store().save(checkpoint_path(req.path())); break;
        case pb::WorkerRequest::RESTORE: require_store().load(checkpoint_path(req.path())); break;
        case pb::WorkerRequest::DETACH:  // the client is leaving: no reply, forget it
          c.dead = true;
          SY_LOG(info, "runtime", label_ << ": client '" << c.name << "' detached");
          return;
        default: throw Error(ErrorKind::input, "unknown request op " + std::to_string(req.op()));
      }
    } catch (const std::exception& e) {
      reply(c, req.request_id(), label_ + ": " + e.what(), nullptr, 0);
      return;
    }
    reply(c, req.request_id(), "", out.data(), out.size() * sizeof(float),
          std::chrono::duration<double>(std::chrono::steady_clock::now() - compute_start).count());
  }

  ExpertStore& require_store() {
    if (!store_) throw Error(ErrorKind::input, "no model loaded on this worker");
    return *store_;
  }

  std::string checkpoint_path(const std::string& dir) const {
    return dir + "/worker-" + std::to_string(id_) + ".safetensors";
  }

  void load_model(const pb::WorkerRequest& req, const std::vector<char>& payload) {
    config_ = std::make_unique<Config>(load_config_string(req.model_yaml(), "model from client"));
    const ModelConfig& m = config_->model;
    auto store = std::make_unique<ExpertStore>(m);
    const std::span<const float> floats(reinterpret_cast<const float*>(payload.data()), payload.size() / sizeof(float));
    size_t off = 0;
    for (const pb::Segment& s : req.segments()) {
      const ExpertGeometry geometry = ExpertGeometry::of(m, s.stage());
      const size_t n = static_cast<size_t>(encoded_expert_floats(geometry, false));
      if (off + n > floats.size()) throw Error(ErrorKind::input, "LOAD_MODEL payload too short");
      store->add(key_of(s), decode_expert(geometry, floats.subspan(off, n), false, "LOAD_MODEL " + key_of(s).to_string()).weights);
      off += n;
    }
    if (off != floats.size() || payload.size() % sizeof(float) != 0)
      throw Error(ErrorKind::input, "LOAD_MODEL payload has trailing bytes");
    placement_ = wire::placement_from_pb(req.placement(), 0);
    store_ = std::move(store);
    forward_cache_.clear();
    experts_held_ = static_cast<uint32_t>(store_->keys().size());
    expert_bytes_ = static_cast<uint64_t>(store_->bytes());
    SY_LOG(info, "runtime", label_ << ": loaded " << experts_held_.load() << " expert replicas");
  }

  std::vector<float> forward(ClientConnection& c, const pb::WorkerRequest& req, const std::vector<char>& payload) {
    ExpertStore& store = require_store();
    const int64_t d = config_->model.hidden_size;
    const float* x = reinterpret_cast<const float*>(payload.data());
    int64_t total = 0;
    for (const pb::Segment& s : req.segments()) total += s.rows();
    if (static_cast<int64_t>(payload.size()) != total * d * static_cast<int64_t>(sizeof(float)))
      throw Error(ErrorKind::input, "FORWARD payload of " + std::to_string(payload.size()) + " bytes for " +
                                        std::to_string(total) + " rows of width " + std::to_string(d));
    std::vector<float> out(static_cast<size_t>(total * d));
    std::vector<uint64_t> ids;
    int64_t row = 0;
    for (const pb::Segment& s : req.segments()) {
      if (req.keep_for_backward()) {
        const uint64_t id = next_store_request_++;
        store.forward(key_of(s), id, x + row * d, s.rows(), out.data() + row * d);
        ids.push_back(id);
      } else {
        store.infer(key_of(s), x + row * d, s.rows(), out.data() + row * d);  // serving: keep nothing
      }
      row += s.rows();
    }
    if (req.keep_for_backward()) forward_cache_[{c.id, req.request_id()}] = std::move(ids);
    rows_forward_ += static_cast<uint64_t>(total);
    return out;
  }

  std::vector<float> backward(ClientConnection& c, const pb::WorkerRequest& req, const std::vector<char>& payload) {
    ExpertStore& store = require_store();
    auto it = forward_cache_.find({c.id, req.request_id()});
    if (it == forward_cache_.end())
      throw Error(ErrorKind::input, "BACKWARD for request " + std::to_string(req.request_id()) + " without its FORWARD");
    const int64_t d = config_->model.hidden_size;
    const float* g = reinterpret_cast<const float*>(payload.data());
    int64_t total = 0;
    for (const pb::Segment& s : req.segments()) total += s.rows();
    if (static_cast<int64_t>(payload.size()) != total * d * static_cast<int64_t>(sizeof(float)) ||
        it->second.size() != static_cast<size_t>(req.segments_size()))
      throw Error(ErrorKind::input, "BACKWARD does not match its FORWARD's layout");
    std::vector<float> out(static_cast<size_t>(total * d));
    int64_t row = 0;
    for (int i = 0; i < req.segments_size(); ++i) {
      const pb::Segment& s = req.segments(i);
      store.backward(key_of(s), it->second[static_cast<size_t>(i)], g + row * d, s.rows(), out.data() + row * d);
      row += s.rows();
    }
    forward_cache_.erase(it);
    rows_backward_ += static_cast<uint64_t>(total);
    return out;
  }

  // The gradients or weights of the listed experts, encoded one after the other (core/expert.h).
  std::vector<float> fetch_tensors(const pb::WorkerRequest& req, bool grads) {
    ExpertStore& store = require_store();
    std::vector<float> out;
    for (const pb::Segment& s : req.segments()) {
      const ExpertKey key = key_of(s);
      const ExpertGeometry geometry = ExpertGeometry::of(config_->model, key.stage);
      encode_expert(geometry, {grads ? store.grads(key) : store.weights(key), {}, 0}, false, out);
    }
    return out;
  }

  // Sum gradients among the replicas of each replicated expert held here, in worker-id order,
  // so every replica ends with bit-identical gradients (and therefore weights).
  void reduce_replicas() {
    int index = 0;
    for (const auto& [key, workers] : placement_.replicas) {
      ++index;
      if (workers.size() < 2 || !store_->holds(key)) continue;
      if (!peers_) throw Error(ErrorKind::transport, "the workers' data-plane world was closed after an earlier failure");
      TensorMap& g = store_->grads(key);
      std::vector<float> mine;
      for (const auto& [name, t] : g) mine.insert(mine.end(), t.values().begin(), t.values().end());
      std::map<int, std::vector<float>> all;
      std::vector<transport::RequestId> reqs;
      for (int w : workers) {
        if (w == id_) continue;
        all[w].resize(mine.size());
        reqs.push_back(cluster::post_send(*peers_, w, cluster::kReplicaReduceTagBase + static_cast<uint64_t>(index),
                                          mine.data(), mine.size() * sizeof(float), label_));
        reqs.push_back(cluster::post_recv(*peers_, w, cluster::kReplicaReduceTagBase + static_cast<uint64_t>(index),
                                          all[w].data(), mine.size() * sizeof(float), label_));
      }
      transport::Status st = peers_->wait_all(reqs, std::chrono::milliseconds(60000));
      if (!st.is_ok()) {
        // Close the workers' world while the buffers of the posted receives are alive; later
        // reductions then fail at once instead of racing stale messages.
        peers_.reset();
        cluster::check(st, label_ + ": reducing gradients of " + key.to_string() + " among its replicas");
      }
      all[id_] = std::move(mine);
      std::vector<float> sum(all.begin()->second.size(), 0.0f);
      for (const auto& [w, v] : all)  // ascending worker id on every replica
        for (size_t i = 0; i < v.size(); ++i) sum[i] += v[i];
      size_t off = 0;
      for (auto& [name, t] : g) {
        std::memcpy(t.data(), sum.data() + off, sizeof(float) * static_cast<size_t>(t.numel()));
        off += static_cast<size_t>(t.numel());
      }
    }
  }

  void step(const pb::WorkerRequest& req) {
    std::string error;
    try {
      ExpertStore& store = require_store();
      reduce_replicas();
      AdamWConfig cfg;
      cfg.lr = req.lr();
      cfg.beta1 = req.beta1();
      cfg.beta2 = req.beta2();
      cfg.eps = req.eps();
      cfg.weight_decay = req.weight_decay();
      store.step(cfg);
      ++steps_;
    } catch (const std::exception& e) {
      error = label_ + ": " + e.what();
    }
    for (const PendingStep& p : pending_steps_[req.step()]) reply(*p.client, p.request_id, error, nullptr, 0);
    pending_steps_.erase(req.step());
  }

  WorkerOptions options_;
  const std::atomic<bool>& stop_;
  std::unique_ptr<control::ControlServer> server_;
  std::unique_ptr<control::ControlClient> coordinator_;
  std::unique_ptr<transport::Transport> peers_;
  int id_ = -1;
  std::string label_ = "worker";
  uint32_t heartbeat_ms_ = 500;
  transport::UcxOptions ucx_;  // endpoint error mode, from the coordinator (cluster.ucx_peer_failure)
  std::atomic<bool> heartbeat_stop_{false}, coordinator_lost_{false};
  std::mutex attach_mu_;
  std::vector<std::unique_ptr<ClientConnection>> attached_;  // handed from the control thread
  std::vector<std::unique_ptr<ClientConnection>> clients_;   // owned by the serving thread
  uint32_t next_client_id_ = 1;
  std::unique_ptr<Config> config_;
  std::unique_ptr<ExpertStore> store_;
  Placement placement_;  // of the loaded model, for the replica reduction
  std::map<std::pair<uint32_t, uint64_t>, std::vector<uint64_t>> forward_cache_;
  std::map<uint64_t, std::vector<PendingStep>> pending_steps_;
  uint64_t next_store_request_ = 1;
  std::atomic<uint64_t> rows_forward_{0}, rows_backward_{0}, steps_{0}, expert_bytes_{0};
  std::atomic<uint32_t> experts_held_{0};
};

}  // namespace

int run_worker(const WorkerOptions& options, const std::atomic<bool>& stop) {
  Worker worker(options, stop);
  return worker.run();
}

}  // namespace sy
