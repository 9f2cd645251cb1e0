// switchyard: the command-line entry point. Every subcommand parses its own flags, reports
// errors as `switchyard: error: ...` and exits with the error's code (config 2, input 3).
#include <algorithm>
#include <optional>
#include <chrono>
#include <malloc.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <iomanip>
#include <iostream>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "switchyard/core/config.h"
#include "switchyard/core/secret.h"
#include "switchyard/core/trace.h"
#include "switchyard/core/error.h"
#include "switchyard/core/io.h"
#include "switchyard/core/log.h"
#include "switchyard/kernels/backend.h"
#include "switchyard/kernels/buffer.h"
#include "switchyard/client/cluster_client.h"
#include "switchyard/engine/staged_experts.h"
#include "switchyard/engine/layer_engine.h"
#include "switchyard/engine/layer_weights.h"
#include "switchyard/cli/toy_task.h"
#include "bench_exchange.h"
#include "bench_rebalance.h"
#include "cluster_commands.h"
#include "colocated_command.h"
#include "trace_command.h"
#include "placement_commands.h"
#include "backend_flag.h"
#include "flags.h"

namespace sy {
namespace {

void print_stage_stats(const ModelConfig& model, const LayerEngine& layer, std::ostream& out) {
  for (size_t s = 0; s < layer.stats().size(); ++s) {
    const StageStats& st = layer.stats()[s];
    out << "stage " << s << ": tokens " << st.tokens << ", assignments " << st.assignments << ", dropped "
        << st.dropped << ", mean_k " << std::setprecision(4) << st.mean_k;
    if (model.layer.stages[s].routing.kind == RoutingKind::dynamic) {
      out << ", k_histogram {";
      bool first = true;
      for (size_t k = 0; k < st.k_histogram.size(); ++k) {
        if (!st.k_histogram[k]) continue;
        out << (first ? "" : ", ") << k << ": " << st.k_histogram[k];
        first = false;
      }
      out << "}";
    }
    out << ", load_balance_loss " << st.load_balance_loss << ", z_loss " << st.z_loss << "\n";
  }
}

struct LayerInputs {
  Tensor x, attention, importance;
  ImportanceInput view() const {
    return {attention.empty() ? nullptr : &attention, importance.empty() ? nullptr : &importance};
  }
};

// A user tensor from `--flag FILE.npy`, refused (input error, exit 3) when it holds a NaN or
// Inf: the layer would run through and return NaN with exit 0.
Tensor read_input_npy(const Flags& flags, const std::string& flag) {
  const std::string path = flags.get(flag);
  Tensor t = read_npy(path);
  check_finite(t, "--" + flag + " '" + path + "'");
  return t;
}

LayerInputs read_layer_inputs(const Flags& flags) {
  LayerInputs in;
  in.x = read_input_npy(flags, "input");
  if (flags.has("attention") && flags.has("importance"))
    throw UsageError("give either --attention or --importance, not both");
  if (flags.has("attention")) in.attention = read_input_npy(flags, "attention");
  if (flags.has("importance")) in.importance = read_input_npy(flags, "importance");
  return in;
}

// `--backend NAME` (default cpu): the backend the layer engine runs on.
Backend& backend_flag(const Flags& flags) { return backend_named("--backend", flags.get_or("backend", "cpu")); }

// The experts a layer on `backend` uses: the cluster's (staged through host memory when the
// engine runs on a device: `staged` keeps the stager) or the local ones.
ExpertCompute& layer_experts(ClusterClient* client, LocalExperts& local, Backend& backend,
                             std::optional<StagedExperts>& staged) {
  return client ? experts_on(client->experts(0), backend, staged) : local;
}

TensorMap read_layer_weights(const ModelConfig& model, const std::string& path) {
  TensorMap w = read_safetensors(path);
  check_layer_weights(model, w, path);
  return w;
}

int cmd_config(const std::vector<std::string>& args) {
  if (args.empty() || (args[0] != "show" && args[0] != "reference"))
    throw UsageError("usage: switchyard config show --config C | switchyard config reference");
  if (args[0] == "reference") {
    std::cout << config_reference_markdown();
    return 0;
  }
  Flags flags({args.begin() + 1, args.end()}, "config show", {"config"});
  std::cout << config_to_yaml(load_config(flags.get("config")));
  return 0;
}

int cmd_layer(const std::vector<std::string>& args) {
  if (args.empty()) throw UsageError("usage: switchyard layer init|forward|backward ...");
  const std::string sub = args[0];
  const std::vector<std::string> rest(args.begin() + 1, args.end());
  if (sub == "init") {
    Flags flags(rest, "layer init", {"config", "seed", "out"});
    const Config cfg = load_config(flags.get("config"));
    const uint64_t seed = static_cast<uint64_t>(flags.get_int("seed", 0));
    TensorMap w = init_layer_weights(cfg.model, seed);
    write_safetensors(flags.get("out"), w, {{"format", "switchyard"}, {"seed", std::to_string(seed)}});
    int64_t params = 0;
    for (const auto& [n, t] : w) params += t.numel();
    std::cout << "wrote " << w.size() << " tensors (" << params << " parameters) to " << flags.get("out") << "\n";
    return 0;
  }
  if (sub == "forward") {
    Flags flags(rest, "layer forward",
                {"config", "weights", "input", "output", "attention", "importance", "cluster", "backend"});
    Backend& backend = backend_flag(flags);
    const Config cfg = load_config(flags.get("config"));
    const TensorMap host_w = read_layer_weights(cfg.model, flags.get("weights"));
    const LayerInputs in = read_layer_inputs(flags);
    // The weights in the backend's memory (a device backend: copied there; the cpu: as read).
    const BufferMap device_w = backend.device() == Device::cpu ? BufferMap() : BufferMap(backend, host_w);
    const TensorMap& w = backend.device() == Device::cpu ? host_w : device_w.tensors();
    LocalExperts local(cfg.model, w, nullptr, "", backend);
    std::unique_ptr<ClusterClient> client;
    if (flags.has("cluster")) {
      client = std::make_unique<ClusterClient>(flags.get("cluster"), "switchyard layer forward");
      client->load_model(cfg, host_w);
      client->set_training(false);
    }
    std::optional<StagedExperts> staged;
    LayerEngine layer(cfg.model, w, layer_experts(client.get(), local, backend, staged), "", backend);
    const Tensor y = layer.forward(in.x, in.view());
    write_npy(flags.get("output"), y);
    print_stage_stats(cfg.model, layer, std::cout);
    std::cout << "aux_loss " << std::setprecision(8) << layer.aux_loss() << "\n";
    std::cout << "wrote " << flags.get("output") << " " << shape_to_string(y.shape()) << "\n";
    return 0;
  }
  if (sub == "backward") {
    Flags flags(rest, "layer backward",
                {"config", "weights", "input", "grad-output", "out-dir", "attention", "importance", "cluster", "backend"});
    Backend& backend = backend_flag(flags);
    const bool host = backend.device() == Device::cpu;
    const Config cfg = load_config(flags.get("config"));
    const TensorMap host_w = read_layer_weights(cfg.model, flags.get("weights"));
    const LayerInputs in = read_layer_inputs(flags);
    const Tensor g = read_input_npy(flags, "grad-output");
    TensorMap grads = zeros_like(host_w);
    BufferMap device_w, device_grads;  // a device backend: weights and gradients in its memory
    if (!host) {
      device_w = BufferMap(backend, host_w);
      device_grads = BufferMap(backend, grads);
    }
    const TensorMap& w = host ? host_w : device_w.tensors();
    TensorMap& engine_grads = host ? grads : device_grads.tensors();
    LocalExperts local(cfg.model, w, &engine_grads, "", backend);
    std::unique_ptr<ClusterClient> client;
    if (flags.has("cluster")) {
      client = std::make_unique<ClusterClient>(flags.get("cluster"), "switchyard layer backward");
      client->load_model(cfg, host_w);
    }
    std::optional<StagedExperts> staged;
    LayerEngine layer(cfg.model, w, layer_experts(client.get(), local, backend, staged), "", backend);
    const Tensor y = layer.forward(in.x, in.view());
    const Tensor dx = layer.backward(g, engine_grads);
    if (!host) grads = device_grads.to_host();
    if (client) {  // expert gradients live on the workers: fetch them (summed over replicas)
      for (auto& [name, t] : client->fetch_expert_grads()) grads.at(name) = std::move(t);
      client->zero_expert_grads();
    }
    const std::filesystem::path dir = flags.get("out-dir");
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
    if (ec) throw_input_error("cannot create --out-dir " + dir.string() + ": " + ec.message());
    write_npy((dir / "grad_input.npy").string(), dx);
    write_safetensors((dir / "grad_weights.safetensors").string(), grads, {{"format", "switchyard-grad"}});
    double loss = layer.aux_loss();
    for (int64_t i = 0; i < y.numel(); ++i) loss += static_cast<double>(y[i]) * g[i];
    print_stage_stats(cfg.model, layer, std::cout);
    std::cout << "loss " << std::setprecision(10) << loss << "\n";
    std::cout << "wrote " << (dir / "grad_input.npy").string() << " and " << (dir / "grad_weights.safetensors").string()
              << "\n";
    return 0;
  }
  throw UsageError("unknown layer subcommand '" + sub + "' (init, forward, backward)");
}

int cmd_train_toy(const std::vector<std::string>& args) {
  Flags flags(args, "train-toy",
              {"config", "steps", "seed", "lr", "sequences", "seq-len", "cluster", "skew", "trace", "backend"},
              {"no-progress"});
  Backend& backend = backend_flag(flags);
  const Config cfg = load_config(flags.get("config"));
  ToyTaskOptions opt;
  opt.steps = static_cast<int>(flags.get_int("steps", opt.steps));
  opt.lr = flags.get_double("lr", opt.lr);
  opt.sequences = flags.get_int("sequences", opt.sequences);
  opt.seq_len = flags.get_int("seq-len", opt.seq_len);
  const uint64_t seed = static_cast<uint64_t>(flags.get_int("seed", 0));
  opt.teacher_seed += seed * 3;
  opt.student_seed += seed * 3;
  opt.data_seed += seed * 3;
  opt.progress = !flags.has("no-progress");
  opt.skew = flags.get_double("skew", 0.0);
  opt.backend = &backend;
  if (!(opt.skew >= 0) || !std::isfinite(opt.skew)) throw UsageError("train-toy: --skew must be a number >= 0");
  if (opt.steps < 1 || opt.sequences < 1 || opt.seq_len < 1) throw UsageError("train-toy: sizes must be >= 1");
  if (flags.has("trace")) trace::start(flags.get("trace"), "train-toy pid " + std::to_string(::getpid()));
  std::unique_ptr<ClusterClient> client;
  if (flags.has("cluster")) client = std::make_unique<ClusterClient>(flags.get("cluster"), "switchyard train-toy");
  run_toy_task(cfg, opt, std::cout, client.get());
  trace::flush();
  return 0;
}

// make demo (for now): random weights, forward + backward on random tokens, tokens/s.
int cmd_demo(const std::vector<std::string>& args) {
  Flags flags(args, "demo", {"config", "steps", "tokens"});
  const Config cfg = load_config(flags.get_or("config", "configs/models/topk.yaml"));
  const ModelConfig& model = cfg.model;
  const int steps = static_cast<int>(flags.get_int("steps", 10));
  const int64_t seq_len = 64;
  const int64_t tokens = flags.get_int("tokens", 4096) / seq_len * seq_len;
  if (steps < 1 || tokens < seq_len) throw UsageError("demo: --steps >= 1 and --tokens >= 64");
  TensorMap w = init_layer_weights(model, 7);
  TensorMap grads = zeros_like(w);
  LocalExperts experts(model, w, &grads);
  LayerEngine layer(model, w, experts);
  RandomStream rng(7, "demo");
  const Tensor x = random_tokens(tokens, model.hidden_size, rng);
  const Tensor g = random_tokens(tokens, model.hidden_size, rng);
  Tensor attention;
  if (needs_importance(model)) attention = random_attention(tokens / seq_len, 2, seq_len, 1.5f, rng);
  const ImportanceInput imp{attention.empty() ? nullptr : &attention, nullptr};
  std::cout << "demo: " << cfg.source << ", " << tokens << " tokens/step, " << steps << " steps, backends:";
  for (Backend* b : backends()) std::cout << " " << b->name();
  std::cout << "\n";
  ProgressBar bar(steps, "forward+backward");
  const auto start = std::chrono::steady_clock::now();
  for (int step = 1; step <= steps; ++step) {
    layer.forward(x, imp);
    layer.backward(g, grads);
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    bar.update(step, std::to_string(static_cast<int64_t>(tokens * step / secs)) + " tokens/s");
  }
  bar.finish();
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  print_stage_stats(model, layer, std::cout);
  std::cout << "tokens_per_s: " << static_cast<int64_t>(tokens * steps / secs) << "\n";
  return 0;
}

void print_usage() {
  std::cout << R"(switchyard — distributed expert-parallel runtime for MoE layers

usage:
  switchyard config show --config C          print the effective configuration
  switchyard config reference                every setting as a Markdown table
  switchyard layer init --config C --seed S --out W.safetensors
  switchyard layer forward --config C --weights W --input X.npy --output Y.npy [--backend cpu|cuda]
                           [--attention A.npy | --importance I.npy]
  switchyard layer backward --config C --weights W --input X.npy --grad-output G.npy --out-dir D [--backend cpu|cuda]
                           [--attention A.npy | --importance I.npy]
  switchyard train-toy --config C [--steps N] [--lr LR] [--seed S] [--skew S] [--no-progress] [--backend cpu|cuda]
  switchyard demo [--config C] [--steps N] [--tokens T]
  switchyard backends                         compiled and usable compute backends

cluster:
  switchyard up --config configs/local.yaml   coordinator + N local workers; Ctrl-C stops all
  switchyard coordinator [--config C] [--listen HOST:PORT]
  switchyard worker --coordinator HOST:PORT [--id N]   (id/address also from torchrun/mpirun/srun env)
                    [--replaces-pid P]   (a restart of slot N's lost process P: joins at once)
  switchyard status --cluster HOST:PORT [--watch [--watch-count N]]   members, load bars, balancedness
  switchyard http-token [--config C]          the token cluster.http asks for (from the cluster's secret)
  switchyard layer forward|backward ... --cluster HOST:PORT
  switchyard train-toy --config C --cluster HOST:PORT
  switchyard checkpoint save|restore --cluster HOST:PORT --config C --dir D
  switchyard bench serve --cluster HOST:PORT --config C [--clients N] [--requests R] [--tokens T]
  switchyard shutdown --cluster HOST:PORT
  switchyard rebalance --cluster HOST:PORT (--placement P.yaml | --from-load) [--slots-per-worker K] [--max-moves M]
  switchyard placement load --cluster HOST:PORT --out L.npy      the coordinator's load window, [R, E]
  switchyard placement show (--load L.npy [--config C] | --cluster HOST:PORT) --out heat.svg|heat.png
  switchyard bench rebalance --cluster HOST:PORT [--config C] [--skew S] [--steps N]   policy rebalance, migration bandwidth
  switchyard bench exchange [--repeats N]     2-process UCX exchange vs ucx_perftest (shm, tcp)

co-located expert parallelism (every rank a trainer and an expert holder; README "Co-located"):
  switchyard colocated --config C --ranks N [--steps S] [--tokens T] [--lr LR] [--seed S] [--transport ucx|inprocess]
  torchrun --nproc-per-node N switchyard colocated --config C ...   (or mpirun -n N, srun -n N)

step timelines (Chrome trace-event JSON for Perfetto; README "Step timelines"):
  --trace FILE on worker, train-toy and colocated (each rank FILE.rankN.json); SWITCHYARD_TRACE=FILE anywhere
  switchyard trace merge --out M.json FILE...   the processes' files on one clock

placement (docs/placement.md):
  switchyard placement plan --load L.npy --workers G --slots-per-worker K [--nodes N] [--config C]
                            [--current P.yaml] [--max-moves M] --out P.yaml
  switchyard placement simulate --load L.npy --workers G [--nodes N] [--config C]
                            [--placement P.yaml | --slots-per-worker K [--policy planner|greedy|hierarchical|round-robin|all]]
                            [--rows-per-s R] [--hidden-size D] [--intra-gbps B] [--inter-gbps B]
                            [--intra-latency-us T] [--inter-latency-us T] [--clients-per-node C]
)";
}

// A command that attaches to a cluster (`--cluster`) with a config file (`--config`) uses that
// file's cluster.auth.secret_file, as the coordinator does, unless $SWITCHYARD_SECRET is set: its
// control channels read the secret from the environment (core/secret.h).
void adopt_config_secret(const std::vector<std::string>& args) {
  std::string config;
  bool cluster = false;
  for (size_t i = 0; i < args.size(); ++i) {
    cluster |= args[i] == "--cluster" || args[i].rfind("--cluster=", 0) == 0;
    if (args[i] == "--config" && i + 1 < args.size()) config = args[i + 1];
    if (args[i].rfind("--config=", 0) == 0) config = args[i].substr(9);
  }
  if (!cluster || config.empty() || std::getenv(kSecretEnv)) return;
  const Config cfg = load_config(config);  // a bad file is the command's config error either way
  if (cfg.cluster.auth_secret_file.empty()) return;
  ::setenv(kSecretEnv, cluster_secret(cfg.cluster).c_str(), 1);
}

int run(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  adopt_config_secret(args);
  if (args.empty() || args[0] == "--help" || args[0] == "-h" || args[0] == "help") {
    print_usage();
    return args.empty() ? kUsageExit : 0;
  }
  const std::string cmd = args[0];
  const std::vector<std::string> rest(args.begin() + 1, args.end());
  // The log context's role (SWITCHYARD_LOG_FORMAT=json); client commands become "client" once attached.
  if (cmd == "up" || cmd == "coordinator") set_log_role("coordinator");
  else if (cmd == "worker") set_log_role("worker");
  else if (cmd == "colocated") set_log_role("colocated");
  if (cmd == "config") return cmd_config(rest);
  if (cmd == "layer") return cmd_layer(rest);
  if (cmd == "train-toy") return cmd_train_toy(rest);
  if (cmd == "colocated") return cli_colocated(rest);
  if (cmd == "trace") return cli_trace(rest);
  if (cmd == "demo") return cmd_demo(rest);
  if (cmd == "bench" && !rest.empty() && rest[0] == "serve") return cli_bench_serve({rest.begin() + 1, rest.end()});
  if (cmd == "bench" && !rest.empty() && rest[0] == "rebalance") return cli_bench_rebalance({rest.begin() + 1, rest.end()});
  if (cmd == "bench") return cli_bench_exchange(rest);
  if (cmd == "up") return cli_up(rest);
  if (cmd == "coordinator") return cli_coordinator(rest);
  if (cmd == "worker") return cli_worker(rest);
  if (cmd == "status") return cli_status(rest);
  if (cmd == "http-token") return cli_http_token(rest);
  if (cmd == "checkpoint") return cli_checkpoint(rest);
  if (cmd == "shutdown") return cli_shutdown(rest);
  if (cmd == "rebalance") return cli_rebalance(rest);
  if (cmd == "placement" && !rest.empty() && rest[0] == "load") return cli_placement_load({rest.begin() + 1, rest.end()});
  if (cmd == "placement" && !rest.empty() && rest[0] == "show") return cli_placement_show({rest.begin() + 1, rest.end()});
  if (cmd == "placement") return cli_placement(rest);
  if (cmd == "backends") {
    std::cout << "compiled:";
    for (const std::string& n : compiled_backends()) std::cout << " " << n;
    std::cout << "\nusable:";
    for (Backend* b : backends()) std::cout << " " << b->name();
    std::cout << "\n";
    return 0;
  }
  throw UsageError("unknown command '" + cmd + "' (try switchyard --help)");
}

}  // namespace
}  // namespace sy

// A step allocates and frees the same large buffers every time. By default glibc hands them back
// to the kernel (mmap above 128 KiB, trimming the heap's top) and the next step faults them in
// again, zeroed: 8-10% of a co-located training step in perf (clear_page_erms). The processes
// of this command keep them instead. (The library leaves its host process's allocator alone.)
static void keep_freed_memory() {
  mallopt(M_MMAP_THRESHOLD, 256 << 20);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
}

int main(int argc, char** argv) {
  keep_freed_memory();
  try {
    return sy::run(argc, argv);
  } catch (const sy::UsageError& e) {
    std::cerr << "switchyard: usage error: " << e.what() << "\n";
    return sy::kUsageExit;
  } catch (const sy::Error& e) {
    std::cerr << "switchyard: error: " << e.what() << "\n";
    return e.exit_code();
  } catch (const std::exception& e) {
    std::cerr << "switchyard: internal error: " << e.what() << "\n";
    return 1;
  }
}
