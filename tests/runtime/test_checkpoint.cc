// Cluster checkpoints (issue 12): cluster.checkpoint_every_steps writes step-{S}/ checkpoints
// into cluster.checkpoint_dir during training, atomically (workers write step-{S}.tmp/, the
// client renames it and moves `latest`), keeping the newest checkpoint_keep; restoring `latest`
// into a fresh cluster and training on gives the uninterrupted run's weights and losses bit for
// bit. Restore refuses another placement (saying how to fix it), names missing files, and
// follows or rejects `latest`. Clusters run in this process (transport "inprocess"). The
// config error for checkpoint_every_steps without checkpoint_dir: tests/core/test_config.cc.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>

#include "switchyard/cli/toy_task.h"
#include "switchyard/client/cluster_client.h"
#include "switchyard/core/error.h"
#include "switchyard/engine/layer_weights.h"
#include "switchyard/engine/moe_model.h"
#include "../support/local_cluster.h"
#include "../support/test_model.h"

namespace sy {
namespace {

namespace fs = std::filesystem;

std::string fresh_dir(const std::string& name) {
  const std::string dir = ::testing::TempDir() + "/sy_checkpoint_" + std::to_string(::getpid()) + "_" + name;
  fs::remove_all(dir);
  return dir;
}

std::string text_of(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// What `dir` holds, sorted: "latest", "step-2", "step-4.tmp", ...
std::vector<std::string> listing(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

ClusterConfig checkpointing_cluster(const std::string& dir, int replicas = 2) {
  ClusterConfig c = test_cluster_config(3, replicas, "inprocess");
  c.checkpoint_every_steps = 2;
  c.checkpoint_dir = dir;
  return c;
}

// Training step `step` (1-based): its own batch, forward, backward, the experts' AdamW on the
// workers (the dense parameters are the trainer's to checkpoint; they stay fixed here).
double train_step(MoeModel& model, ClusterClient& client, uint64_t step) {
  const int64_t d = model.config().model.hidden_size;
  RandomStream rng(300 + step, "checkpoint");
  const Tensor x = random_tokens(48, d, rng), g = random_tokens(48, d, rng);
  const Tensor h = model.forward(x);
  const double loss = dot(h, g) + model.aux_loss();
  model.backward(g);
  client.step(AdamWConfig{.lr = 1e-2}, 1, step);
  return loss;
}

std::map<int, TensorMap> all_replicas(ClusterClient& client) {
  std::map<int, TensorMap> out;
  for (int w = 0; w < client.workers(); ++w) out[w] = client.fetch_replica_weights(w);
  return out;
}

void expect_same_replicas(const std::map<int, TensorMap>& a, const std::map<int, TensorMap>& b,
                          const std::string& what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  for (const auto& [w, tensors] : a) {
    const TensorMap& other = b.at(w);
    ASSERT_EQ(tensors.size(), other.size()) << what << ": worker " << w;
    ASSERT_FALSE(tensors.empty()) << what << ": worker " << w << " holds nothing";
    for (const auto& [name, t] : tensors) {
      ASSERT_TRUE(other.count(name)) << what << ": worker " << w << " lacks " << name;
      EXPECT_EQ(t.values(), other.at(name).values()) << what << ": worker " << w << ", " << name;  // bit for bit
    }
  }
}

void expect_complete(const std::string& step_dir) {
  for (const char* f : {"manifest.yaml", "placement.yaml", "model.yaml", "worker-0.safetensors", "worker-1.safetensors",
                        "worker-2.safetensors"}) {
    EXPECT_TRUE(fs::exists(step_dir + "/" + f)) << step_dir << " lacks " << f;
  }
}

TEST(ClusterCheckpoint, EveryStepsWritesAtomicallyKeepsTwoAndRestoreContinuesTheRunBitForBit) {
  const Config cfg = two_layer_model();
  const TensorMap weights = init_model_weights(cfg.model, 5);
  const std::string ref_dir = fresh_dir("ref"), resumed_dir = fresh_dir("resumed");
  std::map<uint64_t, double> losses;
  std::map<int, TensorMap> at_step4, at_step6;
  {  // the uninterrupted run, 6 steps
    LocalCluster cluster(checkpointing_cluster(ref_dir));
    ClusterClient client(cluster.coordinator->endpoint(), "trainer");
    client.load_model(cfg, weights);
    MoeModel model(cfg, weights, client);
    for (uint64_t step = 1; step <= 6; ++step) {
      losses[step] = train_step(model, client, step);
      if (step == 1) {
        EXPECT_FALSE(fs::exists(ref_dir + "/latest")) << "a checkpoint after step 1 of every 2";
      }
      if (step == 2) {
        EXPECT_EQ(listing(ref_dir), (std::vector<std::string>{"latest", "step-2"}));
        EXPECT_EQ(text_of(ref_dir + "/latest"), "step-2\n");
        expect_complete(ref_dir + "/step-2");
      }
      if (step == 4) {
        EXPECT_EQ(listing(ref_dir), (std::vector<std::string>{"latest", "step-2", "step-4"}));
        EXPECT_EQ(text_of(ref_dir + "/latest"), "step-4\n");
        expect_complete(ref_dir + "/step-4");
        const std::string manifest = text_of(ref_dir + "/step-4/manifest.yaml");
        EXPECT_NE(manifest.find("\nstep: 4\n"), std::string::npos) << manifest;
        EXPECT_NE(manifest.find("\nplacement_epoch: 1\n"), std::string::npos) << manifest;
        EXPECT_NE(manifest.find("\nworkers: [0, 1, 2]"), std::string::npos) << manifest;
        at_step4 = all_replicas(client);
        fs::copy(ref_dir, resumed_dir, fs::copy_options::recursive);  // the job "crashes" here
      }
    }
    EXPECT_EQ(listing(ref_dir), (std::vector<std::string>{"latest", "step-4", "step-6"})) << "keeps the last 2";
    EXPECT_EQ(text_of(ref_dir + "/latest"), "step-6\n");
    at_step6 = all_replicas(client);
  }
  // A crash while step 6 was being written left a partial temporary behind.
  fs::create_directories(resumed_dir + "/step-6.tmp");
  std::ofstream(resumed_dir + "/step-6.tmp/worker-0.safetensors") << "half a file";

  LocalCluster cluster(checkpointing_cluster(resumed_dir));
  ClusterClient client(cluster.coordinator->endpoint(), "resumed trainer");
  client.load_model(cfg, init_model_weights(cfg.model, 99));               // other experts: the restore replaces them
  const CheckpointInfo restored = client.restore_checkpoint(resumed_dir);  // follows `latest`
  EXPECT_EQ(restored.dir, resumed_dir + "/step-4");
  EXPECT_EQ(restored.step, 4u);
  expect_same_replicas(all_replicas(client), at_step4, "restored from step 4");
  MoeModel model(cfg, weights, client);  // the trainer's own dense parameters, as at step 4
  for (uint64_t step = restored.step + 1; step <= 6; ++step) {
    EXPECT_EQ(train_step(model, client, step), losses[step]) << "step " << step << " after the restore";
  }
  expect_same_replicas(all_replicas(client), at_step6, "step 6 after the restore");
  EXPECT_EQ(listing(resumed_dir), (std::vector<std::string>{"latest", "step-4", "step-6"}));
  EXPECT_EQ(text_of(resumed_dir + "/latest"), "step-6\n");
  expect_complete(resumed_dir + "/step-6");
  fs::remove_all(ref_dir);
  fs::remove_all(resumed_dir);
}

// A checkpoint saved by hand into a directory that does not exist yet (it is created); restore
// refuses a cluster with another placement, saying how to get the checkpoint's, and a cluster
// started as the error says restores it; a missing worker file and a bad `latest` are input
// errors naming the file.
TEST(ClusterCheckpoint, RestoreRefusesAnotherPlacementAndNamesWhatIsMissing) {
  const Config cfg = two_layer_model();
  const TensorMap weights = init_model_weights(cfg.model, 5);
  const std::string root = fresh_dir("errors"), dir = root + "/not/yet/there";
  std::map<int, TensorMap> saved;
  {
    LocalCluster cluster(test_cluster_config(3, 2, "inprocess"));
    ClusterClient client(cluster.coordinator->endpoint(), "trainer");
    client.load_model(cfg, weights);
    MoeModel model(cfg, weights, client);
    train_step(model, client, 1);
    const CheckpointInfo info = client.save_checkpoint(dir);
    EXPECT_EQ(info.step, 1u);
    expect_complete(dir);
    saved = all_replicas(client);
    train_step(model, client, 2);
    EXPECT_EQ(client.restore_checkpoint(dir).step, 1u);  // a checkpoint directory itself
    expect_same_replicas(all_replicas(client), saved, "restored in the same cluster");
  }
  auto expect_input_error = [](ClusterClient& client, const std::string& from, const std::vector<std::string>& parts) {
    try {
      client.restore_checkpoint(from);
      ADD_FAILURE() << "restored from " << from;
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::input) << e.what();
      EXPECT_EQ(e.exit_code(), 3) << e.what();
      for (const std::string& p : parts) {
        EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << p << " in: " << e.what();
      }
    }
  };
  {  // one replica per expert: another placement
    LocalCluster cluster(test_cluster_config(3, 1, "inprocess"));
    ClusterClient client(cluster.coordinator->endpoint(), "restorer");
    client.load_model(cfg, weights);
    expect_input_error(client, dir,
                       {"another placement", "is on workers [0, 1] in the checkpoint, [0] in the cluster",
                        "cluster.placement: " + dir + "/placement.yaml", "switchyard rebalance"});
  }
  {  // started as the error says
    ClusterConfig c = test_cluster_config(3, 1, "inprocess");
    c.placement = dir + "/placement.yaml";
    LocalCluster cluster(c);
    ClusterClient client(cluster.coordinator->endpoint(), "restorer");
    client.load_model(cfg, init_model_weights(cfg.model, 99));
    EXPECT_EQ(client.restore_checkpoint(dir).step, 1u);
    expect_same_replicas(all_replicas(client), saved, "restored in a cluster started with its placement");

    fs::rename(dir + "/worker-1.safetensors", dir + "/moved-away");
    expect_input_error(client, dir, {"worker file '" + dir + "/worker-1.safetensors'", "does not exist"});
    fs::rename(dir + "/moved-away", dir + "/worker-1.safetensors");

    const std::string pointer_dir = root + "/pointer";
    fs::create_directories(pointer_dir);
    std::ofstream(pointer_dir + "/latest") << "step-9\n";
    expect_input_error(client, pointer_dir,
                       {pointer_dir + "/latest' names step-9", "step-9/manifest.yaml does not exist"});
    std::ofstream(pointer_dir + "/latest") << "../elsewhere\n";
    expect_input_error(client, pointer_dir, {pointer_dir + "/latest", "not the name of a checkpoint"});
    fs::remove(pointer_dir + "/latest");
    expect_input_error(client, pointer_dir, {"'" + pointer_dir + "' holds no checkpoint"});

    std::ofstream(dir + "/manifest.yaml") << "format: switchyard.checkpoint\nversion: 1\nstep: -1\n";
    expect_input_error(client, dir, {dir + "/manifest.yaml:3: step: expected a non-negative integer"});
  }
  fs::remove_all(root);
}

}  // namespace
}  // namespace sy
