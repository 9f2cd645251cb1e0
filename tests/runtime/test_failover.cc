// Failover within a step: with every expert on two of three workers, a worker killed at any
// point of a training step (before the forward, between forward and backward, after the
// backward, during the replica reduction) does not fail the step, and the losses go on as in an
// undisturbed run within float round-off; the survivors' replicas stay bit-identical. A serving
// client loses no request through a kill, and a client that attaches afterwards works on the
// survivors. (An expert left without a replica fails naming it: test_cluster's ClusterFailure.)
#include <gtest/gtest.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <algorithm>
#include <map>
#include <optional>
#include <thread>

#include "switchyard/cli/toy_task.h"
#include "switchyard/client/cluster_admin.h"
#include "switchyard/client/cluster_client.h"
#include "switchyard/core/error.h"
#include "switchyard/engine/layer_engine.h"
#include "switchyard/engine/layer_weights.h"
#include "switchyard/engine/moe_model.h"
#include "../support/trajectory_adamw.h"
#include "../support/free_port.h"
#include "../support/local_cluster.h"
#include "../support/test_model.h"

namespace sy {
namespace {

using namespace std::chrono_literals;

enum class Point { before_forward, before_backward, before_step, during_step };
const char* name_of(Point p) {
  switch (p) {
    case Point::before_forward: return "BeforeForward";
    case Point::before_backward: return "BetweenForwardAndBackward";
    case Point::before_step: return "AfterBackward";
    case Point::during_step: return "DuringReplicaReduction";
  }
  return "?";
}

struct TrainRun {
  std::vector<double> losses;
  std::vector<std::vector<int64_t>> expert_rows;  // per step: every stage's rows per expert
  uint64_t workers_lost = 0;
  std::map<int, TensorMap> replicas;  // per surviving worker: the expert weights it holds
};

void expect_close(const Tensor& a, const Tensor& b, const std::string& what) {
  ASSERT_EQ(a.shape(), b.shape()) << what;
  double scale = 1e-6, worst = 0;
  for (int64_t i = 0; i < b.numel(); ++i) scale = std::max(scale, std::fabs(static_cast<double>(b[i])));
  for (int64_t i = 0; i < a.numel(); ++i) worst = std::max(worst, std::fabs(static_cast<double>(a[i]) - b[i]));
  EXPECT_LE(worst, 1e-5 * scale) << what;
}

// `steps` training steps of the two-layer model through 3 workers, every expert on 2 of them;
// with `kill`, worker 1 is killed at that point of step 2.
TrainRun train(int steps, std::optional<Point> kill) {
  const Config cfg = two_layer_model();
  const TensorMap weights = init_model_weights(cfg.model, 5);
  LocalCluster cluster(3, 2);
  ClusterClient client(cluster.coordinator->endpoint(), "trainer");
  client.load_model(cfg, weights);
  MoeModel model(cfg, weights, client);
  TrainRun run;
  auto at = [&](int step, Point p) {
    if (kill && *kill == p && step == 2) cluster.workers[1].kill();
  };
  for (int step = 0; step < steps; ++step) {
    RandomStream rng(100 + static_cast<uint64_t>(step), "failover");
    const Tensor x = random_tokens(48, cfg.model.hidden_size, rng), g = random_tokens(48, cfg.model.hidden_size, rng);
    at(step, Point::before_forward);
    const Tensor h = model.forward(x);
    run.losses.push_back(dot(h, g) + model.aux_loss());
    run.expert_rows.emplace_back();
    for (int l = 0; l < cfg.model.layers; ++l)
      for (const StageStats& st : model.layer(l).stats())
        run.expert_rows.back().insert(run.expert_rows.back().end(), st.expert_rows.begin(), st.expert_rows.end());
    at(step, Point::before_backward);
    model.backward(g);
    at(step, Point::before_step);
    std::thread killer;
    if (kill && *kill == Point::during_step && step == 2) {  // stopped: the survivors wait in the reduction
      ::kill(cluster.workers[1].pid(), SIGSTOP);
      killer = std::thread([&] {
        std::this_thread::sleep_for(300ms);
        cluster.workers[1].kill();
      });
    }
    model.step(testing::trajectory_adamw(1e-2));
    if (killer.joinable()) killer.join();
  }
  run.workers_lost = client.workers_lost();
  for (int w = 0; w < 3; ++w)
    if (!kill || w != 1) run.replicas[w] = client.fetch_replica_weights(w);
  return run;
}

class TrainingFailover : public ::testing::TestWithParam<Point> {};

// Through the failover step and the next two. Beyond that an undisturbed run is no reference:
// top-k routing is discontinuous, and the rounding of a sum taken in another order (a lost
// worker's rows summed on a survivor) eventually flips a near tie (measured here: from the
// third step after the kill, the rows per expert differ and the losses part).
TEST_P(TrainingFailover, StepCompletesOnSurvivorsAndLossesMatchAnUndisturbedRun) {
  const int steps = 4;
  static const TrainRun reference = train(steps, std::nullopt);
  ASSERT_EQ(reference.workers_lost, 0u);
  const TrainRun killed = train(steps, GetParam());
  EXPECT_EQ(killed.workers_lost, 1u);
  ASSERT_EQ(killed.losses.size(), reference.losses.size());
  for (size_t s = 0; s < killed.losses.size(); ++s) {
    ASSERT_EQ(killed.expert_rows[s], reference.expert_rows[s]) << "step " << s << ": the routing differs";
    const double scale = std::max(1.0, std::fabs(reference.losses[s]));
    EXPECT_LE(std::fabs(killed.losses[s] - reference.losses[s]), 1e-5 * scale)
        << "step " << s << ": " << killed.losses[s] << " vs " << reference.losses[s] << " undisturbed";
  }
  // The survivors' experts against the undisturbed run's, and the experts that worker 1 shared
  // with each: bit-identical replicas on workers 0 and 2.
  TensorMap undisturbed;  // every expert, from whichever worker held it (replicas are identical)
  for (const auto& [w, held] : reference.replicas) undisturbed.insert(held.begin(), held.end());
  for (int w : {0, 2})
    for (const auto& [name, t] : killed.replicas.at(w)) {  // recovery may have copied more here
      const Tensor& r = undisturbed.at(name);
      double worst = 0;
      for (int64_t i = 0; i < t.numel(); ++i) worst = std::max(worst, std::fabs(double(t[i]) - r[i]));
      EXPECT_LE(worst, 1e-6) << "worker " << w << " " << name << " after the run";
    }
  const TensorMap& a = killed.replicas.at(0);
  const TensorMap& b = killed.replicas.at(2);
  int shared = 0;
  for (const auto& [name, t] : a) {
    auto it = b.find(name);
    if (it == b.end()) continue;
    ++shared;
    EXPECT_EQ(t.values(), it->second.values()) << name << " differs between the survivors";
  }
  EXPECT_GT(shared, 0);
}

INSTANTIATE_TEST_SUITE_P(KillWorker1, TrainingFailover,
                         ::testing::Values(Point::before_forward, Point::before_backward, Point::before_step,
                                           Point::during_step),
                         [](const ::testing::TestParamInfo<Point>& p) { return name_of(p.param); });

// Recovery: the coordinator drops the lost worker from the placement and copies each replica it
// held (weights and AdamW state) from a survivor to a live worker with room, at a step boundary
// of the running job, as a new epoch; the job goes on with every expert at two replicas again.
TEST(Recovery, LostReplicasAreCopiedToLiveWorkersWhileTrainingGoesOn) {
  const Config cfg = two_layer_model();
  const TensorMap weights = init_model_weights(cfg.model, 5);
  LocalCluster cluster(4, 2);
  ClusterClient client(cluster.coordinator->endpoint(), "trainer");
  client.load_model(cfg, weights);
  MoeModel model(cfg, weights, client);
  const Placement before = client.placement();
  std::optional<RebalanceInfo> recovery;
  int step = 0;
  std::chrono::steady_clock::time_point killed_at;
  for (; step < 40 && !recovery; ++step) {
    if (step == 2) {
      cluster.workers[1].kill();
      killed_at = std::chrono::steady_clock::now();
    }
    train_step(model, 200 + static_cast<uint64_t>(step), "recovery");
    for (const RebalanceInfo& r : query_cluster_status(cluster.coordinator->endpoint()).rebalances)
      if (r.source == "recovery" && r.state == "committed") recovery = r;
  }
  ASSERT_TRUE(recovery) << "no recovery committed within " << step << " steps";
  const double seen = std::chrono::duration<double>(std::chrono::steady_clock::now() - killed_at).count();
  std::printf("[ info ] recovery: %u replicas copied (%llu bytes) at step %llu, committed %.3f s after the loss was "
              "detected; seen committed %.2f s after the kill\n",
              recovery->moved_replicas, static_cast<unsigned long long>(recovery->moved_bytes),
              static_cast<unsigned long long>(recovery->at_step), recovery->since_loss_seconds, seen);
  EXPECT_GT(recovery->since_loss_seconds, 0.0);
  const ClusterStatus status = query_cluster_status(cluster.coordinator->endpoint());
  EXPECT_TRUE(status.workers.at(1).fenced);
  EXPECT_EQ(client.placement().epoch, status.placement_epoch);  // the client follows the new epoch
  size_t copied = 0;
  for (const auto& [key, workers] : status.placement.replicas) {
    EXPECT_EQ(workers.size(), 2u) << key.to_string();
    EXPECT_EQ(std::count(workers.begin(), workers.end(), 1), 0) << key.to_string() << " still placed on the lost worker";
    copied += std::count(before.workers_for(key).begin(), before.workers_for(key).end(), 1);
  }
  EXPECT_EQ(recovery->moved_replicas, copied);
  // One more step on the new epoch, then every expert's replicas are bit-identical.
  train_step(model, 999, "recovery");
  std::map<int, TensorMap> held;
  for (int w : {0, 2, 3}) held[w] = client.fetch_replica_weights(w);
  for (const auto& [key, workers] : status.placement.replicas) {
    const std::string name = layer_prefix(cfg.model, key.layer) + "stages." + std::to_string(key.stage) + ".experts." +
                             std::to_string(key.expert) + ".up_proj.weight";
    EXPECT_EQ(held.at(workers[0]).at(name).values(), held.at(workers[1]).at(name).values())
        << name << " differs between workers " << workers[0] << " and " << workers[1];
  }
}


ClusterConfig restartable_cluster(const std::string& state_file) {
  ClusterConfig c = test_cluster_config(3, 2);
  c.coordinator = "127.0.0.1:" + std::to_string(free_port());
  c.state_file = state_file;
  return c;
}

// Coordinator restart: the data plane goes on while the coordinator is away, and one restarted on
// the same port from cluster.state_file resumes the cluster (membership, placement, model, client
// ids): the run's losses equal an undisturbed run's bit for bit and a new client attaches.
TEST(CoordinatorRestart, TrainingGoesOnAndARestartedCoordinatorResumesFromItsStateFile) {
  const int steps = 6;
  const TrainRun reference = train(steps, std::nullopt);
  const std::string state = ::testing::TempDir() + "/coordinator-restart.state";
  std::filesystem::remove(state);
  const ClusterConfig c = restartable_cluster(state);
  const Config cfg = two_layer_model();
  const TensorMap weights = init_model_weights(cfg.model, 5);
  LocalCluster cluster(c);
  ClusterClient client(cluster.coordinator->endpoint(), "trainer");
  client.load_model(cfg, weights);
  MoeModel model(cfg, weights, client);
  for (int step = 0; step < steps; ++step) {
    if (step == 2) cluster.coordinator.reset();                               // gone for steps 2 and 3
    if (step == 4) cluster.coordinator = std::make_unique<Coordinator>(c);  // back, from its state file
    RandomStream rng(100 + static_cast<uint64_t>(step), "failover");
    const Tensor x = random_tokens(48, cfg.model.hidden_size, rng), g = random_tokens(48, cfg.model.hidden_size, rng);
    const Tensor h = model.forward(x);
    EXPECT_EQ(dot(h, g) + model.aux_loss(), reference.losses[static_cast<size_t>(step)]) << "step " << step;
    model.backward(g);
    model.step(testing::trajectory_adamw(1e-2));
  }
  const ClusterStatus status = query_cluster_status(cluster.coordinator->endpoint());
  EXPECT_TRUE(status.model_loaded);
  ASSERT_EQ(status.workers.size(), 3u);
  for (const WorkerStatus& w : status.workers) EXPECT_TRUE(w.alive) << "worker " << w.id;
  EXPECT_EQ(status.placement.replicas, client.placement().replicas);
  ClusterClient late(cluster.coordinator->endpoint(), "late client");
  late.use_loaded_model(cfg);
  late.set_training(false);
  LayerEngine layer0(cfg.model, weights, late.experts(0), "layers.0.");
  RandomStream rng(7, "late");
  EXPECT_EQ(layer0.forward(random_tokens(16, cfg.model.hidden_size, rng)).dim(0), 16);
}

// A coordinator that does not come back: the job fails within coordinator_timeout_ms with an
// error that names the coordinator, and every worker exits (code 4) saying so.
TEST(CoordinatorRestart, ACoordinatorThatStaysAwayFailsEveryProcessSayingSo) {
  ClusterConfig c = restartable_cluster("");
  c.coordinator_timeout_ms = 1500;
  const Config cfg = two_layer_model();
  const TensorMap weights = init_model_weights(cfg.model, 5);
  LocalCluster cluster(c);
  ClusterClient client(cluster.coordinator->endpoint(), "trainer");
  client.load_model(cfg, weights);
  MoeModel model(cfg, weights, client);
  cluster.coordinator.reset();
  const auto start = std::chrono::steady_clock::now();
  std::string error;
  for (int step = 0; step < 1000 && error.empty(); ++step) {
    RandomStream rng(static_cast<uint64_t>(step), "away");
    try {
      model.forward(random_tokens(16, cfg.model.hidden_size, rng));
      model.backward(random_tokens(16, cfg.model.hidden_size, rng));
      model.step(testing::trajectory_adamw(1e-3));
      std::this_thread::sleep_for(50ms);
    } catch (const Error& e) {
      error = e.what();
      EXPECT_EQ(e.kind(), ErrorKind::transport);
    }
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_NE(error.find("the coordinator " + c.coordinator + " has been unreachable"), std::string::npos) << error;
  EXPECT_GE(secs, 1.5) << "failed before cluster.coordinator_timeout_ms: " << error;
  for (auto& w : cluster.workers) {
    auto code = w.wait(10s);
    ASSERT_TRUE(code.is_ok()) << "a worker did not exit without its coordinator";
    EXPECT_EQ(*code, 4);
  }
}

// A worker stopped (SIGSTOP) for 5 s mid-training: declared dead after dead_after_ms, lost and
// fenced; the job goes on on the survivors (once, the client aborted in a UCX assertion while
// closing the endpoint of a stopped peer); resumed, the worker learns it is fenced and exits 4.
TEST(StoppedWorker, IsFailedOverAndFencedAndExitsWhenResumed) {
  const Config cfg = two_layer_model();
  const TensorMap weights = init_model_weights(cfg.model, 5);
  LocalCluster cluster(3, 2);
  ClusterClient client(cluster.coordinator->endpoint(), "trainer");
  client.load_model(cfg, weights);
  MoeModel model(cfg, weights, client);
  for (int step = 0; step < 6; ++step) {
    if (step == 1) ::kill(cluster.workers[1].pid(), SIGSTOP);
    train_step(model, 400 + static_cast<uint64_t>(step), "stopped");
    if (step == 3) ::kill(cluster.workers[1].pid(), SIGCONT);
  }
  EXPECT_EQ(client.workers_lost(), 1u);
  auto code = cluster.workers[1].wait(10s);
  ASSERT_TRUE(code.is_ok()) << "the resumed worker did not exit";
  EXPECT_EQ(*code, 4);
}

// Data parallelism (group_size 2): two clients with their own tokens step the experts together.
// Worker 1 is killed after client A's backward of step 2 and before client B's, so only B notices
// the loss: at the replica reduction the clients name different lost workers, the workers refuse
// to reduce until they agree, A learns of the loss and re-sends worker 1's share of its backward.
// Every step completes on both ranks, and losses and the survivors' experts equal an undisturbed
// run's within round-off.
struct PairRun {
  std::vector<double> losses;  // per step: rank A's, then rank B's
  TensorMap experts;           // every expert's weights, from a live replica
};

PairRun train_pair(int steps, bool kill) {
  const Config cfg = two_layer_model();
  const TensorMap weights = init_model_weights(cfg.model, 5);
  LocalCluster cluster(3, 2);
  ClusterClient a(cluster.coordinator->endpoint(), "rank A"), b(cluster.coordinator->endpoint(), "rank B");
  a.load_model(cfg, weights);
  b.use_loaded_model(cfg);
  MoeModel model_a(cfg, weights, a), model_b(cfg, weights, b);
  PairRun run;
  for (int step = 0; step < steps; ++step) {
    for (MoeModel* m : {&model_a, &model_b}) {
      if (kill && step == 2 && m == &model_b) cluster.workers[1].kill();
      RandomStream rng(700 + 2 * static_cast<uint64_t>(step) + (m == &model_b), "pair");
      const Tensor x = random_tokens(48, cfg.model.hidden_size, rng), g = random_tokens(48, cfg.model.hidden_size, rng);
      run.losses.push_back(dot(m->forward(x), g) + m->aux_loss());
      m->backward(g);
    }
    std::thread tb([&] { model_b.step(testing::trajectory_adamw(1e-2), 2); });
    model_a.step(testing::trajectory_adamw(1e-2), 2);
    tb.join();
  }
  for (int w = 0; w < 3; ++w)
    if (!kill || w != 1) run.experts.merge(a.fetch_replica_weights(w));
  return run;
}

TEST(GroupFailover, RanksThatSeeALossAtDifferentTimesAgreeBeforeTheyReduce) {
  const int steps = 4;
  const PairRun reference = train_pair(steps, false);
  const PairRun killed = train_pair(steps, true);
  ASSERT_EQ(killed.losses.size(), reference.losses.size());
  for (size_t i = 0; i < killed.losses.size(); ++i) {
    const double scale = std::max(1.0, std::fabs(reference.losses[i]));
    EXPECT_LE(std::fabs(killed.losses[i] - reference.losses[i]), 1e-5 * scale)
        << "step " << i / 2 << " rank " << "AB"[i % 2] << ": " << killed.losses[i] << " vs " << reference.losses[i];
  }
  ASSERT_EQ(killed.experts.size(), reference.experts.size());
  for (const auto& [name, t] : killed.experts) expect_close(t, reference.experts.at(name), name);
}

// Re-admission: worker 1, killed mid-training, is replaced by a new process in its slot (what
// `switchyard up` does with cluster.restart_workers). It arrives either after the recovery has
// restored the replica count on the survivors (it then receives replicas in a "join" rebalance)
// or at once, before the loss was recovered (the recovery copies the lost replicas to it). Either
// way it ends up holding replicas under a fresh data-plane id, every expert has two replicas on
// live processes, the client follows, and after a step on the new epoch replicas are identical.
enum class Arrival { after_recovery, at_once, new_worker };  // new_worker: no --id, the first lost slot
class Replacement : public ::testing::TestWithParam<Arrival> {};

TEST_P(Replacement, ANewProcessInTheLostSlotReceivesReplicasAndTrainingGoesOn) {
  const Config cfg = two_layer_model();
  const TensorMap weights = init_model_weights(cfg.model, 5);
  LocalCluster cluster(3, 2);
  const std::string endpoint = cluster.coordinator->endpoint();
  ClusterClient client(endpoint, "trainer");
  client.load_model(cfg, weights);
  MoeModel model(cfg, weights, client);
  const std::string lost_pid = std::to_string(cluster.workers[1].pid());
  launch::LocalProcess replacement;
  auto replace = [&] {
    if (GetParam() == Arrival::new_worker)
      replacement = launch::LocalProcess::spawn({kBinary, "worker", "--coordinator", endpoint});
    else
      replacement = launch::LocalProcess::spawn(
          {kBinary, "worker", "--coordinator", endpoint, "--id", "1", "--replaces-pid", lost_pid});
  };
  auto step_and_check = [&](int step) {
    EXPECT_TRUE(std::isfinite(train_step(model, 600 + static_cast<uint64_t>(step), "replacement"))) << "step " << step;
  };
  std::optional<RebalanceInfo> filled;  // the rebalance that gave the replacement its replicas
  int step = 0;
  for (; step < 80 && !filled; ++step) {
    if (step == 2) {
      cluster.workers[1].kill();
      if (GetParam() == Arrival::at_once) {  // registered before the next step notices the loss
        replace();
        for (int i = 0; i < 500 && query_cluster_status(endpoint).workers.at(1).restarts == 0; ++i)
          std::this_thread::sleep_for(10ms);
      }
    }
    step_and_check(step);
    const ClusterStatus status = query_cluster_status(endpoint);
    auto latest = std::find_if(status.rebalances.begin(), status.rebalances.end(),
                               [](const RebalanceInfo& r) { return r.state == "committed"; });
    if (latest == status.rebalances.end()) continue;
    if (!replacement.running() && latest->source == "recovery") replace();
    if (status.workers.at(1).restarts == 1 && !status.placement.experts_on(1).empty()) filled = *latest;
  }
  ASSERT_TRUE(filled) << "the replacement received no replicas within " << step << " steps";
  std::printf("[ info ] replacement filled by a '%s' rebalance: %u replicas copied (%llu bytes), %s%.3f s\n",
              filled->source.c_str(), filled->moved_replicas, static_cast<unsigned long long>(filled->moved_bytes),
              filled->source == "recovery" ? "full replica count after the loss in " : "copy ", 
              filled->source == "recovery" ? filled->since_loss_seconds : filled->copy_seconds);
  EXPECT_EQ(filled->source, GetParam() == Arrival::at_once ? "recovery" : "join");
  step_and_check(step++);  // one step on the new epoch: the replicas reduce together
  const ClusterStatus status = query_cluster_status(endpoint);
  const WorkerStatus& w1 = status.workers.at(1);
  EXPECT_TRUE(w1.alive);
  EXPECT_FALSE(w1.fenced);
  EXPECT_FALSE(w1.replacement);
  EXPECT_GE(w1.data_plane_id, 3) << "a replacement's data-plane id is fresh";
  EXPECT_EQ(client.placement().epoch, status.placement_epoch);
  EXPECT_EQ(client.workers_lost(), 1u);
  std::map<int, TensorMap> held;
  for (int w : {0, 1, 2}) held[w] = client.fetch_replica_weights(w);
  EXPECT_FALSE(held.at(1).empty()) << "the replacement holds no replica";
  for (const auto& [key, workers] : status.placement.replicas) {
    ASSERT_EQ(workers.size(), 2u) << key.to_string();
    const std::string name = layer_prefix(cfg.model, key.layer) + "stages." + std::to_string(key.stage) + ".experts." +
                             std::to_string(key.expert) + ".up_proj.weight";
    EXPECT_EQ(held.at(workers[0]).at(name).values(), held.at(workers[1]).at(name).values())
        << name << " differs between workers " << workers[0] << " and " << workers[1];
  }
}

INSTANTIATE_TEST_SUITE_P(Arrivals, Replacement,
                         ::testing::Values(Arrival::after_recovery, Arrival::at_once, Arrival::new_worker),
                         [](const ::testing::TestParamInfo<Arrival>& p) {
                           return p.param == Arrival::at_once      ? std::string("AtOnce")
                                  : p.param == Arrival::new_worker ? std::string("NewWorkerWithoutAnId")
                                                                   : std::string("AfterRecovery");
                         });

// An expert that loses its only replica: the step fails naming the lost worker; a replacement
// registers in its slot (nothing to copy from: the recovery is impossible and the placement keeps
// the slot), and restoring the checkpoint taken before the loss brings the experts back: every
// expert equals its checkpointed weights bit for bit, and training goes on.
TEST(SoleReplica, LostExpertsComeBackFromACheckpointIntoAReplacement) {
  const Config cfg = two_layer_model();
  const TensorMap weights = init_model_weights(cfg.model, 5);
  LocalCluster cluster(2, 1);
  const std::string endpoint = cluster.coordinator->endpoint();
  const std::string dir = ::testing::TempDir() + "/sy_sole_replica_" + std::to_string(::getpid());
  std::filesystem::remove_all(dir);
  TensorMap saved;
  std::string failure;
  {
    ClusterClient client(endpoint, "trainer");
    client.load_model(cfg, weights);
    MoeModel model(cfg, weights, client);
    for (uint64_t step = 0; step < 2; ++step) train_step(model, 800 + step, "sole");
    client.save_checkpoint(dir);
    for (int w : {0, 1}) saved.merge(client.fetch_replica_weights(w));
    cluster.workers[1].kill();
    try {
      train_step(model, 802, "sole");
    } catch (const Error& e) {
      failure = e.what();
    }
  }
  EXPECT_NE(failure.find("worker 1"), std::string::npos) << "the step did not fail naming worker 1: '" << failure << "'";
  const std::string lost_pid = std::to_string(cluster.workers[1].pid());
  launch::LocalProcess replacement = launch::LocalProcess::spawn(
      {kBinary, "worker", "--coordinator", endpoint, "--id", "1", "--replaces-pid", lost_pid});
  for (int i = 0; i < 500 && query_cluster_status(endpoint).workers.at(1).restarts == 0; ++i) std::this_thread::sleep_for(10ms);
  ClusterClient restorer(endpoint, "restorer");
  restorer.use_loaded_model(cfg);
  restorer.restore_checkpoint(dir);
  TensorMap restored;
  for (int w : {0, 1}) restored.merge(restorer.fetch_replica_weights(w));
  ASSERT_EQ(restored.size(), saved.size());
  for (const auto& [name, t] : saved) EXPECT_EQ(restored.at(name).values(), t.values()) << name;
  MoeModel model(cfg, weights, restorer);
  EXPECT_TRUE(std::isfinite(train_step(model, 803, "sole")));
  EXPECT_EQ(query_cluster_status(endpoint).workers.at(1).restarts, 1u);
  std::filesystem::remove_all(dir);
}

// One layer: a worker killed between forward and backward; grad_input (recomputed on the
// survivors) equals the engine in one process.
TEST(LayerFailover, BackwardRecomputesTheLostActivationsOnSurvivors) {
  const Config cfg = load_config(std::string(SY_SOURCE_DIR) + "/configs/models/combined.yaml");
  const TensorMap weights = init_layer_weights(cfg.model, 9);
  LocalCluster cluster(3, 2);
  ClusterClient client(cluster.coordinator->endpoint(), "trainer");
  client.load_model(cfg, weights);
  TensorMap grads = zeros_like(weights), local_grads = zeros_like(weights);
  LayerEngine remote(cfg.model, weights, client.experts(0));
  LocalExperts local_experts(cfg.model, weights, &local_grads);
  LayerEngine local(cfg.model, weights, local_experts);
  RandomStream rng(11, "layer-failover");
  const Tensor attention = random_attention(2, 2, 32, 1.5f, rng);
  const ImportanceInput imp{needs_importance(cfg.model) ? &attention : nullptr, nullptr};
  const Tensor x = random_tokens(64, cfg.model.hidden_size, rng), g = random_tokens(64, cfg.model.hidden_size, rng);
  expect_close(remote.forward(x, imp), local.forward(x, imp), "forward");
  cluster.workers[1].kill();
  expect_close(remote.backward(g, grads), local.backward(g, local_grads), "grad_input");
  for (const auto& [name, t] : local_grads)
    if (grads.count(name) && name.find(".experts.") == std::string::npos) expect_close(grads.at(name), t, name);
}

// Serving: requests keep their answers through a kill (zero failed), equal to the engine in one
// process; a client attaching after the loss serves from the survivors.
TEST(ServingFailover, NoRequestFailsThroughAKillAndANewClientAttachesToSurvivors) {
  const Config cfg = load_config(std::string(SY_SOURCE_DIR) + "/configs/models/combined.yaml");
  const TensorMap weights = init_layer_weights(cfg.model, 9);
  LocalCluster cluster(3, 2);
  ClusterClient client(cluster.coordinator->endpoint(), "server");
  client.load_model(cfg, weights);
  client.set_training(false);
  LayerEngine remote(cfg.model, weights, client.experts(0));
  LocalExperts local_experts(cfg.model, weights, nullptr);
  LayerEngine local(cfg.model, weights, local_experts);
  RandomStream rng(11, "serving-failover");
  const Tensor attention = random_attention(2, 2, 32, 1.5f, rng);
  const ImportanceInput imp{needs_importance(cfg.model) ? &attention : nullptr, nullptr};
  int failed = 0;
  std::vector<double> ms;
  for (int r = 0; r < 100; ++r) {
    if (r == 30) cluster.workers[1].kill();
    const Tensor x = random_tokens(64, cfg.model.hidden_size, rng);
    const auto t0 = std::chrono::steady_clock::now();
    try {
      const Tensor y = remote.forward(x, imp);
      ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
      const Tensor ref = local.forward(x, imp);
      expect_close(y, ref, "request " + std::to_string(r));
    } catch (const Error& e) {
      ++failed;
      ADD_FAILURE() << "request " << r << " failed: " << e.what();
    }
  }
  EXPECT_EQ(failed, 0);
  EXPECT_EQ(client.workers_lost(), 1u);
  std::sort(ms.begin(), ms.end());
  std::printf("[ info ] serving through a kill: %zu requests, %d failed; latency p50 %.2f ms, p99 %.2f ms, max %.2f ms "
              "(the request that failed over)\n",
              ms.size(), failed, ms[ms.size() / 2], ms[ms.size() * 99 / 100], ms.back());
  ClusterClient late(cluster.coordinator->endpoint(), "late server");
  late.use_loaded_model(cfg);
  late.set_training(false);
  LayerEngine late_remote(cfg.model, weights, late.experts(0));
  const Tensor x = random_tokens(64, cfg.model.hidden_size, rng);
  expect_close(late_remote.forward(x, imp), local.forward(x, imp), "a request of the late client");
}

}  // namespace
}  // namespace sy
