// Where the DAG aggregation keeps its forward activations (`saved`) and backward temporaries
// (`scratch`) inside one caller buffer each: the layout the CPU and CUDA backends share, so a
// backward op on either reads the `saved` buffer its forward wrote. Private to kernels/.
#pragma once

#include <cstddef>
#include <cstdint>

namespace sy::cpu {

// Sub-buffers start on 64-byte boundaries.
inline int64_t padded(int64_t floats) { return (floats + 15) / 16 * 16; }

// One level's forward activations, views into the caller's `saved` buffer.
struct DagLevelSaved {
  float *h, *ln_mean, *ln_rstd, *ln_out, *a, *pq, *agg, *w4;
};
struct DagSavedLayout {
  int64_t T, N, d, dg;
  size_t L;
  int64_t level_floats() const {
    return padded(N * d) + 2 * padded(N) + padded(N * d) + padded(N * dg) + padded(4 * N * dg) + padded(N * dg) +
           padded(4 * dg * dg);
  }
  // L == 0 keeps h⁰ alone (m = Σ_j h⁰_j).
  int64_t floats() const { return L == 0 ? padded(N * d) : static_cast<int64_t>(L) * level_floats() + padded(T * dg); }
  DagLevelSaved level(float* saved, size_t l) const {
    float* p = saved + static_cast<int64_t>(l) * level_floats();
    auto take = [&p](int64_t n) {
      float* q = p;
      p += padded(n);
      return q;
    };
    DagLevelSaved v{};
    v.h = take(N * d);
    v.ln_mean = take(N);
    v.ln_rstd = take(N);
    v.ln_out = take(N * d);
    v.a = take(N * dg);
    v.pq = take(4 * N * dg);
    v.agg = take(N * dg);
    v.w4 = take(4 * dg * dg);
    return v;
  }
  float* h(float* saved, size_t l) const { return L == 0 ? saved : level(saved, l).h; }
  float* agg_sum(float* saved) const { return saved + static_cast<int64_t>(L) * level_floats(); }
};

// Backward's temporaries, views into the caller's `scratch` buffer.
struct DagScratch {
  float *dh, *dagg, *dagg_token, *dpq, *da, *dln, *dw4;
  static int64_t floats(int64_t T, int64_t N, int64_t d, int64_t dg) {
    return 2 * padded(N * d) + 2 * padded(N * dg) + padded(T * dg) + padded(4 * N * dg) + padded(4 * dg * dg);
  }
  DagScratch(float* p, int64_t T, int64_t N, int64_t d, int64_t dg) {
    auto take = [&p](int64_t n) {
      float* q = p;
      p += padded(n);
      return q;
    };
    dh = take(N * d);
    dagg = take(N * dg);
    dagg_token = take(T * dg);
    dpq = take(4 * N * dg);
    da = take(N * dg);
    dln = take(N * d);
    dw4 = take(4 * dg * dg);
  }
};

}  // namespace sy::cpu
