// The distributed runtime end to end on loopback: a coordinator (in this process) and worker
// processes (`switchyard worker`) over UCX, or worker threads over the in-process transport
// (cluster.transport: inprocess), clients in this process. Results through the cluster must
// equal the single-process engine; a killed worker must fail its clients quickly, by name.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <atomic>
#include <thread>
#include <tuple>

#include "switchyard/core/error.h"
#include "switchyard/core/secret.h"
#include "switchyard/client/cluster_admin.h"
#include "switchyard/client/cluster_client.h"
#include "switchyard/transport/control.h"
#include "switchyard/wire/wire.h"
#include "switchyard/coordinator/coordinator.h"
#include "switchyard/engine/layer_engine.h"
#include "switchyard/engine/layer_weights.h"
#include "switchyard/engine/moe_model.h"
#include "switchyard/cli/toy_task.h"
#include "switchyard/launch/local_launch.h"
#include "switchyard/worker/worker.h"
#include "../support/trajectory_adamw.h"
#include "../support/free_port.h"
#include "../support/guarded_device_backend.h"
#include "../support/local_cluster.h"
#include "../support/up_process.h"

namespace sy {
namespace {

using namespace std::chrono_literals;
const std::string kModels = std::string(SY_SOURCE_DIR) + "/configs/models/";

double max_abs(const Tensor& t) {
  double m = 0;
  for (float v : t.values()) m = std::max(m, static_cast<double>(std::fabs(v)));
  return m;
}
void expect_close(const Tensor& a, const Tensor& b, const std::string& what, double rel = 1e-5) {
  ASSERT_EQ(a.shape(), b.shape()) << what;
  const double scale = std::max(1e-6, max_abs(b));
  double worst = 0;
  for (int64_t i = 0; i < a.numel(); ++i) worst = std::max(worst, std::fabs(static_cast<double>(a[i]) - b[i]));
  EXPECT_LE(worst, rel * scale) << what << ": max difference " << worst << " against scale " << scale;
}

struct Batch {
  Tensor x, g, attention;
  ImportanceInput imp() const { return {attention.empty() ? nullptr : &attention, nullptr}; }
};
Batch make_batch(const ModelConfig& m, uint64_t seed) {
  RandomStream rng(seed, "cluster-test");
  Batch b{random_tokens(64, m.hidden_size, rng), random_tokens(64, m.hidden_size, rng), {}};
  if (needs_importance(m)) b.attention = random_attention(2, 2, 32, 1.5f, rng);
  return b;
}

// Two clients, three workers, every expert on two workers: forward, backward and the
// optimizer step through the cluster equal the single-process engine.
// Over UCX between processes, and over the in-process transport with the workers as threads.
class ClusterEquivalence : public ::testing::TestWithParam<std::tuple<std::string, std::string>> {
 protected:
  std::string GetParam() const { return std::get<0>(TestWithParam::GetParam()); }
  std::string transport() const { return std::get<1>(TestWithParam::GetParam()); }
};

TEST_P(ClusterEquivalence, TwoClientsThreeWorkersReplicatedExperts) {
  const Config cfg = load_config(kModels + GetParam() + ".yaml");
  const ModelConfig& model = cfg.model;
  LocalCluster cluster(3, 2, 3000, true, {}, transport());
  const TensorMap weights = init_layer_weights(model, 21);

  ClusterClient a(cluster.coordinator->endpoint(), "client A");
  a.load_model(cfg, weights);
  ClusterClient b(cluster.coordinator->endpoint(), "client B");
  b.use_loaded_model(cfg);
  for (const auto& [key, workers] : a.placement().replicas) ASSERT_EQ(workers.size(), 2u) << key.to_string();

  const Batch ba = make_batch(model, 1), bb = make_batch(model, 2);
  // Local references, one engine per client batch.
  TensorMap local_grads_a = zeros_like(weights), local_grads_b = zeros_like(weights);
  LocalExperts la(model, weights, &local_grads_a), lb(model, weights, &local_grads_b);
  LayerEngine ea(model, weights, la), eb(model, weights, lb);
  const Tensor ya_ref = ea.forward(ba.x, ba.imp()), yb_ref = eb.forward(bb.x, bb.imp());
  const Tensor dxa_ref = ea.backward(ba.g, local_grads_a), dxb_ref = eb.backward(bb.g, local_grads_b);

  TensorMap grads_a = zeros_like(weights), grads_b = zeros_like(weights);
  LayerEngine ca(model, weights, a.experts(0)), cb(model, weights, b.experts(0));
  const Tensor ya = ca.forward(ba.x, ba.imp());
  const Tensor yb = cb.forward(bb.x, bb.imp());
  expect_close(ya, ya_ref, GetParam() + " client A forward");
  expect_close(yb, yb_ref, GetParam() + " client B forward");
  expect_close(ca.backward(ba.g, grads_a), dxa_ref, GetParam() + " client A grad_input");
  expect_close(cb.backward(bb.g, grads_b), dxb_ref, GetParam() + " client B grad_input");

  // Expert gradients on the workers: the sum of both clients' contributions.
  const TensorMap expert_grads = a.fetch_expert_grads();
  for (const ParamSpec& spec : layer_param_specs(model)) {
    if (spec.owner != ParamOwner::expert) {
      expect_close(grads_a.at(spec.name), local_grads_a.at(spec.name), spec.name + " (client A dense)");
      continue;
    }
    Tensor sum = local_grads_a.at(spec.name);
    for (int64_t i = 0; i < sum.numel(); ++i) sum[i] += local_grads_b.at(spec.name)[i];
    expect_close(expert_grads.at(spec.name), sum, spec.name + " (experts, both clients)");
  }

  // One optimizer step with both clients as a data-parallel group of 2; replicas reduce first.
  const AdamWConfig adam = testing::trajectory_adamw(1e-2);
  std::thread step_b([&] { b.step(adam, 2, 1); });
  a.step(adam, 2, 1);
  step_b.join();
  TensorMap stepped = weights;
  TensorMap expert_sum;
  for (const ParamSpec& spec : layer_param_specs(model))
    if (spec.owner == ParamOwner::expert) {
      Tensor s = local_grads_a.at(spec.name);
      for (int64_t i = 0; i < s.numel(); ++i) s[i] += local_grads_b.at(spec.name)[i];
      expert_sum.emplace(spec.name, std::move(s));
    }
  AdamW local_adam(adam);
  local_adam.step(stepped, expert_sum);
  LocalExperts ls(model, stepped, nullptr);
  LayerEngine es(model, stepped, ls);
  // Replicas of every expert are bit-identical after the step.
  std::vector<TensorMap> held;
  for (int w = 0; w < 3; ++w) held.push_back(a.fetch_replica_weights(w));
  for (const auto& [key, workers] : a.placement().replicas) {
    const std::string name = layer_prefix(model, key.layer) + "stages." + std::to_string(key.stage) + ".experts." +
                             std::to_string(key.expert) + ".up_proj.weight";
    EXPECT_EQ(held[static_cast<size_t>(workers[0])].at(name).values(), held[static_cast<size_t>(workers[1])].at(name).values())
        << name << " differs between workers " << workers[0] << " and " << workers[1];
    // Against the local step: Adam's first update is ±lr wherever |g| ≫ eps, so an element whose
    // gradient sums differently by rounding can move by a few 1e-5 of lr; a replica stepped with
    // only its own share of the gradient would be off by O(lr). Tolerance: lr / 100.
    const Tensor& mine = held[static_cast<size_t>(workers[0])].at(name);
    double worst = 0;
    for (int64_t i = 0; i < mine.numel(); ++i) worst = std::max(worst, std::fabs(double(mine[i]) - stepped.at(name)[i]));
    EXPECT_LE(worst, adam.lr / 100) << name << " after the step";
  }
  a.set_training(false);
  const Tensor ya2 = ca.forward(ba.x, ba.imp());
  expect_close(ya2, es.forward(ba.x, ba.imp()), GetParam() + " forward after the cluster's AdamW step", 2e-5);
}

INSTANTIATE_TEST_SUITE_P(Models, ClusterEquivalence,
                         ::testing::Combine(::testing::Values("topk", "dynamic", "dag", "cartesian", "combined"),
                                            ::testing::Values("ucx", "inprocess")),
                         [](const auto& p) { return std::get<0>(p.param) + "_" + std::get<1>(p.param); });

// Two layers: a DAG-aggregated top-2 stage, then a top-1 stage with a coefficient-mixed shared expert.
Config two_layer_config() {
  return load_config_string(
      "model:\n  hidden_size: 16\n  layers: 2\n  layer:\n    input_norm: rmsnorm\n    stages:\n"
      "      - {experts: 4, ffn_hidden_size: 8, routing: {k: 2}, aggregation: {kind: dag, levels: 1, dim: 4}}\n"
      "      - {experts: 4, ffn_hidden_size: 8, routing: {k: 1}, shared_expert: {ffn_hidden_size: 8, mix: coefficient}}\n",
      "two-layer");
}

// A two-layer model (client library): the residual composition of two layer engines, and the
// same numbers through the cluster for forward, backward and three training steps.
void two_layers_local_and_cluster_agree(const std::string& transport) {
  const Config cfg = two_layer_config();
  const TensorMap weights = init_model_weights(cfg.model, 5);
  ASSERT_TRUE(weights.count("layers.1.stages.1.router.weight"));
  MoeModel local(cfg, weights);
  LocalCluster cluster(2, 1, 3000, true, {}, transport);
  ClusterClient client(cluster.coordinator->endpoint(), "model client");
  client.load_model(cfg, weights);
  MoeModel remote(cfg, weights, client);
  const Batch batch = make_batch(cfg.model, 3);
  // Composition by hand: h1 = x + layer0(x), h2 = h1 + layer1(h1).
  {
    TensorMap w = weights;
    LocalExperts e0(cfg.model, w, nullptr, "layers.0."), e1(cfg.model, w, nullptr, "layers.1.");
    LayerEngine l0(cfg.model, w, e0, "layers.0."), l1(cfg.model, w, e1, "layers.1.");
    Tensor h = batch.x;
    const Tensor y0 = l0.forward(h);
    for (int64_t i = 0; i < h.numel(); ++i) h[i] += y0[i];
    const Tensor y1 = l1.forward(h);
    for (int64_t i = 0; i < h.numel(); ++i) h[i] += y1[i];
    expect_close(local.forward(batch.x), h, "two-layer forward vs composition", 1e-6);
  }
  for (int step = 0; step < 3; ++step) {
    const Tensor yl = local.forward(batch.x), yr = remote.forward(batch.x);
    expect_close(yr, yl, "step " + std::to_string(step) + " forward", 2e-5);
    expect_close(remote.backward(batch.g), local.backward(batch.g), "step " + std::to_string(step) + " grad_input", 2e-5);
    local.step(testing::trajectory_adamw(1e-2));
    remote.step(testing::trajectory_adamw(1e-2));
  }
}

TEST(MoeModelTest, TwoLayersLocalAndClusterAgree) { two_layers_local_and_cluster_agree("ucx"); }

// A client on a device (the stand-in: memory the host cannot touch outside the backend): the
// dense layers run there and the cluster's rows are staged through host memory
// (StagedExperts). Three training steps give the cpu client's numbers bit for bit, through the
// same kind of cluster (the stand-in computes with the CPU kernels).
TEST(MoeModelTest, AClientOnADeviceTrainsThroughTheClusterLikeACpuClient) {
  const Config cfg = two_layer_config();
  const TensorMap weights = init_model_weights(cfg.model, 5);
  const Batch batch = make_batch(cfg.model, 3);
  test_support::GuardedDeviceBackend device;
  std::vector<Tensor> outputs[2], input_grads[2];
  for (int on_device = 0; on_device < 2; ++on_device) {
    LocalCluster cluster(2, 1, 3000, true, {}, "inprocess");
    ClusterClient client(cluster.coordinator->endpoint(), "device client");
    client.load_model(cfg, weights);
    MoeModel model(cfg, weights, client, on_device ? static_cast<Backend&>(device) : cpu_backend());
    for (int step = 0; step < 3; ++step) {
      outputs[on_device].push_back(model.forward(batch.x));
      input_grads[on_device].push_back(model.backward(batch.g));
      model.step(AdamWConfig{.lr = 1e-2});
    }
  }
  for (int step = 0; step < 3; ++step) {
    EXPECT_EQ(outputs[1][static_cast<size_t>(step)].values(), outputs[0][static_cast<size_t>(step)].values()) << step;
    EXPECT_EQ(input_grads[1][static_cast<size_t>(step)].values(), input_grads[0][static_cast<size_t>(step)].values())
        << step;
  }
  EXPECT_GT(device.ops["adamw"], 0);  // the dense parameters stepped on the device
}

// SWITCHYARD_SECRET set for the test process (and so for its worker processes): the same
// cluster with every control connection authenticated.
struct SecretEnv {
  explicit SecretEnv(const std::string& s) { ::setenv(kSecretEnv, s.c_str(), 1); }
  ~SecretEnv() { ::unsetenv(kSecretEnv); }
};
const std::string kTestSecret = "test-cluster-secret-0123456789";

TEST(ClusterAuth, TwoLayersThroughAnAuthenticatedClusterAgree) {
  SecretEnv env(kTestSecret);
  two_layers_local_and_cluster_agree("ucx");
}

// An Attach to a worker's control server from a peer without the secret, or with another one,
// never reaches the worker: its data plane only ever connects clients that authenticated.
TEST(ClusterAuth, UnauthenticatedAttachToAWorkerIsRefused) {
  SecretEnv env(kTestSecret);
  LocalCluster cluster(2, 1);
  for (int i = 0; i < 6000 && cluster.coordinator->alive_workers() < 2; ++i) std::this_thread::sleep_for(10ms);
  const ClusterStatus status = query_cluster_status(cluster.coordinator->endpoint());
  ASSERT_EQ(status.workers.size(), 2u) << "the workers did not register (authenticated) within 60 s";
  for (const std::string& secret : {std::string(), std::string("not-the-cluster-secret-at-all")}) {
    auto [host, port] = control::parse_endpoint(status.workers[0].control_endpoint);
    control::ControlClient::Options o;
    o.name = "intruder";
    o.secret = secret;
    auto c = control::ControlClient::connect(host, port, o);
    ASSERT_FALSE(c) << "an unauthenticated peer got a connection to worker 0";
    EXPECT_NE(c.status().message().find(secret.empty() ? "has no shared secret" : "authentication refused"),
              std::string::npos)
        << c.status().to_string();
  }
  // The coordinator refuses it just the same (no Register, no Publish into the rendezvous).
  auto [chost, cport] = control::parse_endpoint(cluster.coordinator->endpoint());
  auto c = control::ControlClient::connect(chost, cport, control::ControlClient::Options{});
  ASSERT_FALSE(c);
  // A client with the secret attaches and computes.
  two_layers_local_and_cluster_agree("inprocess");
}

// The coordinator's limits: a PlanPlacementRequest above its limit is refused by size before
// any parsing; one within it is parsed on the handler thread while heartbeats go on.
TEST(CoordinatorLimits, OversizedPlanRefusedAndHeartbeatsAnsweredDuringAPlan) {
  ClusterConfig c = test_cluster_config(1, 1, "inprocess");
  Coordinator coordinator(c);
  auto [host, port] = control::parse_endpoint(coordinator.endpoint());
  control::ControlClient::Options o;
  o.name = "limits test";
  o.call_timeout = 120s;
  auto worker = control::ControlClient::connect(host, port, o);
  ASSERT_TRUE(worker) << worker.status().to_string();
  wire::pb::RegisterWorkerRequest reg;
  reg.set_requested_id(0);
  auto r = (*worker)->call<wire::pb::RegisterWorkerRequest, wire::pb::RegisterWorkerReply>(reg);
  ASSERT_TRUE(r) << r.status().to_string();
  // 15 MB, the measurement: beyond every request type's limit, so dropped on its length
  // alone (nothing allocated for it, the connection closed); 2 MiB: refused by the plan's own
  // limit, naming the type, and that connection stays usable.
  {
    auto reckless = control::ControlClient::connect(host, port, o);
    ASSERT_TRUE(reckless);
    wire::pb::PlanPlacementRequest huge;
    huge.set_model_yaml("x: [" + std::string(15 << 20, '1') + "]");
    auto dropped = (*reckless)->call<wire::pb::PlanPlacementRequest, wire::pb::PlanPlacementReply>(huge);
    ASSERT_FALSE(dropped);
    EXPECT_TRUE((*reckless)->broken()) << dropped.status().to_string();
  }
  auto planner = control::ControlClient::connect(host, port, o);
  ASSERT_TRUE(planner);
  wire::pb::PlanPlacementRequest two_mib;
  two_mib.set_model_yaml(std::string(2 << 20, '#'));
  auto refused = (*planner)->call<wire::pb::PlanPlacementRequest, wire::pb::PlanPlacementReply>(two_mib);
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.status().code(), StatusCode::invalid_argument);
  EXPECT_NE(refused.status().message().find("PlanPlacementRequest of 2097157 bytes exceeds its limit of 1048576 bytes"),
            std::string::npos)
      << refused.status().to_string();
  EXPECT_FALSE((*planner)->broken());
  // Within the limit: a 1 MiB YAML sequence, parsed (and refused: no `model:`) beside the I/O thread.
  std::string items;
  while (items.size() < (1000u << 10)) items += "1,";
  wire::pb::PlanPlacementRequest big;
  big.set_model_yaml("x: [" + items + "1]");
  std::atomic<bool> planning{true};
  const auto start = std::chrono::steady_clock::now();
  std::thread plan([&] {
    auto reply = (*planner)->call<wire::pb::PlanPlacementRequest, wire::pb::PlanPlacementReply>(big);
    EXPECT_FALSE(reply);  // not a model
    EXPECT_EQ(reply.status().code(), StatusCode::invalid_argument) << reply.status().to_string();
    planning = false;
  });
  int beats = 0, beats_during = 0;
  double worst_ms = 0;
  while (planning || beats == 0) {
    wire::pb::HeartbeatRequest hb;
    hb.set_worker_id(0);
    const auto t0 = std::chrono::steady_clock::now();
    const bool was_planning = planning;
    auto beat = (*worker)->call<wire::pb::HeartbeatRequest, wire::pb::HeartbeatReply>(hb);
    ASSERT_TRUE(beat) << beat.status().to_string();
    worst_ms = std::max(worst_ms, std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    ++beats;
    beats_during += was_planning && planning;
    std::this_thread::sleep_for(20ms);
  }
  plan.join();
  const double plan_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  std::cout << "plan of a " << big.model_yaml().size() << "-byte YAML: " << plan_ms << " ms; " << beats_during
            << " heartbeats answered during it, the slowest in " << worst_ms << " ms\n";
  RecordProperty("plan_ms", std::to_string(plan_ms));
  RecordProperty("heartbeat_worst_ms", std::to_string(worst_ms));
}

// Hosts stood in for by loopback addresses: the coordinator on 127.0.0.2, workers bound to
// 127.0.0.3 and 127.0.0.4, UCX over TCP, each worker's rank and coordinator taken from the
// environment of a different launcher (torchrun, Open MPI, Slurm).

TEST(ClusterLaunchers, TorchrunMpirunSlurmEnvironmentsOnLoopbackHosts) {
  const std::string dir = ::testing::TempDir() + "/sy_launch_" + std::to_string(::getpid());
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/cluster.yaml") << "cluster:\n  workers: 3\n  ucx_tls: tcp,self\n";
  const int port = free_port("127.0.0.2");
  const std::string coord = "127.0.0.2:" + std::to_string(port);
  auto coordinator = launch::LocalProcess::spawn(
      {kBinary, "coordinator", "--config", dir + "/cluster.yaml", "--listen", coord});
  const std::vector<std::pair<std::string, std::string>> tcp = {{"UCX_TLS", "tcp,self"}};
  auto with = [&](std::vector<std::pair<std::string, std::string>> env) {
    env.insert(env.end(), tcp.begin(), tcp.end());
    return env;
  };
  std::vector<launch::LocalProcess> workers;
  // torchrun: RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT; the coordinator listens on MASTER_PORT+1.
  workers.push_back(launch::LocalProcess::spawn(
      {kBinary, "worker", "--bind", "127.0.0.3"},
      with({{"RANK", "0"}, {"WORLD_SIZE", "3"}, {"MASTER_ADDR", "127.0.0.2"}, {"MASTER_PORT", std::to_string(port - 1)}})));
  // Open MPI: OMPI_COMM_WORLD_*; the coordinator from SWITCHYARD_COORDINATOR.
  workers.push_back(launch::LocalProcess::spawn(
      {kBinary, "worker", "--bind", "127.0.0.4"},
      with({{"OMPI_COMM_WORLD_RANK", "1"}, {"OMPI_COMM_WORLD_SIZE", "3"}, {"SWITCHYARD_COORDINATOR", coord}})));
  // Slurm: SLURM_PROCID/SLURM_NTASKS.
  workers.push_back(launch::LocalProcess::spawn(
      {kBinary, "worker", "--bind", "127.0.0.3"},
      with({{"SLURM_PROCID", "2"}, {"SLURM_NTASKS", "3"}, {"SWITCHYARD_COORDINATOR", coord}})));
  ::setenv("UCX_TLS", "tcp,self", 1);
  {
    const Config cfg = load_config(kModels + "dynamic.yaml");
    const TensorMap weights = init_layer_weights(cfg.model, 2);
    ClusterClient client(coord, "launcher client");
    const ClusterStatus st = query_cluster_status(coord);
    ASSERT_EQ(st.workers.size(), 3u);
    EXPECT_NE(st.workers[0].control_endpoint.find("127.0.0.3:"), std::string::npos);
    EXPECT_NE(st.workers[1].control_endpoint.find("127.0.0.4:"), std::string::npos);
    client.load_model(cfg, weights);
    client.set_training(false);
    const Batch batch = make_batch(cfg.model, 4);
    LocalExperts local(cfg.model, weights, nullptr);
    LayerEngine le(cfg.model, weights, local), ce(cfg.model, weights, client.experts(0));
    expect_close(ce.forward(batch.x, batch.imp()), le.forward(batch.x, batch.imp()), "forward over TCP between 'hosts'");
    request_cluster_shutdown(coord);
  }
  ::unsetenv("UCX_TLS");
  auto coordinator_exit = coordinator.wait(10000ms);
  ASSERT_TRUE(coordinator_exit.is_ok()) << coordinator_exit.status().to_string();
  EXPECT_EQ(coordinator_exit.value(), 0);
  for (auto& w : workers)
    if (w.running()) ::kill(w.pid(), SIGTERM);
  for (auto& w : workers) (void)w.wait(5000ms);
  std::filesystem::remove_all(dir);
}

// Over TCP, where UCX grants peer failure detection, with it on (the default: UCX fails the
// requests) and off (cluster.ucx_peer_failure: false: UCX promises nothing, the coordinator's
// heartbeats are the backstop; over TCP UCX 1.13 still reports the reset connection).
class ClusterFailure : public ::testing::TestWithParam<bool> {};
TEST_P(ClusterFailure, KilledWorkerFailsClientNamingItAndIsMarkedDead) {
  const Config cfg = load_config(kModels + "topk.yaml");
  ::setenv("UCX_TLS", "tcp,self", 1);  // this process's client endpoints
  struct RestoreEnv {
    ~RestoreEnv() { ::unsetenv("UCX_TLS"); }
  } restore;
  LocalCluster cluster(2, 1, /*dead_after_ms=*/1500, /*ucx_peer_failure=*/GetParam(), {{"UCX_TLS", "tcp,self"}});
  const TensorMap weights = init_layer_weights(cfg.model, 3);
  ClusterClient client(cluster.coordinator->endpoint(), "client");
  client.load_model(cfg, weights);
  LayerEngine layer(cfg.model, weights, client.experts(0));
  const Batch batch = make_batch(cfg.model, 5);
  layer.forward(batch.x, batch.imp());  // healthy
  cluster.workers[1].kill();             // SIGKILL mid-training
  const auto start = std::chrono::steady_clock::now();
  try {
    layer.forward(batch.x, batch.imp());
    FAIL() << "forward through a dead worker succeeded";
  } catch (const Error& e) {
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    EXPECT_NE(std::string(e.what()).find("worker 1"), std::string::npos) << e.what();
    // Noticed as a failure (UCX peer error or the coordinator's liveness), not by running into
    // the 20 s request timeout: no wall-clock bound is asserted, the cause is.
    EXPECT_EQ(std::string(e.what()).find("did not answer within"), std::string::npos) << e.what();
    std::printf("[ info ] the client noticed the dead worker after %.2f s: %s\n", secs, e.what());
  }
  // The coordinator marks it dead once its heartbeats stop for dead_after_ms (1.5 s here).
  ClusterStatus status;
  const auto deadline = std::chrono::steady_clock::now() + 6s;
  do {
    std::this_thread::sleep_for(100ms);
    status = query_cluster_status(cluster.coordinator->endpoint());
    ASSERT_EQ(status.workers.size(), 2u);
  } while (status.workers[1].alive && std::chrono::steady_clock::now() < deadline);
  EXPECT_TRUE(status.workers[0].alive);
  EXPECT_FALSE(status.workers[1].alive) << "worker 1 still alive " << status.workers[1].ms_since_heartbeat << " ms after its last heartbeat";
}
INSTANTIATE_TEST_SUITE_P(UcxPeerFailure, ClusterFailure, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& p) { return p.param ? "on" : "off"; });

TEST(ClusterCheckpoint, SaveRestoreRoundTrip) {
  const Config cfg = load_config(kModels + "dag.yaml");
  LocalCluster cluster(2, 1);
  const TensorMap weights = init_layer_weights(cfg.model, 8);
  ClusterClient client(cluster.coordinator->endpoint(), "client");
  client.load_model(cfg, weights);
  TensorMap grads = zeros_like(weights);
  LayerEngine layer(cfg.model, weights, client.experts(0));
  const Batch batch = make_batch(cfg.model, 9);
  layer.forward(batch.x, batch.imp());
  layer.backward(batch.g, grads);
  client.step(testing::trajectory_adamw(1e-2), 1, 1);
  const std::string dir = ::testing::TempDir() + "/sy_ckpt_" + std::to_string(::getpid());
  std::filesystem::create_directories(dir);
  client.save_checkpoint(dir);
  client.set_training(false);
  const Tensor y_saved = layer.forward(batch.x, batch.imp());
  // Move the experts on with another step, then restore: outputs return to the saved ones.
  client.set_training(true);
  layer.forward(batch.x, batch.imp());
  layer.backward(batch.g, grads);
  client.step(testing::trajectory_adamw(1e-2), 1, 2);
  client.set_training(false);
  const Tensor y_moved = layer.forward(batch.x, batch.imp());
  client.restore_checkpoint(dir);
  const Tensor y_restored = layer.forward(batch.x, batch.imp());
  EXPECT_NE(y_moved.values(), y_saved.values());
  EXPECT_EQ(y_restored.values(), y_saved.values());
  std::filesystem::remove_all(dir);
}

// Issue 12: errors that come back from the cluster keep their exit codes. A placement the
// coordinator cannot use (cluster.placement names a worker the cluster lacks) was exit 4 on the
// client; it is a config error naming the file. A worker's input error (a checkpoint directory
// without the files) is exit 3 on the client, naming the worker and the file.
TEST(ClusterErrors, BadPlacementIsConfigAndWorkerInputErrorIsInput) {
  const std::string dir = ::testing::TempDir() + "/sy_errors_" + std::to_string(::getpid());
  std::filesystem::create_directories(dir);
  const Config cfg = load_config(kModels + "topk.yaml");
  const TensorMap weights = init_layer_weights(cfg.model, 3);
  {
    ClusterConfig c = test_cluster_config(2, 1, "inprocess");
    c.placement = dir + "/p.yaml";
    std::ofstream(c.placement) << "placement:\n  experts:\n    - {layer: 0, stage: 0, experts: all, workers: [5]}\n";
    LocalCluster cluster(c);
    ClusterClient client(cluster.coordinator->endpoint(), "client");
    try {
      client.load_model(cfg, weights);
      ADD_FAILURE() << "load_model accepted a placement naming worker 5 of 2";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::config) << e.what();
      EXPECT_EQ(e.exit_code(), 2);
      EXPECT_NE(std::string(e.what()).find(c.placement + ":3: placement.experts[0].workers: worker 5 does not exist"),
                std::string::npos)
          << e.what();
    }
  }
  {
    LocalCluster cluster(test_cluster_config(2, 1, "inprocess"));
    ClusterClient client(cluster.coordinator->endpoint(), "client");
    client.load_model(cfg, weights);
    try {
      client.restore_checkpoint(dir + "/no-such-checkpoint");
      ADD_FAILURE() << "restored from a directory without checkpoint files";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::input) << e.what();
      EXPECT_EQ(e.exit_code(), 3);
      EXPECT_NE(std::string(e.what()).find("no-such-checkpoint/worker-"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("file does not exist"), std::string::npos) << e.what();
    }
  }
  std::filesystem::remove_all(dir);
}

// `switchyard up` prints its endpoint and readiness, answers `status`, runs `layer forward
// --cluster` equal to the local command, and stops cleanly on SIGINT.
TEST(ClusterCli, UpStatusLayerForwardAndSigint) {
  const std::string dir = ::testing::TempDir() + "/sy_up_" + std::to_string(::getpid());
  std::filesystem::create_directories(dir);
  const std::string cfg_path = dir + "/cluster.yaml";
  std::ofstream(cfg_path) << "cluster:\n  workers: 3\n  replicas: 2\n";
  UpProcess up(cfg_path);
  ASSERT_TRUE(up.ready()) << "no 'cluster ready' line";
  const std::string& endpoint = up.endpoint();
  auto [code, status] = run_cli("", "status --cluster " + endpoint);
  EXPECT_EQ(code, 0) << status;
  EXPECT_NE(status.find("workers 3/3"), std::string::npos) << status;
  EXPECT_EQ(run_cli("", "layer init --config " + kModels + "cartesian.yaml --out " + dir + "/w.safetensors").first, 0);
  const Config cfg = load_config(kModels + "cartesian.yaml");
  RandomStream rng(4, "x");
  write_npy(dir + "/x.npy", random_tokens(48, cfg.model.hidden_size, rng));
  const std::string common = "layer forward --config " + kModels + "cartesian.yaml --weights " + dir +
                             "/w.safetensors --input " + dir + "/x.npy --output ";
  auto local = run_cli("", common + dir + "/y_local.npy");
  ASSERT_EQ(local.first, 0) << local.second;
  auto remote = run_cli("", common + dir + "/y_cluster.npy --cluster " + endpoint);
  ASSERT_EQ(remote.first, 0) << remote.second;
  expect_close(read_npy(dir + "/y_cluster.npy"), read_npy(dir + "/y_local.npy"), "layer forward --cluster");
  auto [code2, status2] = run_cli("", "status --cluster " + endpoint);
  EXPECT_NE(status2.find("model loaded"), std::string::npos) << status2;
  auto [exit_code, rest] = up.stop();
  EXPECT_EQ(exit_code, 0) << rest;
  EXPECT_NE(rest.find("cluster stopped"), std::string::npos) << rest;
  std::filesystem::remove_all(dir);
}

// `switchyard up` with cluster.restart_workers: a worker killed under a loaded model is started
// again in its slot; the new process joins as a replacement, the recovery copies the lost
// replicas to it, and the cluster answers `layer forward` as before, equal to the local command.
TEST(ClusterCli, UpRestartsAKilledWorkerWhichReceivesItsReplicasAgain) {
  const std::string dir = ::testing::TempDir() + "/sy_up_restart_" + std::to_string(::getpid());
  std::filesystem::create_directories(dir);
  const std::string cfg_path = dir + "/cluster.yaml";
  std::ofstream(cfg_path) << "cluster:\n  workers: 3\n  replicas: 2\n  heartbeat_ms: 200\n  restart_workers: true\n";
  UpProcess up(cfg_path);
  ASSERT_TRUE(up.ready()) << "no 'cluster ready' line";
  const std::string& endpoint = up.endpoint();
  ASSERT_EQ(run_cli("", "layer init --config " + kModels + "topk.yaml --out " + dir + "/w.safetensors").first, 0);
  const Config cfg = load_config(kModels + "topk.yaml");
  RandomStream rng(5, "x");
  write_npy(dir + "/x.npy", random_tokens(48, cfg.model.hidden_size, rng));
  const std::string forward = "layer forward --config " + kModels + "topk.yaml --weights " + dir + "/w.safetensors --input " +
                              dir + "/x.npy --output ";
  ASSERT_EQ(run_cli("", forward + dir + "/y_local.npy").first, 0);
  auto first = run_cli("", forward + dir + "/y_1.npy --cluster " + endpoint);
  ASSERT_EQ(first.first, 0) << first.second;
  const ClusterStatus before = query_cluster_status(endpoint);
  const auto started = std::chrono::steady_clock::now();
  ::kill(static_cast<pid_t>(before.workers.at(1).pid), SIGKILL);
  std::string line;
  bool restarted = false;
  while (!restarted && up.next_line(line)) restarted = line.rfind("worker 1 (pid ", 0) == 0 && line.find("restarted as pid") != std::string::npos;
  ASSERT_TRUE(restarted) << "up did not report restarting worker 1";
  std::optional<ClusterStatus> after;
  while (!after && std::chrono::steady_clock::now() - started < 60s) {
    ClusterStatus s = query_cluster_status(endpoint);
    const WorkerStatus& w = s.workers.at(1);
    if (w.alive && w.restarts == 1 && !w.replacement && !s.placement.experts_on(1).empty()) after = std::move(s);
    else std::this_thread::sleep_for(50ms);
  }
  ASSERT_TRUE(after) << "the restarted worker received no replicas within 60 s";
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  std::printf("[ info ] kill -> restarted worker holds replicas again: %.2f s\n", seconds);
  EXPECT_NE(after->workers.at(1).pid, before.workers.at(1).pid);
  EXPECT_GE(after->workers.at(1).data_plane_id, 3);
  for (const auto& [key, workers] : after->placement.replicas) EXPECT_EQ(workers.size(), 2u) << key.to_string();
  auto [code, status] = run_cli("", "status --cluster " + endpoint);
  EXPECT_NE(status.find("restarted 1x"), std::string::npos) << status;
  auto second = run_cli("", forward + dir + "/y_2.npy --cluster " + endpoint);
  ASSERT_EQ(second.first, 0) << second.second;
  expect_close(read_npy(dir + "/y_2.npy"), read_npy(dir + "/y_local.npy"), "layer forward after the restart");
  auto [exit_code, rest] = up.stop();
  EXPECT_EQ(exit_code, 0) << rest;
  std::filesystem::remove_all(dir);
}

// `switchyard up` with cluster.auth.secret_file: its workers get the secret (they register and
// heartbeat), admin commands need SWITCHYARD_SECRET to be served, and a wrong one is refused.
TEST(ClusterCli, UpWithASecretFile) {
  ::unsetenv(kSecretEnv);
  const std::string dir = ::testing::TempDir() + "/sy_up_auth_" + std::to_string(::getpid());
  std::filesystem::create_directories(dir);
  const std::string secret_path = dir + "/secret";
  std::ofstream(secret_path) << kTestSecret << "\n";
  std::filesystem::permissions(secret_path, std::filesystem::perms::owner_read | std::filesystem::perms::owner_write);
  const std::string cfg_path = dir + "/cluster.yaml";
  std::ofstream(cfg_path) << "cluster:\n  workers: 2\n  auth:\n    secret_file: secret\n";
  UpProcess up(cfg_path);
  ASSERT_TRUE(up.ready()) << "no 'cluster ready' line: the workers did not authenticate";
  const std::string& endpoint = up.endpoint();
  auto [no_code, no_text] = run_cli("", "status --cluster " + endpoint);
  EXPECT_EQ(no_code, 4) << no_text;
  EXPECT_NE(no_text.find("SWITCHYARD_SECRET"), std::string::npos) << no_text;
  auto [wrong_code, wrong_text] = run_cli("SWITCHYARD_SECRET=a-wrong-secret-of-enough-bytes", "status --cluster " + endpoint);
  EXPECT_EQ(wrong_code, 4) << wrong_text;
  EXPECT_NE(wrong_text.find("authentication refused"), std::string::npos) << wrong_text;
  const std::string with = "SWITCHYARD_SECRET=" + kTestSecret;
  auto [code, status] = run_cli(with, "status --cluster " + endpoint);
  EXPECT_EQ(code, 0) << status;
  EXPECT_NE(status.find("workers 2/2"), std::string::npos) << status;
  // A client command with a config naming the secret file needs no SWITCHYARD_SECRET.
  const std::string bench_cfg = dir + "/bench.yaml";
  {
    std::ifstream model(kModels + "topk.yaml");
    std::ofstream(bench_cfg) << model.rdbuf() << "\ncluster:\n  workers: 2\n  auth:\n    secret_file: secret\n";
  }
  auto [bench_code, bench_text] =
      run_cli("", "bench serve --cluster " + endpoint + " --config " + bench_cfg + " --clients 1 --requests 2 --tokens 64");
  EXPECT_EQ(bench_code, 0) << bench_text;
  EXPECT_EQ(run_cli(with, "shutdown --cluster " + endpoint).first, 0);
  auto [exit_code, rest] = up.stop();
  EXPECT_EQ(exit_code, 0) << rest;
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace sy
