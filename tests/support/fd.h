// Finite-difference helpers for backward checks.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <string>
#include <vector>

namespace sy::testing {

// Central difference of f at x[i] in double.
inline double central_difference(std::vector<double>& x, size_t i, const std::function<double()>& f,
                                 double h = 1e-6) {
  const double keep = x[i];
  x[i] = keep + h;
  const double fp = f();
  x[i] = keep - h;
  const double fm = f();
  x[i] = keep;
  return (fp - fm) / (2 * h);
}

// Checks float32 analytic gradients against double finite differences: each entry must
// satisfy |a − fd| <= atol + rtol·|fd|, with atol relative to the largest |fd| seen.
inline void expect_gradients_close(const std::string& what, const std::vector<double>& analytic,
                                   const std::vector<double>& numeric, double rtol = 2e-3, double atol_frac = 1e-3) {
  ASSERT_EQ(analytic.size(), numeric.size()) << what;
  double scale = 1e-6;
  for (double v : numeric) scale = std::max(scale, std::fabs(v));
  const double atol = std::max(atol_frac * scale, 1e-7);
  int failures = 0;
  for (size_t i = 0; i < analytic.size(); ++i) {
    const double err = std::fabs(analytic[i] - numeric[i]);
    if (err > atol + rtol * std::fabs(numeric[i]) && failures++ < 5)
      ADD_FAILURE() << what << "[" << i << "]: analytic " << analytic[i] << " vs finite difference " << numeric[i]
                    << " (scale " << scale << ")";
  }
}

}  // namespace sy::testing
