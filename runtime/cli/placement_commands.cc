#include "placement_commands.h"

#include <cstdio>
#include <fstream>
#include <limits>
#include <sstream>

#include "flags.h"
#include "switchyard/core/config.h"
#include "switchyard/core/error.h"
#include "switchyard/placement/baselines.h"
#include "switchyard/placement/load_trace.h"
#include "switchyard/placement/planner.h"
#include "switchyard/placement/simulate.h"

namespace sy {
namespace {

constexpr int64_t kNoMemoryLimit = std::numeric_limits<int64_t>::max();

// The trace's model: --config's, or row r = layer r, stage 0 with the trace's width.
struct Inputs {
  ModelConfig model;
  bool from_config = false;
  LoadMatrix load;
  int workers = 0, nodes = 1;
};

ModelConfig model_of_trace(const LoadMatrix& load) {
  ModelConfig m;
  m.hidden_size = 1;
  m.layers = load.rows();
  StageConfig st;
  st.experts = load.experts;
  st.ffn_hidden_size = 1;
  m.layer.stages.push_back(st);
  return m;
}

int positive(const Flags& flags, const std::string& name, int64_t def) {
  const int64_t v = flags.get_int(name, def);
  if (v < 1 || v > (1 << 30)) throw UsageError("--" + name + " must be an integer in 1..2^30, got " + std::to_string(v));
  return static_cast<int>(v);
}

Inputs read_inputs(const Flags& flags) {
  Inputs in;
  in.workers = positive(flags, "workers", 0);
  in.nodes = positive(flags, "nodes", 1);
  if (in.workers % in.nodes != 0)
    throw UsageError("--nodes " + std::to_string(in.nodes) + " must divide --workers " + std::to_string(in.workers));
  if (flags.has("config")) {
    const Config cfg = load_config(flags.get("config"));
    if (!cfg.has_model) throw_config_error(flags.get("config") + ": --config needs a model: section");
    in.model = cfg.model;
    in.from_config = true;
    in.load = read_load_trace(flags.get("load"), &in.model);
  } else {
    in.load = read_load_trace(flags.get("load"), nullptr);
    in.model = model_of_trace(in.load);
  }
  return in;
}

PlannerOptions planner_options(const Flags& flags, const Inputs& in) {
  PlannerOptions o;
  o.workers = in.workers;
  o.nodes = in.nodes;
  o.slots_per_worker = positive(flags, "slots-per-worker", 0);
  o.max_moves = static_cast<int>(flags.get_int("max-moves", -1));
  if (o.max_moves < -1) throw UsageError("--max-moves must be >= 0");
  for (int r = 0; r < in.load.rows(); ++r)
    if (int64_t{o.slots_per_worker} * o.workers < in.load.row_experts[static_cast<size_t>(r)])
      throw_input_error(flags.get("load") + ": row " + std::to_string(r) + " has " + std::to_string(in.load.row_experts[static_cast<size_t>(r)]) +
                        " experts, more than --workers x --slots-per-worker = " + std::to_string(int64_t{o.slots_per_worker} * o.workers) + " slots");
  if (in.from_config)
    for (int r = 0; r < in.load.rows(); ++r) o.replica_bytes.push_back(expert_migration_bytes(in.model, in.load.stage[static_cast<size_t>(r)]));
  return o;
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::trunc);
  out << text;
  if (!out) throw_input_error("--out " + path + ": cannot write the file");
}

int plan(const std::vector<std::string>& args) {
  const Flags flags(args, "placement plan", {"load", "workers", "slots-per-worker", "nodes", "config", "current", "max-moves", "out"});
  const std::string out = flags.get("out");
  const Inputs in = read_inputs(flags);
  PlannerOptions o = planner_options(flags, in);
  Placement current;
  if (flags.has("current")) {
    current = load_placement(flags.get("current"), in.model, in.workers, kNoMemoryLimit);
    o.current = &current;
  }
  const PlanResult res = plan_placement(in.load, o);
  res.placement.validate(in.model, in.workers);
  write_text(out, placement_to_yaml(res.placement));
  std::printf("balancedness: %.6f\nbalancedness_bound: %.6f\nmoved_replicas: %lld\nmoved_bytes: %lld\nplan_ms: %.3f\n", res.balancedness,
              res.bound, static_cast<long long>(res.moved_replicas), static_cast<long long>(res.moved_bytes), res.plan_ms);
  return 0;
}

CostModel cost_model(const Flags& flags) {
  CostModel c;
  c.rows_per_s = flags.get_double("rows-per-s", c.rows_per_s);
  c.hidden_size = positive(flags, "hidden-size", c.hidden_size);
  c.intra_gbps = flags.get_double("intra-gbps", c.intra_gbps);
  c.inter_gbps = flags.get_double("inter-gbps", c.inter_gbps);
  c.intra_latency_us = flags.get_double("intra-latency-us", c.intra_latency_us);
  c.inter_latency_us = flags.get_double("inter-latency-us", c.inter_latency_us);
  c.clients_per_node = positive(flags, "clients-per-node", c.clients_per_node);
  if (!(c.rows_per_s > 0) || !(c.intra_gbps > 0) || !(c.inter_gbps > 0) || !(c.intra_latency_us >= 0) || !(c.inter_latency_us >= 0))
    throw UsageError("--rows-per-s, --intra-gbps and --inter-gbps must be > 0, the latencies >= 0");
  return c;
}

Placement policy_placement(const std::string& policy, const Flags& flags, const Inputs& in) {
  const PlannerOptions o = planner_options(flags, in);
  if (policy == "planner") return plan_placement(in.load, o).placement;
  if (policy == "greedy") return greedy_placement(in.load, in.workers, o.slots_per_worker);
  if (policy == "hierarchical") return hierarchical_placement(in.load, in.workers, o.slots_per_worker, in.nodes);
  if (policy == "round-robin") return round_robin_placement(in.load, in.workers);
  throw UsageError("--policy: unknown policy '" + policy + "' (planner, greedy, hierarchical, round-robin or all)");
}

void print_sim(const SimResult& s) {
  std::printf("step_ms: %.6f\nideal_step_ms: %.6f\nbalancedness: %.6f\ninter_node_fraction: %.6f\n", s.step_ms, s.ideal_step_ms, s.balancedness,
              s.inter_node_fraction);
}

int simulate(const std::vector<std::string>& args) {
  const Flags flags(args, "placement simulate",
                    {"load", "workers", "nodes", "config", "placement", "slots-per-worker", "policy", "max-moves", "rows-per-s", "hidden-size",
                     "intra-gbps", "inter-gbps", "intra-latency-us", "inter-latency-us", "clients-per-node"});
  const Inputs in = read_inputs(flags);
  const CostModel cost = cost_model(flags);
  if (flags.has("placement")) {
    if (flags.has("policy")) throw UsageError("placement simulate: give --placement or --policy, not both");
    print_sim(simulate_placement(load_placement(flags.get("placement"), in.model, in.workers, kNoMemoryLimit), in.load, in.workers, in.nodes, cost));
    return 0;
  }
  std::string list = flags.get_or("policy", "planner");
  if (list == "all") list = "planner,greedy,hierarchical,round-robin";
  std::vector<std::string> policies;
  std::stringstream s(list);
  for (std::string p; std::getline(s, p, ',');) policies.push_back(p);
  for (const std::string& p : policies) {
    const Placement placement = policy_placement(p, flags, in);
    if (policies.size() > 1) std::printf("policy: %s\n", p.c_str());
    print_sim(simulate_placement(placement, in.load, in.workers, in.nodes, cost));
  }
  return 0;
}

}  // namespace

int cli_placement(const std::vector<std::string>& args) {
  if (!args.empty() && args[0] == "plan") return plan({args.begin() + 1, args.end()});
  if (!args.empty() && args[0] == "simulate") return simulate({args.begin() + 1, args.end()});
  throw UsageError("usage: switchyard placement plan|simulate --load L.npy --workers G ... (see switchyard --help)");
}

}  // namespace sy
