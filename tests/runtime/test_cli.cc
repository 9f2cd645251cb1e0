// The CLI end to end: exit codes and messages for bad input, and the layer commands'
// files against the in-process engine.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>

#include "switchyard/core/io.h"
#include "switchyard/engine/layer_engine.h"
#include "switchyard/engine/layer_weights.h"
#include "switchyard/kernels/backend.h"
#include "switchyard/cli/toy_task.h"
#include "switchyard/placement/load_trace.h"
#include "switchyard/placement/zipf_trace.h"

namespace sy {
namespace {

namespace fs = std::filesystem;

struct Result {
  int code;
  std::string output;  // stdout + stderr
};

Result run(const std::string& args) {
  const std::string cmd = std::string(SY_BINARY_DIR) + "/switchyard " + args + " 2>&1";
  FILE* pipe = popen(cmd.c_str(), "r");
  EXPECT_NE(pipe, nullptr);
  std::string out;
  std::array<char, 4096> buf{};
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), pipe)) > 0) out.append(buf.data(), n);
  const int status = pclose(pipe);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

class Cli : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("sy_cli_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }
  std::string write(const std::string& name, const std::string& text) const {
    std::ofstream(path(name)) << text;
    return path(name);
  }
  fs::path dir_;
};

const std::string kModels = std::string(SY_SOURCE_DIR) + "/configs/models/";

TEST_F(Cli, ConfigErrorsExitTwoNamingKeyAndLine) {
  const std::string bad = write("bad.yaml",
                                "model:\n  hidden_size: 16\n  layer:\n    stages:\n      - experts: 4\n"
                                "        ffn_hidden_size: 8\n        routing: {kind: topk, k: 9}\n");
  Result r = run("config show --config " + bad);
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("bad.yaml:7"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("routing.k"), std::string::npos) << r.output;
  const std::string unknown = write("unknown.yaml", "model:\n  hidden_size: 16\n  colour: blue\n");
  r = run("config show --config " + unknown);
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.output.find("colour"), std::string::npos) << r.output;
  r = run("config show --config " + path("missing.yaml"));
  EXPECT_EQ(r.code, 2) << r.output;
}

TEST_F(Cli, ConfigShowPrintsEffectiveConfig) {
  Result r = run("config show --config " + kModels + "dynamic.yaml");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("k_max: 4"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("capacity_factor: 0"), std::string::npos) << r.output;  // default filled in
}

TEST_F(Cli, UsageErrors) {
  EXPECT_EQ(run("layer forward --config").code, 2);
  EXPECT_EQ(run("layer forward --bogus 1").code, 2);
  EXPECT_EQ(run("frobnicate").code, 2);
}

TEST_F(Cli, LayerInitForwardBackwardMatchEngine) {
  for (const std::string model : {"topk", "dynamic", "dag", "cartesian", "combined"}) {
    const std::string cfg_path = kModels + model + ".yaml";
    const Config cfg = load_config(cfg_path);
    ASSERT_EQ(run("layer init --config " + cfg_path + " --seed 5 --out " + path("w.safetensors")).code, 0);
    RandomStream rng(5, "cli");
    const Tensor x = random_tokens(32, cfg.model.hidden_size, rng), g = random_tokens(32, cfg.model.hidden_size, rng);
    const Tensor a = random_attention(2, 2, 16, 1.0f, rng);
    write_npy(path("x.npy"), x);
    write_npy(path("g.npy"), g);
    write_npy(path("a.npy"), a);
    const std::string imp = needs_importance(cfg.model) ? " --attention " + path("a.npy") : "";
    Result r = run("layer forward --config " + cfg_path + " --weights " + path("w.safetensors") + " --input " +
                   path("x.npy") + " --output " + path("y.npy") + imp);
    ASSERT_EQ(r.code, 0) << r.output;
    if (needs_importance(cfg.model)) {
      EXPECT_NE(r.output.find("k_histogram"), std::string::npos) << r.output;
    }
    r = run("layer backward --config " + cfg_path + " --weights " + path("w.safetensors") + " --input " + path("x.npy") +
            " --grad-output " + path("g.npy") + " --out-dir " + path("grads") + imp);
    ASSERT_EQ(r.code, 0) << r.output;

    const TensorMap w = read_safetensors(path("w.safetensors"));
    EXPECT_EQ(w.size(), init_layer_weights(cfg.model, 5).size());
    TensorMap grads = zeros_like(w);
    LocalExperts experts(cfg.model, w, &grads);
    LayerEngine layer(cfg.model, w, experts);
    const ImportanceInput in{needs_importance(cfg.model) ? &a : nullptr, nullptr};
    const Tensor y = layer.forward(x, in);
    const Tensor dx = layer.backward(g, grads);
    EXPECT_EQ(read_npy(path("y.npy")).values(), y.values()) << model;
    EXPECT_EQ(read_npy(path("grads/grad_input.npy")).values(), dx.values()) << model;
    const TensorMap file_grads = read_safetensors(path("grads/grad_weights.safetensors"));
    ASSERT_EQ(file_grads.size(), grads.size()) << model;
    for (const auto& [name, t] : grads) EXPECT_EQ(file_grads.at(name).values(), t.values()) << model << " " << name;
  }
}

TEST_F(Cli, BadFilesAreInputErrorsNamingTheFile) {
  const std::string cfg = kModels + "topk.yaml";
  ASSERT_EQ(run("layer init --config " + cfg + " --out " + path("w.safetensors")).code, 0);
  write_npy(path("x.npy"), Tensor({4, 64}));
  write_npy(path("x_wrong.npy"), Tensor({4, 63}));
  write("garbage.safetensors", "not a safetensors file at all");
  Result r = run("layer forward --config " + cfg + " --weights " + path("garbage.safetensors") + " --input " +
                 path("x.npy") + " --output " + path("y.npy"));
  EXPECT_EQ(r.code, 3) << r.output;
  EXPECT_NE(r.output.find("garbage.safetensors"), std::string::npos) << r.output;
  r = run("layer forward --config " + cfg + " --weights " + path("w.safetensors") + " --input " + path("x_wrong.npy") +
          " --output " + path("y.npy"));
  EXPECT_EQ(r.code, 3) << r.output;
  EXPECT_NE(r.output.find("hidden_size"), std::string::npos) << r.output;
  // Weights of another config: a tensor is missing or misshapen, and the error names it.
  r = run("layer forward --config " + kModels + "dag.yaml --weights " + path("w.safetensors") + " --input " +
          path("x.npy") + " --output " + path("y.npy"));
  EXPECT_EQ(r.code, 3) << r.output;
  EXPECT_NE(r.output.find("stages.0.dag.0"), std::string::npos) << r.output;
  // A dynamic layer without importance.
  ASSERT_EQ(run("layer init --config " + kModels + "dynamic.yaml --out " + path("wd.safetensors")).code, 0);
  r = run("layer forward --config " + kModels + "dynamic.yaml --weights " + path("wd.safetensors") + " --input " +
          path("x.npy") + " --output " + path("y.npy"));
  EXPECT_EQ(r.code, 3) << r.output;
  EXPECT_NE(r.output.find("importance"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(path("y.npy")));  // nothing half-written
}

// Issue 12: NaN/Inf in a user tensor ran through and wrote NaN with exit 0; now an input error
// (exit 3) naming the flag, the file and the first bad index, before anything is written.
TEST_F(Cli, NonFiniteInputsAreInputErrorsNamingTensorAndIndex) {
  const std::string cfg = kModels + "topk.yaml";
  ASSERT_EQ(run("layer init --config " + cfg + " --out " + path("w.safetensors")).code, 0);
  Tensor x({4, 64}, 0.5f);
  write_npy(path("x.npy"), x);
  x[64 + 7] = std::numeric_limits<float>::quiet_NaN();
  write_npy(path("x_nan.npy"), x);
  Tensor g({4, 64}, 1.0f);
  g[3] = -std::numeric_limits<float>::infinity();
  write_npy(path("g_inf.npy"), g);
  const std::string common = "--config " + cfg + " --weights " + path("w.safetensors") + " --input ";
  Result r = run("layer forward " + common + path("x_nan.npy") + " --output " + path("y.npy"));
  EXPECT_EQ(r.code, 3) << r.output;
  EXPECT_NE(r.output.find("--input '" + path("x_nan.npy") + "': value nan at index 71 (element [1, 7] of shape [4, 64])"),
            std::string::npos)
      << r.output;
  EXPECT_FALSE(fs::exists(path("y.npy")));
  r = run("layer backward " + common + path("x.npy") + " --grad-output " + path("g_inf.npy") + " --out-dir " + path("d"));
  EXPECT_EQ(r.code, 3) << r.output;
  EXPECT_NE(r.output.find("--grad-output '" + path("g_inf.npy") + "': value -inf at index 3"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(path("d/grad_input.npy")));
  // Weights loaded from a file are checked the same way, naming the tensor.
  TensorMap w = read_safetensors(path("w.safetensors"));
  w.begin()->second[1] = std::numeric_limits<float>::infinity();
  write_safetensors(path("w_inf.safetensors"), w);
  r = run("layer forward --config " + cfg + " --weights " + path("w_inf.safetensors") + " --input " + path("x.npy") +
          " --output " + path("y.npy"));
  EXPECT_EQ(r.code, 3) << r.output;
  EXPECT_NE(r.output.find("'" + w.begin()->first + "' holds a non-finite value at index 1"), std::string::npos) << r.output;
  // Importance too (a dynamic layer).
  ASSERT_EQ(run("layer init --config " + kModels + "dynamic.yaml --out " + path("wd.safetensors")).code, 0);
  Tensor imp({4}, 1.0f);
  imp[2] = std::numeric_limits<float>::quiet_NaN();
  write_npy(path("imp.npy"), imp);
  r = run("layer forward --config " + kModels + "dynamic.yaml --weights " + path("wd.safetensors") + " --input " +
          path("x.npy") + " --importance " + path("imp.npy") + " --output " + path("y.npy"));
  EXPECT_EQ(r.code, 3) << r.output;
  EXPECT_NE(r.output.find("--importance '" + path("imp.npy") + "': value nan at index 2"), std::string::npos) << r.output;
}

// Issue 12: a bad cluster.placement surfaced as exit 4 once a client asked the coordinator to
// place the model. `switchyard up` with a model refuses it before starting anything (exit 2,
// naming the file); the client-side mapping is tested in test_cluster (ClusterPlacementErrors).
TEST_F(Cli, UpRefusesABadPlacementAsAConfigError) {
  const std::string placement = write("p.yaml", "placement:\n  experts:\n    - {layer: 0, stage: 0, experts: all, workers: [5]}\n");
  const std::string cfg = write("c.yaml", "model:\n  hidden_size: 8\n  layer:\n    stages:\n"
                                          "      - {experts: 4, ffn_hidden_size: 8}\n"
                                          "cluster:\n  workers: 2\n  placement: p.yaml\n");
  Result r = run("up --config " + cfg);
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find(placement + ":3: placement.experts[0].workers: worker 5 does not exist"), std::string::npos)
      << r.output;
  EXPECT_EQ(r.output.find("coordinator listening"), std::string::npos) << r.output;
  const std::string missing = write("m.yaml", "cluster:\n  workers: 2\n  placement: nowhere.yaml\n");
  r = run("up --config " + missing);
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find(path("nowhere.yaml") + ": cannot open placement file"), std::string::npos) << r.output;
}

TEST_F(Cli, TrainToyPrintsCurveAndLossDrop) {
  Result r = run("train-toy --config " + kModels + "topk.yaml --steps 20 --no-progress");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("step 20 mse"), std::string::npos) << r.output;
  const size_t pos = r.output.find("loss_drop: ");
  ASSERT_NE(pos, std::string::npos) << r.output;
  EXPECT_GT(std::stod(r.output.substr(pos + 11)), 1.0) << "20 steps of AdamW should already reduce the loss";
}

// `--backend` on layer forward/backward and train-toy: a bad value is a usage error (exit 2)
// naming the flag and the value; `--backend cpu` is the default path, bit for bit.
TEST_F(Cli, BackendFlagErrorsNameTheFlagAndTheValue) {
  const std::string cfg = kModels + "topk.yaml";
  ASSERT_EQ(run("layer init --config " + cfg + " --seed 2 --out " + path("w.safetensors")).code, 0);
  RandomStream rng(2, "backend-flag");
  write_npy(path("x.npy"), random_tokens(16, 64, rng));
  write_npy(path("g.npy"), random_tokens(16, 64, rng));
  const std::string fwd = "layer forward --config " + cfg + " --weights " + path("w.safetensors") + " --input " +
                          path("x.npy") + " --output " + path("y.npy");
  const std::string bwd = "layer backward --config " + cfg + " --weights " + path("w.safetensors") + " --input " +
                          path("x.npy") + " --grad-output " + path("g.npy") + " --out-dir " + path("grads");
  const std::string toy = "train-toy --config " + cfg + " --steps 2 --no-progress";
  for (const std::string& cmd : {fwd, bwd, toy}) {
    Result r = run(cmd + " --backend tpu");
    EXPECT_EQ(r.code, 2) << cmd << "\n" << r.output;
    EXPECT_NE(r.output.find("--backend tpu: unknown backend"), std::string::npos) << r.output;
    if (find_backend("cuda")) continue;  // a device here: --backend cuda is usable
    r = run(cmd + " --backend cuda");
    EXPECT_EQ(r.code, 2) << cmd << "\n" << r.output;
    const auto compiled = compiled_backends();
    const bool has_cuda = std::find(compiled.begin(), compiled.end(), "cuda") != compiled.end();
    EXPECT_NE(r.output.find(has_cuda ? "--backend cuda: compiled but no CUDA device" : "--backend cuda: not compiled in"),
              std::string::npos)
        << r.output;
  }
  Result r = run(fwd + " --backend cpu");
  ASSERT_EQ(r.code, 0) << r.output;
  const Tensor y_cpu_flag = read_npy(path("y.npy"));
  ASSERT_EQ(run(fwd).code, 0);
  EXPECT_EQ(read_npy(path("y.npy")).values(), y_cpu_flag.values());
}

// `worker --device`: a malformed value, a device index beyond CUDA_VISIBLE_DEVICES, and (without
// a usable GPU) cuda itself are usage errors naming the flag, before the worker contacts anyone.
TEST_F(Cli, WorkerDeviceErrorsNameTheFlag) {
  const std::string worker = "worker --coordinator 127.0.0.1:1 --device ";
  for (const std::string bad : {"gpu:1", "cuda:", "cuda:x", "cpu:0"}) {
    Result r = run(worker + bad);
    EXPECT_EQ(r.code, 2) << bad << "\n" << r.output;
    EXPECT_NE(r.output.find("--device " + bad + ": expected cpu, cuda or cuda:N"), std::string::npos) << r.output;
  }
  const bool gpu_here = find_backend("cuda") != nullptr;  // before the variable below is set
  const char* visible = std::getenv("CUDA_VISIBLE_DEVICES");
  const std::string saved = visible ? visible : "";
  ::setenv("CUDA_VISIBLE_DEVICES", "3", 1);  // the worker's environment
  Result r = run(worker + "cuda:1");
  visible ? ::setenv("CUDA_VISIBLE_DEVICES", saved.c_str(), 1) : ::unsetenv("CUDA_VISIBLE_DEVICES");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("--device cuda:1: CUDA_VISIBLE_DEVICES=3 makes only 1 device(s) visible"), std::string::npos)
      << r.output;
  if (gpu_here) return;  // cuda:0 is usable here
  r = run(worker + "cuda:0");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("--device cuda: "), std::string::npos) << r.output;
  // switchyard up refuses cluster.worker_device: cuda before it starts anything.
  std::ofstream(path("gpu.yaml")) << "cluster:\n  workers: 2\n  worker_device: cuda\n";
  r = run("up --config " + path("gpu.yaml"));
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("cluster.worker_device: cuda: "), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("coordinator listening"), std::string::npos) << r.output;
}

// `--backend cuda` end to end through the CLI, against the CPU run of the same files (FP32:
// max |cuda − cpu| ≤ 1e-5 · max |cpu| per tensor). Skipped without a usable CUDA device.
TEST_F(Cli, LayerForwardBackwardOnCudaMatchTheCpu) {
  if (!find_backend("cuda")) GTEST_SKIP() << "no usable CUDA backend here (not compiled in, or no device)";
  auto close = [](const Tensor& got, const Tensor& want, const std::string& what) {
    ASSERT_EQ(got.shape(), want.shape()) << what;
    double scale = 0, worst = 0;
    for (int64_t i = 0; i < want.numel(); ++i) {
      scale = std::max(scale, static_cast<double>(std::fabs(want[i])));
      worst = std::max(worst, static_cast<double>(std::fabs(got[i] - want[i])));
    }
    EXPECT_LE(worst, 1e-5 * scale) << what;
  };
  for (const std::string model : {"topk", "dynamic", "dag", "cartesian", "combined"}) {
    const std::string cfg_path = kModels + model + ".yaml";
    const Config cfg = load_config(cfg_path);
    ASSERT_EQ(run("layer init --config " + cfg_path + " --seed 6 --out " + path("w.safetensors")).code, 0);
    RandomStream rng(6, "cli-cuda");
    write_npy(path("x.npy"), random_tokens(32, cfg.model.hidden_size, rng));
    write_npy(path("g.npy"), random_tokens(32, cfg.model.hidden_size, rng));
    write_npy(path("a.npy"), random_attention(2, 2, 16, 1.0f, rng));
    const std::string imp = needs_importance(cfg.model) ? " --attention " + path("a.npy") : "";
    for (const std::string backend : {"cpu", "cuda"}) {
      Result r = run("layer forward --config " + cfg_path + " --weights " + path("w.safetensors") + " --input " +
                     path("x.npy") + " --output " + path("y_" + backend + ".npy") + imp + " --backend " + backend);
      ASSERT_EQ(r.code, 0) << r.output;
      r = run("layer backward --config " + cfg_path + " --weights " + path("w.safetensors") + " --input " +
              path("x.npy") + " --grad-output " + path("g.npy") + " --out-dir " + path("grads_" + backend) + imp +
              " --backend " + backend);
      ASSERT_EQ(r.code, 0) << r.output;
    }
    close(read_npy(path("y_cuda.npy")), read_npy(path("y_cpu.npy")), model + " output");
    close(read_npy(path("grads_cuda/grad_input.npy")), read_npy(path("grads_cpu/grad_input.npy")), model + " grad_input");
    const TensorMap gc = read_safetensors(path("grads_cpu/grad_weights.safetensors"));
    const TensorMap gd = read_safetensors(path("grads_cuda/grad_weights.safetensors"));
    for (const auto& [name, t] : gc) close(gd.at(name), t, model + " " + name);
  }
  Result r = run("train-toy --config " + kModels + "topk.yaml --steps 20 --no-progress --backend cuda");
  ASSERT_EQ(r.code, 0) << r.output;
  const size_t pos = r.output.find("loss_drop: ");
  ASSERT_NE(pos, std::string::npos) << r.output;
  EXPECT_GT(std::stod(r.output.substr(pos + 11)), 1.0);
}

// `placement plan|simulate` (issue 10): the printed lines, the written YAML, exit codes.
std::string line_value(const std::string& output, const std::string& name) {
  std::istringstream in(output);
  for (std::string line; std::getline(in, line);)
    if (line.rfind(name + ": ", 0) == 0) return line.substr(name.size() + 2);
  return "";
}

TEST_F(Cli, PlacementPlanWritesYamlAndPrintsItsFigures) {
  ZipfTraceOptions z;
  z.rows = 3;
  z.experts = 16;
  z.steps = 2;
  write_load_trace_steps(path("load.npy"), zipf_trace(z));
  Result r = run("placement plan --load " + path("load.npy") + " --workers 4 --slots-per-worker 6 --out " + path("p.yaml"));
  ASSERT_EQ(r.code, 0) << r.output;
  for (const char* name : {"balancedness", "balancedness_bound", "moved_replicas", "moved_bytes", "plan_ms"})
    EXPECT_NE(line_value(r.output, name), "") << name << " in " << r.output;
  EXPECT_LE(std::stod(line_value(r.output, "balancedness")), std::stod(line_value(r.output, "balancedness_bound")) + 1e-6);
  EXPECT_GT(std::stod(line_value(r.output, "balancedness")), 0.9);
  ASSERT_TRUE(fs::exists(path("p.yaml")));
  // Replanning the same load against the written plan moves nothing.
  r = run("placement plan --load " + path("load.npy") + " --workers 4 --slots-per-worker 6 --nodes 2 --current " + path("p.yaml") +
          " --out " + path("p2.yaml"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(line_value(r.output, "moved_replicas"), "0") << r.output;
  r = run("placement simulate --load " + path("load.npy") + " --workers 4 --nodes 2 --placement " + path("p.yaml"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_GE(std::stod(line_value(r.output, "step_ms")), std::stod(line_value(r.output, "ideal_step_ms")));
  EXPECT_NEAR(std::stod(line_value(r.output, "inter_node_fraction")), 0.5, 1e-6) << r.output;
  r = run("placement simulate --load " + path("load.npy") + " --workers 4 --nodes 2 --slots-per-worker 6 --policy all");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("policy: hierarchical"), std::string::npos) << r.output;
}

TEST_F(Cli, PlacementPlanWithAModelCountsBytes) {
  ModelConfig m = load_config(kModels + "topk.yaml").model;
  LoadMatrix load = load_matrix_rows(m);
  for (size_t i = 0; i < load.counts.size(); ++i) load.counts[i] = static_cast<double>(10 * (i + 1));
  write_load_trace(path("load.npy"), load);
  Result r = run("placement plan --load " + path("load.npy") + " --config " + kModels + "topk.yaml --workers 2 --slots-per-worker 5 --out " +
                 path("p.yaml"));
  ASSERT_EQ(r.code, 0) << r.output;
  const int64_t replica = 3 * 3 * 128 * 64 * 4;  // weights + two AdamW moments of a swiglu expert
  EXPECT_EQ(std::stoll(line_value(r.output, "moved_bytes")), std::stoll(line_value(r.output, "moved_replicas")) * replica) << r.output;
}

TEST_F(Cli, PlacementErrorsNameTheFlagOrFile) {
  write_load_trace(path("load.npy"), load_matrix_rows(2, 8));
  write("bad.npy", "not numpy");
  const std::string out = " --out " + path("p.yaml");
  Result r = run("placement plan --load " + path("bad.npy") + " --workers 4 --slots-per-worker 2" + out);
  EXPECT_EQ(r.code, 3) << r.output;
  EXPECT_NE(r.output.find("bad.npy"), std::string::npos) << r.output;
  r = run("placement plan --load " + path("load.npy") + " --workers 4 --slots-per-worker 1" + out);
  EXPECT_EQ(r.code, 3) << r.output;
  EXPECT_NE(r.output.find("--slots-per-worker"), std::string::npos) << r.output;
  r = run("placement plan --load " + path("load.npy") + " --workers 4 --nodes 3 --slots-per-worker 2" + out);
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("--nodes"), std::string::npos) << r.output;
  r = run("placement plan --load " + path("load.npy") + " --workers four --slots-per-worker 2" + out);
  EXPECT_EQ(r.code, 2) << r.output;
  r = run("placement plan --load " + path("load.npy") + " --workers 4 --slots-per-worker 2");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("--out"), std::string::npos) << r.output;
  r = run("placement plan --load " + path("load.npy") + " --config " + kModels + "topk.yaml --workers 4 --slots-per-worker 2" + out);
  EXPECT_EQ(r.code, 3) << r.output;  // the trace has 8 experts but 2 rows; topk.yaml has 1 row
  EXPECT_NE(r.output.find("the model has 1"), std::string::npos) << r.output;
  r = run("placement simulate --load " + path("load.npy") + " --workers 4 --slots-per-worker 2 --policy best");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("best"), std::string::npos) << r.output;
  r = run("placement");
  EXPECT_EQ(r.code, 2) << r.output;
}

}  // namespace
}  // namespace sy
