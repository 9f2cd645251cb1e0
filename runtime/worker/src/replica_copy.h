// Replica copies between workers: the migration executor of a rebalance.
//
// A copy moves one replica's whole state — weights, AdamW moments and step count, the core/
// expert.h codec with moments — from its current holder to a new one over the workers' data
// plane (one tagged message per copy: tag kMigrationTagBase + epoch · 2^24 + the copy's index in
// the rebalance, the same list on every worker). After the encoded tensors come the AdamW step
// count (int64) and a 64-bit FNV-1a checksum of everything before it; the receiver verifies
// the checksum, decodes and validates every tensor (ExpertTensors::validate: a negative step
// count too), and only then adds the replica to its store.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "switchyard/core/expert.h"
#include "switchyard/transport/transport.h"
#include "switchyard/wire/wire.h"
#include "switchyard/worker/expert_store.h"

namespace sy {

struct CopyOutcome {
  bool ok = true;
  std::string error;              // names the peer and the replica
  std::vector<ExpertKey> added;   // replicas received, verified and added to the store
  uint64_t bytes_received = 0;
  uint64_t bytes_sent = 0;
  double seconds = 0;
};

// Runs this worker's part of `copies` (as sender and as receiver) and waits for all of it
// within `timeout`. On failure the peers of the unfinished copies are disconnected (their
// requests end while the buffers are alive), replicas already added stay in `added` for the
// caller to discard, and the outcome names the peer.
CopyOutcome run_replica_copies(transport::Transport& transport, ExpertStore& store, int self, uint64_t epoch,
                               const std::vector<wire::pb::ReplicaCopy>& copies, std::chrono::milliseconds timeout);

// 64-bit FNV-1a of `bytes` bytes at `data`.
uint64_t fnv1a64(const void* data, size_t bytes);

}  // namespace sy
