// Fuzz target: the safetensors reader (read_safetensors, read_safetensors_metadata), as weights,
// checkpoints and the C API read them. Refusals must be input errors; what it accepts must
// write back (write_safetensors) and read again to the same tensors and metadata.
#include <string>

#include "fuzz_support.h"
#include "switchyard/core/io.h"
#include "switchyard/core/tensor.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string in = sy::fuzz::scratch_path("in.safetensors");
  static const std::string out = sy::fuzz::scratch_path("out.safetensors");
  sy::fuzz::write_file(in, data, size);
  sy::TensorMap tensors;
  const bool read = sy::fuzz::refuses_only_with({sy::ErrorKind::input}, "read_safetensors",
                                                [&] { tensors = sy::read_safetensors(in); });
  std::map<std::string, std::string> meta;
  const bool read_meta = sy::fuzz::refuses_only_with({sy::ErrorKind::input}, "read_safetensors_metadata",
                                                     [&] { meta = sy::read_safetensors_metadata(in); });
  if (read && !read_meta) sy::fuzz::bug("read_safetensors accepted a file whose metadata it refuses");
  if (!read) return 0;
  sy::fuzz::must_succeed("write_safetensors", [&] { sy::write_safetensors(out, tensors, meta); });
  sy::TensorMap again;
  sy::fuzz::must_succeed("read_safetensors(written)", [&] { again = sy::read_safetensors(out); });
  if (sy::read_safetensors_metadata(out) != meta) sy::fuzz::bug("metadata does not round-trip");
  if (again.size() != tensors.size()) sy::fuzz::bug("tensor count does not round-trip");
  for (const auto& [name, t] : tensors) {
    const auto it = again.find(name);
    if (it == again.end() || it->second.shape() != t.shape() ||
        !sy::fuzz::same_bits(it->second, t))
      sy::fuzz::bug("tensor '" + name + "' does not round-trip");
  }
  return 0;
}
