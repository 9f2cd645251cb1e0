// The exchange suite, instantiated for every transport built: in-process (threads), UCX over
// shared memory and over TCP (one process per rank, rendezvous over the control channel), NCCL
// (skips without enough GPUs). Plus point-to-point semantics and dead-peer behaviour.
#include <gtest/gtest.h>

#include <thread>

#include "exchange_scenario.h"
#include "switchyard/transport/inprocess.h"
#include "switchyard/launch/local_launch.h"
#include "switchyard/transport/nccl.h"
#include "switchyard/transport/rendezvous.h"
#include "switchyard/transport/ucx.h"

namespace {

using namespace sy::transport;
using sy::launch::LocalProcess;
using namespace std::chrono_literals;

constexpr Timeout kCollectiveTimeout = 60000ms;
constexpr Timeout kProcessTimeout = 120000ms;

TransportOptions rank_options(int rank, int world, const std::string& label = "", size_t max_outstanding = 4096) {
  TransportOptions o;
  o.rank = rank;
  o.world_size = world;
  o.label = label;
  o.max_outstanding_requests = max_outstanding;
  return o;
}

// ---- in-process point to point ---------------------------------------------------------------

struct InProcessWorld {
  explicit InProcessWorld(int world, size_t max_outstanding = 4096) {
    auto fabric = make_inprocess_fabric(world);
    for (int r = 0; r < world; ++r)
      ranks.push_back(make_inprocess_transport(fabric, rank_options(r, world, "thread " + std::to_string(r), max_outstanding)));
    std::vector<std::string> addresses;
    for (auto& t : ranks) addresses.push_back(t->local_address());
    for (auto& t : ranks) EXPECT_TRUE(t->connect(addresses));
  }
  std::vector<std::unique_ptr<Transport>> ranks;
};

TEST(InProcessTransport, TagsMatchInOrderAndTruncationIsAnError) {
  InProcessWorld w(2);
  Transport& a = *w.ranks[0];
  Transport& b = *w.ranks[1];
  EXPECT_TRUE(a.can_reach(1));
  int x1 = 1, x2 = 2, y = 3, got1 = 0, got2 = 0, goty = 0;
  auto s1 = a.post_send(1, 7, &x1, sizeof(int));
  auto s2 = a.post_send(1, 7, &x2, sizeof(int));
  auto s3 = a.post_send(1, 9, &y, sizeof(int));
  auto ry = b.post_recv(0, 9, &goty, sizeof(int));
  auto r1 = b.post_recv(0, 7, &got1, sizeof(int));
  auto r2 = b.post_recv(0, 7, &got2, sizeof(int));
  const RequestId all[] = {*s1, *s2, *s3, *ry, *r1, *r2};
  ASSERT_TRUE(a.wait_all(std::span(all, 3), 1000ms));
  std::vector<size_t> bytes;
  ASSERT_TRUE(b.wait_all(std::span(all + 3, 3), 1000ms, &bytes));
  EXPECT_EQ(bytes, (std::vector<size_t>{4, 4, 4}));
  EXPECT_EQ(got1, 1);
  EXPECT_EQ(got2, 2);
  EXPECT_EQ(goty, 3);

  char big[16] = {}, small[4];
  auto s = a.post_send(1, 1, big, sizeof(big));
  auto r = b.post_recv(0, 1, small, sizeof(small));
  Status st = b.wait(*r, 1000ms);
  EXPECT_EQ(st.code(), StatusCode::truncated) << st.to_string();
  EXPECT_NE(st.message().find("rank 0 (thread 0)"), std::string::npos) << st.to_string();
  (void)a.wait(*s, 1000ms);
}

TEST(InProcessTransport, BackpressureIsAStatusNotABlock) {
  InProcessWorld w(2, /*max_outstanding=*/4);
  int v = 0;
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(w.ranks[0]->post_send(1, 1, &v, sizeof(v)));
  auto fifth = w.ranks[0]->post_send(1, 1, &v, sizeof(v));
  ASSERT_FALSE(fifth);
  EXPECT_EQ(fifth.status().code(), StatusCode::no_resource);
}

TEST(InProcessTransport, WaitTimesOutNamingThePeer) {
  InProcessWorld w(3);
  int v = 0;
  auto r = w.ranks[0]->post_recv(2, 5, &v, sizeof(v));
  ASSERT_TRUE(r);
  const auto start = std::chrono::steady_clock::now();
  Status s = w.ranks[0]->wait(*r, 100ms);
  EXPECT_LT(std::chrono::steady_clock::now() - start, 2000ms);
  EXPECT_EQ(s.code(), StatusCode::timeout);
  EXPECT_NE(s.message().find("from rank 2 (thread 2)"), std::string::npos) << s.to_string();
}

TEST(InProcessTransport, DeadPeerFailsTheExchangeNamingIt) {
  InProcessWorld w(3);
  w.ranks[1].reset();  // rank 1 is gone
  std::vector<int64_t> rows = {1, 1, 1};
  std::vector<std::byte> send(3 * 8), recv;
  auto r = w.ranks[0]->exchange(rows, send.data(), 8, recv, 5000ms);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.status().code(), StatusCode::peer_failed) << r.status().to_string();
  EXPECT_NE(r.status().message().find("rank 1 (thread 1)"), std::string::npos) << r.status().to_string();
}

TEST(InProcessTransport, CountsRejectBadInput) {
  InProcessWorld w(2);
  std::vector<int64_t> wrong_size = {1};
  EXPECT_EQ(w.ranks[0]->exchange_counts(wrong_size, 100ms).status().code(), StatusCode::invalid_argument);
  std::vector<int64_t> negative = {1, -1};
  EXPECT_EQ(w.ranks[0]->exchange_counts(negative, 100ms).status().code(), StatusCode::invalid_argument);
}

// ---- the suite, for every transport ----------------------------------------------------------

struct Backend {
  std::string name;     // test-name suffix
  std::string kind;     // inprocess | ucx | nccl
  std::string ucx_tls;  // UCX_TLS for the rank processes
};

struct SuiteCase {
  Backend backend;
  int world;
};

void PrintTo(const SuiteCase& c, std::ostream* os) { *os << c.backend.name << " x" << c.world; }

std::string case_name(const ::testing::TestParamInfo<SuiteCase>& info) {
  return info.param.backend.name + "_" + std::to_string(info.param.world) + "ranks";
}

class ExchangeSuite : public ::testing::TestWithParam<SuiteCase> {};

uint64_t seed_for(const SuiteCase& c) { return 1000 + static_cast<uint64_t>(c.world) * 17 + c.backend.name.size(); }

// Ranks as threads of this process, each with its own transport.
void run_in_threads(const SuiteCase& c, const std::function<std::unique_ptr<Transport>(int)>& make) {
  std::vector<std::unique_ptr<Transport>> ranks;
  for (int r = 0; r < c.world; ++r) ranks.push_back(make(r));
  std::vector<std::string> addresses;
  for (auto& t : ranks) addresses.push_back(t->local_address());
  std::vector<Status> results(static_cast<size_t>(c.world));
  std::vector<std::thread> threads;
  for (int r = 0; r < c.world; ++r)
    threads.emplace_back([&, r] {
      Transport& t = *ranks[static_cast<size_t>(r)];
      Status s = t.connect(addresses);
      if (s) s = sy::testing::run_exchange_scenario(t, seed_for(c), kCollectiveTimeout);
      results[static_cast<size_t>(r)] = s;
    });
  for (auto& t : threads) t.join();
  for (int r = 0; r < c.world; ++r) EXPECT_TRUE(results[static_cast<size_t>(r)]) << results[static_cast<size_t>(r)].to_string();
}

// Ranks as processes (transport_rank), bootstrapped through a rendezvous server in this process.
void run_in_processes(const SuiteCase& c, const std::string& scenario = "exchange",
                      std::vector<std::string> per_rank_scenario = {}, int timeout_ms = 30000) {
  sy::control::ControlServer::Options server_options;
  server_options.name = "test driver";
  sy::control::ControlServer server(server_options);
  RendezvousService rendezvous(server);
  server.start();
  std::vector<LocalProcess> children;
  for (int r = 0; r < c.world; ++r) {
    std::vector<std::pair<std::string, std::string>> env = {
        {"SY_RANK", std::to_string(r)},
        {"SY_WORLD", std::to_string(c.world)},
        {"SY_COORDINATOR", server.endpoint()},
        {"SY_TRANSPORT", c.backend.kind},
        {"SY_SEED", std::to_string(seed_for(c))},
        {"SY_TIMEOUT_MS", std::to_string(timeout_ms)},
        {"SY_SCENARIO", per_rank_scenario.empty() ? scenario : per_rank_scenario[static_cast<size_t>(r)]}};
    if (!c.backend.ucx_tls.empty()) env.emplace_back("UCX_TLS", c.backend.ucx_tls);
    children.push_back(LocalProcess::spawn({SY_TRANSPORT_RANK_EXE}, env));
  }
  for (int r = 0; r < c.world; ++r) {
    Result<int> code = children[static_cast<size_t>(r)].wait(kProcessTimeout);
    ASSERT_TRUE(code) << "rank " << r << ": " << code.status().to_string();
    EXPECT_EQ(*code, 0) << "rank " << r << " failed (its stderr is above)";
  }
}

TEST_P(ExchangeSuite, RandomRowsVerifiedByteForByte) {
  const SuiteCase& c = GetParam();
  if (c.backend.kind == "inprocess") {
    auto fabric = make_inprocess_fabric(c.world);
    run_in_threads(c, [&](int r) { return make_inprocess_transport(fabric, rank_options(r, c.world)); });
  } else if (c.backend.kind == "ucx") {
    if (c.world == 1) {
      run_in_threads(c, [&](int r) { return make_ucx_transport(rank_options(r, 1)); });
    } else {
      run_in_processes(c);
    }
  } else if (c.backend.kind == "nccl") {
    if (!nccl_transport_compiled()) GTEST_SKIP() << "this build has no NCCL transport";
    const int gpus = cuda_device_count();
    if (gpus < c.world)
      GTEST_SKIP() << "NCCL " << c.world << "-rank exchange needs " << c.world << " GPUs (one rank per GPU); found "
                   << gpus;
    if (c.world == 1) {
      run_in_threads(c, [&](int r) { return make_nccl_transport(rank_options(r, 1)); });
    } else {
      run_in_processes(c);
    }
  }
}

std::vector<SuiteCase> suite_cases() {
  std::vector<Backend> backends = {{"inprocess", "inprocess", ""}, {"ucx_shm", "ucx", "sm,self"},
                                   {"ucx_tcp", "ucx", "tcp,self"}};
  if (nccl_transport_compiled()) backends.push_back({"nccl", "nccl", ""});
  std::vector<SuiteCase> out;
  for (const Backend& b : backends)
    for (int world : {1, 2, 3, 4}) {
      if (world == 1 && b.name == "ucx_tcp") continue;  // world 1 is in-process, UCX_TLS does not apply
      out.push_back({b, world});
    }
  return out;
}

INSTANTIATE_TEST_SUITE_P(Transports, ExchangeSuite, ::testing::ValuesIn(suite_cases()), case_name);

// ---- dynamic peers between processes: a hub that spokes join and leave --------------------------

TEST(UcxHub, SpokesJoinTalkAndLeaveOverShm) { run_in_processes({{"ucx_shm", "ucx", "sm,self"}, 4}, "hub"); }
TEST(UcxHub, SpokesJoinTalkAndLeaveOverTcp) { run_in_processes({{"ucx_tcp", "ucx", "tcp,self"}, 4}, "hub"); }

// ---- a dead peer is an error naming it, never a hang -----------------------------------------

TEST(UcxDeadPeer, TcpPeerExitIsReportedNamingIt) {
  const auto start = std::chrono::steady_clock::now();
  run_in_processes({{"ucx_tcp", "ucx", "tcp,self"}, 2}, "", {"expect-dead-peer", "die-after-connect"}, 10000);
  EXPECT_LT(std::chrono::steady_clock::now() - start, 30s);
}

TEST(UcxDeadPeer, ShmPeerExitIsReportedNamingIt) {
  const auto start = std::chrono::steady_clock::now();
  run_in_processes({{"ucx_shm", "ucx", "sm,self"}, 2}, "", {"expect-dead-peer", "die-after-connect"}, 3000);
  EXPECT_LT(std::chrono::steady_clock::now() - start, 30s);
}

}  // namespace
