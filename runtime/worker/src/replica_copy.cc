#include "replica_copy.h"

#include <cstring>
#include <memory>

#include "switchyard/core/error.h"

namespace sy {
namespace {

namespace pb = wire::pb;
using Clock = std::chrono::steady_clock;

inline constexpr transport::Tag kMigrationTagBase = transport::Tag{1} << 32;
constexpr size_t kWordFloats = sizeof(uint64_t) / sizeof(float);
constexpr size_t kTrailerFloats = 2 * kWordFloats;  // AdamW step count, then the checksum

transport::Tag copy_tag(uint64_t epoch, size_t index) {
  return kMigrationTagBase + ((epoch & 0xff) << 24) + static_cast<transport::Tag>(index & 0xffffff);
}

struct Transfer {
  size_t index = 0;
  ExpertKey key;
  int peer = 0;
  bool incoming = false;
  std::vector<float> buffer;  // encoded state + checksum
  transport::RequestId request{};
  bool posted = false;
};

// The replica's state, encoded, then its AdamW step count and the checksum of both.
std::vector<float> snapshot(const ExpertStore& store, const ExpertKey& key) {
  const ExpertGeometry geometry = ExpertGeometry::of(store.model(), key.stage);
  const ExpertTensors state = store.tensors_of(key);
  std::vector<float> out;
  encode_expert(geometry, state, /*with_moments=*/true, out);
  const size_t n = out.size();
  out.resize(n + kTrailerFloats);
  const int64_t step = state.step;
  std::memcpy(out.data() + n, &step, sizeof step);
  const uint64_t sum = fnv1a64(out.data(), (n + kWordFloats) * sizeof(float));
  std::memcpy(out.data() + n + kWordFloats, &sum, sizeof sum);
  return out;
}

// Verifies, decodes and adds a received replica; throws an input error naming it.
void accept(ExpertStore& store, const Transfer& t) {
  const std::string what = "replica " + t.key.to_string() + " from worker " + std::to_string(t.peer);
  const size_t n = t.buffer.size() - kTrailerFloats;
  uint64_t sum = 0;
  std::memcpy(&sum, t.buffer.data() + n + kWordFloats, sizeof sum);
  if (sum != fnv1a64(t.buffer.data(), (n + kWordFloats) * sizeof(float)))
    throw Error(ErrorKind::input, what + " does not verify (checksum mismatch)");
  const ExpertGeometry geometry = ExpertGeometry::of(store.model(), t.key.stage);
  ExpertTensors tensors = decode_expert(geometry, std::span<const float>(t.buffer.data(), n), true, what);
  std::memcpy(&tensors.step, t.buffer.data() + n, sizeof tensors.step);
  store.add(t.key, std::move(tensors));
}

}  // namespace

uint64_t fnv1a64(const void* data, size_t bytes) {
  uint64_t h = 1469598103934665603ull;
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < bytes; ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

CopyOutcome run_replica_copies(transport::Transport& transport, ExpertStore& store, int self, uint64_t epoch,
                               const std::vector<pb::ReplicaCopy>& copies, std::chrono::milliseconds timeout) {
  const auto start = Clock::now();
  CopyOutcome out;
  std::vector<Transfer> transfers;
  for (size_t i = 0; i < copies.size(); ++i) {
    const pb::ReplicaCopy& c = copies[i];
    const ExpertKey key{c.layer(), c.stage(), c.expert()};
    if (c.from_worker() == self) {
      transfers.push_back({i, key, c.to_worker(), false, snapshot(store, key)});
    } else if (c.to_worker() == self) {
      const ExpertGeometry geometry = ExpertGeometry::of(store.model(), key.stage);
      transfers.push_back({i, key, c.from_worker(), true,
                           std::vector<float>(static_cast<size_t>(encoded_expert_floats(geometry, true)) + kTrailerFloats)});
    }
  }
  Status s;
  std::vector<transport::RequestId> requests;
  for (Transfer& t : transfers) {
    if (!s) break;
    const size_t bytes = t.buffer.size() * sizeof(float);
    auto r = t.incoming ? wire::post_recv(transport, t.peer, copy_tag(epoch, t.index), t.buffer.data(), bytes)
                        : wire::post_send(transport, t.peer, copy_tag(epoch, t.index), t.buffer.data(), bytes);
    if (!r) {
      s = Status(r.status().code(), "copy of " + t.key.to_string() + (t.incoming ? " from" : " to") + " worker " +
                                        std::to_string(t.peer) + ": " + r.status().to_string());
      break;
    }
    t.request = *r;
    t.posted = true;
    requests.push_back(*r);
    (t.incoming ? out.bytes_received : out.bytes_sent) += bytes;
  }
  if (s) {
    s = transport.wait_all(requests, timeout);
    if (!s) s = Status(s.code(), "copying replicas with workers of epoch " + std::to_string(epoch) + ": " + s.message());
  }
  if (!s) {  // end every request while its buffer is alive
    for (const Transfer& t : transfers)
      if (t.posted) (void)transport.disconnect_peer(t.peer);
    for (const Transfer& t : transfers)
      if (t.posted) (void)transport.wait(t.request, timeout);
    out.ok = false;
    out.error = s.message();
  }
  for (const Transfer& t : transfers) {
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
  return out;
}

}  // namespace sy
