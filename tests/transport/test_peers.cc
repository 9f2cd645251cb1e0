// Dynamic peers on one transport per process, for every transport built: processes join
// (connect_peer) and leave (disconnect_peer, or their transport is destroyed) while the others
// keep working; receives match only their sender; a fixed world and dynamic peers share one
// transport. Several transports live in this process, driven by one thread (progressing all
// of them) or, for the collectives, one thread each.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "exchange_scenario.h"
#include "switchyard/core/wake_fd.h"
#include "switchyard/transport/factory.h"

namespace {

using namespace sy::transport;
using namespace std::chrono_literals;

struct PeerBackend {
  std::string name;         // test-name suffix
  std::string kind;         // make_transport kind
  std::string ucx_tls;      // UCX_TLS while the test runs ("" leaves it alone)
  bool detects_dead_peers;  // a destroyed peer fails requests (else: they time out)
};

void PrintTo(const PeerBackend& b, std::ostream* os) { *os << b.name; }

constexpr Rank kClientBase = Rank{1} << 19;  // clients' ids, as a coordinator might assign them

// Destroys the transports together, one thread each, when the scope ends: processes of a
// cluster going down at once (a UCX transport flushes its endpoints on destruction, which
// takes its peers' progress; one after the other on one thread would wait 2 s each).
struct DestroyTogether {
  std::vector<std::unique_ptr<Transport>*> transports;
  ~DestroyTogether() {
    std::vector<std::thread> threads;
    for (auto* t : transports) threads.emplace_back([t] { t->reset(); });
    for (auto& t : threads) t.join();
  }
};

class PeersSuite : public ::testing::TestWithParam<PeerBackend> {
 protected:
  void SetUp() override {
    const PeerBackend& b = GetParam();
    if (b.kind == "nccl") {
      if (!nccl_transport_compiled()) GTEST_SKIP() << "this build has no NCCL transport";
      if (cuda_device_count() == 0) GTEST_SKIP() << "no GPU: NCCL cannot start here";
    }
    if (!b.ucx_tls.empty()) {
      if (const char* old = std::getenv("UCX_TLS")) saved_tls_ = old;
      had_tls_ = std::getenv("UCX_TLS") != nullptr;
      setenv("UCX_TLS", b.ucx_tls.c_str(), 1);
    }
    backend_.fabric = make_inprocess_fabric();
  }

  void TearDown() override {
    if (GetParam().ucx_tls.empty()) return;
    if (had_tls_)
      setenv("UCX_TLS", saved_tls_.c_str(), 1);
    else
      unsetenv("UCX_TLS");
  }

  std::unique_ptr<Transport> make(Rank id, const std::string& label, int world_size = 0) {
    TransportOptions o;
    o.rank = id;
    o.world_size = world_size;
    o.label = label;
    return make_transport(GetParam().kind, o, backend_);
  }

  // Both directions: `a` gets an endpoint to `b` and `b` one to `a`.
  static void link(Transport& a, Transport& b) {
    ASSERT_TRUE(a.connect_peer(b.rank(), b.local_address()));
    ASSERT_TRUE(b.connect_peer(a.rank(), a.local_address()));
  }

  // Progresses every transport in `all` until `request` on `t` completes, fails, or `timeout`
  // passes (a timeout status naming the request).
  static Status drive(const std::vector<Transport*>& all, Transport& t, RequestId request, Timeout timeout,
                      size_t* bytes = nullptr) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    const std::string what = t.describe_request(request);
    while (true) {
      for (Transport* x : all) x->progress();
      Result<Completion> c = t.test(request);
      if (!c) return c.status();
      if (c->done) {
        if (bytes) *bytes = c->bytes;
        return Status::ok();
      }
      if (std::chrono::steady_clock::now() >= deadline)
        return Status(StatusCode::timeout, "timed out after " + std::to_string(timeout.count()) + " ms: " + what);
      std::this_thread::yield();
    }
  }

  // Destroys `t` on a thread of its own while this one progresses `others`: a process leaving
  // while the rest of the cluster runs (UCX flushes the leaver's endpoints, which takes the
  // peers' progress).
  static void destroy(std::unique_ptr<Transport>& t, const std::vector<Transport*>& others) {
    std::atomic<bool> gone{false};
    std::thread leaver([&] {
      t.reset();
      gone = true;
    });
    while (!gone) {
      for (Transport* x : others) x->progress();
      std::this_thread::yield();
    }
    leaver.join();
  }

  static void pump(const std::vector<Transport*>& all, std::chrono::milliseconds d) {
    const auto until = std::chrono::steady_clock::now() + d;
    while (std::chrono::steady_clock::now() < until) {
      for (Transport* x : all) x->progress();
      std::this_thread::yield();
    }
  }

  // `from` sends `value` to `to` with `tag`; `to` receives it; both checked.
  static void send_and_check(const std::vector<Transport*>& all, Transport& from, Transport& to, Tag tag,
                             uint64_t value) {
    uint64_t got = 0;
    Result<RequestId> r = to.post_recv(from.rank(), tag, &got, sizeof(got));
    ASSERT_TRUE(r) << r.status().to_string();
    Result<RequestId> s = from.post_send(to.rank(), tag, &value, sizeof(value));
    ASSERT_TRUE(s) << s.status().to_string();
    size_t bytes = 0;
    Status rs = drive(all, to, *r, 10000ms, &bytes);
    ASSERT_TRUE(rs) << rs.to_string();
    Status ss = drive(all, from, *s, 10000ms);
    ASSERT_TRUE(ss) << ss.to_string();
    EXPECT_EQ(bytes, sizeof(value));
    EXPECT_EQ(got, value) << "message from " << from.rank() << " to " << to.rank() << ", tag " << tag;
  }

  Timeout dead_peer_wait() const { return GetParam().detects_dead_peers ? 10000ms : 1500ms; }

  BackendOptions backend_;

 private:
  std::string saved_tls_;
  bool had_tls_ = false;
};

TEST_P(PeersSuite, PeersConnectByAddressAndTalkEachWay) {
  if (GetParam().kind == "nccl") {
    auto t = make(0, "A", 1);
    EXPECT_EQ(t->connect_peer(1, t->local_address()).code(), StatusCode::unsupported);
    return;
  }
  auto a = make(0, "A"), b = make(1, "B"), c = make(kClientBase + 5, "C");
  DestroyTogether a_b_c_guard{{&a, &b, &c}};
  const std::vector<Transport*> all = {a.get(), b.get(), c.get()};
  EXPECT_EQ(a->world_size(), 0);
  EXPECT_TRUE(a->peers().empty());
  EXPECT_FALSE(a->can_reach(1));
  Result<Rank> id = address_rank(c->local_address());
  ASSERT_TRUE(id);
  EXPECT_EQ(*id, kClientBase + 5);

  link(*a, *b);
  link(*a, *c);
  EXPECT_EQ(a->peers(), (std::vector<Rank>{1, kClientBase + 5}));
  EXPECT_EQ(b->peers(), (std::vector<Rank>{0}));
  EXPECT_TRUE(a->can_reach(1));
  EXPECT_TRUE(a->can_reach(kClientBase + 5));
  EXPECT_FALSE(b->can_reach(kClientBase + 5));

  send_and_check(all, *a, *b, 1, 0xA0B);
  send_and_check(all, *b, *a, 1, 0xB0A);
  send_and_check(all, *a, *c, 1, 0xA0C);
  send_and_check(all, *c, *a, 1, 0xC0A);
  send_and_check(all, *c, *a, kMaxUserTag, 0xC0A2);

  // Errors that change nothing.
  Status again = a->connect_peer(1, b->local_address());
  EXPECT_EQ(again.code(), StatusCode::invalid_argument) << again.to_string();
  EXPECT_NE(again.message().find("already connected"), std::string::npos) << again.to_string();
  Status wrong = b->connect_peer(7, c->local_address());
  EXPECT_EQ(wrong.code(), StatusCode::invalid_argument) << wrong.to_string();
  EXPECT_NE(wrong.message().find("is that of rank " + std::to_string(kClientBase + 5)), std::string::npos)
      << wrong.to_string();
  EXPECT_EQ(b->connect_peer(7, "junk").code(), StatusCode::invalid_argument);
  EXPECT_EQ(b->connect_peer(kMaxRank + 1, c->local_address()).code(), StatusCode::invalid_argument);
  EXPECT_EQ(b->connect_peer(-1, c->local_address()).code(), StatusCode::invalid_argument);
  EXPECT_EQ(b->peers(), (std::vector<Rank>{0}));
  int v = 0;
  EXPECT_EQ(b->post_send(kClientBase + 5, 1, &v, sizeof(v)).status().code(), StatusCode::unreachable);
  EXPECT_EQ(b->disconnect_peer(kClientBase + 5).code(), StatusCode::unreachable);
  EXPECT_EQ(a->exchange_counts(std::vector<int64_t>{}, 100ms).status().code(), StatusCode::invalid_argument);
  EXPECT_EQ(a->connect({a->local_address()}).code(), StatusCode::invalid_argument);
  send_and_check(all, *a, *b, 2, 0xA0B2);  // still connected as before
  for (Transport* t : all) EXPECT_EQ(t->outstanding_requests(), 0u);
}

TEST_P(PeersSuite, ReceivesMatchOnlyTheirSender) {
  if (GetParam().kind == "nccl") GTEST_SKIP() << "NCCL has a fixed world only";
  auto a = make(0, "A"), b = make(1, "B"), c = make(kClientBase + 5, "C");
  DestroyTogether a_b_c_guard{{&a, &b, &c}};
  const std::vector<Transport*> all = {a.get(), b.get(), c.get()};
  link(*a, *b);
  link(*a, *c);
  // A waits for B on tag 5; C's message on tag 5 arrives first and must not match it.
  uint64_t from_b = 0, from_c = 0;
  Result<RequestId> rb = a->post_recv(1, 5, &from_b, sizeof(from_b));
  ASSERT_TRUE(rb);
  const uint64_t c_value = 0xCCCC, b_value = 0xBBBB;
  Result<RequestId> sc = c->post_send(0, 5, &c_value, sizeof(c_value));
  ASSERT_TRUE(sc);
  pump(all, 50ms);  // C's message reaches A (UCX: A's unexpected queue; in-process: A's mailbox)
  Result<Completion> early = a->test(*rb);
  ASSERT_TRUE(early) << early.status().to_string();
  EXPECT_FALSE(early->done) << "A's receive from B matched a message (value " << std::hex << from_b << ") of C";
  if (early->done) return;
  Result<RequestId> rc = a->post_recv(kClientBase + 5, 5, &from_c, sizeof(from_c));
  ASSERT_TRUE(rc);
  ASSERT_TRUE(drive(all, *a, *rc, 10000ms));
  ASSERT_TRUE(drive(all, *c, *sc, 10000ms));
  EXPECT_EQ(from_c, c_value);
  Result<RequestId> sb = b->post_send(0, 5, &b_value, sizeof(b_value));
  ASSERT_TRUE(sb);
  ASSERT_TRUE(drive(all, *a, *rb, 10000ms));
  ASSERT_TRUE(drive(all, *b, *sb, 10000ms));
  EXPECT_EQ(from_b, b_value);

  // The other order: C's message is already waiting when A posts its receive from B.
  const uint64_t c_value2 = 0xCCC2, b_value2 = 0xBBB2;
  Result<RequestId> sc2 = c->post_send(0, 6, &c_value2, sizeof(c_value2));
  ASSERT_TRUE(sc2);
  pump(all, 50ms);
  uint64_t from_b2 = 0, from_c2 = 0;
  Result<RequestId> rb2 = a->post_recv(1, 6, &from_b2, sizeof(from_b2));
  ASSERT_TRUE(rb2);
  pump(all, 20ms);
  Result<Completion> early2 = a->test(*rb2);
  ASSERT_TRUE(early2) << early2.status().to_string();
  EXPECT_FALSE(early2->done) << "A's receive from B took C's waiting message (value " << std::hex << from_b2 << ")";
  if (early2->done) return;
  Result<RequestId> rc2 = a->post_recv(kClientBase + 5, 6, &from_c2, sizeof(from_c2));
  ASSERT_TRUE(rc2);
  ASSERT_TRUE(drive(all, *a, *rc2, 10000ms));
  ASSERT_TRUE(drive(all, *c, *sc2, 10000ms));
  EXPECT_EQ(from_c2, c_value2);
  Result<RequestId> sb2 = b->post_send(0, 6, &b_value2, sizeof(b_value2));
  ASSERT_TRUE(sb2);
  ASSERT_TRUE(drive(all, *a, *rb2, 10000ms));
  ASSERT_TRUE(drive(all, *b, *sb2, 10000ms));
  EXPECT_EQ(from_b2, b_value2);
  for (Transport* t : all) EXPECT_EQ(t->outstanding_requests(), 0u);
}

TEST_P(PeersSuite, MessageFromAnUnconnectedSenderWaitsAndHarmsNothing) {
  if (GetParam().kind == "nccl") GTEST_SKIP() << "NCCL has a fixed world only";
  auto a = make(0, "A"), b = make(1, "B"), d = make(kClientBase + 9, "D");
  DestroyTogether a_b_d_guard{{&a, &b, &d}};
  const std::vector<Transport*> all = {a.get(), b.get(), d.get()};
  link(*a, *b);
  ASSERT_TRUE(d->connect_peer(0, a->local_address()));  // D knows A; A does not know D yet
  uint64_t from_b = 0, from_d = 0;
  Result<RequestId> rb = a->post_recv(1, 9, &from_b, sizeof(from_b));
  ASSERT_TRUE(rb);
  const uint64_t d_value = 0xDDDD;
  Result<RequestId> sd = d->post_send(0, 9, &d_value, sizeof(d_value));
  ASSERT_TRUE(sd);
  pump(all, 50ms);
  Result<Completion> early = a->test(*rb);
  ASSERT_TRUE(early);
  EXPECT_FALSE(early->done) << "A's receive from B matched a message of an unconnected sender";
  EXPECT_EQ(a->post_recv(kClientBase + 9, 9, &from_d, sizeof(from_d)).status().code(), StatusCode::unreachable);
  // Once A connects D, the waiting message is D's to receive.
  ASSERT_TRUE(a->connect_peer(kClientBase + 9, d->local_address()));
  Result<RequestId> rd = a->post_recv(kClientBase + 9, 9, &from_d, sizeof(from_d));
  ASSERT_TRUE(rd);
  ASSERT_TRUE(drive(all, *a, *rd, 10000ms));
  ASSERT_TRUE(drive(all, *d, *sd, 10000ms));
  EXPECT_EQ(from_d, d_value);
  const uint64_t b_value = 0xB0A;
  Result<RequestId> sb = b->post_send(0, 9, &b_value, sizeof(b_value));
  ASSERT_TRUE(sb);
  ASSERT_TRUE(drive(all, *a, *rb, 10000ms));
  ASSERT_TRUE(drive(all, *b, *sb, 10000ms));
  EXPECT_EQ(from_b, b_value);
}

TEST_P(PeersSuite, DisconnectFailsThePeersPendingReceiveAndOthersKeepWorking) {
  if (GetParam().kind == "nccl") {
    auto t = make(0, "A", 1);
    EXPECT_EQ(t->disconnect_peer(0).code(), StatusCode::unsupported);
    return;
  }
  auto a = make(0, "A"), b = make(1, "B"), c = make(kClientBase + 5, "C");
  DestroyTogether a_b_c_guard{{&a, &b, &c}};
  const std::vector<Transport*> all = {a.get(), b.get(), c.get()};
  link(*a, *b);
  link(*a, *c);
  send_and_check(all, *c, *a, 3, 1);
  uint64_t from_c = 0, from_b = 0;
  Result<RequestId> rc = a->post_recv(kClientBase + 5, 3, &from_c, sizeof(from_c));
  Result<RequestId> rb = a->post_recv(1, 3, &from_b, sizeof(from_b));
  ASSERT_TRUE(rc);
  ASSERT_TRUE(rb);
  ASSERT_TRUE(a->disconnect_peer(kClientBase + 5));
  EXPECT_EQ(a->peers(), (std::vector<Rank>{1}));
  EXPECT_FALSE(a->can_reach(kClientBase + 5));
  Status s = drive(all, *a, *rc, 10000ms);
  EXPECT_EQ(s.code(), StatusCode::peer_failed) << s.to_string();
  EXPECT_NE(s.message().find("rank " + std::to_string(kClientBase + 5) + " (C)"), std::string::npos) << s.to_string();
  int v = 0;
  EXPECT_EQ(a->post_send(kClientBase + 5, 3, &v, sizeof(v)).status().code(), StatusCode::unreachable);
  EXPECT_EQ(a->disconnect_peer(kClientBase + 5).code(), StatusCode::unreachable);
  // A's pending receive from B was not touched.
  const uint64_t b_value = 0xB;
  Result<RequestId> sb = b->post_send(0, 3, &b_value, sizeof(b_value));
  ASSERT_TRUE(sb);
  ASSERT_TRUE(drive(all, *a, *rb, 10000ms));
  ASSERT_TRUE(drive(all, *b, *sb, 10000ms));
  EXPECT_EQ(from_b, b_value);
  send_and_check(all, *a, *b, 4, 0xA0B);
  destroy(c, {a.get(), b.get()});
  send_and_check({a.get(), b.get()}, *b, *a, 4, 0xB0A);
  EXPECT_EQ(a->outstanding_requests(), 0u);
  EXPECT_EQ(b->outstanding_requests(), 0u);
}

TEST_P(PeersSuite, DestroyedPeerFailsThePendingReceiveNamingItThenANewPeerJoins) {
  if (GetParam().kind == "nccl") GTEST_SKIP() << "NCCL has a fixed world only";
  auto a = make(0, "A"), b = make(1, "B"), c = make(kClientBase + 5, "C");
  std::unique_ptr<Transport> d;
  DestroyTogether a_b_c_d_guard{{&a, &b, &c, &d}};
  link(*a, *b);
  link(*a, *c);
  send_and_check({a.get(), b.get(), c.get()}, *c, *a, 3, 1);
  uint64_t from_c = 0;
  Result<RequestId> rc = a->post_recv(kClientBase + 5, 3, &from_c, sizeof(from_c));
  ASSERT_TRUE(rc);
  const std::vector<Transport*> left = {a.get(), b.get()};
  destroy(c, left);  // C's process is gone
  Status s = drive(left, *a, *rc, dead_peer_wait());
  const std::string c_name = "rank " + std::to_string(kClientBase + 5) + " (C)";
  if (GetParam().detects_dead_peers) {
    EXPECT_EQ(s.code(), StatusCode::peer_failed) << s.to_string();
    EXPECT_NE(s.message().find(c_name), std::string::npos) << s.to_string();
    EXPECT_FALSE(a->can_reach(kClientBase + 5));
  } else {
    // No peer-failure detection (UCX shared memory): the deadline catches it, naming C.
    EXPECT_EQ(s.code(), StatusCode::timeout) << s.to_string();
    EXPECT_NE(s.message().find(c_name), std::string::npos) << s.to_string();
    EXPECT_TRUE(a->can_reach(kClientBase + 5));  // nothing told A
  }
  // The owner notices (failure or timeout) and disconnects; anything left fails cleanly.
  ASSERT_TRUE(a->disconnect_peer(kClientBase + 5));
  if (!GetParam().detects_dead_peers) {
    Status after = drive(left, *a, *rc, 10000ms);
    EXPECT_EQ(after.code(), StatusCode::peer_failed) << after.to_string();
    EXPECT_NE(after.message().find(c_name), std::string::npos) << after.to_string();
  }
  EXPECT_EQ(a->peers(), (std::vector<Rank>{1}));
  send_and_check(left, *a, *b, 4, 0xA0B);
  send_and_check(left, *b, *a, 4, 0xB0A);

  // A new process joins under a new id.
  d = make(kClientBase + 6, "D");
  const std::vector<Transport*> all = {a.get(), b.get(), d.get()};
  link(*a, *d);
  EXPECT_EQ(a->peers(), (std::vector<Rank>{1, kClientBase + 6}));
  send_and_check(all, *d, *a, 3, 0xD0A);
  send_and_check(all, *a, *d, 3, 0xA0D);
  send_and_check(all, *b, *a, 3, 0xB0A);
  for (Transport* t : all) EXPECT_EQ(t->outstanding_requests(), 0u);
}

TEST_P(PeersSuite, ManyJoinsAndLeavesLeaveNothingBehind) {
  if (GetParam().kind == "nccl") GTEST_SKIP() << "NCCL has a fixed world only";
  auto a = make(0, "A"), b = make(1, "B");
  DestroyTogether a_b_guard{{&a, &b}};
  link(*a, *b);
  // One process that leaves and rejoins under its id, with traffic each time...
  auto x = make(kClientBase + 100, "X");
  DestroyTogether x_guard{{&x}};
  const std::vector<Transport*> all = {a.get(), b.get(), x.get()};
  for (int i = 0; i < 30; ++i) {
    link(*a, *x);
    send_and_check(all, *x, *a, 1, 1000 + static_cast<uint64_t>(i));
    send_and_check(all, *a, *x, 1, 2000 + static_cast<uint64_t>(i));
    // A receive left pending when the peer leaves.
    uint64_t sink = 0;
    Result<RequestId> pending = a->post_recv(x->rank(), 2, &sink, sizeof(sink));
    ASSERT_TRUE(pending);
    ASSERT_TRUE(x->disconnect_peer(0));
    ASSERT_TRUE(a->disconnect_peer(x->rank()));
    EXPECT_EQ(drive(all, *a, *pending, 10000ms).code(), StatusCode::peer_failed);
    ASSERT_EQ(a->peers(), (std::vector<Rank>{1})) << "cycle " << i;
    ASSERT_TRUE(x->peers().empty());
  }
  destroy(x, {a.get(), b.get()});
  // ... and fresh processes under fresh ids.
  for (int i = 0; i < 8; ++i) {
    auto y = make(kClientBase + 200 + i, "Y" + std::to_string(i));
    link(*a, *y);
    send_and_check({a.get(), b.get(), y.get()}, *y, *a, 1, 3000 + static_cast<uint64_t>(i));
    ASSERT_TRUE(a->disconnect_peer(y->rank()));
    destroy(y, {a.get(), b.get()});
  }
  EXPECT_EQ(a->peers(), (std::vector<Rank>{1}));
  EXPECT_EQ(a->outstanding_requests(), 0u);
  EXPECT_EQ(b->outstanding_requests(), 0u);
  if (GetParam().kind == "inprocess") {
    EXPECT_EQ(inprocess_fabric_endpoints(*backend_.fabric), 2u);
  }
  send_and_check({a.get(), b.get()}, *a, *b, 1, 0xA0B);
}

TEST_P(PeersSuite, OneTransportServesAFixedWorldAndDynamicPeers) {
  if (GetParam().kind == "nccl") GTEST_SKIP() << "NCCL has a fixed world only";
  // Two workers (a fixed world of 2, for the collectives) and a client attached to worker 0.
  auto w0 = make(0, "worker 0", 2), w1 = make(1, "worker 1", 2), k = make(kClientBase, "client");
  DestroyTogether w0_w1_k_guard{{&w0, &w1, &k}};
  const std::vector<std::string> addresses = {w0->local_address(), w1->local_address()};
  ASSERT_TRUE(w0->connect(addresses));
  ASSERT_TRUE(w1->connect(addresses));
  ASSERT_TRUE(w0->connect(addresses));  // idempotent for the world
  link(*w0, *k);
  EXPECT_EQ(w0->peers(), (std::vector<Rank>{0, 1, kClientBase}));
  send_and_check({w0.get(), w1.get(), k.get()}, *k, *w0, 1, 0x70);
  std::vector<Status> results(2);
  {
    std::thread t1([&] { results[1] = sy::testing::run_exchange_scenario(*w1, 77, 60000ms); });
    results[0] = sy::testing::run_exchange_scenario(*w0, 77, 60000ms);
    t1.join();
  }
  EXPECT_TRUE(results[0]) << results[0].to_string();
  EXPECT_TRUE(results[1]) << results[1].to_string();
  send_and_check({w0.get(), w1.get(), k.get()}, *w0, *k, 1, 0x07);
  ASSERT_TRUE(w0->disconnect_peer(kClientBase));
  EXPECT_EQ(w0->peers(), (std::vector<Rank>{0, 1}));
}

std::vector<PeerBackend> peer_backends() {
  std::vector<PeerBackend> out = {
      {"inprocess", "inprocess", "", true}, {"ucx_shm", "ucx", "sm,self", false}, {"ucx_tcp", "ucx", "tcp,self", true}};
  if (nccl_transport_compiled()) out.push_back({"nccl", "nccl", "", true});
  return out;
}

std::string peer_case_name(const ::testing::TestParamInfo<PeerBackend>& p) { return p.param.name; }

// Idle waiting (wait_for_events): with nothing to progress it returns false at the timeout; a
// message from a peer wakes it (true) and the posted receive then completes on progress; so does
// a readable wake-up descriptor of the caller. Backends without an event descriptor (in-process,
// NCCL) sleep briefly instead and say so with has_events() false.
TEST_P(PeersSuite, IdleWaitWakesForAMessageAndForAWakeDescriptor) {
  if (GetParam().kind == "nccl") GTEST_SKIP() << "NCCL has fixed worlds only (connect_peer unsupported)";
  auto a = make(0, "A"), b = make(1, "B");
  DestroyTogether guard{{&a, &b}};
  link(*a, *b);
  send_and_check({a.get(), b.get()}, *a, *b, 1, 1);  // endpoints wired up both ways
  EXPECT_EQ(b->has_events(), GetParam().kind == "ucx");
  uint64_t got = 0;
  Result<RequestId> r = b->post_recv(0, 3, &got, sizeof(got));
  ASSERT_TRUE(r) << r.status().to_string();
  // Events of the earlier traffic may wake it a few times (UCX allows spurious wake-ups); once
  // they are progressed it sleeps to the timeout.
  bool slept = false;
  for (int i = 0; i < 50 && !slept; ++i) {
    b->progress();
    slept = !b->wait_for_events(20ms);
  }
  EXPECT_TRUE(slept) << "it never slept with nothing to do";
  std::atomic<bool> woke{false}, waiting{false}, returned{false};
  std::thread sleeper([&] {
    waiting = true;
    woke = b->wait_for_events(10s);
    returned = true;
  });
  while (!waiting) std::this_thread::yield();
  std::this_thread::sleep_for(20ms);  // asleep by now (the check holds either way)
  const uint64_t value = 0xE7E;
  Result<RequestId> s = a->post_send(1, 3, &value, sizeof(value));
  ASSERT_TRUE(s) << s.status().to_string();
  const auto posted = std::chrono::steady_clock::now();
  while (!returned && std::chrono::steady_clock::now() - posted < 10s) {
    a->progress();
    std::this_thread::yield();
  }
  sleeper.join();
  if (b->has_events()) {
    EXPECT_TRUE(woke) << "the message did not wake the idle wait";
  }
  ASSERT_TRUE(drive({a.get(), b.get()}, *b, *r, 10000ms));
  ASSERT_TRUE(drive({a.get(), b.get()}, *a, *s, 10000ms));
  EXPECT_EQ(got, value);
  sy::WakeFd wake;
  wake.notify();
  const int fd = wake.fd();
  if (b->has_events()) {
    EXPECT_TRUE(b->wait_for_events(10s, std::span(&fd, 1))) << "a readable wake fd did not wake it";
  }
}

INSTANTIATE_TEST_SUITE_P(Transports, PeersSuite, ::testing::ValuesIn(peer_backends()), peer_case_name);

TEST(TransportFactory, UnknownKindNamesItAndTheCompiledOnes) {
  TransportOptions o;
  try {
    (void)make_transport("carrier-pigeon", o);
    FAIL() << "make_transport accepted an unknown kind";
  } catch (const sy::Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("'carrier-pigeon'"), std::string::npos) << m;
    for (const std::string& k : compiled_transports()) EXPECT_NE(m.find(k), std::string::npos) << m;
  }
  auto t = make_transport("inprocess", o);
  EXPECT_EQ(t->name(), "inprocess");
  // Two transports made without a fabric share the process's default fabric.
  TransportOptions o2;
  o2.rank = kClientBase;
  o2.world_size = 0;
  auto u = make_transport("inprocess", o2);
  EXPECT_TRUE(t->connect_peer(kClientBase, u->local_address()));
  auto v = make_transport("ucx", o2);
  EXPECT_EQ(v->name(), "ucx");
}

}  // namespace
