#include "switchyard/transport/transport.h"

#include <poll.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <sstream>
#include <thread>

namespace sy::transport {

const char* memory_kind_name(MemoryKind kind) { return kind == MemoryKind::cuda ? "cuda" : "host"; }

ExchangeLayout::ExchangeLayout(std::vector<int64_t> send_rows, std::vector<int64_t> recv_rows)
    : send_rows_(std::move(send_rows)), recv_rows_(std::move(recv_rows)) {
  send_offsets_.assign(send_rows_.size() + 1, 0);
  recv_offsets_.assign(recv_rows_.size() + 1, 0);
  for (size_t i = 0; i < send_rows_.size(); ++i) send_offsets_[i + 1] = send_offsets_[i] + send_rows_[i];
  for (size_t i = 0; i < recv_rows_.size(); ++i) recv_offsets_[i + 1] = recv_offsets_[i] + recv_rows_[i];
}

std::string default_process_label() {
  char host[256] = {0};
  if (gethostname(host, sizeof(host) - 1) != 0) std::strcpy(host, "unknown-host");
  return std::string(host) + ":pid " + std::to_string(getpid());
}

namespace {

void put_u32(std::string& out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

uint32_t get_u32(std::string_view in, size_t at) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= static_cast<uint32_t>(static_cast<unsigned char>(in[at + static_cast<size_t>(i)])) << (8 * i);
  return v;
}

}  // namespace

std::string pack_address(Rank id, std::string_view label, std::string_view backend_bytes) {
  std::string out;
  out.reserve(8 + label.size() + backend_bytes.size());
  put_u32(out, static_cast<uint32_t>(id));
  put_u32(out, static_cast<uint32_t>(label.size()));
  out.append(label);
  out.append(backend_bytes);
  return out;
}

bool unpack_address(std::string_view address, Rank& id, std::string& label, std::string& backend_bytes) {
  if (address.size() < 8) return false;
  const uint32_t raw_id = get_u32(address, 0);
  const uint32_t n = get_u32(address, 4);
  if (raw_id > static_cast<uint32_t>(kMaxRank) || n > address.size() - 8) return false;
  id = static_cast<Rank>(raw_id);
  label.assign(address.substr(8, n));
  backend_bytes.assign(address.substr(8 + n));
  return true;
}

Result<Rank> address_rank(std::string_view address) {
  Rank id = 0;
  std::string label, body;
  if (!unpack_address(address, id, label, body))
    return Status(StatusCode::invalid_argument, "malformed transport address (" + std::to_string(address.size()) + " bytes)");
  return id;
}

Transport::Transport(const TransportOptions& options)
    : options_(options), rank_(options.rank), world_size_(options.world_size) {
  if (rank_ < 0 || rank_ > kMaxRank)
    throw Error(ErrorKind::transport, "transport: id " + std::to_string(rank_) + " is outside 0.." + std::to_string(kMaxRank));
  if (world_size_ < 0 || (world_size_ > 0 && rank_ >= world_size_))
    throw Error(ErrorKind::transport, "transport: rank " + std::to_string(rank_) + " is outside a world of " +
                                          std::to_string(world_size_));
  own_label_ = options.label.empty() ? default_process_label() : options.label;
}

Transport::~Transport() = default;

std::string Transport::describe_peer(Rank peer) const {
  std::string out = "rank " + std::to_string(peer);
  const std::string* label = nullptr;
  if (peer == rank_) {
    label = &own_label_;
  } else if (auto it = peer_labels_.find(peer); it != peer_labels_.end()) {
    label = &it->second;
  }
  if (label && !label->empty()) out += " (" + *label + ")";
  return out;
}

void Transport::set_peer_label(Rank peer, std::string label) {
  if (peer != rank_) peer_labels_[peer] = std::move(label);
}

void Transport::forget_peer_label(Rank peer) { peer_labels_.erase(peer); }

Status Transport::check_peer(Rank peer) const {
  if (peer < 0 || peer > kMaxRank)
    return Status(StatusCode::invalid_argument,
                  "rank " + std::to_string(peer) + " is outside the ids 0.." + std::to_string(kMaxRank));
  return Status::ok();
}

Status Transport::check_world_rank(Rank peer) const {
  if (peer < 0 || peer >= world_size_)
    return Status(StatusCode::invalid_argument,
                  "rank " + std::to_string(peer) + " is outside a world of " + std::to_string(world_size_));
  return Status::ok();
}

Status Transport::accept_peer_address(Rank peer, std::string_view address, bool connected, std::string& backend_bytes) {
  if (Status s = check_peer(peer); !s) return Status(s.code(), "connect_peer: " + s.message());
  if (connected) return Status(StatusCode::invalid_argument, "connect_peer: " + describe_peer(peer) + " is already connected");
  Rank id = 0;
  std::string label;
  if (!unpack_address(address, id, label, backend_bytes))
    return Status(StatusCode::invalid_argument, "connect_peer: malformed address for " + describe_peer(peer));
  if (id != peer)
    return Status(StatusCode::invalid_argument, "connect_peer: the address given for rank " + std::to_string(peer) +
                                                    " is that of rank " + std::to_string(id) + " (" + label + ")");
  set_peer_label(peer, std::move(label));
  return Status::ok();
}

Status Transport::connect(const std::vector<std::string>& addresses) {
  if (world_size_ == 0)
    return Status(StatusCode::invalid_argument, "connect: this transport has no fixed world (world_size 0); use connect_peer");
  if (static_cast<int>(addresses.size()) != world_size_)
    return Status(StatusCode::invalid_argument, "connect: " + std::to_string(addresses.size()) +
                                                    " addresses for a world of " + std::to_string(world_size_));
  const std::vector<Rank> have = peers();
  for (Rank r = 0; r < world_size_; ++r) {
    if (std::binary_search(have.begin(), have.end(), r)) continue;
    if (Status s = connect_peer(r, addresses[static_cast<size_t>(r)]); !s) {
      std::string m = s.message();
      if (m.rfind("connect_peer: ", 0) == 0) m = m.substr(14);
      return Status(s.code(), "connect: " + m);
    }
  }
  return Status::ok();
}

Tag Transport::next_collective_tag() {
  const Tag span = Tag{1} << 42;
  return kMaxUserTag + 1 + (collective_sequence_++ % span);
}

Status Transport::wait(RequestId request, Timeout timeout) {
  const RequestId one[1] = {request};
  return wait_all(one, timeout);
}

bool Transport::wait_for_events(std::chrono::microseconds timeout, std::span<const int> wake_fds) {
  const int fd = event_fd();
  if (fd < 0) {
    std::this_thread::sleep_for(std::min(timeout, std::chrono::microseconds(50)));
    return false;
  }
  if (!arm()) return true;  // pending already
  pollfd fds[8];
  nfds_t n = 0;
  fds[n++] = {fd, POLLIN, 0};
  for (int w : wake_fds)
    if (w >= 0 && n < 8) fds[n++] = {w, POLLIN, 0};
  const auto us = timeout.count();
  const timespec ts{static_cast<time_t>(us / 1000000), static_cast<long>((us % 1000000) * 1000)};
  int r;
  while ((r = ::ppoll(fds, n, &ts, nullptr)) < 0 && errno == EINTR) {
  }
  return r > 0;
}

Status Transport::wait_all(std::span<const RequestId> requests, Timeout timeout, std::vector<size_t>* bytes) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  std::vector<bool> done(requests.size(), false);
  if (bytes) bytes->assign(requests.size(), 0);
  size_t remaining = requests.size();
  uint64_t idle_rounds = 0;
  while (remaining > 0) {
    progress();
    bool advanced = false;
    for (size_t i = 0; i < requests.size(); ++i) {
      if (done[i]) continue;
      Result<Completion> c = test(requests[i]);
      if (!c) return c.status();
      if (c->done) {
        done[i] = true;
        --remaining;
        advanced = true;
        if (bytes) (*bytes)[i] = c->bytes;
      }
    }
    if (remaining == 0) break;
    if (advanced) {
      idle_rounds = 0;
      continue;
    }
    // Check the clock every few idle rounds; when idle for long, sleep on the backend's events
    // (or briefly) so that processes sharing a core (workers of a local cluster, threads of the
    // in-process backend) get it: the send this waits on completes when its peer progresses.
    if ((++idle_rounds & 63) == 0) {
      if (std::chrono::steady_clock::now() >= deadline) {
        std::ostringstream os;
        os << "timed out after " << timeout.count() << " ms with " << remaining << " request(s) pending:";
        int listed = 0;
        for (size_t i = 0; i < requests.size() && listed < 8; ++i)
          if (!done[i]) {
            os << (listed++ ? "; " : " ") << describe_request(requests[i]);
          }
        return Status(StatusCode::timeout, os.str());
      }
      if (idle_rounds > 256) (void)wait_for_events(std::chrono::milliseconds(1));
    }
  }
  return Status::ok();
}

Result<ExchangeLayout> Transport::exchange_counts(std::span<const int64_t> send_rows, Timeout timeout) {
  if (world_size_ == 0)
    return Status(StatusCode::invalid_argument, "exchange_counts: this transport has no fixed world (world_size 0)");
  if (static_cast<int>(send_rows.size()) != world_size_)
    return Status(StatusCode::invalid_argument, "exchange_counts: " + std::to_string(send_rows.size()) +
                                                    " counts for a world of " + std::to_string(world_size_));
  for (size_t r = 0; r < send_rows.size(); ++r)
    if (send_rows[r] < 0)
      return Status(StatusCode::invalid_argument, "exchange_counts: negative row count " +
                                                      std::to_string(send_rows[r]) + " for " +
                                                      describe_peer(static_cast<Rank>(r)));
  const Tag tag = next_collective_tag();
  std::vector<int64_t> recv_rows(static_cast<size_t>(world_size_), 0);
  recv_rows[static_cast<size_t>(rank_)] = send_rows[static_cast<size_t>(rank_)];
  std::vector<RequestId> requests;
  requests.reserve(2 * static_cast<size_t>(world_size_));
  for (int i = 1; i < world_size_; ++i) {
    const Rank peer = (rank_ + world_size_ - i) % world_size_;
    Result<RequestId> r = post_recv(peer, tag, &recv_rows[static_cast<size_t>(peer)], sizeof(int64_t));
    if (!r) return r.status();
    requests.push_back(*r);
  }
  for (int i = 1; i < world_size_; ++i) {
    const Rank peer = (rank_ + i) % world_size_;
    Result<RequestId> r = post_send(peer, tag, &send_rows[static_cast<size_t>(peer)], sizeof(int64_t));
    if (!r) return r.status();
    requests.push_back(*r);
  }
  if (Status s = wait_all(requests, timeout); !s) return Status(s.code(), "exchange_counts: " + s.message());
  for (int r = 0; r < world_size_; ++r)
    if (recv_rows[static_cast<size_t>(r)] < 0)
      return Status(StatusCode::protocol, "exchange_counts: " + describe_peer(r) + " announced a negative row count");
  return ExchangeLayout(std::vector<int64_t>(send_rows.begin(), send_rows.end()), std::move(recv_rows));
}

Status Transport::exchange_rows(const ExchangeLayout& layout, const ExchangeBuffers& buffers, Timeout timeout) {
  if (world_size_ == 0)
    return Status(StatusCode::invalid_argument, "exchange_rows: this transport has no fixed world (world_size 0)");
  if (layout.world_size() != world_size_)
    return Status(StatusCode::invalid_argument, "exchange_rows: layout is for a world of " +
                                                    std::to_string(layout.world_size()) + ", not " +
                                                    std::to_string(world_size_));
  if (!supports(buffers.kind))
    return Status(StatusCode::unsupported, std::string("exchange_rows: the ") + std::string(name()) +
                                               " transport does not move " + memory_kind_name(buffers.kind) +
                                               " memory");
  if (buffers.row_bytes == 0 && (layout.total_send_rows() > 0 || layout.total_recv_rows() > 0))
    return Status(StatusCode::invalid_argument, "exchange_rows: row_bytes is 0");
  if ((layout.total_send_rows() > 0 && !buffers.send) || (layout.total_recv_rows() > 0 && !buffers.recv))
    return Status(StatusCode::invalid_argument, "exchange_rows: null send or receive buffer");
  const Tag tag = next_collective_tag();
  const auto* send = static_cast<const std::byte*>(buffers.send);
  auto* recv = static_cast<std::byte*>(buffers.recv);
  const size_t rb = buffers.row_bytes;
  std::vector<RequestId> requests;
  std::vector<size_t> expected;
  std::vector<Rank> sources;
  requests.reserve(2 * static_cast<size_t>(world_size_));
  for (int i = 1; i < world_size_; ++i) {
    const Rank peer = (rank_ + world_size_ - i) % world_size_;
    const size_t n = static_cast<size_t>(layout.recv_rows(peer)) * rb;
    if (n == 0) continue;
    Result<RequestId> r = post_recv(peer, tag, recv + static_cast<size_t>(layout.recv_offset(peer)) * rb, n,
                                    buffers.recv_region);
    if (!r) return r.status();
    requests.push_back(*r);
    expected.push_back(n);
    sources.push_back(peer);
  }
  const size_t receives = requests.size();
  for (int i = 1; i < world_size_; ++i) {
    const Rank peer = (rank_ + i) % world_size_;
    const size_t n = static_cast<size_t>(layout.send_rows(peer)) * rb;
    if (n == 0) continue;
    Result<RequestId> r = post_send(peer, tag, send + static_cast<size_t>(layout.send_offset(peer)) * rb, n,
                                    buffers.send_region);
    if (!r) return r.status();
    requests.push_back(*r);
  }
  // Rows to self: a local copy while the network works.
  const size_t self_bytes = static_cast<size_t>(layout.send_rows(rank_)) * rb;
  if (self_bytes != static_cast<size_t>(layout.recv_rows(rank_)) * rb)
    return Status(StatusCode::invalid_argument, "exchange_rows: layout sends " +
                                                    std::to_string(layout.send_rows(rank_)) + " rows to self but receives " +
                                                    std::to_string(layout.recv_rows(rank_)));
  if (self_bytes > 0)
    std::memcpy(recv + static_cast<size_t>(layout.recv_offset(rank_)) * rb,
                send + static_cast<size_t>(layout.send_offset(rank_)) * rb, self_bytes);
  std::vector<size_t> got;
  if (Status s = wait_all(requests, timeout, &got); !s) return Status(s.code(), "exchange_rows: " + s.message());
  for (size_t i = 0; i < receives; ++i)
    if (got[i] != expected[i])
      return Status(StatusCode::protocol, "exchange_rows: " + describe_peer(sources[i]) + " sent " +
                                              std::to_string(got[i]) + " bytes, expected " + std::to_string(expected[i]));
  return Status::ok();
}

Result<ExchangeLayout> Transport::exchange(std::span<const int64_t> send_rows, const void* send, size_t row_bytes,
                                           std::vector<std::byte>& recv, Timeout timeout) {
  const auto start = std::chrono::steady_clock::now();
  Result<ExchangeLayout> layout = exchange_counts(send_rows, timeout);
  if (!layout) return layout;
  recv.resize(static_cast<size_t>(layout->total_recv_rows()) * row_bytes);
  const auto spent = std::chrono::duration_cast<Timeout>(std::chrono::steady_clock::now() - start);
  ExchangeBuffers buffers;
  buffers.send = send;
  buffers.recv = recv.data();
  buffers.row_bytes = row_bytes;
  if (Status s = exchange_rows(*layout, buffers, timeout > spent ? timeout - spent : Timeout(1)); !s) return s;
  return layout;
}

}  // namespace sy::transport

namespace sy::transport {

std::vector<std::string> compiled_transports() {
  std::vector<std::string> out = {"inprocess", "ucx"};
#ifdef SWITCHYARD_TRANSPORT_HAVE_NCCL
  out.push_back("nccl");
#endif
  return out;
}

}  // namespace sy::transport
