// Reproducible random test data.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

namespace sy::testing {

// n values ~ N(0, scale²) from a seeded std::mt19937.
inline std::vector<float> randn(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = dist(gen);
  return v;
}

}  // namespace sy::testing
