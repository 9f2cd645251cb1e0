// `switchyard colocated`: a co-located expert-parallel training job (runtime/colocated).
//
//   under torchrun / mpirun / srun   this process is one rank (launch_env.h); rank 0 serves the
//                                    rendezvous at the coordinator address the environment gives
//   --ranks N (no launcher)          this process serves the rendezvous and starts N ranks of
//                                    itself on this machine (RANK, WORLD_SIZE set for each)
//
// Every step each rank trains on its T/N tokens (seeded by step and rank) towards a fixed target,
// tanh of the input: loss = ½ · mean over all T tokens of |h − tanh(x)|², h the model's output.
// Rank 0 prints the loss each step and, at the end, the median step time.
#include "colocated_command.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <iostream>
#include <thread>

#include "flags.h"
#include "switchyard/cli/toy_task.h"
#include "switchyard/colocated/colocated.h"
#include "switchyard/core/secret.h"
#include "switchyard/core/trace.h"
#include "switchyard/launch/launch_env.h"
#include "switchyard/launch/local_launch.h"
#include "switchyard/transport/factory.h"
#include "switchyard/transport/rendezvous.h"

namespace sy {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
const transport::Timeout kTimeout = 60s;

struct JobOptions {
  std::string config, transport = "ucx";
  int steps = 20;
  int64_t tokens = 2048;  // per step, over all ranks
  uint64_t seed = 1;
  float lr = 1e-3f;
};

control::ControlServer::Options rendezvous_options(const std::string& host, uint16_t port) {
  control::ControlServer::Options o;
  o.bind_address = host;
  o.port = port;
  o.name = "co-located rendezvous";
  o.secret = cluster_secret_from_env();
  return o;
}

std::unique_ptr<control::ControlClient> connect_rendezvous(const std::string& endpoint, int rank) {
  auto [host, port] = control::parse_endpoint(endpoint);
  control::ControlClient::Options o;
  o.name = "co-located rank " + std::to_string(rank);
  o.secret = cluster_secret_from_env();
  const auto deadline = Clock::now() + kTimeout;
  for (;;) {  // rank 0 may not listen yet
    auto c = control::ControlClient::connect(host, port, o);
    if (c) return std::move(c).value();
    if (Clock::now() > deadline)
      throw Error(ErrorKind::transport, "co-located rank " + std::to_string(rank) + ": the rendezvous at " + endpoint +
                                            ": " + c.status().to_string());
    std::this_thread::sleep_for(100ms);
  }
}

// One step's batch of this rank: its tokens and their target.
std::pair<Tensor, Tensor> batch(const JobOptions& o, int64_t d, int step, int rank, int ranks) {
  RandomStream rng(o.seed * 1000003 + static_cast<uint64_t>(step), "colocated rank " + std::to_string(rank));
  Tensor x = random_tokens(o.tokens / ranks, d, rng), target = x;
  for (int64_t i = 0; i < target.numel(); ++i) target[i] = std::tanh(target[i]);
  return {std::move(x), std::move(target)};
}

int run_rank(const JobOptions& o, const LaunchEnv& env) {
  const Config cfg = load_config(o.config);
  std::unique_ptr<control::ControlServer> server;  // rank 0 under a launcher serves the rendezvous
  std::unique_ptr<transport::RendezvousService> rendezvous;
  if (env.rank == 0 && env.source != "switchyard") {
    auto [host, port] = control::parse_endpoint(env.coordinator);
    server = std::make_unique<control::ControlServer>(rendezvous_options(host, port));
    rendezvous = std::make_unique<transport::RendezvousService>(*server);
    server->start();
  }
  transport::TransportOptions to;
  to.rank = env.rank;
  to.world_size = env.world_size;
  to.label = "co-located rank " + std::to_string(env.rank) + " (" + transport::default_process_label() + ")";
  auto t = transport::make_transport(o.transport, to);
  auto client = connect_rendezvous(env.coordinator, env.rank);
  if (Status s = transport::bootstrap_transport(*t, *client, "colocated", kTimeout); !s)
    throw Error(ErrorKind::transport, to.label + ": joining the ranks: " + s.to_string());
  const TensorMap weights = init_model_weights(cfg.model, o.seed);
  ColocatedExperts group(*t, cfg.model, weights, kTimeout);
  MoeModel model(cfg, weights, group);
  const int64_t d = cfg.model.hidden_size;
  std::vector<double> times;
  for (int step = 1; step <= o.steps; ++step) {
    auto [x, target] = batch(o, d, step, env.rank, env.world_size);
    std::vector<float> ready(1, 0.0f);
    group.all_reduce_sum(ready, "the step's start");  // every rank has its data: the clock times the step only
    const auto start = Clock::now();
    Tensor g = model.forward(x);
    std::vector<float> loss(1, 0.0f);
    for (int64_t i = 0; i < g.numel(); ++i) {
      g[i] -= target[i];
      loss[0] += 0.5f * g[i] * g[i] / static_cast<float>(o.tokens);
      g[i] /= static_cast<float>(o.tokens);
    }
    model.backward_params(g);  // x is data: no dL/dx
    group.sum_dense_grads(model.mutable_grads());
    model.step(AdamWConfig{.lr = o.lr});
    group.all_reduce_sum(loss, "the loss");
    times.push_back(std::chrono::duration<double>(Clock::now() - start).count());
    if (env.rank == 0) std::cout << "step " << step << "/" << o.steps << ": loss " << loss[0] << std::endl;
  }
  if (env.rank == 0 && o.steps > 1) {
    std::vector<double> steady(times.begin() + 1, times.end());  // the first step warms up
    std::sort(steady.begin(), steady.end());
    std::cout << "co-located: " << env.world_size << " ranks over " << o.transport << ", " << o.tokens
              << " tokens/step, median step of " << steady.size() << "\ncolocated_step_ms: "
              << steady[steady.size() / 2] * 1e3 << std::endl;
  }
  return 0;
}

// --trace T.json: rank r writes T.rank{r}.json.
std::string rank_trace_path(const std::string& path, int rank) {
  const std::string suffix = ".rank" + std::to_string(rank);
  const size_t dot = path.rfind('.');
  if (dot == std::string::npos || path.find('/', dot) != std::string::npos) return path + suffix + ".json";
  return path.substr(0, dot) + suffix + path.substr(dot);
}

// No launcher: serve the rendezvous here and start `ranks` ranks of this program.
int spawn_ranks(const std::vector<std::string>& args, int ranks) {
  control::ControlServer server(rendezvous_options("127.0.0.1", 0));
  transport::RendezvousService rendezvous(server);
  server.start();
  std::vector<std::string> argv = {launch::current_executable(), "colocated"};
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i] == "--ranks") ++i;
    else if (args[i].rfind("--ranks=", 0) != 0) argv.push_back(args[i]);
  }
  std::vector<launch::LocalProcess> procs;
  for (int r = 0; r < ranks; ++r) {
    std::vector<std::pair<std::string, std::string>> env = launch::shared_core_env(ranks);
    env.insert(env.end(), {{"RANK", std::to_string(r)}, {"WORLD_SIZE", std::to_string(ranks)},
                           {"LOCAL_RANK", std::to_string(r)}, {"SWITCHYARD_COORDINATOR", server.endpoint()},
                           {"SWITCHYARD_COLOCATED_SPAWNED", "1"}});
    procs.push_back(launch::LocalProcess::spawn(argv, env));
  }
  // Every rank in turn until all ended: the first that fails stops the others at once (they
  // would wait for it in their next exchange until the timeout).
  int worst = 0;
  auto running = [&] { return std::any_of(procs.begin(), procs.end(), [](const auto& p) { return p.running(); }); };
  for (; running(); std::this_thread::sleep_for(20ms))
    for (size_t r = 0; r < procs.size(); ++r) {
      const std::optional<int> code = procs[r].poll();
      if (!code) continue;
      if (*code != 0 && worst == 0) {
        std::cerr << "switchyard colocated: rank " << r << " exited with code " << *code << "; stopping the others\n";
        for (auto& p : procs) p.kill();  // killed ones are reaped: no longer running
      }
      worst = std::max(worst, *code);
    }
  return worst;
}

}  // namespace

int cli_colocated(const std::vector<std::string>& args) {
  Flags flags(args, "colocated", {"config", "ranks", "steps", "tokens", "seed", "lr", "transport", "trace"});
  JobOptions o;
  o.config = flags.get("config");
  o.transport = flags.get_or("transport", o.transport);
  o.steps = static_cast<int>(flags.get_int("steps", o.steps));
  o.tokens = flags.get_int("tokens", o.tokens);
  o.seed = static_cast<uint64_t>(flags.get_int("seed", 1));
  o.lr = static_cast<float>(flags.get_double("lr", o.lr));
  if (o.steps < 1 || o.tokens < 1) throw UsageError("colocated: --steps and --tokens must be >= 1");
  std::optional<LaunchEnv> env = detect_launch_env();
  if (!env) {
    const int64_t ranks = flags.get_int("ranks", 0);
    if (ranks < 1) throw UsageError("colocated: no launcher (torchrun, mpirun, srun) started this process: give --ranks N");
    (void)load_config(o.config);  // a bad config fails here, once, not in every rank
    return spawn_ranks(args, static_cast<int>(ranks));
  }
  if (env->coordinator.empty())
    throw Error(ErrorKind::config, "colocated: the launcher gives no rendezvous address: set MASTER_ADDR (and "
                                   "MASTER_PORT) or SWITCHYARD_COORDINATOR=host:port");
  if (o.tokens % env->world_size != 0)
    throw UsageError("colocated: --tokens " + std::to_string(o.tokens) + " is not a multiple of the " +
                     std::to_string(env->world_size) + " ranks");
  if (std::getenv("SWITCHYARD_COLOCATED_SPAWNED")) env->source = "switchyard";  // the parent serves the rendezvous
  if (flags.has("trace")) trace::start(rank_trace_path(flags.get("trace"), env->rank), "co-located rank " + std::to_string(env->rank));
  const int code = run_rank(o, *env);
  trace::flush();
  return code;
}

}  // namespace sy
