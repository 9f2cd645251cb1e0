// Rendezvous over the control channel: the all-gather that bootstraps a data-plane world.
//
// One process (the coordinator, a test driver, rank 0 of a launcher) runs a ControlServer with a
// `RendezvousService`; every rank connects a ControlClient and calls `rendezvous_allgather`,
// which publishes its blob for a named round and polls until all `world_size` ranks have. The
// same round name must not be reused with different blobs. `bootstrap_transport` is the usual
// use: gather every rank's `Transport::local_address()` and `connect`. (NCCL's ncclUniqueId
// travels the same way: rank 0's address carries it.)
#pragma once

#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "switchyard/transport/control.h"
#include "switchyard/transport/transport.h"

namespace sy::transport {

class RendezvousService {
 public:
  // Bounds on what peers may store: a Publish beyond them is refused (no_resource) naming the
  // bound. Nothing is ever removed, so these bound the service's memory for good.
  struct Limits {
    size_t max_rounds = 1024;
    size_t max_round_name_bytes = 256;
    uint32_t max_world_size = 65536;
    size_t max_blob_bytes = 64 << 10;       // a UCX worker address is a few hundred bytes to a few KiB
    size_t max_total_bytes = size_t{64} << 20;  // every round name and blob together
  };

  // Registers the Publish/Collect handlers on `server` (before server.start()).
  explicit RendezvousService(control::ControlServer& server) : RendezvousService(server, Limits{}) {}
  RendezvousService(control::ControlServer& server, Limits limits);

  // How many ranks have published in `round` so far (for drivers that wait on their ranks).
  size_t published(const std::string& round) const;
  // The blobs of a complete round (index = rank); empty when not complete.
  std::vector<std::string> blobs(const std::string& round) const;

 private:
  struct Round {
    uint32_t world_size = 0;
    std::map<uint32_t, std::string> blobs;
  };
  Limits limits_;
  mutable std::mutex mutex_;
  std::map<std::string, Round> rounds_;
  size_t total_bytes_ = 0;
};

// Publishes `blob` as `rank` of `world_size` in `round`, then polls until every rank has and
// returns all blobs (index = rank). Errors name the round and how many ranks were missing.
Result<std::vector<std::string>> rendezvous_allgather(control::ControlClient& client, const std::string& round, Rank rank,
                                                      int world_size, const std::string& blob, Timeout timeout);

// All ranks reach `round` before any leaves.
Status rendezvous_barrier(control::ControlClient& client, const std::string& round, Rank rank, int world_size,
                          Timeout timeout);

// Gathers every rank's address in `round` and connects `transport` to all of them.
Status bootstrap_transport(Transport& transport, control::ControlClient& client, const std::string& round,
                           Timeout timeout);

}  // namespace sy::transport
