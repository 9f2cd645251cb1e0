// The exchange scenario every transport runs, in threads (in-process) or in processes (UCX,
// NCCL via transport_rank): random per-peer row counts with zeros, one round where a single
// rank receives everything, one round of more than 64 MiB in total; every byte verified, and
// every round sent back with the reversed layout (the combine direction) and verified again.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "switchyard/transport/nccl.h"
#include "switchyard/transport/transport.h"

namespace sy::testing {

using transport::Rank;
using transport::Status;
using transport::StatusCode;

inline constexpr size_t kScenarioRowBytes = 2056;  // not a power of two on purpose
inline constexpr int kScenarioRounds = 3;
inline constexpr size_t kBigRoundBytes = size_t{72} << 20;  // round 2 moves more than 64 MiB in total

inline uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Rows rank `src` sends to rank `dst` in `round`; every rank computes the same matrix.
inline int64_t scenario_rows(uint64_t seed, int round, int world, Rank src, Rank dst) {
  const uint64_t h = splitmix64(seed ^ (uint64_t(round) << 48) ^ (uint64_t(src) << 24) ^ uint64_t(dst));
  switch (round) {
    case 0:  // random, about a third of the pairs empty
      return (h % 3 == 0) ? 0 : static_cast<int64_t>(h % 300);
    case 1:  // one rank receives everything
      return dst == world - 1 ? 200 + static_cast<int64_t>(h % 100) : 0;
    default: {  // big: > 64 MiB in total, one pair empty when world > 1
      if (world > 1 && src == 0 && dst == 1) return 0;
      const int pairs = world * world - (world > 1 ? 1 : 0);
      const int64_t mean = static_cast<int64_t>(kBigRoundBytes / kScenarioRowBytes) / pairs;
      return mean + static_cast<int64_t>(h % static_cast<uint64_t>(mean / 4 + 1));  // mean .. 1.25 mean
    }
  }
}

inline void fill_rows(std::byte* out, int64_t rows, uint64_t seed, int round, Rank src, Rank dst) {
  const size_t words = kScenarioRowBytes / 8;
  for (int64_t k = 0; k < rows; ++k) {
    const uint64_t base = splitmix64(seed ^ (uint64_t(round) << 56) ^ (uint64_t(src) << 40) ^ (uint64_t(dst) << 32) ^
                                     uint64_t(k));
    auto* w = reinterpret_cast<uint64_t*>(out + static_cast<size_t>(k) * kScenarioRowBytes);
    for (size_t j = 0; j < words; ++j) w[j] = base + j * 0x9e3779b97f4a7c15ull;
  }
}

// Device staging for transports that move CUDA memory only.
struct ScenarioBuffer {
  std::vector<std::byte> host;
  void* device = nullptr;
  ~ScenarioBuffer() { transport::device_free(device); }
};

inline Status scenario_fail(const std::string& m) { return Status(StatusCode::internal, m); }

// Runs all rounds on `t`; returns the first failure with its cause. `timeout` bounds each collective.
inline Status run_exchange_scenario(transport::Transport& t, uint64_t seed, transport::Timeout timeout) {
  const int world = t.world_size();
  const Rank me = t.rank();
  const bool on_device = !t.supports(transport::MemoryKind::host);
  const size_t rb = kScenarioRowBytes;
  for (int round = 0; round < kScenarioRounds; ++round) {
    std::vector<int64_t> send_rows(static_cast<size_t>(world)), expect_recv(static_cast<size_t>(world));
    for (Rank r = 0; r < world; ++r) {
      send_rows[static_cast<size_t>(r)] = scenario_rows(seed, round, world, me, r);
      expect_recv[static_cast<size_t>(r)] = scenario_rows(seed, round, world, r, me);
    }
    transport::ExchangeLayout layout_in(send_rows, expect_recv);
    ScenarioBuffer send, recv, back;
    send.host.resize(static_cast<size_t>(layout_in.total_send_rows()) * rb);
    for (Rank r = 0; r < world; ++r)
      fill_rows(send.host.data() + static_cast<size_t>(layout_in.send_offset(r)) * rb, send_rows[static_cast<size_t>(r)],
                seed, round, me, r);

    transport::Result<transport::ExchangeLayout> layout = t.exchange_counts(send_rows, timeout);
    if (!layout) return layout.status();
    for (Rank r = 0; r < world; ++r)
      if (layout->recv_rows(r) != expect_recv[static_cast<size_t>(r)])
        return scenario_fail("round " + std::to_string(round) + ": rank " + std::to_string(me) + " learnt " +
                             std::to_string(layout->recv_rows(r)) + " rows from rank " + std::to_string(r) + ", expected " +
                             std::to_string(expect_recv[static_cast<size_t>(r)]));
    const size_t recv_bytes = static_cast<size_t>(layout->total_recv_rows()) * rb;
    recv.host.resize(recv_bytes);
    back.host.resize(send.host.size());

    transport::ExchangeBuffers forward{send.host.data(), recv.host.data(), rb, transport::MemoryKind::host, nullptr, nullptr};
    transport::ExchangeBuffers reverse{recv.host.data(), back.host.data(), rb, transport::MemoryKind::host, nullptr, nullptr};
    if (on_device) {
      for (ScenarioBuffer* b : {&send, &recv, &back}) {
        transport::Result<void*> d = transport::device_allocate(b->host.size());
        if (!d) return d.status();
        b->device = *d;
      }
      if (Status s = transport::device_copy(send.device, send.host.data(), send.host.size()); !s) return s;
      forward = {send.device, recv.device, rb, transport::MemoryKind::cuda, nullptr, nullptr};
      reverse = {recv.device, back.device, rb, transport::MemoryKind::cuda, nullptr, nullptr};
    }
    if (Status s = t.exchange_rows(*layout, forward, timeout); !s) return s;
    if (on_device)
      if (Status s = transport::device_copy(recv.host.data(), recv.device, recv_bytes); !s) return s;
    // Byte-for-byte check of everything received.
    std::vector<std::byte> expected;
    for (Rank r = 0; r < world; ++r) {
      const int64_t rows = layout->recv_rows(r);
      expected.resize(static_cast<size_t>(rows) * rb);
      fill_rows(expected.data(), rows, seed, round, r, me);
      const std::byte* got = recv.host.data() + static_cast<size_t>(layout->recv_offset(r)) * rb;
      if (rows > 0 && std::memcmp(got, expected.data(), expected.size()) != 0) {
        size_t at = 0;
        while (got[at] == expected[at]) ++at;
        return scenario_fail("round " + std::to_string(round) + ": rank " + std::to_string(me) +
                             " received wrong bytes from rank " + std::to_string(r) + " at row " +
                             std::to_string(at / rb) + " byte " + std::to_string(at % rb));
      }
    }
    // Combine direction: send the received rows back with the reversed layout.
    if (Status s = t.exchange_rows(layout->reversed(), reverse, timeout); !s) return s;
    if (on_device)
      if (Status s = transport::device_copy(back.host.data(), back.device, back.host.size()); !s) return s;
    if (back.host != send.host)
      return scenario_fail("round " + std::to_string(round) + ": rank " + std::to_string(me) +
                           " got different rows back through the reversed layout");
  }
  return Status::ok();
}

}  // namespace sy::testing
