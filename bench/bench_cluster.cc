// Cluster vs single process: one training step (forward + backward + AdamW) of the same layer
// through a local 4-worker cluster (coordinator here, `switchyard worker` processes, UCX) and
// in this process, medians of repeated steps measured in the same run; plus how the cluster
// step splits into exchange, worker compute and client compute, and serving latency.
#include <signal.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <thread>

#include "switchyard/client/cluster_client.h"
#include "switchyard/coordinator/coordinator.h"
#include "switchyard/engine/moe_model.h"
#include "switchyard/cli/toy_task.h"
#include "switchyard/launch/local_launch.h"

namespace sy {
namespace {

using Clock = std::chrono::steady_clock;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace
}  // namespace sy

int main() {
  using namespace sy;
  const int workers = 4, reps = 7;
  const int64_t tokens = 2048;
  const Config cfg = load_config_string(
      "model:\n  hidden_size: 256\n  layer:\n    stages:\n"
      "      - {experts: 16, ffn_hidden_size: 512, routing: {k: 2}}\n",
      "bench-cluster");
  const TensorMap weights = init_model_weights(cfg.model, 1);
  RandomStream rng(1, "bench-cluster");
  const Tensor x = random_tokens(tokens, cfg.model.hidden_size, rng), g = random_tokens(tokens, cfg.model.hidden_size, rng);
  const AdamWConfig adam{.lr = 1e-4};
  auto time_steps = [&](MoeModel& model) {
    std::vector<double> t;
    for (int r = 0; r < reps + 1; ++r) {
      const auto s = Clock::now();
      model.forward(x);
      model.backward(g);
      model.step(adam);
      if (r > 0) t.push_back(std::chrono::duration<double>(Clock::now() - s).count());  // first: warm-up
    }
    return median(t);
  };

  MoeModel local(cfg, weights);
  const double local_s = time_steps(local);

  ClusterConfig cc;
  cc.workers = workers;
  Coordinator coordinator(cc);
  std::vector<launch::LocalProcess> procs;
  const unsigned threads = std::max(1u, std::thread::hardware_concurrency() / workers);
  for (int i = 0; i < workers; ++i)
    procs.push_back(launch::LocalProcess::spawn(
        {std::string(SY_BINARY_DIR) + "/switchyard", "worker", "--coordinator", coordinator.endpoint(), "--id",
         std::to_string(i)},
        {{"OMP_NUM_THREADS", std::to_string(threads)}}));
  double cluster_s = 0, exchange_share = 0, worker_share = 0;
  {
    ClusterClient client(coordinator.endpoint(), "bench cluster");
    client.load_model(cfg, weights);
    MoeModel remote(cfg, weights, client);
    remote.forward(x);  // warm-up round trips
    remote.backward(g);
    remote.step(adam);
    const double ex0 = client.exchange_seconds(), wc0 = client.worker_compute_seconds();
    const auto s = Clock::now();
    cluster_s = time_steps(remote);
    const double total = std::chrono::duration<double>(Clock::now() - s).count();
    exchange_share = (client.exchange_seconds() - ex0) / total;
    worker_share = (client.worker_compute_seconds() - wc0) / total;
  }
  for (auto& p : procs) ::kill(p.pid(), SIGTERM);
  for (auto& p : procs) (void)p.wait(std::chrono::milliseconds(5000));

  std::printf("cluster bench: d=%d E=16 f=512 top-2, %lld tokens/step, %d workers (OMP_NUM_THREADS=%u each), %d steps\n",
              cfg.model.hidden_size, static_cast<long long>(tokens), workers, threads, reps);
  std::printf("local_step_ms: %.1f\ncluster_step_ms: %.1f\n", local_s * 1e3, cluster_s * 1e3);
  std::printf("cluster_exchange_share: %.3f\ncluster_worker_compute_share: %.3f\ncluster_client_compute_share: %.3f\n",
              exchange_share, worker_share, 1.0 - exchange_share - worker_share);
  std::printf("cluster_vs_local: %.3f\n", cluster_s / local_s);
  return 0;
}
