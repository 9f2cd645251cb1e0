#include "cluster_commands.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <ctime>
#include <cstdlib>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <iomanip>
#include <optional>
#include <map>
#include <sstream>
#include <fstream>
#include <iostream>
#include <mutex>
#include <thread>

#include "backend_flag.h"
#include "flags.h"
#include "perftest.h"
#include "switchyard/core/secret.h"
#include "switchyard/core/trace.h"
#include "switchyard/core/config.h"
#include "switchyard/core/error.h"
#include "switchyard/core/yaml_text.h"
#include "switchyard/client/cluster_client.h"
#include "switchyard/placement/load_trace.h"
#include "switchyard/placement/placement.h"
#include "switchyard/placement/planner.h"
#include "switchyard/coordinator/coordinator.h"
#include "switchyard/launch/launch_env.h"
#include "switchyard/engine/layer_engine.h"
#include "switchyard/engine/layer_weights.h"
#include "switchyard/cli/toy_task.h"
#include "switchyard/worker/worker.h"
#include "switchyard/launch/local_launch.h"

namespace sy {
namespace {

using namespace std::chrono_literals;
std::atomic<bool> g_stop{false};

void on_signal(int) { g_stop = true; }

void install_stop_handlers() {
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
}

// cluster.http: where the dashboard and /metrics are (nothing when it is off).
void print_dashboard(const Coordinator& coordinator) {
  if (const std::string http = coordinator.http_endpoint(); !http.empty())
    std::cout << "dashboard at http://" << http << "/ (metrics at /metrics)" << std::endl;
}

Config cluster_config(const Flags& flags) {
  if (!flags.has("config")) {
    Config c;
    c.source = "(defaults)";
    return c;
  }
  return load_config(flags.get("config"));
}

}  // namespace

int cli_coordinator(const std::vector<std::string>& args) {
  Flags flags(args, "coordinator", {"config", "listen"});
  Config cfg = cluster_config(flags);
  if (flags.has("listen")) cfg.cluster.coordinator = flags.get("listen");
  else if (auto env = detect_launch_env(); env && !env->coordinator.empty()) cfg.cluster.coordinator = env->coordinator;
  install_stop_handlers();
  Coordinator coordinator(cfg.cluster);
  std::cout << "coordinator listening on " << coordinator.endpoint() << std::endl;
  print_dashboard(coordinator);
  while (!g_stop && !coordinator.shutdown_requested()) {
    coordinator.check_liveness();
    std::this_thread::sleep_for(100ms);
  }
  coordinator.stop();
  std::cout << "coordinator stopped" << std::endl;
  return 0;
}

int cli_worker(const std::vector<std::string>& args) {
  Flags flags(args, "worker", {"coordinator", "id", "bind", "replaces-pid", "trace", "device"});
  if (flags.has("trace")) trace::start(flags.get("trace"), "worker pid " + std::to_string(::getpid()));
  WorkerOptions opt;
  const auto env = detect_launch_env();
  if (flags.has("coordinator")) opt.coordinator = flags.get("coordinator");
  else if (env && !env->coordinator.empty()) opt.coordinator = env->coordinator;
  else throw UsageError("worker: --coordinator HOST:PORT is required (or SWITCHYARD_COORDINATOR / MASTER_ADDR)");
  opt.requested_id = static_cast<int>(flags.get_int("id", env ? env->rank : -1));
  opt.bind_host = flags.get_or("bind", opt.bind_host);
  opt.replaces_pid = static_cast<uint32_t>(flags.get_int("replaces-pid", 0));
  opt.device = backend_named("--device", select_device(flags.get_or("device", "cpu"))).name();
  install_stop_handlers();
  return run_worker(opt, g_stop);
}

namespace {
// cluster.restart_workers: a local worker that ended (killed, crashed, fenced) is started again
// in its slot, telling the coordinator which process it replaces; the coordinator takes it as a
// replacement. At most one restart per slot a second, so a worker that cannot start does not spin.
struct Supervised {
  launch::LocalProcess process;
  std::chrono::steady_clock::time_point started = std::chrono::steady_clock::now();
};
template <class Spawn>
void restart_dead_workers(std::vector<Supervised>& workers, Spawn& spawn_worker) {
  const auto now = std::chrono::steady_clock::now();
  for (size_t i = 0; i < workers.size(); ++i) {
    Supervised& w = workers[i];
    if (now - w.started < 1s) continue;
    const pid_t pid = w.process.pid();
    const std::optional<int> code = w.process.poll();
    if (!code) continue;
    w.process = spawn_worker(static_cast<int>(i), pid);
    w.started = now;
    std::cout << "worker " << i << " (pid " << pid << ") exited with code " << *code << "; restarted as pid "
              << w.process.pid() << " (cluster.restart_workers)" << std::endl;
  }
}
}  // namespace

int cli_up(const std::vector<std::string>& args) {
  Flags flags(args, "up", {"config"});
  const Config cfg = load_config(flags.get("config"));
  // A bad cluster.placement is a config error now, not when a client first places a model:
  // with a model in the file the whole placement is checked, else the file must at least read.
  if (cfg.has_model) (void)cluster_placement(cfg.model, cfg.cluster);
  else if (!cfg.cluster.placement.empty()) (void)read_yaml_file(cfg.cluster.placement, "placement file");
  if (cfg.cluster.worker_device != "cpu") (void)backend_named("cluster.worker_device:", cfg.cluster.worker_device);
  install_stop_handlers();
  Coordinator coordinator(cfg.cluster);
  const std::string endpoint = coordinator.endpoint();
  std::cout << "coordinator listening on " << endpoint << std::endl;
  print_dashboard(coordinator);
  std::vector<std::pair<std::string, std::string>> env;
  if (!cfg.cluster.ucx_tls.empty()) env.emplace_back("UCX_TLS", cfg.cluster.ucx_tls);
  // The workers learn the secret the coordinator uses (cluster.auth.secret_file or the same
  // variable) through their environment.
  if (const std::string secret = cluster_secret(cfg.cluster); !secret.empty()) env.emplace_back(kSecretEnv, secret);
  // Share the cores among the local workers (unless the user chose): N workers on few cores
  // with a full OpenMP pool each would oversubscribe.
  for (auto& kv : launch::shared_core_env(cfg.cluster.workers)) env.push_back(std::move(kv));
  auto spawn_worker = [&](int i, pid_t replaces) {
    std::vector<std::string> argv = {launch::current_executable(), "worker", "--coordinator", endpoint, "--id",
                                     std::to_string(i)};
    if (replaces > 0) argv.insert(argv.end(), {"--replaces-pid", std::to_string(replaces)});
    if (cfg.cluster.worker_device == "cuda") argv.insert(argv.end(), {"--device", "cuda:" + std::to_string(i)});
    return launch::LocalProcess::spawn(argv, env);
  };
  std::vector<Supervised> workers;
  for (int i = 0; i < cfg.cluster.workers; ++i) workers.push_back({spawn_worker(i, 0)});
  const auto deadline = std::chrono::steady_clock::now() + 60s;
  while (coordinator.alive_workers() < cfg.cluster.workers) {
    if (g_stop || std::chrono::steady_clock::now() > deadline) {
      std::cerr << "switchyard up: only " << coordinator.alive_workers() << " of " << cfg.cluster.workers
                << " workers registered" << (g_stop ? "" : " within 60 s") << "; stopping\n";
      for (auto& w : workers) w.process.kill();
      return 1;
    }
    std::this_thread::sleep_for(50ms);
  }
  std::cout << "cluster ready: " << cfg.cluster.workers << " workers (pids";
  for (auto& w : workers) std::cout << " " << w.process.pid();
  std::cout << ")" << std::endl;
  while (!g_stop && !coordinator.shutdown_requested()) {
    coordinator.check_liveness();
    if (cfg.cluster.restart_workers) restart_dead_workers(workers, spawn_worker);
    std::this_thread::sleep_for(100ms);
  }
  std::cout << "stopping the cluster" << std::endl;
  for (auto& w : workers)
    if (w.process.running()) ::kill(w.process.pid(), SIGTERM);
  int failures = 0;
  for (size_t i = 0; i < workers.size(); ++i) {
    const pid_t pid = workers[i].process.pid();
    auto code = workers[i].process.wait(5000ms);
    if (!code.is_ok() || *code != 0) {
      ++failures;
      std::cerr << "worker " << i << " (pid " << pid << ") "
                << (code.is_ok() ? "exited with code " + std::to_string(*code) : code.status().to_string()) << "\n";
    }
  }
  coordinator.stop();
  std::cout << "cluster stopped" << std::endl;
  return failures ? 1 : 0;
}

namespace {

// The load window: balancedness, each worker's rows with a bar, the clients, the rebalances.
void print_load(const ClusterStatus& s) {
  const ClusterLoad& l = s.load;
  if (l.steps == 0) {
    std::cout << "load window: no steps reported yet\n";
  } else {
    std::cout << "load window: " << l.steps << " steps, balancedness " << std::fixed << std::setprecision(3)
              << l.balancedness << " (worst layer/stage " << l.balancedness_min << ")\n";
    std::vector<int64_t> per_worker(static_cast<size_t>(l.workers), 0);
    for (int r = 0; r < l.rows; ++r)
      for (int w = 0; w < l.workers; ++w) per_worker[static_cast<size_t>(w)] += l.worker_rows[static_cast<size_t>(r * l.workers + w)];
    const int64_t most = std::max<int64_t>(1, *std::max_element(per_worker.begin(), per_worker.end()));
    for (int w = 0; w < l.workers; ++w) {
      const int64_t rows = per_worker[static_cast<size_t>(w)];
      std::cout << "  worker " << std::left << std::setw(4) << w << std::right << std::setw(12) << rows << " rows  "
                << std::string(static_cast<size_t>(40 * rows / most), '#') << "\n";
    }
  }
  for (const ClientStatus& c : s.clients)
    std::cout << "client " << c.id << " '" << c.name << "': " << (c.training ? "training, step " + std::to_string(c.step) : "serving")
              << ", epoch " << c.placement_epoch << ", last report " << c.ms_since_report << " ms ago\n";
  for (const RebalanceInfo& r : s.rebalances) {
    std::cout << "rebalance epoch " << r.epoch << " (" << r.source << "): " << r.state << ", " << r.moved_replicas
              << " replicas moved (" << r.moved_bytes << " bytes), " << r.dropped_replicas << " dropped, pause "
              << std::setprecision(1) << r.pause_ms << " ms, planned balancedness " << std::setprecision(3)
              << r.balancedness_before << " -> " << r.balancedness_after;
    if (r.at_step) std::cout << ", at step " << r.at_step;
    if (r.since_loss_seconds > 0)
      std::cout << ", full replica count " << std::setprecision(2) << r.since_loss_seconds << " s after the loss";
    if (!r.error.empty()) std::cout << ": " << r.error;
    std::cout << "\n";
  }
  std::cout.unsetf(std::ios::fixed);
}

// Per (layer·stage) row: the balancedness of its worker rows (mean / max) with a bar.
void print_row_balance(const ClusterLoad& l, int stages) {
  for (int r = 0; r < l.rows; ++r) {
    int64_t total = 0, most = 0;
    for (int w = 0; w < l.workers; ++w) {
      const int64_t v = l.worker_rows[static_cast<size_t>(r * l.workers + w)];
      total += v;
      most = std::max(most, v);
    }
    if (most == 0) continue;
    const double b = static_cast<double>(total) / l.workers / static_cast<double>(most);
    std::cout << "  L" << r / stages << "·S" << r % stages << std::string(r / stages < 10 ? 3 : 2, ' ') << std::fixed
              << std::setprecision(3) << b << "  " << std::string(static_cast<size_t>(40 * b), '=') << "\n";
  }
  std::cout.unsetf(std::ios::fixed);
}

// How rows reach a worker's experts from a client (clients are host processes): over UCX in
// host memory, copied to the device and back on a worker whose replicas live on one.
std::string data_path(const WorkerStatus& w) { return w.device == "cpu" ? "ucx host" : "ucx staged"; }

void print_status(const ClusterStatus& s) {
  std::cout << "placement epoch " << s.placement_epoch << (s.model_loaded ? " (model loaded)" : " (no model loaded)")
            << ", workers " << s.workers.size() << "/" << s.workers_expected << "\n";
  std::cout << std::left << std::setw(8) << "worker" << std::setw(8) << "pid" << std::setw(7) << "state" << std::setw(9)
            << "experts" << std::setw(12) << "rows_fwd" << std::setw(12) << "rows_bwd" << std::setw(8) << "steps"
            << std::setw(12) << "rows/s" << std::setw(7) << "device" << std::setw(13) << "data path" << "endpoint\n";
  for (const WorkerStatus& w : s.workers) {
    std::cout << std::left << std::setw(8) << w.id << std::setw(8) << w.pid << std::setw(7) << (w.alive ? "alive" : w.fenced ? "LOST" : "DEAD")
              << std::setw(9) << w.experts << std::setw(12) << w.rows_forward << std::setw(12) << w.rows_backward
              << std::setw(8) << w.steps << std::setw(12) << static_cast<int64_t>(w.rows_per_s) << std::setw(7)
              << w.device << std::setw(13) << data_path(w) << w.control_endpoint;
    if (w.fenced) std::cout << "  (fenced: a client lost it; its replicas are recovered elsewhere)";
    else if (!w.alive) std::cout << "  (no heartbeat for " << w.ms_since_heartbeat << " ms)";
    if (w.restarts > 0)
      std::cout << "  (restarted " << w.restarts << "x, data-plane id " << w.data_plane_id
                << (w.replacement ? ", waiting for replicas)" : ")");
    std::cout << "\n";
  }
  print_load(s);
  if (s.load.steps > 0) {
    int stages = 1;
    for (const auto& [key, workers] : s.placement.replicas) stages = std::max(stages, key.stage + 1);
    std::cout << "balancedness per layer·stage (mean / max worker rows):\n";
    print_row_balance(s.load, stages);
  }
  if (!s.placement.replicas.empty()) {
    std::map<int, std::vector<std::string>> by_worker;
    for (const auto& [key, workers] : s.placement.replicas)
      for (int w : workers)
        by_worker[w].push_back("L" + std::to_string(key.layer) + "S" + std::to_string(key.stage) + "E" + std::to_string(key.expert));
    for (const auto& [w, list] : by_worker) {
      std::cout << "worker " << w << " experts:";
      for (const std::string& e : list) std::cout << " " << e;
      std::cout << "\n";
    }
  }
}

}  // namespace

// `--watch`: redraw every second (the terminal cleared when it is one) until Ctrl-C or
// `--watch-count N` redraws.
int cli_status(const std::vector<std::string>& args) {
  Flags flags(args, "status", {"cluster", "watch-count"}, {"watch"});
  const std::string cluster = flags.get("cluster");
  if (!flags.has("watch")) {
    print_status(query_cluster_status(cluster));
    return 0;
  }
  const int64_t count = flags.get_int("watch-count", 0);
  if (count < 0) throw UsageError("status: --watch-count N with N >= 1 (0: until Ctrl-C)");
  install_stop_handlers();
  const bool tty = ::isatty(STDOUT_FILENO) != 0;
  for (int64_t i = 0; !g_stop && (count == 0 || i < count); ++i) {
    if (i > 0) std::this_thread::sleep_for(1s);
    if (g_stop) break;
    const ClusterStatus s = query_cluster_status(cluster);
    const std::time_t t = std::time(nullptr);
    char when[32];
    std::strftime(when, sizeof when, "%H:%M:%S", std::localtime(&t));
    if (tty) std::cout << "\033[H\033[2J";
    std::cout << "switchyard status --watch " << cluster << "  " << when << " (Ctrl-C stops)\n";
    print_status(s);
    if (!tty) std::cout << "\n";
    std::cout << std::flush;
  }
  return 0;
}

int cli_checkpoint(const std::vector<std::string>& args) {
  if (args.empty() || (args[0] != "save" && args[0] != "restore"))
    throw UsageError("usage: switchyard checkpoint save|restore --cluster HOST:PORT --config C --dir D");
  Flags flags({args.begin() + 1, args.end()}, "checkpoint", {"cluster", "config", "dir"});
  const Config cfg = load_config(flags.get("config"));
  ClusterClient client(flags.get("cluster"), "switchyard checkpoint");
  client.use_loaded_model(cfg);
  const bool save = args[0] == "save";
  const CheckpointInfo done =
      save ? client.save_checkpoint(flags.get("dir")) : client.restore_checkpoint(flags.get("dir"));
  std::cout << (save ? "saved" : "restored") << " every worker's experts " << (save ? "to " : "from ") << done.dir
            << " (step " << done.step << ", placement epoch " << done.placement_epoch << ")\n";
  return 0;
}

int cli_rebalance(const std::vector<std::string>& args) {
  Flags flags(args, "rebalance", {"cluster", "placement", "slots-per-worker", "max-moves"}, {"from-load"});
  RebalanceOptions o;
  if (flags.has("placement") == flags.has("from-load"))
    throw UsageError("rebalance: give exactly one of --placement P.yaml and --from-load");
  if (flags.has("placement")) {
    o.placement_yaml = read_yaml_file(flags.get("placement"), "placement file");
    o.placement_source = flags.get("placement");
  }
  o.from_load = flags.has("from-load");
  o.slots_per_worker = static_cast<int>(flags.get_int("slots-per-worker", 0));
  o.max_moves = static_cast<int>(flags.get_int("max-moves", -2));
  if (o.slots_per_worker < 0 || o.max_moves < -2) throw UsageError("rebalance: --slots-per-worker >= 1, --max-moves >= 0");
  const RebalanceInfo r = rebalance_cluster(flags.get("cluster"), o);
  std::cout << "epoch: " << r.epoch << "\nmoved_replicas: " << r.moved_replicas << "\nmoved_bytes: " << r.moved_bytes
            << "\ndropped_replicas: " << r.dropped_replicas << "\npause_ms: " << r.pause_ms
            << "\nbalancedness_before: " << r.balancedness_before << "\nbalancedness_after: " << r.balancedness_after << "\n";
  return 0;
}

int cli_placement_load(const std::vector<std::string>& args) {
  Flags flags(args, "placement load", {"cluster", "out"});
  const ClusterStatus s = query_cluster_status(flags.get("cluster"));
  if (!s.model_loaded) throw Error(ErrorKind::config, "placement load: the cluster at " + flags.get("cluster") + " has no model loaded");
  const ClusterLoad& l = s.load;
  LoadMatrix m;
  m.experts = l.experts;
  for (int r = 0; r < l.rows; ++r) {
    m.layer.push_back(r);  // the trace's row index; the model gives (layer, stage)
    m.stage.push_back(0);
    m.row_experts.push_back(l.experts);
  }
  m.counts.assign(l.computed.begin(), l.computed.end());
  write_load_trace(flags.get("out"), m);
  std::cout << "wrote " << flags.get("out") << ": [" << l.rows << ", " << l.experts << "] rows computed over the last "
            << l.steps << " steps\n";
  return 0;
}

// The token cluster.http asks for: from the config's cluster.auth.secret_file, else
// SWITCHYARD_SECRET (as the coordinator reads them).
int cli_http_token(const std::vector<std::string>& args) {
  Flags flags(args, "http-token", {"config"});
  const std::string secret = cluster_secret(cluster_config(flags).cluster);
  if (secret.empty())
    throw Error(ErrorKind::config, "http-token: the cluster has no secret, so cluster.http needs no token (" +
                                       cluster_secret_help() + " to set one)");
  std::cout << http_token(secret) << "\n";
  return 0;
}

int cli_shutdown(const std::vector<std::string>& args) {
  Flags flags(args, "shutdown", {"cluster"});
  request_cluster_shutdown(flags.get("cluster"));
  std::cout << "shutdown requested\n";
  return 0;
}

// Serving: `clients` threads, each its own ClusterClient, send forward-only requests.
namespace {
// CPU seconds (user + system) a local process has used, from /proc/PID/stat; nothing when it is
// not a process of this machine.
std::optional<double> process_cpu_seconds(uint32_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const size_t paren = text.rfind(')');
  if (paren == std::string::npos) return std::nullopt;
  std::istringstream fields(text.substr(paren + 2));  // from field 3 (state) on
  std::string skip;
  for (int i = 3; i < 14; ++i) fields >> skip;
  double utime = 0, stime = 0;
  if (!(fields >> utime >> stime)) return std::nullopt;
  return (utime + stime) / static_cast<double>(::sysconf(_SC_CLK_TCK));
}

// The CPU the cluster's local workers use while nothing is asked of them, in % of one core.
double idle_cluster_cpu_percent(const std::string& endpoint, std::chrono::milliseconds span) {
  const ClusterStatus status = query_cluster_status(endpoint);
  std::map<uint32_t, double> before;
  for (const WorkerStatus& w : status.workers)
    if (auto t = process_cpu_seconds(w.pid)) before[w.pid] = *t;
  const auto t0 = std::chrono::steady_clock::now();
  std::this_thread::sleep_for(span);
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  double used = 0;
  for (const auto& [pid, t] : before)
    if (auto now = process_cpu_seconds(pid)) used += *now - t;
  std::cout << "idle: " << before.size() << " local workers used " << std::fixed << std::setprecision(2)
            << 100 * used / wall << "% of one core over " << wall << " s\n";
  return 100 * used / wall;
}
}  // namespace

namespace {
// One serving load: `clients` threads, each its own ClusterClient sending `requests` forwards.
struct ServeRun {
  std::vector<double> latencies_ms;  // sorted
  double seconds = 0;
  double worker_compute_s = 0, waited_s = 0;  // Σ over clients: slowest worker's compute, the rest of the waits
  double pct(double q) const {
    return latencies_ms[std::min(latencies_ms.size() - 1, static_cast<size_t>(q * static_cast<double>(latencies_ms.size())))];
  }
};

// The request every client sends (client c: its own tokens) and its attention, when routing reads it.
struct ServeRequest {
  Tensor x, attention;
  ServeRequest(const ModelConfig& model, int64_t tokens, int c) {
    RandomStream rng(static_cast<uint64_t>(c), "serve");
    x = random_tokens(tokens, model.hidden_size, rng);
    if (needs_importance(model)) attention = random_attention(tokens / 64, 2, 64, 1.5f, rng);
  }
  ImportanceInput context() const { return {attention.empty() ? nullptr : &attention, nullptr}; }
};

ServeRun serve_load(const std::string& endpoint, const Config& cfg, const TensorMap& w, int clients, int requests,
                    int64_t tokens) {
  const ModelConfig& model = cfg.model;
  std::vector<std::vector<double>> latencies(static_cast<size_t>(clients));
  std::vector<std::string> errors(static_cast<size_t>(clients));
  std::mutex split_mu;
  double compute = 0, waited = 0;
  const auto start = std::chrono::steady_clock::now();
  std::vector<std::thread> threads;
  for (int c = 0; c < clients; ++c) {
    threads.emplace_back([&, c] {
      try {
        ClusterClient client(endpoint, "bench serve client " + std::to_string(c));
        client.use_loaded_model(cfg);
        client.set_training(false);
        LayerEngine layer(model, w, client.experts(0));
        const ServeRequest req(model, tokens, c);
        for (int r = 0; r < requests; ++r) {
          const auto t0 = std::chrono::steady_clock::now();
          layer.forward(req.x, req.context());
          latencies[static_cast<size_t>(c)].push_back(
              std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
        }
        std::lock_guard<std::mutex> lock(split_mu);
        compute += client.worker_compute_seconds();
        waited += client.exchange_seconds();
      } catch (const std::exception& e) {
        errors[static_cast<size_t>(c)] = e.what();
      }
    });
  }
  for (auto& t : threads) t.join();
  for (const std::string& e : errors)
    if (!e.empty()) throw Error(ErrorKind::transport, "bench serve: " + e);
  ServeRun run;
  run.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  run.worker_compute_s = compute;
  run.waited_s = waited;
  for (const auto& l : latencies) run.latencies_ms.insert(run.latencies_ms.end(), l.begin(), l.end());
  std::sort(run.latencies_ms.begin(), run.latencies_ms.end());
  return run;
}

// The limit of one request: its forward in this process (median of 200: a short run's median
// moved by ±20% on a shared machine) plus, per stage, the
// ucx_perftest round trip (2 × one-way tag latency) of the rows that stage sends out.
struct ServeLimit {
  double local_ms = 0, exchange_ms = 0;
  double total() const { return local_ms + exchange_ms; }
};
std::optional<ServeLimit> serve_limit(const ModelConfig& model, const TensorMap& w, int64_t tokens,
                                      const std::string& perftest) {
  LocalExperts local(model, w, nullptr);
  LayerEngine layer(model, w, local);
  const ServeRequest req(model, tokens, 0);
  std::vector<double> ms;
  for (int i = 0; i < 203; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    layer.forward(req.x, req.context());
    if (i >= 3) ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  ServeLimit limit;
  limit.local_ms = ms[ms.size() / 2];
  for (const StageStats& st : layer.stats()) {
    int64_t rows = 0;
    for (int64_t r : st.expert_rows) rows += r;
    const int64_t bytes = rows * model.hidden_size * static_cast<int64_t>(sizeof(float));
    const std::optional<double> us = perftest_latency_us(perftest, "", bytes, 200);
    if (!us) return std::nullopt;
    limit.exchange_ms += 2 * *us / 1000;
    std::cout << "limit: stage sends " << rows << " rows (" << bytes << " bytes); ucx_perftest tag_lat one way "
              << std::setprecision(1) << *us << " us\n";
  }
  return limit;
}

std::vector<int> client_counts(const std::string& list) {
  std::vector<int> out;
  std::stringstream in(list);
  for (std::string item; std::getline(in, item, ',');) {
    char* end = nullptr;
    const long n = std::strtol(item.c_str(), &end, 10);
    if (item.empty() || *end != '\0' || n < 1 || n > 256)
      throw UsageError("bench serve: --clients expects counts 1..256 separated by commas, got '" + list + "'");
    out.push_back(static_cast<int>(n));
  }
  return out;
}
}  // namespace

// bench serve --cluster H:P --config C [--clients 1,2,8] [--requests N] [--tokens T] [--perftest P]
// Per client count: p50 and p99 request latency, tokens/s, and their ratios to the limit measured
// in the same run. Headline lines: serve_p50_vs_limit, serve_p99_vs_p50 (1 client; with a suffix
// _Nclients for N > 1), serve_tokens_per_s_saturated (the best count), and for the first count of
// 2 clients (else the first count) serve_p50_ms, serve_p99_ms, serve_tokens_per_s as before.
int cli_bench_serve(const std::vector<std::string>& args) {
  Flags flags(args, "bench serve", {"cluster", "config", "clients", "requests", "tokens", "perftest"});
  const Config cfg = load_config(flags.get("config"));
  const ModelConfig& model = cfg.require_model();
  const std::vector<int> counts = client_counts(flags.get_or("clients", "2"));
  const int requests = static_cast<int>(flags.get_int("requests", 50));
  const int64_t tokens = flags.get_int("tokens", 256);
  const std::string endpoint = flags.get("cluster");
  const TensorMap w = init_layer_weights(model, 11);
  {
    ClusterClient loader(endpoint, "bench serve loader");
    loader.load_model(cfg, w);
  }
  const double idle_cpu = idle_cluster_cpu_percent(endpoint, std::chrono::milliseconds(2000));
  const std::optional<ServeLimit> limit = serve_limit(model, w, tokens, flags.get_or("perftest", "ucx_perftest"));
  if (limit)
    std::cout << std::fixed << std::setprecision(2) << "limit: " << limit->total() << " ms = forward in one process "
              << limit->local_ms << " ms + exchange " << limit->exchange_ms << " ms\n";
  else
    std::cout << "limit: not measured (ucx_perftest gave no result); no *_vs_limit lines\n";
  std::ostringstream headline;
  headline << std::fixed;
  const int legacy = std::find(counts.begin(), counts.end(), 2) != counts.end() ? 2 : counts.front();
  double saturated = 0;
  for (int clients : counts) {
    const ServeRun run = serve_load(endpoint, cfg, w, clients, requests, tokens);
    const double p50 = run.pct(0.50), p99 = run.pct(0.99);
    const double tps = static_cast<double>(clients) * requests * static_cast<double>(tokens) / run.seconds;
    saturated = std::max(saturated, tps);
    std::cout << std::fixed << std::setprecision(2) << "serve: " << clients << " clients x " << requests
              << " requests of " << tokens << " tokens: p50 " << p50 << " ms, p99 " << p99 << " ms, "
              << std::setprecision(0) << tps << " tokens/s; per request: workers' compute "
              << std::setprecision(2) << 1e3 * run.worker_compute_s / (clients * requests) << " ms, waits beyond it "
              << 1e3 * run.waited_s / (clients * requests) << " ms\n";
    const std::string suffix = clients == 1 ? "" : "_" + std::to_string(clients) + "clients";
    headline << std::setprecision(3);
    if (limit) headline << "serve_p50_vs_limit" << suffix << ": " << p50 / limit->total() << "\n";
    headline << "serve_p99_vs_p50" << suffix << ": " << p99 / p50 << "\n";
    if (clients == legacy)
      headline << std::setprecision(2) << "serve_p50_ms: " << p50 << "\nserve_p99_ms: " << p99
               << "\nserve_tokens_per_s: " << std::setprecision(0) << tps << "\n";
  }
  std::cout << headline.str() << std::setprecision(0) << "serve_tokens_per_s_saturated: " << saturated << "\n"
            << std::setprecision(2) << "idle_cluster_cpu_percent: " << idle_cpu << "\n";
  return 0;
}

}  // namespace sy
