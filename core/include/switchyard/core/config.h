// The configuration (docs: README "Config reference", METHODS.md §3.1): the model and the cluster.
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

// The cluster: how `switchyard up` starts it and how its processes talk and watch each other.
// Member initializers equal the schema's defaults (a file without `cluster:` gets these).
// When and how a running cluster moves replicas to follow the measured load (cluster.rebalance).
struct RebalancePolicy {
  int every_steps = 0;      // plan every this many training steps; 0 = only on `switchyard rebalance`
  int window_steps = 100;   // the load window the coordinator keeps and plans from
  double min_gain = 0.05;   // rebalance when planned balancedness beats the current by this
  int slots_per_worker = 0; // K, replicas per worker per (layer, stage); 0 = ceil(experts / workers) + 1
  int max_moves = -1;       // replicas a rebalance may create; -1 = no cap
  int min_replicas = 1;     // planned placements keep every expert on at least this many workers
};

struct ClusterConfig {
  int workers = 4;                          // worker processes `switchyard up` starts
  std::string coordinator = "127.0.0.1:0";  // "host:port" (port 0: any free port)
  std::string http = "127.0.0.1:0";         // the coordinator's /metrics and dashboard; "" = off
  std::string ucx_tls;                      // exported as UCX_TLS; "" = UCX's own choice
  bool ucx_peer_failure = true;             // UCP_ERR_HANDLING_MODE_PEER on data-plane endpoints
  int idle_spin_us = 0;                     // workers: spin after the last progress before sleeping on events
  int client_spin_us = 30;                  // clients awaiting replies: spin after the last reply landed
  int chunk_rows = 256;                     // rows per data-plane request (a worker's share is split); 0 = one
  int heartbeat_ms = 500;
  int dead_after_ms = 3000;                 // > heartbeat_ms
  int request_timeout_ms = 10000;
  int startup_timeout_ms = 120000;          // waits at start (coordinator, workers, a loaded model)
  int liveness_check_ms = 500;              // how often a waiting client asks who is alive
  int coordinator_timeout_ms = 15000;       // workers and clients go on without the coordinator this long
  std::string state_file;                   // the coordinator's state, for a restart; "" = none
  bool restart_workers = false;             // switchyard up restarts a local worker that died
  int checkpoint_every_steps = 0;           // a training client checkpoints every N steps; 0 = off
  std::string checkpoint_dir;               // where: step-{S}/ and `latest` (absolute); needed when N > 0
  int checkpoint_keep = 2;                  // complete checkpoints kept (older ones deleted)
  std::string transport = "ucx";            // data plane: "ucx" or "inprocess" (one process, tests)
  std::string worker_device = "cpu";        // switchyard up's workers: "cpu", or "cuda" (worker i on cuda:i)
  int worker_memory_mb = 4096;              // per-worker budget for expert replicas
  std::string placement;                    // placement YAML, absolute path; "" = round-robin default
  int replicas = 1;                         // replicas per expert of the default placement, <= workers
  RebalancePolicy rebalance;
  std::string auth_secret_file;             // cluster.auth.secret_file, absolute; "" = $SWITCHYARD_SECRET or none

  int64_t worker_memory_bytes() const { return int64_t{worker_memory_mb} << 20; }
};

struct Config {
  std::string source;  // file path it was read from ("<string>" for load_config_string)
  bool has_model = false;    // the file has a `model:` section
  bool has_cluster = false;  // the file has a `cluster:` section (else `cluster` holds the defaults)
  ModelConfig model;
  ClusterConfig cluster;

  // The model, or a config error "<source>: no `model:` section ..." for commands that need one.
  const ModelConfig& require_model() const;
};

// True when some stage of the layer routes dynamically (DA-MoE) and so needs token importance.
bool needs_importance(const ModelConfig& model);

// "host:port" with host a name, an IPv4 address or a bracketed IPv6 address ("[::1]:5000"),
// and port 0..65535. Brackets are removed from `host`.
struct HostPort {
  std::string host;
  int port = 0;
};
std::optional<HostPort> parse_host_port(std::string_view text);

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
