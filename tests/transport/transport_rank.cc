// One rank of a multi-process transport test or of `bench exchange`-style runs, started by
// tests/transport (LocalProcess). Configuration comes from the environment:
//   SY_RANK, SY_WORLD, SY_COORDINATOR=host:port, SY_TRANSPORT=ucx|nccl, SY_SEED,
//   SY_SCENARIO=exchange|die-after-connect|expect-dead-peer|hub
// `hub`: dynamic transports (world size 0) under ids far apart; rank 0 is a hub that every
// other rank joins with connect_peer, talks to both ways, and leaves with disconnect_peer.
// Exit code 0 on success; the failure, naming the peer, goes to stderr.
#include <cstdlib>
#include <iostream>

#include "exchange_scenario.h"
#include "switchyard/transport/nccl.h"
#include "switchyard/transport/rendezvous.h"
#include "switchyard/transport/ucx.h"

namespace {

std::string env_or(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return v ? std::string(v) : fallback;
}

// Process ids of the hub scenario: the hub is 0, the others sit in a "client" range.
sy::transport::Rank hub_id(int rank) { return rank == 0 ? 0 : (1 << 19) + 1000 * rank; }

int run_hub(sy::control::ControlClient& client, int rank, int world, sy::transport::Timeout timeout) {
  using namespace sy::transport;
  TransportOptions options;
  options.rank = hub_id(rank);
  options.world_size = 0;
  std::unique_ptr<Transport> t = make_ucx_transport(options);
  Result<std::vector<std::string>> addresses =
      rendezvous_allgather(client, "hub-addresses", rank, world, t->local_address(), timeout);
  if (!addresses) {
    std::cerr << "rank " << rank << ": " << addresses.status().to_string() << "\n";
    return 3;
  }
  auto fail = [&](const std::string& what, const Status& s) {
    std::cerr << "rank " << rank << ": " << what << ": " << s.to_string() << "\n";
    return 1;
  };
  // The hub talks to every spoke, a spoke to the hub (indices into `addresses` = process ranks).
  std::vector<int> other_ranks;
  if (rank == 0) {
    for (int r = 1; r < world; ++r) other_ranks.push_back(r);
  } else {
    other_ranks.push_back(0);
  }
  std::vector<Rank> others;
  for (int r : other_ranks) {
    const std::string& address = (*addresses)[static_cast<size_t>(r)];
    Result<Rank> id = address_rank(address);
    if (!id) return fail("address of rank " + std::to_string(r), id.status());
    if (*id != hub_id(r))
      return fail("address of rank " + std::to_string(r),
                  Status(StatusCode::protocol, "carries id " + std::to_string(*id)));
    if (Status s = t->connect_peer(*id, address); !s) return fail("connect_peer", s);
    others.push_back(*id);
  }
  // Every spoke sends its id (tag 1); the hub answers each with id + 1 (tag 2).
  std::vector<int64_t> in(others.size(), -1), out(others.size());
  std::vector<RequestId> requests;
  for (size_t i = 0; i < others.size(); ++i) {
    Result<RequestId> r = t->post_recv(others[i], rank == 0 ? 1 : 2, &in[i], sizeof(int64_t));
    if (!r) return fail("post_recv", r.status());
    requests.push_back(*r);
    out[i] = rank == 0 ? others[i] + 1 : t->rank();
    Result<RequestId> s = t->post_send(others[i], rank == 0 ? 2 : 1, &out[i], sizeof(int64_t));
    if (!s) return fail("post_send", s.status());
    requests.push_back(*s);
  }
  if (Status s = t->wait_all(requests, timeout); !s) return fail("hub messages", s);
  for (size_t i = 0; i < others.size(); ++i) {
    const int64_t want = rank == 0 ? others[i] : t->rank() + 1;
    if (in[i] != want) {
      std::cerr << "rank " << rank << ": got " << in[i] << " from " << t->describe_peer(others[i]) << ", expected "
                << want << "\n";
      return 1;
    }
  }
  if (Status s = rendezvous_barrier(client, "hub-talked", rank, world, timeout); !s) return fail("barrier", s);
  for (Rank peer : others)
    if (Status s = t->disconnect_peer(peer); !s) return fail("disconnect_peer", s);
  if (!t->peers().empty() || t->outstanding_requests() != 0) {
    std::cerr << "rank " << rank << ": peers or requests left after disconnecting\n";
    return 1;
  }
  if (Status s = rendezvous_barrier(client, "hub-done", rank, world, timeout); !s) return fail("final barrier", s);
  return 0;
}

int run() {
  using namespace sy::transport;
  const int rank = std::stoi(env_or("SY_RANK", "0"));
  const int world = std::stoi(env_or("SY_WORLD", "1"));
  const std::string backend = env_or("SY_TRANSPORT", "ucx");
  const std::string scenario = env_or("SY_SCENARIO", "exchange");
  const uint64_t seed = std::stoull(env_or("SY_SEED", "1"));
  const auto [host, port] = sy::control::parse_endpoint(env_or("SY_COORDINATOR", "127.0.0.1:0"));
  const Timeout timeout(std::stoi(env_or("SY_TIMEOUT_MS", "30000")));

  sy::control::ControlClient::Options client_options;
  client_options.name = "rank " + std::to_string(rank);
  auto client = sy::control::ControlClient::connect(host, port, client_options);
  if (!client) {
    std::cerr << "rank " << rank << ": " << client.status().to_string() << "\n";
    return 2;
  }
  if (scenario == "hub") return run_hub(**client, rank, world, timeout);
  TransportOptions options;
  options.rank = rank;
  options.world_size = world;
  std::unique_ptr<Transport> t = backend == "nccl" ? make_nccl_transport(options) : make_ucx_transport(options);
  if (Status s = bootstrap_transport(*t, **client, "addresses", timeout); !s) {
    std::cerr << "rank " << rank << ": bootstrap: " << s.to_string() << "\n";
    return 3;
  }
  if (scenario == "die-after-connect" || scenario == "expect-dead-peer")
    if (Status s = rendezvous_barrier(**client, "connected", rank, world, timeout); !s) {
      std::cerr << "rank " << rank << ": barrier after connect: " << s.to_string() << "\n";
      return 3;
    }
  if (scenario == "die-after-connect") std::_Exit(0);  // a peer that vanishes without a word
  if (scenario == "expect-dead-peer") {
    // Rank 1 is gone: the exchange must fail, naming it, well before the timeout elapses.
    std::vector<int64_t> rows(static_cast<size_t>(world), 4);
    std::vector<std::byte> send(4 * static_cast<size_t>(world) * 64), recv;
    Result<ExchangeLayout> r = t->exchange(rows, send.data(), 64, recv, timeout);
    if (r) {
      std::cerr << "rank " << rank << ": exchange with a dead peer succeeded\n";
      return 4;
    }
    std::cerr << "rank " << rank << ": expected failure: " << r.status().to_string() << "\n";
    const std::string m = r.status().message();
    return m.find("rank 1") != std::string::npos ? 0 : 5;
  }
  if (Status s = sy::testing::run_exchange_scenario(*t, seed, timeout); !s) {
    std::cerr << "rank " << rank << ": " << s.to_string() << "\n";
    return 1;
  }
  // Nobody tears down endpoints while others still receive.
  if (Status s = rendezvous_barrier(**client, "done", rank, world, timeout); !s) {
    std::cerr << "rank " << rank << ": final barrier: " << s.to_string() << "\n";
    return 6;
  }
  return 0;
}

}  // namespace

int main() {
  try {
    return run();
  } catch (const std::exception& e) {
    std::cerr << "transport_rank: " << e.what() << "\n";
    return 10;
  }
}
