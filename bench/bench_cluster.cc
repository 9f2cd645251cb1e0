// Cluster vs single process: one training step (forward + backward + AdamW) of the same layer
// through a local 4-worker cluster (coordinator here, `switchyard worker` processes, UCX) and
// in this process, medians of repeated steps measured in the same run; plus how the cluster
// step splits into exchange, worker compute and client compute, and serving latency.
#include <signal.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <map>
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
  const int workers = 4, reps = 5;
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

  // The cluster step at each chunk size (cluster.chunk_rows), a fresh cluster each.
  struct ClusterRun {
    double step_s = 0, exchange_share = 0, worker_share = 0;
    ClusterClient::CopyCounts copies;
  };
  auto run_cluster = [&](int chunk_rows) {
    ClusterConfig cc;
    cc.workers = workers;
    cc.chunk_rows = chunk_rows;
    Coordinator coordinator(cc);
    std::vector<launch::LocalProcess> procs;
    for (int i = 0; i < workers; ++i)
      procs.push_back(launch::LocalProcess::spawn(
          {std::string(SY_BINARY_DIR) + "/switchyard", "worker", "--coordinator", coordinator.endpoint(), "--id",
           std::to_string(i)},
          launch::shared_core_env(workers)));
    ClusterRun r;
    {
      ClusterClient client(coordinator.endpoint(), "bench cluster");
      client.load_model(cfg, weights);
      MoeModel remote(cfg, weights, client);
      remote.forward(x);  // warm-up round trips
      remote.backward(g);
      remote.step(adam);
      const double ex0 = client.exchange_seconds(), wc0 = client.worker_compute_seconds();
      const ClusterClient::CopyCounts c0 = client.copies();
      const auto s = Clock::now();
      r.step_s = time_steps(remote);
      const double total = std::chrono::duration<double>(Clock::now() - s).count();
      r.exchange_share = (client.exchange_seconds() - ex0) / total;
      r.worker_share = (client.worker_compute_seconds() - wc0) / total;
      const ClusterClient::CopyCounts c1 = client.copies();
      r.copies = {c1.rows_sent - c0.rows_sent, c1.rows_packed - c0.rows_packed, c1.rows_received - c0.rows_received,
                  c1.rows_unpacked - c0.rows_unpacked};
    }
    for (auto& p : procs) ::kill(p.pid(), SIGTERM);
    for (auto& p : procs) (void)p.wait(std::chrono::milliseconds(5000));
    return r;
  };
  const int chosen = ClusterConfig{}.chunk_rows;
  std::printf("cluster bench: d=%d E=16 f=512 top-2, %lld tokens/step, %d workers, %d steps; local step %.1f ms\n",
              cfg.model.hidden_size, static_cast<long long>(tokens), workers, reps, local_s * 1e3);
  std::printf("%-12s %10s %9s %9s %14s %14s\n", "chunk_rows", "step_ms", "exchange", "workers", "copies/row out",
              "copies/row in");
  // Rounds over the sizes, interleaved (the machine's load drifts): the run of median step per size.
  const std::vector<int> sizes = {0, 64, 256, 1024};
  std::map<int, std::vector<ClusterRun>> runs;
  for (int round = 0; round < 3; ++round)
    for (int chunk : sizes) runs[chunk].push_back(run_cluster(chunk));
  ClusterRun at_default, whole;
  for (int chunk : sizes) {
    std::vector<ClusterRun>& rs = runs[chunk];
    std::sort(rs.begin(), rs.end(), [](const ClusterRun& a, const ClusterRun& b) { return a.step_s < b.step_s; });
    const ClusterRun& r = rs[rs.size() / 2];
    std::printf("%-12d %10.1f %9.3f %9.3f %14.3f %14.3f\n", chunk, r.step_s * 1e3, r.exchange_share, r.worker_share,
                double(r.copies.rows_packed) / double(std::max<uint64_t>(r.copies.rows_sent, 1)),
                double(r.copies.rows_unpacked) / double(std::max<uint64_t>(r.copies.rows_received, 1)));
    std::printf("cluster_step_ms_chunk_%d: %.1f\n", chunk, r.step_s * 1e3);
    if (chunk == chosen) at_default = r;
    if (chunk == 0) whole = r;
  }
  if (at_default.step_s == 0) at_default = run_cluster(chosen);
  std::printf("local_step_ms: %.1f\ncluster_step_ms: %.1f (cluster.chunk_rows %d)\n", local_s * 1e3, at_default.step_s * 1e3,
              chosen);
  std::printf("cluster_exchange_share: %.3f\ncluster_worker_compute_share: %.3f\ncluster_client_compute_share: %.3f\n",
              at_default.exchange_share, at_default.worker_share, 1.0 - at_default.exchange_share - at_default.worker_share);
  std::printf("cluster_copies_per_row: %.3f\n",
              double(at_default.copies.rows_packed + at_default.copies.rows_unpacked) /
                  double(std::max<uint64_t>(at_default.copies.rows_sent, 1)));
  // What the copies cost: the rows copied per step at memcpy speed, measured here.
  std::vector<float> from(size_t{1} << 18, 1.0f), to(from.size());
  const auto c0 = Clock::now();
  for (int i = 0; i < 200; ++i) {
    std::memcpy(to.data(), from.data(), from.size() * sizeof(float));
    from[static_cast<size_t>(i)] = to[static_cast<size_t>(i + 1)];
  }
  const double bytes_per_s = 200.0 * from.size() * sizeof(float) / std::chrono::duration<double>(Clock::now() - c0).count();
  auto copy_ms = [&](const ClusterRun& r) {
    return double(r.copies.rows_packed + r.copies.rows_unpacked) * cfg.model.hidden_size * sizeof(float) / bytes_per_s /
           reps * 1e3;
  };
  std::printf("memcpy %.1f GB/s: copies cost %.2f ms a step with one request per worker, %.2f ms with chunks\n",
              bytes_per_s / 1e9, copy_ms(whole), copy_ms(at_default));
  std::printf("cluster_chunked_vs_whole: %.3f\n", at_default.step_s / whole.step_s);
  std::printf("cluster_vs_local: %.3f\n", at_default.step_s / local_s);
  return 0;
}
