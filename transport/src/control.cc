#include "switchyard/transport/control.h"

#include <atomic>
#include <boost/asio.hpp>
#include <boost/asio/thread_pool.hpp>
#include <list>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "auth.h"
#include "control.pb.h"
#include "switchyard/core/error.h"
#include "switchyard/core/log.h"
#include "switchyard/transport/status_wire.h"

namespace sy::control {

namespace asio = boost::asio;
using asio::ip::tcp;
using boost::system::error_code;

namespace {

using transport::status_code_from_pb;
using transport::status_code_to_pb;

constexpr size_t kHeaderBytes = 4;

std::string encode_frame(const switchyard::control::Frame& frame) {
  const std::string body = frame.SerializeAsString();
  const auto n = static_cast<uint32_t>(body.size());
  std::string out(kHeaderBytes, '\0');
  out[0] = static_cast<char>((n >> 24) & 0xff);
  out[1] = static_cast<char>((n >> 16) & 0xff);
  out[2] = static_cast<char>((n >> 8) & 0xff);
  out[3] = static_cast<char>(n & 0xff);
  return out + body;
}

uint32_t decode_length(const unsigned char* h) {
  return (uint32_t{h[0]} << 24) | (uint32_t{h[1]} << 16) | (uint32_t{h[2]} << 8) | uint32_t{h[3]};
}

std::string endpoint_string(const tcp::endpoint& e) {
  return e.address().to_string() + ":" + std::to_string(e.port());
}

}  // namespace

std::pair<std::string, uint16_t> parse_endpoint(const std::string& host_port) {
  const size_t colon = host_port.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == host_port.size())
    throw_config_error("'" + host_port + "' is not host:port");
  const std::string port_text = host_port.substr(colon + 1);
  size_t pos = 0;
  long port = -1;
  try {
    port = std::stol(port_text, &pos);
  } catch (const std::exception&) {
    pos = 0;
  }
  if (pos != port_text.size() || port < 1 || port > 65535)
    throw_config_error("'" + host_port + "': port must be 1..65535");
  return {host_port.substr(0, colon), static_cast<uint16_t>(port)};
}

// ---------------------------------------------------------------------------------------------
// Server

class ServerSession;

namespace {
constexpr size_t kEnvelopeBytes = 512;     // a Frame's own fields around a request body
constexpr size_t kBodyChunk = 64 << 10;    // bodies grow as their bytes arrive, never ahead of them
}  // namespace

struct ControlServer::Impl {
  struct Entry {
    Route route;
    RawHandler handler;
  };
  Options options;
  asio::io_context io;
  tcp::acceptor acceptor{io};
  std::thread thread;
  std::unique_ptr<asio::thread_pool> heavy;  // Route::heavy handlers; after `io`: destroyed first
  std::unordered_map<std::string, Entry> handlers;
  std::list<std::weak_ptr<ServerSession>> sessions;
  std::atomic<uint64_t> accepted{0}, dropped{0}, refused{0}, requests{0};
  uint64_t next_connection = 0;
  size_t frame_cap = 0;  // the largest frame any route accepts (set by start)
  bool started = false;
  bool stopped = false;
  uint16_t bound_port = 0;

  void accept_next();
  size_t handshake_cap() const { return std::min(options.limits.handshake_frame_bytes, frame_cap); }
};

class ServerSession : public std::enable_shared_from_this<ServerSession> {
 public:
  ServerSession(ControlServer::Impl& server, tcp::socket socket, uint64_t id)
      : server_(server), socket_(std::move(socket)), timer_(server.io) {
    peer_.connection_id = id;
    error_code ec;
    const tcp::endpoint remote = socket_.remote_endpoint(ec);
    peer_.endpoint = ec ? "unknown" : endpoint_string(remote);
  }

  void start() {
    handshake_deadline_ = std::chrono::steady_clock::now() + server_.options.limits.handshake_timeout;
    arm_until(handshake_deadline_, server_.options.limits.handshake_timeout, "the handshake");
    read_header();
  }

  void close() {
    closed_ = true;
    error_code ec;
    socket_.close(ec);
    timer_.cancel();
  }

 private:
  enum class Phase { hello, proof, ready };
  using Clock = std::chrono::steady_clock;

  std::string who() const {
    return "peer " + peer_.endpoint + (peer_.name.empty() ? "" : " (" + peer_.name + ")");
  }

  void drop(const std::string& reason) {
    if (closed_) return;
    closed_ = true;
    ++server_.dropped;
    SY_LOG(warn, "control", "control server: dropping " << who() << ": " << reason);
    close();
  }

  // An unauthenticated peer: counted and logged as refused, never reaches a handler.
  void refuse(const std::string& reason) {
    if (closed_) return;
    ++server_.refused;
    ++server_.dropped;
    closed_ = true;
    SY_LOG(warn, "control", "control server: refusing unauthenticated " << who() << ": " << reason);
    close();
  }

  void finish_quietly(const std::string& reason) {
    if (closed_) return;
    closed_ = true;
    SY_LOG(debug, "control", "control server: " << who() << " " << reason);
    close();
  }

  // Expiry drops the peer; re-arming or cancelling aborts the previous wait.
  void arm(std::chrono::milliseconds timeout, const char* what) {
    if (timeout.count() <= 0) {
      timer_.cancel();
      return;
    }
    arm_until(Clock::now() + timeout, timeout, what);
  }
  void arm_until(Clock::time_point deadline, std::chrono::milliseconds timeout, const char* what) {
    timer_.expires_at(deadline);
    timer_.async_wait([self = shared_from_this(), timeout, what](const error_code& ec) {
      if (ec) return;  // re-armed or cancelled
      self->drop("timed out after " + std::to_string(timeout.count()) + " ms waiting for " + what);
    });
  }
  void rearm_handshake() {
    arm_until(handshake_deadline_, server_.options.limits.handshake_timeout, "the handshake");
  }

  // The 4 length bytes arrive in any pieces; once the first is here, the whole frame must
  // follow within frame_timeout (before the handshake, the handshake deadline covers it).
  void read_header() {
    header_got_ = 0;
    read_header_rest();
  }
  void read_header_rest() {
    socket_.async_read_some(asio::buffer(header_ + header_got_, kHeaderBytes - header_got_),
                            [self = shared_from_this()](const error_code& ec, size_t n) { self->on_header(ec, n); });
  }

  void on_header(const error_code& ec, size_t n) {
    if (closed_) return;
    const size_t had = header_got_;
    header_got_ += n;
    if (ec) {
      if (header_got_ == 0 && ec == asio::error::eof && phase_ == Phase::ready)
        return finish_quietly("closed the connection");
      if (header_got_ == 0 && ec == asio::error::eof) return drop("disconnected before the handshake");
      if (header_got_ > 0)
        return drop("disconnected in the middle of a frame header (" + std::to_string(header_got_) + " of 4 bytes)");
      return drop("read failed: " + ec.message());
    }
    if (had == 0 && phase_ == Phase::ready) arm(server_.options.limits.frame_timeout, "the rest of a frame");
    if (header_got_ < kHeaderBytes) return read_header_rest();
    const uint32_t length = decode_length(header_);
    const size_t limit = phase_ == Phase::ready ? server_.frame_cap : server_.handshake_cap();
    if (length > limit)
      return drop(std::string("oversized frame of ") + std::to_string(length) + " bytes (limit " +
                  std::to_string(limit) + (phase_ == Phase::ready ? "" : " before the handshake") + ")");
    body_len_ = length;
    body_got_ = 0;
    body_.clear();
    read_body();
  }

  void read_body() {
    if (body_got_ == body_len_) return on_frame();
    const size_t want = std::min(body_len_, std::max(body_got_ * 2, kBodyChunk));
    if (body_.size() < want) body_.resize(want);
    socket_.async_read_some(asio::buffer(body_.data() + body_got_, want - body_got_),
                            [self = shared_from_this()](const error_code& ec, size_t n) { self->on_body(ec, n); });
  }

  void on_body(const error_code& ec, size_t n) {
    if (closed_) return;
    body_got_ += n;
    if (ec)
      return drop("disconnected in the middle of a frame (" + std::to_string(body_got_) + " of " +
                  std::to_string(body_len_) + " bytes): " + ec.message());
    read_body();
  }

  void on_frame() {
    body_.resize(body_len_);
    switchyard::control::Frame frame;
    if (!frame.ParseFromString(body_))
      return drop("garbage frame: " + std::to_string(body_.size()) + " bytes that are not a switchyard.control.Frame");
    body_.clear();
    body_.shrink_to_fit();
    switch (phase_) {
      case Phase::hello: return on_hello(frame);
      case Phase::proof: return on_proof(frame);
      case Phase::ready: break;
    }
    if (frame.is_reply()) return drop("sent a reply frame to the server");
    if (frame.type().empty()) return drop("sent a frame without a message type");
    handle(std::move(frame));
  }

  static switchyard::control::Frame reply_frame(uint64_t request_id, const google::protobuf::Message& m) {
    switchyard::control::Frame out;
    out.set_request_id(request_id);
    out.set_type(m.GetDescriptor()->full_name());
    out.set_body(m.SerializeAsString());
    out.set_is_reply(true);
    return out;
  }

  void on_hello(const switchyard::control::Frame& frame) {
    namespace cpb = switchyard::control;
    cpb::Hello hello;
    if (frame.type() != cpb::Hello::descriptor()->full_name() || !hello.ParseFromString(frame.body()))
      return drop("first frame is '" + frame.type() + "', not a switchyard.control.Hello");
    peer_.name = hello.peer_name();
    const ControlServer::Options& o = server_.options;
    cpb::HelloReply reply;
    reply.set_protocol_version(o.protocol_version);
    reply.set_server_name(o.name);
    reply.set_idle_timeout_ms(static_cast<uint32_t>(std::max<int64_t>(0, o.limits.idle_timeout.count())));
    if (hello.protocol_version() != o.protocol_version) {
      reply.set_accepted(false);
      reply.set_reason("protocol version " + std::to_string(hello.protocol_version()) +
                       " is not supported (server speaks " + std::to_string(o.protocol_version) + ")");
      const std::string reason = "wrong protocol version " + std::to_string(hello.protocol_version()) +
                                 " (server speaks " + std::to_string(o.protocol_version) + ")";
      write(reply_frame(frame.request_id(), reply), [reason](ServerSession& s) { s.drop(reason); });
      return;
    }
    if (o.secret.empty()) {  // no authentication: loopback only (start() saw to it)
      reply.set_accepted(true);
      return accept(reply_frame(frame.request_id(), reply));
    }
    if (!hello.auth()) {
      reply.set_accepted(false);
      reply.set_reason("this server requires authentication and the client has no shared secret (set "
                       "cluster.auth.secret_file or the SWITCHYARD_SECRET environment variable)");
      write(reply_frame(frame.request_id(), reply), [](ServerSession& s) { s.refuse("it has no shared secret"); });
      return;
    }
    if (hello.client_nonce().size() != auth::kNonceBytes)
      return refuse("its Hello carries a nonce of " + std::to_string(hello.client_nonce().size()) + " bytes, not " +
                    std::to_string(auth::kNonceBytes));
    client_nonce_ = hello.client_nonce();
    server_nonce_ = auth::random_nonce();  // fresh per connection: a recorded proof never fits another
    reply.set_accepted(true);
    reply.set_auth(true);
    reply.set_server_nonce(server_nonce_);
    phase_ = Phase::proof;
    write(reply_frame(frame.request_id(), reply), [](ServerSession& s) {
      s.rearm_handshake();
      s.read_header();
    });
  }

  void on_proof(const switchyard::control::Frame& frame) {
    namespace cpb = switchyard::control;
    cpb::AuthProof proof;
    if (frame.type() != cpb::AuthProof::descriptor()->full_name() || !proof.ParseFromString(frame.body()))
      return refuse("sent '" + frame.type() + "' where its switchyard.control.AuthProof was due");
    const std::string& secret = server_.options.secret;
    cpb::AuthResult result;
    if (!auth::proof_matches(auth::proof(secret, auth::Side::client, client_nonce_, server_nonce_),
                             proof.client_proof())) {
      result.set_accepted(false);
      result.set_reason("authentication failed: the proof of the shared secret is wrong");
      write(reply_frame(frame.request_id(), result), [](ServerSession& s) {
        s.refuse("authentication failed: wrong proof of the shared secret (another secret, or a replayed handshake)");
      });
      return;
    }
    result.set_accepted(true);
    result.set_server_proof(auth::proof(secret, auth::Side::server, client_nonce_, server_nonce_));
    accept(reply_frame(frame.request_id(), result));
  }

  void accept(const switchyard::control::Frame& out) {
    phase_ = Phase::ready;
    ++server_.accepted;
    SY_LOG(debug, "control", "control server: accepted " << who()
                                                         << (server_.options.secret.empty() ? "" : " (authenticated)"));
    write(out, [](ServerSession& s) { s.next_request(); });
  }

  static switchyard::control::Frame run_handler(const ControlServer::Impl::Entry& entry,
                                                const switchyard::control::Frame& frame, const PeerInfo& peer) {
    switchyard::control::Frame out;
    out.set_request_id(frame.request_id());
    out.set_is_reply(true);
    Result<Payload> reply = Status(StatusCode::internal, "handler did not run");
    try {
      reply = entry.handler(frame.body(), peer);
    } catch (const std::exception& e) {
      reply = Status(StatusCode::internal, std::string("handler threw: ") + e.what());
    }
    if (reply) {
      out.set_type(reply->type);
      out.set_body(std::move(reply->body));
    } else {
      out.set_error(reply.status().message());
      out.set_error_code(status_code_to_pb(reply.status().code()));
    }
    return out;
  }

  void handle(switchyard::control::Frame frame) {
    auto it = server_.handlers.find(frame.type());
    std::string refusal;
    StatusCode code = StatusCode::unsupported;
    if (it == server_.handlers.end()) {
      refusal = "no handler for " + frame.type();
    } else if (frame.body().size() > it->second.route.max_request_bytes) {
      refusal = "a " + frame.type() + " of " + std::to_string(frame.body().size()) + " bytes exceeds its limit of " +
                std::to_string(it->second.route.max_request_bytes) + " bytes";
      code = StatusCode::invalid_argument;
      SY_LOG(warn, "control", "control server: " << who() << ": " << refusal);
    }
    if (!refusal.empty()) {
      switchyard::control::Frame out;
      out.set_request_id(frame.request_id());
      out.set_is_reply(true);
      out.set_error(refusal);
      out.set_error_code(status_code_to_pb(code));
      ++server_.requests;
      write(out, [](ServerSession& s) { s.next_request(); });
      return;
    }
    const ControlServer::Impl::Entry& entry = it->second;
    if (!entry.route.heavy || !server_.heavy) {
      switchyard::control::Frame out = run_handler(entry, frame, peer_);
      ++server_.requests;
      write(out, [](ServerSession& s) { s.next_request(); });
      return;
    }
    // Heavy: the handler thread runs it; this connection reads nothing more until the reply is
    // written (one request at a time, as on the I/O thread), every other one is served meanwhile.
    timer_.cancel();
    auto request = std::make_shared<switchyard::control::Frame>(std::move(frame));
    asio::post(*server_.heavy, [self = shared_from_this(), &entry, request, peer = peer_] {
      auto out = std::make_shared<switchyard::control::Frame>(run_handler(entry, *request, peer));
      asio::post(self->server_.io, [self, out] {
        if (self->closed_) return;
        ++self->server_.requests;
        self->write(*out, [](ServerSession& s) { s.next_request(); });
      });
    });
  }

  void next_request() {
    arm(server_.options.limits.idle_timeout, "the next request");
    read_header();
  }

  template <class Then>
  void write(const switchyard::control::Frame& frame, Then then) {
    out_ = encode_frame(frame);
    arm(server_.options.limits.frame_timeout, "a reply to be written");
    asio::async_write(socket_, asio::buffer(out_), [self = shared_from_this(), then](const error_code& ec, size_t) {
      if (self->closed_) return;
      if (ec) return self->drop("write failed: " + ec.message());
      then(*self);
    });
  }

  ControlServer::Impl& server_;
  tcp::socket socket_;
  asio::steady_timer timer_;
  PeerInfo peer_;
  Phase phase_ = Phase::hello;
  Clock::time_point handshake_deadline_;
  std::string client_nonce_, server_nonce_;
  unsigned char header_[kHeaderBytes] = {0, 0, 0, 0};
  size_t header_got_ = 0;
  size_t body_len_ = 0, body_got_ = 0;
  std::string body_;
  std::string out_;
  bool closed_ = false;
};

void ControlServer::Impl::accept_next() {
  acceptor.async_accept([this](const error_code& ec, tcp::socket socket) {
    if (ec) {
      if (ec != asio::error::operation_aborted)
        SY_LOG(warn, "control", "control server: accept failed: " << ec.message());
      if (!acceptor.is_open()) return;
    } else {
      auto session = std::make_shared<ServerSession>(*this, std::move(socket), ++next_connection);
      sessions.remove_if([](const std::weak_ptr<ServerSession>& w) { return w.expired(); });
      sessions.push_back(session);
      session->start();
    }
    accept_next();
  });
}

ControlServer::ControlServer(Options options) : impl_(std::make_unique<Impl>()) {
  impl_->options = std::move(options);
}

ControlServer::~ControlServer() { stop(); }

void ControlServer::add_handler(const std::string& type, Route route, RawHandler handler) {
  if (impl_->started) throw Error(ErrorKind::transport, "control server: handlers must be added before start()");
  if (route.max_request_bytes == 0 || route.max_request_bytes > impl_->options.limits.max_frame_bytes)
    route.max_request_bytes = impl_->options.limits.max_frame_bytes;
  impl_->handlers[type] = Impl::Entry{route, std::move(handler)};
}

void ControlServer::start() {
  if (impl_->started) return;
  error_code ec;
  const auto address = asio::ip::make_address(impl_->options.bind_address, ec);
  if (ec) throw Error(ErrorKind::transport, "control server: bad bind address '" + impl_->options.bind_address + "'");
  const tcp::endpoint endpoint(address, impl_->options.port);
  if (impl_->options.secret.empty() && !address.is_loopback())
    throw Error(ErrorKind::config, "control server '" + impl_->options.name + "': binding to " +
                                       endpoint_string(endpoint) +
                                       " (not a loopback address) needs the cluster's shared secret: set "
                                       "cluster.auth.secret_file (a file of mode 600) or the SWITCHYARD_SECRET "
                                       "environment variable; without one, servers bind to loopback only");
  // The largest frame any route accepts: nothing larger is read from anyone.
  size_t largest = 0;
  bool any_heavy = false;
  for (const auto& [type, entry] : impl_->handlers) {
    largest = std::max(largest, entry.route.max_request_bytes);
    any_heavy = any_heavy || entry.route.heavy;
  }
  impl_->frame_cap = impl_->handlers.empty()
                         ? impl_->options.limits.max_frame_bytes
                         : std::min(impl_->options.limits.max_frame_bytes, largest + kEnvelopeBytes);
  impl_->acceptor.open(endpoint.protocol(), ec);
  if (!ec) impl_->acceptor.set_option(tcp::acceptor::reuse_address(true), ec);
  if (!ec) impl_->acceptor.bind(endpoint, ec);
  if (!ec) impl_->acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec)
    throw Error(ErrorKind::transport, "control server: cannot listen on " + endpoint_string(endpoint) + ": " +
                                          ec.message());
  impl_->bound_port = impl_->acceptor.local_endpoint().port();
  if (any_heavy && impl_->options.heavy_threads > 0)
    impl_->heavy = std::make_unique<asio::thread_pool>(static_cast<size_t>(impl_->options.heavy_threads));
  impl_->started = true;
  impl_->accept_next();
  impl_->thread = std::thread([this] {
    try {
      impl_->io.run();
    } catch (const std::exception& e) {
      SY_LOG(error, "control", "control server: I/O thread stopped: " << e.what());
    }
  });
}

void ControlServer::stop() {
  if (!impl_->started || impl_->stopped) return;
  impl_->stopped = true;
  asio::post(impl_->io, [this] {
    error_code ec;
    impl_->acceptor.close(ec);
    for (auto& w : impl_->sessions)
      if (auto s = w.lock()) s->close();
  });
  if (impl_->thread.joinable()) impl_->thread.join();
  if (impl_->heavy) impl_->heavy->join();  // a running heavy handler finishes; its reply goes nowhere
}

uint16_t ControlServer::port() const { return impl_->bound_port; }

std::string ControlServer::endpoint() const { return impl_->options.bind_address + ":" + std::to_string(port()); }

ControlServer::Counters ControlServer::counters() const {
  return Counters{impl_->accepted.load(), impl_->dropped.load(), impl_->refused.load(), impl_->requests.load()};
}

// ---------------------------------------------------------------------------------------------
// Client: synchronous calls, each asynchronous step bounded by io_context::run_for.

struct ControlClient::Impl {
  Options options;
  asio::io_context io;
  tcp::socket socket{io};
  std::string host;
  uint16_t port = 0;
  std::string endpoint;
  std::string server_name;
  uint64_t next_request = 0;
  uint64_t reconnects = 0;
  std::chrono::milliseconds server_idle_timeout{0};
  std::chrono::steady_clock::time_point last_used;
  bool broken = false;

  Status fail(StatusCode code, const std::string& what) {
    broken = true;
    error_code ec;
    socket.close(ec);
    return Status(code, "control channel to " + endpoint + ": " + what);
  }

  // Runs the io_context until `done` or the deadline; on timeout closes the socket.
  bool run_until(const bool& done, std::chrono::steady_clock::time_point deadline) {
    io.restart();
    while (!done) {
      const auto now = std::chrono::steady_clock::now();
      if (now >= deadline) break;
      if (io.run_one_for(deadline - now) == 0 && io.stopped()) io.restart();
    }
    if (done) return true;
    error_code ec;
    socket.close(ec);  // aborts the pending operation; drain its handler
    io.restart();
    io.run();
    return false;
  }

  Status send_frame(const switchyard::control::Frame& frame, std::chrono::steady_clock::time_point deadline) {
    const std::string bytes = encode_frame(frame);
    bool done = false;
    error_code result;
    asio::async_write(socket, asio::buffer(bytes), [&](const error_code& ec, size_t) {
      result = ec;
      done = true;
    });
    if (!run_until(done, deadline)) return fail(StatusCode::timeout, "timed out sending a " + frame.type());
    if (result) return fail(StatusCode::peer_failed, "send failed: " + result.message());
    return Status::ok();
  }

  Result<switchyard::control::Frame> read_frame(std::chrono::steady_clock::time_point deadline, const std::string& what,
                                                size_t max_bytes) {
    unsigned char header[kHeaderBytes];
    bool done = false;
    error_code result;
    asio::async_read(socket, asio::buffer(header), [&](const error_code& ec, size_t) {
      result = ec;
      done = true;
    });
    if (!run_until(done, deadline)) return fail(StatusCode::timeout, "timed out waiting for " + what);
    if (result) return fail(StatusCode::peer_failed, "connection lost waiting for " + what + ": " + result.message());
    const uint32_t length = decode_length(header);
    if (length > max_bytes)
      return fail(StatusCode::protocol, "oversized reply frame of " + std::to_string(length) + " bytes");
    std::string body(length, '\0');
    done = false;
    asio::async_read(socket, asio::buffer(body), [&](const error_code& ec, size_t) {
      result = ec;
      done = true;
    });
    if (!run_until(done, deadline)) return fail(StatusCode::timeout, "timed out reading " + what);
    if (result) return fail(StatusCode::peer_failed, "connection lost reading " + what + ": " + result.message());
    switchyard::control::Frame frame;
    if (!frame.ParseFromString(body)) return fail(StatusCode::protocol, "garbage reply frame");
    return frame;
  }

  template <class M>
  Result<M> exchange(const google::protobuf::Message& request, std::chrono::steady_clock::time_point deadline,
                     const std::string& what) {
    switchyard::control::Frame frame;
    frame.set_request_id(++next_request);
    frame.set_type(request.GetDescriptor()->full_name());
    frame.set_body(request.SerializeAsString());
    if (Status s = send_frame(frame, deadline); !s) return s;
    Result<switchyard::control::Frame> reply = read_frame(deadline, what, options.limits.handshake_frame_bytes);
    if (!reply) return reply.status();
    M m;
    if (reply->type() != M::descriptor()->full_name() || !m.ParseFromString(reply->body()))
      return fail(StatusCode::protocol, what + " is not a " + M::descriptor()->full_name());
    return m;
  }

  // Connects (again) and performs the handshake.
  Status open() {
    namespace cpb = switchyard::control;
    error_code ec;
    socket.close(ec);
    socket = tcp::socket(io);
    broken = false;
    const auto deadline = std::chrono::steady_clock::now() + options.connect_timeout;
    tcp::resolver resolver(io);
    const auto endpoints = resolver.resolve(host, std::to_string(port), ec);
    if (ec) return fail(StatusCode::unreachable, "cannot resolve: " + ec.message());
    bool done = false;
    error_code result;
    asio::async_connect(socket, endpoints, [&](const error_code& e, const tcp::endpoint&) {
      result = e;
      done = true;
    });
    if (!run_until(done, deadline))
      return fail(StatusCode::timeout, "connect timed out after " + std::to_string(options.connect_timeout.count()) + " ms");
    if (result) return fail(StatusCode::unreachable, "connect failed: " + result.message());
    socket.set_option(tcp::no_delay(true), ec);

    const bool with_secret = !options.secret.empty();
    cpb::Hello hello;
    hello.set_protocol_version(options.protocol_version);
    hello.set_peer_name(options.name);
    hello.set_auth(with_secret);
    const std::string client_nonce = with_secret ? auth::random_nonce() : std::string();
    hello.set_client_nonce(client_nonce);
    const auto handshake_deadline = std::chrono::steady_clock::now() + options.limits.handshake_timeout;
    Result<cpb::HelloReply> reply = exchange<cpb::HelloReply>(hello, handshake_deadline, "the handshake reply");
    if (!reply) return reply.status();
    if (!reply->accepted()) return fail(StatusCode::protocol, "handshake refused: " + reply->reason());
    if (with_secret && !reply->auth())
      return fail(StatusCode::protocol,
                  "the server does not authenticate (it has no shared secret), so it cannot prove it is the "
                  "cluster's: refusing it (give the server the same cluster.auth.secret_file or SWITCHYARD_SECRET)");
    if (!with_secret && reply->auth())
      return fail(StatusCode::protocol, "the server requires authentication: set cluster.auth.secret_file or the "
                                        "SWITCHYARD_SECRET environment variable");
    if (with_secret) {
      if (reply->server_nonce().size() != auth::kNonceBytes)
        return fail(StatusCode::protocol, "the server's nonce has " + std::to_string(reply->server_nonce().size()) + " bytes");
      cpb::AuthProof proof;
      proof.set_client_proof(auth::proof(options.secret, auth::Side::client, client_nonce, reply->server_nonce()));
      Result<cpb::AuthResult> verdict =
          exchange<cpb::AuthResult>(proof, handshake_deadline, "the authentication result");
      if (!verdict) return verdict.status();
      if (!verdict->accepted())
        return fail(StatusCode::protocol, "authentication refused: " + verdict->reason() +
                                              " (do both sides have the same shared secret?)");
      if (!auth::proof_matches(auth::proof(options.secret, auth::Side::server, client_nonce, reply->server_nonce()),
                               verdict->server_proof()))
        return fail(StatusCode::protocol,
                    "the server did not prove knowledge of the shared secret: refusing it (an impostor, or another secret)");
    }
    server_name = reply->server_name();
    server_idle_timeout = std::chrono::milliseconds(reply->idle_timeout_ms());
    last_used = std::chrono::steady_clock::now();
    return Status::ok();
  }
};

ControlClient::ControlClient(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ControlClient::~ControlClient() {
  error_code ec;
  impl_->socket.close(ec);
}

Result<std::unique_ptr<ControlClient>> ControlClient::connect(const std::string& host, uint16_t port, Options options) {
  auto impl = std::make_unique<Impl>();
  impl->options = std::move(options);
  impl->host = host;
  impl->port = port;
  impl->endpoint = host + ":" + std::to_string(port);
  if (Status s = impl->open(); !s) return s;
  return std::unique_ptr<ControlClient>(new ControlClient(std::move(impl)));
}

Result<Payload> ControlClient::call_raw(const Payload& request) {
  if (impl_->broken)
    return Status(StatusCode::peer_failed, "control channel to " + impl_->endpoint + ": broken by an earlier failure");
  // The server drops connections idle for its idle timeout: well before that, start afresh.
  if (impl_->server_idle_timeout.count() > 0 &&
      std::chrono::steady_clock::now() - impl_->last_used > impl_->server_idle_timeout / 2) {
    if (Status s = impl_->open(); !s) return s;
    ++impl_->reconnects;
  }
  switchyard::control::Frame frame;
  const uint64_t id = ++impl_->next_request;
  frame.set_request_id(id);
  frame.set_type(request.type);
  frame.set_body(request.body);
  const auto deadline = std::chrono::steady_clock::now() + impl_->options.call_timeout;
  if (Status s = impl_->send_frame(frame, deadline); !s) return s;
  Result<switchyard::control::Frame> reply =
      impl_->read_frame(deadline, "the reply to " + request.type, impl_->options.limits.max_frame_bytes);
  if (!reply) return reply.status();
  impl_->last_used = std::chrono::steady_clock::now();
  if (!reply->is_reply() || reply->request_id() != id)
    return impl_->fail(StatusCode::protocol, "reply does not match request " + std::to_string(id));
  if (!reply->error().empty()) {
    return Status(status_code_from_pb(reply->error_code()), "control channel to " + impl_->endpoint + ": " + request.type + " failed: " + reply->error());
  }
  return Payload{reply->type(), reply->body()};
}

Status ControlClient::reconnect() { return impl_->open(); }

const std::string& ControlClient::server_endpoint() const { return impl_->endpoint; }
const std::string& ControlClient::server_name() const { return impl_->server_name; }
bool ControlClient::broken() const { return impl_->broken; }
uint64_t ControlClient::reconnects() const { return impl_->reconnects; }

}  // namespace sy::control

namespace sy::transport {

namespace cpb = switchyard::control;

cpb::StatusCode status_code_to_pb(StatusCode code) {
  switch (code) {
    case StatusCode::ok: return cpb::OK;
    case StatusCode::no_resource: return cpb::NO_RESOURCE;
    case StatusCode::timeout: return cpb::TIMEOUT;
    case StatusCode::peer_failed: return cpb::PEER_FAILED;
    case StatusCode::unreachable: return cpb::UNREACHABLE;
    case StatusCode::invalid_argument: return cpb::INVALID_ARGUMENT;
    case StatusCode::truncated: return cpb::TRUNCATED;
    case StatusCode::protocol: return cpb::PROTOCOL;
    case StatusCode::unsupported: return cpb::UNSUPPORTED;
    case StatusCode::internal: return cpb::INTERNAL;
  }
  return cpb::INTERNAL;
}

StatusCode status_code_from_pb(cpb::StatusCode code) {
  switch (code) {
    case cpb::NO_RESOURCE: return StatusCode::no_resource;
    case cpb::TIMEOUT: return StatusCode::timeout;
    case cpb::PEER_FAILED: return StatusCode::peer_failed;
    case cpb::UNREACHABLE: return StatusCode::unreachable;
    case cpb::INVALID_ARGUMENT: return StatusCode::invalid_argument;
    case cpb::TRUNCATED: return StatusCode::truncated;
    case cpb::PROTOCOL: return StatusCode::protocol;
    case cpb::UNSUPPORTED: return StatusCode::unsupported;
    default: return StatusCode::internal;
  }
}

}  // namespace sy::transport
