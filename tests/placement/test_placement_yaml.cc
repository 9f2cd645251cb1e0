// Placement YAML, the default round-robin placement with replicas, and the memory model.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "switchyard/core/error.h"
#include "switchyard/placement/placement.h"

namespace sy {
namespace {

constexpr int64_t kMiB = int64_t{1} << 20;
constexpr int64_t kPlenty = int64_t{1} << 40;

// 2 layers × (stage 0: 4 swiglu experts f=8, stage 1: 2 gelu experts f=4), d = 16.
ModelConfig model() {
  return load_config_string(
             "model:\n  hidden_size: 16\n  layers: 2\n  layer:\n    stages:\n"
             "      - {experts: 4, ffn_hidden_size: 8}\n"
             "      - {experts: 2, ffn_hidden_size: 4, activation: gelu}\n")
      .model;
}

ModelConfig topk() { return load_config(std::string(SY_SOURCE_DIR) + "/configs/models/topk.yaml").model; }

// Every expert of model() placed: the fixed body (lines 3-8 of the document).
const std::string kHead = "placement:\n  experts:\n";
const std::string kAll =
    "    - {layer: 0, stage: 0, expert: 0, workers: [0, 2]}\n"
    "    - {layer: 0, stage: 0, experts: \"1-3\", workers: [1]}\n"
    "    - {layer: 0, stage: 1, experts: all, workers: [2, 0]}\n"
    "    - {layer: 1, stage: 0, experts: \"0-3\", workers: [0]}\n"
    "    - layer: 1\n"
    "      stage: 1\n"
    "      experts: 0-1\n"
    "      workers: [1]\n";

void expect_error(const std::string& body, const std::string& prefix, const std::string& fragment,
                  int workers = 3, int64_t memory = kPlenty) {
  SCOPED_TRACE(body);
  try {
    parse_placement(body, "p.yaml", model(), workers, memory);
    ADD_FAILURE() << "accepted; expected " << prefix;
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::config);
    const std::string m = e.what();
    EXPECT_EQ(m.rfind(prefix, 0), 0u) << "message: " << m << "\nexpected prefix: " << prefix;
    EXPECT_NE(m.find(fragment), std::string::npos) << "message: " << m << "\nexpected: " << fragment;
  }
}

TEST(PlacementYaml, ReadsSinglesRangesAndAll) {
  const Placement p = parse_placement(kHead + kAll, "p.yaml", model(), 3, kPlenty);
  EXPECT_EQ(p.replicas.size(), 12u);
  EXPECT_EQ(p.workers_for({0, 0, 0}), (std::vector<int>{0, 2}));
  EXPECT_EQ(p.workers_for({0, 0, 3}), (std::vector<int>{1}));
  EXPECT_EQ(p.workers_for({0, 1, 1}), (std::vector<int>{2, 0}));
  EXPECT_EQ(p.workers_for({1, 0, 2}), (std::vector<int>{0}));
  EXPECT_EQ(p.workers_for({1, 1, 0}), (std::vector<int>{1}));
  EXPECT_EQ(p.experts_on(2), (std::vector<ExpertKey>{{0, 0, 0}, {0, 1, 0}, {0, 1, 1}}));
  EXPECT_NO_THROW(p.validate(model(), 3));
}

TEST(PlacementYaml, RoundTripsThroughYaml) {
  Placement p = default_placement(model(), 3, 2);
  p.epoch = 7;
  const std::string yaml = placement_to_yaml(p);
  const Placement again = parse_placement(yaml, "round.yaml", model(), 3, kPlenty);
  EXPECT_EQ(again.replicas, p.replicas) << yaml;
  EXPECT_TRUE(again.shares.empty());
  p.shares[{0, 0, 0}] = {0.1, 0.9};  // shares round-trip exactly (17 significant digits)
  p.shares[{1, 1, 1}] = {1.0 / 3.0, 2.0 / 3.0};
  const Placement with_shares = parse_placement(placement_to_yaml(p), "round.yaml", model(), 3, kPlenty);
  EXPECT_EQ(with_shares.shares, p.shares);
  EXPECT_EQ(with_shares.shares_of({0, 0, 1}), (std::vector<double>{0.5, 0.5}));  // none planned: even
}

TEST(PlacementYaml, SharesAreOnePerWorkerNonNegativeSummingToOne) {
  const std::string rest = kAll.substr(kAll.find('\n') + 1);
  const Placement p = parse_placement(kHead + "    - {layer: 0, stage: 0, expert: 0, workers: [0, 2], shares: [0.75, 0.25]}\n" + rest,
                                      "p.yaml", model(), 3, kPlenty);
  EXPECT_EQ(p.shares_of({0, 0, 0}), (std::vector<double>{0.75, 0.25}));
  const auto with = [&](const std::string& shares) {
    return kHead + "    - {layer: 0, stage: 0, expert: 0, workers: [0, 2], shares: " + shares + "}\n" + rest;
  };
  expect_error(with("[1.0]"), "p.yaml:3: placement.experts[0].shares: ", "expected a list of 2 numbers (one per worker)");
  expect_error(with("[0.5, 0.6]"), "p.yaml:3: placement.experts[0].shares: ", "the shares sum to 1.1");
  expect_error(with("[1.5, -0.5]"), "p.yaml:3: placement.experts[0].shares: ", "expected a number >= 0, got \"-0.5\"");
  expect_error(with("[half, 0.5]"), "p.yaml:3: placement.experts[0].shares: ", "expected a number >= 0, got \"half\"");
  expect_error(with("[.nan, 1]"), "p.yaml:3: placement.experts[0].shares: ", "expected a number >= 0");
  Placement bad = p;
  bad.shares[{0, 0, 1}] = {0.5, 0.5};  // expert 1 has one replica
  EXPECT_THROW(bad.validate(model(), 3), Error);
}

TEST(PlacementYaml, ErrorsNameFileLineAndEntry) {
  expect_error(kHead + kAll + "    - {layer: 0, stage: 0, expert: 2, workers: [0]}\n",
               "p.yaml:11: placement.experts[5]: ",
               "layers.0.stages.0.experts.2 is already placed by placement.experts[1] (line 4)");
  expect_error(kHead + "    - {layer: 0, stage: 0, expert: 0, worker: [0]}\n", "p.yaml:3: placement.experts[0].worker: ",
               "unknown key; expected one of: layer, stage, expert, experts, workers");
  expect_error("placement:\n  experts: []\n  epoch: 3\n", "p.yaml:3: placement.epoch: ", "unknown key");
  expect_error("placements: {}\n", "p.yaml:1: (top level).placements: ", "unknown key; expected one of: placement");
  expect_error(kHead + "    - {layer: 0, stage: 0, expert: 0, workers: [0, 3]}\n", "p.yaml:3: placement.experts[0].workers: ",
               "worker 3 does not exist (workers 0..2)");
  expect_error(kHead + "    - {layer: 0, stage: 0, expert: 0, workers: [1, 1]}\n", "p.yaml:3: placement.experts[0].workers: ",
               "worker 1 listed twice");
  expect_error(kHead + "    - {layer: 0, stage: 0, expert: 0, workers: []}\n", "p.yaml:3: placement.experts[0].workers: ",
               "got an empty list");
  expect_error(kHead + "    - {layer: 2, stage: 0, expert: 0, workers: [0]}\n", "p.yaml:3: placement.experts[0].layer: ",
               "2 does not exist; the model has layers 0..1");
  expect_error(kHead + "    - {layer: 0, stage: 2, expert: 0, workers: [0]}\n", "p.yaml:3: placement.experts[0].stage: ",
               "the model has stages 0..1");
  expect_error(kHead + "    - {layer: 0, stage: 1, expert: 2, workers: [0]}\n", "p.yaml:3: placement.experts[0].expert: ",
               "2 does not exist; stage 1 has experts 0..1");
  expect_error(kHead + "    - {layer: 0, stage: 0, experts: \"2-4\", workers: [0]}\n",
               "p.yaml:3: placement.experts[0].experts: ", "range \"2-4\" goes past the model's experts");
  expect_error(kHead + "    - {layer: 0, stage: 0, experts: \"3-1\", workers: [0]}\n",
               "p.yaml:3: placement.experts[0].experts: ", "is empty");
  expect_error(kHead + "    - {layer: 0, stage: 0, experts: some, workers: [0]}\n",
               "p.yaml:3: placement.experts[0].experts: ", "expected an index, \"a-b\" or all");
  expect_error(kHead + "    - {layer: 0, stage: 0, expert: 0, experts: \"1-2\", workers: [0]}\n",
               "p.yaml:3: placement.experts[0].experts: ", "not both");
  expect_error(kHead + "    - {layer: 0, stage: 0, workers: [0]}\n", "p.yaml:3: placement.experts[0]: ",
               "needs `expert: i`");
  expect_error(kHead + "    - {stage: 0, expert: 0, workers: [0]}\n", "p.yaml:3: placement.experts[0].layer: ",
               "required setting is missing");
  expect_error(kHead + "    - {layer: \"0\", stage: 0, expert: 0, workers: [0]}\n",
               "p.yaml:3: placement.experts[0].layer: ", "expected an integer");
  expect_error(kHead + "    - {layer: 0, stage: 0, expert: 0, workers: 1}\n", "p.yaml:3: placement.experts[0].workers: ",
               "expected a non-empty list of worker ids");
  expect_error(kHead + "    - [0, 0, 0]\n", "p.yaml:3: placement.experts[0]: ", "expected a map");
  expect_error(kHead + "    - {layer: 0, stage: 0, expert: 0, workers: [0], layer: 1}\n",
               "p.yaml:3: placement.experts[0].layer: ", "duplicate key");
  // Missing experts: the first unplaced one is named.
  expect_error(kHead + "    - {layer: 0, stage: 0, experts: all, workers: [0]}\n", "p.yaml:2: placement.experts: ",
               "expert layers.0.stages.1.experts.0 (layer 0, stage 1, expert 0) is not placed");
  expect_error("", "p.yaml:1: (top level): ", "expected a map with a `placement:` key");
  expect_error("placement:\n", "p.yaml:1: placement: ", "expected a map");
  expect_error("placement: {experts: {a: 1}}\n", "p.yaml:1: placement.experts: ", "expected a non-empty list");
  expect_error("placement: {experts: [}\n", "p.yaml:1: ", "YAML syntax error");
  // Found by fuzz_placement_yaml (issue 12): a stray "," hung yaml-cpp's LoadAll.
  expect_error(",", "p.yaml:1: YAML syntax error: ", "unexpected ','");
  expect_error(kHead + "    - {layer: 0, stage: 0, experts: all, workers: [0]}\n---\n,\n", "p.yaml:5: YAML syntax error: ",
               "unexpected ','");
  expect_error(kHead + "---\n", "p.yaml:3: (top level): ", "expected one YAML document, found 2");
}

TEST(PlacementYaml, MemoryMustFitEveryWorker) {
  // Replica bytes: stage 0 (swiglu): 4 × 3·8·16·4 = 6144; stage 1 (gelu): 4 × 2·4·16·4 = 2048.
  const ModelConfig m = model();
  EXPECT_EQ(expert_weight_bytes(m, 0), 3 * 8 * 16 * 4);
  EXPECT_EQ(expert_weight_bytes(m, 1), 2 * 4 * 16 * 4);
  EXPECT_EQ(expert_replica_bytes(m, 0), 6144);
  EXPECT_EQ(expert_replica_bytes(m, 1), 2048);
  const Placement p = parse_placement(kHead + kAll, "p.yaml", m, 3, kPlenty);
  // Worker 0: (0,0,0) 6144 + (0,1,*) 2×2048 + (1,0,*) 4×6144 = 34816.
  // Worker 1: (0,0,1-3) 3×6144 + (1,1,*) 2×2048 = 22528. Worker 2: 6144 + 2×2048 = 10240.
  EXPECT_EQ(worker_replica_bytes(p, m, 3), (std::vector<int64_t>{34816, 22528, 10240}));
  EXPECT_NO_THROW(parse_placement(kHead + kAll, "p.yaml", m, 3, 34816));
  expect_error(kHead + kAll, "p.yaml: worker 0 needs 34816 bytes (0.0 MiB) for 7 expert replicas",
               "over its budget of 34815 bytes", 3, 34815);
}

TEST(PlacementDefault, RoundRobinWithReplicas) {
  const ModelConfig m = model();
  const Placement one = default_placement(m, 5, 1);
  EXPECT_EQ(one.replicas, Placement::round_robin(m, 5).replicas);
  const Placement p = default_placement(m, 5, 3);
  // Expert numbers: layer 0 stage 0 → 0..3, stage 1 → 4..5, layer 1 stage 0 → 6..9, stage 1 → 10..11.
  EXPECT_EQ(p.workers_for({0, 0, 0}), (std::vector<int>{0, 1, 2}));
  EXPECT_EQ(p.workers_for({0, 0, 3}), (std::vector<int>{3, 4, 0}));
  EXPECT_EQ(p.workers_for({0, 1, 1}), (std::vector<int>{0, 1, 2}));
  EXPECT_EQ(p.workers_for({1, 1, 1}), (std::vector<int>{1, 2, 3}));
  EXPECT_NO_THROW(p.validate(m, 5));
  const Placement all = default_placement(m, 3, 3);
  for (const auto& [key, list] : all.replicas) EXPECT_EQ(list.size(), 3u) << key.to_string();
  EXPECT_THROW(default_placement(m, 3, 4), Error);
  EXPECT_THROW(default_placement(m, 3, 0), Error);
  EXPECT_THROW(default_placement(m, 0, 1), Error);
}

TEST(PlacementCluster, FileOrDefaultWithMemoryCheck) {
  ClusterConfig c;
  c.workers = 3;
  c.replicas = 2;
  const Placement p = cluster_placement(topk(), c);
  EXPECT_EQ(p.replicas, default_placement(topk(), 3, 2).replicas);

  // topk: 8 swiglu experts, d=64, f=128: 96 KiB weights, 384 KiB per replica; 2×8 replicas on
  // 3 workers: workers 0, 1, 2 hold 5, 6, 5 (expert n on n, n+1 mod 3), worker 1 needs 2.25 MiB.
  c.worker_memory_mb = 2;
  try {
    cluster_placement(topk(), c);
    ADD_FAILURE() << "accepted";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()),
              "default placement (round-robin, 2 replicas per expert): worker 1 needs 2359296 bytes (2.2 MiB) for 6 "
              "expert replicas (4 x weight bytes each: weights, gradients, AdamW moments), over its budget of "
              "2097152 bytes (2.0 MiB, cluster.worker_memory_mb)");
  }

  c.worker_memory_mb = 4096;
  c.placement = std::string(SY_SOURCE_DIR) + "/configs/placement-example.yaml";
  const Placement example = cluster_placement(topk(), c);
  EXPECT_EQ(example.workers_for({0, 0, 0}), (std::vector<int>{0, 1, 2}));
  EXPECT_EQ(example.workers_for({0, 0, 7}), (std::vector<int>{1, 2}));
  // Replicated experts, and every worker holds some.
  int replicated = 0;
  for (const auto& [key, list] : example.replicas) replicated += list.size() > 1;
  EXPECT_GE(replicated, 4);
  for (int w = 0; w < 3; ++w) EXPECT_FALSE(example.experts_on(w).empty()) << w;
}

TEST(PlacementCluster, MissingFileNamesIt) {
  ClusterConfig c;
  c.placement = "/nonexistent/switchyard/placement.yaml";
  try {
    cluster_placement(topk(), c);
    ADD_FAILURE() << "accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::config);
    EXPECT_EQ(std::string(e.what()).rfind(c.placement + ": cannot open placement file", 0), 0u) << e.what();
  }
}

TEST(PlacementYaml, LoadPlacementNamesTheFileInErrors) {
  const std::string path = testing::TempDir() + "switchyard_placement_test.yaml";
  {
    std::ofstream out(path);
    out << kHead << "    - {layer: 0, stage: 0, expert: 9, workers: [0]}\n";
  }
  try {
    load_placement(path, model(), 3, kPlenty);
    ADD_FAILURE() << "accepted";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()).rfind(path + ":3: placement.experts[0].expert: ", 0), 0u) << e.what();
  }
  std::remove(path.c_str());
}

}  // namespace
}  // namespace sy
