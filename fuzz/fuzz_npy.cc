// Fuzz target: the .npy reader (read_npy), as `layer forward|backward` inputs and the C API read
// them. Refusals must be input errors; what it accepts must write back (write_npy) and read
// again to the same shape and bits.
#include <string>

#include "fuzz_support.h"
#include "switchyard/core/io.h"
#include "switchyard/core/tensor.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string in = sy::fuzz::scratch_path("in.npy");
  static const std::string out = sy::fuzz::scratch_path("out.npy");
  sy::fuzz::write_file(in, data, size);
  sy::Tensor t;
  if (!sy::fuzz::refuses_only_with({sy::ErrorKind::input}, "read_npy", [&] { t = sy::read_npy(in); })) return 0;
  sy::fuzz::must_succeed("write_npy", [&] { sy::write_npy(out, t); });
  sy::Tensor again;
  sy::fuzz::must_succeed("read_npy(written)", [&] { again = sy::read_npy(out); });
  if (again.shape() != t.shape() ||
      !sy::fuzz::same_bits(again, t))
    sy::fuzz::bug("the array does not round-trip");
  return 0;
}
