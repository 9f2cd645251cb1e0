#include "switchyard/transport/inprocess.h"

#include <atomic>
#include <cstring>
#include <deque>
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

struct PostedSend {
  Rank source;
  Tag tag;
  const void* data;
  size_t bytes;
  std::shared_ptr<OpState> state;
};

struct PostedRecv {
  Rank source;
  Tag tag;
  void* data;
  size_t capacity;
  std::shared_ptr<OpState> state;
};

}  // namespace

class InProcessFabric {
 public:
  explicit InProcessFabric(int world_size)
      : world_size_(world_size), id_(next_id_++), mailboxes_(static_cast<size_t>(world_size)) {}

  int world_size() const { return world_size_; }
  uint64_t id() const { return id_; }

  // Returns the state of the new send (possibly already done).
  std::shared_ptr<OpState> send(Rank source, Rank dest, Tag tag, const void* data, size_t bytes,
                                const std::string& dest_name) {
    auto state = std::make_shared<OpState>();
    std::lock_guard<std::mutex> lock(mutex_);
    Mailbox& box = mailboxes_[static_cast<size_t>(dest)];
    if (box.closed) {
      fail(*state, StatusCode::peer_failed, dest_name + " has closed its transport");
      return state;
    }
    for (auto it = box.recvs.begin(); it != box.recvs.end(); ++it) {
      if (it->source == source && it->tag == tag) {
        deliver(data, bytes, *it, *state);
        box.recvs.erase(it);
        return state;
      }
    }
    box.sends.push_back(PostedSend{source, tag, data, bytes, state});
    return state;
  }

  std::shared_ptr<OpState> recv(Rank self, Rank source, Tag tag, void* data, size_t capacity,
                                const std::string& source_name) {
    auto state = std::make_shared<OpState>();
    std::lock_guard<std::mutex> lock(mutex_);
    Mailbox& box = mailboxes_[static_cast<size_t>(self)];
    for (auto it = box.sends.begin(); it != box.sends.end(); ++it) {
      if (it->source == source && it->tag == tag) {
        PostedRecv r{source, tag, data, capacity, state};
        deliver(it->data, it->bytes, r, *it->state);
        box.sends.erase(it);
        return state;
      }
    }
    if (mailboxes_[static_cast<size_t>(source)].closed) {
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

  // Rank `rank` is gone: its queued operations vanish, operations of others that involve it fail.
  void close(Rank rank, const std::string& name) {
    std::lock_guard<std::mutex> lock(mutex_);
    Mailbox& own = mailboxes_[static_cast<size_t>(rank)];
    own.closed = true;
    for (PostedSend& s : own.sends) fail(*s.state, StatusCode::peer_failed, name + " closed before receiving");
    own.sends.clear();
    own.recvs.clear();
    for (size_t r = 0; r < mailboxes_.size(); ++r) {
      Mailbox& box = mailboxes_[r];
      for (auto it = box.sends.begin(); it != box.sends.end();) {
        if (it->source == rank) it = box.sends.erase(it);  // the sender's buffer is gone
        else ++it;
      }
      for (auto it = box.recvs.begin(); it != box.recvs.end();) {
        if (it->source == rank) {
          fail(*it->state, StatusCode::peer_failed, name + " closed its transport before sending");
          it = box.recvs.erase(it);
        } else {
          ++it;
        }
      }
    }
  }

 private:
  struct Mailbox {
    std::deque<PostedSend> sends;  // unmatched sends addressed to this rank
    std::deque<PostedRecv> recvs;  // unmatched receives posted by this rank
    bool closed = false;
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
  std::vector<Mailbox> mailboxes_;
};

std::shared_ptr<InProcessFabric> make_inprocess_fabric(int world_size) {
  if (world_size < 1) throw Error(ErrorKind::transport, "in-process fabric: world size must be >= 1");
  return std::make_shared<InProcessFabric>(world_size);
}

namespace {

class InProcessTransport final : public Transport {
 public:
  InProcessTransport(std::shared_ptr<InProcessFabric> fabric, const TransportOptions& options)
      : Transport(options), fabric_(std::move(fabric)) {
    if (!fabric_) throw Error(ErrorKind::transport, "in-process transport: no fabric");
    if (fabric_->world_size() != options.world_size)
      throw Error(ErrorKind::transport, "in-process transport: world size " + std::to_string(options.world_size) +
                                            " differs from the fabric's " + std::to_string(fabric_->world_size()));
    connected_.assign(static_cast<size_t>(world_size()), false);
  }
  ~InProcessTransport() override { fabric_->close(rank(), describe_peer(rank())); }

  std::string_view name() const override { return "inprocess"; }
  bool supports(MemoryKind kind) const override { return kind == MemoryKind::host; }

  std::string local_address() const override {
    return pack_address(own_label(), std::to_string(fabric_->id()) + "/" + std::to_string(rank()));
  }

  Status connect(const std::vector<std::string>& addresses) override {
    if (static_cast<int>(addresses.size()) != world_size())
      return Status(StatusCode::invalid_argument, "connect: " + std::to_string(addresses.size()) +
                                                      " addresses for a world of " + std::to_string(world_size()));
    for (int r = 0; r < world_size(); ++r) {
      std::string label, body;
      if (!unpack_address(addresses[static_cast<size_t>(r)], label, body) ||
          body != std::to_string(fabric_->id()) + "/" + std::to_string(r))
        return Status(StatusCode::unreachable,
                      "connect: " + describe_peer(r) + " has an address outside this process's fabric");
      set_peer_label(r, label);
      connected_[static_cast<size_t>(r)] = true;
    }
    return Status::ok();
  }

  bool can_reach(Rank peer) const override {
    return peer >= 0 && peer < world_size() && connected_[static_cast<size_t>(peer)];
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
    if (Status s = check_post(peer, tag); !s) return s;
    auto state = fabric_->send(rank(), peer, tag, data, bytes, describe_peer(peer));
    return add(Op{std::move(state), peer, tag, bytes, true});
  }

  Result<RequestId> post_recv(Rank peer, Tag tag, void* data, size_t capacity, const MemoryRegion*) override {
    if (Status s = check_post(peer, tag); !s) return s;
    auto state = fabric_->recv(rank(), peer, tag, data, capacity, describe_peer(peer));
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

  std::string describe(const Op& op) const {
    return std::string(op.is_send ? "send of " : "receive of up to ") + std::to_string(op.bytes) + " bytes " +
           (op.is_send ? "to " : "from ") + describe_peer(op.peer) + ", tag " + std::to_string(op.tag);
  }

  Status check_post(Rank peer, Tag tag) const {
    if (Status s = check_peer(peer); !s) return s;
    if (!can_reach(peer)) return Status(StatusCode::unreachable, describe_peer(peer) + " is not connected");
    if (ops_.size() >= options().max_outstanding_requests)
      return Status(StatusCode::no_resource, std::to_string(ops_.size()) + " requests in flight; progress and retry");
    (void)tag;
    return Status::ok();
  }

  RequestId add(Op op) {
    const uint64_t id = ++next_request_;
    ops_.emplace(id, std::move(op));
    return RequestId{id};
  }

  std::shared_ptr<InProcessFabric> fabric_;
  std::vector<bool> connected_;
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
