#include "http_server.h"

#include <openssl/crypto.h>

#include <optional>
#include <utility>

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/core/detail/base64.hpp>
#include <boost/beast/http.hpp>
#include <chrono>
#include <thread>

#include "switchyard/core/error.h"
#include "switchyard/core/log.h"

namespace sy {
namespace {
namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

constexpr auto kRequestTimeout = std::chrono::seconds(10);  // a client that stalls is dropped
constexpr size_t kMaxRequestBytes = 64 * 1024;

bool constant_time_equal(const std::string& a, const std::string& b) {
  return a.size() == b.size() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

std::string endpoint_string(const tcp::endpoint& e) {
  const std::string host = e.address().to_string();
  return (e.address().is_v6() ? "[" + host + "]" : host) + ":" + std::to_string(e.port());
}

class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(tcp::socket socket, const HttpServer::Handler& handler, const std::string& token)
      : stream_(std::move(socket)), handler_(handler), token_(token) {}
  void start() { read(); }

 private:
  void read() {
    request_ = {};
    parser_.emplace();
    parser_->body_limit(kMaxRequestBytes);
    parser_->header_limit(kMaxRequestBytes);
    stream_.expires_after(kRequestTimeout);
    http::async_read(stream_, buffer_, *parser_, [self = shared_from_this()](beast::error_code ec, size_t) {
      if (ec) return;  // closed, timed out or malformed: drop the connection
      self->request_ = self->parser_->release();
      self->respond();
    });
  }

  void respond() {
    auto res = std::make_shared<http::response<http::string_body>>(make_response());
    stream_.expires_after(kRequestTimeout);
    http::async_write(stream_, *res, [self = shared_from_this(), res](beast::error_code ec, size_t) {
      if (ec || !res->keep_alive()) {
        beast::error_code ignored;
        self->stream_.socket().shutdown(tcp::socket::shutdown_send, ignored);
        return;
      }
      self->read();
    });
  }

  http::response<http::string_body> make_response() {
    http::response<http::string_body> res;
    res.version(request_.version());
    res.keep_alive(request_.keep_alive());
    res.set(http::field::server, "switchyard");
    res.set(http::field::cache_control, "no-store");
    if (!token_.empty() && !http_authorized(std::string(request_[http::field::authorization]), token_)) {
      res.result(http::status::unauthorized);
      res.set(http::field::www_authenticate, "Basic realm=\"switchyard\"");
      res.set(http::field::content_type, "text/plain; charset=utf-8");
      res.body() = "this cluster needs its dashboard token: `switchyard http-token` prints it (README \"Observability\")\n";
    } else if (request_.method() != http::verb::get && request_.method() != http::verb::head) {
      res.result(http::status::method_not_allowed);
      res.set(http::field::allow, "GET, HEAD");
    } else {
      std::string target(request_.target());
      target = target.substr(0, target.find('?'));
      HttpServer::Response r;
      try {
        r = handler_(target);
      } catch (const std::exception& e) {
        r = {500, "text/plain; charset=utf-8", std::string("internal error: ") + e.what() + "\n"};
      }
      res.result(static_cast<http::status>(r.status));
      res.set(http::field::content_type, r.content_type);
      res.body() = request_.method() == http::verb::head ? "" : std::move(r.body);
    }
    res.prepare_payload();
    return res;
  }

  beast::tcp_stream stream_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  http::request<http::string_body> request_;
  const HttpServer::Handler& handler_;
  const std::string& token_;
};

}  // namespace

bool http_authorized(const std::string& authorization, const std::string& token) {
  if (token.empty()) return true;
  auto after = [&](const std::string& scheme) -> std::optional<std::string> {
    if (authorization.size() <= scheme.size() || authorization.compare(0, scheme.size(), scheme) != 0) return std::nullopt;
    return authorization.substr(scheme.size());
  };
  if (auto bearer = after("Bearer ")) return constant_time_equal(*bearer, token);
  if (auto basic = after("Basic ")) {
    std::string decoded(beast::detail::base64::decoded_size(basic->size()), '\0');
    const auto [written, read] = beast::detail::base64::decode(decoded.data(), basic->data(), basic->size());
    decoded.resize(written);
    const size_t colon = decoded.find(':');
    return colon != std::string::npos && constant_time_equal(decoded.substr(colon + 1), token);
  }
  return false;
}

struct HttpServer::Impl {
  Options options;
  Handler handler;
  asio::io_context io;
  tcp::acceptor acceptor{io};
  std::thread thread;
  std::string endpoint;

  void accept() {
    acceptor.async_accept([this](beast::error_code ec, tcp::socket socket) {
      if (ec == asio::error::operation_aborted) return;
      if (!ec) std::make_shared<Session>(std::move(socket), handler, options.token)->start();
      accept();
    });
  }
};

HttpServer::HttpServer(const Options& options, Handler handler) : impl_(std::make_unique<Impl>()) {
  impl_->options = options;
  impl_->handler = std::move(handler);
  boost::system::error_code ec;
  const auto address = asio::ip::make_address(options.bind_address, ec);
  if (ec) throw Error(ErrorKind::config, options.key + ": '" + options.bind_address + "' is not an IP address");
  const tcp::endpoint endpoint(address, options.port);
  if (options.token.empty() && !address.is_loopback())
    throw Error(ErrorKind::config, options.key + ": serving on " + endpoint_string(endpoint) +
                                       " (not a loopback address) needs the cluster's shared secret: set "
                                       "cluster.auth.secret_file or SWITCHYARD_SECRET; without one it serves "
                                       "on loopback only");
  tcp::acceptor& a = impl_->acceptor;
  a.open(endpoint.protocol(), ec);
  if (!ec) a.set_option(tcp::acceptor::reuse_address(true), ec);
  if (!ec) a.bind(endpoint, ec);
  if (!ec) a.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) throw Error(ErrorKind::transport, options.key + ": cannot listen on " + endpoint_string(endpoint) + ": " + ec.message());
  impl_->endpoint = endpoint_string(a.local_endpoint());
  impl_->accept();
  impl_->thread = std::thread([im = impl_.get()] { im->io.run(); });
}

HttpServer::~HttpServer() { stop(); }

std::string HttpServer::endpoint() const { return impl_->endpoint; }

void HttpServer::stop() {
  if (!impl_->thread.joinable()) return;
  impl_->io.stop();
  impl_->thread.join();
}

}  // namespace sy
