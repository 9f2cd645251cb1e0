#include "server_checks.h"

#include <cstring>
#include <vector>

#include "cluster.pb.h"
#include "control.pb.h"
#include "fuzz_support.h"
#include "load_window.h"  // runtime/coordinator/src: the coordinator's load report check
#include "switchyard/core/config.h"
#include "switchyard/core/expert.h"
#include "switchyard/placement/load_trace.h"
#include "switchyard/placement/placement.h"
#include "switchyard/transport/status_wire.h"
#include "switchyard/wire/wire.h"

namespace sy::fuzz {
namespace {

namespace pb = wire::pb;
namespace cpb = switchyard::control;

constexpr int kWorkers = 4;

// The model a running cluster has loaded, for the requests that are checked against it.
const Config& loaded() {
  static const Config c = load_config_string(
      "model:\n  hidden_size: 8\n  layers: 2\n  layer:\n    stages:\n      - {experts: 4, ffn_hidden_size: 8}\n"
      "      - {experts: 3, ffn_hidden_size: 4, activation: gelu}\n"
      "cluster:\n  workers: 4\n",
      "loaded model");
  return c;
}

template <class M>
bool parse(const std::string& body, M& m) {
  return m.ParseFromString(body);  // false: the server replies "malformed <type>"
}

// A placement from the wire, as the clients and workers take it, then the shared check the
// coordinator's own placements pass (a config error is the refusal).
void check_placement(const wire::PlacementEntries& entries, uint64_t epoch) {
  const Placement p = wire::placement_from_pb(entries, epoch);
  refuses_only_with({ErrorKind::config}, "Placement::validate(from the wire)",
                    [&] { p.validate(loaded().model, kWorkers); });
  for (int w = 0; w < kWorkers; ++w) (void)p.experts_on(w);
}

// A worker's error as a client reads it: status_from, then the API edge's throw_error.
void check_error_info(const pb::ErrorInfo& e) {
  const Status s = wire::status_from(e);
  if (s.is_ok()) bug("status_from(ErrorInfo) returned ok");
  try {
    wire::throw_error(s);
  } catch (const Error&) {
    return;
  } catch (const std::exception& x) {
    bug(std::string("wire::throw_error threw something else: ") + x.what());
  }
  bug("wire::throw_error returned");
}

// The coordinator's plan handler: the model, the placement it starts with, the load shape.
void check_model_yaml(const std::string& yaml) {
  Config c;
  if (!refuses_only_with({ErrorKind::config}, "load_config_string(model_yaml)",
                         [&] { c = load_config_string(yaml, "model from client"); }))
    return;
  if (!c.has_model) return;
  ClusterConfig cluster = loaded().cluster;
  Placement p;
  if (!refuses_only_with({ErrorKind::config}, "cluster_placement(model_yaml)",
                         [&] { p = cluster_placement(c.model, cluster); }))
    return;
  must_succeed("Placement::validate(cluster_placement)", [&] { p.validate(c.model, cluster.workers); });
  (void)load_matrix_rows(c.model);
}

void check_load_report(const pb::LoadReportRequest& r) {
  const LoadMatrix rows = load_matrix_rows(loaded().model);
  LoadWindow w;
  w.reset(rows.rows(), rows.experts, kWorkers, 3);
  for (int i = 0; i < 2; ++i) {  // twice: the second adds into the first's entry (same step)
    const Status s = w.add(r);
    if (!s.is_ok() && s.code() != StatusCode::invalid_argument) bug("LoadWindow::add: " + s.to_string());
    if (!s.is_ok()) return;
  }
  (void)w.computed();
  (void)w.to_pb();
}

#define SY_SIMPLE(Type)                        \
  [](const std::string& body) {                \
    Type m;                                    \
    (void)parse(body, m);                      \
  }

const ServerMessage kMessages[] = {
    // ---- coordinator (runtime/coordinator/src/coordinator.cc) ----
    {"switchyard.cluster.RegisterWorkerRequest",
     [](const std::string& body) {
       pb::RegisterWorkerRequest m;
       if (parse(body, m)) (void)parse_host_port(m.control_endpoint());
     }},
    {"switchyard.cluster.RegisterClientRequest", SY_SIMPLE(pb::RegisterClientRequest)},
    {"switchyard.cluster.UnregisterClientRequest", SY_SIMPLE(pb::UnregisterClientRequest)},
    {"switchyard.cluster.HeartbeatRequest", SY_SIMPLE(pb::HeartbeatRequest)},
    {"switchyard.cluster.PlanPlacementRequest",
     [](const std::string& body) {
       pb::PlanPlacementRequest m;
       if (parse(body, m)) check_model_yaml(m.model_yaml());
     }},
    {"switchyard.cluster.CommitPlacementRequest", SY_SIMPLE(pb::CommitPlacementRequest)},
    {"switchyard.cluster.LoadReportRequest",
     [](const std::string& body) {
       pb::LoadReportRequest m;
       if (parse(body, m)) check_load_report(m);
     }},
    {"switchyard.cluster.RebalanceRequest",
     [](const std::string& body) {
       pb::RebalanceRequest m;
       if (!parse(body, m) || m.placement_yaml().empty()) return;
       const Config& c = loaded();
       refuses_only_with({ErrorKind::config}, "parse_placement(RebalanceRequest)", [&] {
         (void)parse_placement(m.placement_yaml(), m.placement_source().empty() ? "placement" : m.placement_source(),
                               c.model, c.cluster.workers, c.cluster.worker_memory_bytes());
       });
     }},
    {"switchyard.cluster.RebalanceStatusRequest", SY_SIMPLE(pb::RebalanceStatusRequest)},
    {"switchyard.cluster.EpochDecisionRequest", SY_SIMPLE(pb::EpochDecisionRequest)},
    {"switchyard.cluster.MigrationReportRequest", SY_SIMPLE(pb::MigrationReportRequest)},
    {"switchyard.cluster.ClusterInfoRequest", SY_SIMPLE(pb::ClusterInfoRequest)},
    {"switchyard.cluster.ShutdownRequest", SY_SIMPLE(pb::ShutdownRequest)},
    // ---- rendezvous (transport/src/rendezvous.cc, on the coordinator's server) ----
    {"switchyard.control.PublishRequest", SY_SIMPLE(cpb::PublishRequest)},
    {"switchyard.control.CollectRequest", SY_SIMPLE(cpb::CollectRequest)},
    // ---- worker control server (runtime/worker/src/worker.cc) ----
    {"switchyard.cluster.AttachRequest", SY_SIMPLE(pb::AttachRequest)},
    {"switchyard.cluster.MigrateRequest",
     [](const std::string& body) {
       pb::MigrateRequest m;
       if (!parse(body, m)) return;
       check_placement(m.placement(), m.epoch());  // WorkerMigration::prepare
       for (const pb::ReplicaCopy& c : m.copies())
         (void)expert_exists(loaded().model, ExpertKey{c.layer(), c.stage(), c.expert()});
     }},
    {"switchyard.cluster.EpochNoticeRequest", SY_SIMPLE(pb::EpochNoticeRequest)},
    // ---- replies the clients parse (control channel) ----
    {"switchyard.cluster.PlanPlacementReply",
     [](const std::string& body) {
       pb::PlanPlacementReply m;
       if (parse(body, m)) check_placement(m.placement(), m.placement_epoch());
     }},
    {"switchyard.cluster.ClusterInfoReply",
     [](const std::string& body) {
       pb::ClusterInfoReply m;
       if (!parse(body, m)) return;
       check_placement(m.placement(), m.placement_epoch());
       if (!m.model_yaml().empty()) check_model_yaml(m.model_yaml());
     }},
    {"switchyard.cluster.LoadReportReply",
     [](const std::string& body) {
       pb::LoadReportReply m;
       if (parse(body, m)) check_placement(m.placement(), m.placement_epoch());
     }},
    {"switchyard.cluster.EpochDecisionReply",
     [](const std::string& body) {
       pb::EpochDecisionReply m;
       if (parse(body, m)) check_placement(m.placement(), 1);
     }},
    // ---- data plane (worker requests, client replies) ----
    {"switchyard.cluster.WorkerRequest", [](const std::string& body) { check_worker_request(body, {}); }},
    {"switchyard.cluster.WorkerReply",
     [](const std::string& body) {
       pb::WorkerReply m;
       if (parse(body, m) && m.has_error()) check_error_info(m.error());
     }},
};
#undef SY_SIMPLE

// The worker's LOAD_MODEL: the model, then each listed expert decoded from the payload
// (runtime/worker/src/worker.cc load_model, up to the store it fills).
void check_load_model(const pb::LoadModelOp& op, std::string_view payload) {
  Config c;
  if (!refuses_only_with({ErrorKind::config}, "load_config_string(LoadModelOp.model_yaml)",
                         [&] { c = load_config_string(op.model_yaml(), "model from client"); }))
    return;
  if (!c.has_model || payload.size() % sizeof(float) != 0) return;
  std::vector<float> floats(payload.size() / sizeof(float));
  if (!payload.empty()) std::memcpy(floats.data(), payload.data(), payload.size());
  size_t off = 0;
  for (const pb::Segment& s : op.experts()) {
    const ExpertKey key = wire::key_from_pb(s);
    if (!expert_exists(c.model, key)) return;
    const ExpertGeometry g = ExpertGeometry::of(c.model, key.stage);
    const int64_t n64 = encoded_expert_floats(g, false);
    if (n64 <= 0) bug("encoded_expert_floats <= 0 for an existing expert");
    const size_t n = static_cast<size_t>(n64);
    if (off + n > floats.size()) return;
    ExpertTensors t;
    if (!refuses_only_with({ErrorKind::input}, "decode_expert(LOAD_MODEL)", [&] {
          t = decode_expert(g, std::span<const float>(floats).subspan(off, n), false, "LOAD_MODEL " + key.to_string());
        }))
      return;
    refuses_only_with({ErrorKind::input}, "ExpertTensors::validate(LOAD_MODEL)",
                      [&] { t.validate(g, "LOAD_MODEL " + key.to_string()); });
    off += n;
  }
  const Placement p = wire::placement_from_pb(op.placement(), op.placement_epoch());
  refuses_only_with({ErrorKind::config}, "Placement::validate(LOAD_MODEL)", [&] { p.validate(c.model, kWorkers); });
}

}  // namespace

std::span<const ServerMessage> server_messages() { return kMessages; }

void check_worker_request(const std::string& header, std::string_view payload) {
  pb::WorkerRequest req;
  if (header.empty() || !req.ParseFromString(header)) return;  // "malformed request header"
  switch (req.op_case()) {
    case pb::WorkerRequest::kLoadModel: check_load_model(req.load_model(), payload); break;
    case pb::WorkerRequest::kForward:
      for (const pb::Segment& s : req.forward().segments()) (void)expert_exists(loaded().model, wire::key_from_pb(s));
      break;
    case pb::WorkerRequest::kBackward:
      for (const pb::Segment& s : req.backward().segments()) (void)expert_exists(loaded().model, wire::key_from_pb(s));
      break;
    case pb::WorkerRequest::kFetch:
      for (const pb::Segment& s : req.fetch().experts()) (void)expert_exists(loaded().model, wire::key_from_pb(s));
      break;
    case pb::WorkerRequest::kCheckpoint:  // the replicas the client's placement puts on a worker
      if (req.checkpoint().placed())
        for (int w : {0, kWorkers - 1})
          (void)wire::placement_from_pb(req.checkpoint().placement(), req.checkpoint().placement_epoch()).experts_on(w);
      break;
    default: break;  // step, zero_grads, detach: no pure checks (state)
  }
}

}  // namespace sy::fuzz
