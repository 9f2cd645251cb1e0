// Chaos: a bounded soak. A two-layer model trains with every expert on two of five workers
// through a local cluster whose coordinator keeps a state file, while workers are killed at
// random points of random steps (seeded: SWITCHYARD_CHAOS_SEED overrides) and the coordinator is
// killed once and restarted three steps later. The run must end with no failed step, every
// expert back at two replicas on live workers (recovery), bit-identical replicas, finite losses
// equal to an undisturbed run's until the first fault (after it see the comment in the test).
#include <gtest/gtest.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <random>
#include <set>
#include <thread>

#include "switchyard/cli/toy_task.h"
#include "switchyard/client/cluster_admin.h"
#include "switchyard/client/cluster_client.h"
#include "switchyard/core/error.h"
#include "switchyard/engine/moe_model.h"
#include "../support/free_port.h"
#include "../support/local_cluster.h"

namespace sy {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

Config model_config() {
  return load_config_string(
      "model:\n  hidden_size: 16\n  layers: 2\n  layer:\n    input_norm: rmsnorm\n    stages:\n"
      "      - {experts: 6, ffn_hidden_size: 8, routing: {k: 2}, aggregation: {kind: dag, levels: 1, dim: 4}}\n"
      "      - {experts: 4, ffn_hidden_size: 8, routing: {k: 1}}\n",
      "chaos");
}


enum class Point { before_forward, before_backward, before_step, during_step };
const char* name_of(Point p) {
  static const char* names[] = {"before the forward", "between forward and backward", "after the backward",
                                "during the replica reduction"};
  return names[static_cast<int>(p)];
}

struct Fault {
  int step;
  Point point;
  int worker;  // -1: the coordinator (killed here, back 3 steps later)
};

struct Soak {
  std::vector<double> losses;
  std::vector<std::vector<int64_t>> expert_rows;
  std::vector<double> recovery_seconds;  // per recovery: loss detected → full replica count
  int failed_steps = 0;
  ClusterStatus end;
  std::map<int, TensorMap> replicas;
};

// `restart_after` > 0: a killed worker is started again (as `switchyard up` does with
// cluster.restart_workers) that many steps after its kill, and joins as a replacement.
Soak soak(int steps, const std::vector<Fault>& faults, int restart_after = 0) {
  const std::string state = ::testing::TempDir() + "/chaos-" + std::to_string(::getpid()) + ".state";
  std::filesystem::remove(state);
  ClusterConfig c = test_cluster_config(5, 2);
  c.coordinator = "127.0.0.1:" + std::to_string(free_port());
  c.state_file = state;
  const Config cfg = model_config();
  const TensorMap weights = init_model_weights(cfg.model, 17);
  LocalCluster cluster(c);
  ClusterClient client(cluster.coordinator->endpoint(), "chaos trainer");
  client.load_model(cfg, weights);
  MoeModel model(cfg, weights, client);
  Soak out;
  std::map<uint64_t, double> recoveries;  // epoch → seconds (a restarted coordinator's history is new)
  auto note_recoveries = [&](const ClusterStatus& st) {
    for (const RebalanceInfo& r : st.rebalances)
      if (r.source == "recovery" && r.state == "committed" && r.since_loss_seconds > 0)
        recoveries[r.epoch] = r.since_loss_seconds;
  };
  int coordinator_back_at = -1;
  std::map<int, std::pair<int, pid_t>> restart_at;  // step → (worker, the pid it replaces)
  auto inject = [&](int step, Point p) {
    for (const Fault& f : faults) {
      if (f.step != step || f.point != p) continue;
      if (f.worker < 0) {
        std::printf("[ chaos ] step %d: coordinator killed %s\n", step, name_of(p));
        cluster.coordinator.reset();
        coordinator_back_at = step + 3;
        continue;
      }
      std::printf("[ chaos ] step %d: worker %d killed %s\n", step, f.worker, name_of(p));
      if (restart_after > 0) restart_at[step + restart_after] = {f.worker, cluster.workers[static_cast<size_t>(f.worker)].pid()};
      if (p == Point::during_step) {  // stopped, so that the survivors wait in the reduction; killed meanwhile
        ::kill(cluster.workers[static_cast<size_t>(f.worker)].pid(), SIGSTOP);
        std::thread([pid = cluster.workers[static_cast<size_t>(f.worker)].pid()] {
          std::this_thread::sleep_for(300ms);
          ::kill(pid, SIGKILL);
        }).detach();
      } else {
        cluster.workers[static_cast<size_t>(f.worker)].kill();
      }
    }
  };
  for (int step = 0; step < steps; ++step) {
    if (step == coordinator_back_at) {
      std::printf("[ chaos ] step %d: coordinator restarted from %s\n", step, state.c_str());
      cluster.coordinator = std::make_unique<Coordinator>(c);
    }
    if (auto r = restart_at.find(step); r != restart_at.end()) {
      const auto [w, lost] = r->second;
      std::printf("[ chaos ] step %d: worker %d restarted\n", step, w);
      cluster.workers[static_cast<size_t>(w)] = launch::LocalProcess::spawn(
          {kBinary, "worker", "--coordinator", c.coordinator, "--id", std::to_string(w), "--replaces-pid",
           std::to_string(lost)});
    }
    RandomStream rng(300 + static_cast<uint64_t>(step), "chaos");
    const Tensor x = random_tokens(64, cfg.model.hidden_size, rng), g = random_tokens(64, cfg.model.hidden_size, rng);
    try {
      inject(step, Point::before_forward);
      const Tensor h = model.forward(x);
      double loss = model.aux_loss();
      for (int64_t i = 0; i < h.numel(); ++i) loss += static_cast<double>(h[i]) * g[i];
      out.losses.push_back(loss);
      out.expert_rows.emplace_back();
      for (int l = 0; l < cfg.model.layers; ++l)
        for (const StageStats& st : model.layer(l).stats())
          out.expert_rows.back().insert(out.expert_rows.back().end(), st.expert_rows.begin(), st.expert_rows.end());
      inject(step, Point::before_backward);
      model.backward(g);
      inject(step, Point::before_step);
      inject(step, Point::during_step);
      model.step(AdamWConfig{.lr = 1e-2});
    } catch (const Error& e) {
      ++out.failed_steps;
      ADD_FAILURE() << "step " << step << " failed: " << e.what();
      break;
    }
    if (cluster.coordinator) note_recoveries(query_cluster_status(cluster.coordinator->endpoint()));
  }
  // Recovery of the last loss may still be copying at a step boundary: a few more quiet steps.
  if (!cluster.coordinator) cluster.coordinator = std::make_unique<Coordinator>(c);
  // With restarts, also until every restarted worker has registered and holds replicas.
  for (int extra = 0; extra < 100; ++extra) {
    out.end = query_cluster_status(cluster.coordinator->endpoint());
    note_recoveries(out.end);
    bool full = !out.end.rebalances.empty() || faults.empty();
    int alive = 0;
    for (const WorkerStatus& w : out.end.workers) full &= !w.replacement, alive += w.alive;
    if (restart_after > 0) full &= alive == c.workers;
    for (const auto& [key, workers] : out.end.placement.replicas) {
      int live = 0;
      for (int w : workers) live += out.end.workers.at(static_cast<size_t>(w)).alive;
      full &= live == 2 && workers.size() == 2;
    }
    if (full && (out.end.rebalances.empty() || out.end.rebalances.front().state != "copying")) break;
    RandomStream rng(900 + static_cast<uint64_t>(extra), "chaos");
    model.forward(random_tokens(64, cfg.model.hidden_size, rng));
    model.backward(random_tokens(64, cfg.model.hidden_size, rng));
    model.step(AdamWConfig{.lr = 1e-2});
  }
  for (const auto& [epoch, secs] : recoveries) out.recovery_seconds.push_back(secs);
  for (const WorkerStatus& w : out.end.workers)
    if (w.alive) out.replicas[w.id] = client.fetch_replica_weights(w.id);
  std::filesystem::remove(state);
  return out;
}

// Every expert at two replicas, on live workers (`alive` of them); replicas bit-identical.
void expect_full_and_identical(const Soak& run, int alive_expected) {
  int alive = 0;
  for (const WorkerStatus& w : run.end.workers) alive += w.alive;
  EXPECT_EQ(alive, alive_expected);
  for (const auto& [key, holders] : run.end.placement.replicas) {
    ASSERT_EQ(holders.size(), 2u) << key.to_string();
    for (int w : holders) EXPECT_TRUE(run.end.workers.at(static_cast<size_t>(w)).alive) << key.to_string();
  }
  std::map<std::string, std::pair<int, const Tensor*>> first;  // tensor name → the first holder's
  for (const auto& [w, tensors] : run.replicas)
    for (const auto& [name, t] : tensors) {
      auto [it, fresh] = first.try_emplace(name, w, &t);
      if (!fresh) {
        EXPECT_EQ(t.values(), it->second.second->values()) << name << ": workers " << it->second.first << " and " << w;
      }
    }
}

// Random faults: three of the five workers, at random points of random steps (one per step range,
// so that each recovery has a few steps), and the coordinator once, between them.
std::vector<Fault> random_faults(unsigned seed) {
  std::mt19937 rng(seed);
  std::vector<int> workers = {0, 1, 2, 3, 4};
  std::shuffle(workers.begin(), workers.end(), rng);
  std::vector<Fault> faults;
  for (int k = 0; k < 3; ++k)
    faults.push_back({2 + 7 * k + static_cast<int>(rng() % 3), static_cast<Point>(rng() % 4), workers[static_cast<size_t>(k)]});
  faults.push_back({6 + static_cast<int>(rng() % 2), Point::before_forward, -1});
  return faults;
}

unsigned chaos_seed() {
  const char* env = std::getenv("SWITCHYARD_CHAOS_SEED");
  const unsigned seed = env ? static_cast<unsigned>(std::strtoul(env, nullptr, 10)) : 20261201u;
  std::printf("[ chaos ] seed %u (SWITCHYARD_CHAOS_SEED)\n", seed);
  return seed;
}

TEST(Chaos, TrainingSurvivesRandomWorkerKillsAndACoordinatorRestart) {
  const int steps = 24;
  const std::vector<Fault> faults = random_faults(chaos_seed());
  const auto start = Clock::now();
  const Soak run = soak(steps, faults);
  const double secs = std::chrono::duration<double>(Clock::now() - start).count();
  const Soak calm = soak(steps, {});
  EXPECT_EQ(run.failed_steps, 0);
  ASSERT_EQ(run.losses.size(), static_cast<size_t>(steps));
  // The loss curve: bit for bit the undisturbed run's until the first fault; after it, how long it
  // stays within round-off (1e-5) is reported, not asserted: a loss recomputed on a survivor sums
  // in another order, and with this small model (d = 16) a routing decision soon flips on such a
  // difference (TrainingFailover and CoordinatorRestart prove the exact continuation).
  const int first_fault = std::min_element(faults.begin(), faults.end(), [](const Fault& x, const Fault& y) {
                            return x.step < y.step;
                          })->step;
  for (int s = 0; s < first_fault; ++s) EXPECT_EQ(run.losses[static_cast<size_t>(s)], calm.losses[static_cast<size_t>(s)]) << "step " << s;
  size_t agree = 0;
  while (agree < run.losses.size() &&
         std::fabs(run.losses[agree] - calm.losses[agree]) <= 1e-5 * std::max(1.0, std::fabs(calm.losses[agree])))
    ++agree;
  for (double l : run.losses) EXPECT_TRUE(std::isfinite(l));
  expect_full_and_identical(run, 2);
  std::string recoveries;
  for (double s : run.recovery_seconds) recoveries += " " + std::to_string(s).substr(0, 5) + " s";
  std::printf("[ chaos ] %d steps in %.1f s: 3 worker kills and 1 coordinator restart survived, %d steps failed; "
              "%zu recoveries (loss detected → full replica count):%s; losses within 1e-5 of the undisturbed run's "
              "through step %zu of %d (first fault at step %d)\n",
              steps, secs, run.failed_steps, run.recovery_seconds.size(), recoveries.c_str(), agree, steps, first_fault);
  // One recovery per loss, or fewer: a loss during a recovery aborts it and the next one restores both.
  EXPECT_GE(run.recovery_seconds.size(), 1u);
}

// The same faults, each killed worker started again two steps later (cluster.restart_workers):
// the job goes on, each replacement receives replicas (recovery or join), and the run ends with
// all five workers live, every expert at two replicas, replicas bit-identical.
TEST(Chaos, KilledWorkersRestartAndRejoinWhileTrainingGoesOn) {
  const int steps = 24;
  const std::vector<Fault> faults = random_faults(chaos_seed());
  const auto start = Clock::now();
  const Soak run = soak(steps, faults, /*restart_after=*/2);
  const double secs = std::chrono::duration<double>(Clock::now() - start).count();
  EXPECT_EQ(run.failed_steps, 0);
  ASSERT_EQ(run.losses.size(), static_cast<size_t>(steps));
  for (double l : run.losses) EXPECT_TRUE(std::isfinite(l));
  expect_full_and_identical(run, 5);
  int restarted = 0;
  for (const WorkerStatus& w : run.end.workers) {
    restarted += w.restarts > 0;
    if (w.restarts > 0) {
      EXPECT_FALSE(run.end.placement.experts_on(w.id).empty()) << "replacement " << w.id << " holds nothing";
    }
  }
  EXPECT_EQ(restarted, 3);
  std::printf("[ chaos ] %d steps in %.1f s: 3 worker kills, each restarted 2 steps later, and 1 coordinator restart "
              "survived, %d steps failed; %d replacements hold replicas; %zu recoveries\n",
              steps, secs, run.failed_steps, restarted, run.recovery_seconds.size());
}

}  // namespace
}  // namespace sy
