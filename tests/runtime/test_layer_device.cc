// The layer engine on every compiled device backend against the CPU engine, for every shipped
// config: the forward output, the input gradient, every weight gradient, the aux loss and one
// AdamW step. FP32 tolerance, per tensor: max |device − cpu| ≤ 1e-5 · max |cpu| (relative to the
// tensor's scale; the device GEMMs sum in another order than OpenBLAS). Without a usable device
// each test is reported as skipped (GTEST_SKIP) with the reason, never as passed.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string>

#include "switchyard/cli/toy_task.h"
#include "switchyard/engine/layer_engine.h"
#include "switchyard/engine/layer_weights.h"
#include "switchyard/engine/optimizer.h"
#include "switchyard/kernels/buffer.h"
#include "switchyard/worker/expert_store.h"

namespace sy {
namespace {

constexpr double kRelative = 1e-5;

// The shipped configs: $SY_MODEL_CONFIGS (the device machine's checkout), else this source tree's.
std::string config_dir() {
  const char* env = std::getenv("SY_MODEL_CONFIGS");
  return env && *env ? std::string(env) : std::string(SY_SOURCE_DIR) + "/configs/models";
}

void expect_close(const Tensor& got, const Tensor& want, const std::string& what) {
  ASSERT_EQ(got.shape(), want.shape()) << what;
  double scale = 0.0, worst = 0.0;
  int64_t at = -1;
  for (int64_t i = 0; i < want.numel(); ++i) {
    scale = std::max(scale, std::fabs(static_cast<double>(want[i])));
    const double diff = std::fabs(static_cast<double>(got[i]) - want[i]);
    if (!(diff <= worst)) {  // NaN counts as worst
      worst = diff;
      at = i;
    }
  }
  EXPECT_LE(worst, kRelative * scale) << what << ": worst at [" << at << "] " << (at >= 0 ? got[at] : 0.0f)
                                      << " vs cpu " << (at >= 0 ? want[at] : 0.0f) << " (scale " << scale << ")";
}

// The device backends compiled into this build ("cuda" when none is: then reported as not compiled).
std::vector<std::string> device_backend_names() {
  std::vector<std::string> names;
  for (const std::string& n : compiled_backends())
    if (n != "cpu") names.push_back(n);
  if (names.empty()) names.push_back("cuda");
  return names;
}

Backend* usable(const std::string& name) {
  const std::vector<std::string> compiled = compiled_backends();
  if (std::find(compiled.begin(), compiled.end(), name) == compiled.end()) return nullptr;
  return find_backend(name);
}

std::string skip_reason(const std::string& name) {
  const std::vector<std::string> compiled = compiled_backends();
  if (std::find(compiled.begin(), compiled.end(), name) == compiled.end())
    return "backend '" + name + "' not compiled into this build";
  return "backend '" + name + "' compiled but not usable here (no device)";
}

class DeviceLayer : public ::testing::TestWithParam<std::tuple<std::string, std::string>> {};

TEST_P(DeviceLayer, ForwardBackwardAndAdamWMatchTheCpuEngine) {
  const auto& [backend_name, model] = GetParam();
  Backend* device = usable(backend_name);
  if (!device) GTEST_SKIP() << skip_reason(backend_name);
  const Config cfg = load_config(config_dir() + "/" + model + ".yaml");
  const int64_t B = 2, L = 16, T = B * L, d = cfg.model.hidden_size;
  const TensorMap w = init_layer_weights(cfg.model, 13);
  RandomStream rng(13, "device-layer");
  const Tensor x = random_tokens(T, d, rng), g = random_tokens(T, d, rng);
  const Tensor a = random_attention(B, 2, L, 1.5f, rng);
  const ImportanceInput imp{needs_importance(cfg.model) ? &a : nullptr, nullptr};

  TensorMap grads_cpu = zeros_like(w);
  LocalExperts experts_cpu(cfg.model, w, &grads_cpu);
  LayerEngine cpu(cfg.model, w, experts_cpu);
  const Tensor y_cpu = cpu.forward(x, imp);
  const Tensor dx_cpu = cpu.backward(g, grads_cpu);

  BufferMap w_dev(*device, w), grads_dev(*device, zeros_like(w));
  LocalExperts experts_dev(cfg.model, w_dev.tensors(), &grads_dev.tensors(), "", *device);
  LayerEngine dev(cfg.model, w_dev.tensors(), experts_dev, "", *device);
  const Tensor y_dev = dev.forward(x, imp);
  const Tensor dx_dev = dev.backward(g, grads_dev.tensors());

  for (size_t s = 0; s < cfg.model.layer.stages.size(); ++s)  // the same routing decisions
    EXPECT_EQ(dev.stats()[s].expert_rows, cpu.stats()[s].expert_rows) << model << " stage " << s;
  expect_close(y_dev, y_cpu, model + " output");
  expect_close(dx_dev, dx_cpu, model + " grad_input");
  const TensorMap grads_back = grads_dev.to_host();
  for (const auto& [name, t] : grads_cpu) expect_close(grads_back.at(name), t, model + " grad " + name);
  EXPECT_NEAR(dev.aux_loss(), cpu.aux_loss(), kRelative * std::max(1.0, std::fabs(cpu.aux_loss()))) << model;

  // One AdamW step on each side from the gradients each computed.
  TensorMap params_cpu = w;
  AdamW adam_cpu({.lr = 1e-2, .weight_decay = 0.1}), adam_dev({.lr = 1e-2, .weight_decay = 0.1}, *device);
  adam_cpu.step(params_cpu, grads_cpu);
  adam_dev.step(w_dev.tensors(), grads_dev.tensors());
  const TensorMap params_back = w_dev.to_host();
  for (const auto& [name, t] : params_cpu) expect_close(params_back.at(name), t, model + " adamw " + name);
}

INSTANTIATE_TEST_SUITE_P(Models, DeviceLayer,
                         ::testing::Combine(::testing::ValuesIn(device_backend_names()),
                                            ::testing::Values("topk", "dynamic", "dag", "cartesian", "combined")),
                         [](const auto& param_info) {
                           return std::get<0>(param_info.param) + "_" + std::get<1>(param_info.param);
                         });

// A GPU worker's expert store (switchyard worker --device cuda) against the CPU store: forward,
// infer, backward with dL/dx, the reduction's flat gradients, two AdamW steps, and the state a
// migration or checkpoint copies out; swiglu and gelu experts of topk.yaml's and combined.yaml's
// shapes, 0, 1 and 300 rows.
TEST(DeviceExpertStore, MatchesTheCpuStore) {
  Backend* device = usable("cuda");
  if (!device) GTEST_SKIP() << skip_reason("cuda");
  for (const std::string model : {"topk", "combined"}) {
    const Config cfg = load_config(config_dir() + "/" + model + ".yaml");
    const ModelConfig& m = cfg.model;
    ExpertStore cpu_store(m), dev_store(m, *device);
    std::vector<ExpertKey> keys;
    for (int s = 0; s < static_cast<int>(m.layer.stages.size()); ++s) keys.push_back({0, s, 0});
    const TensorMap layer = init_layer_weights(m, 21, layer_prefix(m, 0));
    for (const ExpertKey& key : keys) {
      cpu_store.add(key, extract_expert_weights(m, layer, key));
      dev_store.add(key, extract_expert_weights(m, layer, key));
    }
    const int64_t d = m.hidden_size;
    for (int step = 0; step < 2; ++step) {
      for (const ExpertKey& key : keys) {
        uint64_t request = 0;
        for (const int64_t rows : {int64_t{0}, int64_t{1}, int64_t{300}}) {
          const std::string what = model + " " + key.to_string() + " rows " + std::to_string(rows);
          RandomStream rng(static_cast<uint64_t>(100 * step + rows), "device-store");
          const Tensor x = random_tokens(rows, d, rng), g = random_tokens(rows, d, rng);
          Tensor y_cpu({rows, d}), y_dev({rows, d}), gx_cpu({rows, d}), gx_dev({rows, d});
          ++request;
          cpu_store.forward(key, request, x.data(), rows, y_cpu.data());
          dev_store.forward(key, request, x.data(), rows, y_dev.data());
          expect_close(y_dev, y_cpu, what + " forward");
          cpu_store.backward(key, request, g.data(), rows, gx_cpu.data());
          dev_store.backward(key, request, g.data(), rows, gx_dev.data());
          expect_close(gx_dev, gx_cpu, what + " dx");
          cpu_store.infer(key, g.data(), rows, y_cpu.data());
          dev_store.infer(key, g.data(), rows, y_dev.data());
          expect_close(y_dev, y_cpu, what + " infer");
        }
        const std::vector<float> gc = cpu_store.flat_grads(key), gd = dev_store.flat_grads(key);
        const int64_t n = static_cast<int64_t>(gc.size());
        expect_close(Tensor({n}, gd), Tensor({n}, gc), model + " " + key.to_string() + " weight grads");
        dev_store.set_flat_grads(key, gc);  // the reduction's write-back: both step from the same sums
      }
      cpu_store.step(AdamWConfig{.lr = 1e-2});
      dev_store.step(AdamWConfig{.lr = 1e-2});
    }
    for (const ExpertKey& key : keys) {
      const ExpertTensors a = cpu_store.tensors_of(key), b = dev_store.tensors_of(key);
      EXPECT_EQ(a.step, b.step);
      for (const auto& [name, t] : a.weights) expect_close(b.weights.at(name), t, model + " weights " + name);
      for (const auto& [name, t] : a.moments) expect_close(b.moments.at(name), t, model + " moments " + name);
    }
  }
}

}  // namespace
}  // namespace sy
