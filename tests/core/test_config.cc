// Tests for the configuration schema (core/src/config_schema.cc): parsing, defaults, every
// kind of error with its file:line: key.path prefix, the effective-config printout and the
// Markdown reference.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "switchyard/core/config.h"
#include "switchyard/core/error.h"

namespace sy {
namespace {

// Every setting given at least once, in flow and block style.
const char* const kFull = R"(model:
  hidden_size: 64
  layers: 3
  layer:
    input_norm: rmsnorm
    stages:
      - experts: 8
        ffn_hidden_size: 96
        activation: gelu
        routing: {kind: dynamic, normalize: false, k_avg: 2.5, k_min: 2, k_max: 4, budget: round,
                  importance: {causal_correction: true}}
        aggregation: {kind: dag, levels: 3, dim: 12, edges: causal}
        shared_expert: {ffn_hidden_size: 48, mix: coefficient}
        capacity_factor: 1.25
        aux_loss: {load_balance: 0.01, z_loss: 0.001}
      - experts: 4
        ffn_hidden_size: 32
        routing:
          kind: topk
          k: 3
        aggregation:
          kind: weighted_sum
        shared_expert:
          ffn_hidden_size: 16
        aux_loss:
          load_balance: 0.5
)";

// A config with one stage whose body is `body` (one setting per line, unindented). Lines 1-4
// are fixed, so the body's first line is line 5 of the document.
std::string stage_yaml(const std::string& body) {
  std::string out = "model:\n  hidden_size: 64\n  layer:\n    stages:\n";
  std::string prefix = "      - ";
  std::size_t start = 0;
  while (start < body.size()) {
    std::size_t end = body.find('\n', start);
    if (end == std::string::npos) end = body.size();
    out += prefix + body.substr(start, end - start) + "\n";
    prefix = "        ";
    start = end + 1;
  }
  return out;
}

// One stage with `experts: 8` (line 5) and `ffn_hidden_size: 96` (line 6); `extra` starts at line 7.
std::string one_stage(const std::string& extra) { return stage_yaml("experts: 8\nffn_hidden_size: 96\n" + extra); }

void expect_config_error(const std::string& yaml, const std::string& prefix, const std::string& fragment) {
  SCOPED_TRACE("config:\n" + yaml);
  try {
    load_config_string(yaml, "cfg.yaml");
    ADD_FAILURE() << "accepted; expected an error starting with " << prefix;
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::config);
    EXPECT_EQ(e.exit_code(), 2);
    const std::string message = e.what();
    EXPECT_EQ(message.rfind(prefix, 0), 0u) << "message: " << message << "\nexpected prefix: " << prefix;
    EXPECT_NE(message.find(fragment), std::string::npos) << "message: " << message << "\nexpected: " << fragment;
  }
}

void expect_routing_eq(const RoutingConfig& a, const RoutingConfig& b) {
  EXPECT_EQ(a.kind, b.kind);
  EXPECT_EQ(a.normalize, b.normalize);
  EXPECT_EQ(a.k, b.k);
  EXPECT_EQ(a.k_avg, b.k_avg);
  EXPECT_EQ(a.k_min, b.k_min);
  EXPECT_EQ(a.k_max, b.k_max);
  EXPECT_EQ(a.budget, b.budget);
  EXPECT_EQ(a.causal_correction, b.causal_correction);
}

void expect_stage_eq(const StageConfig& a, const StageConfig& b) {
  EXPECT_EQ(a.experts, b.experts);
  EXPECT_EQ(a.ffn_hidden_size, b.ffn_hidden_size);
  EXPECT_EQ(a.activation, b.activation);
  expect_routing_eq(a.routing, b.routing);
  EXPECT_EQ(a.aggregation.kind, b.aggregation.kind);
  EXPECT_EQ(a.aggregation.levels, b.aggregation.levels);
  EXPECT_EQ(a.aggregation.dim, b.aggregation.dim);
  EXPECT_EQ(a.aggregation.edges, b.aggregation.edges);
  EXPECT_EQ(a.shared_expert.enabled, b.shared_expert.enabled);
  EXPECT_EQ(a.shared_expert.ffn_hidden_size, b.shared_expert.ffn_hidden_size);
  EXPECT_EQ(a.shared_expert.mix, b.shared_expert.mix);
  EXPECT_EQ(a.capacity_factor, b.capacity_factor);
  EXPECT_EQ(a.aux_loss.load_balance, b.aux_loss.load_balance);
  EXPECT_EQ(a.aux_loss.z_loss, b.aux_loss.z_loss);
}

void expect_cluster_eq(const ClusterConfig& a, const ClusterConfig& b) {
  EXPECT_EQ(a.workers, b.workers);
  EXPECT_EQ(a.coordinator, b.coordinator);
  EXPECT_EQ(a.ucx_tls, b.ucx_tls);
  EXPECT_EQ(a.heartbeat_ms, b.heartbeat_ms);
  EXPECT_EQ(a.dead_after_ms, b.dead_after_ms);
  EXPECT_EQ(a.request_timeout_ms, b.request_timeout_ms);
  EXPECT_EQ(a.worker_memory_mb, b.worker_memory_mb);
  EXPECT_EQ(a.placement, b.placement);
  EXPECT_EQ(a.replicas, b.replicas);
}

// Equal settings (the `source` field is not a setting).
void expect_config_eq(const Config& a, const Config& b) {
  EXPECT_EQ(a.has_model, b.has_model);
  EXPECT_EQ(a.has_cluster, b.has_cluster);
  expect_cluster_eq(a.cluster, b.cluster);
  EXPECT_EQ(a.model.hidden_size, b.model.hidden_size);
  EXPECT_EQ(a.model.layers, b.model.layers);
  EXPECT_EQ(a.model.layer.input_norm, b.model.layer.input_norm);
  ASSERT_EQ(a.model.layer.stages.size(), b.model.layer.stages.size());
  for (std::size_t i = 0; i < a.model.layer.stages.size(); ++i) {
    SCOPED_TRACE("stage " + std::to_string(i));
    expect_stage_eq(a.model.layer.stages[i], b.model.layer.stages[i]);
  }
}

std::string without_first_line(const std::string& s) { return s.substr(s.find('\n') + 1); }

std::size_t count(const std::string& haystack, const std::string& needle) {
  std::size_t n = 0;
  for (std::size_t at = haystack.find(needle); at != std::string::npos; at = haystack.find(needle, at + 1)) ++n;
  return n;
}

// ---- valid configurations ----

TEST(Config, FullConfigWithEverySetting) {
  const Config c = load_config_string(kFull, "full.yaml");
  EXPECT_EQ(c.source, "full.yaml");
  EXPECT_EQ(c.model.hidden_size, 64);
  EXPECT_EQ(c.model.layers, 3);
  EXPECT_EQ(c.model.layer.input_norm, InputNorm::rmsnorm);
  ASSERT_EQ(c.model.layer.stages.size(), 2u);

  const StageConfig& s0 = c.model.layer.stages[0];
  EXPECT_EQ(s0.experts, 8);
  EXPECT_EQ(s0.ffn_hidden_size, 96);
  EXPECT_EQ(s0.activation, Activation::gelu);
  EXPECT_EQ(s0.routing.kind, RoutingKind::dynamic);
  EXPECT_FALSE(s0.routing.normalize);
  EXPECT_EQ(s0.routing.k_avg, 2.5);
  EXPECT_EQ(s0.routing.k_min, 2);
  EXPECT_EQ(s0.routing.k_max, 4);
  EXPECT_EQ(s0.routing.budget, Budget::round);
  EXPECT_TRUE(s0.routing.causal_correction);
  EXPECT_EQ(s0.aggregation.kind, AggregationKind::dag);
  EXPECT_EQ(s0.aggregation.levels, 3);
  EXPECT_EQ(s0.aggregation.dim, 12);
  EXPECT_EQ(s0.aggregation.edges, DagEdges::causal);
  EXPECT_TRUE(s0.shared_expert.enabled);
  EXPECT_EQ(s0.shared_expert.ffn_hidden_size, 48);
  EXPECT_EQ(s0.shared_expert.mix, SharedMix::coefficient);
  EXPECT_EQ(s0.capacity_factor, 1.25);
  EXPECT_EQ(s0.aux_loss.load_balance, 0.01);
  EXPECT_EQ(s0.aux_loss.z_loss, 0.001);

  const StageConfig& s1 = c.model.layer.stages[1];
  EXPECT_EQ(s1.experts, 4);
  EXPECT_EQ(s1.ffn_hidden_size, 32);
  EXPECT_EQ(s1.activation, Activation::swiglu);
  EXPECT_EQ(s1.routing.kind, RoutingKind::topk);
  EXPECT_TRUE(s1.routing.normalize);
  EXPECT_EQ(s1.routing.k, 3);
  EXPECT_EQ(s1.aggregation.kind, AggregationKind::weighted_sum);
  EXPECT_TRUE(s1.shared_expert.enabled);
  EXPECT_EQ(s1.shared_expert.ffn_hidden_size, 16);
  EXPECT_EQ(s1.shared_expert.mix, SharedMix::add);
  EXPECT_EQ(s1.capacity_factor, 0.0);
  EXPECT_EQ(s1.aux_loss.load_balance, 0.5);
  EXPECT_EQ(s1.aux_loss.z_loss, 0.0);
}

TEST(Config, DefaultsAreFilledAndMatchTheStructDefaults) {
  const Config c = load_config_string(one_stage(""));
  EXPECT_EQ(c.source, "<string>");
  EXPECT_EQ(c.model.hidden_size, 64);
  EXPECT_EQ(c.model.layers, 1);
  EXPECT_EQ(c.model.layer.input_norm, InputNorm::none);
  ASSERT_EQ(c.model.layer.stages.size(), 1u);
  const StageConfig& s = c.model.layer.stages[0];
  EXPECT_EQ(s.activation, Activation::swiglu);
  EXPECT_EQ(s.routing.kind, RoutingKind::topk);
  EXPECT_EQ(s.routing.k, 2);
  EXPECT_TRUE(s.routing.normalize);
  EXPECT_EQ(s.aggregation.kind, AggregationKind::weighted_sum);
  EXPECT_FALSE(s.shared_expert.enabled);
  EXPECT_EQ(s.capacity_factor, 0.0);
  EXPECT_EQ(s.aux_loss.load_balance, 0.0);
  EXPECT_EQ(s.aux_loss.z_loss, 0.0);

  // The schema's defaults agree with the member initializers in config.h.
  StageConfig expected;
  expected.experts = 8;
  expected.ffn_hidden_size = 96;
  expect_stage_eq(s, expected);
}

TEST(Config, DynamicAndDagDefaultsAreResolved) {
  const Config c = load_config_string(one_stage("routing: {kind: dynamic}\naggregation: {kind: dag}"));
  const StageConfig& s = c.model.layer.stages[0];
  RoutingConfig routing;
  routing.kind = RoutingKind::dynamic;
  routing.k_max = 8;  // = experts
  expect_routing_eq(s.routing, routing);
  EXPECT_EQ(s.aggregation.levels, 2);
  EXPECT_EQ(s.aggregation.dim, 16);  // = hidden_size / 4
  EXPECT_EQ(s.aggregation.edges, DagEdges::all);

  // dim is at least 1.
  const Config tiny = load_config_string(
      "model:\n  hidden_size: 2\n  layer:\n    stages: [{experts: 2, ffn_hidden_size: 4, aggregation: {kind: dag}}]\n");
  EXPECT_EQ(tiny.model.layer.stages[0].aggregation.dim, 1);
}

TEST(Config, NullMapMeansDefaults) {
  const Config c = load_config_string(one_stage("routing:\naggregation:\naux_loss:"));
  StageConfig expected;
  expected.experts = 8;
  expected.ffn_hidden_size = 96;
  expect_stage_eq(c.model.layer.stages[0], expected);
}

TEST(Config, DiscriminatorMayComeAfterTheKeysItGates) {
  const Config c = load_config_string(one_stage("routing: {k_avg: 3, kind: dynamic}"));
  EXPECT_EQ(c.model.layer.stages[0].routing.kind, RoutingKind::dynamic);
  EXPECT_EQ(c.model.layer.stages[0].routing.k_avg, 3.0);
}

TEST(Config, ToStringGivesTheYamlSpelling) {
  EXPECT_STREQ(to_string(Activation::swiglu), "swiglu");
  EXPECT_STREQ(to_string(Activation::gelu), "gelu");
  EXPECT_STREQ(to_string(RoutingKind::topk), "topk");
  EXPECT_STREQ(to_string(RoutingKind::dynamic), "dynamic");
  EXPECT_STREQ(to_string(Budget::exact), "exact");
  EXPECT_STREQ(to_string(Budget::round), "round");
  EXPECT_STREQ(to_string(AggregationKind::weighted_sum), "weighted_sum");
  EXPECT_STREQ(to_string(AggregationKind::dag), "dag");
  EXPECT_STREQ(to_string(DagEdges::all), "all");
  EXPECT_STREQ(to_string(DagEdges::causal), "causal");
  EXPECT_STREQ(to_string(SharedMix::add), "add");
  EXPECT_STREQ(to_string(SharedMix::coefficient), "coefficient");
  EXPECT_STREQ(to_string(InputNorm::none), "none");
  EXPECT_STREQ(to_string(InputNorm::rmsnorm), "rmsnorm");
}

// ---- errors: every message starts with file:line: key.path: ----

TEST(ConfigError, UnknownKeys) {
  expect_config_error("model:\n  hidden_size: 64\n  layer: {stages: [{experts: 8, ffn_hidden_size: 96}]}\nextra: 1\n",
                      "cfg.yaml:4: extra: ", "unknown key; expected one of: model");
  expect_config_error("model:\n  hidden_size: 64\n  hidden: 3\n",
                      "cfg.yaml:3: model.hidden: ", "expected one of: hidden_size, layers, layer");
  expect_config_error(one_stage("expert: 3"), "cfg.yaml:7: model.layer.stages[0].expert: ", "unknown key");
  expect_config_error(one_stage("routing:\n  kind: topk\n  kk: 3"),
                      "cfg.yaml:9: model.layer.stages[0].routing.kk: ", "unknown key");
  expect_config_error(
      one_stage("routing: {kind: dynamic, importance: {causal: true}}"),
      "cfg.yaml:7: model.layer.stages[0].routing.importance.causal: ", "expected one of: causal_correction");
}

TEST(ConfigError, WrongTypes) {
  expect_config_error(stage_yaml("experts: eight\nffn_hidden_size: 96"),
                      "cfg.yaml:5: model.layer.stages[0].experts: ", "expected an integer, got \"eight\"");
  expect_config_error(one_stage("routing: {k: 2.5}"),
                      "cfg.yaml:7: model.layer.stages[0].routing.k: ", "expected an integer, got \"2.5\"");
  expect_config_error(one_stage("routing: [topk, 2]"),
                      "cfg.yaml:7: model.layer.stages[0].routing: ", "expected a map, got a list");
  expect_config_error("model:\n  hidden_size: 64\n  layer:\n    stages: {experts: 8}\n",
                      "cfg.yaml:4: model.layer.stages: ", "expected a non-empty list of maps, got a map");
  expect_config_error("model:\n  hidden_size: 64\n  layer:\n    stages:\n      - 3\n",
                      "cfg.yaml:5: model.layer.stages[0]: ", "expected a map, got \"3\"");
  expect_config_error("model: [1, 2]\n", "cfg.yaml:1: model: ", "expected a map, got a list");
  expect_config_error("model:\n  hidden_size: {a: 1}\n",
                      "cfg.yaml:2: model.hidden_size: ", "expected an integer, got a map");
  expect_config_error(one_stage("routing: {normalize: yes}"),
                      "cfg.yaml:7: model.layer.stages[0].routing.normalize: ", "expected true or false, got \"yes\"");
  expect_config_error(stage_yaml("experts: \"8\"\nffn_hidden_size: 96"),
                      "cfg.yaml:5: model.layer.stages[0].experts: ", "quoted string");
  expect_config_error(one_stage("capacity_factor: fast"),
                      "cfg.yaml:7: model.layer.stages[0].capacity_factor: ", "expected a number, got \"fast\"");
  expect_config_error(one_stage("capacity_factor: nan"),
                      "cfg.yaml:7: model.layer.stages[0].capacity_factor: ", "finite");
  expect_config_error(one_stage("activation:"), "cfg.yaml:7: model.layer.stages[0].activation: ", "got null");
  expect_config_error(one_stage("shared_expert: true"),
                      "cfg.yaml:7: model.layer.stages[0].shared_expert: ", "expected a map, got \"true\"");
  expect_config_error("- model\n", "cfg.yaml:1: (top level): ", "expected a map, got a list");
}

TEST(ConfigError, MissingRequiredKeysReportTheParentMapLine) {
  expect_config_error("", "cfg.yaml:1: (top level): ", "expected a `model:` section, a `cluster:` section or both");
  expect_config_error("# nothing but a comment\n", "cfg.yaml:1: (top level): ", "found neither");
  expect_config_error("model:\n  layer:\n    stages: [{experts: 8, ffn_hidden_size: 96}]\n",
                      "cfg.yaml:2: model.hidden_size: ", "required setting is missing");
  expect_config_error("model:\n  hidden_size: 64\n", "cfg.yaml:2: model.layer: ", "required setting is missing");
  expect_config_error("model:\n  hidden_size: 64\n  layer:\n",
                      "cfg.yaml:3: model.layer.stages: ", "required setting is missing");
  expect_config_error(
      "model:\n  hidden_size: 64\n  layer:\n    stages:\n      - experts: 8\n        ffn_hidden_size: 96\n"
      "      - ffn_hidden_size: 96\n        activation: gelu\n",
      "cfg.yaml:7: model.layer.stages[1].experts: ", "required setting is missing");
  expect_config_error(stage_yaml("experts: 8"),
                      "cfg.yaml:5: model.layer.stages[0].ffn_hidden_size: ", "required setting is missing");
  expect_config_error(
      one_stage("shared_expert: {mix: add}"),
      "cfg.yaml:7: model.layer.stages[0].shared_expert.ffn_hidden_size: ", "required setting is missing");
  expect_config_error(one_stage("shared_expert:"), "cfg.yaml:7: model.layer.stages[0].shared_expert.ffn_hidden_size: ",
                      "required setting is missing");
}

TEST(ConfigError, OutOfRangeValues) {
  expect_config_error("model:\n  hidden_size: 0\n", "cfg.yaml:2: model.hidden_size: ", "must be > 0, got 0");
  expect_config_error("model:\n  hidden_size: 64\n  layers: 0\n", "cfg.yaml:3: model.layers: ", "must be >= 1, got 0");
  expect_config_error(stage_yaml("experts: 0\nffn_hidden_size: 96"),
                      "cfg.yaml:5: model.layer.stages[0].experts: ", "must be >= 1, got 0");
  expect_config_error(stage_yaml("experts: 99999999999\nffn_hidden_size: 96"),
                      "cfg.yaml:5: model.layer.stages[0].experts: ", "out of range");
  expect_config_error(stage_yaml("experts: 8\nffn_hidden_size: -96"),
                      "cfg.yaml:6: model.layer.stages[0].ffn_hidden_size: ", "must be > 0, got -96");
  expect_config_error(one_stage("capacity_factor: -0.5"),
                      "cfg.yaml:7: model.layer.stages[0].capacity_factor: ", "must be >= 0, got -0.5");
  expect_config_error(one_stage("aux_loss:\n  load_balance: 0.1\n  z_loss: -1"),
                      "cfg.yaml:9: model.layer.stages[0].aux_loss.z_loss: ", "must be >= 0");
  expect_config_error(one_stage("aggregation: {kind: dag, levels: -1}"),
                      "cfg.yaml:7: model.layer.stages[0].aggregation.levels: ", "must be >= 0, got -1");
  expect_config_error(one_stage("aggregation: {kind: dag, dim: 0}"),
                      "cfg.yaml:7: model.layer.stages[0].aggregation.dim: ", "must be > 0, got 0");
  expect_config_error(one_stage("routing: {k: 0}"), "cfg.yaml:7: model.layer.stages[0].routing.k: ", "must be >= 1");
  expect_config_error(one_stage("shared_expert: {ffn_hidden_size: 0}"),
                      "cfg.yaml:7: model.layer.stages[0].shared_expert.ffn_hidden_size: ", "must be > 0");
}

// Issue 12: sizes whose products overflow (or cannot be held) were an internal error (exit 1)
// when the layer was built; they are config errors naming the key.
TEST(ConfigError, HugeSizesAreConfigErrorsNamingTheKey) {
  expect_config_error("model:\n  hidden_size: 2147483647\n", "cfg.yaml:2: model.hidden_size: ",
                      "must be <= 1048576, got 2147483647");
  expect_config_error("model:\n  hidden_size: 64\n  layers: 100000\n", "cfg.yaml:3: model.layers: ",
                      "must be <= 4096, got 100000");
  expect_config_error(stage_yaml("experts: 8\nffn_hidden_size: 2147483647"),
                      "cfg.yaml:6: model.layer.stages[0].ffn_hidden_size: ", "must be <= 1048576");
  expect_config_error(stage_yaml("experts: 2000000000\nffn_hidden_size: 96"),
                      "cfg.yaml:5: model.layer.stages[0].experts: ", "must be <= 65536");
  expect_config_error(one_stage("aggregation: {kind: dag, dim: 2147483647}"),
                      "cfg.yaml:7: model.layer.stages[0].aggregation.dim: ", "must be <= 1048576");
  expect_config_error(one_stage("aggregation: {kind: dag, levels: 2147483647}"),
                      "cfg.yaml:7: model.layer.stages[0].aggregation.levels: ", "must be <= 1024");
  expect_config_error(one_stage("shared_expert: {ffn_hidden_size: 2147483647}"),
                      "cfg.yaml:7: model.layer.stages[0].shared_expert.ffn_hidden_size: ", "must be <= 1048576");
  expect_config_error("cluster:\n  workers: 2147483647\n", "cfg.yaml:2: cluster.workers: ", "must be <= 65536");
  expect_config_error(one_stage("capacity_factor: 1e300"), "cfg.yaml:7: model.layer.stages[0].capacity_factor: ",
                      "must be <= 1e+06, got 1e300");
  // Each size within its bound, their product not: 65536 x 3 x 2^20 x 2^20 floats per layer.
  expect_config_error("model:\n  hidden_size: 1048576\n  layer:\n    stages:\n"
                      "      - {experts: 65536, ffn_hidden_size: 1048576}\n",
                      "cfg.yaml:5: model.layer.stages[0].experts: ", "over the limit of 2^40");
  expect_config_error("model:\n  hidden_size: 4096\n  layers: 4096\n  layer:\n    stages:\n"
                      "      - {experts: 64, ffn_hidden_size: 16384}\n",
                      "cfg.yaml:6: model.layer.stages[0].experts: ", "parameters over 4096 layer(s)");
  // The largest sizes still load when their product is small enough.
  const Config c = load_config_string("model:\n  hidden_size: 1048576\n  layer:\n    stages:\n"
                                      "      - {experts: 2, ffn_hidden_size: 1}\n");
  EXPECT_EQ(c.model.hidden_size, 1048576);
}

TEST(ConfigError, BadEnumValuesListTheAllowedOnes) {
  expect_config_error(one_stage("activation: relu"),
                      "cfg.yaml:7: model.layer.stages[0].activation: ", "\"relu\" is not one of: swiglu, gelu");
  expect_config_error("model:\n  hidden_size: 64\n  layer:\n    input_norm: layernorm\n",
                      "cfg.yaml:4: model.layer.input_norm: ", "one of: none, rmsnorm");
  expect_config_error(one_stage("routing: {kind: expert_choice}"),
                      "cfg.yaml:7: model.layer.stages[0].routing.kind: ", "one of: topk, dynamic");
  expect_config_error(one_stage("routing: {kind: dynamic, budget: floor}"),
                      "cfg.yaml:7: model.layer.stages[0].routing.budget: ", "one of: exact, round");
  expect_config_error(one_stage("aggregation: {kind: dag, edges: some}"),
                      "cfg.yaml:7: model.layer.stages[0].aggregation.edges: ", "one of: all, causal");
  expect_config_error(one_stage("shared_expert: {ffn_hidden_size: 8, mix: mul}"),
                      "cfg.yaml:7: model.layer.stages[0].shared_expert.mix: ", "one of: add, coefficient");
}

TEST(ConfigError, EmptyStages) {
  expect_config_error("model:\n  hidden_size: 64\n  layer:\n    stages: []\n",
                      "cfg.yaml:4: model.layer.stages: ", "got an empty list");
  expect_config_error("model:\n  hidden_size: 64\n  layer:\n    stages:\n",
                      "cfg.yaml:4: model.layer.stages: ", "got null");
}

TEST(ConfigError, CrossFieldChecks) {
  // The example of config.h / the brief, verbatim.
  expect_config_error(one_stage("routing: {k: 9}"), "cfg.yaml:7: model.layer.stages[0].routing.k: ",
                      "routing.k: 9 exceeds experts (8) of this stage");
  // The default k = 2 does not fit a one-expert stage; a missing key reports its map's line.
  expect_config_error(stage_yaml("experts: 1\nffn_hidden_size: 8"),
                      "cfg.yaml:5: model.layer.stages[0].routing.k: ", "2 exceeds experts (1)");
  expect_config_error(one_stage("routing: {kind: dynamic, k_min: 3}"),
                      "cfg.yaml:7: model.layer.stages[0].routing.k_avg: ", "k_avg (2) is below k_min (3)");
  expect_config_error(one_stage("routing: {kind: dynamic, k_avg: 5, k_max: 4}"),
                      "cfg.yaml:7: model.layer.stages[0].routing.k_avg: ", "k_avg (5) exceeds k_max (4)");
  expect_config_error(one_stage("routing: {kind: dynamic, k_avg: 9}"),
                      "cfg.yaml:7: model.layer.stages[0].routing.k_avg: ", "k_avg (9) exceeds k_max (8)");
  expect_config_error(one_stage("routing:\n  kind: dynamic\n  k_avg: 1.5\n  k_max: 12"),
                      "cfg.yaml:10: model.layer.stages[0].routing.k_max: ", "12 exceeds experts (8) of this stage");
  expect_config_error(one_stage("routing: {kind: dynamic, k_min: 0}"),
                      "cfg.yaml:7: model.layer.stages[0].routing.k_min: ", "must be >= 1");
}

TEST(ConfigError, KeysOfTheOtherKind) {
  expect_config_error(one_stage("routing: {k_avg: 2}"), "cfg.yaml:7: model.layer.stages[0].routing.k_avg: ",
                      "routing.k_avg is a setting of routing.kind: dynamic, not topk");
  expect_config_error(one_stage("routing:\n  kind: dynamic\n  k: 2"), "cfg.yaml:9: model.layer.stages[0].routing.k: ",
                      "routing.k is a setting of routing.kind: topk, not dynamic");
  expect_config_error(one_stage("routing: {importance: {causal_correction: true}}"),
                      "cfg.yaml:7: model.layer.stages[0].routing.importance: ",
                      "routing.importance is a setting of routing.kind: dynamic, not topk");
  expect_config_error(one_stage("aggregation: {levels: 1}"), "cfg.yaml:7: model.layer.stages[0].aggregation.levels: ",
                      "aggregation.levels is a setting of aggregation.kind: dag, not weighted_sum");
}

// Issue 12: periodic checkpoints need somewhere to go; the error names the missing key.
TEST(ConfigError, CheckpointEveryStepsNeedsCheckpointDir) {
  expect_config_error("cluster:\n  workers: 2\n  checkpoint_every_steps: 10\n", "cfg.yaml:2: cluster.checkpoint_dir: ",
                      "required when cluster.checkpoint_every_steps is set (10)");
  expect_config_error("cluster:\n  checkpoint_every_steps: -1\n",
                      "cfg.yaml:2: cluster.checkpoint_every_steps: ", "must be >= 0");
  expect_config_error("cluster:\n  checkpoint_keep: 0\n", "cfg.yaml:2: cluster.checkpoint_keep: ", "must be >= 1");
  const Config c =
      load_config_string("cluster:\n  checkpoint_every_steps: 10\n  checkpoint_dir: ckpt\n", "/a/b/c.yaml");
  EXPECT_EQ(c.cluster.checkpoint_every_steps, 10);
  EXPECT_EQ(c.cluster.checkpoint_dir, "/a/b/ckpt");  // relative to the config file
  EXPECT_EQ(c.cluster.checkpoint_keep, 2);
}

TEST(ConfigError, DuplicateKeys) {
  expect_config_error(one_stage("experts: 4"),
                      "cfg.yaml:7: model.layer.stages[0].experts: ", "duplicate key (first given on line 5)");
}

TEST(ConfigError, YamlSyntaxAndDocumentShape) {
  expect_config_error("model:\n  hidden_size: 64\n  layer: {stages: [1, 2}\n", "cfg.yaml:3: ", "YAML syntax error");
  expect_config_error("model:\n  hidden_size: 64\n layers: 2\n", "cfg.yaml:3: ", "YAML syntax error");
  expect_config_error(one_stage("") + "---\nmodel: {}\n", "cfg.yaml:", "expected one YAML document, found 2");
  // Found by fuzz_model_config (issue 12): yaml-cpp's LoadAll never returned on a lone ","
  // (a new empty document forever, the list of them growing until memory ran out).
  expect_config_error(",", "cfg.yaml:1: YAML syntax error: ", "unexpected ','");
  expect_config_error("model:\n  hidden_size: 8\n---\n,\n", "cfg.yaml:4: YAML syntax error: ", "unexpected ','");
  expect_config_error("---\n---\n", "cfg.yaml:2: ", "expected one YAML document, found 2");
}

TEST(ConfigError, FilesNameThemselves) {
  const std::string dir = testing::TempDir();
  const std::string path = dir + "switchyard_test_config.yaml";
  {
    std::ofstream out(path);
    out << one_stage("routing: {k: 9}");
  }
  try {
    load_config(path);
    ADD_FAILURE() << "accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::config);
    EXPECT_EQ(std::string(e.what()).rfind(path + ":7: model.layer.stages[0].routing.k: ", 0), 0u) << e.what();
  }
  {
    std::ofstream out(path);
    out << kFull;
  }
  EXPECT_EQ(load_config(path).source, path);
  std::remove(path.c_str());

  for (const std::string& bad : {dir + "switchyard_no_such_file.yaml", dir}) {
    try {
      load_config(bad);
      ADD_FAILURE() << "accepted " << bad;
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::config);
      EXPECT_EQ(e.exit_code(), 2);
      EXPECT_EQ(std::string(e.what()).rfind(bad + ": cannot ", 0), 0u) << e.what();
    }
  }
}

// ---- printing ----

TEST(ConfigYaml, RoundTripsEveryKind) {
  const Config full = load_config_string(kFull, "full.yaml");
  const std::string yaml = config_to_yaml(full);
  SCOPED_TRACE(yaml);
  const Config again = load_config_string(yaml);
  expect_config_eq(again, full);
  EXPECT_EQ(without_first_line(config_to_yaml(again)), without_first_line(yaml));

  // Help text as trailing comments; only the keys of each stage's kinds.
  EXPECT_NE(yaml.find("hidden_size: 64"), std::string::npos);
  EXPECT_NE(yaml.find("# Model width d"), std::string::npos);
  EXPECT_NE(yaml.find("(swiglu | gelu)"), std::string::npos);
  EXPECT_EQ(count(yaml, " k_avg: "), 1u);  // stage 0 is dynamic
  EXPECT_EQ(count(yaml, " k: "), 1u);      // stage 1 is topk
  EXPECT_EQ(count(yaml, " levels: "), 1u);
  EXPECT_EQ(count(yaml, "causal_correction: true"), 1u);
}

TEST(ConfigYaml, DefaultsArePrintedAndRoundTrip) {
  const Config minimal = load_config_string(one_stage("capacity_factor: 0.1\naux_loss: {z_loss: 1e-7}"));
  const std::string yaml = config_to_yaml(minimal);
  SCOPED_TRACE(yaml);
  for (const char* key :
       {"layers: 1", "input_norm: none", "activation: swiglu", "kind: topk", "normalize: true", "k: 2",
        "kind: weighted_sum", "capacity_factor: 0.1", "load_balance: 0", "z_loss: 1e-07", "# shared_expert: absent"}) {
    EXPECT_NE(yaml.find(key), std::string::npos) << key;
  }
  expect_config_eq(load_config_string(yaml), minimal);

  const Config resolved = load_config_string(one_stage("routing: {kind: dynamic}\naggregation: {kind: dag}"));
  const std::string resolved_yaml = config_to_yaml(resolved);
  EXPECT_NE(resolved_yaml.find("k_max: 8"), std::string::npos) << resolved_yaml;
  EXPECT_NE(resolved_yaml.find("dim: 16"), std::string::npos) << resolved_yaml;
  expect_config_eq(load_config_string(resolved_yaml), resolved);
}

// ---- the cluster section ----

const char* const kCluster = R"(cluster:
  workers: 3
  coordinator: "node1.example:29500"
  ucx_tls: "tcp,self"
  heartbeat_ms: 100
  dead_after_ms: 1000
  request_timeout_ms: 2000
  worker_memory_mb: 64
  placement: /etc/switchyard/placement.yaml
  replicas: 2
)";

TEST(ConfigCluster, EverySetting) {
  const Config c = load_config_string(kCluster, "cluster.yaml");
  EXPECT_FALSE(c.has_model);
  EXPECT_TRUE(c.has_cluster);
  EXPECT_EQ(c.cluster.workers, 3);
  EXPECT_EQ(c.cluster.coordinator, "node1.example:29500");
  EXPECT_EQ(c.cluster.ucx_tls, "tcp,self");
  EXPECT_EQ(c.cluster.heartbeat_ms, 100);
  EXPECT_EQ(c.cluster.dead_after_ms, 1000);
  EXPECT_EQ(c.cluster.request_timeout_ms, 2000);
  EXPECT_EQ(c.cluster.worker_memory_mb, 64);
  EXPECT_EQ(c.cluster.worker_memory_bytes(), int64_t{64} << 20);
  EXPECT_EQ(c.cluster.placement, "/etc/switchyard/placement.yaml");
  EXPECT_EQ(c.cluster.replicas, 2);
}

TEST(ConfigCluster, DefaultsMatchTheStructDefaults) {
  const Config c = load_config_string("cluster:\n");
  EXPECT_TRUE(c.has_cluster);
  EXPECT_FALSE(c.has_model);
  const ClusterConfig expected;
  expect_cluster_eq(c.cluster, expected);
  EXPECT_EQ(c.cluster.workers, 4);
  EXPECT_EQ(c.cluster.coordinator, "127.0.0.1:0");
  EXPECT_EQ(c.cluster.ucx_tls, "");
  EXPECT_EQ(c.cluster.heartbeat_ms, 500);
  EXPECT_EQ(c.cluster.dead_after_ms, 3000);
  EXPECT_EQ(c.cluster.request_timeout_ms, 10000);
  EXPECT_EQ(c.cluster.worker_memory_mb, 4096);
  EXPECT_EQ(c.cluster.placement, "");
  EXPECT_EQ(c.cluster.replicas, 1);

  // A model-only file: no cluster section, the cluster struct holds the defaults.
  const Config m = load_config_string(one_stage(""));
  EXPECT_TRUE(m.has_model);
  EXPECT_FALSE(m.has_cluster);
  expect_cluster_eq(m.cluster, expected);
}

TEST(ConfigCluster, ModelAndClusterInOneFile) {
  const Config c = load_config_string(one_stage("") + kCluster);
  EXPECT_TRUE(c.has_model);
  EXPECT_TRUE(c.has_cluster);
  EXPECT_EQ(c.model.layer.stages.at(0).experts, 8);
  EXPECT_EQ(c.cluster.workers, 3);
  EXPECT_EQ(&c.require_model(), &c.model);
}

TEST(ConfigCluster, RequireModelNamesTheFile) {
  const Config c = load_config_string(kCluster, "cluster.yaml");
  try {
    c.require_model();
    ADD_FAILURE() << "returned a model";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::config);
    EXPECT_EQ(std::string(e.what()).rfind("cluster.yaml: no `model:` section", 0), 0u) << e.what();
  }
}

TEST(ConfigCluster, PlacementPathResolvesAgainstTheConfigDirectory) {
  namespace fs = std::filesystem;
  const Config rel = load_config_string("cluster: {placement: p.yaml}\n", "some/dir/cfg.yaml");
  EXPECT_TRUE(fs::path(rel.cluster.placement).is_absolute()) << rel.cluster.placement;
  EXPECT_EQ(rel.cluster.placement, (fs::current_path() / "some/dir/p.yaml").lexically_normal().string());
  const Config up = load_config_string("cluster: {placement: ../p.yaml}\n", "some/dir/cfg.yaml");
  EXPECT_EQ(up.cluster.placement, (fs::current_path() / "some/p.yaml").lexically_normal().string());
  const Config abs = load_config_string("cluster: {placement: /a/b/../p.yaml}\n", "some/dir/cfg.yaml");
  EXPECT_EQ(abs.cluster.placement, "/a/p.yaml");
  const Config none = load_config_string("cluster: {placement: \"\"}\n", "some/dir/cfg.yaml");
  EXPECT_EQ(none.cluster.placement, "");

  // A real file: relative to its own directory, not to the current directory.
  const fs::path dir = fs::path(testing::TempDir()) / "switchyard_cluster_cfg";
  fs::create_directories(dir);
  const fs::path file = dir / "local.yaml";
  {
    std::ofstream out(file);
    out << "cluster:\n  placement: placement-x.yaml\n";
  }
  EXPECT_EQ(load_config(file.string()).cluster.placement, (dir / "placement-x.yaml").lexically_normal().string());
  fs::remove_all(dir);
}

TEST(ConfigCluster, HostPort) {
  auto hp = parse_host_port("127.0.0.1:0");
  ASSERT_TRUE(hp);
  EXPECT_EQ(hp->host, "127.0.0.1");
  EXPECT_EQ(hp->port, 0);
  hp = parse_host_port("[::1]:5000");
  ASSERT_TRUE(hp);
  EXPECT_EQ(hp->host, "::1");
  EXPECT_EQ(hp->port, 5000);
  hp = parse_host_port("node-7.cluster_a:65535");
  ASSERT_TRUE(hp);
  EXPECT_EQ(hp->host, "node-7.cluster_a");
  for (const char* bad : {"", "localhost", ":80", "host:", "host:65536", "host:-1", "host:8x", "::1:80", "[::1]",
                          "[]:80", "a b:80", "host:+80"}) {
    EXPECT_FALSE(parse_host_port(bad)) << bad;
  }
}

TEST(ConfigClusterError, EveryConstraintNamesFileLineAndKey) {
  expect_config_error("cluster:\n  workers: 0\n", "cfg.yaml:2: cluster.workers: ", "must be >= 1, got 0");
  expect_config_error("cluster:\n  workers: two\n", "cfg.yaml:2: cluster.workers: ", "expected an integer");
  expect_config_error("cluster:\n  coordinator: localhost\n", "cfg.yaml:2: cluster.coordinator: ",
                      "\"localhost\" is not host:port");
  expect_config_error("cluster:\n  coordinator: \"h:99999\"\n", "cfg.yaml:2: cluster.coordinator: ",
                      "port in 0..65535");
  expect_config_error("cluster:\n  coordinator: [a, b]\n", "cfg.yaml:2: cluster.coordinator: ",
                      "expected a string, got a list");
  expect_config_error("cluster:\n  ucx_tls: sm, self\n", "cfg.yaml:2: cluster.ucx_tls: ", "unexpected character ' '");
  expect_config_error("cluster:\n  ucx_tls: sm,,self\n", "cfg.yaml:2: cluster.ucx_tls: ", "empty transport name");
  expect_config_error("cluster:\n  heartbeat_ms: 0\n", "cfg.yaml:2: cluster.heartbeat_ms: ", "must be > 0");
  expect_config_error("cluster:\n  heartbeat_ms: 500\n  dead_after_ms: 500\n", "cfg.yaml:3: cluster.dead_after_ms: ",
                      "500 must exceed heartbeat_ms (500)");
  // The default dead_after_ms (3000) against a larger heartbeat: reported at the cluster map.
  expect_config_error("cluster:\n  heartbeat_ms: 5000\n", "cfg.yaml:2: cluster.dead_after_ms: ",
                      "3000 must exceed heartbeat_ms (5000)");
  expect_config_error("cluster:\n  request_timeout_ms: -5\n", "cfg.yaml:2: cluster.request_timeout_ms: ",
                      "must be > 0");
  expect_config_error("cluster:\n  worker_memory_mb: 0\n", "cfg.yaml:2: cluster.worker_memory_mb: ", "must be > 0");
  expect_config_error("cluster:\n  worker_device: gpu\n", "cfg.yaml:2: cluster.worker_device: ",
                      "\"gpu\" is not one of: cpu, cuda");
  expect_config_error("cluster:\n  workers: 2\n  replicas: 3\n", "cfg.yaml:3: cluster.replicas: ",
                      "3 exceeds workers (2)");
  expect_config_error("cluster:\n  replicas: 0\n", "cfg.yaml:2: cluster.replicas: ", "must be >= 1");
  expect_config_error("cluster:\n  placement: {file: x}\n", "cfg.yaml:2: cluster.placement: ",
                      "expected a file path, got a map");
  expect_config_error("cluster:\n  worker: 2\n", "cfg.yaml:2: cluster.worker: ",
                      "unknown key; expected one of: workers, coordinator");
  expect_config_error("cluster: [1]\n", "cfg.yaml:1: cluster: ", "expected a map, got a list");
  expect_config_error("cluster:\n  workers: \"3\"\n", "cfg.yaml:2: cluster.workers: ", "quoted string");
  expect_config_error("cluster:\n  ucx_tls:\n", "cfg.yaml:2: cluster.ucx_tls: ", "got null");
}

TEST(ConfigClusterYaml, RoundTrips) {
  const std::string text = one_stage("") + kCluster;
  const Config c = load_config_string(text);
  const std::string yaml = config_to_yaml(c);
  SCOPED_TRACE(yaml);
  EXPECT_NE(yaml.find("\ncluster:"), std::string::npos);
  EXPECT_NE(yaml.find("  coordinator: \"node1.example:29500\""), std::string::npos);
  EXPECT_NE(yaml.find("  ucx_tls: \"tcp,self\""), std::string::npos);
  EXPECT_NE(yaml.find("  replicas: 2"), std::string::npos);
  EXPECT_NE(yaml.find("# Memory budget per worker"), std::string::npos);
  const Config again = load_config_string(yaml);
  expect_config_eq(again, c);
  EXPECT_EQ(without_first_line(config_to_yaml(again)), without_first_line(yaml));

  // Absent sections print as comments and stay absent.
  const Config cluster_only = load_config_string("cluster: {ucx_tls: \"sm,self\"}\n");
  const std::string cluster_yaml = config_to_yaml(cluster_only);
  EXPECT_NE(cluster_yaml.find("# model: absent"), std::string::npos) << cluster_yaml;
  EXPECT_NE(cluster_yaml.find("ucx_tls: \"sm,self\""), std::string::npos) << cluster_yaml;
  expect_config_eq(load_config_string(cluster_yaml), cluster_only);
  const std::string model_yaml = config_to_yaml(load_config_string(one_stage("")));
  EXPECT_NE(model_yaml.find("# cluster: absent"), std::string::npos) << model_yaml;
}

TEST(ConfigCluster, ShippedClusterConfigsLoad) {
  const std::string dir = std::string(SY_SOURCE_DIR) + "/configs/";
  const Config local = load_config(dir + "local.yaml");
  EXPECT_TRUE(local.has_cluster);
  EXPECT_EQ(local.cluster.workers, 4);
  EXPECT_FALSE(local.has_model);
  EXPECT_EQ(local.cluster.placement, "");  // the round-robin default
}

TEST(ConfigReference, MarkdownMentionsEveryKey) {
  const std::string md = config_reference_markdown();
  EXPECT_EQ(md.rfind("| key | type | default | help |\n|---|---|---|---|\n", 0), 0u) << md;
  const std::string s = "model.layer.stages[].";
  const std::vector<std::string> keys = {"model",
                                         "model.hidden_size",
                                         "model.layers",
                                         "model.layer",
                                         "model.layer.input_norm",
                                         "model.layer.stages",
                                         s + "experts",
                                         s + "ffn_hidden_size",
                                         s + "activation",
                                         s + "routing",
                                         s + "routing.kind",
                                         s + "routing.normalize",
                                         s + "routing.k",
                                         s + "routing.k_avg",
                                         s + "routing.k_min",
                                         s + "routing.k_max",
                                         s + "routing.budget",
                                         s + "routing.importance",
                                         s + "routing.importance.causal_correction",
                                         s + "aggregation",
                                         s + "aggregation.kind",
                                         s + "aggregation.levels",
                                         s + "aggregation.dim",
                                         s + "aggregation.edges",
                                         s + "shared_expert",
                                         s + "shared_expert.ffn_hidden_size",
                                         s + "shared_expert.mix",
                                         s + "capacity_factor",
                                         s + "aux_loss",
                                         s + "aux_loss.load_balance",
                                         s + "aux_loss.z_loss",
                                         "cluster",
                                         "cluster.workers",
                                         "cluster.coordinator",
                                         "cluster.http",
                                         "cluster.ucx_tls",
                                         "cluster.ucx_peer_failure",
                                         "cluster.idle_spin_us",
                                         "cluster.client_spin_us",
                                         "cluster.chunk_rows",
                                         "cluster.heartbeat_ms",
                                         "cluster.dead_after_ms",
                                         "cluster.request_timeout_ms",
                                         "cluster.startup_timeout_ms",
                                         "cluster.liveness_check_ms",
                                         "cluster.coordinator_timeout_ms",
                                         "cluster.state_file",
                                         "cluster.restart_workers",
                                         "cluster.checkpoint_every_steps",
                                         "cluster.checkpoint_dir",
                                         "cluster.checkpoint_keep",
                                         "cluster.transport",
                                         "cluster.worker_device",
                                         "cluster.worker_memory_mb",
                                         "cluster.placement",
                                         "cluster.replicas",
                                         "cluster.rebalance",
                                         "cluster.rebalance.every_steps",
                                         "cluster.rebalance.window_steps",
                                         "cluster.rebalance.min_gain",
                                         "cluster.rebalance.slots_per_worker",
                                         "cluster.rebalance.max_moves",
                                         "cluster.rebalance.min_replicas",
                                         "cluster.auth",
                                         "cluster.auth.secret_file"};
  for (const std::string& key : keys) EXPECT_NE(md.find("| `" + key + "` |"), std::string::npos) << key;
  EXPECT_EQ(count(md, "\n| `"), keys.size()) << md;  // one row per setting, nothing else
  EXPECT_NE(md.find("| `model.hidden_size` | int > 0, <= 1048576 | required |"), std::string::npos) << md;
  EXPECT_NE(md.find("Only with `routing.kind: dynamic`"), std::string::npos) << md;
  EXPECT_NE(md.find("| `model` | map, optional | absent |"), std::string::npos) << md;
  EXPECT_NE(md.find("| `cluster` | map, optional | absent |"), std::string::npos) << md;
  EXPECT_NE(md.find("| `cluster.workers` | int >= 1, <= 65536 | `4` |"), std::string::npos) << md;
  EXPECT_NE(md.find("| `cluster.coordinator` | string | `127.0.0.1:0` |"), std::string::npos) << md;
  EXPECT_NE(md.find("| `cluster.ucx_tls` | string | `\"\"` |"), std::string::npos) << md;
  EXPECT_NE(md.find("| `cluster.placement` | path | `\"\"` |"), std::string::npos) << md;
}

}  // namespace
}  // namespace sy
