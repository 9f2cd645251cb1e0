// Tensor files: safetensors (weights) and NumPy .npy (inputs/outputs).
//
// Only float32 is stored. Reading validates everything a corrupt or foreign file can get
// wrong (short file, header length, JSON syntax, dtype, shape vs byte range, offsets past
// the end, overlapping ranges) and throws sy::Error(ErrorKind::input) naming the file and,
// where it applies, the tensor.
#pragma once

#include <map>
#include <string>
#include <string_view>

#include "switchyard/core/tensor.h"

namespace sy {

// Named tensors in deterministic (sorted) order.
using TensorMap = std::map<std::string, Tensor>;

// safetensors: 8-byte little-endian header length, JSON header (nlohmann-json), raw data.
// Writes dtype "F32"; `metadata` goes to the "__metadata__" entry (string → string).
void write_safetensors(const std::string& path, const TensorMap& tensors,
                       const std::map<std::string, std::string>& metadata = {});
TensorMap read_safetensors(const std::string& path);
// Metadata of a safetensors file ("__metadata__"), empty if absent.
std::map<std::string, std::string> read_safetensors_metadata(const std::string& path);

// NumPy .npy, format version 1.0 (and reading 2.0/3.0), C order, little-endian.
// Reading accepts '<f4' and converts '<f8' to float32; anything else is an error.
void write_npy(const std::string& path, const Tensor& tensor);
Tensor read_npy(const std::string& path);

// A text file written as tensor files are: path.tmp, fsync, rename, so that a crash leaves the
// old file or the new one. Errors are input errors "<kind> file '<path>': cannot write: ...".
void write_text_atomically(const std::string& path, std::string_view text, std::string_view kind = "text");

// User tensors entering a computation (CLI inputs) must be finite: the first NaN or Inf throws
// sy::Error(input) "<what>: value nan at index 5 (element [1, 2] of shape [2, 3]) is not finite".
void check_finite(const Tensor& tensor, const std::string& what);

}  // namespace sy
