// The configuration schema: every setting declared once, in `kSchema` below, and a small
// generic walker that parses YAML against it, fills defaults, prints the effective
// configuration and the Markdown reference (the UCX `ucs_config_field_t` pattern).
//
// Adding a setting = adding one row to `kSchema` (and the member to config.h). Rows are in
// document order; a row may only depend on rows above it (its `when` discriminator, the
// settings its computed default or its cross-field check reads).
#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <span>
#include <sstream>
#include <initializer_list>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "switchyard/core/config.h"
#include "switchyard/core/yaml_text.h"
#include "switchyard/core/error.h"

namespace sy {
namespace {

// ---- YAML spellings of the enums, in enum order (to_string and the schema share them) ----

constexpr std::string_view kActivationNames[] = {"swiglu", "gelu"};
constexpr std::string_view kRoutingKindNames[] = {"topk", "dynamic"};
constexpr std::string_view kBudgetNames[] = {"exact", "round"};
constexpr std::string_view kAggregationKindNames[] = {"weighted_sum", "dag"};
constexpr std::string_view kDagEdgesNames[] = {"all", "causal"};
constexpr std::string_view kSharedMixNames[] = {"add", "coefficient"};
constexpr std::string_view kInputNormNames[] = {"none", "rmsnorm"};

template <class E, std::size_t N>
const char* spelling(E v, const std::string_view (&names)[N]) {
  const auto i = static_cast<std::size_t>(v);
  return i < N ? names[i].data() : "?";
}

// ---- Schema vocabulary ----

enum class Type {
  integer,
  real,
  boolean,
  choice,
  string,  // any scalar text
  path,    // a file path; a relative one resolves against the config file's directory, stored absolute
  map,
  map_list,
};

enum class Need {
  required,   // absent is an error
  defaulted,  // absent: `def` (YAML text; maps: every child takes its own default)
  computed,   // absent: `compute` derives it from settings above; `def` says how, for people
  optional,   // maps only: absent leaves the presence flag false
};

enum class Bound { none, ge, gt };  // value >= limit, value > limit

// The structs a row's accessor reaches: the config, and the stage being read.
struct Scope {
  Config* config = nullptr;
  StageConfig* stage = nullptr;
};

// Type-erased reference to an enum member.
struct EnumRef {
  void* p;
  int (*get)(const void*);
  void (*set)(void*, int);
};

// Where a row's value lives: scalars their member, optional maps their presence flag, lists the
// vector of element structs. Plain maps have no slot.
using Slot =
    std::variant<std::monostate, int*, double*, bool*, EnumRef, std::string*, std::vector<StageConfig>*>;

Slot slot_of(int& v) { return &v; }
Slot slot_of(std::string& v) { return &v; }
Slot slot_of(double& v) { return &v; }
Slot slot_of(bool& v) { return &v; }
Slot slot_of(std::vector<StageConfig>& v) { return &v; }
template <class E>
requires std::is_enum_v<E> Slot slot_of(E& v) {
  return EnumRef{&v, [](const void* p) { return static_cast<int>(*static_cast<const E*>(p)); },
                 [](void* p, int i) { *static_cast<E*>(p) = static_cast<E>(i); }};
}

#define SY_CONFIG(member) [](const Scope& s) -> Slot { return slot_of(s.config->member); }
#define SY_MODEL(member) [](const Scope& s) -> Slot { return slot_of(s.config->model.member); }
#define SY_CLUSTER(member) [](const Scope& s) -> Slot { return slot_of(s.config->cluster.member); }
#define SY_STAGE(member) [](const Scope& s) -> Slot { return slot_of(s.stage->member); }

struct Field {
  std::string_view path{};  // schema path; "[]" marks the elements of a list
  Type type = Type::integer;
  Need need = Need::defaulted;
  std::string_view def{};  // defaulted: the default as YAML text; computed: how it is derived
  Bound bound = Bound::none;
  double limit = 0;
  double upper = 0;  // > 0: also value <= upper (sizes, so that the products below cannot overflow)
  std::span<const std::string_view> choices{};  // Type::choice: allowed spellings, in enum order
  std::string_view when{};                      // "kind: dynamic": only applies when the sibling `kind` is `dynamic`
  std::string_view help{};
  Slot (*slot)(const Scope&) = nullptr;
  int (*compute)(const Scope&) = nullptr;        // Need::computed
  std::string (*check)(const Scope&) = nullptr;  // cross-field check: "" or what is wrong
};

std::string format_real(double v) {
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof buf, v);
  return std::string(buf, r.ptr);
}

// Upper bounds of the sizes, so that their products (tensor sizes, the placement's byte
// counts) stay far from int64 overflow; a model past kMaxStageParams is refused naming the key.
constexpr double kMaxWidth = 1 << 20;    // hidden_size, ffn_hidden_size, aggregation.dim
constexpr double kMaxExperts = 1 << 16;  // experts of one stage
constexpr double kMaxLayers = 1 << 12;
constexpr double kMaxLevels = 1 << 10;   // aggregation.levels
constexpr double kMaxWorkers = 1 << 16;  // cluster.workers, slots_per_worker
// capacity_factor: any value >= experts is already dropless; a huge one overflowed the int64
// capacity ceil(cf * assignments / E) the router computes (undefined behaviour).
constexpr double kMaxCapacityFactor = 1e6;
constexpr int64_t kMaxStageParams = int64_t{1} << 40;  // one stage's parameters over all layers

// a * b, or false when it overflows int64.
bool mul(int64_t a, int64_t b, int64_t* out) { return !__builtin_mul_overflow(a, b, out); }

// The parameters of one stage over all layers (router, routed experts, shared expert, DAG), as
// layer_param_specs lays them out; "" when within kMaxStageParams, else what is too large.
std::string check_stage_size(const ModelConfig& m, const StageConfig& st) {
  const int64_t d = m.hidden_size, e = st.experts, f = st.ffn_hidden_size;
  const int64_t mats = st.activation == Activation::swiglu ? 3 : 2;
  int64_t experts = 0, per_layer = 0, total = 0;
  bool ok = mul(e, mats, &experts) && mul(experts, f, &experts) && mul(experts, d, &experts);
  int64_t extra = e * d + d;  // router, norm: both within the bounds above
  if (st.shared_expert.enabled) extra += 3 * int64_t{st.shared_expert.ffn_hidden_size} * d + 2 * d + 2;
  if (st.aggregation.kind == AggregationKind::dag) {
    const int64_t dg = st.aggregation.dim;
    int64_t dag = 0;
    ok = ok && mul(2 * d + 2 * dg * d + 4 * dg * dg, st.aggregation.levels, &dag);
    extra += ok ? dag : 0;
  }
  ok = ok && !__builtin_add_overflow(experts, extra, &per_layer) && mul(per_layer, m.layers, &total);
  if (ok && total <= kMaxStageParams) return "";
  return "the stage needs " + (ok ? std::to_string(total) : std::string("more than 2^63")) + " parameters over " +
         std::to_string(m.layers) + " layer(s) (" + std::to_string(e) + " experts x " + std::to_string(mats) + " x ffn_hidden_size " +
         std::to_string(f) + " x hidden_size " + std::to_string(d) +
         " each, plus router, shared expert and DAG), over the limit of 2^40 = " + std::to_string(kMaxStageParams);
}

const std::string kDynamicChain = "; dynamic routing needs 1 <= k_min <= k_avg <= k_max <= experts";

// A string setting with a few allowed values (a choice setting keeps an enum; these keep the text).
std::string check_one_of(const std::string& value, std::initializer_list<std::string_view> allowed) {
  std::string list;
  for (std::string_view a : allowed) {
    if (value == a) return "";
    list += (list.empty() ? "" : ", ") + std::string(a);
  }
  return "\"" + value + "\" is not one of: " + list;
}

// UCX_TLS: comma-separated transport names ("sm,self", "tcp,self", "^ib", "all").
std::string check_ucx_tls(std::string_view tls) {
  if (tls.empty()) return "";
  std::size_t start = 0;
  while (true) {
    const std::size_t end = std::min(tls.find(',', start), tls.size());
    const std::string_view name = tls.substr(start, end - start);
    if (name.empty() || name == "^") {
      return "\"" + std::string(tls) + "\" has an empty transport name; expected comma-separated UCX transports, e.g. \"sm,self\"";
    }
    for (std::size_t i = 0; i < name.size(); ++i) {
      const char c = name[i];
      const bool ok = std::isalnum(static_cast<unsigned char>(c)) || c == '_' || (c == '^' && i == 0 && start == 0);
      if (!ok) {
        return "\"" + std::string(tls) + "\": unexpected character '" + std::string(1, c) +
               "'; expected comma-separated UCX transports without spaces, e.g. \"sm,self\"";
      }
    }
    if (end == tls.size()) return "";
    start = end + 1;
  }
}

// clang-format off
const Field kSchema[] = {
  {.path = "model", .type = Type::map, .need = Need::optional, .def = "absent",
   .help = "The model: its width and its MoE layer. A file holds `model`, `cluster` or both.",
   .slot = SY_CONFIG(has_model)},
  {.path = "model.hidden_size", .need = Need::required, .bound = Bound::gt, .upper = kMaxWidth,
   .help = "Model width d (token vector size).", .slot = SY_MODEL(hidden_size)},
  {.path = "model.layers", .def = "1", .bound = Bound::ge, .limit = 1, .upper = kMaxLayers,
   .help = "Number of MoE layers, all configured like `layer`.", .slot = SY_MODEL(layers)},
  {.path = "model.layer", .type = Type::map, .need = Need::required,
   .help = "One MoE layer: an input norm and one or more stages."},
  {.path = "model.layer.input_norm", .type = Type::choice, .def = "none", .choices = kInputNormNames,
   .help = "Norm applied to the layer input before the first stage.",
   .slot = SY_MODEL(layer.input_norm)},
  {.path = "model.layer.stages", .type = Type::map_list, .need = Need::required,
   .help = "The stages, applied in order on the residual stream (two for CartesianMoE).",
   .slot = SY_MODEL(layer.stages)},

  {.path = "model.layer.stages[].experts", .need = Need::required, .bound = Bound::ge, .limit = 1,
   .upper = kMaxExperts, .help = "Number of routed experts E.", .slot = SY_STAGE(experts),
   .check = [](const Scope& s) { return check_stage_size(s.config->model, *s.stage); }},
  {.path = "model.layer.stages[].ffn_hidden_size", .need = Need::required, .bound = Bound::gt, .upper = kMaxWidth,
   .help = "Hidden width f of each routed expert.", .slot = SY_STAGE(ffn_hidden_size)},
  {.path = "model.layer.stages[].activation", .type = Type::choice, .def = "swiglu",
   .choices = kActivationNames, .help = "Routed expert FFN activation.", .slot = SY_STAGE(activation)},

  {.path = "model.layer.stages[].routing", .type = Type::map,
   .help = "How each token selects experts and gates them."},
  {.path = "model.layer.stages[].routing.kind", .type = Type::choice, .def = "topk",
   .choices = kRoutingKindNames, .help = "topk: fixed k per token; dynamic: DA-MoE per-token k.",
   .slot = SY_STAGE(routing.kind)},
  {.path = "model.layer.stages[].routing.normalize", .type = Type::boolean, .def = "true",
   .help = "Renormalize the gates over the selected experts.", .slot = SY_STAGE(routing.normalize)},
  {.path = "model.layer.stages[].routing.k", .def = "2", .bound = Bound::ge, .limit = 1,
   .when = "kind: topk", .help = "Experts per token, at most `experts`.", .slot = SY_STAGE(routing.k),
   .check = [](const Scope& s) -> std::string {
     const StageConfig& st = *s.stage;
     if (st.routing.k <= st.experts) return "";
     return std::to_string(st.routing.k) + " exceeds experts (" + std::to_string(st.experts) +
            ") of this stage";
   }},
  {.path = "model.layer.stages[].routing.k_avg", .type = Type::real, .def = "2", .when = "kind: dynamic",
   .help = "Average experts per token; 1 <= k_min <= k_avg <= k_max <= experts.", .slot = SY_STAGE(routing.k_avg),
   .check = [](const Scope& s) -> std::string {
     const RoutingConfig& r = s.stage->routing;
     if (r.k_avg < r.k_min) {
       return "k_avg (" + format_real(r.k_avg) + ") is below k_min (" + std::to_string(r.k_min) + ")" +
              kDynamicChain;
     }
     if (r.k_avg > r.k_max) {
       return "k_avg (" + format_real(r.k_avg) + ") exceeds k_max (" + std::to_string(r.k_max) + ")" +
              kDynamicChain;
     }
     return "";
   }},
  {.path = "model.layer.stages[].routing.k_min", .def = "1", .bound = Bound::ge, .limit = 1,
   .when = "kind: dynamic", .help = "Fewest experts a token gets.", .slot = SY_STAGE(routing.k_min)},
  {.path = "model.layer.stages[].routing.k_max", .need = Need::computed, .def = "`experts` of the stage",
   .bound = Bound::ge, .limit = 1, .when = "kind: dynamic", .help = "Most experts a token gets.",
   .slot = SY_STAGE(routing.k_max), .compute = [](const Scope& s) { return s.stage->experts; },
   .check = [](const Scope& s) -> std::string {
     const StageConfig& st = *s.stage;
     if (st.routing.k_max <= st.experts) return "";
     return std::to_string(st.routing.k_max) + " exceeds experts (" + std::to_string(st.experts) +
            ") of this stage";
   }},
  {.path = "model.layer.stages[].routing.budget", .type = Type::choice, .def = "exact",
   .choices = kBudgetNames, .when = "kind: dynamic",
   .help = "exact: k_avg*L slots per sequence, water-filled; round: per-token rounding.",
   .slot = SY_STAGE(routing.budget)},
  {.path = "model.layer.stages[].routing.importance", .type = Type::map, .when = "kind: dynamic",
   .help = "How token importance is derived from attention."},
  {.path = "model.layer.stages[].routing.importance.causal_correction", .type = Type::boolean,
   .def = "false", .help = "Divide received attention by the number of queries that can see the token.",
   .slot = SY_STAGE(routing.causal_correction)},

  {.path = "model.layer.stages[].aggregation", .type = Type::map,
   .help = "How the selected experts' outputs are combined."},
  {.path = "model.layer.stages[].aggregation.kind", .type = Type::choice, .def = "weighted_sum",
   .choices = kAggregationKindNames, .help = "weighted_sum: gate-weighted sum; dag: DAG-MoE levels.",
   .slot = SY_STAGE(aggregation.kind)},
  {.path = "model.layer.stages[].aggregation.levels", .def = "2", .bound = Bound::ge, .upper = kMaxLevels,
   .when = "kind: dag",
   .help = "Number of DAG message-passing levels (0: sum plus input).",
   .slot = SY_STAGE(aggregation.levels)},
  {.path = "model.layer.stages[].aggregation.dim", .need = Need::computed,
   .def = "`hidden_size` / 4, at least 1", .bound = Bound::gt, .upper = kMaxWidth, .when = "kind: dag",
   .help = "Width d_g of the DAG node projections.", .slot = SY_STAGE(aggregation.dim),
   .compute = [](const Scope& s) { return std::max(1, s.config->model.hidden_size / 4); }},
  {.path = "model.layer.stages[].aggregation.edges", .type = Type::choice, .def = "all",
   .choices = kDagEdgesNames, .when = "kind: dag",
   .help = "all: every node sees every node; causal: a node sees itself and higher-gated nodes.",
   .slot = SY_STAGE(aggregation.edges)},

  {.path = "model.layer.stages[].shared_expert", .type = Type::map, .need = Need::optional,
   .def = "absent", .help = "A swiglu expert applied to every token; present = enabled.",
   .slot = SY_STAGE(shared_expert.enabled)},
  {.path = "model.layer.stages[].shared_expert.ffn_hidden_size", .need = Need::required,
   .bound = Bound::gt, .upper = kMaxWidth, .help = "Hidden width of the shared expert.",
   .slot = SY_STAGE(shared_expert.ffn_hidden_size)},
  {.path = "model.layer.stages[].shared_expert.mix", .type = Type::choice, .def = "add",
   .choices = kSharedMixNames, .help = "add: m + S(u); coefficient: learned 2-way softmax mix.",
   .slot = SY_STAGE(shared_expert.mix)},

  {.path = "model.layer.stages[].capacity_factor", .type = Type::real, .def = "0", .bound = Bound::ge,
   .upper = kMaxCapacityFactor,
   .help = "Per-expert capacity ceil(cf * assignments / E); 0 = dropless.",
   .slot = SY_STAGE(capacity_factor)},
  {.path = "model.layer.stages[].aux_loss", .type = Type::map,
   .help = "Auxiliary loss weights (0 = off)."},
  {.path = "model.layer.stages[].aux_loss.load_balance", .type = Type::real, .def = "0",
   .bound = Bound::ge, .help = "Switch load-balancing loss weight.", .slot = SY_STAGE(aux_loss.load_balance)},
  {.path = "model.layer.stages[].aux_loss.z_loss", .type = Type::real, .def = "0", .bound = Bound::ge,
   .help = "Router z-loss weight.", .slot = SY_STAGE(aux_loss.z_loss)},

  {.path = "cluster", .type = Type::map, .need = Need::optional, .def = "absent",
   .help = "The cluster: processes, addresses, failure detection, memory and expert placement.",
   .slot = SY_CONFIG(has_cluster)},
  {.path = "cluster.workers", .def = "4", .bound = Bound::ge, .limit = 1, .upper = kMaxWorkers,
   .help = "Worker processes `switchyard up` starts on this machine.", .slot = SY_CLUSTER(workers)},
  {.path = "cluster.coordinator", .type = Type::string, .def = "127.0.0.1:0",
   .help = "Coordinator address host:port ([v6]:port for IPv6); port 0 = any free port.",
   .slot = SY_CLUSTER(coordinator),
   .check = [](const Scope& s) -> std::string {
     if (parse_host_port(s.config->cluster.coordinator)) return "";
     return "\"" + s.config->cluster.coordinator + "\" is not host:port with a port in 0..65535";
   }},
  {.path = "cluster.http", .type = Type::string, .def = "127.0.0.1:0",
   .help = "Where the coordinator serves HTTP: /metrics (Prometheus text) and the dashboard at / "
           "(README \"Observability\"); host:port, port 0 = any free port (printed as `dashboard at "
           "http://HOST:PORT/`), empty = off. With a cluster secret every request needs its token "
           "(`switchyard http-token`); without one only loopback addresses are allowed.",
   .slot = SY_CLUSTER(http),
   .check = [](const Scope& s) -> std::string {
     const std::string& v = s.config->cluster.http;
     if (v.empty() || parse_host_port(v)) return "";
     return "\"" + v + "\" is not host:port with a port in 0..65535 (or empty: off)";
   }},
  {.path = "cluster.ucx_tls", .type = Type::string, .def = "",
   .help = "UCX transports, exported as UCX_TLS to workers and clients (e.g. sm,self or tcp,self); "
           "empty = UCX's own choice.",
   .slot = SY_CLUSTER(ucx_tls),
   .check = [](const Scope& s) { return check_ucx_tls(s.config->cluster.ucx_tls); }},
  {.path = "cluster.ucx_peer_failure", .type = Type::boolean, .def = "true",
   .help = "Data-plane endpoints ask UCX to fail requests to a dead peer at once (UCP_ERR_HANDLING_MODE_PEER; "
           "UCX 1.13's shared-memory transports refuse it and fall back). Over TCP it costs bandwidth: "
           "`switchyard bench exchange` shows both modes. false: UCX promises no error for a dead peer; the "
           "coordinator's heartbeats (dead_after_ms) are then what fails requests to a dead worker.",
   .slot = SY_CLUSTER(ucx_peer_failure)},
  {.path = "cluster.idle_spin_us", .def = "0", .bound = Bound::ge, .limit = 0,
   .help = "After the last data-plane progress, workers spin this long before they sleep on the "
           "transport's events (UCX: ucp_worker_arm and its fd); 0 = sleep at once. Spinning catches a "
           "request that follows at once; sleeping leaves the cores to the busy processes.",
   .slot = SY_CLUSTER(idle_spin_us)},
  {.path = "cluster.client_spin_us", .def = "30", .bound = Bound::ge, .limit = 0,
   .help = "A client waiting for its workers' replies spins this long after the last one landed before it "
           "sleeps on the transport's events; 0 = sleep at once. The replies of one request arrive close "
           "together: a short spin saves a wake-up per reply (README Performance).",
   .slot = SY_CLUSTER(client_spin_us)},
  {.path = "cluster.chunk_rows", .def = "256", .bound = Bound::ge, .limit = 0,
   .help = "A client sends each worker its rows of a layer stage in requests of at most this many rows, all "
           "at once: the worker computes the first while the rest arrive and answers each as it is done, and "
           "the client takes each answer as it lands (straight into the output rows when they are "
           "contiguous). 0 = one request per worker. `switchyard bench cluster` measures the step per size.",
   .slot = SY_CLUSTER(chunk_rows)},
  {.path = "cluster.heartbeat_ms", .def = "500", .bound = Bound::gt,
   .help = "Interval of worker and client heartbeats to the coordinator.", .slot = SY_CLUSTER(heartbeat_ms)},
  {.path = "cluster.dead_after_ms", .def = "3000", .bound = Bound::gt,
   .help = "A member silent this long is marked dead; more than heartbeat_ms.", .slot = SY_CLUSTER(dead_after_ms),
   .check = [](const Scope& s) -> std::string {
     const ClusterConfig& c = s.config->cluster;
     if (c.dead_after_ms > c.heartbeat_ms) return "";
     return std::to_string(c.dead_after_ms) + " must exceed heartbeat_ms (" + std::to_string(c.heartbeat_ms) + ")";
   }},
  {.path = "cluster.request_timeout_ms", .def = "10000", .bound = Bound::gt,
   .help = "A request to a worker that has not answered after this long fails, naming the worker.",
   .slot = SY_CLUSTER(request_timeout_ms)},
  {.path = "cluster.startup_timeout_ms", .def = "120000", .bound = Bound::gt,
   .help = "How long processes wait at start: a worker or client for the coordinator, a client for every "
           "expected worker and for a model another client loads, the workers for their data-plane world.",
   .slot = SY_CLUSTER(startup_timeout_ms)},
  {.path = "cluster.liveness_check_ms", .def = "500", .bound = Bound::gt,
   .help = "While a client waits on workers it asks the coordinator this often which are alive, so a dead "
           "worker fails the request within about dead_after_ms, not request_timeout_ms.",
   .slot = SY_CLUSTER(liveness_check_ms)},
  {.path = "cluster.coordinator_timeout_ms", .def = "15000", .bound = Bound::gt,
   .help = "How long workers and clients go on without the coordinator (the data plane keeps working) "
           "before they fail saying so; a coordinator restarted within it, from state_file, takes over.",
   .slot = SY_CLUSTER(coordinator_timeout_ms)},
  {.path = "cluster.restart_workers", .type = Type::boolean, .def = "false",
   .help = "switchyard up starts a new process for a local worker that exited or was killed (not when "
           "the cluster stops); it joins as a replacement in the same slot and receives replicas from "
           "the survivors (recovery, then a join rebalance).",
   .slot = SY_CLUSTER(restart_workers)},
  {.path = "cluster.state_file", .type = Type::path, .def = "",
   .help = "Where the coordinator keeps membership, the committed placement and the model (rewritten "
           "atomically on each change); a coordinator started on the same port with it resumes the "
           "cluster without a new model load. Relative to this file; empty = a restart loses the cluster.",
   .slot = SY_CLUSTER(state_file)},
  {.path = "cluster.checkpoint_every_steps", .def = "0", .bound = Bound::ge, .limit = 0,
   .help = "A training client checkpoints the experts (weights and AdamW state, on every worker) after the "
           "optimizer step of every step number that is a multiple of this, into checkpoint_dir, atomically "
           "(README \"Checkpoints\"); with several data-parallel ranks, the first to report the step writes. "
           "0 = off.",
   .slot = SY_CLUSTER(checkpoint_every_steps)},
  {.path = "cluster.checkpoint_dir", .type = Type::path, .def = "",
   .help = "Directory of the periodic checkpoints: step-{S}/ (a worker-{id}.safetensors per worker, "
           "placement.yaml, model.yaml, manifest.yaml) and `latest`, naming the newest complete one. "
           "Relative to this file; the workers and the training client must all see it (one machine or a "
           "shared file system). Required when checkpoint_every_steps > 0.",
   .slot = SY_CLUSTER(checkpoint_dir),
   .check = [](const Scope& s) -> std::string {
     const ClusterConfig& c = s.config->cluster;
     if (c.checkpoint_every_steps == 0 || !c.checkpoint_dir.empty()) return "";
     return "required when cluster.checkpoint_every_steps is set (" + std::to_string(c.checkpoint_every_steps) +
            "): the directory the checkpoints go to";
   }},
  {.path = "cluster.checkpoint_keep", .def = "2", .bound = Bound::ge, .limit = 1,
   .help = "Complete periodic checkpoints kept in checkpoint_dir; older ones are deleted once a newer one "
           "is complete.",
   .slot = SY_CLUSTER(checkpoint_keep)},
  {.path = "cluster.transport", .type = Type::string, .def = "ucx",
   .help = "Data plane between clients and workers: ucx (processes, any host), or inprocess (coordinator, "
           "workers and clients as threads of one process: tests).",
   .slot = SY_CLUSTER(transport),
   .check = [](const Scope& s) { return check_one_of(s.config->cluster.transport, {"ucx", "inprocess"}); }},
  {.path = "cluster.worker_device", .type = Type::string, .def = "cpu",
   .help = "Where the workers `switchyard up` starts hold and compute their replicas: cpu, or cuda (worker i "
           "runs `switchyard worker --device cuda:i`: one GPU each, rows staged through host memory).",
   .slot = SY_CLUSTER(worker_device),
   .check = [](const Scope& s) { return check_one_of(s.config->cluster.worker_device, {"cpu", "cuda"}); }},
  {.path = "cluster.worker_memory_mb", .def = "4096", .bound = Bound::gt,
   .help = "Memory budget per worker for expert replicas, each 4x its weight bytes (weights, gradients, "
           "two AdamW moments).",
   .slot = SY_CLUSTER(worker_memory_mb)},
  {.path = "cluster.placement", .type = Type::path, .def = "",
   .help = "Placement YAML (configs/placement-*.yaml), relative to this file; empty = round-robin default.",
   .slot = SY_CLUSTER(placement)},
  {.path = "cluster.replicas", .def = "1", .bound = Bound::ge, .limit = 1,
   .help = "Replicas per expert in the round-robin default placement, at most `workers`.",
   .slot = SY_CLUSTER(replicas),
   .check = [](const Scope& s) -> std::string {
     const ClusterConfig& c = s.config->cluster;
     if (c.replicas <= c.workers) return "";
     return std::to_string(c.replicas) + " exceeds workers (" + std::to_string(c.workers) +
            "); replicas of one expert need distinct workers";
   }},
  {.path = "cluster.rebalance", .type = Type::map,
   .help = "Live rebalancing: the load window the coordinator keeps, and when it re-plans the placement "
           "of a training job by itself (`switchyard rebalance` works whatever these say)."},
  {.path = "cluster.rebalance.every_steps", .def = "0", .bound = Bound::ge, .limit = 0,
   .help = "Plan from the window every this many training steps and rebalance when it gains min_gain; "
           "0 = only on request.", .slot = SY_CLUSTER(rebalance.every_steps)},
  {.path = "cluster.rebalance.window_steps", .def = "100", .bound = Bound::ge, .limit = 1,
   .help = "Steps of per-expert load the coordinator keeps (the window `status` and the planner use).",
   .slot = SY_CLUSTER(rebalance.window_steps)},
  {.path = "cluster.rebalance.min_gain", .type = Type::real, .def = "0.05", .bound = Bound::ge,
   .help = "Rebalance when the planned balancedness exceeds the current one by at least this.",
   .slot = SY_CLUSTER(rebalance.min_gain)},
  {.path = "cluster.rebalance.slots_per_worker", .def = "0", .bound = Bound::ge, .limit = 0, .upper = kMaxWorkers,
   .help = "Replicas one worker may hold per (layer, stage) in a planned placement; 0 = ceil(experts / "
           "workers) + 1.", .slot = SY_CLUSTER(rebalance.slots_per_worker)},
  {.path = "cluster.rebalance.max_moves", .def = "-1", .bound = Bound::ge, .limit = -1,
   .help = "Replicas one rebalance may create (copy to a new holder); -1 = no cap.",
   .slot = SY_CLUSTER(rebalance.max_moves)},
  {.path = "cluster.rebalance.min_replicas", .def = "1", .bound = Bound::ge, .limit = 1,
   .help = "Placements planned from load keep every expert on at least this many workers (standby "
           "replicas with share 0 where balance needs fewer), so that losing min_replicas - 1 workers "
           "loses no expert; at most `workers`.",
   .slot = SY_CLUSTER(rebalance.min_replicas),
   .check = [](const Scope& s) -> std::string {
     const ClusterConfig& c = s.config->cluster;
     if (c.rebalance.min_replicas <= c.workers) return "";
     return std::to_string(c.rebalance.min_replicas) + " exceeds workers (" + std::to_string(c.workers) + ")";
   }},
  {.path = "cluster.auth", .type = Type::map,
   .help = "Authentication of the control channel (README \"Security\")."},
  {.path = "cluster.auth.secret_file", .type = Type::path, .def = "",
   .help = "File (mode 600, relative to this file) holding the cluster's shared secret, at least 16 bytes; "
           "every control connection proves it (mutual HMAC-SHA256). Empty = the SWITCHYARD_SECRET "
           "environment variable, or no authentication and loopback-only servers.",
   .slot = SY_CLUSTER(auth_secret_file)},
};
// clang-format on

#undef SY_CONFIG
#undef SY_MODEL
#undef SY_CLUSTER
#undef SY_STAGE

// ---- Schema helpers ----

std::string_view parent_of(std::string_view path) {
  const auto dot = path.rfind('.');
  return dot == std::string_view::npos ? std::string_view() : path.substr(0, dot);
}

std::string_view key_of(std::string_view path) {
  const auto dot = path.rfind('.');
  return dot == std::string_view::npos ? path : path.substr(dot + 1);
}

// The schema path under which a map-valued row's children live.
std::string child_schema(const Field& f) { return std::string(f.path) + (f.type == Type::map_list ? "[]" : ""); }

std::vector<const Field*> children_of(std::string_view schema) {
  std::vector<const Field*> out;
  for (const Field& f : kSchema) {
    if (parent_of(f.path) == schema) out.push_back(&f);
  }
  return out;
}

// "routing" for "model.layer.stages[].routing.k": the name of the map a row sits in.
std::string_view section_of(const Field& f) {
  std::string_view p = key_of(parent_of(f.path));
  if (p.ends_with("[]")) p.remove_suffix(2);
  return p;
}

std::string_view when_key(const Field& f) { return f.when.substr(0, f.when.find(':')); }
std::string_view when_value(const Field& f) { return f.when.substr(f.when.find(": ") + 2); }

const Field& sibling(const Field& f, std::string_view key) {
  for (const Field& g : kSchema) {
    if (parent_of(g.path) == parent_of(f.path) && key_of(g.path) == key) return g;
  }
  throw_runtime_error("config schema: no sibling `" + std::string(key) + "` of " + std::string(f.path));
}

std::string_view choice_value(const Field& f, const Scope& s) {
  const EnumRef ref = std::get<EnumRef>(f.slot(s));
  const int i = ref.get(ref.p);
  return i >= 0 && static_cast<std::size_t>(i) < f.choices.size() ? f.choices[i] : "?";
}

// The current value of the discriminator a row's `when` names ("" when the row has no `when`).
std::string_view discriminator(const Field& f, const Scope& s) {
  return f.when.empty() ? std::string_view() : choice_value(sibling(f, when_key(f)), s);
}

bool applies(const Field& f, const Scope& s) { return f.when.empty() || discriminator(f, s) == when_value(f); }

std::string join_choices(std::span<const std::string_view> choices, std::string_view sep) {
  std::string out;
  for (std::size_t i = 0; i < choices.size(); ++i) {
    if (i) out += sep;
    out += choices[i];
  }
  return out;
}

std::string type_name(const Field& f) {
  switch (f.type) {
    case Type::integer: return "an integer";
    case Type::real: return "a number";
    case Type::boolean: return "true or false";
    case Type::choice: return "one of: " + join_choices(f.choices, ", ");
    case Type::string: return "a string";
    case Type::path: return "a file path";
    case Type::map: return "a map";
    case Type::map_list: return "a non-empty list of maps";
  }
  return "?";
}

std::string bound_text(const Field& f) {
  std::string out;
  if (f.bound != Bound::none) out = std::string(f.bound == Bound::ge ? ">= " : "> ") + format_real(f.limit);
  if (f.upper > 0) out += (out.empty() ? "<= " : ", <= ") + format_real(f.upper);
  return out;
}

// ---- Scalar conversion: text -> member, shared by YAML values and the table's defaults ----

// Stores `text` through the row's slot; returns "" or what is wrong with the text.
std::string store_scalar(const Field& f, const Scope& s, std::string_view text) {
  const auto quoted = [&] { return "expected " + type_name(f) + ", got \"" + std::string(text) + "\""; };
  double value = 0;  // numeric value, for the bound check
  switch (f.type) {
    case Type::integer: {
      int v = 0;
      const YamlInt r = parse_yaml_int(text, v);
      if (r == YamlInt::out_of_range) return "\"" + std::string(text) + "\" is out of range for an integer";
      if (r == YamlInt::not_an_integer) return quoted();
      *std::get<int*>(f.slot(s)) = v;
      value = v;
      break;
    }
    case Type::real: {
      double v = 0;
      if (!parse_yaml_double(text, v)) {
        double any = 0;
        std::string_view t = text;
        if (t.starts_with('+')) t.remove_prefix(1);
        const auto r = std::from_chars(t.data(), t.data() + t.size(), any);
        if (r.ec == std::errc() && r.ptr == t.data() + t.size() && !t.empty())
          return "expected a finite number, got \"" + std::string(text) + "\"";
        return quoted();
      }
      *std::get<double*>(f.slot(s)) = v;
      value = v;
      break;
    }
    case Type::boolean: {
      bool v;
      if (text == "true" || text == "True" || text == "TRUE") v = true;
      else if (text == "false" || text == "False" || text == "FALSE") v = false;
      else return quoted();
      *std::get<bool*>(f.slot(s)) = v;
      return "";
    }
    case Type::choice: {
      const auto it = std::find(f.choices.begin(), f.choices.end(), text);
      if (it == f.choices.end()) return "\"" + std::string(text) + "\" is not " + type_name(f);
      const EnumRef ref = std::get<EnumRef>(f.slot(s));
      ref.set(ref.p, static_cast<int>(it - f.choices.begin()));
      return "";
    }
    case Type::string:
    case Type::path: *std::get<std::string*>(f.slot(s)) = std::string(text); return "";
    case Type::map:
    case Type::map_list: return "not a scalar setting";
  }
  const bool low_ok = f.bound == Bound::none || (f.bound == Bound::ge ? value >= f.limit : value > f.limit);
  if (!low_ok) return "must be " + std::string(f.bound == Bound::ge ? ">= " : "> ") + format_real(f.limit) + ", got " + std::string(text);
  if (f.upper > 0 && value > f.upper) return "must be <= " + format_real(f.upper) + ", got " + std::string(text);
  return "";
}

// A YAML double-quoted scalar.
std::string yaml_quoted(std::string_view text) {
  std::string out = "\"";
  for (const char c : text) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", static_cast<unsigned>(static_cast<unsigned char>(c)));
      out += buf;
    } else {
      out += c;
    }
  }
  return out + "\"";
}

// A relative `path` resolves against the directory of `source` (the config file); stored absolute.
std::string resolve_path(const std::string& source, const std::string& path) {
  namespace fs = std::filesystem;
  if (path.empty()) return path;
  fs::path p(path);
  if (p.is_relative()) p = fs::path(source).parent_path() / p;
  std::error_code ec;
  fs::path abs = fs::absolute(p, ec);
  return (ec ? p : abs).lexically_normal().string();
}

std::string value_text(const Field& f, const Scope& s) {
  const Slot slot = f.slot(s);
  if (const int* const* p = std::get_if<int*>(&slot)) return std::to_string(**p);
  if (const double* const* p = std::get_if<double*>(&slot)) return format_real(**p);
  if (const bool* const* p = std::get_if<bool*>(&slot)) return **p ? "true" : "false";
  if (std::holds_alternative<EnumRef>(slot)) return std::string(choice_value(f, s));
  if (const std::string* const* p = std::get_if<std::string*>(&slot)) return yaml_quoted(**p);
  return "";
}

// ---- Reading YAML against the schema ----

int line_of(const YAML::Mark& mark, int fallback) { return yaml_line(mark, fallback); }

std::string describe(const YAML::Node& n) { return describe_yaml_value(n); }

std::string join_path(const std::string& prefix, std::string_view key) { return yaml_join(prefix, key); }

class Reader {
 public:
  explicit Reader(std::string source) : source_(std::move(source)) {}

  // Reads a map (or null = all defaults) whose rows are the children of schema path `schema`.
  // `line` is where the map is, for errors about keys it lacks.
  void read_map(const YAML::Node& node, std::string_view schema, const std::string& path, int line,
                const Scope& s) const {
    if (node.IsMap()) line = line_of(node.Mark(), line);
    const std::vector<const Field*> rows = children_of(schema);

    using Entry = YamlEntry;
    std::vector<std::string_view> known;
    for (const Field* f : rows) known.push_back(key_of(f->path));
    const std::vector<Entry> entries =
        node.IsMap() ? yaml_map_entries(node, path, line, known,
                                        [&](int l, const std::string& w, const std::string& m) { fail(l, w, m); })
                     : std::vector<Entry>{};

    const auto find = [&](const Field& f) -> const Entry* {
      for (const Entry& e : entries) {
        if (e.key == key_of(f.path)) return &e;
      }
      return nullptr;
    };

    for (const Field* f : rows) {
      const Entry* e = find(*f);
      const std::string child_path = join_path(path, key_of(f->path));
      if (!applies(*f, s)) {
        if (e) {
          const std::string section(section_of(*f));
          fail(e->line, child_path,
               section + "." + std::string(key_of(f->path)) + " is a setting of " + section + "." +
                   std::string(when_key(*f)) + ": " + std::string(when_value(*f)) + ", not " +
                   std::string(discriminator(*f, s)));
        }
        continue;
      }
      if (e) {
        read_value(*f, e->value, e->line, child_path, s);
        continue;
      }
      switch (f->need) {
        case Need::required: fail(line, child_path, "required setting is missing");
        case Need::optional: *std::get<bool*>(f->slot(s)) = false; break;
        case Need::computed: *std::get<int*>(f->slot(s)) = f->compute(s); break;
        case Need::defaulted:
          if (f->type == Type::map) {
            read_map(YAML::Node(), child_schema(*f), child_path, line, s);
          } else if (std::string err = store_scalar(*f, s, f->def); !err.empty()) {
            throw_runtime_error("config schema: bad default for " + std::string(f->path) + ": " + err);
          }
          break;
      }
    }

    for (const Field* f : rows) {
      if (!f->check || !applies(*f, s)) continue;
      if (std::string err = f->check(s); !err.empty()) {
        const Entry* e = find(*f);
        fail(e ? e->line : line, join_path(path, key_of(f->path)), err);
      }
    }
  }

  [[noreturn]] void fail(int line, const std::string& path, const std::string& message) const {
    throw_config_error(source_ + ":" + std::to_string(line) + ": " + (path.empty() ? "(top level)" : path) + ": " +
                       message);
  }

 private:
  void read_value(const Field& f, const YAML::Node& value, int line, const std::string& path, const Scope& s) const {
    switch (f.type) {
      case Type::map:
        if (!value.IsMap() && !value.IsNull()) fail(line, path, "expected a map, got " + describe(value));
        if (f.need == Need::optional) *std::get<bool*>(f.slot(s)) = true;
        read_map(value, child_schema(f), path, line, s);
        return;
      case Type::map_list: {
        if (!value.IsSequence() || value.size() == 0) {
          fail(line, path,
               "expected " + type_name(f) + ", got " + (value.IsSequence() ? "an empty list" : describe(value)));
        }
        std::vector<StageConfig>& items = *std::get<std::vector<StageConfig>*>(f.slot(s));
        items.assign(value.size(), StageConfig{});
        for (std::size_t i = 0; i < value.size(); ++i) {
          const YAML::Node item = value[i];
          const std::string item_path = path + "[" + std::to_string(i) + "]";
          const int item_line = item.IsNull() ? line : line_of(item.Mark(), line);
          if (!item.IsMap() && !item.IsNull()) fail(item_line, item_path, "expected a map, got " + describe(item));
          Scope inner = s;
          inner.stage = &items[i];
          read_map(item, child_schema(f), item_path, item_line, inner);
        }
        return;
      }
      case Type::integer:
      case Type::real:
      case Type::boolean:
      case Type::choice:
        if (!value.IsScalar()) fail(line, path, "expected " + type_name(f) + ", got " + describe(value));
        // A quoted scalar is a string: `experts: "8"` is not an integer.
        if (value.Tag() == "!" && f.type != Type::choice) {
          fail(line, path, "expected " + type_name(f) + ", got the quoted string " + describe(value));
        }
        if (std::string err = store_scalar(f, s, value.Scalar()); !err.empty()) fail(line, path, err);
        return;
      case Type::string:
      case Type::path: {
        if (!value.IsScalar()) fail(line, path, "expected " + type_name(f) + ", got " + describe(value));
        if (std::string err = store_scalar(f, s, value.Scalar()); !err.empty()) fail(line, path, err);
        std::string& text = *std::get<std::string*>(f.slot(s));
        if (f.type == Type::path) text = resolve_path(source_, text);
        return;
      }
    }
  }

  std::string source_;
};

// ---- Printing ----

void emit(std::string& out, std::string line, std::string_view comment) {
  constexpr std::size_t kCommentColumn = 40;
  if (!comment.empty()) {
    line.resize(std::max(line.size() + 2, kCommentColumn), ' ');
    line += "# ";
    line += comment;
  }
  out += line;
  out += '\n';
}

std::string comment_of(const Field& f) {
  std::string c(f.help);
  if (f.type == Type::choice) c += " (" + join_choices(f.choices, " | ") + ")";
  return c;
}

// Prints the rows under `schema` at `indent`; the first line of a list element gets the "- ".
void print_map(std::string& out, std::string_view schema, const Scope& s, std::size_t indent, bool list_item) {
  bool first = true;
  for (const Field* f : children_of(schema)) {
    if (!applies(*f, s)) continue;
    const std::string key(key_of(f->path));
    if (f->need == Need::optional && !*std::get<bool*>(f->slot(s))) {
      emit(out, std::string(indent, ' ') + "# " + key + ": absent", comment_of(*f));
      continue;
    }
    std::string line =
        (first && list_item ? std::string(indent - 2, ' ') + "- " : std::string(indent, ' ')) + key + ":";
    first = false;
    switch (f->type) {
      case Type::map:
        emit(out, line, comment_of(*f));
        print_map(out, child_schema(*f), s, indent + 2, false);
        break;
      case Type::map_list: {
        emit(out, line, comment_of(*f));
        std::vector<StageConfig>& items = *std::get<std::vector<StageConfig>*>(f->slot(s));
        for (StageConfig& item : items) {
          Scope inner = s;
          inner.stage = &item;
          print_map(out, child_schema(*f), inner, indent + 4, true);
        }
        break;
      }
      default: emit(out, line + " " + value_text(*f, s), comment_of(*f)); break;
    }
  }
}

std::string markdown_cell(std::string text) {
  std::string out;
  for (char c : text) {
    if (c == '|') out += '\\';
    out += c;
  }
  return out;
}

}  // namespace

Config load_config_string(const std::string& yaml_text, const std::string& source_name) {
  const Reader reader(source_name);
  YamlDocuments docs;
  try {
    docs = yaml_load_documents(yaml_text);
  } catch (const YAML::Exception& e) {
    throw_config_error(source_name + ":" + std::to_string(line_of(e.mark, 1)) + ": YAML syntax error: " + e.msg);
  }
  if (docs.count > 1) {
    reader.fail(line_of(docs.second, 1), "", "expected one YAML document, found " + std::to_string(docs.count));
  }
  const YAML::Node root = docs.first;
  if (!root.IsMap() && !root.IsNull())
    reader.fail(line_of(root.Mark(), 1), "", "expected a map, got " + describe(root));

  Config config;
  config.source = source_name;
  try {
    reader.read_map(root, "", "", 1, Scope{&config, nullptr});
  } catch (const YAML::Exception& e) {  // not expected: the reader only uses non-throwing accessors
    throw_config_error(source_name + ":" + std::to_string(line_of(e.mark, 1)) + ": " + e.msg);
  }
  if (!config.has_model && !config.has_cluster) {
    reader.fail(root.IsMap() ? line_of(root.Mark(), 1) : 1, "",
                "expected a `model:` section, a `cluster:` section or both, found neither");
  }
  return config;
}

bool needs_importance(const ModelConfig& model) {
  for (const StageConfig& s : model.layer.stages)
    if (s.routing.kind == RoutingKind::dynamic) return true;
  return false;
}

const ModelConfig& Config::require_model() const {
  if (!has_model) {
    throw_config_error(source + ": no `model:` section; this command needs a model config (e.g. "
                       "configs/models/topk.yaml)");
  }
  return model;
}

std::optional<HostPort> parse_host_port(std::string_view text) {
  const std::size_t colon = text.rfind(':');
  if (colon == std::string_view::npos) return std::nullopt;
  std::string_view host = text.substr(0, colon);
  const std::string_view port_text = text.substr(colon + 1);
  if (host.starts_with('[')) {
    if (!host.ends_with(']') || host.size() < 3) return std::nullopt;
    host = host.substr(1, host.size() - 2);
  } else if (host.find(':') != std::string_view::npos) {
    return std::nullopt;  // an IPv6 address needs brackets
  }
  if (host.empty() || port_text.empty() || port_text.size() > 5) return std::nullopt;
  for (const char c : host) {
    const bool ok = std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == '_' || c == ':' ||
                    c == '%';
    if (!ok) return std::nullopt;
  }
  int port = 0;
  const auto r = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
  if (r.ec != std::errc() || r.ptr != port_text.data() + port_text.size() || port < 0 || port > 65535) {
    return std::nullopt;
  }
  return HostPort{std::string(host), port};
}

Config load_config(const std::string& path) { return load_config_string(read_yaml_file(path, "config file"), path); }

std::string read_yaml_file(const std::string& path, const std::string& what) {
  std::FILE* file = std::fopen(path.c_str(), "rb");
  if (!file) throw_config_error(path + ": cannot open " + what + ": " + std::strerror(errno));
  std::string text;
  char buf[4096];
  std::size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, file)) > 0) text.append(buf, n);
  const int read_errno = std::ferror(file) ? errno : 0;
  std::fclose(file);
  if (read_errno) throw_config_error(path + ": cannot read " + what + ": " + std::strerror(read_errno));
  return text;
}

std::string config_to_yaml(const Config& config) {
  Config copy = config;  // the slots hand out non-const pointers
  std::string out = "# Effective Switchyard configuration";
  out += config.source.empty() ? std::string("\n") : " (read from " + config.source + ")\n";
  print_map(out, "", Scope{&copy, nullptr}, 0, false);
  return out;
}

std::string config_reference_markdown() {
  std::string out = "| key | type | default | help |\n|---|---|---|---|\n";
  for (const Field& f : kSchema) {
    std::string type;
    switch (f.type) {
      case Type::integer: type = "int"; break;
      case Type::real: type = "float"; break;
      case Type::boolean: type = "bool"; break;
      case Type::choice: type = "`" + join_choices(f.choices, "` | `") + "`"; break;
      case Type::string: type = "string"; break;
      case Type::path: type = "path"; break;
      case Type::map: type = f.need == Need::optional ? "map, optional" : "map"; break;
      case Type::map_list: type = "list of maps, non-empty"; break;
    }
    if (f.bound != Bound::none || f.upper > 0) type += " " + bound_text(f);
    std::string def;
    switch (f.need) {
      case Need::required: def = "required"; break;
      case Need::computed:
      case Need::optional: def = std::string(f.def); break;
      case Need::defaulted:
        if (f.type == Type::map) def = "(defaults)";
        else if (f.def.empty()) def = "`\"\"`";
        else def = "`" + std::string(f.def) + "`";
        break;
    }
    std::string help(f.help);
    if (!f.when.empty()) {
      const std::string section(section_of(f));
      help += " Only with `" + section + "." + std::string(f.when) + "`.";
    }
    out += "| `" + std::string(f.path) + "` | " + markdown_cell(type) + " | " + markdown_cell(def) + " | " +
           markdown_cell(help) + " |\n";
  }
  return out;
}

const char* to_string(Activation v) { return spelling(v, kActivationNames); }
const char* to_string(RoutingKind v) { return spelling(v, kRoutingKindNames); }
const char* to_string(Budget v) { return spelling(v, kBudgetNames); }
const char* to_string(AggregationKind v) { return spelling(v, kAggregationKindNames); }
const char* to_string(DagEdges v) { return spelling(v, kDagEdgesNames); }
const char* to_string(SharedMix v) { return spelling(v, kSharedMixNames); }
const char* to_string(InputNorm v) { return spelling(v, kInputNormNames); }

namespace {
// Records where each document starts, nothing else (no nodes are built).
class DocumentStarts final : public YAML::EventHandler {
 public:
  std::vector<YAML::Mark> starts;
  void OnDocumentStart(const YAML::Mark& mark) override { starts.push_back(mark); }
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark&, YAML::anchor_t) override {}
  void OnAlias(const YAML::Mark&, YAML::anchor_t) override {}
  void OnScalar(const YAML::Mark&, const std::string&, YAML::anchor_t, const std::string&) override {}
  void OnSequenceStart(const YAML::Mark&, const std::string&, YAML::anchor_t, YAML::EmitterStyle::value) override {}
  void OnSequenceEnd() override {}
  void OnMapStart(const YAML::Mark&, const std::string&, YAML::anchor_t, YAML::EmitterStyle::value) override {}
  void OnMapEnd() override {}
};
}  // namespace

YamlDocuments yaml_load_documents(const std::string& text) {
  YamlDocuments out;
  std::stringstream in(text);
  YAML::Parser parser(in);
  DocumentStarts starts;
  while (parser.HandleNextDocument(starts)) {
    const size_t n = starts.starts.size();
    if (n >= 2 && starts.starts[n - 1].pos <= starts.starts[n - 2].pos) {
      const YAML::Mark& at = starts.starts[n - 1];
      const size_t pos = static_cast<size_t>(std::max(at.pos, 0));
      const unsigned char c = pos < text.size() ? static_cast<unsigned char>(text[pos]) : 0;
      throw YAML::ParserException(at, pos >= text.size()       ? std::string("unexpected end of text")
                                      : c >= 0x20 && c < 0x7f ? std::string("unexpected '") + static_cast<char>(c) + "'"
                                                              : "unexpected byte " + std::to_string(c));
    }
  }
  out.count = starts.starts.size();
  if (out.count >= 2) out.second = starts.starts[1];
  if (out.count >= 1) out.first = YAML::Load(text);  // the first document, as LoadAll's docs[0]
  return out;
}

int yaml_line(const YAML::Mark& mark, int fallback) { return mark.line >= 0 ? mark.line + 1 : fallback; }

std::string yaml_join(const std::string& where, std::string_view key) {
  return where.empty() ? std::string(key) : where + "." + std::string(key);
}

std::vector<YamlEntry> yaml_map_entries(const YAML::Node& node, const std::string& where, int line,
                                        std::span<const std::string_view> known, const YamlFail& fail) {
  std::vector<YamlEntry> out;
  for (auto it = node.begin(); it != node.end(); ++it) {
    const int key_line = yaml_line(it->first.Mark(), line);
    if (!it->first.IsScalar()) fail(key_line, where, "keys must be plain names, got " + describe_yaml_value(it->first));
    std::string key = it->first.Scalar();
    for (const YamlEntry& e : out)
      if (e.key == key) fail(key_line, yaml_join(where, key), "duplicate key (first given on line " + std::to_string(e.line) + ")");
    if (std::find(known.begin(), known.end(), key) == known.end()) {
      std::string expected;
      for (std::string_view k : known) expected += (expected.empty() ? "" : ", ") + std::string(k);
      fail(key_line, yaml_join(where, key), "unknown key; expected one of: " + expected);
    }
    out.push_back({std::move(key), key_line, it->second});
  }
  return out;
}

YamlInt parse_yaml_int(std::string_view text, int& value) {
  std::string_view t = text;
  if (t.starts_with('+') && !t.starts_with("+-")) t.remove_prefix(1);
  int v = 0;
  const auto r = std::from_chars(t.data(), t.data() + t.size(), v);
  if (r.ec == std::errc::result_out_of_range) return YamlInt::out_of_range;
  if (r.ec != std::errc() || r.ptr != t.data() + t.size() || t.empty()) return YamlInt::not_an_integer;
  value = v;
  return YamlInt::ok;
}

bool parse_yaml_double(std::string_view text, double& value) {
  std::string_view t = text;
  if (t.starts_with('+') && !t.starts_with("+-")) t.remove_prefix(1);
  double v = 0;
  const auto r = std::from_chars(t.data(), t.data() + t.size(), v);
  if (r.ec != std::errc() || r.ptr != t.data() + t.size() || t.empty() || !std::isfinite(v)) return false;
  value = v;
  return true;
}

std::string describe_yaml_value(const YAML::Node& n) {
  switch (n.Type()) {
    case YAML::NodeType::Null: return "null (no value)";
    case YAML::NodeType::Scalar: return "\"" + n.Scalar() + "\"";
    case YAML::NodeType::Sequence: return "a list";
    case YAML::NodeType::Map: return "a map";
    case YAML::NodeType::Undefined: break;
  }
  return "nothing";
}

}  // namespace sy
