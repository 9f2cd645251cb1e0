// switchyard bench exchange [--tls shm|tcp|both] [--sizes 1,8,64] [--repeats 3] [--perftest PATH]
//
// For each UCX transport (shm: UCX_TLS=sm,self; tcp: UCX_TLS=tcp,self) it starts two rank
// processes of this executable on loopback, bootstraps them over the control channel and times
// `exchange` (counts, then rows) with `size` bytes from each rank to the other. The figure is
// per-direction bandwidth: size / median exchange time, in MiB/s. Then, in the same run, it runs
// `ucx_perftest -t tag_bw` (server + client, same UCX_TLS, same size) `repeats` times and takes
// the median of its "overall" bandwidth (MiB/s). Ratio = exchange / perftest; the last lines are
// `exchange_vs_ucx_shm: r` and `exchange_vs_ucx_tcp: r` at 8 MiB.
//
// Note on loopback: the exchange moves `size` bytes in both directions at once while
// ucx_perftest tag_bw moves one direction; on one machine both directions share the same cores
// and memory bandwidth, so the per-direction ratio is conservative. The `both_dirs_ratio`
// column (bytes moved in both directions / perftest bandwidth) shows the other bound.
#include "bench_exchange.h"

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iomanip>
#include <iostream>
#include <map>
#include <sstream>
#include <thread>

#include "switchyard/core/error.h"
#include "switchyard/transport/local_launch.h"
#include "switchyard/transport/rendezvous.h"
#include "switchyard/transport/ucx.h"

namespace sy {

namespace {

using namespace std::chrono_literals;
using transport::Status;

struct BenchFlags {
  std::string tls = "both";
  std::vector<int64_t> sizes_mib = {1, 8, 64};
  int repeats = 3;
  std::string perftest = "ucx_perftest";
  // rank mode (internal)
  int rank = -1;
  std::string coordinator;
  std::string tls_name;
};

std::vector<int64_t> parse_sizes(const std::string& text) {
  std::vector<int64_t> out;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    try {
      size_t pos = 0;
      const int64_t v = std::stoll(item, &pos);
      if (pos != item.size() || v < 1 || v > 1024) throw std::invalid_argument(item);
      out.push_back(v);
    } catch (const std::exception&) {
      throw_config_error("bench exchange: --sizes expects MiB values 1..1024 separated by commas, got '" + text + "'");
    }
  }
  if (out.empty()) throw_config_error("bench exchange: --sizes is empty");
  return out;
}

BenchFlags parse_flags(const std::vector<std::string>& args) {
  BenchFlags f;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= args.size()) throw_config_error("bench exchange: " + a + " needs a value");
      return args[++i];
    };
    if (a == "--tls") f.tls = value();
    else if (a == "--sizes") f.sizes_mib = parse_sizes(value());
    else if (a == "--repeats") f.repeats = std::max(1, std::stoi(value()));
    else if (a == "--perftest") f.perftest = value();
    else if (a == "--rank") f.rank = std::stoi(value());
    else if (a == "--coordinator") f.coordinator = value();
    else if (a == "--tls-name") f.tls_name = value();
    else throw_config_error("bench exchange: unknown flag '" + a + "' (--tls, --sizes, --repeats, --perftest)");
  }
  if (f.tls != "shm" && f.tls != "tcp" && f.tls != "both") throw_config_error("bench exchange: --tls is shm, tcp or both");
  return f;
}

std::string ucx_tls_for(const std::string& name) { return name == "shm" ? "sm,self" : "tcp,self"; }

int iterations_for(int64_t mib) { return mib >= 64 ? 15 : mib >= 8 ? 60 : 200; }

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

// ---- rank process ----------------------------------------------------------------------------

int run_rank(const BenchFlags& f) {
  const auto [host, port] = control::parse_endpoint(f.coordinator);
  control::ControlClient::Options copt;
  copt.name = "bench rank " + std::to_string(f.rank);
  auto client = control::ControlClient::connect(host, port, copt);
  client.status().throw_if_error();
  transport::TransportOptions topt;
  topt.rank = f.rank;
  topt.world_size = 2;
  std::unique_ptr<transport::Transport> t = transport::make_ucx_transport(topt);
  transport::bootstrap_transport(*t, **client, "addresses", 30000ms).throw_if_error();
  const transport::Rank peer = 1 - f.rank;
  constexpr size_t kRowBytes = 4096;
  std::ostringstream result;
  for (int64_t mib : f.sizes_mib) {
    const size_t bytes = static_cast<size_t>(mib) << 20;
    std::vector<std::byte> send(bytes, std::byte{static_cast<unsigned char>(f.rank + 1)}), recv(bytes);
    auto send_region = t->register_memory(send.data(), bytes, transport::MemoryKind::host);
    auto recv_region = t->register_memory(recv.data(), bytes, transport::MemoryKind::host);
    std::vector<int64_t> rows(2, 0);
    rows[static_cast<size_t>(peer)] = static_cast<int64_t>(bytes / kRowBytes);
    transport::ExchangeBuffers buffers;
    buffers.send = send.data();
    buffers.recv = recv.data();
    buffers.row_bytes = kRowBytes;
    buffers.send_region = send_region ? &*send_region : nullptr;
    buffers.recv_region = recv_region ? &*recv_region : nullptr;
    const int iters = iterations_for(mib);
    std::vector<double> seconds;
    for (int i = 0; i < iters + 3; ++i) {
      const auto start = std::chrono::steady_clock::now();
      auto layout = t->exchange_counts(rows, 30000ms);
      layout.status().throw_if_error();
      t->exchange_rows(*layout, buffers, 30000ms).throw_if_error();
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      if (i >= 3) seconds.push_back(s);  // 3 warm-up exchanges
    }
    if (recv[0] != std::byte{static_cast<unsigned char>(peer + 1)} || recv[bytes - 1] != recv[0])
      throw Error(ErrorKind::transport, "bench exchange: received bytes are wrong");
    if (send_region) (void)t->deregister_memory(*send_region);
    if (recv_region) (void)t->deregister_memory(*recv_region);
    result << mib << ":" << median(seconds) << ";";
  }
  auto all = transport::rendezvous_allgather(**client, "results", f.rank, 2, result.str(), 60000ms);
  all.status().throw_if_error();
  return 0;
}

// ---- driver ----------------------------------------------------------------------------------

uint16_t free_port() {
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

// Median seconds per exchange for each size (MiB), from rank 0 and rank 1 (max of the two).
std::map<int64_t, double> measure_exchange(const BenchFlags& f, const std::string& tls_name) {
  control::ControlServer::Options sopt;
  sopt.name = "bench exchange";
  control::ControlServer server(sopt);
  transport::RendezvousService rendezvous(server);
  server.start();
  std::string sizes;
  for (int64_t s : f.sizes_mib) {
    if (!sizes.empty()) sizes += ',';
    sizes += std::to_string(s);
  }
  std::vector<transport::LocalProcess> ranks;
  for (int r = 0; r < 2; ++r)
    ranks.push_back(transport::LocalProcess::spawn(
        {transport::current_executable(), "bench", "exchange", "--rank", std::to_string(r), "--coordinator",
         server.endpoint(), "--sizes", sizes, "--tls-name", tls_name},
        {{"UCX_TLS", ucx_tls_for(tls_name)}}));
  for (int r = 0; r < 2; ++r) {
    auto code = ranks[static_cast<size_t>(r)].wait(300000ms);
    if (!code || *code != 0)
      throw Error(ErrorKind::transport, "bench exchange: rank " + std::to_string(r) + " over " + tls_name + " failed: " +
                                            (code ? "exit code " + std::to_string(*code) : code.status().to_string()));
  }
  std::map<int64_t, double> out;
  for (const std::string& blob : rendezvous.blobs("results")) {
    std::stringstream ss(blob);
    std::string item;
    while (std::getline(ss, item, ';')) {
      const size_t colon = item.find(':');
      if (colon == std::string::npos) continue;
      const int64_t mib = std::stoll(item.substr(0, colon));
      out[mib] = std::max(out[mib], std::stod(item.substr(colon + 1)));
    }
  }
  return out;
}

// ucx_perftest -t tag_bw "overall" bandwidth in MiB/s (its MB is 2^20 bytes); 0 on failure.
double measure_perftest(const BenchFlags& f, const std::string& tls_name, int64_t mib) {
  const uint16_t port = free_port();
  const std::string common = " -p " + std::to_string(port) + " -t tag_bw -s " + std::to_string(mib << 20) + " -n " +
                             std::to_string(iterations_for(mib) * 2) + " -w " + std::to_string(5);
  const std::string env = "UCX_TLS=" + ucx_tls_for(tls_name) + " ";
  transport::LocalProcess server = transport::LocalProcess::spawn(
      {"/bin/sh", "-c", "exec timeout 120 " + f.perftest + common + " >/dev/null 2>&1"},
      {{"UCX_TLS", ucx_tls_for(tls_name)}});
  std::this_thread::sleep_for(300ms);
  const std::string cmd = env + "timeout 120 " + f.perftest + " 127.0.0.1" + common + " 2>&1";
  double bandwidth = 0;
  for (int attempt = 0; attempt < 20 && bandwidth == 0; ++attempt) {
    FILE* pipe = popen(cmd.c_str(), "r");
    if (!pipe) break;
    char line[1024];
    std::string all;
    while (fgets(line, sizeof(line), pipe)) {
      all += line;
      std::istringstream ls(line);
      std::string word;
      ls >> word;
      if (word != "Final:") continue;
      double cols[7] = {};
      for (double& c : cols) ls >> c;
      bandwidth = cols[5];  // iterations, lat 50%, lat avg, lat overall, bw avg, bw overall, ...
    }
    pclose(pipe);
    if (bandwidth == 0 && all.find("Connection refused") != std::string::npos) {
      std::this_thread::sleep_for(200ms);  // server not listening yet
      continue;
    }
    if (bandwidth == 0) {
      std::cerr << "bench exchange: ucx_perftest gave no result:\n" << all;
      break;
    }
  }
  (void)server.wait(30000ms);
  return bandwidth;
}

}  // namespace

int cli_bench_exchange(const std::vector<std::string>& args) {
  if (args.empty() || args[0] != "exchange")
    throw_config_error("usage: switchyard bench exchange [--tls shm|tcp|both] [--sizes 1,8,64] [--repeats N]");
  const BenchFlags f = parse_flags(std::vector<std::string>(args.begin() + 1, args.end()));
  if (f.rank >= 0) return run_rank(f);

  std::vector<std::string> tls_list;
  if (f.tls == "both" || f.tls == "shm") tls_list.push_back("shm");
  if (f.tls == "both" || f.tls == "tcp") tls_list.push_back("tcp");
  std::map<std::string, double> headline;
  std::cout << "bench exchange: 2 processes on loopback, per-direction bandwidth in MiB/s "
               "(exchange: median of timed exchanges; ucx_perftest tag_bw: median of "
            << f.repeats << " runs, overall bandwidth)\n";
  std::cout << std::left << std::setw(6) << "tls" << std::right << std::setw(10) << "size" << std::setw(14)
            << "exchange" << std::setw(14) << "ucx_perftest" << std::setw(9) << "ratio" << std::setw(16)
            << "both_dirs_ratio" << "\n";
  for (const std::string& tls : tls_list) {
    const std::map<int64_t, double> seconds = measure_exchange(f, tls);
    for (int64_t mib : f.sizes_mib) {
      std::vector<double> perf;
      for (int i = 0; i < f.repeats; ++i) perf.push_back(measure_perftest(f, tls, mib));
      const double perftest = median(perf);
      const double exchange = seconds.count(mib) && seconds.at(mib) > 0 ? double(mib) / seconds.at(mib) : 0.0;
      const double ratio = perftest > 0 ? exchange / perftest : 0.0;
      std::cout << std::left << std::setw(6) << tls << std::right << std::setw(6) << mib << " MiB" << std::fixed
                << std::setprecision(0) << std::setw(14) << exchange << std::setw(14) << perftest
                << std::setprecision(2) << std::setw(9) << ratio << std::setw(16) << 2 * ratio << "\n";
      if (mib == 8) headline[tls] = ratio;
    }
  }
  for (const std::string& tls : tls_list)
    if (headline.count(tls)) std::cout << "exchange_vs_ucx_" << tls << ": " << std::setprecision(2) << headline[tls] << "\n";
  return 0;
}

}  // namespace sy
