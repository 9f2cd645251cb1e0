#include "switchyard/transport/inprocess.h"

#include <unistd.h>

#include <atomic>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <thread>
#include <unordered_map>

namespace sy::transport {

namespace {

enum class OpPhase { pending, done, failed };

struct OpState {
  OpPhase phase = OpPhase::pending;  // guarded by the fabric mutex
  size_t bytes = 0;
  StatusCode error_code = StatusCode::ok;
  std::string error;
};

// Endpoints are numbered by the fabric, never reused: a transport is one endpoint.
using EndpointId = uint64_t;

struct PostedSend {
  EndpointId source;
  Tag tag;
  const void* data;
  size_t bytes;
  std::shared_ptr<OpState> state;
};

struct PostedRecv {
  EndpointId source;
  Tag tag;
  void* data;
  size_t capacity;
  std::shared_ptr<OpState> state;
};

}  // namespace

// The registry of one process's in-process endpoints, by endpoint id (what addresses carry),
// with the unmatched sends and receives of each.
class InProcessFabric {
 public:
  explicit InProcessFabric(int world_size) : world_size_(world_size), id_(next_id_++) {}

  int world_size() const { return world_size_; }
  uint64_t id() const { return id_; }

  EndpointId open(Rank rank) {
    std::lock_guard<std::mutex> lock(mutex_);
    const EndpointId e = ++next_endpoint_;
    mailboxes_[e].rank = rank;
    return e;
  }

  // The rank of open endpoint `e`; false when it is closed or never existed.
  bool lookup(EndpointId e, Rank& rank) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = mailboxes_.find(e);
    if (it == mailboxes_.end()) return false;
    rank = it->second.rank;
    return true;
  }

  bool is_open(EndpointId e) {
    std::lock_guard<std::mutex> lock(mutex_);
    return mailboxes_.count(e) != 0;
  }

  // Returns the state of the new send (possibly already done or failed).
  std::shared_ptr<OpState> send(EndpointId source, EndpointId dest, Tag tag, const void* data, size_t bytes,
                                const std::string& dest_name) {
    auto state = std::make_shared<OpState>();
    std::lock_guard<std::mutex> lock(mutex_);
    auto box = mailboxes_.find(dest);
    if (box == mailboxes_.end()) {
      fail(*state, StatusCode::peer_failed, dest_name + " has closed its transport");
      return state;
    }
    auto& recvs = box->second.recvs;
    for (auto it = recvs.begin(); it != recvs.end(); ++it) {
      if (it->source == source && it->tag == tag) {
        deliver(data, bytes, *it, *state);
        recvs.erase(it);
        return state;
      }
    }
    box->second.sends.push_back(PostedSend{source, tag, data, bytes, state});
    return state;
  }

  std::shared_ptr<OpState> recv(EndpointId self, EndpointId source, Tag tag, void* data, size_t capacity,
                                const std::string& source_name) {
    auto state = std::make_shared<OpState>();
    std::lock_guard<std::mutex> lock(mutex_);
    Mailbox& box = mailboxes_.at(self);
    for (auto it = box.sends.begin(); it != box.sends.end(); ++it) {
      if (it->source == source && it->tag == tag) {
        PostedRecv r{source, tag, data, capacity, state};
        deliver(it->data, it->bytes, r, *it->state);
        box.sends.erase(it);
        return state;
      }
    }
    if (mailboxes_.count(source) == 0) {
      fail(*state, StatusCode::peer_failed, source_name + " has closed its transport");
      return state;
    }
    box.recvs.push_back(PostedRecv{source, tag, data, capacity, state});
    return state;
  }

  // Reads a state under the lock.
  OpState snapshot(const OpState& state) {
    std::lock_guard<std::mutex> lock(mutex_);
    return state;
  }

  // `self` stops talking to `peer`: its unmatched receives from and sends to `peer` fail with
  // `why`; what `peer` sent it and it did not receive is dropped, failing on `peer`'s side with
  // `why_peer`.
  void disconnect(EndpointId self, EndpointId peer, const std::string& why, const std::string& why_peer) {
    std::lock_guard<std::mutex> lock(mutex_);
    Mailbox& own = mailboxes_.at(self);
    for (auto it = own.recvs.begin(); it != own.recvs.end();) {
      if (it->source != peer) {
        ++it;
        continue;
      }
      fail(*it->state, StatusCode::peer_failed, why);
      it = own.recvs.erase(it);
    }
    for (auto it = own.sends.begin(); it != own.sends.end();) {
      if (it->source != peer) {
        ++it;
        continue;
      }
      fail(*it->state, StatusCode::peer_failed, why_peer);
      it = own.sends.erase(it);
    }
    auto other = mailboxes_.find(peer);
    if (other == mailboxes_.end()) return;
    for (auto it = other->second.sends.begin(); it != other->second.sends.end();) {
      if (it->source != self) {
        ++it;
        continue;
      }
      fail(*it->state, StatusCode::peer_failed, why);
      it = other->second.sends.erase(it);
    }
  }

  // Endpoint `e` is gone: its queued operations vanish, operations of others that involve it fail.
  void close(EndpointId e, const std::string& name) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto own = mailboxes_.find(e);
    if (own == mailboxes_.end()) return;
    for (PostedSend& s : own->second.sends) fail(*s.state, StatusCode::peer_failed, name + " closed before receiving");
    mailboxes_.erase(own);
    for (auto& [id, box] : mailboxes_) {
      for (auto it = box.sends.begin(); it != box.sends.end();) {
        if (it->source == e)
          it = box.sends.erase(it);  // the sender's buffer is gone
        else
          ++it;
      }
      for (auto it = box.recvs.begin(); it != box.recvs.end();) {
        if (it->source == e) {
          fail(*it->state, StatusCode::peer_failed, name + " closed its transport before sending");
          it = box.recvs.erase(it);
        } else {
          ++it;
        }
      }
    }
  }

  size_t open_endpoints() {
    std::lock_guard<std::mutex> lock(mutex_);
    return mailboxes_.size();
  }

 private:
  struct Mailbox {
    Rank rank = -1;
    std::deque<PostedSend> sends;  // unmatched sends addressed to this endpoint
    std::deque<PostedRecv> recvs;  // unmatched receives posted by this endpoint
  };

  static void fail(OpState& s, StatusCode code, std::string message) {
    s.phase = OpPhase::failed;
    s.error_code = code;
    s.error = std::move(message);
  }

  static void deliver(const void* data, size_t bytes, PostedRecv& r, OpState& send_state) {
    if (bytes > r.capacity) {
      fail(*r.state, StatusCode::truncated,
           "message of " + std::to_string(bytes) + " bytes for a receive of " + std::to_string(r.capacity));
    } else {
      if (bytes) std::memcpy(r.data, data, bytes);
      r.state->phase = OpPhase::done;
      r.state->bytes = bytes;
    }
    send_state.phase = OpPhase::done;
    send_state.bytes = bytes;
  }

  static inline std::atomic<uint64_t> next_id_{1};
  int world_size_;
  uint64_t id_;
  std::mutex mutex_;
  EndpointId next_endpoint_ = 0;
  std::unordered_map<EndpointId, Mailbox> mailboxes_;
};

std::shared_ptr<InProcessFabric> make_inprocess_fabric(int world_size) {
  if (world_size < 0) throw Error(ErrorKind::transport, "in-process fabric: world size must be >= 0");
  return std::make_shared<InProcessFabric>(world_size);
}

std::shared_ptr<InProcessFabric> default_inprocess_fabric() {
  static const std::shared_ptr<InProcessFabric> fabric = make_inprocess_fabric(0);
  return fabric;
}

size_t inprocess_fabric_endpoints(InProcessFabric& fabric) { return fabric.open_endpoints(); }

namespace {

class InProcessTransport final : public Transport {
 public:
  InProcessTransport(std::shared_ptr<InProcessFabric> fabric, const TransportOptions& options)
      : Transport(options), fabric_(std::move(fabric)) {
    if (!fabric_) throw Error(ErrorKind::transport, "in-process transport: no fabric");
    if (fabric_->world_size() != 0 && fabric_->world_size() != options.world_size)
      throw Error(ErrorKind::transport, "in-process transport: world size " + std::to_string(options.world_size) +
                                            " differs from the fabric's " + std::to_string(fabric_->world_size()));
    endpoint_ = fabric_->open(rank());
  }
  ~InProcessTransport() override { fabric_->close(endpoint_, describe_peer(rank())); }

  std::string_view name() const override { return "inprocess"; }
  bool supports(MemoryKind kind) const override { return kind == MemoryKind::host; }

  std::string local_address() const override {
    return pack_address(rank(), own_label(), fabric_prefix() + std::to_string(endpoint_));
  }

  Status connect_peer(Rank peer, std::string_view address) override {
    std::string body;
    if (Status s = accept_peer_address(peer, address, peers_.count(peer) != 0, body); !s) return s;
    const std::string prefix = fabric_prefix();
    EndpointId e = 0;
    Rank owner = -1;
    Status out;
    if (body.rfind(prefix, 0) != 0) {
      out = Status(StatusCode::unreachable,
                   "connect_peer: " + describe_peer(peer) + " has an address outside this process's in-process fabric");
    } else {
      try {
        e = std::stoull(body.substr(prefix.size()));
      } catch (const std::exception&) {
        e = 0;
      }
      if (e == 0) {
        out = Status(StatusCode::invalid_argument,
                     "connect_peer: malformed in-process address for " + describe_peer(peer));
      } else if (!fabric_->lookup(e, owner)) {
        out = Status(StatusCode::unreachable, "connect_peer: " + describe_peer(peer) + " has closed its transport");
      } else if (owner != peer) {
        out = Status(StatusCode::invalid_argument, "connect_peer: the endpoint given for rank " + std::to_string(peer) +
                                                       " belongs to rank " + std::to_string(owner));
      }
    }
    if (!out) {
      forget_peer_label(peer);
      return out;
    }
    peers_.emplace(peer, e);
    return Status::ok();
  }

  Status disconnect_peer(Rank peer) override {
    auto it = peers_.find(peer);
    if (it == peers_.end())
      return Status(StatusCode::unreachable, "disconnect_peer: " + describe_peer(peer) + " is not connected");
    const std::string why = describe_peer(peer) + " was disconnected";
    const std::string why_peer = describe_peer(rank()) + " disconnected from it before receiving";
    fabric_->disconnect(endpoint_, it->second, why, why_peer);
    peers_.erase(it);
    forget_peer_label(peer);
    return Status::ok();
  }

  bool can_reach(Rank peer) const override {
    auto it = peers_.find(peer);
    return it != peers_.end() && fabric_->is_open(it->second);
  }

  std::vector<Rank> peers() const override {
    std::vector<Rank> out;
    out.reserve(peers_.size());
    for (const auto& [r, e] : peers_) out.push_back(r);
    return out;
  }

  Result<MemoryRegion> register_memory(void* data, size_t bytes, MemoryKind kind) override {
    if (kind != MemoryKind::host) return Status(StatusCode::unsupported, "in-process transport moves host memory only");
    return MemoryRegion{data, bytes, kind, ++next_region_};
  }
  Status deregister_memory(MemoryRegion& region) override {
    region = MemoryRegion{};
    return Status::ok();
  }

  Result<RequestId> post_send(Rank peer, Tag tag, const void* data, size_t bytes, const MemoryRegion*) override {
    Result<EndpointId> e = check_post(peer);
    if (!e) return e.status();
    auto state = fabric_->send(endpoint_, *e, tag, data, bytes, describe_peer(peer));
    return add(Op{std::move(state), peer, tag, bytes, true});
  }

  Result<RequestId> post_recv(Rank peer, Tag tag, void* data, size_t capacity, const MemoryRegion*) override {
    Result<EndpointId> e = check_post(peer);
    if (!e) return e.status();
    auto state = fabric_->recv(endpoint_, *e, tag, data, capacity, describe_peer(peer));
    return add(Op{std::move(state), peer, tag, capacity, false});
  }

  void progress() override {}

  Result<Completion> test(RequestId request) override {
    auto it = ops_.find(request.value);
    if (it == ops_.end())
      return Status(StatusCode::invalid_argument, "test: unknown request " + std::to_string(request.value));
    const OpState s = fabric_->snapshot(*it->second.state);
    if (s.phase == OpPhase::pending) return Completion{false, 0};
    const std::string what = describe(it->second);
    ops_.erase(it);
    if (s.phase == OpPhase::failed) return Status(s.error_code, what + ": " + s.error);
    return Completion{true, s.bytes};
  }

  size_t outstanding_requests() const override { return ops_.size(); }

  std::string describe_request(RequestId request) const override {
    auto it = ops_.find(request.value);
    return it == ops_.end() ? "request " + std::to_string(request.value) + " (released)" : describe(it->second);
  }

 private:
  struct Op {
    std::shared_ptr<OpState> state;
    Rank peer;
    Tag tag;
    size_t bytes;
    bool is_send;
  };

  // "inprocess:<pid>/<fabric>/": addresses only mean something inside one process's fabric.
  std::string fabric_prefix() const {
    return "inprocess:" + std::to_string(getpid()) + "/" + std::to_string(fabric_->id()) + "/";
  }

  std::string describe(const Op& op) const {
    return std::string(op.is_send ? "send of " : "receive of up to ") + std::to_string(op.bytes) + " bytes " +
           (op.is_send ? "to " : "from ") + describe_peer(op.peer) + ", tag " + std::to_string(op.tag);
  }

  Result<EndpointId> check_post(Rank peer) const {
    if (Status s = check_peer(peer); !s) return s;
    auto it = peers_.find(peer);
    if (it == peers_.end()) return Status(StatusCode::unreachable, describe_peer(peer) + " is not connected");
    if (ops_.size() >= options().max_outstanding_requests)
      return Status(StatusCode::no_resource, std::to_string(ops_.size()) + " requests in flight; progress and retry");
    return it->second;
  }

  RequestId add(Op op) {
    const uint64_t id = ++next_request_;
    ops_.emplace(id, std::move(op));
    return RequestId{id};
  }

  std::shared_ptr<InProcessFabric> fabric_;
  EndpointId endpoint_ = 0;
  std::map<Rank, EndpointId> peers_;  // ordered: peers() ascending
  std::unordered_map<uint64_t, Op> ops_;
  uint64_t next_request_ = 0;
  uint64_t next_region_ = 0;
};

}  // namespace

std::unique_ptr<Transport> make_inprocess_transport(std::shared_ptr<InProcessFabric> fabric,
                                                    const TransportOptions& options) {
  return std::make_unique<InProcessTransport>(std::move(fabric), options);
}

}  // namespace sy::transport
