// Observability (README "Observability", issue 14): the coordinator's /metrics parsed by the
// Prometheus client's own text parser and checked against what a real `switchyard up` cluster
// did; the dashboard in headless Chromium; the HTTP token; `status --watch`; `placement show`;
// SWITCHYARD_LOG_FORMAT=json.
#include <gtest/gtest.h>
#include <png.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "../support/local_cluster.h"
#include "../support/test_model.h"
#include "../support/up_process.h"
#include "switchyard/cli/toy_task.h"
#include "switchyard/client/cluster_admin.h"
#include "switchyard/client/cluster_client.h"
#include "switchyard/engine/layer_weights.h"
#include "switchyard/engine/moe_model.h"
#include "switchyard/core/io.h"
#include "switchyard/core/log.h"
#include "switchyard/core/secret.h"
#include "switchyard/placement/load_trace.h"
#include "switchyard/placement/planner.h"

namespace sy {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;

const std::string kModels = std::string(SY_SOURCE_DIR) + "/configs/models/";
const std::string kScripts = std::string(SY_SOURCE_DIR) + "/tests/observability/";
const std::string kPython = "/usr/bin/python3";


// A scrape of /metrics as the Prometheus client's parser read it.
struct Scrape {
  json doc;
  // Σ of `sample`'s values whose labels include every (key, value) of `match`.
  double sum(const std::string& sample, const std::map<std::string, std::string>& match = {}) const {
    double total = 0;
    for (const json& s : doc["samples"]) {
      if (s[0] != sample) continue;
      bool ok = true;
      for (const auto& [k, v] : match) ok = ok && s[1].contains(k) && s[1][k] == v;
      if (ok) total += s[2].get<double>();
    }
    return total;
  }
  int count(const std::string& sample, const std::map<std::string, std::string>& match = {}) const {
    int n = 0;
    for (const json& s : doc["samples"]) {
      bool ok = s[0] == sample;
      for (const auto& [k, v] : match) ok = ok && s[1].contains(k) && s[1][k] == v;
      n += ok;
    }
    return n;
  }
};

Scrape scrape(const std::string& http, const std::string& token = "") {
  auto [code, out] = run_shell(kPython + " " + kScripts + "parse_metrics.py http://" + http + "/metrics" +
                           (token.empty() ? "" : " --token " + token));
  EXPECT_EQ(code, 0) << "the Prometheus parser refused /metrics";
  Scrape s;
  s.doc = json::parse(code == 0 ? out : "{\"samples\": [], \"families\": {}}");
  return s;
}

std::string temp_dir(const std::string& name) {
  const std::string dir = ::testing::TempDir() + "/sy_obs_" + name + "_" + std::to_string(::getpid());
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

// topk.yaml's model (d 64, 8 experts, top-2, dropless) with a 3-worker cluster, every expert on 2.
std::string write_cluster_config(const std::string& dir) {
  std::ifstream model(kModels + "topk.yaml");
  std::stringstream text;
  text << model.rdbuf() << "cluster:\n  workers: 3\n  replicas: 2\n  heartbeat_ms: 200\n";
  const std::string path = dir + "/cluster.yaml";
  std::ofstream(path) << text.str();
  return path;
}

// The coordinator's /metrics, every worker's rows, the load window and the client-side counts
// against what this test made the cluster do: 4 training steps of train-toy (256 tokens per
// step, 2 evaluations), one `layer forward` of 48 tokens, one rebalance to a placement file;
// then `status --watch` and `placement show` on the same cluster, and the JSON logs it wrote.
TEST(ObservabilityCluster, MetricsMatchWhatTheClusterDid) {
  const std::string dir = temp_dir("metrics");
  const std::string cfg = write_cluster_config(dir);
  const std::string log_path = dir + "/up.log";
  UpProcess up(cfg, {{"SWITCHYARD_LOG_FORMAT", "json"}, {"SWITCHYARD_LOG", "info"}}, log_path);
  ASSERT_TRUE(up.ready()) << "no 'cluster ready' line";
  ASSERT_FALSE(up.http_endpoint().empty()) << "no 'dashboard at http://...' line";
  const std::string& ep = up.endpoint();

  const int steps = 4;
  auto toy = run_cli("", "train-toy --config " + cfg + " --cluster " + ep + " --steps " + std::to_string(steps) + " --no-progress");
  ASSERT_EQ(toy.first, 0) << toy.second;
  ASSERT_NE(toy.second.find("tokens/step=256"), std::string::npos) << toy.second;
  const int64_t toy_tokens = 256;
  ASSERT_EQ(run_cli("", "layer init --config " + cfg + " --out " + dir + "/w.safetensors").first, 0);
  RandomStream rng(4, "x");
  write_npy(dir + "/x.npy", random_tokens(48, 64, rng));
  auto fwd = run_cli("", "layer forward --config " + cfg + " --weights " + dir + "/w.safetensors --input " + dir +
                             "/x.npy --output " + dir + "/y.npy --cluster " + ep);
  ASSERT_EQ(fwd.first, 0) << fwd.second;
  std::ofstream(dir + "/placement.yaml") << "placement:\n  experts:\n"
                                            "    - {layer: 0, stage: 0, experts: \"0-3\", workers: [0, 1], shares: [0.75, 0.25]}\n"
                                            "    - {layer: 0, stage: 0, experts: \"4-7\", workers: [2, 1]}\n";
  auto reb = run_cli("", "rebalance --cluster " + ep + " --placement " + dir + "/placement.yaml");
  ASSERT_EQ(reb.first, 0) << reb.second;
  auto printed = [&](const std::string& key) {
    const size_t at = reb.second.find(key + ": ");
    return at == std::string::npos ? -1.0 : std::stod(reb.second.substr(at + key.size() + 2));
  };

  // Every worker's counters reach the coordinator with its heartbeats: wait until they are in.
  const int64_t forward_rows = 2 * (48 + (steps + 2) * toy_tokens);  // top-2: per token 2 rows
  const int64_t backward_rows = 2 * steps * toy_tokens;
  ClusterStatus status;
  Scrape m;
  for (auto deadline = std::chrono::steady_clock::now() + 30s; std::chrono::steady_clock::now() < deadline;) {
    status = query_cluster_status(ep);
    int64_t fwd_sum = 0, bwd_sum = 0;
    for (const WorkerStatus& w : status.workers) fwd_sum += static_cast<int64_t>(w.rows_forward), bwd_sum += static_cast<int64_t>(w.rows_backward);
    m = scrape(up.http_endpoint());
    if (fwd_sum == forward_rows && bwd_sum == backward_rows && m.sum("switchyard_clients_attached") == 0 &&
        m.sum("switchyard_worker_rows_total") == static_cast<double>(forward_rows + backward_rows))
      break;
    std::this_thread::sleep_for(200ms);
  }
  EXPECT_EQ(m.doc["content_type"], "text/plain; version=0.0.4; charset=utf-8");
  EXPECT_EQ(m.doc["families"]["switchyard_worker_rows"], "counter");
  EXPECT_EQ(m.doc["families"]["switchyard_serve_request_duration_seconds"], "histogram");
  EXPECT_EQ(m.doc["families"]["switchyard_balancedness_min"], "gauge");

  // Members.
  EXPECT_EQ(m.sum("switchyard_workers_expected"), 3);
  EXPECT_EQ(m.sum("switchyard_workers_alive"), 3);
  EXPECT_EQ(m.count("switchyard_worker_up"), 3);
  EXPECT_EQ(m.sum("switchyard_worker_up"), 3);
  EXPECT_EQ(m.sum("switchyard_clients_attached"), 0);
  for (const WorkerStatus& w : status.workers) {
    const std::map<std::string, std::string> me{{"worker", std::to_string(w.id)}};
    EXPECT_EQ(m.sum("switchyard_worker_rows_total", {{"worker", std::to_string(w.id)}, {"direction", "forward"}}),
              static_cast<double>(w.rows_forward)) << "worker " << w.id;
    EXPECT_EQ(m.sum("switchyard_worker_rows_total", {{"worker", std::to_string(w.id)}, {"direction", "backward"}}),
              static_cast<double>(w.rows_backward)) << "worker " << w.id;
    EXPECT_EQ(m.sum("switchyard_worker_optimizer_steps_total", me), steps) << "worker " << w.id;
    // The clients' dispatch plans per worker: what each worker computed forward.
    EXPECT_EQ(m.sum("switchyard_expert_rows_total", me), static_cast<double>(w.rows_forward)) << "worker " << w.id;
    // Payloads: every forward and backward row is d floats each way (weights too, inbound).
    const double row_bytes = 64 * 4.0 * static_cast<double>(w.rows_forward + w.rows_backward);
    EXPECT_GE(m.sum("switchyard_worker_received_bytes_total", me), row_bytes) << "worker " << w.id;
    EXPECT_GE(m.sum("switchyard_worker_sent_bytes_total", me), row_bytes) << "worker " << w.id;
    EXPECT_GT(m.sum("switchyard_worker_busy_seconds_total", me), 0) << "worker " << w.id;
  }
  // Experts: what routing did (dropless: routed = computed), summed over the 8 experts.
  EXPECT_EQ(m.count("switchyard_expert_routed_rows_total"), 8);
  EXPECT_EQ(m.sum("switchyard_expert_routed_rows_total"), static_cast<double>(forward_rows));
  EXPECT_EQ(m.sum("switchyard_expert_computed_rows_total"), static_cast<double>(forward_rows));
  EXPECT_EQ(m.sum("switchyard_expert_rows_total"), static_cast<double>(forward_rows));
  double window = 0;
  for (int64_t v : status.load.computed) window += static_cast<double>(v);
  EXPECT_EQ(m.sum("switchyard_expert_window_rows"), window);
  EXPECT_DOUBLE_EQ(m.sum("switchyard_balancedness_avg"), status.load.balancedness);
  EXPECT_DOUBLE_EQ(m.sum("switchyard_balancedness_min"), status.load.balancedness_min);
  for (int e = 0; e < 8; ++e)  // the placement file's shares, after the rebalance
    EXPECT_NEAR(m.sum("switchyard_expert_replica_share", {{"expert", std::to_string(e)}}), 1.0, 1e-9) << "expert " << e;
  EXPECT_DOUBLE_EQ(m.sum("switchyard_expert_replica_share", {{"expert", "2"}, {"worker", "0"}}), 0.75);

  // Rebalances, failures.
  EXPECT_EQ(m.sum("switchyard_rebalances_total", {{"source", "placement file"}, {"result", "committed"}}), 1);
  EXPECT_EQ(m.sum("switchyard_rebalances_total"), 1);
  EXPECT_EQ(m.sum("switchyard_rebalance_moved_bytes_total"), printed("moved_bytes"));
  EXPECT_EQ(m.sum("switchyard_rebalance_moved_replicas_total"), printed("moved_replicas"));
  EXPECT_GT(printed("moved_replicas"), 0);
  EXPECT_GE(m.sum("switchyard_rebalance_pause_seconds_total"), 0);
  EXPECT_EQ(m.sum("switchyard_failovers_total"), 0);
  EXPECT_EQ(m.sum("switchyard_recoveries_total"), 0);
  EXPECT_EQ(m.sum("switchyard_placement_epoch"), static_cast<double>(status.placement_epoch));

  // Latency histograms: 3 serving requests (layer forward, train-toy's two evaluations), 4 steps.
  EXPECT_EQ(m.sum("switchyard_serve_request_duration_seconds_count"), 3);
  EXPECT_EQ(m.sum("switchyard_serve_request_duration_seconds_bucket", {{"le", "+Inf"}}), 3);
  EXPECT_GT(m.sum("switchyard_serve_request_duration_seconds_sum"), 0);
  EXPECT_EQ(m.sum("switchyard_train_step_duration_seconds_count"), steps);
  EXPECT_EQ(m.sum("switchyard_train_step_duration_seconds_bucket", {{"le", "+Inf"}}), steps);

  // status --watch: N redraws, each with members, load bars and the balancedness per row.
  auto watch = run_cli("", "status --cluster " + ep + " --watch --watch-count 2");
  EXPECT_EQ(watch.first, 0) << watch.second;
  size_t frames = 0;
  for (size_t at = watch.second.find("switchyard status --watch"); at != std::string::npos;
       at = watch.second.find("switchyard status --watch", at + 1))
    ++frames;
  EXPECT_EQ(frames, 2u) << watch.second;
  EXPECT_NE(watch.second.find("balancedness per layer·stage"), std::string::npos) << watch.second;
  EXPECT_NE(watch.second.find("  L0·S0   "), std::string::npos) << watch.second;

  // placement show --cluster: one cell per expert with the window's rows, then one per worker.
  auto show = run_cli("", "placement show --cluster " + ep + " --out " + dir + "/heat.svg");
  ASSERT_EQ(show.first, 0) << show.second;
  std::ifstream svg_in(dir + "/heat.svg");
  const std::string svg((std::istreambuf_iterator<char>(svg_in)), std::istreambuf_iterator<char>());
  size_t cells = 0;
  for (size_t at = svg.find("class=\"cell\""); at != std::string::npos; at = svg.find("class=\"cell\"", at + 1)) ++cells;
  EXPECT_EQ(cells, 8u + 3u);
  EXPECT_NE(svg.find("data-value=\"" + std::to_string(status.load.computed[0]) + "\""), std::string::npos);

  auto [code, rest] = up.stop();
  EXPECT_EQ(code, 0) << rest;

  // SWITCHYARD_LOG_FORMAT=json: every line of the cluster's stderr is one JSON object with the
  // process's role, id and epoch.
  std::ifstream logs(log_path);
  std::string line;
  int lines = 0;
  std::set<int> worker_ids;
  uint64_t coordinator_epoch = 0;
  while (std::getline(logs, line)) {
    if (line.empty()) continue;
    ++lines;
    json j;
    ASSERT_NO_THROW(j = json::parse(line)) << line;
    for (const char* key : {"time", "level", "component", "role", "id", "epoch", "pid", "message"})
      EXPECT_TRUE(j.contains(key)) << key << " missing in " << line;
    ASSERT_TRUE(j["role"].is_string()) << line;
    const std::string role = j["role"];
    EXPECT_TRUE(role == "coordinator" || role == "worker") << line;
    if (role == "worker" && j["id"].is_number()) worker_ids.insert(j["id"].get<int>());
    if (role == "coordinator") coordinator_epoch = std::max(coordinator_epoch, j["epoch"].get<uint64_t>());
  }
  EXPECT_GT(lines, 10);
  EXPECT_EQ(worker_ids, (std::set<int>{0, 1, 2}));
  EXPECT_GE(coordinator_epoch, 2u);  // two model loads and a rebalance
  std::filesystem::remove_all(dir);
}

// A worker killed under a training job: the metrics count the failover and the recovery, the
// dead worker is down and fenced, and the dashboard's timeline shows both; the two-layer model's
// experts carry their layer and stage labels.
TEST(ObservabilityCluster, FailoverAndRecoveryAreCounted) {
  const Config cfg = two_layer_model();
  const TensorMap weights = init_model_weights(cfg.model, 5);
  LocalCluster cluster(3, 2);
  const std::string http = cluster.coordinator->http_endpoint();
  ASSERT_FALSE(http.empty());
  ClusterClient client(cluster.coordinator->endpoint(), "trainer");
  client.load_model(cfg, weights);
  MoeModel model(cfg, weights, client);
  train_step(model, 1, "obs");
  cluster.workers[1].kill();
  bool recovered = false;
  for (int step = 2; step < 40 && !recovered; ++step) {
    train_step(model, static_cast<uint64_t>(step), "obs");
    for (const RebalanceInfo& r : query_cluster_status(cluster.coordinator->endpoint()).rebalances)
      recovered |= r.source == "recovery" && r.state == "committed";
  }
  ASSERT_TRUE(recovered) << "no recovery committed within 40 steps";
  const Scrape m = scrape(http);
  EXPECT_EQ(m.sum("switchyard_failovers_total"), 1);
  EXPECT_EQ(m.sum("switchyard_recoveries_total"), 1);
  EXPECT_EQ(m.sum("switchyard_rebalances_total", {{"source", "recovery"}, {"result", "committed"}}), 1);
  EXPECT_GT(m.sum("switchyard_rebalance_moved_bytes_total"), 0);
  EXPECT_EQ(m.sum("switchyard_worker_up", {{"worker", "1"}}), 0);
  EXPECT_EQ(m.sum("switchyard_worker_fenced", {{"worker", "1"}}), 1);
  EXPECT_EQ(m.sum("switchyard_workers_alive"), 2);
  EXPECT_EQ(m.count("switchyard_expert_routed_rows_total"), 2 * 2 * 4);
  EXPECT_GT(m.sum("switchyard_expert_routed_rows_total", {{"layer", "1"}, {"stage", "1"}}), 0);
  EXPECT_EQ(m.sum("switchyard_clients_attached", {{"role", "training"}}), 1);
  EXPECT_EQ(m.count("switchyard_client_report_age_seconds"), 1);
  EXPECT_EQ(m.count("switchyard_client_report_age_seconds", {{"name", "trainer"}, {"role", "training"}}), 1);
  auto [code, out] = run_shell(kPython + " -c \"import sys,urllib.request as u; print(u.urlopen(sys.argv[1]).read().decode())\" http://" +
                           http + "/api/state");
  ASSERT_EQ(code, 0);
  const json state = json::parse(out);
  std::set<std::string> kinds;
  for (const json& e : state["events"]) kinds.insert(e["kind"].get<std::string>());
  EXPECT_TRUE(kinds.count("failure")) << state["events"].dump();
  EXPECT_TRUE(kinds.count("recovery")) << state["events"].dump();
  EXPECT_EQ(state["workers"][1]["state"], "lost");
  EXPECT_EQ(state["rows"].size(), 4u);
}

// The dashboard in headless Chromium: it loads without a console error, lists every worker,
// and its heatmap changes when a second job changes the load; a screenshot is written.
TEST(ObservabilityCluster, DashboardInHeadlessChromium) {
  const std::string dir = temp_dir("dashboard");
  const std::string cfg = write_cluster_config(dir);
  UpProcess up(cfg);
  ASSERT_TRUE(up.ready());
  ASSERT_FALSE(up.http_endpoint().empty());
  const std::string toy = kBinary + " train-toy --config " + cfg + " --cluster " + up.endpoint() + " --no-progress --steps 2";
  ASSERT_EQ(run_shell(toy + " >/dev/null").first, 0);
  const std::string shot = std::string(SY_BINARY_DIR) + "/test-artifacts/dashboard.png";
  std::filesystem::create_directories(std::filesystem::path(shot).parent_path());
  std::filesystem::remove(shot);
  auto [code, out] = run_shell(kPython + " " + kScripts + "dashboard_check.py 'http://" + up.http_endpoint() +
                           "/?interval=200' --screenshot " + shot + " --load-cmd '" + toy + " --skew 3 --seed 9 >/dev/null'");
  ASSERT_EQ(code, 0) << out;
  const json r = json::parse(out);
  EXPECT_TRUE(r["errors"].empty()) << r["errors"].dump();
  EXPECT_EQ(r["workers"], json::array({0, 1, 2}));
  ASSERT_EQ(r["cells_before"].size(), 8u);
  ASSERT_EQ(r["cells_after"].size(), 8u);
  EXPECT_NE(r["cells_before"], r["cells_after"]);
  double after = 0;
  for (const json& v : r["cells_after"]) after += v.get<double>();
  EXPECT_GT(after, 0);
  std::ifstream png(shot, std::ios::binary);
  char sig[8] = {};
  png.read(sig, 8);
  EXPECT_EQ(std::string(sig + 1, 3), "PNG") << "no screenshot at " << shot;
  std::filesystem::remove_all(dir);
}

// With a cluster secret, cluster.http answers only requests that carry its token (bearer, or
// HTTP Basic with the token as password); the dashboard page and /metrics then work as without.
TEST(ObservabilityHttp, TheTokenOfTheSecretIsRequired) {
  const std::string dir = temp_dir("auth");
  const std::string secret_path = dir + "/secret";
  std::ofstream(secret_path) << "0123456789abcdef-observability\n";
  std::filesystem::permissions(secret_path, std::filesystem::perms::owner_read | std::filesystem::perms::owner_write);
  std::ofstream(dir + "/cluster.yaml") << "cluster:\n  workers: 1\n  auth:\n    secret_file: secret\n";
  UpProcess up(dir + "/cluster.yaml");
  ASSERT_TRUE(up.ready());
  auto token = run_cli("", "http-token --config " + dir + "/cluster.yaml");
  ASSERT_EQ(token.first, 0) << token.second;
  const std::string t = token.second.substr(0, token.second.find('\n'));
  EXPECT_EQ(t, http_token("0123456789abcdef-observability"));
  EXPECT_EQ(t.size(), 64u);
  const std::string curl = kPython + " -c \"import sys,urllib.request as u\nr=u.Request(sys.argv[1])\n"
                                     "[r.add_header('Authorization', a) for a in sys.argv[2:]]\n"
                                     "try: print(u.urlopen(r, timeout=10).status)\nexcept u.HTTPError as e: print(e.code)\" ";
  const std::string url = "http://" + up.http_endpoint() + "/metrics";
  EXPECT_EQ(run_shell(curl + url).second, "401\n");
  EXPECT_EQ(run_shell(curl + url + " 'Bearer wrong'").second, "401\n");
  EXPECT_EQ(run_shell(curl + url + " 'Bearer " + t + "'").second, "200\n");
  const std::string basic = run_shell("printf 'x:" + t + "' | base64 -w0").second;
  EXPECT_EQ(run_shell(curl + "http://" + up.http_endpoint() + "/ 'Basic " + basic + "'").second, "200\n");
  EXPECT_EQ(scrape(up.http_endpoint(), t).sum("switchyard_workers_alive"), 1);
  // Without a secret there is no token to print, and no non-loopback address is served.
  auto none = run_cli("env -u SWITCHYARD_SECRET", "http-token");
  EXPECT_EQ(none.first, 2) << none.second;
  std::ofstream(dir + "/open.yaml") << "cluster:\n  workers: 1\n  http: 0.0.0.0:0\n";
  auto open = run_cli("env -u SWITCHYARD_SECRET", "coordinator --config " + dir + "/open.yaml");
  EXPECT_EQ(open.first, 2) << open.second;
  EXPECT_NE(open.second.find("cluster.http: serving on 0.0.0.0:"), std::string::npos) << open.second;
  up.stop();
  std::filesystem::remove_all(dir);
}

// placement show --load: the trace summed over steps, one cell per (row, expert) of the model.
TEST(PlacementShow, WritesTheHeatmapOfATraceAsSvgAndPng) {
  const std::string dir = temp_dir("show");
  LoadMatrix m = load_matrix_rows(2, 4);
  for (size_t i = 0; i < m.counts.size(); ++i) m.counts[i] = static_cast<double>(10 * i + 1);
  write_load_trace(dir + "/load.npy", m);
  auto svg_run = run_cli("", "placement show --load " + dir + "/load.npy --out " + dir + "/h.svg");
  ASSERT_EQ(svg_run.first, 0) << svg_run.second;
  std::ifstream in(dir + "/h.svg");
  const std::string svg((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  for (size_t i = 0; i < m.counts.size(); ++i)
    EXPECT_NE(svg.find("data-value=\"" + std::to_string(10 * i + 1) + "\""), std::string::npos) << i;
  EXPECT_NE(svg.find("row 1"), std::string::npos);
  auto png_run = run_cli("", "placement show --load " + dir + "/load.npy --out " + dir + "/h.png");
  ASSERT_EQ(png_run.first, 0) << png_run.second;
  // The PNG decodes (libpng) to the heatmap's size: 4 columns and 2 rows of 18-pixel cells.
  png_image image{};
  image.version = PNG_IMAGE_VERSION;
  ASSERT_TRUE(png_image_begin_read_from_file(&image, (dir + "/h.png").c_str())) << image.message;
  EXPECT_EQ(image.width, 64u + 4 * 18 + 8);
  EXPECT_EQ(image.height, 34u + 2 * 18 + 24);
  image.format = PNG_FORMAT_RGB;
  std::vector<uint8_t> pixels(PNG_IMAGE_SIZE(image));
  ASSERT_TRUE(png_image_finish_read(&image, nullptr, pixels.data(), 0, nullptr));
  auto pixel = [&](int x, int y) { return pixels[(static_cast<size_t>(y) * image.width + static_cast<size_t>(x)) * 3]; };
  EXPECT_LT(pixel(64 + 3 * 18 + 5, 34 + 18 + 5), pixel(64 + 5, 34 + 5));  // the largest count is darkest
  auto bad = run_cli("", "placement show --load " + dir + "/load.npy --out " + dir + "/h.jpg");
  EXPECT_EQ(bad.first, 2) << bad.second;
  EXPECT_NE(bad.second.find("must end in .svg or .png"), std::string::npos) << bad.second;
  auto both = run_cli("", "placement show --out " + dir + "/h.svg");
  EXPECT_EQ(both.first, 2) << both.second;
  std::filesystem::remove_all(dir);
}

// The JSON log line: escaping of what a message may hold, the context's fields, and the roles'
// rule (an id or epoch from another role's code leaves the context alone).
TEST(JsonLogs, OneObjectPerLineWithRoleIdAndEpoch) {
  set_log_role("worker", -1);
  set_log_id("worker", 3);
  set_log_epoch("worker", 7);
  set_log_epoch("client", 9);  // not this process's role
  set_log_role_if_unset("client", 5);
  const LogContext c = log_context();
  EXPECT_EQ(c.role, "worker");
  EXPECT_EQ(c.id, 3);
  EXPECT_EQ(c.epoch, 7u);
  const std::string line = format_json_log_line(LogLevel::warn, "runtime", "a \"quoted\"\nline\\ \x01", c);
  EXPECT_EQ(line.find('\n'), std::string::npos) << line;
  const json j = json::parse(line);
  EXPECT_EQ(j["level"], "warn");
  EXPECT_EQ(j["component"], "runtime");
  EXPECT_EQ(j["role"], "worker");
  EXPECT_EQ(j["id"], 3);
  EXPECT_EQ(j["epoch"], 7);
  EXPECT_EQ(j["pid"], static_cast<int>(::getpid()));
  EXPECT_EQ(j["message"], "a \"quoted\"\nline\\ \x01");
  const std::string t = j["time"];
  EXPECT_EQ(t.size(), 24u) << t;  // 2025-01-02T03:04:05.678Z
  EXPECT_EQ(t.back(), 'Z');
  // Invalid UTF-8 (a peer's bytes) is replaced, not thrown.
  json bad;
  ASSERT_NO_THROW(bad = json::parse(format_json_log_line(LogLevel::error, "transport", "bad \xff byte", {})));
  EXPECT_EQ(bad["message"], "bad \xEF\xBF\xBD byte");  // U+FFFD
  EXPECT_TRUE(json::parse(format_json_log_line(LogLevel::error, "transport", "x", {}))["role"].is_null());
  set_log_role("", -1);
}

}  // namespace
}  // namespace sy
