// Control channel: request/response, handler errors, and every way a bad peer gets dropped
// while the server keeps serving the others.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <future>
#include <mutex>
#include <thread>

#include "switchyard/core/error.h"

#include "control.pb.h"
#include "switchyard/core/log.h"
#include "switchyard/transport/control.h"
#include "switchyard/transport/rendezvous.h"

namespace {

using namespace sy::control;
namespace pb = switchyard::control;
using namespace std::chrono_literals;

// Collects log lines for the duration of a test.
class LogCapture {
 public:
  LogCapture() {
    sy::set_log_sink([this](sy::LogLevel, std::string_view, std::string_view m) {
      std::lock_guard<std::mutex> lock(mutex_);
      lines_.emplace_back(m);
    });
  }
  ~LogCapture() { sy::set_log_sink(nullptr); }
  // The server logs on its own I/O thread, possibly just after the client saw the effect:
  // wait up to 5 s for the line to appear.
  bool contains(const std::string& text) const {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    for (;;) {
      {
        std::lock_guard<std::mutex> lock(mutex_);
        for (const auto& l : lines_)
          if (l.find(text) != std::string::npos) return true;
      }
      if (std::chrono::steady_clock::now() > deadline) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }
  std::string all() const {
    std::lock_guard<std::mutex> lock(mutex_);
    std::string out;
    for (const auto& l : lines_) out += l + "\n";
    return out;
  }

 private:
  mutable std::mutex mutex_;
  std::vector<std::string> lines_;
};

ControlClient::Options client_options(const std::string& name, std::chrono::milliseconds call_timeout = 10000ms,
                                      uint32_t version = kProtocolVersion, const std::string& secret = "") {
  ControlClient::Options o;
  o.secret = secret;
  o.name = name;
  o.call_timeout = call_timeout;
  o.connect_timeout = 1000ms;
  o.protocol_version = version;
  return o;
}

ControlServer::Options server_options(const std::string& name, ChannelLimits limits = {},
                                      const std::string& secret = "") {
  ControlServer::Options o;
  o.secret = secret;
  o.name = name;
  o.limits = limits;
  return o;
}

ChannelLimits limits_with(size_t max_frame, std::chrono::milliseconds timeouts) {
  ChannelLimits l;
  l.max_frame_bytes = max_frame;
  l.handshake_timeout = timeouts;
  l.frame_timeout = timeouts;
  return l;
}

// A server answering PublishRequest with PublishReply (or an error for round "fail"); counts
// the requests its handler saw.
struct EchoServer {
  explicit EchoServer(ChannelLimits limits = {}, const std::string& secret = "", Route route = {})
      : server(server_options("test-server", limits, secret)) {
    server.on<pb::PublishRequest, pb::PublishReply>(
        [this](const pb::PublishRequest& req, const PeerInfo&) -> Result<pb::PublishReply> {
          ++handled;
          if (req.round() == "fail") return Status(StatusCode::invalid_argument, "round 'fail' is refused");
          if (req.round() == "slow") std::this_thread::sleep_for(400ms);
          return pb::PublishReply{};
        },
        route);
    server.start();
  }
  std::atomic<int> handled{0};
  ControlServer server;
};

const std::string kSecret = "correct horse battery staple";

// Raw TCP connection for misbehaving peers.
int raw_connect(uint16_t port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

void raw_send(int fd, const std::string& bytes) { ASSERT_EQ(send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL), ssize_t(bytes.size())); }

std::string length_prefix(uint32_t n) {
  return std::string{char((n >> 24) & 0xff), char((n >> 16) & 0xff), char((n >> 8) & 0xff), char(n & 0xff)};
}

// True when the server closed `fd` within `wait`.
bool closed_by_server(int fd, std::chrono::milliseconds wait) {
  timeval tv{static_cast<time_t>(wait.count() / 1000), static_cast<suseconds_t>((wait.count() % 1000) * 1000)};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  char buf[256];
  while (true) {
    const ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n == 0) return true;
    if (n < 0) return errno == ECONNRESET;
  }
}

Result<std::unique_ptr<ControlClient>> good_client(uint16_t port) {
  return ControlClient::connect("127.0.0.1", port, client_options("good client"));
}

void expect_serves(uint16_t port) {
  auto client = good_client(port);
  ASSERT_TRUE(client) << client.status().to_string();
  pb::PublishRequest req;
  req.set_round("ok");
  auto reply = (*client)->call<pb::PublishRequest, pb::PublishReply>(req);
  EXPECT_TRUE(reply) << reply.status().to_string();
}

void wait_for_drops(const ControlServer& server, uint64_t n) {
  for (int i = 0; i < 200 && server.counters().dropped < n; ++i) std::this_thread::sleep_for(10ms);
}

TEST(ControlChannel, RequestReplyAndHandlerError) {
  EchoServer echo;
  auto client = good_client(echo.server.port());
  ASSERT_TRUE(client) << client.status().to_string();
  EXPECT_EQ((*client)->server_name(), "test-server");
  pb::PublishRequest req;
  req.set_round("ok");
  for (int i = 0; i < 100; ++i) ASSERT_TRUE(((*client)->call<pb::PublishRequest, pb::PublishReply>(req)));
  req.set_round("fail");
  auto failed = (*client)->call<pb::PublishRequest, pb::PublishReply>(req);
  ASSERT_FALSE(failed);
  EXPECT_EQ(failed.status().code(), StatusCode::invalid_argument);
  EXPECT_NE(failed.status().message().find("refused"), std::string::npos);
  req.set_round("ok");
  EXPECT_TRUE(((*client)->call<pb::PublishRequest, pb::PublishReply>(req))) << "a handler error keeps the connection";
  auto unknown = (*client)->call<pb::CollectRequest, pb::CollectReply>(pb::CollectRequest{});
  ASSERT_FALSE(unknown);
  EXPECT_NE(unknown.status().message().find("no handler"), std::string::npos);
  EXPECT_EQ(echo.server.counters().dropped, 0u);
}

// reconnect(): a client broken by its server's exit reaches a server restarted on the port (what
// workers and clients do through a coordinator restart); while nobody listens it fails.
TEST(ControlChannel, ReconnectReachesAServerRestartedOnThePort) {
  auto first = std::make_unique<EchoServer>();
  const uint16_t port = first->server.port();
  auto client = good_client(port);
  ASSERT_TRUE(client) << client.status().to_string();
  pb::PublishRequest req;
  req.set_round("ok");
  ASSERT_TRUE(((*client)->call<pb::PublishRequest, pb::PublishReply>(req)));
  first.reset();
  EXPECT_FALSE(((*client)->call<pb::PublishRequest, pb::PublishReply>(req)));
  EXPECT_TRUE((*client)->broken());
  EXPECT_FALSE((*client)->reconnect()) << "nobody listens";
  ControlServer::Options o = server_options("restarted-server", {}, "");
  o.port = port;
  ControlServer second(o);
  second.on<pb::PublishRequest, pb::PublishReply>(
      [](const pb::PublishRequest&, const PeerInfo&) -> Result<pb::PublishReply> { return pb::PublishReply{}; });
  second.start();
  const Status again = (*client)->reconnect();
  ASSERT_TRUE(again) << again.to_string();
  EXPECT_FALSE((*client)->broken());
  EXPECT_EQ((*client)->server_name(), "restarted-server");
  EXPECT_TRUE(((*client)->call<pb::PublishRequest, pb::PublishReply>(req)));
}

TEST(ControlChannel, WrongVersionIsRefusedAndLogged) {
  LogCapture log;
  EchoServer echo;
  auto bad = ControlClient::connect("127.0.0.1", echo.server.port(), client_options("old peer", 10000ms, 99));
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.status().message().find("protocol version 99"), std::string::npos) << bad.status().to_string();
  wait_for_drops(echo.server, 1);
  EXPECT_EQ(echo.server.counters().dropped, 1u);
  EXPECT_TRUE(log.contains("wrong protocol version 99")) << log.all();
  expect_serves(echo.server.port());
}

TEST(ControlChannel, GarbageFrameIsDropped) {
  LogCapture log;
  EchoServer echo;
  auto bystander = good_client(echo.server.port());  // connected before, must survive
  ASSERT_TRUE(bystander);
  const int fd = raw_connect(echo.server.port());
  ASSERT_GE(fd, 0);
  raw_send(fd, length_prefix(64) + std::string(64, '\xff'));  // wire type 7: never a valid protobuf
  EXPECT_TRUE(closed_by_server(fd, 3000ms));
  close(fd);
  wait_for_drops(echo.server, 1);
  EXPECT_TRUE(log.contains("garbage frame")) << log.all();
  pb::PublishRequest req;
  req.set_round("ok");
  EXPECT_TRUE(((*bystander)->call<pb::PublishRequest, pb::PublishReply>(req)));
  expect_serves(echo.server.port());
}

TEST(ControlChannel, OversizedFrameIsDropped) {
  LogCapture log;
  EchoServer echo(limits_with(1024, 5000ms));
  const int fd = raw_connect(echo.server.port());
  ASSERT_GE(fd, 0);
  raw_send(fd, length_prefix(0x40000000u));  // claims 1 GiB
  EXPECT_TRUE(closed_by_server(fd, 3000ms));
  close(fd);
  wait_for_drops(echo.server, 1);
  EXPECT_TRUE(log.contains("oversized frame of 1073741824 bytes (limit 1024 before the handshake)")) << log.all();
  expect_serves(echo.server.port());
}

TEST(ControlChannel, DisconnectMidFrameIsDropped) {
  LogCapture log;
  EchoServer echo;
  const int fd = raw_connect(echo.server.port());
  ASSERT_GE(fd, 0);
  raw_send(fd, length_prefix(100) + std::string(10, 'x'));
  close(fd);
  wait_for_drops(echo.server, 1);
  EXPECT_EQ(echo.server.counters().dropped, 1u);
  EXPECT_TRUE(log.contains("middle of a frame (10 of 100 bytes)")) << log.all();
  // Mid-header too.
  const int fd2 = raw_connect(echo.server.port());
  raw_send(fd2, std::string(2, '\0'));
  close(fd2);
  wait_for_drops(echo.server, 2);
  EXPECT_TRUE(log.contains("frame header (2 of 4 bytes)")) << log.all();
  expect_serves(echo.server.port());
}

TEST(ControlChannel, FirstFrameMustBeHello) {
  LogCapture log;
  EchoServer echo;
  pb::Frame frame;
  frame.set_type("switchyard.control.PublishRequest");
  const std::string body = frame.SerializeAsString();
  const int fd = raw_connect(echo.server.port());
  raw_send(fd, length_prefix(static_cast<uint32_t>(body.size())) + body);
  EXPECT_TRUE(closed_by_server(fd, 3000ms));
  close(fd);
  EXPECT_TRUE(log.contains("not a switchyard.control.Hello")) << log.all();
  expect_serves(echo.server.port());
}

TEST(ControlChannel, SilentAndStalledPeersTimeOut) {
  LogCapture log;
  EchoServer echo(limits_with(1 << 20, 200ms));
  const int silent = raw_connect(echo.server.port());
  EXPECT_TRUE(closed_by_server(silent, 3000ms));
  close(silent);
  EXPECT_TRUE(log.contains("timed out after 200 ms waiting for the handshake")) << log.all();
  expect_serves(echo.server.port());
}

TEST(ControlChannel, ClientCallTimesOutNamingTheServer) {
  EchoServer echo;
  auto client = ControlClient::connect("127.0.0.1", echo.server.port(), client_options("impatient", 100ms));
  ASSERT_TRUE(client);
  pb::PublishRequest req;
  req.set_round("slow");
  const auto start = std::chrono::steady_clock::now();
  auto reply = (*client)->call<pb::PublishRequest, pb::PublishReply>(req);
  EXPECT_LT(std::chrono::steady_clock::now() - start, 350ms);
  ASSERT_FALSE(reply);
  EXPECT_EQ(reply.status().code(), StatusCode::timeout);
  EXPECT_NE(reply.status().message().find("127.0.0.1:" + std::to_string(echo.server.port())), std::string::npos)
      << reply.status().to_string();
  EXPECT_TRUE((*client)->broken());
}

TEST(ControlChannel, ConnectToNobodyFailsFast) {
  uint16_t port = 0;
  {
    EchoServer echo;
    port = echo.server.port();
  }
  auto client = ControlClient::connect("127.0.0.1", port, client_options("late"));
  ASSERT_FALSE(client);
  EXPECT_NE(client.status().message().find("127.0.0.1:" + std::to_string(port)), std::string::npos);
}

TEST(ControlChannel, RendezvousAllGather) {
  ControlServer server(server_options("rendezvous"));
  sy::transport::RendezvousService rendezvous(server);
  server.start();
  constexpr int kWorld = 4;
  std::vector<std::vector<std::string>> got(kWorld);
  std::vector<std::thread> ranks;
  for (int r = 0; r < kWorld; ++r)
    ranks.emplace_back([&, r] {
      auto client = ControlClient::connect("127.0.0.1", server.port(), client_options("rank " + std::to_string(r)));
      ASSERT_TRUE(client);
      auto blobs = sy::transport::rendezvous_allgather(**client, "round-a", r, kWorld, "blob-" + std::to_string(r), 5000ms);
      ASSERT_TRUE(blobs) << blobs.status().to_string();
      got[static_cast<size_t>(r)] = *blobs;
    });
  for (auto& t : ranks) t.join();
  for (int r = 0; r < kWorld; ++r) {
    ASSERT_EQ(got[static_cast<size_t>(r)].size(), size_t(kWorld));
    for (int q = 0; q < kWorld; ++q) EXPECT_EQ(got[static_cast<size_t>(r)][static_cast<size_t>(q)], "blob-" + std::to_string(q));
  }
  // A round that never completes times out and says how many arrived.
  auto client = ControlClient::connect("127.0.0.1", server.port(), client_options("lonely"));
  ASSERT_TRUE(client);
  auto lonely = sy::transport::rendezvous_allgather(**client, "round-b", 0, 3, "x", 100ms);
  ASSERT_FALSE(lonely);
  EXPECT_NE(lonely.status().message().find("only 1 of 3 ranks"), std::string::npos) << lonely.status().to_string();
}


// ---- authentication --------------------------------------------------------------------------

pb::PublishRequest ok_request() {
  pb::PublishRequest req;
  req.set_round("ok");
  return req;
}

TEST(ControlAuth, SameSecretOnBothSidesServes) {
  LogCapture log;
  EchoServer echo({}, kSecret);
  auto client = ControlClient::connect("127.0.0.1", echo.server.port(), client_options("member", 10000ms, kProtocolVersion, kSecret));
  ASSERT_TRUE(client) << client.status().to_string();
  EXPECT_TRUE(((*client)->call<pb::PublishRequest, pb::PublishReply>(ok_request())));
  EXPECT_EQ(echo.handled, 1);
  EXPECT_EQ(echo.server.counters().accepted, 1u);
  EXPECT_EQ(echo.server.counters().refused, 0u);
}

TEST(ControlAuth, WrongSecretIsRefusedLoggedAndNeverReachesAHandler) {
  LogCapture log;
  EchoServer echo({}, kSecret);
  auto client = ControlClient::connect("127.0.0.1", echo.server.port(),
                                       client_options("intruder", 10000ms, kProtocolVersion, "another secret of 16+ bytes"));
  ASSERT_FALSE(client);
  EXPECT_NE(client.status().message().find("authentication refused"), std::string::npos) << client.status().to_string();
  wait_for_drops(echo.server, 1);
  EXPECT_EQ(echo.server.counters().refused, 1u);
  EXPECT_EQ(echo.server.counters().accepted, 0u);
  EXPECT_TRUE(log.contains("refusing unauthenticated peer 127.0.0.1:")) << log.all();
  EXPECT_TRUE(log.contains("(intruder): authentication failed")) << log.all();
  EXPECT_EQ(echo.handled, 0);
}

TEST(ControlAuth, ClientWithoutSecretIsRefusedByAServerWithOne) {
  LogCapture log;
  EchoServer echo({}, kSecret);
  auto client = good_client(echo.server.port());  // no secret
  ASSERT_FALSE(client);
  EXPECT_NE(client.status().message().find("has no shared secret"), std::string::npos) << client.status().to_string();
  EXPECT_NE(client.status().message().find("SWITCHYARD_SECRET"), std::string::npos) << client.status().to_string();
  wait_for_drops(echo.server, 1);
  EXPECT_EQ(echo.server.counters().refused, 1u);
  EXPECT_TRUE(log.contains("refusing unauthenticated peer 127.0.0.1:")) << log.all();
  // And a raw peer that skips the handshake and sends a request is refused before any handler.
  pb::Frame frame;
  frame.set_type("switchyard.control.PublishRequest");
  frame.set_body(ok_request().SerializeAsString());
  const std::string body = frame.SerializeAsString();
  const int fd = raw_connect(echo.server.port());
  raw_send(fd, length_prefix(static_cast<uint32_t>(body.size())) + body);
  EXPECT_TRUE(closed_by_server(fd, 3000ms));
  close(fd);
  EXPECT_EQ(echo.handled, 0);
}

TEST(ControlAuth, ClientWithSecretRefusesAServerWithout) {
  EchoServer echo;  // no secret: cannot prove anything
  auto client = ControlClient::connect("127.0.0.1", echo.server.port(), client_options("member", 10000ms, kProtocolVersion, kSecret));
  ASSERT_FALSE(client);
  EXPECT_NE(client.status().message().find("does not authenticate"), std::string::npos) << client.status().to_string();
  EXPECT_EQ(echo.handled, 0);
}

// A TCP relay that records what the client sent, to replay it later.
struct RecordingProxy {
  explicit RecordingProxy(uint16_t target) {
    listener = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(bind(listener, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    EXPECT_EQ(listen(listener, 1), 0);
    socklen_t len = sizeof a;
    getsockname(listener, reinterpret_cast<sockaddr*>(&a), &len);
    port = ntohs(a.sin_port);
    thread = std::thread([this, target] {
      const int client = accept(listener, nullptr, nullptr);
      const int server = raw_connect(target);
      std::thread back([client, server] {  // server -> client
        char buf[4096];
        for (ssize_t n; (n = recv(server, buf, sizeof buf, 0)) > 0;) send(client, buf, static_cast<size_t>(n), MSG_NOSIGNAL);
        shutdown(client, SHUT_WR);
      });
      char buf[4096];
      for (ssize_t n; (n = recv(client, buf, sizeof buf, 0)) > 0;) {
        {
          std::lock_guard<std::mutex> lock(mu);
          recorded.append(buf, static_cast<size_t>(n));
        }
        send(server, buf, static_cast<size_t>(n), MSG_NOSIGNAL);
      }
      shutdown(server, SHUT_WR);
      back.join();
      close(client);
      close(server);
    });
  }
  ~RecordingProxy() {
    thread.join();
    close(listener);
  }
  std::string bytes() {
    std::lock_guard<std::mutex> lock(mu);
    return recorded;
  }
  int listener = -1;
  uint16_t port = 0;
  std::mutex mu;
  std::string recorded;
  std::thread thread;
};

TEST(ControlAuth, ReplayedHandshakeIsRefused) {
  LogCapture log;
  EchoServer echo({}, kSecret);
  std::string recorded;
  {
    RecordingProxy proxy(echo.server.port());
    auto client = ControlClient::connect("127.0.0.1", proxy.port, client_options("member", 10000ms, kProtocolVersion, kSecret));
    ASSERT_TRUE(client) << client.status().to_string();
    ASSERT_TRUE(((*client)->call<pb::PublishRequest, pb::PublishReply>(ok_request())));
    recorded = proxy.bytes();
    client->reset();  // closes: the proxy ends
  }
  ASSERT_EQ(echo.handled, 1);
  ASSERT_EQ(echo.server.counters().accepted, 1u);
  // Hello + AuthProof + the request, byte for byte, on a new connection: the server's nonce is
  // new, so the recorded proof is wrong and the request never runs.
  const int fd = raw_connect(echo.server.port());
  ASSERT_GE(fd, 0);
  raw_send(fd, recorded);
  EXPECT_TRUE(closed_by_server(fd, 3000ms));
  close(fd);
  wait_for_drops(echo.server, 1);
  EXPECT_EQ(echo.server.counters().refused, 1u);
  EXPECT_EQ(echo.server.counters().accepted, 1u);
  EXPECT_EQ(echo.handled, 1);
  EXPECT_TRUE(log.contains("wrong proof of the shared secret")) << log.all();
}

TEST(ControlAuth, NonLoopbackBindWithoutSecretIsAConfigError) {
  ControlServer::Options o = server_options("exposed");
  o.bind_address = "0.0.0.0";
  ControlServer open_server(o);
  try {
    open_server.start();
    FAIL() << "bound 0.0.0.0 without a secret";
  } catch (const sy::Error& e) {
    EXPECT_EQ(e.kind(), sy::ErrorKind::config);
    const std::string m = e.what();
    EXPECT_NE(m.find("0.0.0.0"), std::string::npos) << m;
    EXPECT_NE(m.find("cluster.auth.secret_file"), std::string::npos) << m;
    EXPECT_NE(m.find("SWITCHYARD_SECRET"), std::string::npos) << m;
  }
  o.secret = kSecret;  // with one it binds
  ControlServer guarded(o);
  guarded.start();
  EXPECT_GT(guarded.port(), 0);
}

// ---- control-plane limits --------------------------------------------------------------------

// A raw peer that completes the unauthenticated handshake by hand.
int raw_handshaken(uint16_t port) {
  const int fd = raw_connect(port);
  pb::Hello hello;
  hello.set_protocol_version(kProtocolVersion);
  hello.set_peer_name("raw");
  pb::Frame frame;
  frame.set_request_id(1);
  frame.set_type("switchyard.control.Hello");
  frame.set_body(hello.SerializeAsString());
  const std::string body = frame.SerializeAsString();
  raw_send(fd, length_prefix(static_cast<uint32_t>(body.size())) + body);
  unsigned char header[4];
  EXPECT_EQ(recv(fd, header, 4, MSG_WAITALL), 4);
  const uint32_t n = (uint32_t{header[0]} << 24) | (uint32_t{header[1]} << 16) | (uint32_t{header[2]} << 8) | header[3];
  std::string reply(n, '\0');
  EXPECT_EQ(recv(fd, reply.data(), n, MSG_WAITALL), ssize_t(n));
  pb::Frame rf;
  pb::HelloReply hr;
  EXPECT_TRUE(rf.ParseFromString(reply) && hr.ParseFromString(rf.body()) && hr.accepted());
  return fd;
}

TEST(ControlLimits, OversizedPreHandshakeFrameIsDroppedBeforeAllocating) {
  LogCapture log;
  EchoServer echo;  // default limits: 16 MiB after the handshake, 4 KiB before
  const int fd = raw_connect(echo.server.port());
  raw_send(fd, length_prefix(16u << 20));  // claims 16 MiB, sends nothing more
  EXPECT_TRUE(closed_by_server(fd, 3000ms));
  close(fd);
  // Dropped on the length alone: the body buffer is never sized for it.
  EXPECT_TRUE(log.contains("oversized frame of 16777216 bytes (limit 4096 before the handshake)")) << log.all();
  expect_serves(echo.server.port());
}

TEST(ControlLimits, PartialHeaderAfterHandshakeTimesOut) {
  LogCapture log;
  ChannelLimits l;
  l.frame_timeout = 200ms;
  l.idle_timeout = 0ms;  // never idle-dropped: only the partial header may time out
  EchoServer echo(l);
  const int fd = raw_handshaken(echo.server.port());
  raw_send(fd, std::string(3, '\0'));  // 3 of the 4 length bytes
  EXPECT_TRUE(closed_by_server(fd, 5000ms));
  close(fd);
  EXPECT_TRUE(log.contains("timed out after 200 ms waiting for the rest of a frame")) << log.all();
  expect_serves(echo.server.port());
}

TEST(ControlLimits, IdlePeersAreDroppedAndClientsReconnectTransparently) {
  LogCapture log;
  ChannelLimits l;
  l.idle_timeout = 200ms;
  EchoServer echo(l);
  const int fd = raw_handshaken(echo.server.port());
  EXPECT_TRUE(closed_by_server(fd, 5000ms));
  close(fd);
  EXPECT_TRUE(log.contains("timed out after 200 ms waiting for the next request")) << log.all();
  auto client = good_client(echo.server.port());
  ASSERT_TRUE(client);
  ASSERT_TRUE(((*client)->call<pb::PublishRequest, pb::PublishReply>(ok_request())));
  EXPECT_EQ((*client)->reconnects(), 0u);
  std::this_thread::sleep_for(300ms);  // past the server's idle timeout: it dropped us
  auto again = (*client)->call<pb::PublishRequest, pb::PublishReply>(ok_request());
  EXPECT_TRUE(again) << again.status().to_string();
  EXPECT_EQ((*client)->reconnects(), 1u);
  EXPECT_EQ(echo.handled, 2);
}

TEST(ControlLimits, PerTypeLimitRefusesTheRequestAndKeepsTheConnection) {
  EchoServer echo({}, "", Route{.max_request_bytes = 100});
  auto client = good_client(echo.server.port());
  ASSERT_TRUE(client);
  pb::PublishRequest big = ok_request();
  big.set_blob(std::string(200, 'b'));
  auto refused = (*client)->call<pb::PublishRequest, pb::PublishReply>(big);
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.status().code(), StatusCode::invalid_argument);
  EXPECT_NE(refused.status().message().find("switchyard.control.PublishRequest of 207 bytes exceeds its limit of 100 bytes"),
            std::string::npos)
      << refused.status().to_string();
  EXPECT_EQ(echo.handled, 0);
  EXPECT_TRUE(((*client)->call<pb::PublishRequest, pb::PublishReply>(ok_request())));
  // A frame beyond every route's limit (plus the envelope) is not read at all.
  LogCapture log;
  const int fd = raw_handshaken(echo.server.port());
  raw_send(fd, length_prefix(1 << 20));
  EXPECT_TRUE(closed_by_server(fd, 3000ms));
  close(fd);
  EXPECT_TRUE(log.contains("oversized frame of 1048576 bytes (limit 612)")) << log.all();
}

// A heavy handler blocked until released: another client's request is answered meanwhile, by
// ordering (the blocked call is still in its handler when the other one returns).
TEST(ControlLimits, HeavyRequestDoesNotDelayOthers) {
  ControlServer server(server_options("heavy"));
  std::mutex mu;
  std::condition_variable cv;
  bool entered = false, released = false;
  server.on<pb::PublishRequest, pb::PublishReply>(
      [&](const pb::PublishRequest&, const PeerInfo&) -> Result<pb::PublishReply> {
        std::unique_lock<std::mutex> lock(mu);
        entered = true;
        cv.notify_all();
        cv.wait(lock, [&] { return released; });
        return pb::PublishReply{};
      },
      Route{.heavy = true});
  std::atomic<int> quick_calls{0};
  server.on<pb::CollectRequest, pb::CollectReply>([&](const pb::CollectRequest&, const PeerInfo&) -> Result<pb::CollectReply> {
    ++quick_calls;
    return pb::CollectReply{};
  });
  server.start();
  std::atomic<bool> heavy_done{false};
  std::thread heavy([&] {
    auto c = ControlClient::connect("127.0.0.1", server.port(), client_options("planner"));
    ASSERT_TRUE(c);
    auto r = (*c)->call<pb::PublishRequest, pb::PublishReply>(ok_request());
    EXPECT_TRUE(r) << r.status().to_string();
    heavy_done = true;
  });
  {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return entered; });
  }
  auto other = ControlClient::connect("127.0.0.1", server.port(), client_options("heartbeat"));
  ASSERT_TRUE(other) << other.status().to_string();
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(((*other)->call<pb::CollectRequest, pb::CollectReply>(pb::CollectRequest{})));
  EXPECT_EQ(quick_calls, 10);
  EXPECT_FALSE(heavy_done) << "the heavy call returned before it was released";
  {
    std::lock_guard<std::mutex> lock(mu);
    released = true;
  }
  cv.notify_all();
  heavy.join();
  EXPECT_TRUE(heavy_done);
}

TEST(ControlLimits, RendezvousStateIsBounded) {
  ControlServer server(server_options("rendezvous"));
  sy::transport::RendezvousService::Limits l;
  l.max_rounds = 2;
  l.max_blob_bytes = 16;
  l.max_total_bytes = 40;
  l.max_world_size = 8;
  sy::transport::RendezvousService rendezvous(server, l);
  server.start();
  auto client = good_client(server.port());
  ASSERT_TRUE(client);
  auto publish = [&](const std::string& round, uint32_t rank, uint32_t world, const std::string& blob) {
    pb::PublishRequest req;
    req.set_round(round);
    req.set_rank(rank);
    req.set_world_size(world);
    req.set_blob(blob);
    return (*client)->call<pb::PublishRequest, pb::PublishReply>(req);
  };
  auto expect_refused = [](const Result<pb::PublishReply>& r, const std::string& what) {
    ASSERT_FALSE(r) << what;
    EXPECT_EQ(r.status().code(), StatusCode::no_resource) << r.status().to_string();
    EXPECT_NE(r.status().message().find(what), std::string::npos) << r.status().to_string();
  };
  ASSERT_TRUE(publish("a", 0, 2, std::string(16, 'x')));
  expect_refused(publish("a", 1, 2, std::string(17, 'x')), "a blob of 17 bytes exceeds the limit of 16");
  expect_refused(publish("b", 0, 9, "x"), "world size 9 exceeds the limit of 8");
  ASSERT_TRUE(publish("b", 0, 2, std::string(16, 'y')));
  expect_refused(publish("c", 0, 1, "z"), "its limit of 2 rounds");
  expect_refused(publish("a", 1, 2, std::string(16, 'w')), "exceed its limit of 40");
  ASSERT_TRUE(publish("a", 1, 2, std::string(6, 'w')));  // within the total: the round completes
  EXPECT_EQ(rendezvous.blobs("a").size(), 2u);
}

}  // namespace
