// A small HTTP/1.1 server (Boost.Beast) for cluster.http: GET requests answered by one handler,
// on one I/O thread. With a token, every request must carry it (`Authorization: Bearer T`, or
// HTTP Basic with T as the password, which browsers ask for); without one it binds to loopback
// addresses only, as the control server does (README "Security").
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

namespace sy {

class HttpServer {
 public:
  struct Response {
    int status = 200;
    std::string content_type = "text/plain; charset=utf-8";
    std::string body;
  };
  // `target`: the request's path without its query ("/metrics").
  using Handler = std::function<Response(const std::string& target)>;
  struct Options {
    std::string bind_address = "127.0.0.1";
    uint16_t port = 0;   // 0: any free port
    std::string token;   // empty: no authentication, loopback only
    std::string key = "cluster.http";  // the config key, for errors
  };

  // Binds and starts serving. Throws sy::Error(config) for a non-loopback address without a
  // token (naming the key and how to set a secret), sy::Error(transport) when it cannot listen.
  HttpServer(const Options& options, Handler handler);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  std::string endpoint() const;  // "host:port" as bound ([v6]:port)
  void stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// True when `authorization` (the header's value) carries `token` as a bearer token or as the
// password of HTTP Basic; compared in constant time. Public for the tests.
bool http_authorized(const std::string& authorization, const std::string& token);

}  // namespace sy
