// switchyard bench exchange [--tls shm|tcp|both] [--sizes 1,8,64] [--repeats 3] [--perftest PATH]
//
// For each UCX transport (shm: UCX_TLS=sm,self; tcp: UCX_TLS=tcp,self) it starts two rank
// processes of this executable on loopback, bootstraps them over the control channel and times
// `exchange` (counts, then rows) with `size` bytes from each rank to the other: the traffic is
// `size` in each direction at once. The figure is per-direction bandwidth: size / median
// exchange time, in MiB/s.
//
// The peer, measured in the same run, is `ucx_perftest -t tag_bw` carrying the same traffic:
// two tag_bw streams of `size`-byte messages, one in each direction, at once, with the same
// UCX_TLS and the same endpoint error-handling mode as the exchange's endpoints (`-e` for
// UCP_ERR_HANDLING_MODE_PEER). Its per-direction bandwidth is the mean of the two streams'
// "overall" bandwidths (an upper bound when one stream finishes first, so the ratio errs low).
// Four perftest processes share the machine's cores, so each pair runs in both of perftest's
// wait modes (poll, sleep) and the better is the peer. Exchange runs (fresh processes) and peer
// runs alternate `repeats` times; ratio = median exchange / median peer. A one-direction tag_bw
// stream is printed too, for reference.
//
// Endpoint modes: the runtime asks UCX for UCP_ERR_HANDLING_MODE_PEER so that a dead peer fails
// requests at once. UCX 1.13 grants it over TCP (at a bandwidth cost this benchmark shows: the
// `none` rows) and refuses it for shared memory, where endpoints fall back to MODE_NONE; so the
// shm rows are `none` and the tcp rows are measured in both modes. The last lines are
// `exchange_vs_ucx_shm: r` and `exchange_vs_ucx_tcp: r` at 8 MiB in the runtime's mode.
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

#include "perftest.h"
#include "switchyard/core/error.h"
#include "switchyard/launch/local_launch.h"
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
  std::string error_mode = "peer";  // peer | none (rank mode)
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
    else if (a == "--error-mode") f.error_mode = value();
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
  transport::UcxOptions uopt;
  uopt.peer_error_handling = f.error_mode == "peer";
  std::unique_ptr<transport::Transport> t = transport::make_ucx_transport(topt, uopt);
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

// Median seconds per exchange for each size (MiB), from rank 0 and rank 1 (max of the two).
std::map<int64_t, double> measure_exchange(const BenchFlags& f, const std::string& tls_name,
                                           const std::string& error_mode) {
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
  std::vector<launch::LocalProcess> ranks;
  for (int r = 0; r < 2; ++r)
    ranks.push_back(launch::LocalProcess::spawn(
        {launch::current_executable(), "bench", "exchange", "--rank", std::to_string(r), "--coordinator",
         server.endpoint(), "--sizes", sizes, "--tls-name", tls_name, "--error-mode", error_mode},
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

// ucx_perftest's "overall" bandwidth in MiB/s (its MB is 2^20 bytes); 0 when it gave none.
double perftest_bandwidth(FILE* pipe, std::string& output) {
  const std::optional<PerftestFinal> f = read_perftest_final(pipe, output);
  return f ? f->bandwidth_mib_s : 0.0;
}

// `streams` concurrent ucx_perftest -t tag_bw pairs (1: one direction; 2: one each way, the
// exchange's traffic). Returns the mean per-stream bandwidth in MiB/s; 0 on failure.
double measure_perftest(const BenchFlags& f, const std::string& tls_name, int64_t mib, int streams,
                        const std::string& extra) {
  const std::string tls = ucx_tls_for(tls_name);
  std::vector<uint16_t> ports;
  std::vector<launch::LocalProcess> servers;
  auto common = [&](uint16_t port) {
    return " -p " + std::to_string(port) + " -t tag_bw -s " + std::to_string(mib << 20) + " -n " +
           std::to_string(iterations_for(mib) * 2) + " -w 5" + extra;
  };
  auto start_servers = [&] {
    for (uint16_t port : ports)
      servers.push_back(launch::LocalProcess::spawn(
          {"/bin/sh", "-c", "exec timeout 120 " + f.perftest + common(port) + " >/dev/null 2>&1"}, {{"UCX_TLS", tls}}));
    std::this_thread::sleep_for(300ms);
  };
  for (int s = 0; s < streams; ++s) ports.push_back(free_loopback_port());
  start_servers();
  double total = 0;
  bool ok = true;
  for (int attempt = 0; attempt < 20; ++attempt) {
    std::vector<FILE*> pipes;
    for (uint16_t port : ports)
      pipes.push_back(popen(("UCX_TLS=" + tls + " timeout 120 " + f.perftest + " 127.0.0.1" + common(port) + " 2>&1").c_str(), "r"));
    total = 0;
    ok = true;
    bool refused = false;
    std::string all;
    for (FILE* pipe : pipes) {
      if (!pipe) {
        ok = false;
        continue;
      }
      std::string output;
      const double bw = perftest_bandwidth(pipe, output);
      pclose(pipe);
      all += output;
      if (bw == 0) ok = false;
      if (output.find("Connection refused") != std::string::npos) refused = true;
      total += bw;
    }
    if (ok) break;
    if (refused && attempt + 1 < 20) {
      // A server was not listening yet; the others already ran their test and exited.
      for (auto& server : servers) (void)server.wait(30000ms);
      servers.clear();
      start_servers();
      continue;
    }
    std::cerr << "bench exchange: ucx_perftest gave no result:\n" << all;
    break;
  }
  for (auto& server : servers) (void)server.wait(30000ms);
  return ok ? total / streams : 0.0;
}

// One sample of the peer for an exchange: both directions at once, the better of perftest's
// wait modes.
double measure_perftest_both_ways(const BenchFlags& f, const std::string& tls_name, int64_t mib,
                                  const std::string& error_mode) {
  const std::string e = error_mode == "peer" ? " -e" : "";
  return std::max(measure_perftest(f, tls_name, mib, 2, e), measure_perftest(f, tls_name, mib, 2, e + " -E sleep"));
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
  std::cout << "bench exchange: 2 processes on loopback, each sending `size` to the other; per-direction "
               "bandwidth in MiB/s.\n  exchange: median exchange time of a run. perftest both ways: two "
               "`ucx_perftest -t tag_bw` streams, one each way at once, same UCX_TLS and endpoint mode "
               "(better of poll/sleep wait modes); exchange and perftest runs alternate, medians of "
            << f.repeats << " each. ratio = exchange / perftest both ways. one way: a single stream, for reference.\n";
  std::cout << std::left << std::setw(6) << "tls" << std::setw(7) << "mode" << std::right << std::setw(10) << "size"
            << std::setw(12) << "exchange" << std::setw(16) << "perftest_both" << std::setw(9) << "ratio" << std::setw(15)
            << "perftest_one" << "\n";
  for (const std::string& tls : tls_list) {
    // The runtime's endpoints ask for peer error handling; UCX 1.13 refuses it for shared memory.
    const std::vector<std::string> modes = tls == "shm" ? std::vector<std::string>{"none"}
                                                        : std::vector<std::string>{"peer", "none"};
    for (const std::string& mode : modes) {
      // Exchange runs and peer runs alternate, so that a burst of load on this shared machine
      // hits both sides alike; each side's figure is the median of its `repeats` runs.
      std::map<int64_t, std::vector<double>> exchange_runs, peer_runs;
      for (int rep = 0; rep < f.repeats; ++rep) {
        const std::map<int64_t, double> seconds = measure_exchange(f, tls, mode);
        for (int64_t mib : f.sizes_mib) {
          exchange_runs[mib].push_back(seconds.count(mib) && seconds.at(mib) > 0 ? double(mib) / seconds.at(mib) : 0.0);
          peer_runs[mib].push_back(measure_perftest_both_ways(f, tls, mib, mode));
        }
      }
      for (int64_t mib : f.sizes_mib) {
        const double both = median(peer_runs[mib]);
        const double one = measure_perftest(f, tls, mib, 1, mode == "peer" ? " -e" : "");
        const double exchange = median(exchange_runs[mib]);
        const double ratio = both > 0 ? exchange / both : 0.0;
        std::cout << std::left << std::setw(6) << tls << std::setw(7) << mode << std::right << std::setw(6) << mib
                  << " MiB" << std::fixed << std::setprecision(0) << std::setw(12) << exchange << std::setw(16) << both
                  << std::setprecision(2) << std::setw(9) << ratio << std::setprecision(0) << std::setw(15) << one
                  << "\n";
        if (mib == 8 && mode == modes.front()) headline[tls] = ratio;
      }
    }
  }
  for (const std::string& tls : tls_list)
    if (headline.count(tls)) std::cout << "exchange_vs_ucx_" << tls << ": " << std::setprecision(2) << headline[tls] << "\n";
  return 0;
}

double ucx_perftest_tag_bw(const std::string& tls, int64_t mib, const std::string& perftest) {
  BenchFlags f;
  f.perftest = perftest;
  return std::max(measure_perftest(f, tls, mib, 1, ""), measure_perftest(f, tls, mib, 1, " -E sleep"));
}

}  // namespace sy
