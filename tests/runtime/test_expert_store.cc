// ExpertStore: the worker-side expert replicas — compute against the CPU kernels, the request
// cache, AdamW steps keeping replicas identical, checkpoints and their validation, threads.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "../support/guarded_device_backend.h"
#include "../support/recording_backend.h"
#include "switchyard/core/error.h"
#include "switchyard/engine/layer_weights.h"
#include "switchyard/worker/expert_store.h"

namespace sy {
namespace {

// Stage 0: 4 swiglu experts (f = 8); stage 1: 3 gelu experts (f = 6); d = 12; 2 layers.
ModelConfig model(int f0 = 8) {
  return load_config_string("model:\n  hidden_size: 12\n  layers: 2\n  layer:\n    stages:\n"
                            "      - {experts: 4, ffn_hidden_size: " +
                            std::to_string(f0) +
                            "}\n"
                            "      - {experts: 3, ffn_hidden_size: 6, activation: gelu, routing: {k: 1}}\n")
      .model;
}

// Expert weights as init_layer_weights gives them (layer `key.layer` seeded differently).
TensorMap weights_for(const ModelConfig& m, const ExpertKey& key, uint64_t seed = 5) {
  return extract_expert_weights(m, init_layer_weights(m, seed + static_cast<uint64_t>(key.layer), layer_prefix(m, key.layer)), key);
}

std::vector<float> random_rows(int64_t rows, int64_t d, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist;
  std::vector<float> v(static_cast<size_t>(rows * d));
  for (float& x : v) x = dist(rng);
  return v;
}

bool bit_equal(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && std::memcmp(a.data(), b.data(), sizeof(float) * a.values().size()) == 0;
}

bool bit_equal(const TensorMap& a, const TensorMap& b) {
  if (a.size() != b.size()) return false;
  for (const auto& [name, t] : a) {
    auto it = b.find(name);
    if (it == b.end() || !bit_equal(t, it->second)) return false;
  }
  return true;
}

std::string temp_path(const std::string& name) { return testing::TempDir() + "switchyard_expert_store_" + name; }

template <class F>
void expect_input_error(F&& f, const std::vector<std::string>& fragments) {
  try {
    f();
    ADD_FAILURE() << "no error; expected " << fragments.front();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::input) << e.what();
    for (const std::string& frag : fragments) EXPECT_NE(std::string(e.what()).find(frag), std::string::npos) << e.what();
  }
}

struct Direct {  // one expert computed straight through the cpu kernels
  TensorMap w, g;
  cpu::FfnCache cache;
  int64_t d, f;
  Activation act;

  Direct(const ModelConfig& m, const ExpertKey& key, TensorMap weights)
      : w(std::move(weights)), g(zeros_like(w)), d(m.hidden_size),
        f(m.layer.stages[static_cast<size_t>(key.stage)].ffn_hidden_size),
        act(m.layer.stages[static_cast<size_t>(key.stage)].activation) {}
  cpu::ExpertWeights ew() const {
    return {act == Activation::swiglu ? w.at("gate_proj.weight").data() : nullptr, w.at("up_proj.weight").data(),
            w.at("down_proj.weight").data()};
  }
  cpu::ExpertGrads eg() {
    return {act == Activation::swiglu ? g.at("gate_proj.weight").data() : nullptr, g.at("up_proj.weight").data(),
            g.at("down_proj.weight").data()};
  }
};

TEST(ExpertStore, ForwardAndBackwardEqualTheCpuKernels) {
  const ModelConfig m = model();
  for (const ExpertKey key : {ExpertKey{0, 0, 1}, ExpertKey{1, 1, 2}}) {  // swiglu and gelu
    SCOPED_TRACE(key.to_string());
    ExpertStore store(m);
    store.add(key, weights_for(m, key));
    Direct direct(m, key, weights_for(m, key));
    const int64_t d = m.hidden_size, rows = 7;

    for (uint64_t request = 1; request <= 2; ++request) {  // two requests: gradients accumulate
      const std::vector<float> x = random_rows(rows, d, static_cast<uint32_t>(request));
      const std::vector<float> gy = random_rows(rows, d, static_cast<uint32_t>(100 + request));
      std::vector<float> y(x.size()), y_ref(x.size()), gx(x.size(), 123.0f), gx_ref(x.size(), 0.0f);

      store.forward(key, request, x.data(), rows, y.data());
      cpu::ffn_forward(x.data(), rows, d, direct.f, direct.act, direct.ew(), y_ref.data(), &direct.cache);
      EXPECT_EQ(y, y_ref);

      store.backward(key, request, gy.data(), rows, gx.data());  // grad_in is overwritten
      cpu::ffn_backward(gy.data(), x.data(), rows, d, direct.f, direct.act, direct.ew(), direct.cache, gx_ref.data(),
                        direct.eg());
      EXPECT_EQ(gx, gx_ref);
    }
    EXPECT_TRUE(bit_equal(store.grads(key), direct.g));
    EXPECT_EQ(store.pending_activations(), 0);

    std::vector<float> x = random_rows(3, d, 9), y(x.size()), y_ref(x.size());
    store.infer(key, x.data(), 3, y.data());
    cpu::ffn_forward(x.data(), 3, d, direct.f, direct.act, direct.ew(), y_ref.data(), nullptr);
    EXPECT_EQ(y, y_ref);
    EXPECT_EQ(store.pending_activations(), 0);  // infer keeps nothing
  }
}

// Rows given with an owner are kept where they are, not copied: the forward's activations keep
// the owner's memory alive until backward, and the gradients equal those of a copying store.
TEST(ExpertStore, ForwardKeepsOwnedRowsWithoutCopyingThem) {
  const ModelConfig m = model();
  const ExpertKey key{0, 0, 1};
  ExpertStore owning(m), copying(m);
  owning.add(key, weights_for(m, key));
  copying.add(key, weights_for(m, key));
  const int64_t d = m.hidden_size, rows = 6;
  auto x = std::make_shared<std::vector<float>>(random_rows(rows, d, 3));
  const std::vector<float> x_copy = *x, gy = random_rows(rows, d, 4);
  std::vector<float> y(x_copy.size()), y2(y.size()), gx(y.size()), gx2(y.size());
  owning.forward(key, 1, x->data(), rows, y.data(), x);
  copying.forward(key, 1, x_copy.data(), rows, y2.data());
  std::weak_ptr<std::vector<float>> kept = x;
  x.reset();  // the caller lets go: the store still holds the rows
  EXPECT_FALSE(kept.expired());
  owning.backward(key, 1, gy.data(), rows, gx.data());
  copying.backward(key, 1, gy.data(), rows, gx2.data());
  EXPECT_TRUE(kept.expired()) << "backward released the rows";
  EXPECT_EQ(owning.rows_copied(), 0);
  EXPECT_EQ(copying.rows_copied(), rows);
  EXPECT_EQ(y, y2);
  EXPECT_EQ(gx, gx2);
  EXPECT_TRUE(bit_equal(owning.grads(key), copying.grads(key)));
}

// The store's FFN forward/backward (forward, infer, backward) and its AdamW step are ops of the
// Backend it was given: a recording backend sees each of them, the results equal a store on the
// CPU backend bit for bit, and repeated requests reuse the pooled workspace.
TEST(ExpertStore, ComputeGoesThroughTheGivenBackend) {
  const ModelConfig m = model();
  const ExpertKey key{0, 0, 1};  // swiglu: three weight tensors
  test_support::RecordingBackend backend;
  ExpertStore store(m, backend), plain(m);
  store.add(key, weights_for(m, key));
  plain.add(key, weights_for(m, key));
  const int64_t d = m.hidden_size, rows = 5;
  int allocations = 0;
  for (uint64_t request = 1; request <= 3; ++request) {
    const std::vector<float> x = random_rows(rows, d, static_cast<uint32_t>(request));
    const std::vector<float> gy = random_rows(rows, d, static_cast<uint32_t>(50 + request));
    std::vector<float> y(x.size()), y_plain(x.size()), gx(x.size()), gx_plain(x.size()), z(x.size()), z_plain(x.size());
    store.forward(key, request, x.data(), rows, y.data());
    plain.forward(key, request, x.data(), rows, y_plain.data());
    store.infer(key, x.data(), rows, z.data());
    plain.infer(key, x.data(), rows, z_plain.data());
    store.backward(key, request, gy.data(), rows, gx.data());
    plain.backward(key, request, gy.data(), rows, gx_plain.data());
    EXPECT_EQ(0, std::memcmp(y.data(), y_plain.data(), y.size() * sizeof(float)));
    EXPECT_EQ(0, std::memcmp(z.data(), z_plain.data(), z.size() * sizeof(float)));
    EXPECT_EQ(0, std::memcmp(gx.data(), gx_plain.data(), gx.size() * sizeof(float)));
    EXPECT_TRUE(bit_equal(store.grads(key), plain.grads(key)));
    AdamWConfig cfg;
    cfg.lr = 0.01;
    store.step(cfg);
    plain.step(cfg);
    EXPECT_TRUE(bit_equal(store.weights(key), plain.weights(key)));
    EXPECT_TRUE(bit_equal(store.optimizer(key).state(), plain.optimizer(key).state()));
    if (request == 1) allocations = backend.allocations;
  }
  EXPECT_EQ(backend.ops, (std::map<std::string, int>{{"ffn_forward", 6}, {"ffn_backward", 3}, {"adamw", 9}}));
  EXPECT_GT(allocations, 0);                    // infer's activations, backward's scratch
  EXPECT_EQ(backend.allocations, allocations);  // reused by the later requests
  // A device backend makes a device store: ExpertStoreOnADevice.
}

TEST(ExpertStore, RequestLifecycle) {
  const ModelConfig m = model();
  const ExpertKey a{0, 0, 0}, b{0, 0, 1};
  ExpertStore store(m);
  store.add(a, weights_for(m, a));
  store.add(b, weights_for(m, b));
  const int64_t d = m.hidden_size;
  std::vector<float> x = random_rows(4, d, 1), y(x.size()), g(x.size());

  store.forward(a, 10, x.data(), 4, y.data());
  store.forward(b, 10, x.data(), 4, y.data());
  store.forward(a, 11, x.data(), 4, y.data());
  EXPECT_EQ(store.pending_activations(), 3);
  EXPECT_THROW(store.forward(a, 10, x.data(), 4, y.data()), Error);  // same (request, expert) again
  EXPECT_THROW(store.backward(a, 10, g.data(), 3, g.data()), Error);  // row count differs from forward
  EXPECT_EQ(store.pending_activations(), 3);                          // ... and nothing was released
  store.drop_request(10);
  EXPECT_EQ(store.pending_activations(), 1);
  EXPECT_THROW(store.backward(b, 10, g.data(), 4, g.data()), Error);  // released
  store.backward(a, 11, g.data(), 4, g.data());
  EXPECT_EQ(store.pending_activations(), 0);
  EXPECT_THROW(store.backward(a, 11, g.data(), 4, g.data()), Error);  // released by backward

  // Zero rows: nothing computed, the cache entry still pairs forward and backward.
  store.forward(a, 12, nullptr, 0, nullptr);
  store.backward(a, 12, nullptr, 0, nullptr);
  EXPECT_EQ(store.pending_activations(), 0);

  // Experts the store lacks.
  EXPECT_THROW(store.forward({0, 0, 2}, 1, x.data(), 4, y.data()), Error);
  EXPECT_THROW(store.grads({1, 0, 0}), Error);
  store.forward(a, 13, x.data(), 4, y.data());
  store.remove(a);
  EXPECT_FALSE(store.holds(a));
  EXPECT_EQ(store.pending_activations(), 0);  // remove releases the expert's activations
  EXPECT_EQ(store.keys(), std::vector<ExpertKey>{b});
}

TEST(ExpertStore, AddValidatesTheWeights) {
  const ModelConfig m = model();
  ExpertStore store(m);
  const ExpertKey key{0, 0, 0};
  TensorMap w = weights_for(m, key);
  TensorMap missing = w;
  missing.erase("gate_proj.weight");
  expect_input_error([&] { store.add(key, missing); }, {"layers.0.stages.0.experts.0", "missing tensor 'gate_proj.weight'"});
  TensorMap shape = w;
  shape["down_proj.weight"] = Tensor({8, 12});
  expect_input_error([&] { store.add(key, shape); }, {"'down_proj.weight' has shape [8, 12], expected [12, 8]"});
  TensorMap extra = w;
  extra["bias"] = Tensor({12});
  expect_input_error([&] { store.add(key, extra); }, {"unexpected tensor 'bias'"});
  TensorMap nan = w;
  nan["up_proj.weight"][3] = std::nanf("");
  expect_input_error([&] { store.add(key, nan); }, {"'up_proj.weight' is not finite"});
  expect_input_error([&] { store.add({0, 1, 3}, w); }, {"the model has no expert layers.0.stages.1.experts.3"});
  // gelu experts have no gate.
  TensorMap gelu = weights_for(m, {0, 1, 0});
  gelu["gate_proj.weight"] = Tensor({6, 12});
  expect_input_error([&] { store.add({0, 1, 0}, gelu); }, {"unexpected tensor 'gate_proj.weight'"});
  store.add(key, w);
  expect_input_error([&] { store.add(key, w); }, {"already holds a replica of layers.0.stages.0.experts.0"});
  EXPECT_TRUE(store.holds(key));
  EXPECT_EQ(store.bytes(), expert_replica_bytes(m, 0));
  store.add({1, 1, 2}, weights_for(m, {1, 1, 2}));
  EXPECT_EQ(store.bytes(), expert_replica_bytes(m, 0) + expert_replica_bytes(m, 1));
  EXPECT_EQ(expert_replica_bytes(m, 0), 4 * 3 * 8 * 12 * 4);
}

TEST(ExpertStore, StepIsAdamWAndZeroesGrads) {
  const ModelConfig m = model();
  const ExpertKey key{0, 0, 2};
  ExpertStore store(m);
  store.add(key, weights_for(m, key));
  TensorMap params = weights_for(m, key);
  AdamWConfig cfg;
  cfg.lr = 0.01;
  cfg.weight_decay = 0.1;
  AdamW reference(cfg);
  for (int step = 0; step < 3; ++step) {
    TensorMap& g = store.grads(key);
    for (auto& [name, t] : g)
      for (int64_t i = 0; i < t.numel(); ++i) t[i] = 0.001f * static_cast<float>((i * 7 + step) % 13) - 0.005f;
    const TensorMap grads_copy = g;
    cfg.lr = 0.01 / (step + 1);  // a schedule
    reference.set_lr(cfg.lr);
    store.step(cfg);
    reference.step(params, grads_copy);
    EXPECT_TRUE(bit_equal(store.weights(key), params)) << step;
    for (const auto& [name, t] : store.grads(key))
      for (float v : t.values()) ASSERT_EQ(v, 0.0f);
  }
  EXPECT_EQ(store.optimizer(key).steps(), 3);
  EXPECT_TRUE(bit_equal(store.optimizer(key).state(), reference.state()));
}

TEST(ExpertStore, ReplicasWithEqualGradsStayBitIdentical) {
  const ModelConfig m = model();
  const ExpertKey key{1, 0, 3};
  ExpertStore w0(m), w1(m);  // two workers, one replica each
  w0.add(key, weights_for(m, key));
  w1.add(key, weights_for(m, key));
  w0.add({0, 0, 0}, weights_for(m, {0, 0, 0}));  // other experts on the workers do not matter
  const int64_t d = m.hidden_size;
  AdamWConfig cfg;
  cfg.lr = 0.05;
  for (int step = 0; step < 4; ++step) {
    // Each replica serves different tokens (replica choice per token), then the reduction
    // writes the sum of both replicas' grads into each.
    uint64_t request = 100 + static_cast<uint64_t>(step);
    for (ExpertStore* s : {&w0, &w1}) {
      const int64_t rows = s == &w0 ? 6 : 2 + step;
      std::vector<float> x = random_rows(rows, d, static_cast<uint32_t>(step * 10 + rows)), y(x.size()), gx(x.size());
      std::vector<float> gy = random_rows(rows, d, static_cast<uint32_t>(step * 10 + rows + 1));
      s->forward(key, request, x.data(), rows, y.data());
      s->backward(key, request, gy.data(), rows, gx.data());
    }
    TensorMap& g0 = w0.grads(key);
    TensorMap& g1 = w1.grads(key);
    EXPECT_FALSE(bit_equal(g0, g1));
    for (auto& [name, t] : g0) {
      Tensor& u = g1.at(name);
      for (int64_t i = 0; i < t.numel(); ++i) u[i] = t[i] = t[i] + u[i];
    }
    if (step == 2) cfg.weight_decay = 0.01;  // config changes apply to every replica alike
    w0.step(cfg);
    w1.step(cfg);
    EXPECT_TRUE(bit_equal(w0.weights(key), w1.weights(key))) << step;
    EXPECT_TRUE(bit_equal(w0.optimizer(key).state(), w1.optimizer(key).state())) << step;
  }
  EXPECT_FALSE(bit_equal(w0.weights(key), weights_for(m, key)));  // it did train
  EXPECT_EQ(w0.optimizer({0, 0, 0}).steps(), 4);                   // replicas without tokens step too
}

// `steps` steps of training on every replica of the store.
void train(ExpertStore& store, const ModelConfig& m, int steps, uint64_t first_request) {
  const int64_t d = m.hidden_size;
  AdamWConfig cfg;
  cfg.lr = 0.02;
  for (int s = 0; s < steps; ++s) {
    for (const ExpertKey& key : store.keys()) {
      const uint64_t request = first_request + static_cast<uint64_t>(s);
      std::vector<float> x = random_rows(4, d, static_cast<uint32_t>(request * 3 + key.expert)), y(x.size()),
                         gx(x.size());
      std::vector<float> gy = random_rows(4, d, static_cast<uint32_t>(request * 5 + key.expert));
      store.forward(key, request, x.data(), 4, y.data());
      store.backward(key, request, gy.data(), 4, gx.data());
    }
    store.step(cfg);
  }
}

// Three replicas (two swiglu, one gelu) after two steps.
ExpertStore& trained(ExpertStore& store, const ModelConfig& m) {
  for (const ExpertKey key : {ExpertKey{0, 0, 1}, ExpertKey{0, 1, 2}, ExpertKey{1, 0, 0}})
    store.add(key, weights_for(m, key));
  train(store, m, 2, 1);
  return store;
}

// A checkpoint into a directory that does not exist yet creates it (and writes no temporary
// of a temporary: the file is written once, atomically).
TEST(ExpertStoreCheckpoint, SaveCreatesTheDirectory) {
  const ModelConfig m = model();
  ExpertStore a(m);
  trained(a, m);
  const std::string dir = temp_path("new_ckpt_dir") + "/nested";
  std::filesystem::remove_all(std::filesystem::path(dir).parent_path());
  const std::string path = dir + "/worker-0.safetensors";
  a.save(path);
  EXPECT_TRUE(std::filesystem::exists(path));
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir), std::filesystem::directory_iterator{}), 1);
  ExpertStore b(m);
  b.load(path);
  EXPECT_EQ(b.keys(), a.keys());
  std::filesystem::remove_all(std::filesystem::path(dir).parent_path());
}

// A cluster checkpoint holds exactly the replicas the placement puts on the worker: save()
// writes just those, load() refuses a file with others or without one, naming file and replica.
TEST(ExpertStoreCheckpoint, OnlyTheListedReplicasAreSavedAndExpected) {
  const ModelConfig m = model();
  ExpertStore a(m);
  trained(a, m);
  const std::string path = temp_path("listed.safetensors");
  const std::vector<ExpertKey> two = {ExpertKey{0, 0, 1}, ExpertKey{1, 0, 0}};
  a.save(path, &two);
  ExpertStore b(m);
  b.load(path, &two);
  EXPECT_EQ(b.keys(), two);
  const std::vector<ExpertKey> one = {ExpertKey{0, 0, 1}},
                               three = {ExpertKey{0, 0, 1}, ExpertKey{0, 1, 2}, ExpertKey{1, 0, 0}};
  for (const auto& [expect, fragment] :
       {std::pair{&one, "holds a replica of layers.1.stages.0.experts.0, which the placement does not put"},
        std::pair{&three, "holds no replica of layers.0.stages.1.experts.2, which the placement puts"}}) {
    try {
      b.load(path, expect);
      ADD_FAILURE() << "loaded a file with other replicas than expected";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::input);
      EXPECT_NE(std::string(e.what()).find("expert checkpoint '" + path + "': " + fragment), std::string::npos)
          << e.what();
    }
    EXPECT_EQ(b.keys(), two);  // unchanged
  }
  b.clear();
  EXPECT_TRUE(b.keys().empty());
  std::remove(path.c_str());
}

TEST(ExpertStoreCheckpoint, SaveLoadRoundTripIsExact) {
  const ModelConfig m = model();
  ExpertStore a(m);
  trained(a, m);
  const std::string path = temp_path("roundtrip.safetensors");
  a.save(path);
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));

  // The file speaks METHODS.md §5 names plus the moments and step counts.
  const TensorMap file = read_safetensors(path);
  EXPECT_TRUE(file.count("layers.0.stages.0.experts.1.gate_proj.weight"));
  EXPECT_TRUE(file.count("layers.0.stages.0.experts.1.up_proj.weight.exp_avg"));
  EXPECT_TRUE(file.count("layers.1.stages.0.experts.0.down_proj.weight.exp_avg_sq"));
  EXPECT_FALSE(file.count("layers.0.stages.1.experts.2.gate_proj.weight"));  // gelu
  EXPECT_EQ(file.size(), 9u + 6u + 9u);  // (weight, exp_avg, exp_avg_sq) × 3 swiglu + 2 gelu + 3 swiglu
  const auto meta = read_safetensors_metadata(path);
  EXPECT_EQ(meta.at("format"), "switchyard.expert_store");
  EXPECT_EQ(meta.at("adam_steps.layers.0.stages.1.experts.2"), "2");

  ExpertStore b(m);
  b.add({1, 1, 1}, weights_for(m, {1, 1, 1}));  // replaced by the file's contents
  b.load(path);
  ASSERT_EQ(b.keys(), a.keys());
  for (const ExpertKey& key : a.keys()) {
    EXPECT_TRUE(bit_equal(a.weights(key), b.weights(key))) << key.to_string();
    EXPECT_TRUE(bit_equal(a.optimizer(key).state(), b.optimizer(key).state())) << key.to_string();
    EXPECT_EQ(a.optimizer(key).steps(), b.optimizer(key).steps());
  }
  // Training on continues identically (bias correction uses the restored step counts).
  train(a, m, 2, 50);
  train(b, m, 2, 50);
  for (const ExpertKey& key : a.keys()) {
    EXPECT_TRUE(bit_equal(a.weights(key), b.weights(key))) << key.to_string();
    EXPECT_EQ(b.optimizer(key).steps(), 4);
  }
  std::remove(path.c_str());
}

// Rewrites a checkpoint with `edit` applied to its tensors and metadata.
template <class F>
std::string edited(const std::string& from, const std::string& name, F&& edit) {
  TensorMap t = read_safetensors(from);
  auto meta = read_safetensors_metadata(from);
  edit(t, meta);
  const std::string path = temp_path(name);
  write_safetensors(path, t, meta);
  return path;
}

TEST(ExpertStoreCheckpoint, BadCheckpointsNameFileAndTensor) {
  const ModelConfig m = model();
  ExpertStore a(m);
  trained(a, m);
  const std::string good = temp_path("good.safetensors");
  a.save(good);

  ExpertStore b(m);
  b.add({1, 1, 1}, weights_for(m, {1, 1, 1}));
  auto expect_load_error = [&](const std::string& path, const std::vector<std::string>& fragments) {
    std::vector<std::string> all = fragments;
    all.insert(all.begin(), path);
    expect_input_error([&] { b.load(path); }, all);
    EXPECT_EQ(b.keys(), (std::vector<ExpertKey>{ExpertKey{1, 1, 1}}));  // unchanged on failure
    std::remove(path.c_str());
  };

  // Saved for another model: f = 16 instead of 8.
  {
    const ModelConfig other = model(16);
    ExpertStore c(other);
    c.add({0, 0, 3}, weights_for(other, {0, 0, 3}));
    const std::string path = temp_path("other.safetensors");
    c.save(path);
    expect_load_error(path, {"tensor 'layers.0.stages.0.experts.3.down_proj.weight': shape [12, 16], expected [12, 8]"});
  }
  expect_load_error(edited(good, "missing.safetensors",
                           [](TensorMap& t, auto&) { t.erase("layers.0.stages.0.experts.1.up_proj.weight.exp_avg"); }),
                    {"tensor 'layers.0.stages.0.experts.1.up_proj.weight.exp_avg' is missing"});
  expect_load_error(edited(good, "missing_weight.safetensors",
                           [](TensorMap& t, auto&) { t.erase("layers.1.stages.0.experts.0.gate_proj.weight"); }),
                    {"tensor 'layers.1.stages.0.experts.0.gate_proj.weight' is missing"});
  expect_load_error(edited(good, "extra.safetensors", [](TensorMap& t, auto&) { t["optimizer.lr"] = Tensor({1}); }),
                    {"tensor 'optimizer.lr': unexpected tensor"});
  expect_load_error(edited(good, "gate.safetensors",
                           [](TensorMap& t, auto&) {
                             t["layers.0.stages.1.experts.2.gate_proj.weight"] = Tensor({6, 12});
                           }),
                    {"tensor 'layers.0.stages.1.experts.2.gate_proj.weight': unexpected tensor for a gelu expert"});
  expect_load_error(edited(good, "nokey.safetensors",
                           [](TensorMap& t, auto&) { t["layers.2.stages.0.experts.0.up_proj.weight"] = Tensor({8, 12}); }),
                    {"tensor 'layers.2.stages.0.experts.0.up_proj.weight': the model has no expert"});
  expect_load_error(edited(good, "nan.safetensors",
                           [](TensorMap& t, auto&) { t.at("layers.0.stages.1.experts.2.up_proj.weight")[0] = INFINITY; }),
                    {"tensor 'layers.0.stages.1.experts.2.up_proj.weight': not finite"});
  expect_load_error(edited(good, "neg.safetensors",
                           [](TensorMap& t, auto&) {
                             t.at("layers.0.stages.1.experts.2.up_proj.weight.exp_avg_sq")[0] = -1.0f;
                           }),
                    {"tensor 'layers.0.stages.1.experts.2.up_proj.weight.exp_avg_sq': negative second moment"});
  expect_load_error(
      edited(good, "steps.safetensors", [](TensorMap&, auto& meta) { meta.erase("adam_steps.layers.1.stages.0.experts.0"); }),
      {"metadata \"adam_steps.layers.1.stages.0.experts.0\"", "is missing"});
  expect_load_error(
      edited(good, "steps2.safetensors",
             [](TensorMap&, auto& meta) { meta["adam_steps.layers.1.stages.0.experts.0"] = "two"; }),
      {"is not a step count"});
  expect_load_error(edited(good, "format.safetensors", [](TensorMap&, auto& meta) { meta.clear(); }),
                    {"not an expert-store checkpoint"});
  expect_load_error(edited(good, "hidden.safetensors", [](TensorMap&, auto& meta) { meta["hidden_size"] = "16"; }),
                    {"saved for hidden_size 16, the model has 12"});

  // A truncated file: the safetensors reader names the file.
  {
    const std::string path = temp_path("truncated.safetensors");
    std::filesystem::copy_file(good, path, std::filesystem::copy_options::overwrite_existing);
    std::filesystem::resize_file(path, std::filesystem::file_size(path) - 100);
    expect_load_error(path, {});
  }
  expect_load_error(temp_path("does_not_exist.safetensors"), {"does not exist"});
  std::remove(good.c_str());
}

TEST(ExpertStore, ConcurrentRequestsOnSeveralThreads) {
  const ModelConfig m = model();
  const std::vector<ExpertKey> keys = {{0, 0, 0}, {0, 0, 1}, {1, 1, 0}};
  ExpertStore store(m), serial(m);
  for (const ExpertKey& k : keys) {
    store.add(k, weights_for(m, k));
    serial.add(k, weights_for(m, k));
  }
  const int64_t d = m.hidden_size, rows = 9;
  constexpr int kThreads = 4, kRequests = 6;
  struct Result {
    std::vector<float> y, gx;
  };
  auto run = [&](ExpertStore& s, int thread, int r, Result& out) {
    const uint64_t request = static_cast<uint64_t>(thread * 1000 + r);
    const ExpertKey& key = keys[static_cast<size_t>((thread + r) % 3)];
    const std::vector<float> x = random_rows(rows, d, static_cast<uint32_t>(request));
    const std::vector<float> gy = random_rows(rows, d, static_cast<uint32_t>(request + 7));
    out.y.resize(x.size());
    out.gx.resize(x.size());
    s.forward(key, request, x.data(), rows, out.y.data());
    s.backward(key, request, gy.data(), rows, out.gx.data());
  };
  std::vector<std::vector<Result>> par(kThreads, std::vector<Result>(kRequests)), ser = par;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&, t] {
      for (int r = 0; r < kRequests; ++r) run(store, t, r, par[static_cast<size_t>(t)][static_cast<size_t>(r)]);
    });
  for (std::thread& t : threads) t.join();
  for (int t = 0; t < kThreads; ++t)
    for (int r = 0; r < kRequests; ++r) run(serial, t, r, ser[static_cast<size_t>(t)][static_cast<size_t>(r)]);

  for (int t = 0; t < kThreads; ++t)
    for (int r = 0; r < kRequests; ++r) {
      EXPECT_EQ(par[static_cast<size_t>(t)][static_cast<size_t>(r)].y, ser[static_cast<size_t>(t)][static_cast<size_t>(r)].y);
      EXPECT_EQ(par[static_cast<size_t>(t)][static_cast<size_t>(r)].gx, ser[static_cast<size_t>(t)][static_cast<size_t>(r)].gx);
    }
  EXPECT_EQ(store.pending_activations(), 0);
  // Gradients: the same sums in a timing-dependent order.
  for (const ExpertKey& k : keys)
    for (const auto& [name, t] : serial.grads(k)) {
      const Tensor& p = store.grads(k).at(name);
      for (int64_t i = 0; i < t.numel(); ++i) ASSERT_NEAR(p[i], t[i], 1e-4f * (1.0f + std::fabs(t[i]))) << name;
    }
}

TEST(ExpertStore, ExtractExpertWeightsFromALayerFile) {
  const ModelConfig m = model();  // two layers: names carry "layers.{l}."
  const TensorMap layer = init_layer_weights(m, 3, layer_prefix(m, 1));
  const TensorMap w = extract_expert_weights(m, layer, {1, 0, 2});
  ASSERT_EQ(w.size(), 3u);
  EXPECT_TRUE(bit_equal(w.at("up_proj.weight"), layer.at("layers.1.stages.0.experts.2.up_proj.weight")));
  EXPECT_EQ(extract_expert_weights(m, layer, {1, 1, 0}).size(), 2u);
  expect_input_error([&] { extract_expert_weights(m, layer, {0, 0, 2}); }, {"'layers.0.stages.0.experts.2.gate_proj.weight'"});
  EXPECT_EQ(expert_param_name(m, {1, 0, 2}, "up_proj.weight"), "layers.1.stages.0.experts.2.up_proj.weight");
  ModelConfig one = m;
  one.layers = 1;
  EXPECT_EQ(expert_param_name(one, {0, 0, 2}, "up_proj.weight"), "stages.0.experts.2.up_proj.weight");
  ExpertKey key;
  std::string tensor;
  ASSERT_TRUE(parse_expert_param_name(m, "layers.1.stages.0.experts.2.up_proj.weight.exp_avg", key, tensor));
  EXPECT_EQ(key, (ExpertKey{1, 0, 2}));
  EXPECT_EQ(tensor, "up_proj.weight.exp_avg");
  EXPECT_FALSE(parse_expert_param_name(m, "stages.0.experts.2.up_proj.weight", key, tensor));
  EXPECT_FALSE(parse_expert_param_name(m, "layers.01.stages.0.experts.2.up_proj.weight", key, tensor));
}

TEST(ExpertTensors, CodecRoundTripsWeightsAndMoments) {
  const ModelConfig m = model();
  for (int stage : {0, 1}) {  // swiglu and gelu
    const ExpertGeometry g = ExpertGeometry::of(m, stage);
    ExpertTensors t = ExpertTensors::fresh(g, weights_for(m, {0, stage, 1}));
    t.step = 7;
    float v = 0.5f;
    for (auto& [name, moment] : t.moments)
      for (int64_t i = 0; i < moment.numel(); ++i) moment[i] = v += 0.25f;
    for (bool with_moments : {false, true}) {
      std::vector<float> flat = {42.0f};  // encode appends
      encode_expert(g, t, with_moments, flat);
      ASSERT_EQ(static_cast<int64_t>(flat.size()), 1 + encoded_expert_floats(g, with_moments));
      const ExpertTensors back = decode_expert(g, std::span(flat).subspan(1), with_moments, "test");
      for (const auto& [name, w] : t.weights) EXPECT_TRUE(bit_equal(back.weights.at(name), w)) << name;
      EXPECT_EQ(back.moments.size(), with_moments ? t.moments.size() : 0u);
      for (const auto& [name, mt] : back.moments) EXPECT_TRUE(bit_equal(mt, t.moments.at(name))) << name;
      flat.pop_back();
      expect_input_error([&] { decode_expert(g, std::span(flat).subspan(1), with_moments, "worker 3"); }, {"worker 3"});
    }
  }
}

TEST(ExpertStoreCheckpoint, OneLayerModelsUseTheWeightFileNames) {
  ModelConfig m = model();
  m.layers = 1;
  ExpertStore a(m);
  a.add({0, 0, 1}, weights_for(m, {0, 0, 1}));
  const std::string path = temp_path("one_layer.safetensors");
  a.save(path);
  const TensorMap saved = read_safetensors(path);
  EXPECT_TRUE(saved.count("stages.0.experts.1.up_proj.weight"));
  ExpertStore b(m);
  b.load(path);
  EXPECT_TRUE(bit_equal(b.weights({0, 0, 1}).at("up_proj.weight"), a.weights({0, 0, 1}).at("up_proj.weight")));
  // Version 1 spelled every name with "layers.{l}.": still read.
  TensorMap v1;
  for (const auto& [name, t] : saved) v1.emplace("layers.0." + name, t);
  auto meta = read_safetensors_metadata(path);
  meta["version"] = "1";
  write_safetensors(path, v1, meta);
  ExpertStore c(m);
  c.load(path);
  EXPECT_TRUE(bit_equal(c.weights({0, 0, 1}).at("up_proj.weight"), a.weights({0, 0, 1}).at("up_proj.weight")));
  std::remove(path.c_str());
}

// A device store (the GPU worker's) on the stand-in device, whose memory the host cannot touch:
// every result equals the host store's bit for bit (the same kernels run underneath), through
// forward, infer, backward with and without dL/dx, weight segments, the gradient copies the
// reduction uses, AdamW steps, and a checkpoint round trip; the in-place accessors refuse.
TEST(ExpertStoreOnADevice, EqualsTheHostStoreBitForBit) {
  const ModelConfig m = model();
  test_support::GuardedDeviceBackend device;
  ExpertStore host(m), dev(m, device);
  EXPECT_TRUE(host.host_resident());
  EXPECT_FALSE(dev.host_resident());
  const std::vector<ExpertKey> keys = {{0, 0, 1}, {1, 1, 2}};  // swiglu and gelu
  for (const ExpertKey& key : keys) {
    host.add(key, weights_for(m, key));
    dev.add(key, weights_for(m, key));
  }
  const int64_t d = m.hidden_size;
  const std::vector<int64_t> segments = {3, 4};
  for (int step = 0; step < 2; ++step) {
    for (const ExpertKey& key : keys) {
      SCOPED_TRACE(key.to_string() + " step " + std::to_string(step));
      for (uint64_t request = 1; request <= 2; ++request) {
        const uint32_t seed = static_cast<uint32_t>(10 * step + request);
        const std::vector<float> x = random_rows(7, d, seed), gy = random_rows(7, d, seed + 100);
        std::vector<float> y_host(x.size()), y_dev(x.size()), gx_host(x.size()), gx_dev(x.size());
        host.forward(key, request, x.data(), 7, y_host.data());
        dev.forward(key, request, x.data(), 7, y_dev.data());
        EXPECT_EQ(y_host, y_dev);
        const bool want_dx = request == 1;  // the second request wants weights only, in segments
        const std::span<const int64_t> seg = want_dx ? std::span<const int64_t>() : std::span<const int64_t>(segments);
        host.backward(key, request, gy.data(), 7, want_dx ? gx_host.data() : nullptr, seg);
        dev.backward(key, request, gy.data(), 7, want_dx ? gx_dev.data() : nullptr, seg);
        EXPECT_EQ(gx_host, gx_dev);
        host.infer(key, gy.data(), 7, y_host.data());
        dev.infer(key, gy.data(), 7, y_dev.data());
        EXPECT_EQ(y_host, y_dev);
      }
      EXPECT_TRUE(bit_equal(host.grads_copy(key), dev.grads_copy(key)));
      EXPECT_EQ(host.flat_grads(key), dev.flat_grads(key));
    }
    // The reduction's write-back: doubled gradients, on both.
    for (const ExpertKey& key : keys) {
      std::vector<float> g = host.flat_grads(key);
      for (float& v : g) v *= 2.0f;
      host.set_flat_grads(key, g);
      dev.set_flat_grads(key, g);
    }
    host.step(AdamWConfig{});
    dev.step(AdamWConfig{});
  }
  for (const ExpertKey& key : keys) {
    const ExpertTensors a = host.tensors_of(key), b = dev.tensors_of(key);
    EXPECT_TRUE(bit_equal(a.weights, b.weights));
    EXPECT_TRUE(bit_equal(a.moments, b.moments));
    EXPECT_EQ(a.step, b.step);
    EXPECT_TRUE(bit_equal(dev.weights_copy(key), a.weights));
    for (const auto& [name, g] : dev.grads_copy(key))  // step zeroed them on the device
      for (float v : g.values()) ASSERT_EQ(v, 0.0f) << name;
  }
  EXPECT_EQ(dev.pending_activations(), 0);
  EXPECT_GT(device.ops["ffn_forward"], 0);
  EXPECT_GT(device.ops["ffn_backward"], 0);
  EXPECT_GT(device.ops["adamw"], 0);

  const std::string path = temp_path("device.safetensors");
  dev.save(path);
  test_support::GuardedDeviceBackend device2;
  ExpertStore loaded(m, device2);
  loaded.load(path);
  for (const ExpertKey& key : keys) EXPECT_TRUE(bit_equal(loaded.tensors_of(key).weights, host.tensors_of(key).weights));
  std::remove(path.c_str());

  for (auto access : {+[](ExpertStore& s) { s.grads({0, 0, 1}); }, +[](ExpertStore& s) { s.weights({0, 0, 1}); }}) {
    try {
      access(dev);
      ADD_FAILURE() << "an in-place accessor of a device store did not refuse";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("guarded-device memory"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(ExpertKey{0, 0, 1}.to_string()), std::string::npos) << e.what();
    }
  }
  EXPECT_THROW(dev.set_flat_grads({0, 0, 1}, std::vector<float>(3)), Error);
}

}  // namespace
}  // namespace sy
