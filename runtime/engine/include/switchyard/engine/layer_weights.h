// One MoE layer's parameters: names and shapes (METHODS.md §5), initialisation, validation.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "switchyard/core/config.h"
#include "switchyard/core/io.h"

namespace sy {

enum class ParamInit {
  uniform_fan_in,  // U(−1/√fan_in, 1/√fan_in), PyTorch nn.Linear's default bound
  ones,
  zeros,
};

// Which side of the architecture holds a parameter: routed experts live on workers,
// everything else (router, norms, DAG, shared expert, coefficients) on the client.
enum class ParamOwner { client, expert };

struct ParamSpec {
  std::string name;  // full name, including any "layers.{n}." prefix
  Shape shape;
  ParamInit init;
  ParamOwner owner;
  int stage = -1;   // -1 for input_norm
  int expert = -1;  // routed expert index, -1 otherwise
};

// Every parameter of one layer in a fixed order. `prefix` is "" or "layers.{n}.".
std::vector<ParamSpec> layer_param_specs(const ModelConfig& model, const std::string& prefix = "");

// Initialisation scheme (README "Weights"): linear weights U(±1/√fan_in) with fan_in the
// `in` dimension, norm weights 1, biases 0, DAG `up` 0 (an untrained DAG stage equals
// weighted sum + u). Each tensor draws from its own stream seeded by (seed, name), so a
// tensor's values do not depend on which other tensors exist.
TensorMap init_layer_weights(const ModelConfig& model, uint64_t seed, const std::string& prefix = "");

// Checks that `weights` holds exactly the layer's parameters with the right shapes;
// throws an input error naming `source` and the first missing, unexpected or misshapen tensor.
// `dense_only`: the client-side parameters only (routed experts live elsewhere).
// `check_values` false: names and shapes only (tensors in device memory cannot be read here).
void check_layer_weights(const ModelConfig& model, const TensorMap& weights, const std::string& source,
                         const std::string& prefix = "", bool dense_only = false, bool check_values = true);

// Zero tensors of the same names and shapes (gradient or optimizer buffers).
TensorMap zeros_like(const TensorMap& tensors);

// Deterministic, portable random numbers: splitmix64 stream per (seed, name).
class RandomStream {
 public:
  RandomStream(uint64_t seed, const std::string& name);
  uint64_t next_u64();
  float uniform(float lo, float hi);  // [lo, hi)
  float normal();                     // standard normal (Box-Muller)
 private:
  uint64_t state_;
};

}  // namespace sy
