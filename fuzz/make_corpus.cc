// Writes the seed corpus fuzz/corpus/<target>/ with the project's own writers: configs copied
// from configs/, safetensors and .npy from write_safetensors / write_npy, serialized valid
// protobuf messages. Run after changing a format:
//   build-fuzz/fuzz/fuzz_make_corpus fuzz/corpus configs
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "cluster.pb.h"
#include "control.pb.h"
#include "server_checks.h"
#include "switchyard/core/config.h"
#include "switchyard/core/expert.h"
#include "switchyard/core/io.h"
#include "switchyard/placement/load_trace.h"
#include "switchyard/placement/placement.h"
#include "switchyard/transport/control.h"
#include "switchyard/wire/wire.h"

namespace fs = std::filesystem;
namespace pb = sy::wire::pb;
namespace cpb = switchyard::control;

namespace {

fs::path out_root;

void put(const std::string& target, const std::string& name, const std::string& bytes) {
  const fs::path dir = out_root / target;
  fs::create_directories(dir);
  std::ofstream f(dir / name, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string slurp(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

uint8_t message_index(const std::string& type) {
  const auto all = sy::fuzz::server_messages();
  for (size_t i = 0; i < all.size(); ++i)
    if (all[i].type == type) return static_cast<uint8_t>(i);
  std::cerr << "no server message " << type << "\n";
  std::exit(1);
}

void put_message(const std::string& name, const google::protobuf::Message& m) {
  const std::string type = m.GetDescriptor()->full_name();
  put("server_messages", name, std::string(1, static_cast<char>(message_index(type))) + m.SerializeAsString());
  cpb::Frame f;
  f.set_request_id(7);
  f.set_type(type);
  f.set_body(m.SerializeAsString());
  put("control_frame", name, f.SerializeAsString());
}

// The body of a file's `cluster:` section (fuzz_cluster_config prepends "cluster:\n").
std::string cluster_body(const std::string& yaml) {
  const size_t at = yaml.find("\ncluster:\n");
  return at == std::string::npos ? "" : yaml.substr(at + 10);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: fuzz_make_corpus OUT_DIR CONFIGS_DIR\n";
    return 2;
  }
  out_root = argv[1];
  const fs::path configs = argv[2];

  // ---- configs ----
  std::vector<fs::path> yamls;
  for (const auto& e : fs::directory_iterator(configs / "models")) yamls.push_back(e.path());
  yamls.push_back(configs / "local.yaml");
  yamls.push_back(configs / "bench-rebalance.yaml");
  for (const fs::path& p : yamls) put("model_config", p.filename().string(), slurp(p));
  put("cluster_config", "local.yaml", std::string(1, '\0') + cluster_body("\n" + slurp(configs / "local.yaml")));
  put("cluster_config", "bench-rebalance.yaml",
      std::string(1, '\1') + cluster_body("\n" + slurp(configs / "bench-rebalance.yaml")));
  put("cluster_config", "flow.yaml", std::string(1, '\2') +
      "  {workers: 3, replicas: 2, heartbeat_ms: 100, dead_after_ms: 400, transport: inprocess, "
      "ucx_tls: \"sm,self\", coordinator: \"[::1]:5000\", rebalance: {every_steps: 5, max_moves: 2}}\n");

  // ---- placement: byte 0 = model (bit 0) and workers - 1 (>> 1), byte 1 = budget ----
  put("placement_yaml", "example.yaml", std::string("\x04\x00", 2) + slurp(configs / "placement-example.yaml"));
  const sy::Config two = sy::load_config_string(
      "model:\n  hidden_size: 16\n  layers: 2\n  layer:\n    stages:\n"
      "      - {experts: 4, ffn_hidden_size: 8}\n      - {experts: 3, ffn_hidden_size: 8, activation: gelu}\n");
  sy::Placement rr = sy::default_placement(two.model, 4, 2);
  rr.shares[{1, 1, 2}] = {0.25, 0.75};
  put("placement_yaml", "round-robin.yaml", std::string("\x07\x03", 2) + sy::placement_to_yaml(rr));

  // ---- tensor files, by the project's writers ----
  const fs::path tmp = fs::temp_directory_path() / "sy-make-corpus";
  fs::create_directories(tmp);
  {
    sy::TensorMap m;
    m["router.weight"] = sy::Tensor(sy::Shape{2, 3}, {1, 2, 3, 4, 5, 6});
    m["stages.0.experts.1.up_proj.weight"] = sy::Tensor(sy::Shape{3}, {-1, 0.5f, 7});
    m["empty"] = sy::Tensor(sy::Shape{0, 2});
    m["scalar"] = sy::Tensor(sy::Shape{}, std::vector<float>{3});
    sy::write_safetensors((tmp / "a").string(), m, {{"format", "switchyard"}, {"seed", "1"}});
    put("safetensors", "weights.safetensors", slurp(tmp / "a"));
    sy::write_safetensors((tmp / "b").string(), {});
    put("safetensors", "empty.safetensors", slurp(tmp / "b"));
    sy::write_npy((tmp / "c").string(), sy::Tensor(sy::Shape{2, 3}, {1, 2, 3, 4, 5, 6}));
    put("npy", "matrix.npy", slurp(tmp / "c"));
    sy::write_npy((tmp / "d").string(), sy::Tensor(sy::Shape{}, std::vector<float>{1}));
    put("npy", "scalar.npy", slurp(tmp / "d"));
    sy::write_npy((tmp / "e").string(), sy::Tensor(sy::Shape{4}, {1, 2, 3, 4}));
    put("npy", "vector.npy", slurp(tmp / "e"));
    fs::remove_all(tmp);
  }

  // ---- control channel and data plane ----
  const std::string model_yaml = sy::config_to_yaml(two);
  {
    cpb::Hello h;
    h.set_protocol_version(sy::control::kProtocolVersion);
    h.set_peer_name("worker pid 1");
    cpb::Frame f;
    f.set_type(cpb::Hello::descriptor()->full_name());
    f.set_body(h.SerializeAsString());
    put("control_frame", "hello", f.SerializeAsString());
    cpb::Frame e;
    e.set_request_id(3);
    e.set_is_reply(true);
    e.set_type(pb::PlanPlacementReply::descriptor()->full_name());
    e.set_error("fuzz.yaml:3: model.hidden_size: must be > 0, got 0");
    e.set_error_code(cpb::INVALID_ARGUMENT);
    put("control_frame", "error-reply", e.SerializeAsString());
  }
  {
    pb::RegisterWorkerRequest r;
    r.set_requested_id(-1);
    r.set_pid(42);
    r.set_host("localhost");
    r.set_control_endpoint("127.0.0.1:5001");
    put_message("register-worker", r);
    pb::PlanPlacementRequest p;
    p.set_model_yaml(model_yaml);
    put_message("plan", p);
    const sy::LoadMatrix rows = sy::load_matrix_rows(two.model);
    pb::LoadReportRequest l;
    l.set_client_id(1 << 19);
    l.set_step(3);
    l.set_training(true);
    pb::LoadCounts* c = l.mutable_counts();
    c->set_rows(rows.rows());
    c->set_experts(rows.experts);
    c->set_workers(4);
    for (int i = 0; i < rows.rows() * rows.experts; ++i) {
      c->add_routed(i);
      c->add_computed(i);
    }
    for (int i = 0; i < rows.rows() * 4; ++i) c->add_worker_rows(i);
    put_message("load-report", l);
    pb::RebalanceRequest rb;
    rb.set_placement_yaml(sy::placement_to_yaml(rr));
    rb.set_placement_source("p.yaml");
    put_message("rebalance", rb);
    pb::MigrateRequest mg;
    mg.set_epoch(2);
    sy::wire::placement_to_pb(rr, mg.mutable_placement());
    pb::ReplicaCopy* copy = mg.add_copies();
    copy->set_layer(1);
    copy->set_stage(0);
    copy->set_expert(2);
    copy->set_from_worker(0);
    copy->set_to_worker(3);
    put_message("migrate", mg);
    pb::ClusterInfoReply info;
    info.set_model_yaml(model_yaml);
    sy::wire::placement_to_pb(rr, info.mutable_placement());
    put_message("cluster-info-reply", info);
    pb::WorkerReply wr;
    *wr.mutable_error() = sy::wire::error_info(sy::Error(sy::ErrorKind::input, "tensor 'x' is not finite"), 2);
    put_message("worker-reply-error", wr);
  }
  {  // LOAD_MODEL of two experts with their weights, as a client sends it
    pb::WorkerRequest req;
    req.set_request_id(1);
    pb::LoadModelOp* op = req.mutable_load_model();
    op->set_model_yaml(model_yaml);
    op->set_placement_epoch(1);
    sy::wire::placement_to_pb(rr, op->mutable_placement());
    std::vector<float> payload;
    for (const sy::ExpertKey& key : {sy::ExpertKey{0, 0, 1}, sy::ExpertKey{1, 1, 2}}) {
      sy::wire::key_to_pb(key, 1, op->add_experts());
      const sy::ExpertGeometry g = sy::ExpertGeometry::of(two.model, key.stage);
      sy::TensorMap w;
      for (const std::string& n : g.tensor_names()) {
        sy::Tensor t(g.shape(n));
        for (int64_t i = 0; i < t.numel(); ++i) t[i] = 0.01f * static_cast<float>(i);
        w[n] = std::move(t);
      }
      sy::encode_expert_weights(g, w, payload);
    }
    req.set_payload_bytes(payload.size() * sizeof(float));
    const std::string header = req.SerializeAsString();
    const std::string bytes = std::string{static_cast<char>(header.size() & 0xff), static_cast<char>(header.size() >> 8)} +
                              header + std::string(reinterpret_cast<const char*>(payload.data()), payload.size() * sizeof(float));
    put("worker_request", "load-model", bytes);
    put("server_messages", "worker-request-load-model",
        std::string(1, static_cast<char>(message_index("switchyard.cluster.WorkerRequest"))) + header);
    pb::WorkerRequest fw;
    fw.set_request_id(2);
    fw.mutable_forward()->set_dispatch_id(1);
    fw.mutable_forward()->set_keep_for_backward(true);
    sy::wire::key_to_pb({0, 0, 3}, 5, fw.mutable_forward()->add_segments());
    fw.set_payload_bytes(5 * 16 * sizeof(float));
    const std::string fh = fw.SerializeAsString();
    put("worker_request", "forward",
        std::string{static_cast<char>(fh.size()), '\0'} + fh + std::string(5 * 16 * sizeof(float), '\0'));
  }
  std::cout << "wrote the seed corpus under " << out_root << "\n";
  return 0;
}
