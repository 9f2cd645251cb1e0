// The model configuration (docs: README "Config reference", METHODS.md §3.1).
//
// Every setting is declared exactly once, in core/src/config_schema.cc, with its YAML key,
// type, default, constraint and help text. `load_config` parses YAML with yaml-cpp, rejects
// unknown keys, wrong types and impossible values with a `sy::Error` of kind `config` whose
// message names the file, line and full key path, e.g.
//   configs/x.yaml:7: model.layer.stages[0].routing.k: 9 exceeds stages[0].experts (8)
// and fills the structs below. `config_to_yaml` prints the effective configuration (every
// setting, defaults included) with each setting's help as a comment.
#pragma once

#include <optional>
#include <string>
#include <vector>

namespace sy {

enum class Activation { swiglu, gelu };
enum class RoutingKind { topk, dynamic };
enum class Budget { exact, round };
enum class AggregationKind { weighted_sum, dag };
enum class DagEdges { all, causal };
enum class SharedMix { add, coefficient };
enum class InputNorm { none, rmsnorm };

struct RoutingConfig {
  RoutingKind kind = RoutingKind::topk;
  bool normalize = true;
  // topk
  int k = 2;
  // dynamic (DA-MoE)
  double k_avg = 2.0;
  int k_min = 1;
  int k_max = 0;  // resolved by load_config: defaults to the stage's `experts`
  Budget budget = Budget::exact;
  bool causal_correction = false;  // routing.importance.causal_correction
};

struct AggregationConfig {
  AggregationKind kind = AggregationKind::weighted_sum;
  // dag (DAG-MoE)
  int levels = 2;
  int dim = 0;  // resolved by load_config: defaults to hidden_size / 4
  DagEdges edges = DagEdges::all;
};

struct SharedExpertConfig {
  bool enabled = false;  // true when the `shared_expert:` map is present
  int ffn_hidden_size = 0;
  SharedMix mix = SharedMix::add;
};

struct AuxLossConfig {
  double load_balance = 0.0;
  double z_loss = 0.0;
};

struct StageConfig {
  int experts = 0;
  int ffn_hidden_size = 0;
  Activation activation = Activation::swiglu;
  RoutingConfig routing;
  AggregationConfig aggregation;
  SharedExpertConfig shared_expert;
  double capacity_factor = 0.0;
  AuxLossConfig aux_loss;
};

struct LayerConfig {
  InputNorm input_norm = InputNorm::none;
  std::vector<StageConfig> stages;
};

struct ModelConfig {
  int hidden_size = 0;
  int layers = 1;
  LayerConfig layer;
};

struct Config {
  std::string source;  // file path it was read from ("<string>" for load_config_string)
  ModelConfig model;
};

// Throws sy::Error(ErrorKind::config) on any problem; never returns a partial config.
Config load_config(const std::string& path);
Config load_config_string(const std::string& yaml_text, const std::string& source_name = "<string>");

// Effective configuration as YAML, every setting present, help text as trailing comments.
std::string config_to_yaml(const Config& config);

// Reference of every setting (key, type, default, help) as a Markdown table, for the README.
std::string config_reference_markdown();

const char* to_string(Activation v);
const char* to_string(RoutingKind v);
const char* to_string(Budget v);
const char* to_string(AggregationKind v);
const char* to_string(DagEdges v);
const char* to_string(SharedMix v);
const char* to_string(InputNorm v);

}  // namespace sy
