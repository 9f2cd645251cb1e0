// Replica copies between workers: the migration executor of a rebalance.
//
// A copy moves one replica's whole state — weights, AdamW moments and step count — from its
// current holder to a new one over the workers' data plane, with no staging copy: each tensor
// (canonical order: a weight, then its exp_avg and exp_avg_sq) goes as one tagged message straight
// from the holder's store into the new tensor on the receiver, then a trailer with the AdamW step
// count and one 64-bit checksum per tensor. Tags: kMigrationTagBase + epoch · 2^24 + the copy's
// index in the rebalance (the same list on every worker) · 16 + the message. The checksums are
// computed while the data moves (the receiver hashes each tensor on a helper thread as it lands,
// checking in the same pass that it is finite, and second moments non-negative); the receiver
// verifies every one, then adds the replica to its store (ExpertStore::add_verified).
#pragma once

#include <chrono>
#include <functional>
#include <cstdint>
#include <map>
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

// Receive buffers of the copies this worker receives, by copy index: allocated ahead (when the
// rebalance is prepared, off the serving thread), so the copy itself only moves and verifies.
struct ReceiveBuffer {
  ExpertTensors state;  // weights and moments, received into
  TensorMap grads;      // the new replica's zero gradients
};
using ReceiveBuffers = std::map<size_t, ReceiveBuffer>;
ReceiveBuffers allocate_receive_buffers(const ModelConfig& model, int self,
                                        const std::vector<wire::pb::ReplicaCopy>& copies);

// Runs this worker's part of `copies` (as sender and as receiver) and waits for all of it
// within `timeout`. On failure the peers of the unfinished copies are disconnected (their
// requests end while the buffers are alive), replicas already added stay in `added` for the
// caller to discard, and the outcome names the peer.
// `rank_of` maps a worker id (slot) to its process's data-plane id.
CopyOutcome run_replica_copies(transport::Transport& transport, ExpertStore& store, int self, uint64_t epoch,
                               const std::vector<wire::pb::ReplicaCopy>& copies, std::chrono::milliseconds timeout,
                               const std::function<transport::Rank(int)>& rank_of, ReceiveBuffers buffers = {});

// A 64-bit checksum of `bytes` bytes: four interleaved FNV-1a-style lanes over 64-bit words
// (xor, then multiply by the FNV prime), folded together with the tail; memory-bandwidth fast.
uint64_t checksum64(const void* data, size_t bytes);

}  // namespace sy
