// cluster.http: the coordinator's HTTP face (README "Observability"): /metrics (Prometheus
// text), / (the dashboard page, embedded at build time), /api/state (what the page polls).
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "coordinator_impl.h"
#include "dashboard_page.h"
#include "switchyard/core/error.h"
#include "switchyard/core/log.h"

namespace sy {

std::string http_token(const std::string& secret) {
  if (secret.empty()) return "";
  static constexpr char kLabel[] = "switchyard http v1";
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  HMAC(EVP_sha256(), secret.data(), static_cast<int>(secret.size()), reinterpret_cast<const unsigned char*>(kLabel),
       sizeof kLabel - 1, mac, &len);
  static constexpr char hex[] = "0123456789abcdef";
  std::string out;
  for (unsigned int i = 0; i < len; ++i) {
    out += hex[mac[i] >> 4];
    out += hex[mac[i] & 15];
  }
  return out;
}

void Coordinator::Impl::start_http() {
  if (cluster.http.empty()) return;  // off
  const std::optional<HostPort> listen = parse_host_port(cluster.http);
  if (!listen) throw Error(ErrorKind::config, "cluster.http: '" + cluster.http + "' is not host:port");
  HttpServer::Options o;
  o.bind_address = listen->host;
  o.port = static_cast<uint16_t>(listen->port);
  o.token = http_token(secret);
  http = std::make_unique<HttpServer>(o, [this](const std::string& target) -> HttpServer::Response {
    if (target == "/metrics") return {200, "text/plain; version=0.0.4; charset=utf-8", metrics_text()};
    if (target == "/api/state") return {200, "application/json", state_json()};
    if (target == "/" || target == "/index.html") return {200, "text/html; charset=utf-8", std::string(kDashboardPage)};
    if (target == "/favicon.ico") return {204, "image/x-icon", ""};
    return {404, "text/plain; charset=utf-8", "no " + target + " here: try /, /metrics or /api/state\n"};
  });
  SY_LOG(info, "runtime", "dashboard at http://" << http->endpoint() << "/");
}

}  // namespace sy
