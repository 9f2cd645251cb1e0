// switchyard bench rebalance --cluster H:P [--config C] [--steps N] [--skew S] [--tokens T]
//                            [--copy-hidden D] [--copy-ffn F] [--repeats R] [--perftest PATH]
//
// Two measurements on a cluster started with `cluster.rebalance.every_steps` set
// (configs/bench-rebalance.yaml):
//
// 1. Skewed training. One client trains the experts of C on `train-toy --skew S` tokens (the
//    router is not trained, so the load stays skewed and the comparison is clean) until the
//    policy rebalances by itself, then as many steps again. Medians of the step time before
//    (from step 5) and after (from two steps after the switch), and of the busiest worker's rows
//    per step. `skewed_step_after_vs_before` (target <= 0.8) and
//    `skewed_busiest_rows_after_vs_before` (what balance buys where every worker has its own
//    cores; on a machine with fewer cores than workers the step time follows total work, not
//    the busiest worker). `rebalance_pause_ms`: the longest a worker spent copying in that
//    rebalance.
// 2. Migration bandwidth. A serving model of 4 experts of hidden D, ffn F (swiglu) is loaded and
//    one replica is moved between two workers R times (between requests: no training client).
//    Bandwidth per move = the bytes copied (weights and AdamW moments) / the longest a worker
//    spent on the copy; the peer is `ucx_perftest -t tag_bw` moving messages of the same size
//    over shared memory in the same run. `migration_vs_ucx_perftest` (target >= 0.7).
#include "bench_rebalance.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <iomanip>
#include <iostream>

#include "bench_exchange.h"
#include "flags.h"
#include "switchyard/cli/toy_task.h"
#include "switchyard/client/cluster_client.h"
#include "switchyard/core/error.h"
#include "switchyard/engine/layer_engine.h"
#include "switchyard/engine/layer_weights.h"

namespace sy {
namespace {

using Clock = std::chrono::steady_clock;

double median(std::vector<double> v) {
  if (v.empty()) return std::nan("");
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

struct SkewedRun {
  double step_before = 0, step_after = 0, rows_before = 0, rows_after = 0, pause_ms = 0;
  int switched_at = 0;
};

SkewedRun skewed_training(const std::string& endpoint, const Config& cfg, int max_steps, double skew, int64_t tokens) {
  const ModelConfig& model = cfg.require_model();
  TensorMap weights = init_layer_weights(model, 2);
  const SkewedTokens skewed(model, skew, 1);
  skewed.skew_router(weights, model, 1.0f);
  ClusterClient client(endpoint, "bench rebalance (training)");
  client.load_model(cfg, weights);
  const uint64_t epoch = client.placement().epoch;
  LayerEngine layer(model, weights, client.experts(0));
  RandomStream rng(7, "bench-rebalance");
  std::vector<double> step_s, busiest;
  std::vector<uint64_t> sent = client.rows_sent();
  SkewedRun run;
  for (int n = 1; n <= max_steps; ++n) {
    const auto start = Clock::now();
    TensorMap grads = zeros_like(weights);
    const Tensor x = skewed.sample(tokens, rng);
    layer.forward(x);
    layer.backward(random_tokens(tokens, model.hidden_size, rng), grads);
    client.step({.lr = 1e-4}, 1, static_cast<uint64_t>(n));
    step_s.push_back(std::chrono::duration<double>(Clock::now() - start).count());
    const std::vector<uint64_t> now = client.rows_sent();
    uint64_t most = 0;
    for (size_t w = 0; w < now.size(); ++w) most = std::max(most, now[w] - sent[w]);
    sent = now;
    busiest.push_back(static_cast<double>(most));
    if (!run.switched_at && client.placement().epoch != epoch) {
      run.switched_at = n;
      max_steps = std::min(max_steps, 2 * n + 4);
    }
  }
  if (!run.switched_at)
    throw Error(ErrorKind::config, "bench rebalance: no automatic rebalance within " + std::to_string(max_steps) +
                                       " steps; start the cluster with cluster.rebalance.every_steps set "
                                       "(configs/bench-rebalance.yaml)");
  const auto span = [](const std::vector<double>& v, int from, int to) {
    return std::vector<double>(v.begin() + from, v.begin() + std::max(from, to));
  };
  const int k = run.switched_at;
  run.step_before = median(span(step_s, std::min(4, k - 1), k - 1));
  run.step_after = median(span(step_s, std::min<int>(k + 1, static_cast<int>(step_s.size()) - 1), static_cast<int>(step_s.size())));
  run.rows_before = median(span(busiest, std::min(4, k - 1), k - 1));
  run.rows_after = median(span(busiest, std::min<int>(k + 1, static_cast<int>(busiest.size()) - 1), static_cast<int>(busiest.size())));
  const ClusterStatus st = query_cluster_status(endpoint);
  if (!st.rebalances.empty()) run.pause_ms = st.rebalances.front().pause_ms;
  return run;
}

std::string four_experts(int d, int f) {
  return "model:\n  hidden_size: " + std::to_string(d) + "\n  layer:\n    stages:\n      - {experts: 4, ffn_hidden_size: " +
         std::to_string(f) + ", routing: {k: 1}}\n";
}

std::string placement_with(int workers, int moved_to) {
  std::string y = "placement:\n  experts:\n";
  for (int e = 0; e < 4; ++e)
    y += "    - {layer: 0, stage: 0, expert: " + std::to_string(e) + ", workers: [" +
         std::to_string(e == 0 ? moved_to : e % workers) + "]}\n";
  return y;
}

// MiB/s of each move of expert 0 between workers 0 and 1; `bytes` gets one move's bytes.
std::vector<double> migration_bandwidth(const std::string& endpoint, int d, int f, int repeats, uint64_t& bytes) {
  const Config cfg = load_config_string(four_experts(d, f), "bench rebalance (copy model)");
  ClusterClient client(endpoint, "bench rebalance (serving)");
  client.set_training(false);
  client.load_model(cfg, init_layer_weights(cfg.model, 3));
  const int workers = client.workers();
  std::vector<double> mib_s;
  for (int r = 0; r < repeats; ++r) {
    const RebalanceInfo info = rebalance_cluster(endpoint, {placement_with(workers, (r + 1) % 2)});
    bytes = info.moved_bytes;
    if (info.pause_ms > 0) mib_s.push_back(static_cast<double>(info.moved_bytes) / (1 << 20) / (info.pause_ms / 1e3));
  }
  return mib_s;
}

}  // namespace

int cli_bench_rebalance(const std::vector<std::string>& args) {
  Flags flags(args, "bench rebalance",
              {"cluster", "config", "steps", "skew", "tokens", "copy-hidden", "copy-ffn", "repeats", "perftest"});
  const std::string endpoint = flags.get("cluster");
  const Config cfg = load_config(flags.get_or("config", "configs/models/topk.yaml"));
  const int steps = static_cast<int>(flags.get_int("steps", 200));
  const double skew = flags.get_double("skew", 1.2);
  const int64_t tokens = flags.get_int("tokens", 2048);
  const SkewedRun run = skewed_training(endpoint, cfg, steps, skew, tokens);
  std::cout << "skewed training (skew " << skew << ", " << tokens << " tokens/step): rebalanced by the policy at step "
            << run.switched_at << "\n"
            << std::fixed << std::setprecision(2) << "  median step " << run.step_before * 1e3 << " ms before, "
            << run.step_after * 1e3 << " ms after; busiest worker " << run.rows_before << " rows/step before, "
            << run.rows_after << " after\n";
  uint64_t bytes = 0;
  const int d = static_cast<int>(flags.get_int("copy-hidden", 1024)), f = static_cast<int>(flags.get_int("copy-ffn", 4096));
  const std::vector<double> bw = migration_bandwidth(endpoint, d, f, static_cast<int>(flags.get_int("repeats", 3)), bytes);
  const int64_t mib = std::max<int64_t>(1, static_cast<int64_t>(std::llround(static_cast<double>(bytes) / (1 << 20))));
  const double peer = ucx_perftest_tag_bw("shm", mib, flags.get_or("perftest", "ucx_perftest"));
  std::cout << "migration: " << bytes << " bytes per move (d " << d << ", f " << f << "), median " << median(bw)
            << " MiB/s over " << bw.size() << " moves; ucx_perftest tag_bw " << mib << " MiB over shm: " << peer << " MiB/s\n";
  std::cout << std::setprecision(3) << "skewed_step_after_vs_before: " << run.step_after / run.step_before << "\n"
            << "skewed_busiest_rows_after_vs_before: " << run.rows_after / run.rows_before << "\n"
            << std::setprecision(2) << "rebalance_pause_ms: " << run.pause_ms << "\n"
            << "migration_mib_per_s: " << median(bw) << "\n"
            << std::setprecision(3) << "migration_vs_ucx_perftest: " << (peer > 0 ? median(bw) / peer : std::nan("")) << "\n";
  return 0;
}

}  // namespace sy
