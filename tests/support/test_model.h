// The small two-layer model the cluster tests train (d = 16; a DAG stage with top-2 routing and a
// top-1 stage with a coefficient-mixed shared expert), and one training step of it.
#pragma once

#include "switchyard/cli/toy_task.h"
#include "switchyard/core/config.h"
#include "switchyard/engine/moe_model.h"

namespace sy {

inline Config two_layer_model() {
  return load_config_string(
      "model:\n  hidden_size: 16\n  layers: 2\n  layer:\n    input_norm: rmsnorm\n    stages:\n"
      "      - {experts: 4, ffn_hidden_size: 8, routing: {k: 2}, aggregation: {kind: dag, levels: 1, dim: 4}}\n"
      "      - {experts: 4, ffn_hidden_size: 8, routing: {k: 1}, shared_expert: {ffn_hidden_size: 8, mix: "
      "coefficient}}\n",
      "two-layer");
}

inline double dot(const Tensor& a, const Tensor& b) {
  double s = 0;
  for (int64_t i = 0; i < a.numel(); ++i) s += static_cast<double>(a[i]) * b[i];
  return s;
}

// One step of 48 tokens drawn from RandomStream(seed, stream): forward, backward against a random
// gradient g, AdamW (lr 1e-2). Returns the forward's h · g.
inline double train_step(MoeModel& model, uint64_t seed, const char* stream) {
  const int64_t d = model.config().model.hidden_size;
  RandomStream rng(seed, stream);
  const Tensor x = random_tokens(48, d, rng), g = random_tokens(48, d, rng);
  const double loss = dot(model.forward(x), g);
  model.backward(g);
  model.step(AdamWConfig{.lr = 1e-2});
  return loss;
}

}  // namespace sy
