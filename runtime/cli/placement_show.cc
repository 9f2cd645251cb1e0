// `switchyard placement show`: the heatmap of a load trace (--load L.npy, summed over steps;
// --config names its rows) or of a running cluster's load window (--cluster: experts and workers).
#include <cmath>
#include <iostream>
#include <optional>

#include "cluster_commands.h"
#include "flags.h"
#include "heatmap.h"
#include "switchyard/client/cluster_admin.h"
#include "switchyard/core/config.h"
#include "switchyard/core/error.h"
#include "switchyard/placement/load_trace.h"
#include "switchyard/placement/planner.h"

namespace sy {
namespace {

std::vector<std::string> labels(int rows, int stages) {
  std::vector<std::string> out;
  for (int r = 0; r < rows; ++r) out.push_back("L" + std::to_string(r / stages) + "·S" + std::to_string(r % stages));
  return out;
}

HeatmapPanel trace_panel(const Flags& flags) {
  std::optional<Config> cfg;
  if (flags.has("config")) cfg = load_config(flags.get("config"));
  const LoadMatrix m = read_load_trace(flags.get("load"), cfg ? &cfg->require_model() : nullptr);
  HeatmapPanel p;
  p.title = "rows per (layer·stage, expert): " + flags.get("load");
  p.column_prefix = "E";
  p.columns = m.experts;
  for (int r = 0; r < m.rows(); ++r) {
    p.row_labels.push_back(cfg ? "L" + std::to_string(m.layer[static_cast<size_t>(r)]) + "·S" +
                                     std::to_string(m.stage[static_cast<size_t>(r)])
                               : "row " + std::to_string(r));
    for (int e = 0; e < m.experts; ++e)
      p.values.push_back(e < m.row_experts[static_cast<size_t>(r)] ? m.at(r, e) : std::nan(""));
  }
  return p;
}

std::vector<HeatmapPanel> cluster_panels(const std::string& endpoint) {
  const ClusterStatus s = query_cluster_status(endpoint);
  if (!s.model_loaded) throw Error(ErrorKind::config, "placement show: the cluster at " + endpoint + " has no model loaded");
  int stages = 1;
  for (const auto& [key, workers] : s.placement.replicas) stages = std::max(stages, key.stage + 1);
  const ClusterLoad& l = s.load;
  HeatmapPanel experts{"rows per (layer·stage, expert) over the last " + std::to_string(l.steps) + " steps at " + endpoint,
                       labels(l.rows, stages), "E", l.experts, {}};
  for (int64_t v : l.computed) experts.values.push_back(static_cast<double>(v));
  HeatmapPanel workers{"rows per (layer·stage, worker)", labels(l.rows, stages), "W", l.workers, {}};
  for (int64_t v : l.worker_rows) workers.values.push_back(static_cast<double>(v));
  return {experts, workers};
}

}  // namespace

int cli_placement_show(const std::vector<std::string>& args) {
  Flags flags(args, "placement show", {"load", "config", "cluster", "out"});
  if (flags.has("load") == flags.has("cluster"))
    throw UsageError("placement show: give exactly one of --load L.npy and --cluster HOST:PORT");
  const std::string out = flags.get("out");
  const std::vector<HeatmapPanel> panels = flags.has("load") ? std::vector<HeatmapPanel>{trace_panel(flags)}
                                                             : cluster_panels(flags.get("cluster"));
  write_heatmap(out, panels);
  std::cout << "wrote " << out << ": " << panels[0].row_labels.size() << " rows x " << panels[0].columns << " experts\n";
  return 0;
}

}  // namespace sy
