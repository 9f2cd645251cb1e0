// Tensors equal up to rounding: the largest difference within `rel` of the reference's largest
// magnitude (a gtest failure names `what` and both figures).
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "switchyard/core/tensor.h"

namespace sy {

inline void expect_close(const Tensor& a, const Tensor& b, const std::string& what, double rel = 1e-5) {
  ASSERT_EQ(a.shape(), b.shape()) << what;
  double scale = 1e-6, worst = 0;
  for (int64_t i = 0; i < b.numel(); ++i) scale = std::max(scale, std::fabs(static_cast<double>(b[i])));
  for (int64_t i = 0; i < a.numel(); ++i) worst = std::max(worst, std::fabs(static_cast<double>(a[i]) - b[i]));
  EXPECT_LE(worst, rel * scale) << what << ": max difference " << worst << " against scale " << scale;
}

}  // namespace sy
