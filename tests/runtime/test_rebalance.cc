// Live placement end to end (issue 10): load statistics reach the coordinator, the scheduler's
// per-worker rows follow the planned shares, and rebalances under running training and
// serving lose nothing — bit for bit where only replicas move, within rounding where replica
// counts change, zero failed serving requests, and a worker that dies mid-migration leaves the
// old epoch in force.
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <functional>
#include <memory>
#include <sys/wait.h>

#include <cstdio>
#include <thread>
#include <tuple>

#include "../support/guarded_device_backend.h"
#include "../support/local_cluster.h"
#include "switchyard/client/cluster_admin.h"
#include "switchyard/client/cluster_client.h"
#include "switchyard/cli/toy_task.h"
#include "switchyard/core/error.h"
#include "switchyard/engine/layer_engine.h"
#include "switchyard/engine/layer_weights.h"
#include "switchyard/placement/load_trace.h"

namespace sy {
namespace {

using namespace std::chrono_literals;
const std::string kModels = std::string(SY_SOURCE_DIR) + "/configs/models/";

// topk.yaml: one layer, 8 experts. `experts[e]` lists expert e's workers (and shares).
std::string placement_yaml(const std::vector<std::vector<int>>& experts,
                           const std::vector<std::vector<double>>& shares = {}) {
  std::string y = "placement:\n  experts:\n";
  for (size_t e = 0; e < experts.size(); ++e) {
    y += "    - {layer: 0, stage: 0, expert: " + std::to_string(e) + ", workers: [";
    for (size_t i = 0; i < experts[e].size(); ++i) y += (i ? ", " : "") + std::to_string(experts[e][i]);
    y += "]";
    if (e < shares.size() && !shares[e].empty()) {
      y += ", shares: [";
      for (size_t i = 0; i < shares[e].size(); ++i) y += (i ? ", " : "") + std::to_string(shares[e][i]);
      y += "]";
    }
    y += "}\n";
  }
  return y;
}

// `text` into a file under the test's temp dir; returns its path.
std::string write_temp(const std::string& name, const std::string& text) {
  const std::string path = ::testing::TempDir() + "/" + name;
  FILE* f = std::fopen(path.c_str(), "w");
  std::fwrite(text.data(), 1, text.size(), f);
  std::fclose(f);
  return path;
}

// `switchyard ARGS`: exit code and everything it printed.
std::pair<int, std::string> run_cli(const std::string& args) {
  std::string out;
  FILE* p = ::popen((kBinary + " " + args + " 2>&1").c_str(), "r");
  char buf[512];
  while (std::fgets(buf, sizeof buf, p)) out += buf;
  return {WEXITSTATUS(::pclose(p)), out};
}

// One training client of one layer: per step, forward `tokens` rows (skewed when given),
// backward a random output gradient, and step the experts (a group of one).
struct SoloTrainer {
  SoloTrainer(const std::string& endpoint, const Config& cfg, TensorMap w, const std::string& seed,
              const SkewedTokens* skew = nullptr, int64_t rows = 64)
      : model(cfg.model), weights(std::move(w)), skewed(skew), tokens(rows), client(endpoint, "trainer"),
        rng(1, seed) {
    client.load_model(cfg, weights);
    layer = std::make_unique<LayerEngine>(model, weights, client.experts(0));
  }
  void step(uint64_t n, double lr = 1e-4) {
    TensorMap grads = zeros_like(weights);
    layer->forward(skewed ? skewed->sample(tokens, rng) : random_tokens(tokens, model.hidden_size, rng));
    layer->backward(random_tokens(tokens, model.hidden_size, rng), grads);
    client.step({.lr = lr}, 1, n);
  }
  ModelConfig model;
  TensorMap weights;
  const SkewedTokens* skewed;
  int64_t tokens;
  ClusterClient client;
  RandomStream rng;
  std::unique_ptr<LayerEngine> layer;
};

// Two data-parallel training clients of one layer; per step A then B run forward and backward
// (in that order, so every worker accumulates their gradients in the same order in every run),
// then both step as a group of 2.
struct Trainer {
  Trainer(const std::string& endpoint, const Config& cfg, const TensorMap& weights)
      : model(cfg.model), dense(weights), a(endpoint, "trainer A"), b(endpoint, "trainer B") {
    a.load_model(cfg, weights);
    b.use_loaded_model(cfg);
  }
  // One step; `between` runs after the step (both clients switched to any new epoch).
  void step(uint64_t n) {
    for (ClusterClient* c : {&a, &b}) {
      RandomStream rng(n * 2 + (c == &b), "rebalance-test");
      const Tensor x = random_tokens(96, model.hidden_size, rng), g = random_tokens(96, model.hidden_size, rng);
      TensorMap grads = zeros_like(dense);
      LayerEngine layer(model, dense, c->experts(0));
      layer.forward(x);
      layer.backward(g, grads);
    }
    const AdamWConfig adam{.lr = 1e-2};
    std::thread tb([&] { b.step(adam, 2, n); });
    a.step(adam, 2, n);
    tb.join();
  }
  ModelConfig model;
  TensorMap dense;
  ClusterClient a, b;
};

// Every expert's weights and AdamW moments, from one replica each (replicas are identical).
TensorMap expert_state(ClusterClient& c, int workers) {
  TensorMap out;
  for (int w = 0; w < workers; ++w)
    for (auto& [name, t] : c.fetch_replica_weights(w)) out.emplace(name, t);
  return out;
}

// Replicas of every expert are bit-identical (weights).
void expect_replicas_identical(ClusterClient& c, int workers, const std::string& when) {
  std::vector<TensorMap> held;
  for (int w = 0; w < workers; ++w) held.push_back(c.fetch_replica_weights(w));
  for (const auto& [key, list] : c.placement().replicas)
    for (size_t i = 1; i < list.size(); ++i)
      for (const auto& [name, t] : held[static_cast<size_t>(list[0])])
        if (name.find(".experts." + std::to_string(key.expert) + ".") != std::string::npos) {
          EXPECT_EQ(t.values(), held[static_cast<size_t>(list[i])].at(name).values())
              << when << ": " << name << " differs between workers " << list[0] << " and " << list[i];
        }
}

// Trains `steps` steps; while it runs, a thread asks for each placement of `rebalances` in turn.
// Returns the experts' final weights.
// `devices`: per worker, the backend its replicas live on (inprocess; none: the cpu).
TensorMap train(const std::string& transport, int steps, const std::vector<std::string>& rebalances,
                int* committed = nullptr, const std::vector<Backend*>& devices = {}) {
  const Config cfg = load_config(kModels + "topk.yaml");
  ClusterConfig c = test_cluster_config(3, 2, transport);
  LocalCluster cluster(c, {}, devices);
  const TensorMap weights = init_layer_weights(cfg.model, 7);
  Trainer t(cluster.coordinator->endpoint(), cfg, weights);
  std::atomic<bool> done{false};
  std::atomic<int> ok{0};
  std::thread driver;
  auto rebalance_in_turn = [&] {
    for (const std::string& yaml : rebalances) {
      if (done) break;
      try {
        rebalance_cluster(cluster.coordinator->endpoint(), {yaml});
        ++ok;
      } catch (const Error& e) {
        ADD_FAILURE() << "rebalance failed: " << e.what();
      }
    }
  };
  uint64_t epoch = t.a.placement().epoch;
  for (int n = 1; n <= steps; ++n) {
    t.step(static_cast<uint64_t>(n));
    if (n == 1) driver = std::thread(rebalance_in_turn);  // once the coordinator knows the job trains
    if (t.a.placement().epoch != epoch) {  // copies ran in this step: new replicas equal their sources
      epoch = t.a.placement().epoch;
      EXPECT_EQ(t.b.placement().epoch, epoch) << "the clients switched at different steps";
      expect_replicas_identical(t.a, 3, "right after the rebalance to epoch " + std::to_string(epoch));
    } else {
      expect_replicas_identical(t.a, 3, "after step " + std::to_string(n) + " (epoch " + std::to_string(epoch) + ")");
    }
    std::this_thread::sleep_for(20ms);  // let the driver's rebalances land between steps
  }
  done = true;
  driver.join();
  expect_replicas_identical(t.a, 3, "at the end");
  if (committed) *committed = ok;
  return expert_state(t.a, 3);
}

// Replicas that only move (each expert keeps two, in the same list order): the run ends
// bit-identical to the same run without rebalances.
TEST(RebalanceTraining, MovingReplicasLeavesWeightsBitIdentical) {
  const TensorMap plain = train("inprocess", 12, {});
  const std::vector<std::string> moves = {
      placement_yaml({{1, 2}, {0, 2}, {0, 1}, {1, 2}, {0, 2}, {0, 1}, {1, 2}, {0, 2}}),
      placement_yaml({{0, 1}, {1, 2}, {0, 2}, {0, 1}, {1, 2}, {0, 2}, {0, 1}, {1, 2}}),
  };
  int committed = 0;
  const TensorMap moved = train("inprocess", 12, moves, &committed);
  EXPECT_EQ(committed, 2);
  ASSERT_EQ(moved.size(), plain.size());
  for (const auto& [name, t] : plain) EXPECT_EQ(moved.at(name).values(), t.values()) << name;
}

// GPU workers, on the stand-in device (memory the host cannot touch): training, the replicas'
// gradient reduction, AdamW, fetches and moving replicas between device stores give the CPU
// workers' weights bit for bit.
TEST(RebalanceTraining, WorkersOnADeviceTrainAndMoveReplicasLikeCpuWorkers) {
  const TensorMap plain = train("inprocess", 6, {});
  std::vector<std::unique_ptr<test_support::GuardedDeviceBackend>> devices;
  std::vector<Backend*> backends;
  for (int w = 0; w < 3; ++w) {
    devices.push_back(std::make_unique<test_support::GuardedDeviceBackend>());
    backends.push_back(devices.back().get());
  }
  const std::vector<std::string> moves = {placement_yaml({{1, 2}, {0, 2}, {0, 1}, {1, 2}, {0, 2}, {0, 1}, {1, 2}, {0, 2}})};
  int committed = 0;
  const TensorMap on_devices = train("inprocess", 6, moves, &committed, backends);
  EXPECT_EQ(committed, 1);
  ASSERT_EQ(on_devices.size(), plain.size());
  for (const auto& [name, t] : plain) EXPECT_EQ(on_devices.at(name).values(), t.values()) << name;
  for (const auto& d : devices) {
    EXPECT_GT(d->ops["ffn_forward"], 0);
    EXPECT_GT(d->ops["adamw"], 0);
  }
}

TEST(ClusterStatusDevice, NamesEachWorkersDevice) {
  test_support::GuardedDeviceBackend device;
  LocalCluster cluster(test_cluster_config(2, 1, "inprocess"), {}, {&device});
  ClusterStatus s;
  for (int tries = 0; tries < 200 && s.workers.size() < 2; ++tries) {  // they register as they start
    s = query_cluster_status(cluster.coordinator->endpoint());
    std::this_thread::sleep_for(20ms);
  }
  ASSERT_EQ(s.workers.size(), 2u);
  EXPECT_EQ(s.workers[0].device, "guarded-device");
  EXPECT_EQ(s.workers[1].device, "cpu");
}

// Replica counts change (an expert goes to three workers, others to one): equal to the run
// without rebalances within 1e-5 relative (the reduction sums in another order).
TEST(RebalanceTraining, ChangingReplicaCountsStaysWithinRounding) {
  const TensorMap plain = train("inprocess", 8, {});
  const std::vector<std::string> changes = {
      placement_yaml({{0, 1, 2}, {1}, {2, 0}, {0}, {1, 2}, {2}, {0, 1, 2}, {1}}, {{0.5, 0.25, 0.25}}),
  };
  int committed = 0;
  const TensorMap changed = train("inprocess", 8, changes, &committed);
  EXPECT_EQ(committed, 1);
  for (const auto& [name, t] : plain) {
    double worst = 0, scale = 1e-6;
    for (int64_t i = 0; i < t.numel(); ++i) {
      worst = std::max(worst, std::fabs(double(changed.at(name)[i]) - t[i]));
      scale = std::max(scale, std::fabs(double(t[i])));
    }
    EXPECT_LE(worst, 1e-5 * scale) << name;
  }
}

// The scheduler splits rows in the planned shares, and the load the coordinator measured per
// worker follows them.
TEST(RebalanceLoad, MeasuredWorkerRowsFollowPlannedShares) {
  const Config cfg = load_config(kModels + "topk.yaml");
  ClusterConfig c = test_cluster_config(2, 1, "inprocess");
  c.placement = write_temp("shares.yaml", placement_yaml(std::vector<std::vector<int>>(8, {0, 1}),
                                                         std::vector<std::vector<double>>(8, {0.8, 0.2})));
  LocalCluster cluster(c);
  const TensorMap weights = init_layer_weights(cfg.model, 3);
  ClusterClient client(cluster.coordinator->endpoint(), "server");
  client.load_model(cfg, weights);
  client.set_training(false);
  LayerEngine layer(cfg.model, weights, client.experts(0));
  RandomStream rng(5, "shares");
  for (int i = 0; i < 6; ++i) {
    layer.forward(random_tokens(512, cfg.model.hidden_size, rng));
    std::this_thread::sleep_for(25ms);  // serving clients report at most every 20 ms
  }
  const ClusterLoad load = query_cluster_status(cluster.coordinator->endpoint()).load;
  ASSERT_GT(load.steps, 0u);
  const double w0 = static_cast<double>(load.worker_rows[0]), w1 = static_cast<double>(load.worker_rows[1]);
  ASSERT_GT(w0 + w1, 0);
  // Rounding moves at most one row per expert per forward.
  EXPECT_NEAR(w0 / (w0 + w1), 0.8, 8.0 * load.steps / (w0 + w1)) << w0 << " vs " << w1;
  int64_t computed = 0, routed = 0;
  for (size_t i = 0; i < load.computed.size(); ++i) {
    computed += load.computed[i];
    routed += load.routed[i];
  }
  EXPECT_EQ(computed, static_cast<int64_t>(w0 + w1));  // no capacity: every routed row computed
  EXPECT_EQ(routed, computed);
  EXPECT_NEAR(load.balancedness, (w0 + w1) / 2 / std::max(w0, w1), 1e-9);
}

// Serving clients keep sending while the placement changes five times: no request fails and
// every answer equals the single-process engine.
TEST(RebalanceServing, RepeatedRebalancesFailNoRequest) {
  const Config cfg = load_config(kModels + "topk.yaml");
  LocalCluster cluster(test_cluster_config(3, 1, "inprocess"));
  const TensorMap weights = init_layer_weights(cfg.model, 9);
  {
    ClusterClient loader(cluster.coordinator->endpoint(), "loader");
    loader.load_model(cfg, weights);
  }
  std::atomic<bool> stop{false};
  std::atomic<int> served{0}, failed{0};
  auto serve = [&](int id) {
    ClusterClient c(cluster.coordinator->endpoint(), "server " + std::to_string(id));
    c.use_loaded_model(cfg);
    c.set_training(false);
    LayerEngine layer(cfg.model, weights, c.experts(0));
    LocalExperts local(cfg.model, weights, nullptr);  // engines keep state: one per thread
    LayerEngine reference(cfg.model, weights, local);
    RandomStream rng(static_cast<uint64_t>(id), "serving");
    while (!stop) {
      const Tensor x = random_tokens(64, cfg.model.hidden_size, rng);
      try {
        const Tensor y = layer.forward(x);
        const Tensor want = reference.forward(x);
        double worst = 0;
        for (int64_t i = 0; i < y.numel(); ++i) worst = std::max(worst, std::fabs(double(y[i]) - want[i]));
        if (worst > 1e-5) ++failed;
        ++served;
      } catch (const Error& e) {
        ADD_FAILURE() << "request failed: " << e.what();
        ++failed;
      }
    }
  };
  std::thread s1(serve, 1), s2(serve, 2);
  const std::vector<std::string> placements = {
      placement_yaml({{0, 1}, {1}, {2}, {0}, {1, 2}, {2}, {0}, {1}}),
      placement_yaml({{2}, {0, 1, 2}, {1}, {2}, {0}, {1}, {2}, {0}}),
      placement_yaml({{1}, {2}, {0}, {1}, {2}, {0}, {1}, {2}}, {}),
      placement_yaml({{0, 2}, {1, 0}, {2, 1}, {0}, {1}, {2}, {0}, {1}}, {{0.9, 0.1}, {0.3, 0.7}}),
      placement_yaml({{0}, {1}, {2}, {0}, {1}, {2}, {0}, {1}}),
  };
  for (const std::string& y : placements) {
    std::this_thread::sleep_for(50ms);
    const RebalanceInfo r = rebalance_cluster(cluster.coordinator->endpoint(), {y});
    EXPECT_EQ(r.state, "committed");
  }
  std::this_thread::sleep_for(50ms);
  stop = true;
  s1.join();
  s2.join();
  EXPECT_EQ(failed, 0);
  EXPECT_GT(served, 20);
  std::this_thread::sleep_for(500ms);  // heartbeats carry the replica counts
  const ClusterStatus st = query_cluster_status(cluster.coordinator->endpoint());
  ASSERT_GE(st.rebalances.size(), 5u);
  EXPECT_EQ(st.placement.workers_for({0, 0, 1}), std::vector<int>{1});
  for (const WorkerStatus& w : st.workers) EXPECT_EQ(w.experts, w.id == 2 ? 2u : 3u) << "worker " << w.id << " kept old replicas";
}

// The policy (cluster.rebalance.every_steps): a skewed training job is rebalanced by the
// coordinator itself, and the measured balance improves.
TEST(RebalancePolicy, SkewedTrainingIsRebalancedAutomatically) {
  const Config cfg = load_config(kModels + "topk.yaml");
  ClusterConfig c = test_cluster_config(4, 1, "inprocess");
  c.rebalance.every_steps = 6;
  c.rebalance.window_steps = 5;
  c.rebalance.min_gain = 0.02;
  LocalCluster cluster(c);
  TensorMap weights = init_layer_weights(cfg.model, 2);
  const SkewedTokens skewed(cfg.model, 1.5, 1);
  skewed.skew_router(weights, cfg.model, 1.0f);
  SoloTrainer t(cluster.coordinator->endpoint(), cfg, weights, "policy", &skewed, 256);
  double before = 0;
  for (uint64_t n = 1; n <= 24; ++n) {
    t.step(n);
    if (n == 5) before = query_cluster_status(cluster.coordinator->endpoint()).load.balancedness;
  }
  const ClusterStatus st = query_cluster_status(cluster.coordinator->endpoint());
  ASSERT_FALSE(st.rebalances.empty()) << "the policy never rebalanced (window balancedness " << before << ")";
  const RebalanceInfo& first = st.rebalances.back();
  EXPECT_EQ(first.source, "policy");
  EXPECT_EQ(first.state, "committed") << first.error;
  EXPECT_GE(first.balancedness_after, first.balancedness_before + c.rebalance.min_gain);
  EXPECT_GT(st.placement_epoch, 1u);
  EXPECT_GT(st.load.balancedness, before) << "measured balancedness did not improve";
}

// `rebalance --from-load` plans from the window while the job trains, and `placement load`
// writes that window as a [R, E] trace whose rows sum to what the clients computed.
TEST(RebalanceFromLoad, PlansFromTheWindowAndWritesTheTrace) {
  const Config cfg = load_config(kModels + "topk.yaml");
  LocalCluster cluster(test_cluster_config(4, 1, "inprocess"));
  TensorMap weights = init_layer_weights(cfg.model, 2);
  const SkewedTokens skewed(cfg.model, 1.5, 1);
  skewed.skew_router(weights, cfg.model, 1.0f);
  SoloTrainer t(cluster.coordinator->endpoint(), cfg, weights, "from-load", &skewed, 256);
  for (uint64_t n = 1; n <= 4; ++n) t.step(n);
  const std::string ep = cluster.coordinator->endpoint();
  const std::string trace = ::testing::TempDir() + "/window.npy";
  const auto [code, out] = run_cli("placement load --cluster " + ep + " --out " + trace);
  ASSERT_EQ(code, 0) << out;
  const LoadMatrix m = read_load_trace(trace, &cfg.model);
  ASSERT_EQ(m.rows(), 1);
  ASSERT_EQ(m.experts, 8);
  double total = 0;
  for (double v : m.counts) total += v;
  EXPECT_EQ(total, 4.0 * 256 * 2) << "4 steps of 256 tokens, top-2";  // topk.yaml: k 2, no capacity
  RebalanceInfo r;
  std::thread driver([&] {
    RebalanceOptions o;
    o.from_load = true;
    r = rebalance_cluster(ep, o);
  });
  uint64_t n = 5;
  while (t.client.placement().epoch == 1 && n < 200) t.step(n++);
  driver.join();
  EXPECT_EQ(r.source, "from load");
  EXPECT_EQ(r.state, "committed");
  EXPECT_GT(r.balancedness_after, r.balancedness_before);
  EXPECT_GT(r.at_step, 4u);
  EXPECT_EQ(t.client.placement().epoch, r.epoch);
}

// A training client the coordinator has not heard from for startup_timeout_ms is not known to
// train, so the copies would run between requests; the workers it is attached to refuse them
// (they would miss its steps) and the old epoch stays.
TEST(RebalanceGuard, WorkersRefuseCopiesBetweenRequestsWhileATrainingClientIsAttached) {
  const Config cfg = load_config(kModels + "topk.yaml");
  ClusterConfig c = test_cluster_config(3, 1, "inprocess");
  c.startup_timeout_ms = 1000;
  LocalCluster cluster(c);
  SoloTrainer t(cluster.coordinator->endpoint(), cfg, init_layer_weights(cfg.model, 5), "guard");
  t.step(1);
  std::this_thread::sleep_for(1200ms);  // longer than startup_timeout_ms since its last report
  try {
    rebalance_cluster(cluster.coordinator->endpoint(), {placement_yaml({{1}, {2}, {0}, {1}, {2}, {0}, {1}, {2}})});
    FAIL() << "copies ran between requests while a training client was attached";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("training steps are running here"), std::string::npos) << e.what();
  }
  EXPECT_EQ(t.client.placement().epoch, 1u);
  t.step(2);  // the job goes on with the old placement
  EXPECT_EQ(query_cluster_status(cluster.coordinator->endpoint()).placement_epoch, 1u);
}

// A rebalance that names a placement the cluster cannot hold fails at once, naming why, and
// changes nothing.
TEST(RebalanceErrors, BadPlacementIsRefusedNamingIt) {
  const Config cfg = load_config(kModels + "topk.yaml");
  LocalCluster cluster(test_cluster_config(2, 1, "inprocess"));
  ClusterClient c(cluster.coordinator->endpoint(), "client");
  c.load_model(cfg, init_layer_weights(cfg.model, 1));
  try {
    rebalance_cluster(cluster.coordinator->endpoint(), {placement_yaml({{0}, {1}, {5}, {0}, {1}, {0}, {1}, {0}})});
    FAIL() << "accepted a placement naming worker 5";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::config);
    EXPECT_NE(std::string(e.what()).find("worker 5 does not exist"), std::string::npos) << e.what();
  }
  RebalanceOptions none;
  EXPECT_THROW(rebalance_cluster(cluster.coordinator->endpoint(), none), Error);
  // The CLI: exit 2, naming the file, line and entry; a missing file and a usage error likewise.
  const std::string bad = write_temp("bad-placement.yaml", placement_yaml({{0}, {1}, {5}, {0}, {1}, {0}, {1}, {0}}));
  const auto run = run_cli;
  const std::string ep = cluster.coordinator->endpoint();
  auto [code, out] = run("rebalance --cluster " + ep + " --placement " + bad);
  EXPECT_EQ(code, 2) << out;
  EXPECT_NE(out.find(bad + ":5: placement.experts[2].workers: worker 5 does not exist"), std::string::npos) << out;
  std::tie(code, out) = run("rebalance --cluster " + ep + " --placement " + bad + "-missing");
  EXPECT_EQ(code, 2) << out;
  EXPECT_NE(out.find("-missing"), std::string::npos) << out;
  std::tie(code, out) = run("rebalance --cluster " + ep);
  EXPECT_EQ(code, 2) << out;
  EXPECT_NE(out.find("exactly one of --placement P.yaml and --from-load"), std::string::npos) << out;
  EXPECT_EQ(query_cluster_status(cluster.coordinator->endpoint()).placement_epoch, c.placement().epoch);
}

// A new holder dies while it receives its copies (the test hook makes worker 2 exit there):
// the rebalance fails naming it, the old epoch stays, and training goes on.
TEST(RebalanceFailure, WorkerKilledDuringMigrationKeepsTheOldEpoch) {
  const Config cfg = load_config(kModels + "topk.yaml");
  ::setenv("UCX_TLS", "tcp,self", 1);
  struct RestoreEnv {
    ~RestoreEnv() { ::unsetenv("UCX_TLS"); }
  } restore;
  ClusterConfig c = test_cluster_config(3, 1, "ucx");
  c.dead_after_ms = 1500;
  c.placement = write_temp("two-workers.yaml", placement_yaml(std::vector<std::vector<int>>(8, {0, 1})));
  const std::vector<std::pair<std::string, std::string>> tcp = {{"UCX_TLS", "tcp,self"}};
  auto dying = tcp;
  dying.emplace_back("SWITCHYARD_TEST_EXIT_IN_COPY", "1");
  LocalCluster cluster(c, {tcp, tcp, dying});
  SoloTrainer t(cluster.coordinator->endpoint(), cfg, init_layer_weights(cfg.model, 4), "failure");
  const uint64_t epoch = t.client.placement().epoch;
  t.step(1);
  std::string error;
  std::thread driver([&] {
    try {
      rebalance_cluster(cluster.coordinator->endpoint(), {placement_yaml(std::vector<std::vector<int>>(8, {0, 1, 2}))});
    } catch (const Error& e) {
      error = e.what();
    }
  });
  std::atomic<bool> finished{false};
  std::thread waiter([&] {
    driver.join();
    finished = true;
  });
  uint64_t n = 2;
  while (!finished && n < 400) t.step(n++);  // the copies run inside one of these steps
  waiter.join();
  EXPECT_NE(error.find("worker 2"), std::string::npos) << "error: " << error;
  EXPECT_EQ(t.client.placement().epoch, epoch);
  for (int more = 0; more < 3; ++more) t.step(n++);  // training goes on without worker 2
  std::this_thread::sleep_for(500ms);                // heartbeats carry the replica counts
  const ClusterStatus st = query_cluster_status(cluster.coordinator->endpoint());
  EXPECT_EQ(st.placement_epoch, epoch);
  ASSERT_FALSE(st.rebalances.empty());
  EXPECT_EQ(st.rebalances[0].state, "failed");
  for (const WorkerStatus& w : st.workers) {
    if (w.id < 2) {
      EXPECT_EQ(w.experts, 8u) << "worker " << w.id;
    }
  }
}

}  // namespace
}  // namespace sy
