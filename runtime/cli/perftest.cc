#include "perftest.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <iostream>
#include <sstream>
#include <thread>

#include "switchyard/launch/local_launch.h"

namespace sy {

uint16_t free_loopback_port() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  socklen_t len = sizeof(a);
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  close(fd);
  return ntohs(a.sin_port);
}

std::optional<PerftestFinal> read_perftest_final(FILE* pipe, std::string& output) {
  std::optional<PerftestFinal> out;
  char line[1024];
  while (fgets(line, sizeof(line), pipe)) {
    output += line;
    std::istringstream ls(line);
    std::string word;
    ls >> word;
    if (word != "Final:") continue;
    double cols[7] = {};  // iterations, lat 50%, lat avg, lat overall, bw avg, bw overall, ...
    for (double& c : cols) ls >> c;
    out = PerftestFinal{cols[1], cols[5]};
  }
  return out;
}

std::optional<double> perftest_latency_us(const std::string& perftest, const std::string& ucx_tls, int64_t bytes,
                                          int iterations) {
  const std::string env = ucx_tls.empty() ? "" : "UCX_TLS=" + ucx_tls + " ";
  std::string all;
  for (int attempt = 0; attempt < 10; ++attempt) {  // the server may not listen yet: again
    const std::string args = " -p " + std::to_string(free_loopback_port()) + " -t tag_lat -s " + std::to_string(bytes) +
                             " -n " + std::to_string(iterations) + " -w 50";
    launch::LocalProcess server =
        launch::LocalProcess::spawn({"/bin/sh", "-c", "exec " + env + "timeout 60 " + perftest + args + " >/dev/null 2>&1"});
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    FILE* pipe = popen((env + "timeout 60 " + perftest + " 127.0.0.1" + args + " 2>&1").c_str(), "r");
    if (!pipe) break;
    std::string output;
    const std::optional<PerftestFinal> f = read_perftest_final(pipe, output);
    pclose(pipe);
    (void)server.wait(std::chrono::milliseconds(30000));
    all += output;
    if (f) return f->latency_50_us;
    if (output.find("Connection refused") == std::string::npos) break;
  }
  std::cerr << "ucx_perftest -t tag_lat gave no result:\n" << all;
  return std::nullopt;
}

}  // namespace sy
