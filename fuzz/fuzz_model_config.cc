// Fuzz target: the model config YAML (load_config_string), as `--config` files and the
// coordinator's and workers' model_yaml are read. Refusals must be config errors.
#include <string>

#include "config_checks.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  sy::Config c;
  if (sy::fuzz::refuses_only_with({sy::ErrorKind::config}, "load_config_string",
                                  [&] { c = sy::load_config_string(text, "fuzz.yaml"); }))
    sy::fuzz::check_accepted_config(c);
  return 0;
}
