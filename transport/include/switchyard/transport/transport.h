// The data-plane transport: one interface, three implementations (UCX, NCCL, in-process).
//
// A `Transport` is one process's endpoint on the data plane: one per process (UCX: one
// ucp_context + one ucp_worker), named by a cluster-wide id (`TransportOptions::rank`), with
// endpoints to other processes created and closed as they join and leave. Two ways to use it,
// on the same object:
//
//   * a fixed world: `world_size` > 0 makes ranks 0..world_size-1 a group (workers, say).
//     Publish `local_address()` to every member over the control channel (rendezvous.h does
//     this all-gather) and call `connect(all_addresses)`; the collectives run over this group.
//   * dynamic peers: `connect_peer(id, address)` when a process joins, `disconnect_peer(id)`
//     when it leaves. Any id up to `kMaxRank`, inside or outside the fixed world
//     (`world_size` 0: no fixed world, peers only this way; a client, say).
//
// Then move bytes: point to point with `post_send` / `post_recv` + `progress` + `test`/`wait`,
// or collectively (fixed world only) with the two-phase all-to-all-v `exchange_counts` then
// `exchange_rows`. make_transport (factory.h) builds any backend by name.
//
// Rules every implementation keeps:
//   * Nothing blocks without a deadline. `post_*` never block; when too many requests are in
//     flight they return `StatusCode::no_resource` and the caller progresses and retries
//     (UCX's UCS_ERR_NO_RESOURCE discipline). `wait*` and the collectives take a timeout.
//   * A dead peer or a timeout is an error that names the peer: "rank 1 (node7:pid 4242)".
//   * Point-to-point messages between one (sender, receiver, tag) triple match in posting order.
//     A receive from peer P matches only P's sends. A message from a process this transport has
//     no endpoint to (not yet connected, or disconnected) matches nothing and harms nothing; it
//     waits, and is received if that sender is connected later under the same id.
//     User tags are below `kMaxUserTag`; tags above it are reserved for the collectives.
//   * Ids are unique in the cluster and never reused for another process while transports that
//     knew the old holder live: a late message of the old holder would match the new one.
//   * Collectives are called by every rank of the fixed world in the same order (as in MPI and
//     NCCL).
//   * A Transport is used by one thread at a time; different processes' transports may live on
//     different threads of one process (the in-process backend and the UCX tests do that), or
//     one thread may drive several.
//   * After an error from a collective the transport may still hold requests that reference
//     the caller's buffers; destroy the transport (which cancels them) before freeing those.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "switchyard/transport/status.h"

namespace sy::transport {

using Rank = int;
using Tag = uint64_t;
using Timeout = std::chrono::milliseconds;

// Tags at or above this are reserved for collectives.
inline constexpr Tag kMaxUserTag = (Tag{1} << 40) - 1;
// Process ids are 0..kMaxRank (UCX carries the sender's id in the top 20 bits of its tags).
inline constexpr Rank kMaxRank = (1 << 20) - 1;

enum class MemoryKind : uint8_t { host, cuda };
const char* memory_kind_name(MemoryKind kind);

// A memory range registered with one transport (UCX: ucp_mem_map; in-process: bookkeeping only;
// NCCL: none needed). Passing a region that covers a send or receive lets the backend skip its
// registration cache; it is always optional.
struct MemoryRegion {
  void* data = nullptr;
  size_t bytes = 0;
  MemoryKind kind = MemoryKind::host;
  uint64_t handle = 0;  // backend-private; 0 means not registered

  bool covers(const void* p, size_t n) const {
    const auto* b = static_cast<const std::byte*>(data);
    const auto* q = static_cast<const std::byte*>(p);
    return handle != 0 && q >= b && q + n <= b + bytes;
  }
};

// Handle of one posted send or receive; valid until `test` reports it done or failed.
struct RequestId {
  uint64_t value = 0;
};

// Result of `test`: `done` false means still in flight. For a receive, `bytes` is the length
// of the message that arrived (<= the posted capacity).
struct Completion {
  bool done = false;
  size_t bytes = 0;
};

struct TransportOptions {
  // This process's id, unique in the cluster: 0..kMaxRank. Inside the fixed world when there is
  // one (rank < world_size).
  Rank rank = 0;
  // Size of the fixed world (ranks 0..world_size-1: `connect(addresses)` and the collectives);
  // 0 for a dynamic transport, which has only the peers `connect_peer` gives it.
  int world_size = 1;
  // How peers name this process in their errors; empty means "<hostname>:pid <pid>".
  std::string label;
  // Backpressure: post_send/post_recv return no_resource beyond this many requests in flight.
  size_t max_outstanding_requests = 4096;
};

// The layout of one all-to-all-v, learnt by `exchange_counts`: how many rows this rank sends to
// and receives from every rank, and where those rows sit in the caller's packed buffers (rows for
// or from rank r are contiguous, ranks in increasing order). Like DeepEP's dispatch handle, the
// same layout drives the reverse movement (combine, and backward) via `reversed()`; nothing is
// renegotiated.
class ExchangeLayout {
 public:
  ExchangeLayout() = default;
  ExchangeLayout(std::vector<int64_t> send_rows, std::vector<int64_t> recv_rows);

  int world_size() const { return static_cast<int>(send_rows_.size()); }
  int64_t send_rows(Rank peer) const { return send_rows_.at(static_cast<size_t>(peer)); }
  int64_t recv_rows(Rank peer) const { return recv_rows_.at(static_cast<size_t>(peer)); }
  int64_t send_offset(Rank peer) const { return send_offsets_.at(static_cast<size_t>(peer)); }  // in rows
  int64_t recv_offset(Rank peer) const { return recv_offsets_.at(static_cast<size_t>(peer)); }  // in rows
  int64_t total_send_rows() const { return send_offsets_.empty() ? 0 : send_offsets_.back(); }
  int64_t total_recv_rows() const { return recv_offsets_.empty() ? 0 : recv_offsets_.back(); }
  const std::vector<int64_t>& send_rows() const { return send_rows_; }
  const std::vector<int64_t>& recv_rows() const { return recv_rows_; }
  // Swaps send and receive sides: the layout of sending the received rows back.
  ExchangeLayout reversed() const { return ExchangeLayout(recv_rows_, send_rows_); }

 private:
  std::vector<int64_t> send_rows_, recv_rows_;
  std::vector<int64_t> send_offsets_, recv_offsets_;  // world_size + 1 prefix sums
};

// Caller-owned buffers of one `exchange_rows`. `send` holds layout.total_send_rows() rows,
// `recv` has room for layout.total_recv_rows() rows; both of `row_bytes` bytes per row and of
// memory `kind`. Regions, when given, must cover the buffers.
struct ExchangeBuffers {
  const void* send = nullptr;
  void* recv = nullptr;
  size_t row_bytes = 0;
  MemoryKind kind = MemoryKind::host;
  const MemoryRegion* send_region = nullptr;
  const MemoryRegion* recv_region = nullptr;
};

class Transport {
 public:
  explicit Transport(const TransportOptions& options);
  virtual ~Transport();
  Transport(const Transport&) = delete;
  Transport& operator=(const Transport&) = delete;

  virtual std::string_view name() const = 0;  // "ucx", "nccl", "inprocess"
  Rank rank() const { return rank_; }
  int world_size() const { return world_size_; }
  virtual bool supports(MemoryKind kind) const = 0;

  // ---- bootstrap and peers ------------------------------------------------------------------
  // This process's address: opaque bytes (carrying its id and label) for peers' `connect_peer`
  // or `connect`.
  virtual std::string local_address() const = 0;
  // Fixed world: imports every rank's address (index = rank, this rank's own included) and
  // creates the endpoints it lacks (`connect_peer` for each). invalid_argument without a fixed
  // world or with a wrong count; fails naming the peer whose address is malformed, of another
  // id, or unreachable.
  virtual Status connect(const std::vector<std::string>& addresses);
  // Creates an endpoint to process `peer` from its `local_address()` (its own included: sends to
  // self work). invalid_argument when `peer` is already connected (nothing changes), out of
  // range, or the address is malformed or carries another id; unreachable when no transport
  // reaches it. NCCL: unsupported (fixed world only).
  virtual Status connect_peer(Rank peer, std::string_view address) = 0;
  // Closes the endpoint to `peer`. Its requests still in flight fail with peer_failed naming it
  // (receives are cancelled now; sends once the backend lets go of their buffers, see ucx.h);
  // `test` them as usual to release them. Messages it sent that were not received are dropped
  // or left unmatched. The id may be connected again (same process; see the rule on reuse).
  // unreachable when `peer` is not connected. NCCL: unsupported.
  virtual Status disconnect_peer(Rank peer) = 0;
  // True while an endpoint to `peer` exists and the peer has not failed since.
  virtual bool can_reach(Rank peer) const = 0;
  // Ids with an endpoint now (connected and not disconnected, failed ones included), ascending.
  virtual std::vector<Rank> peers() const = 0;
  // "rank 1 (node7:pid 4242)": how errors name a peer (the label while it is connected).
  std::string describe_peer(Rank peer) const;

  // ---- memory ----------------------------------------------------------------------------
  virtual Result<MemoryRegion> register_memory(void* data, size_t bytes, MemoryKind kind) = 0;
  virtual Status deregister_memory(MemoryRegion& region) = 0;

  // ---- point to point --------------------------------------------------------------------
  // Non-blocking. The buffer must stay valid until the request completes or fails. Receives
  // match sends from `peer` with the same `tag` in posting order; a message longer than
  // `capacity` fails the receive with `truncated`.
  virtual Result<RequestId> post_send(Rank peer, Tag tag, const void* data, size_t bytes,
                                      const MemoryRegion* region = nullptr) = 0;
  virtual Result<RequestId> post_recv(Rank peer, Tag tag, void* data, size_t capacity,
                                      const MemoryRegion* region = nullptr) = 0;
  // Drives the backend (UCX: ucp_worker_progress). Cheap when there is nothing to do.
  virtual void progress() = 0;
  // Sleeps until the backend has something to progress (a message arrived, a send completed, a
  // peer failed), one of `wake_fds` is readable (a process's own eventfd, say), or `timeout`
  // passes; call it after progress() and test() found nothing to do. True when an event (not
  // the timeout) ended it. UCX: ucp_worker_arm, then poll on ucp_worker_get_efd. Backends
  // without an event descriptor (`has_events()` false) sleep min(timeout, 50 µs) instead.
  bool wait_for_events(std::chrono::microseconds timeout, std::span<const int> wake_fds = {});
  bool has_events() const { return event_fd() >= 0; }
  // Done, still pending, or the error that ended it (naming the peer). A done or failed
  // request is released: its id must not be tested again.
  virtual Result<Completion> test(RequestId request) = 0;
  // Requests posted and not yet released by `test`.
  virtual size_t outstanding_requests() const = 0;
  // "send of 4096 bytes to rank 1 (node7:pid 4242), tag 7": for timeout messages.
  virtual std::string describe_request(RequestId request) const = 0;

  // Progresses until `request` completes or `timeout` passes (timeout error names the peer).
  Status wait(RequestId request, Timeout timeout);
  // Progresses until all complete; the first failure or a timeout (naming every peer still
  // pending) ends the wait. Completion lengths go to `bytes` when it is given.
  Status wait_all(std::span<const RequestId> requests, Timeout timeout, std::vector<size_t>* bytes = nullptr);

  // ---- collectives: all-to-all-v in two phases ---------------------------------------------
  // Over the fixed world only (invalid_argument without one).
  // Phase 1: every rank sends its per-destination row counts (`send_rows[r]` rows to rank r,
  // world_size entries, zeros allowed) and learns how many rows each rank will send it.
  virtual Result<ExchangeLayout> exchange_counts(std::span<const int64_t> send_rows, Timeout timeout);
  // Phase 2: moves the rows. Peers with zero rows exchange no message; rows to self are copied.
  virtual Status exchange_rows(const ExchangeLayout& layout, const ExchangeBuffers& buffers, Timeout timeout);
  // Both phases for host memory: resizes `recv` to the received rows and returns the layout.
  Result<ExchangeLayout> exchange(std::span<const int64_t> send_rows, const void* send, size_t row_bytes,
                                  std::vector<std::byte>& recv, Timeout timeout);

 protected:
  // Peer labels, learnt from addresses at `connect_peer`, forgotten at `disconnect_peer`
  // (backends call these).
  void set_peer_label(Rank peer, std::string label);
  void forget_peer_label(Rank peer);
  const std::string& own_label() const { return own_label_; }
  const TransportOptions& options() const { return options_; }
  Status check_peer(Rank peer) const;        // invalid_argument unless 0 <= peer <= kMaxRank
  Status check_world_rank(Rank peer) const;  // invalid_argument unless inside the fixed world
  // Unpacks `address` for `connect_peer(peer, ...)`: checks the range, that `peer` is not
  // already connected (`connected`), the format, and that the address carries `peer`'s id;
  // records the label. The backend bytes go to `backend_bytes`.
  Status accept_peer_address(Rank peer, std::string_view address, bool connected, std::string& backend_bytes);
  // Tags for the next collective: every rank advances the same counter in the same order.
  Tag next_collective_tag();
  // The descriptor wait_for_events polls, or -1 (none: it sleeps briefly instead).
  virtual int event_fd() const { return -1; }
  // Before sleeping on event_fd: true when armed (nothing pending), false when events are
  // already pending (progress first).
  virtual bool arm() { return false; }

 private:
  TransportOptions options_;
  Rank rank_;
  int world_size_;
  std::string own_label_;
  std::unordered_map<Rank, std::string> peer_labels_;
  uint64_t collective_sequence_ = 0;
};

// Names of the transports compiled into this build: "inprocess", "ucx", and "nccl" when CUDA
// and NCCL were found.
std::vector<std::string> compiled_transports();

// Small helpers for addresses: every backend's address starts with the process id and label so
// that a peer can check who it connects to and errors can name it. Layout: u32 id, u32 label
// length, label, backend bytes (integers little-endian).
std::string pack_address(Rank id, std::string_view label, std::string_view backend_bytes);
// False when `address` is malformed.
bool unpack_address(std::string_view address, Rank& id, std::string& label, std::string& backend_bytes);
// The id an address carries (a coordinator or worker learning who sent it); invalid_argument
// when malformed.
Result<Rank> address_rank(std::string_view address);

// "<hostname>:pid <pid>"
std::string default_process_label();

}  // namespace sy::transport
