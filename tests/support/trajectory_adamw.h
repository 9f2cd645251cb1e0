// The AdamW of tests that compare two training runs step after step (blas_rows.h says why).
#pragma once

#include "blas_rows.h"
#include "switchyard/engine/optimizer.h"

namespace sy::testing {

// AdamW for tests that compare two training runs whose products group rows differently (the
// cluster's workers, failover, co-located ranks against the single process). Its first steps
// are sign-like (m/sqrt(v) = ±1 at step 1 with a tiny ε): a rounding-level difference in a
// gradient near zero becomes a full lr-sized step. Where the BLAS computes each row alone the
// runs are equal bit for bit and the default ε is kept; elsewhere ε = 1 keeps the update smooth
// in the gradient, so rounding stays rounding.
inline AdamWConfig trajectory_adamw(double lr) {
  static const bool exact = blas_rows_independent();
  return exact ? AdamWConfig{.lr = lr} : AdamWConfig{.lr = lr, .eps = 1.0};
}

}  // namespace sy::testing
