// Control channel: request/response, handler errors, and every way a bad peer gets dropped
// while the server keeps serving the others.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <mutex>
#include <thread>

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
                                      uint32_t version = kProtocolVersion) {
  ControlClient::Options o;
  o.name = name;
  o.call_timeout = call_timeout;
  o.connect_timeout = 1000ms;
  o.protocol_version = version;
  return o;
}

ControlServer::Options server_options(const std::string& name, ChannelLimits limits = {}) {
  ControlServer::Options o;
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

// A server answering PublishRequest with PublishReply (or an error for round "fail").
struct EchoServer {
  explicit EchoServer(ChannelLimits limits = {}) : server(server_options("test-server", limits)) {
    server.on<pb::PublishRequest, pb::PublishReply>(
        [](const pb::PublishRequest& req, const PeerInfo&) -> Result<pb::PublishReply> {
          if (req.round() == "fail") return Status(StatusCode::invalid_argument, "round 'fail' is refused");
          if (req.round() == "slow") std::this_thread::sleep_for(400ms);
          return pb::PublishReply{};
        });
    server.start();
  }
  ControlServer server;
};

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
  EXPECT_TRUE(log.contains("oversized frame of 1073741824 bytes (limit 1024)")) << log.all();
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

}  // namespace
