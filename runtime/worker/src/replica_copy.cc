#include "replica_copy.h"

#include <cstring>
#include <future>
#include <memory>

#include "switchyard/core/error.h"
#include "switchyard/core/log.h"

namespace sy {
namespace {

namespace pb = wire::pb;
using Clock = std::chrono::steady_clock;

inline constexpr transport::Tag kMigrationTagBase = transport::Tag{1} << 32;
constexpr uint64_t kPrime = 1099511628211ull;

transport::Tag copy_tag(uint64_t epoch, size_t index, size_t message) {
  return kMigrationTagBase + ((epoch & 0xff) << 24) + ((static_cast<transport::Tag>(index) << 4) & 0xfffff0) + message;
}

// What the receiver learns of a landed tensor in one pass.
struct Landed {
  uint64_t sum = 0;
  bool finite = true, negative = false;
};

// One copy on this worker: the tensors in message order (a weight, its exp_avg, exp_avg_sq),
// then the trailer (AdamW's step count and one checksum per tensor).
struct Transfer {
  size_t index = 0;
  ExpertKey key;
  int peer = 0;              // its worker id (slot)
  transport::Rank rank = 0;  // its data-plane id
  bool incoming = false;
  ExpertTensors state;  // incoming: the receive buffers; outgoing from a device store: its host copy
  TensorMap grads;                                     // incoming: the new replica's zero gradients
  std::vector<std::pair<const float*, size_t>> spans;  // per tensor: its storage, bytes
  std::vector<uint64_t> trailer;
  std::vector<transport::RequestId> requests;  // per tensor, then the trailer
  size_t landed = 0;                           // requests done, in order
  std::vector<std::future<Landed>> sums;       // incoming: checks of the landed tensors
};

// Tensors of the right shapes to receive a replica's state into, and its zero gradients.
ReceiveBuffer receive_buffers(const ExpertGeometry& geometry) {
  ReceiveBuffer b;
  for (const std::string& name : geometry.tensor_names()) {
    const Shape s = geometry.shape(name);
    b.state.weights.emplace(name, Tensor(s));
    b.state.moments.emplace(name + ".exp_avg", Tensor(s));
    b.state.moments.emplace(name + ".exp_avg_sq", Tensor(s));
    b.grads.emplace(name, Tensor(s));
  }
  return b;
}

// The checksum's loop; with `flags`, the same pass also ORs "not finite" into flags[0] and
// "negative" into flags[1] for every float.
template <bool kInspect>
uint64_t hash_pass(const void* data, size_t bytes, uint32_t* flags) {
  const auto* p = static_cast<const unsigned char*>(data);
  uint64_t lane[4] = {1469598103934665603ull, 0x9e3779b97f4a7c15ull, 0xbf58476d1ce4e5b9ull, 0x94d049bb133111ebull};
  uint32_t bad = 0, neg = 0;
  size_t i = 0;
  for (; i + 32 <= bytes; i += 32) {
    for (int k = 0; k < 4; ++k) {
      uint64_t w;
      std::memcpy(&w, p + i + 8 * k, 8);
      lane[k] = (lane[k] ^ w) * kPrime;
    }
    if constexpr (kInspect)
      for (int k = 0; k < 8; ++k) {
        uint32_t bits;
        std::memcpy(&bits, p + i + 4 * k, 4);
        bad |= static_cast<uint32_t>((bits & 0x7f800000u) == 0x7f800000u);
        neg |= static_cast<uint32_t>((bits >> 31) != 0 && (bits & 0x7fffffffu) != 0);  // < 0, not -0
      }
  }
  uint64_t h = lane[0];
  for (int k = 1; k < 4; ++k) h = (h ^ lane[k]) * kPrime;
  for (; i < bytes; ++i) h = (h ^ p[i]) * kPrime;
  if constexpr (kInspect) {
    for (size_t j = i - (bytes % 32); j + 4 <= bytes; j += 4) {  // the tail's floats
      uint32_t bits;
      std::memcpy(&bits, p + j, 4);
      bad |= static_cast<uint32_t>((bits & 0x7f800000u) == 0x7f800000u);
      neg |= static_cast<uint32_t>((bits >> 31) != 0 && (bits & 0x7fffffffu) != 0);
    }
    flags[0] = bad;
    flags[1] = neg;
  }
  return (h ^ bytes) * kPrime;
}

// One pass over a landed tensor: its checksum, whether every value is finite, whether any is
// negative.
Landed inspect(const float* data, size_t bytes) {
  uint32_t flags[2] = {0, 0};
  const uint64_t sum = hash_pass<true>(data, bytes, flags);
  return {sum, flags[0] == 0, flags[1] != 0};
}

void add_span(Transfer& t, const Tensor& tensor) {
  t.spans.emplace_back(tensor.data(), static_cast<size_t>(tensor.numel()) * sizeof(float));
}

// Posts every message of one copy: the tensors straight from (or into) their storage, then the
// trailer; a sender hashes its tensors while the receiver pulls them.
Status post_copy(transport::Transport& transport, const ExpertStore& store, uint64_t epoch, Transfer& t,
                 uint64_t& bytes) {
  const ExpertGeometry geometry = ExpertGeometry::of(store.model(), t.key.stage);
  if (t.incoming && t.state.weights.empty()) {
    ReceiveBuffer b = receive_buffers(geometry);
    t.state = std::move(b.state);
    t.grads = std::move(b.grads);
  }
  // A device store's replica is sent from a host copy (UCX here moves host memory only).
  const bool staged = t.incoming || !store.host_resident();
  if (!t.incoming && !store.host_resident()) t.state = store.tensors_of(t.key);
  const TensorMap& w = staged ? t.state.weights : store.weights(t.key);
  const TensorMap& m = staged ? t.state.moments : store.optimizer(t.key).state();
  for (const std::string& name : geometry.tensor_names())
    for (const Tensor* tensor : {&w.at(name), &m.at(name + ".exp_avg"), &m.at(name + ".exp_avg_sq")}) add_span(t, *tensor);
  for (size_t j = 0; j < t.spans.size(); ++j) {
    void* p = const_cast<float*>(t.spans[j].first);  // a send only reads it
    auto r = t.incoming ? wire::post_recv(transport, t.rank, copy_tag(epoch, t.index, j), p, t.spans[j].second)
                        : wire::post_send(transport, t.rank, copy_tag(epoch, t.index, j), p, t.spans[j].second);
    if (!r) return r.status();
    t.requests.push_back(*r);
    bytes += t.spans[j].second;
  }
  t.trailer.assign(1 + t.spans.size(), 0);
  if (!t.incoming) {
    t.trailer[0] = static_cast<uint64_t>(store.optimizer(t.key).steps());
    for (size_t j = 0; j < t.spans.size(); ++j) t.trailer[1 + j] = checksum64(t.spans[j].first, t.spans[j].second);
  }
  const size_t tb = t.trailer.size() * sizeof(uint64_t);
  auto r = t.incoming ? wire::post_recv(transport, t.rank, copy_tag(epoch, t.index, 15), t.trailer.data(), tb)
                      : wire::post_send(transport, t.rank, copy_tag(epoch, t.index, 15), t.trailer.data(), tb);
  if (!r) return r.status();
  t.requests.push_back(*r);
  return Status::ok();
}

// Progresses until every request is done; each incoming tensor is hashed on a helper thread as
// soon as it has landed, while the rest are still moving.
Status await_copies(transport::Transport& transport, std::vector<Transfer>& transfers, std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  for (;;) {
    transport.progress();
    bool all = true, moved = false;
    for (Transfer& t : transfers) {
      while (t.landed < t.requests.size()) {
        auto done = transport.test(t.requests[t.landed]);
        if (!done)
          return Status(done.status().code(), "copy of " + t.key.to_string() + (t.incoming ? " from" : " to") +
                                                  " worker " + std::to_string(t.peer) + ": " + done.status().to_string());
        if (!done->done) break;
        if (t.incoming && t.landed < t.spans.size()) {
          const auto [p, n] = t.spans[t.landed];
          t.sums.push_back(std::async(std::launch::async, [p, n] { return inspect(p, n); }));
        }
        ++t.landed;
        moved = true;
      }
      all &= t.landed == t.requests.size();
    }
    if (all) return Status::ok();
    if (!moved) transport.wait_for_events(std::chrono::milliseconds(1));  // leave the core to the peer
    if (Clock::now() > deadline)
      return Status(StatusCode::timeout, "replica copies did not finish within " + std::to_string(timeout.count()) + " ms");
  }
}

// Verifies a received replica's checksums and adds it to the store; throws naming it.
void accept(ExpertStore& store, Transfer& t) {
  const std::string what = "replica " + t.key.to_string() + " from worker " + std::to_string(t.peer);
  const auto start = Clock::now();
  for (size_t j = 0; j < t.sums.size(); ++j) {  // message order: a weight, its exp_avg, its exp_avg_sq
    const Landed l = t.sums[j].get();
    const std::string tensor = "tensor " + std::to_string(j);
    if (l.sum != t.trailer[1 + j]) throw Error(ErrorKind::input, what + " does not verify (checksum of " + tensor + ")");
    if (!l.finite) throw Error(ErrorKind::input, what + ": " + tensor + " is not finite");
    if (j % 3 == 2 && l.negative) throw Error(ErrorKind::input, what + ": " + tensor + " holds a negative second moment");
  }
  const auto verified = Clock::now();
  t.state.step = static_cast<int64_t>(t.trailer[0]);
  if (t.state.step < 0) throw Error(ErrorKind::input, what + ": negative AdamW step count");
  store.add_verified(t.key, std::move(t.state), std::move(t.grads));
  const double verify_ms = std::chrono::duration<double, std::milli>(verified - start).count();
  const double add_ms = std::chrono::duration<double, std::milli>(Clock::now() - verified).count();
  SY_LOG(debug, "runtime", what << ": checksums " << verify_ms << " ms after the data, added in " << add_ms << " ms");
}

}  // namespace

uint64_t checksum64(const void* data, size_t bytes) { return hash_pass<false>(data, bytes, nullptr); }

ReceiveBuffers allocate_receive_buffers(const ModelConfig& model, int self, const std::vector<pb::ReplicaCopy>& copies) {
  ReceiveBuffers out;
  for (size_t i = 0; i < copies.size(); ++i)
    if (copies[i].to_worker() == self) out.emplace(i, receive_buffers(ExpertGeometry::of(model, copies[i].stage())));
  return out;
}

CopyOutcome run_replica_copies(transport::Transport& transport, ExpertStore& store, int self, uint64_t epoch,
                               const std::vector<pb::ReplicaCopy>& copies, std::chrono::milliseconds timeout,
                               const std::function<transport::Rank(int)>& rank_of, ReceiveBuffers buffers) {
  const auto start = Clock::now();
  CopyOutcome out;
  std::vector<Transfer> transfers;
  for (size_t i = 0; i < copies.size(); ++i) {
    const pb::ReplicaCopy& c = copies[i];
    if (c.from_worker() != self && c.to_worker() != self) continue;
    Transfer& t = transfers.emplace_back();
    t.index = i;
    t.key = {c.layer(), c.stage(), c.expert()};
    t.incoming = c.to_worker() == self;
    t.peer = t.incoming ? c.from_worker() : c.to_worker();
    t.rank = rank_of(t.peer);
    if (auto it = buffers.find(i); t.incoming && it != buffers.end()) {
      t.state = std::move(it->second.state);
      t.grads = std::move(it->second.grads);
    }
  }
  Status s;
  for (Transfer& t : transfers) {
    if (s) s = post_copy(transport, store, epoch, t, t.incoming ? out.bytes_received : out.bytes_sent);
    if (!s) s = Status(s.code(), "copy of " + t.key.to_string() + (t.incoming ? " from" : " to") + " worker " +
                                     std::to_string(t.peer) + ": " + s.message());
    if (!s) break;
  }
  const auto posted = Clock::now();
  if (s) s = await_copies(transport, transfers, timeout);
  const auto moved = Clock::now();
  if (!s) {  // end every unfinished request while its buffer is alive
    for (const Transfer& t : transfers)
      if (t.landed < t.requests.size()) (void)transport.disconnect_peer(t.rank);
    for (Transfer& t : transfers)
      for (size_t j = t.landed; j < t.requests.size(); ++j) (void)transport.wait(t.requests[j], timeout);
    out.ok = false;
    out.error = s.message();
  }
  for (Transfer& t : transfers) {
    if (!out.ok || !t.incoming) continue;
    try {
      accept(store, t);
      out.added.push_back(t.key);
    } catch (const std::exception& e) {
      out.ok = false;
      out.error = e.what();
    }
  }
  out.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  const auto ms = [](Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double, std::milli>(b - a).count(); };
  SY_LOG(debug, "runtime", "worker " << self << ": copies of epoch " << epoch << ": post " << ms(start, posted)
                                     << " ms, transfer " << ms(posted, moved) << " ms, verify+add "
                                     << ms(moved, Clock::now()) << " ms, " << out.bytes_received << " bytes in, "
                                     << out.bytes_sent << " out");
  return out;
}

}  // namespace sy
