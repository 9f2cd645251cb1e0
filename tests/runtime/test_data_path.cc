// The client's data path (issue 13): each worker's rows in requests of cluster.chunk_rows rows,
// all in flight at once; answers received straight into the output rows; the copy counters.
// Every chunk size gives the single process's numbers.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>

#include "switchyard/cli/toy_task.h"
#include "switchyard/client/cluster_client.h"
#include "switchyard/core/trace.h"
#include "switchyard/engine/layer_engine.h"
#include "switchyard/engine/layer_weights.h"
#include "switchyard/engine/moe_model.h"
#include <nlohmann/json.hpp>
#include "../support/close.h"
#include "../support/test_model.h"
#include "../support/local_cluster.h"

namespace sy {
namespace {

const std::string kModels = std::string(SY_SOURCE_DIR) + "/configs/models/";


struct ClusterRun {
  Tensor y, dx, y_serving;
  TensorMap expert_grads;
  ClusterClient::CopyCounts copies, after_forward;
};

// One training forward + backward of `model` through a cluster of `workers` (one replica each)
// with cluster.chunk_rows `chunk_rows`.
ClusterRun through_cluster(const Config& cfg, const TensorMap& weights, const Tensor& x, const Tensor& g, int workers,
                    int chunk_rows) {
  ClusterConfig cc = test_cluster_config(workers, 1);
  cc.chunk_rows = chunk_rows;
  LocalCluster cluster(cc);
  ClusterClient client(cluster.coordinator->endpoint(), "data path client");
  client.load_model(cfg, weights);
  TensorMap grads = zeros_like(weights);
  LayerEngine engine(cfg.model, weights, client.experts(0));
  ClusterRun r;
  r.y = engine.forward(x);
  r.after_forward = client.copies();
  r.dx = engine.backward(g, grads);
  r.copies = client.copies();
  r.expert_grads = client.fetch_expert_grads();
  client.set_training(false);  // serving: an expert's rows are cut every chunk_rows rows
  r.y_serving = engine.forward(x);
  return r;
}

// cartesian.yaml on `tokens` tokens through 3 workers with `chunk_rows`: forward (training and
// serving), input gradients and expert gradients all equal the single process. Returns the run.
ClusterRun expect_single_process_numbers(int64_t tokens, uint64_t seed, int chunk_rows, const std::string& what) {
  const Config cfg = load_config(kModels + "cartesian.yaml");
  const TensorMap weights = init_layer_weights(cfg.model, seed);
  RandomStream rng(seed, "data-path");
  const Tensor x = random_tokens(tokens, cfg.model.hidden_size, rng), g = random_tokens(tokens, cfg.model.hidden_size, rng);
  TensorMap local_grads = zeros_like(weights);
  LocalExperts local(cfg.model, weights, &local_grads);
  LayerEngine reference(cfg.model, weights, local);
  const Tensor y_ref = reference.forward(x), dx_ref = reference.backward(g, local_grads);

  ClusterRun r = through_cluster(cfg, weights, x, g, 3, chunk_rows);
  expect_close(r.y, y_ref, what + " forward");
  expect_close(r.dx, dx_ref, what + " grad_input");
  expect_close(r.y_serving, y_ref, what + " serving forward");
  for (const auto& [name, grad] : r.expert_grads) expect_close(grad, local_grads.at(name), what + " " + name);
  return r;
}

class ChunkRows : public ::testing::TestWithParam<int> {};

// Chunk sizes that split runs in odd places, one row per request, one request per worker and
// more rows than any worker gets (a cartesian model: two stages, each split its own way).
TEST_P(ChunkRows, EveryChunkSizeGivesTheSingleProcessNumbers) {
  const std::string what = "chunk_rows " + std::to_string(GetParam());
  const ClusterRun r = expect_single_process_numbers(96, 7, GetParam(), what);
  EXPECT_EQ(r.copies.rows_received, r.copies.rows_sent) << what;
}

INSTANTIATE_TEST_SUITE_P(DataPath, ChunkRows, ::testing::Values(0, 1, 7, 100000));

// With 640 tokens the cartesian stages' shared experts (hidden 64) are large enough for the
// engine to compute them on its side thread while the routed rows are on the workers
// (layer_engine.cc, kMinOverlapWork = 512 × 64): the numbers are still the single process's.
TEST(DataPath, SharedExpertOverlappedWithTheRoutedRowsGivesTheSingleProcessNumbers) {
  expect_single_process_numbers(640, 8, 256, "640 tokens");
}

// With chunks every answer lands in its output rows and a backward (no replicas: nothing kept
// for failover) sends the output gradients from where they are: the only copy is the forward's
// gather of each token's row into the packed buffer. One request per worker over round-robin
// experts (not contiguous in the layout) copies the answers instead.
TEST(DataPath, ChunkedRequestsCopyOnlyTheForwardGather) {
  const Config cfg = load_config(kModels + "topk.yaml");
  const TensorMap weights = init_layer_weights(cfg.model, 9);
  RandomStream rng(4, "data-path");
  const Tensor x = random_tokens(80, cfg.model.hidden_size, rng), g = random_tokens(80, cfg.model.hidden_size, rng);

  const ClusterRun chunked = through_cluster(cfg, weights, x, g, 2, 16);
  const uint64_t forward_rows = chunked.after_forward.rows_sent;
  ASSERT_GT(forward_rows, 0u);
  EXPECT_EQ(chunked.after_forward.rows_packed, forward_rows);  // the gather
  EXPECT_EQ(chunked.copies.rows_sent, 2 * forward_rows);       // forward + backward
  EXPECT_EQ(chunked.copies.rows_packed, forward_rows) << "backward rows were copied";
  EXPECT_EQ(chunked.copies.rows_unpacked, 0u) << "answers were copied";

  const ClusterRun whole = through_cluster(cfg, weights, x, g, 2, 0);
  EXPECT_EQ(whole.copies.rows_sent, chunked.copies.rows_sent);
  EXPECT_GT(whole.copies.rows_unpacked, 0u) << "round-robin experts are not contiguous in the layout";
  expect_close(whole.y, chunked.y, "forward, one request per worker vs chunks");
}

// Training steps (AdamW on the workers) with a request per expert and worker: every step equals
// the single process's. Top-1 routing flips a token's expert on a near tie, so the weights must
// stay within rounding of the single process's step after step: a worker's weight gradients
// sum over an expert's rows in one product, as in the single process, whatever the chunk size.
TEST(DataPath, TrainingStepsWithChunksMatchTheSingleProcess) {
  const Config cfg = two_layer_model();
  const TensorMap weights = init_model_weights(cfg.model, 5);
  ClusterConfig cc = test_cluster_config(2, 1);
  cc.chunk_rows = 1;
  LocalCluster cluster(cc);
  ClusterClient client(cluster.coordinator->endpoint(), "data path client");
  client.load_model(cfg, weights);
  MoeModel local(cfg, weights), remote(cfg, weights, client);
  for (int step = 0; step < 4; ++step) {
    RandomStream rng(static_cast<uint64_t>(step), "data-path-steps");
    const Tensor x = random_tokens(48, 16, rng), g = random_tokens(48, 16, rng);
    expect_close(remote.forward(x), local.forward(x), "step " + std::to_string(step) + " forward", 2e-5);
    expect_close(remote.backward(g), local.backward(g), "step " + std::to_string(step) + " grad_input", 2e-5);
    for (const auto& [name, grad] : client.fetch_expert_grads())
      expect_close(grad, local.grads().at(name), "step " + std::to_string(step) + " " + name, 2e-5);
    local.step(AdamWConfig{.lr = 1e-2});
    remote.step(AdamWConfig{.lr = 1e-2});
  }
}

// --trace / SWITCHYARD_TRACE: a training step's timeline from the client and its two workers,
// merged into one file with every part of the data flow on it.
TEST(DataPath, StepTimelinesOfAClientAndItsWorkersMerge) {
  const std::string dir = ::testing::TempDir() + "/sy_trace_" + std::to_string(::getpid());
  std::filesystem::create_directories(dir);
  const std::vector<std::string> files = {dir + "/client.json", dir + "/worker-0.json", dir + "/worker-1.json"};
  const Config cfg = two_layer_model();
  const TensorMap weights = init_model_weights(cfg.model, 5);
  {
    ClusterConfig cc = test_cluster_config(2, 2);  // replicated: the step reduces among replicas
    LocalCluster cluster(cc, {{{"SWITCHYARD_TRACE", files[1]}}, {{"SWITCHYARD_TRACE", files[2]}}});
    trace::start(files[0], "client");
    ClusterClient client(cluster.coordinator->endpoint(), "trace client");
    client.load_model(cfg, weights);
    MoeModel remote(cfg, weights, client);
    train_step(remote, 1, "trace");
    trace::flush();
  }  // the workers exit (SIGTERM) and write their files
  const std::string merged = dir + "/merged.json";
  EXPECT_GT(trace::merge_files(files, merged), 0u);
  std::ifstream in(merged);
  const nlohmann::json doc = nlohmann::json::parse(in);
  std::set<std::string> names, processes;
  for (const auto& e : doc["traceEvents"]) {
    names.insert(e["name"].get<std::string>());
    if (e["name"] == "process_name") processes.insert(e["args"]["name"].get<std::string>());
  }
  for (const char* n : {"route", "pack", "exchange", "combine", "aggregate", "experts backward", "expert forward",
                        "expert backward", "replica reduce", "optimizer"})
    EXPECT_TRUE(names.count(n)) << "no '" << n << "' span";
  EXPECT_EQ(processes.size(), 3u);
  EXPECT_TRUE(processes.count("client"));
}

}  // namespace
}  // namespace sy
