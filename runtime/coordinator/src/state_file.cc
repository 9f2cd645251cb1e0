// The coordinator's state file (cluster.state_file): membership, the committed placement and
// the model, rewritten (temporary file, then rename) after each change, so that a coordinator
// restarted on the same port resumes the cluster: the workers keep their replicas and heartbeat
// the new one, the clients keep routing with the epoch they have.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "coordinator_impl.h"
#include "switchyard/core/error.h"
#include "switchyard/core/log.h"
#include "switchyard/placement/load_trace.h"

namespace sy {

void Coordinator::Impl::save_state() const {
  if (cluster.state_file.empty()) return;
  pb::CoordinatorState st;
  for (const auto& [id, m] : members) {
    *st.add_members() = m.info;
    st.add_fenced_reasons(m.fenced);
  }
  st.set_model_yaml(model_yaml);
  st.set_model_committed(committed);
  st.set_placement_epoch(epoch);
  st.set_last_epoch(last_epoch);
  wire::placement_to_pb(placement, st.mutable_placement());
  st.set_next_client_id(next_client_id);
  st.set_next_worker_data_plane_id(next_worker_data_plane_id);
  st.set_membership_version(membership_version);
  const std::string tmp = cluster.state_file + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (out && st.SerializeToOstream(&out)) out.close();
    if (!out) {
      SY_LOG(error, "runtime", "cluster.state_file: cannot write '" << tmp << "'; a restart would lose the cluster");
      return;
    }
  }
  std::error_code ec;
  std::filesystem::rename(tmp, cluster.state_file, ec);
  if (ec) SY_LOG(error, "runtime", "cluster.state_file: cannot rename '" << tmp << "': " << ec.message());
}

// Throws a config error naming the file when it exists but cannot be used.
void Coordinator::Impl::load_state() {
  if (cluster.state_file.empty() || !std::filesystem::exists(cluster.state_file)) return;
  const std::string& file = cluster.state_file;
  std::ifstream in(file, std::ios::binary);
  pb::CoordinatorState st;
  if (!in || !st.ParseFromIstream(&in) || st.fenced_reasons_size() != st.members_size())
    throw Error(ErrorKind::config, "cluster.state_file: '" + file + "' is not a coordinator state file");
  const auto now = Clock::now();
  for (int i = 0; i < st.members_size(); ++i) {
    const pb::WorkerInfo& w = st.members(i);
    if (w.worker_id() < 0 || w.worker_id() >= cluster.workers)
      throw Error(ErrorKind::config, "cluster.state_file: '" + file + "' has worker " + std::to_string(w.worker_id()) +
                                         " outside cluster.workers (" + std::to_string(cluster.workers) + ")");
    Member& m = members[w.worker_id()];
    m.info = w;
    if (m.info.data_plane_id() < m.info.worker_id()) m.info.set_data_plane_id(w.worker_id());  // a file without ids
    m.fenced = st.fenced_reasons(i);
    m.last_heartbeat = m.previous_heartbeat = now;  // dead_after_ms to heartbeat the new coordinator
    recovery_due |= !m.fenced.empty();
  }
  next_client_id = std::max(next_client_id, st.next_client_id());
  next_worker_data_plane_id = std::max(next_worker_data_plane_id, st.next_worker_data_plane_id());
  membership_version = st.membership_version() + 1;
  epoch = st.placement_epoch();
  last_epoch = std::max(st.last_epoch(), epoch);
  if (!st.model_yaml().empty()) {
    try {
      auto cfg = std::make_unique<Config>(load_config_string(st.model_yaml(), file + " (model)"));
      placement = wire::placement_from_pb(st.placement(), epoch);
      placement.validate(cfg->model, cluster.workers);
      const LoadMatrix rows = load_matrix_rows(cfg->model);
      load.reset(rows.rows(), rows.experts, cluster.workers, cluster.rebalance.window_steps);
      observed.reset_model(rows.rows(), rows.experts, cluster.workers);
      model = std::move(cfg);
    } catch (const Error& e) {
      throw Error(ErrorKind::config, "cluster.state_file: '" + file + "': " + e.what());
    }
    model_yaml = st.model_yaml();
    committed = st.model_committed();
  }
  SY_LOG(info, "runtime", "resumed from " << file << ": " << members.size() << " workers, placement epoch " << epoch
                                          << (committed ? ", model loaded" : ""));
}

}  // namespace sy
