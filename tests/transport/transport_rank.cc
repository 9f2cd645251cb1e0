// One rank of a multi-process transport test or of `bench exchange`-style runs, started by
// tests/transport (LocalProcess). Configuration comes from the environment:
//   SY_RANK, SY_WORLD, SY_COORDINATOR=host:port, SY_TRANSPORT=ucx|nccl, SY_SEED,
//   SY_SCENARIO=exchange|die-after-connect|expect-dead-peer
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
