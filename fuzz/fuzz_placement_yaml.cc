// Fuzz target: the placement YAML reader (parse_placement), as `cluster.placement` files,
// `switchyard placement ... --current/--placement` and the coordinator's RebalanceRequest read
// it. Byte 0 picks the model and the worker count, byte 1 the memory budget; the rest is the
// YAML. Refusals must be config errors; an accepted placement must validate and round-trip
// through placement_to_yaml.
#include <cstdint>
#include <limits>
#include <string>

#include "fuzz_support.h"
#include "switchyard/core/config.h"
#include "switchyard/placement/placement.h"

namespace {

const sy::ModelConfig& model(int i) {
  static const sy::ModelConfig models[] = {
      // configs/models/topk.yaml's shape: 1 layer, 1 stage of 8 experts
      sy::load_config_string("model:\n  hidden_size: 64\n  layer:\n    stages:\n"
                             "      - {experts: 8, ffn_hidden_size: 128}\n")
          .model,
      // two layers, two stages (CartesianMoE), gelu in one
      sy::load_config_string("model:\n  hidden_size: 16\n  layers: 2\n  layer:\n    stages:\n"
                             "      - {experts: 4, ffn_hidden_size: 8}\n"
                             "      - {experts: 3, ffn_hidden_size: 8, activation: gelu}\n")
          .model,
  };
  return models[i];
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  const sy::ModelConfig& m = model(data[0] & 1);
  const int workers = 1 + (data[0] >> 1) % 8;
  const int64_t budgets[] = {int64_t{4096} << 20, int64_t{1} << 20, 1, std::numeric_limits<int64_t>::max()};
  const int64_t budget = budgets[data[1] % 4];
  const std::string text(reinterpret_cast<const char*>(data + 2), size - 2);
  sy::Placement p;
  if (!sy::fuzz::refuses_only_with({sy::ErrorKind::config}, "parse_placement",
                                   [&] { p = sy::parse_placement(text, "fuzz-placement.yaml", m, workers, budget); }))
    return 0;
  sy::fuzz::must_succeed("Placement::validate", [&] { p.validate(m, workers); });
  sy::Placement again;
  sy::fuzz::must_succeed("parse_placement(placement_to_yaml(p))", [&] {
    again = sy::parse_placement(sy::placement_to_yaml(p), "round-trip.yaml", m, workers, budget);
  });
  if (again.replicas != p.replicas || again.shares != p.shares)
    sy::fuzz::bug("placement_to_yaml does not round-trip:\n" + sy::placement_to_yaml(p));
  for (int w = 0; w < workers; ++w) (void)p.experts_on(w);
  return 0;
}
