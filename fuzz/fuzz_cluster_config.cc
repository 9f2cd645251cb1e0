// Fuzz target: the cluster config (`cluster:` section, configs/local.yaml), the input of
// `switchyard up` and `switchyard coordinator`. The input is the body of the `cluster:` map
// (so that mutations stay inside it); the first byte chooses a model section to go with it.
#include <string>

#include "config_checks.h"

namespace {
const char* const kModels[] = {
    "",
    "model:\n  hidden_size: 16\n  layers: 2\n  layer:\n    stages:\n      - {experts: 8, ffn_hidden_size: 32}\n",
    ("model:\n  hidden_size: 8\n  layer:\n    stages:\n      - {experts: 4, ffn_hidden_size: 8, routing: {kind: dynamic}}\n"
     "      - {experts: 3, ffn_hidden_size: 8, activation: gelu}\n"),
};
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const std::string text = std::string(kModels[data[0] % 3]) + "cluster:\n" +
                           std::string(reinterpret_cast<const char*>(data + 1), size - 1);
  sy::Config c;
  if (sy::fuzz::refuses_only_with({sy::ErrorKind::config}, "load_config_string",
                                  [&] { c = sy::load_config_string(text, "fuzz-cluster.yaml"); }))
    sy::fuzz::check_accepted_config(c);
  return 0;
}
