#include "switchyard/transport/control.h"

#include <atomic>
#include <boost/asio.hpp>
#include <list>
#include <mutex>
#include <thread>
#include <unordered_map>

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

struct ControlServer::Impl {
  Options options;
  asio::io_context io;
  tcp::acceptor acceptor{io};
  std::thread thread;
  std::unordered_map<std::string, RawHandler> handlers;
  std::list<std::weak_ptr<ServerSession>> sessions;
  std::atomic<uint64_t> accepted{0}, dropped{0}, requests{0};
  uint64_t next_connection = 0;
  bool started = false;
  bool stopped = false;
  uint16_t bound_port = 0;

  void accept_next();
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
    arm(server_.options.limits.handshake_timeout, "the handshake");
    read_header();
  }

  void close() {
    closed_ = true;
    error_code ec;
    socket_.close(ec);
    timer_.cancel();
  }

 private:
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
    timer_.expires_after(timeout);
    timer_.async_wait([self = shared_from_this(), timeout, what](const error_code& ec) {
      if (ec) return;  // re-armed or cancelled
      self->drop("timed out after " + std::to_string(timeout.count()) + " ms waiting for " + what);
    });
  }

  void read_header() {
    asio::async_read(socket_, asio::buffer(header_), [self = shared_from_this()](const error_code& ec, size_t n) {
      self->on_header(ec, n);
    });
  }

  void on_header(const error_code& ec, size_t n) {
    if (closed_) return;
    if (ec) {
      if (n == 0 && ec == asio::error::eof && handshaken_) return finish_quietly("closed the connection");
      if (n == 0 && ec == asio::error::eof) return drop("disconnected before the handshake");
      if (n > 0) return drop("disconnected in the middle of a frame header (" + std::to_string(n) + " of 4 bytes)");
      return drop("read failed: " + ec.message());
    }
    const uint32_t length = decode_length(header_);
    if (length > server_.options.limits.max_frame_bytes)
      return drop("oversized frame of " + std::to_string(length) + " bytes (limit " +
                  std::to_string(server_.options.limits.max_frame_bytes) + ")");
    if (handshaken_) arm(server_.options.limits.frame_timeout, "the rest of a frame");
    body_.resize(length);
    asio::async_read(socket_, asio::buffer(body_), [self = shared_from_this()](const error_code& e, size_t got) {
      self->on_body(e, got);
    });
  }

  void on_body(const error_code& ec, size_t n) {
    if (closed_) return;
    if (ec)
      return drop("disconnected in the middle of a frame (" + std::to_string(n) + " of " +
                  std::to_string(body_.size()) + " bytes): " + ec.message());
    switchyard::control::Frame frame;
    if (!frame.ParseFromString(body_)) return drop("garbage frame: " + std::to_string(body_.size()) +
                                                   " bytes that are not a switchyard.control.Frame");
    if (!handshaken_) return on_hello(frame);
    if (frame.is_reply()) return drop("sent a reply frame to the server");
    if (frame.type().empty()) return drop("sent a frame without a message type");
    handle(frame);
  }

  void on_hello(const switchyard::control::Frame& frame) {
    switchyard::control::Hello hello;
    if (frame.type() != switchyard::control::Hello::descriptor()->full_name() || !hello.ParseFromString(frame.body()))
      return drop("first frame is '" + frame.type() + "', not a switchyard.control.Hello");
    peer_.name = hello.peer_name();
    switchyard::control::HelloReply reply;
    reply.set_protocol_version(server_.options.protocol_version);
    reply.set_server_name(server_.options.name);
    const bool accepted = hello.protocol_version() == server_.options.protocol_version;
    reply.set_accepted(accepted);
    if (!accepted)
      reply.set_reason("protocol version " + std::to_string(hello.protocol_version()) + " is not supported (server speaks " +
                       std::to_string(server_.options.protocol_version) + ")");
    switchyard::control::Frame out;
    out.set_request_id(frame.request_id());
    out.set_type(switchyard::control::HelloReply::descriptor()->full_name());
    out.set_body(reply.SerializeAsString());
    out.set_is_reply(true);
    if (!accepted) {
      const std::string reason = "wrong protocol version " + std::to_string(hello.protocol_version()) +
                                 " (server speaks " + std::to_string(server_.options.protocol_version) + ")";
      write(out, [reason](ServerSession& s) { s.drop(reason); });
      return;
    }
    handshaken_ = true;
    ++server_.accepted;
    SY_LOG(debug, "control", "control server: accepted " << who());
    write(out, [](ServerSession& s) { s.next_request(); });
  }

  void handle(const switchyard::control::Frame& frame) {
    switchyard::control::Frame out;
    out.set_request_id(frame.request_id());
    out.set_is_reply(true);
    auto it = server_.handlers.find(frame.type());
    if (it == server_.handlers.end()) {
      out.set_error("no handler for " + frame.type());
      out.set_error_code(status_code_to_pb(StatusCode::unsupported));
    } else {
      Result<Payload> reply = Status(StatusCode::internal, "handler did not run");
      try {
        reply = it->second(frame.body(), peer_);
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
    }
    ++server_.requests;
    write(out, [](ServerSession& s) { s.next_request(); });
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
  unsigned char header_[kHeaderBytes] = {0, 0, 0, 0};
  std::string body_;
  std::string out_;
  bool handshaken_ = false;
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

void ControlServer::add_handler(const std::string& type, RawHandler handler) {
  if (impl_->started) throw Error(ErrorKind::transport, "control server: handlers must be added before start()");
  impl_->handlers[type] = std::move(handler);
}

void ControlServer::start() {
  if (impl_->started) return;
  error_code ec;
  const auto address = asio::ip::make_address(impl_->options.bind_address, ec);
  if (ec) throw Error(ErrorKind::transport, "control server: bad bind address '" + impl_->options.bind_address + "'");
  const tcp::endpoint endpoint(address, impl_->options.port);
  impl_->acceptor.open(endpoint.protocol(), ec);
  if (!ec) impl_->acceptor.set_option(tcp::acceptor::reuse_address(true), ec);
  if (!ec) impl_->acceptor.bind(endpoint, ec);
  if (!ec) impl_->acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec)
    throw Error(ErrorKind::transport, "control server: cannot listen on " + endpoint_string(endpoint) + ": " +
                                          ec.message());
  impl_->bound_port = impl_->acceptor.local_endpoint().port();
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
}

uint16_t ControlServer::port() const { return impl_->bound_port; }

std::string ControlServer::endpoint() const { return impl_->options.bind_address + ":" + std::to_string(port()); }

ControlServer::Counters ControlServer::counters() const {
  return Counters{impl_->accepted.load(), impl_->dropped.load(), impl_->requests.load()};
}

// ---------------------------------------------------------------------------------------------
// Client: synchronous calls, each asynchronous step bounded by io_context::run_for.

struct ControlClient::Impl {
  Options options;
  asio::io_context io;
  tcp::socket socket{io};
  std::string endpoint;
  std::string server_name;
  uint64_t next_request = 0;
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

  Result<switchyard::control::Frame> read_frame(std::chrono::steady_clock::time_point deadline, const std::string& what) {
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
    if (length > options.limits.max_frame_bytes)
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
};

ControlClient::ControlClient(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ControlClient::~ControlClient() {
  error_code ec;
  impl_->socket.close(ec);
}

Result<std::unique_ptr<ControlClient>> ControlClient::connect(const std::string& host, uint16_t port, Options options) {
  auto impl = std::make_unique<Impl>();
  impl->options = std::move(options);
  impl->endpoint = host + ":" + std::to_string(port);
  const auto deadline = std::chrono::steady_clock::now() + impl->options.connect_timeout;
  error_code ec;
  tcp::resolver resolver(impl->io);
  const auto endpoints = resolver.resolve(host, std::to_string(port), ec);
  if (ec) return Status(StatusCode::unreachable, "control channel to " + impl->endpoint + ": cannot resolve: " + ec.message());
  bool done = false;
  error_code result;
  asio::async_connect(impl->socket, endpoints, [&](const error_code& e, const tcp::endpoint&) {
    result = e;
    done = true;
  });
  if (!impl->run_until(done, deadline))
    return Status(StatusCode::timeout, "control channel to " + impl->endpoint + ": connect timed out after " +
                                           std::to_string(impl->options.connect_timeout.count()) + " ms");
  if (result) return Status(StatusCode::unreachable, "control channel to " + impl->endpoint + ": connect failed: " + result.message());
  impl->socket.set_option(tcp::no_delay(true), ec);

  switchyard::control::Hello hello;
  hello.set_protocol_version(impl->options.protocol_version);
  hello.set_peer_name(impl->options.name);
  switchyard::control::Frame frame;
  frame.set_request_id(++impl->next_request);
  frame.set_type(switchyard::control::Hello::descriptor()->full_name());
  frame.set_body(hello.SerializeAsString());
  const auto handshake_deadline = std::chrono::steady_clock::now() + impl->options.limits.handshake_timeout;
  if (Status s = impl->send_frame(frame, handshake_deadline); !s) return s;
  Result<switchyard::control::Frame> reply = impl->read_frame(handshake_deadline, "the handshake reply");
  if (!reply) return reply.status();
  switchyard::control::HelloReply hello_reply;
  if (reply->type() != switchyard::control::HelloReply::descriptor()->full_name() ||
      !hello_reply.ParseFromString(reply->body()))
    return impl->fail(StatusCode::protocol, "the handshake reply is not a HelloReply");
  if (!hello_reply.accepted())
    return impl->fail(StatusCode::protocol, "handshake refused: " + hello_reply.reason());
  impl->server_name = hello_reply.server_name();
  return std::unique_ptr<ControlClient>(new ControlClient(std::move(impl)));
}

Result<Payload> ControlClient::call_raw(const Payload& request) {
  if (impl_->broken)
    return Status(StatusCode::peer_failed, "control channel to " + impl_->endpoint + ": broken by an earlier failure");
  switchyard::control::Frame frame;
  const uint64_t id = ++impl_->next_request;
  frame.set_request_id(id);
  frame.set_type(request.type);
  frame.set_body(request.body);
  const auto deadline = std::chrono::steady_clock::now() + impl_->options.call_timeout;
  if (Status s = impl_->send_frame(frame, deadline); !s) return s;
  Result<switchyard::control::Frame> reply = impl_->read_frame(deadline, "the reply to " + request.type);
  if (!reply) return reply.status();
  if (!reply->is_reply() || reply->request_id() != id)
    return impl_->fail(StatusCode::protocol, "reply does not match request " + std::to_string(id));
  if (!reply->error().empty()) {
    return Status(status_code_from_pb(reply->error_code()), "control channel to " + impl_->endpoint + ": " + request.type + " failed: " + reply->error());
  }
  return Payload{reply->type(), reply->body()};
}

const std::string& ControlClient::server_endpoint() const { return impl_->endpoint; }
const std::string& ControlClient::server_name() const { return impl_->server_name; }
bool ControlClient::broken() const { return impl_->broken; }

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
