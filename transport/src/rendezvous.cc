#include "switchyard/transport/rendezvous.h"

#include <thread>

#include "control.pb.h"

namespace sy::transport {

namespace pb = switchyard::control;

RendezvousService::RendezvousService(control::ControlServer& server, Limits limits) : limits_(limits) {
  const control::Route publish_route{.max_request_bytes = limits.max_blob_bytes + limits.max_round_name_bytes + 64};
  const control::Route collect_route{.max_request_bytes = limits.max_round_name_bytes + 16};
  server.on<pb::PublishRequest, pb::PublishReply>(
      [this](const pb::PublishRequest& req, const control::PeerInfo& peer) -> Result<pb::PublishReply> {
        if (req.world_size() == 0 || req.rank() >= req.world_size())
          return Status(StatusCode::invalid_argument, "rank " + std::to_string(req.rank()) + " outside a world of " +
                                                          std::to_string(req.world_size()));
        const auto refuse = [&](const std::string& what) {
          return Status(StatusCode::no_resource, "rendezvous: " + peer.endpoint + " publishing in round '" +
                                                     req.round().substr(0, 64) + "': " + what);
        };
        if (req.round().size() > limits_.max_round_name_bytes)
          return refuse("the round name has " + std::to_string(req.round().size()) + " bytes (limit " +
                        std::to_string(limits_.max_round_name_bytes) + ")");
        if (req.world_size() > limits_.max_world_size)
          return refuse("world size " + std::to_string(req.world_size()) + " exceeds the limit of " +
                        std::to_string(limits_.max_world_size));
        if (req.blob().size() > limits_.max_blob_bytes)
          return refuse("a blob of " + std::to_string(req.blob().size()) + " bytes exceeds the limit of " +
                        std::to_string(limits_.max_blob_bytes));
        std::lock_guard<std::mutex> lock(mutex_);
        const bool new_round = !rounds_.count(req.round());
        if (new_round && rounds_.size() >= limits_.max_rounds)
          return refuse("the service holds its limit of " + std::to_string(limits_.max_rounds) + " rounds");
        const size_t adds = req.blob().size() + (new_round ? req.round().size() : 0);
        if (total_bytes_ + adds > limits_.max_total_bytes)
          return refuse("the service holds " + std::to_string(total_bytes_) + " bytes; " + std::to_string(adds) +
                        " more exceed its limit of " + std::to_string(limits_.max_total_bytes));
        Round& round = rounds_[req.round()];
        if (new_round) total_bytes_ += req.round().size();
        if (round.world_size == 0) round.world_size = req.world_size();
        if (round.world_size != req.world_size())
          return Status(StatusCode::invalid_argument, "round '" + req.round() + "' has world size " +
                                                          std::to_string(round.world_size) + ", rank " +
                                                          std::to_string(req.rank()) + " says " +
                                                          std::to_string(req.world_size()));
        auto [it, inserted] = round.blobs.emplace(req.rank(), req.blob());
        if (inserted) total_bytes_ += req.blob().size();
        if (!inserted && it->second != req.blob())
          return Status(StatusCode::invalid_argument, "rank " + std::to_string(req.rank()) +
                                                          " published a different blob twice in round '" +
                                                          req.round() + "'");
        return pb::PublishReply{};
      },
      publish_route);
  server.on<pb::CollectRequest, pb::CollectReply>(
      [this](const pb::CollectRequest& req, const control::PeerInfo&) -> Result<pb::CollectReply> {
        std::lock_guard<std::mutex> lock(mutex_);
        pb::CollectReply reply;
        auto it = rounds_.find(req.round());
        if (it == rounds_.end()) return reply;
        const Round& round = it->second;
        reply.set_world_size(round.world_size);
        reply.set_published(static_cast<uint32_t>(round.blobs.size()));
        if (round.blobs.size() == round.world_size) {
          reply.set_complete(true);
          for (const auto& [rank, blob] : round.blobs) reply.add_blobs(blob);
        }
        return reply;
      },
      collect_route);
}

size_t RendezvousService::published(const std::string& round) const {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = rounds_.find(round);
  return it == rounds_.end() ? 0 : it->second.blobs.size();
}

std::vector<std::string> RendezvousService::blobs(const std::string& round) const {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = rounds_.find(round);
  if (it == rounds_.end() || it->second.blobs.size() != it->second.world_size) return {};
  std::vector<std::string> out;
  for (const auto& [rank, blob] : it->second.blobs) out.push_back(blob);
  return out;
}

Result<std::vector<std::string>> rendezvous_allgather(control::ControlClient& client, const std::string& round, Rank rank,
                                                      int world_size, const std::string& blob, Timeout timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  pb::PublishRequest publish;
  publish.set_round(round);
  publish.set_rank(static_cast<uint32_t>(rank));
  publish.set_world_size(static_cast<uint32_t>(world_size));
  publish.set_blob(blob);
  Result<pb::PublishReply> published = client.call<pb::PublishRequest, pb::PublishReply>(publish);
  if (!published) return published.status();
  pb::CollectRequest collect;
  collect.set_round(round);
  auto pause = std::chrono::microseconds(200);
  uint32_t seen = 0;
  while (true) {
    Result<pb::CollectReply> reply = client.call<pb::CollectRequest, pb::CollectReply>(collect);
    if (!reply) return reply.status();
    if (reply->complete()) {
      if (reply->blobs_size() != world_size)
        return Status(StatusCode::protocol, "rendezvous '" + round + "' returned " + std::to_string(reply->blobs_size()) +
                                                " blobs for a world of " + std::to_string(world_size));
      return std::vector<std::string>(reply->blobs().begin(), reply->blobs().end());
    }
    seen = reply->published();
    if (std::chrono::steady_clock::now() >= deadline)
      return Status(StatusCode::timeout, "rendezvous '" + round + "' via " + client.server_endpoint() + ": only " +
                                             std::to_string(seen) + " of " + std::to_string(world_size) +
                                             " ranks arrived within " + std::to_string(timeout.count()) + " ms");
    std::this_thread::sleep_for(pause);
    pause = std::min(pause * 2, std::chrono::microseconds(20000));
  }
}

Status rendezvous_barrier(control::ControlClient& client, const std::string& round, Rank rank, int world_size,
                          Timeout timeout) {
  Result<std::vector<std::string>> r = rendezvous_allgather(client, round, rank, world_size, std::string(), timeout);
  return r ? Status::ok() : r.status();
}

Status bootstrap_transport(Transport& transport, control::ControlClient& client, const std::string& round,
                           Timeout timeout) {
  Result<std::vector<std::string>> addresses =
      rendezvous_allgather(client, round, transport.rank(), transport.world_size(), transport.local_address(), timeout);
  if (!addresses) return addresses.status();
  return transport.connect(*addresses);
}

}  // namespace sy::transport
