// Whether this process's BLAS computes each row of a product on its own: a product over the
// rows [A; B] equals the products over A and over B, bit for bit. OpenBLAS 0.3.21's SkylakeX
// kernels do (measured); its Haswell kernels (AVX2 machines, AMD Zen) do not: there a row's
// sum order depends on where it falls in the product. So "one product per expert over every
// source's rows equals one product per source" holds bit for bit only where this is true, and
// tests that rest on it compare to rounding elsewhere.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "random.h"
#include "switchyard/kernels/cpu_ops.h"

namespace sy::testing {

inline bool blas_rows_independent() {
  for (const auto& [in, out] : {std::pair<int64_t, int64_t>{16, 24}, {24, 16}, {256, 512}, {512, 256}}) {
    const int64_t rows = 301, split = 37;
    const std::vector<float> x = randn(static_cast<size_t>(rows * in), 1), w = randn(static_cast<size_t>(out * in), 2);
    std::vector<float> whole(static_cast<size_t>(rows * out)), parts(whole.size());
    cpu::linear_forward(x.data(), rows, in, w.data(), out, whole.data());
    cpu::linear_forward(x.data(), split, in, w.data(), out, parts.data());
    cpu::linear_forward(x.data() + split * in, rows - split, in, w.data(), out, parts.data() + split * out);
    if (whole != parts) return false;
  }
  return true;
}

}  // namespace sy::testing
