#include "switchyard/transport/ucx.h"

#include <ucp/api/ucp.h>
#include <ucs/config/global_opts.h>

#include <chrono>
#include <cstdlib>
#include <map>
#include <unordered_map>

#include "switchyard/core/log.h"

namespace sy::transport {

namespace {

constexpr int kTagRankShift = 44;
constexpr uint64_t kTagMask = (uint64_t{1} << kTagRankShift) - 1;
// Receives compare every bit: the sender's id (top 20 bits) and the tag.
constexpr uint64_t kRecvTagMask = ~uint64_t{0};
static_assert((uint64_t{kMaxRank} << kTagRankShift) >> kTagRankShift == uint64_t{kMaxRank}, "ids fit the tag");

std::string ucx_error(const char* call, ucs_status_t status) {
  return std::string(call) + " failed: " + ucs_status_string(status);
}

// UCX 1.13's TCP transport handles a batch of up to UCX_TCP_MAX_POLL socket events per progress;
// when the first event of a batch fails a dying peer's endpoint, a later event of the same batch
// can name one of its TCP endpoints that the failure already closed, and UCX aborts the process
// (tcp_iface.c: "Assertion `ep->conn_state != UCT_TCP_EP_CONN_STATE_CLOSED' failed"; 19 of 850
// runs of UcxDeadPeer.TcpPeerExitIsReportedNamingIt here). One event per batch closes that window
// (0 of 1100 runs); progress loops until idle anyway. A UCX_TCP_MAX_POLL the user set is kept.
// ucp_config_modify hands keys it does not know to every transport's table without the table's
// prefix: "MAX_POLL" is the TCP one's field (the others are TX_, RX_ or FIFO_MAX_POLL);
// "TCP_MAX_POLL" is accepted and silently matches nothing.
constexpr const char* kTcpMaxPollField = "MAX_POLL";
constexpr const char* kTcpMaxPollValue = "1";

// Whether UCX_TLS (null: unset) lets UCX open its TCP transport. Only then is the setting made:
// a key no opened transport uses makes UCX warn "invalid configuration" (shared memory only).
bool tcp_may_be_selected(const char* tls) {
  if (!tls || !*tls) return true;
  const bool exclude = tls[0] == '^';
  bool named = false;
  std::string_view list(tls + (exclude ? 1 : 0));
  while (!list.empty()) {
    const size_t comma = list.find(',');
    std::string_view item = list.substr(0, comma);
    item = item.substr(0, item.find(':'));  // "tcp:aux" names tcp too
    named = named || item == "tcp" || (!exclude && item == "all");
    list = comma == std::string_view::npos ? std::string_view() : list.substr(comma + 1);
  }
  return exclude ? !named : named;
}

Status apply_tcp_poll_workaround(ucp_config_t* config) {
  if (std::getenv("UCX_TCP_MAX_POLL") || !tcp_may_be_selected(std::getenv("UCX_TLS"))) return Status::ok();
  ucs_status_t st = ucp_config_modify(config, kTcpMaxPollField, kTcpMaxPollValue);
  if (st != UCS_OK) return Status(StatusCode::internal, ucx_error("ucp_config_modify(MAX_POLL)", st));
  return Status::ok();
}

class UcxTransport;

struct PeerEndpoint {
  UcxTransport* owner = nullptr;
  Rank rank = -1;
  ucp_ep_h ep = nullptr;
  bool peer_failure_detection = false;  // endpoint created with UCP_ERR_HANDLING_MODE_PEER
  bool failed = false;
  bool closing = false;  // disconnect_peer closed it; the error callback ignores it from then on
  std::string failure;
};

class UcxTransport final : public Transport {
 public:
  UcxTransport(const TransportOptions& options, const UcxOptions& ucx) : Transport(options), ucx_(ucx) {
    ucp_config_t* config = nullptr;
    ucs_status_t st = ucp_config_read(nullptr, nullptr, &config);
    if (st != UCS_OK) throw Error(ErrorKind::transport, "ucx transport: " + ucx_error("ucp_config_read", st));
    if (Status s = apply_tcp_poll_workaround(config); !s) {
      ucp_config_release(config);
      throw Error(ErrorKind::transport, "ucx transport: " + s.message());
    }
    ucp_params_t params{};
    params.field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_NAME;
    params.features = UCP_FEATURE_TAG | UCP_FEATURE_WAKEUP;  // wait_for_events: ucp_worker_arm + its fd
    params.name = "switchyard";
    if (options.world_size > 0) {
      params.field_mask |= UCP_PARAM_FIELD_ESTIMATED_NUM_EPS;
      params.estimated_num_eps = static_cast<size_t>(options.world_size);
    }
    st = ucp_init(&params, config, &context_);
    ucp_config_release(config);
    if (st != UCS_OK) throw Error(ErrorKind::transport, "ucx transport: " + ucx_error("ucp_init", st));
    ucp_worker_params_t wp{};
    wp.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
    wp.thread_mode = UCS_THREAD_MODE_SINGLE;
    st = ucp_worker_create(context_, &wp, &worker_);
    if (st != UCS_OK) {
      ucp_cleanup(context_);
      throw Error(ErrorKind::transport, "ucx transport: " + ucx_error("ucp_worker_create", st));
    }
    if (ucs_status_t e = ucp_worker_get_efd(worker_, &efd_); e != UCS_OK) {
      SY_LOG(warn, "transport", "ucx: no event descriptor (" << ucs_status_string(e) << "); idle waits poll instead");
      efd_ = -1;
    }
    ucp_address_t* address = nullptr;
    size_t length = 0;
    st = ucp_worker_get_address(worker_, &address, &length);
    if (st != UCS_OK) {
      ucp_worker_destroy(worker_);
      ucp_cleanup(context_);
      throw Error(ErrorKind::transport, "ucx transport: " + ucx_error("ucp_worker_get_address", st));
    }
    worker_address_.assign(reinterpret_cast<const char*>(address), length);
    ucp_worker_release_address(worker_, address);
  }

  ~UcxTransport() override {
    // Release requests still in flight: cancel receives, let sends be freed on completion.
    for (auto& [id, op] : ops_) {
      if (!op.request) continue;
      if (!op.is_send) ucp_request_cancel(worker_, op.request);
      ucp_request_free(op.request);
    }
    ops_.clear();
    for (auto& [r, peer] : peers_) {
      const bool force = peer->failed && peer->peer_failure_detection;
      start_close(std::move(peer), force);
    }
    peers_.clear();
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
    while (!closing_.empty() && std::chrono::steady_clock::now() < deadline) {
      ucp_worker_progress(worker_);
      reap_closed();
    }
    if (!closing_.empty())
      SY_LOG(warn, "transport", "ucx: closing " << closing_.size()
                                                << " endpoint(s) did not finish within 2 s; destroying the worker anyway");
    for (Closing& c : closing_) ucp_request_free(c.request);
    closing_.clear();
    for (auto& [id, memh] : regions_) ucp_mem_unmap(context_, memh);
    ucp_worker_destroy(worker_);
    ucp_cleanup(context_);
  }

  std::string_view name() const override { return "ucx"; }
  bool supports(MemoryKind kind) const override { return kind == MemoryKind::host; }

  std::string local_address() const override { return pack_address(rank(), own_label(), worker_address_); }

  Status connect_peer(Rank r, std::string_view address) override {
    std::string worker_bytes;
    if (Status s = accept_peer_address(r, address, peers_.count(r) != 0, worker_bytes); !s) return s;
    if (worker_bytes.empty()) {
      forget_peer_label(r);
      return Status(StatusCode::invalid_argument, "connect_peer: address of " + describe_peer(r) + " has no UCX worker address");
    }
    auto peer = std::make_unique<PeerEndpoint>();
    peer->owner = this;
    peer->rank = r;
    ucp_ep_params_t ep{};
    ep.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE;
    ep.address = reinterpret_cast<const ucp_address_t*>(worker_bytes.data());
    ep.err_mode = UCP_ERR_HANDLING_MODE_NONE;
    ucs_status_t st = UCS_ERR_UNREACHABLE;
    if (ucx_.peer_error_handling) {
      ep.field_mask |= UCP_EP_PARAM_FIELD_ERR_HANDLER;
      ep.err_mode = UCP_ERR_HANDLING_MODE_PEER;
      ep.err_handler.cb = &UcxTransport::on_endpoint_error;
      ep.err_handler.arg = peer.get();
      // A refusal here is expected for shared memory (see ucx.h); keep UCX from logging it
      // as an ERROR, we log the fallback ourselves.
      const ucs_log_level_t saved = ucs_global_opts.log_component.log_level;
      if (saved < UCS_LOG_LEVEL_DEBUG) ucs_global_opts.log_component.log_level = UCS_LOG_LEVEL_FATAL;
      st = ucp_ep_create(worker_, &ep, &peer->ep);
      ucs_global_opts.log_component.log_level = saved;
      peer->peer_failure_detection = st == UCS_OK;
      if (st != UCS_OK)
        SY_LOG(info, "transport", "ucx: no transport to " << describe_peer(r)
                                                          << " detects peer failure; timeouts will catch a dead peer");
    }
    if (st != UCS_OK) {
      ep.field_mask &= ~static_cast<uint64_t>(UCP_EP_PARAM_FIELD_ERR_HANDLER);
      ep.err_mode = UCP_ERR_HANDLING_MODE_NONE;
      st = ucp_ep_create(worker_, &ep, &peer->ep);
    }
    if (st != UCS_OK) {
      Status out(StatusCode::unreachable, "connect_peer: no UCX transport reaches " + describe_peer(r) + ": " +
                                              ucx_error("ucp_ep_create", st) + " (UCX_TLS decides which are tried)");
      forget_peer_label(r);
      return out;
    }
    peers_.emplace(r, std::move(peer));
    return Status::ok();
  }

  Status disconnect_peer(Rank r) override {
    auto it = peers_.find(r);
    if (it == peers_.end()) return Status(StatusCode::unreachable, "disconnect_peer: " + describe_peer(r) + " is not connected");
    PeerEndpoint& peer = *it->second;
    const std::string why = describe_peer(r) + (peer.failed ? " failed (" + peer.failure + ")" : " was disconnected");
    // Its requests fail from now on; receives are cancelled (a receive is not tied to the
    // endpoint), sends end when the endpoint's close releases them.
    bool sends_in_flight = false;
    for (auto& [id, op] : ops_) {
      if (op.peer != r || op.orphaned) continue;
      op.orphaned = true;
      if (op.request && op.is_send) sends_in_flight = true;
      op.failure = describe(op) + ": " + why;
      if (op.request && !op.is_send && !op.cancelled) {
        ucp_request_cancel(worker_, op.request);
        op.cancelled = true;
      }
    }
    std::unique_ptr<PeerEndpoint> owned = std::move(it->second);
    peers_.erase(it);
    // Forced when something must be cut (a failed peer, sends to cancel), which UCX allows only
    // with peer error handling; otherwise flushed, as in the destructor.
    const bool force = owned->peer_failure_detection && (owned->failed || sends_in_flight);
    start_close(std::move(owned), force);
    forget_peer_label(r);
    return Status::ok();
  }

  bool can_reach(Rank peer) const override {
    auto it = peers_.find(peer);
    return it != peers_.end() && !it->second->failed;
  }

  std::vector<Rank> peers() const override {
    std::vector<Rank> out;
    out.reserve(peers_.size());
    for (const auto& [r, p] : peers_) out.push_back(r);
    return out;
  }

  Result<MemoryRegion> register_memory(void* data, size_t bytes, MemoryKind kind) override {
    if (kind != MemoryKind::host) return Status(StatusCode::unsupported, "ucx transport: host memory only");
    ucp_mem_map_params_t p{};
    p.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH;
    p.address = data;
    p.length = bytes;
    ucp_mem_h memh = nullptr;
    const ucs_status_t st = ucp_mem_map(context_, &p, &memh);
    if (st != UCS_OK) return Status(StatusCode::internal, "register_memory of " + std::to_string(bytes) + " bytes: " +
                                                              ucx_error("ucp_mem_map", st));
    const uint64_t id = ++next_region_;
    regions_.emplace(id, memh);
    return MemoryRegion{data, bytes, kind, id};
  }

  Status deregister_memory(MemoryRegion& region) override {
    auto it = regions_.find(region.handle);
    if (it == regions_.end()) return Status(StatusCode::invalid_argument, "deregister_memory: unknown region");
    const ucs_status_t st = ucp_mem_unmap(context_, it->second);
    regions_.erase(it);
    region = MemoryRegion{};
    if (st != UCS_OK) return Status(StatusCode::internal, ucx_error("ucp_mem_unmap", st));
    return Status::ok();
  }

  Result<RequestId> post_send(Rank peer, Tag tag, const void* data, size_t bytes, const MemoryRegion* region) override {
    Result<PeerEndpoint*> p = check_post(peer, tag);
    if (!p) return p.status();
    ucp_request_param_t params{};
    set_memh(params, region, data, bytes);
    const ucp_tag_t wire_tag = (static_cast<uint64_t>(rank()) << kTagRankShift) | tag;
    ucs_status_ptr_t r = ucp_tag_send_nbx((*p)->ep, data, bytes, wire_tag, &params);
    return add(Op{UCS_PTR_IS_PTR(r) ? r : nullptr, UCS_PTR_STATUS(r), 0, peer, tag, bytes, true, false, false, {}});
  }

  Result<RequestId> post_recv(Rank peer, Tag tag, void* data, size_t capacity, const MemoryRegion* region) override {
    Result<PeerEndpoint*> p = check_post(peer, tag);
    if (!p) return p.status();
    ucp_request_param_t params{};
    set_memh(params, region, data, capacity);
    ucp_tag_recv_info_t info{};
    params.op_attr_mask |= UCP_OP_ATTR_FIELD_RECV_INFO;
    params.recv_info.tag_info = &info;
    // Always complete through a request: UCX 1.13 reported a length of 0 for some receives
    // that completed inside ucp_tag_recv_nbx (message already in the unexpected queue), seen
    // as empty request headers under load. The request path reports the length reliably.
    params.op_attr_mask |= UCP_OP_ATTR_FLAG_NO_IMM_CMPL;
    // The full mask: the sender's id bits select this peer's messages only.
    const ucp_tag_t wire_tag = (static_cast<uint64_t>(peer) << kTagRankShift) | tag;
    ucs_status_ptr_t r = ucp_tag_recv_nbx(worker_, data, capacity, wire_tag, kRecvTagMask, &params);
    return add(Op{UCS_PTR_IS_PTR(r) ? r : nullptr, UCS_PTR_STATUS(r), info.length, peer, tag, capacity, false, false,
                  false, {}});
  }

  void progress() override {
    while (ucp_worker_progress(worker_) != 0) {
    }
    if (!closing_.empty()) reap_closed();
  }

  int event_fd() const override { return efd_; }
  bool arm() override {
    if (!closing_.empty()) return false;  // endpoints closing: keep progressing them
    return ucp_worker_arm(worker_) == UCS_OK;  // UCS_ERR_BUSY: events pending
  }

  Result<Completion> test(RequestId request) override {
    auto it = ops_.find(request.value);
    if (it == ops_.end())
      return Status(StatusCode::invalid_argument, "test: unknown request " + std::to_string(request.value));
    Op& op = it->second;
    ucs_status_t st = op.status;
    size_t length = op.length;
    const PeerEndpoint* peer = op.orphaned ? nullptr : find_peer(op.peer);
    if (op.request) {
      if (op.is_send) {
        st = ucp_request_check_status(op.request);
      } else {
        ucp_tag_recv_info_t info{};
        st = ucp_tag_recv_request_test(op.request, &info);
        length = info.length;
      }
      if (st == UCS_INPROGRESS) {
        if (peer && peer->failed && !op.is_send && !op.cancelled) {
          ucp_request_cancel(worker_, op.request);  // completes with UCS_ERR_CANCELED on progress
          op.cancelled = true;
        }
        return Completion{false, 0};
      }
      ucp_request_free(op.request);
      op.request = nullptr;
    }
    const Op done = std::move(op);
    ops_.erase(it);
    if (st == UCS_OK) return Completion{true, length};
    if (st == UCS_ERR_MESSAGE_TRUNCATED)
      return Status(StatusCode::truncated, describe(done) + ": the message was longer than the receive buffer");
    if (done.orphaned) return Status(StatusCode::peer_failed, done.failure + " (" + ucs_status_string(st) + ")");
    const bool failed = peer && peer->failed;
    if (failed || st == UCS_ERR_CANCELED || st == UCS_ERR_CONNECTION_RESET || st == UCS_ERR_ENDPOINT_TIMEOUT ||
        st == UCS_ERR_UNREACHABLE)
      return Status(StatusCode::peer_failed, describe(done) + ": " + describe_peer(done.peer) + " failed (" +
                                                 (failed ? peer->failure : ucs_status_string(st)) + ")");
    return Status(StatusCode::internal, describe(done) + ": " + ucs_status_string(st));
  }

  size_t outstanding_requests() const override { return ops_.size(); }

  std::string describe_request(RequestId request) const override {
    auto it = ops_.find(request.value);
    return it == ops_.end() ? "request " + std::to_string(request.value) + " (released)" : describe(it->second);
  }

 private:
  struct Op {
    void* request;         // nullptr when it completed (or failed) immediately
    ucs_status_t status;   // immediate status
    size_t length;         // immediate receive length
    Rank peer;
    Tag tag;
    size_t bytes;
    bool is_send;
    bool cancelled;
    bool orphaned;         // its peer was disconnected: it ends as peer_failed with `failure`
    std::string failure;
  };

  // An endpoint being closed: kept (with its PeerEndpoint, the error callback's argument) until
  // UCX completes the close.
  struct Closing {
    std::unique_ptr<PeerEndpoint> peer;
    void* request;
  };

  static void on_endpoint_error(void* arg, ucp_ep_h, ucs_status_t status) {
    auto* peer = static_cast<PeerEndpoint*>(arg);
    if (peer->failed || peer->closing) return;
    peer->failed = true;
    peer->failure = ucs_status_string(status);
    SY_LOG(warn, "transport", "ucx: " << peer->owner->describe_peer(peer->rank) << " failed: " << peer->failure);
  }

  // Starts closing `peer`'s endpoint: forced (its sends complete as cancelled, no word from the
  // peer awaited) or flushed (sends in flight complete first).
  void start_close(std::unique_ptr<PeerEndpoint> peer, bool force) {
    if (!peer->ep) return;
    peer->closing = true;
    ucp_request_param_t p{};
    p.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
    p.flags = force ? UCP_EP_CLOSE_FLAG_FORCE : 0;
    ucs_status_ptr_t r = ucp_ep_close_nbx(peer->ep, &p);
    peer->ep = nullptr;
    if (UCS_PTR_IS_PTR(r)) closing_.push_back(Closing{std::move(peer), r});
  }

  void reap_closed() {
    for (size_t i = 0; i < closing_.size();) {
      if (ucp_request_check_status(closing_[i].request) == UCS_INPROGRESS) {
        ++i;
        continue;
      }
      ucp_request_free(closing_[i].request);
      closing_[i] = std::move(closing_.back());
      closing_.pop_back();
    }
  }

  const PeerEndpoint* find_peer(Rank r) const {
    auto it = peers_.find(r);
    return it == peers_.end() ? nullptr : it->second.get();
  }

  std::string describe(const Op& op) const {
    return std::string(op.is_send ? "send of " : "receive of up to ") + std::to_string(op.bytes) + " bytes " +
           (op.is_send ? "to " : "from ") + describe_peer(op.peer) + ", tag " + std::to_string(op.tag);
  }

  void set_memh(ucp_request_param_t& p, const MemoryRegion* region, const void* data, size_t bytes) const {
    if (!region || !region->covers(data, bytes)) return;
    auto it = regions_.find(region->handle);
    if (it == regions_.end()) return;
    p.op_attr_mask |= UCP_OP_ATTR_FIELD_MEMH;
    p.memh = it->second;
  }

  Result<PeerEndpoint*> check_post(Rank peer, Tag tag) const {
    if (Status s = check_peer(peer); !s) return s;
    if (tag > kTagMask) return Status(StatusCode::invalid_argument, "tag " + std::to_string(tag) + " is above 2^44");
    auto it = peers_.find(peer);
    if (it == peers_.end()) return Status(StatusCode::unreachable, describe_peer(peer) + " is not connected");
    PeerEndpoint* p = it->second.get();
    if (p->failed) return Status(StatusCode::peer_failed, describe_peer(peer) + " failed earlier: " + p->failure);
    if (ops_.size() >= options().max_outstanding_requests)
      return Status(StatusCode::no_resource, std::to_string(ops_.size()) + " requests in flight; progress and retry");
    return p;
  }

  Result<RequestId> add(Op op) {
    if (!op.request && op.status != UCS_OK && op.status != UCS_INPROGRESS) {
      // Failed at post time: report now, naming the peer.
      const std::string what = describe(op);
      return Status(op.status == UCS_ERR_NO_RESOURCE ? StatusCode::no_resource : StatusCode::peer_failed,
                    what + ": " + ucs_status_string(op.status));
    }
    const uint64_t id = ++next_request_;
    ops_.emplace(id, std::move(op));
    return RequestId{id};
  }

  UcxOptions ucx_;
  ucp_context_h context_ = nullptr;
  ucp_worker_h worker_ = nullptr;
  int efd_ = -1;  // ucp_worker_get_efd: readable when the worker has events (UCP_FEATURE_WAKEUP)
  std::string worker_address_;
  std::map<Rank, std::unique_ptr<PeerEndpoint>> peers_;  // ordered: peers() ascending
  std::vector<Closing> closing_;
  std::unordered_map<uint64_t, Op> ops_;
  std::unordered_map<uint64_t, ucp_mem_h> regions_;
  uint64_t next_request_ = 0;
  uint64_t next_region_ = 0;
};

}  // namespace

std::unique_ptr<Transport> make_ucx_transport(const TransportOptions& options, const UcxOptions& ucx) {
  return std::make_unique<UcxTransport>(options, ucx);
}

}  // namespace sy::transport
