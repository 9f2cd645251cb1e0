// SwiGLU's element-wise halves, vectorized: the sigmoid is fast_sigmoid (plain arithmetic), and
// this file alone is built with -fno-trapping-math -ffinite-math-only -fno-signed-zeros, which
// turn its clamps into minps/maxps (with the default flags GCC emits blends, which ran 4x slower
// than the plain loop on the AMD EPYC here). A NaN in hg still gives NaN: hg multiplies every
// result.
#include "swiglu.h"

#include "fast_sigmoid.h"
#include "parallel.h"

namespace sy::cpu {

namespace {

SY_AVX2_CLONES void forward_range(const float* __restrict hg, const float* __restrict hu, float* __restrict act,
                                  int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; ++i) act[i] = hg[i] * fast_sigmoid(hg[i]) * hu[i];
}

SY_AVX2_CLONES void backward_range(const float* __restrict hg, const float* __restrict hu, float* __restrict dact,
                                   float* __restrict dg, int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; ++i) {
    const float s = fast_sigmoid(hg[i]);
    const float silu = hg[i] * s;
    dg[i] = dact[i] * hu[i] * s * (1.0f + hg[i] * (1.0f - s));
    dact[i] = dact[i] * silu;
  }
}

}  // namespace

void swiglu_forward(const float* hg, const float* hu, float* act, int64_t n) {
  for_ranges(n, [&](int64_t begin, int64_t end) { forward_range(hg, hu, act, begin, end); });
}

void swiglu_backward(const float* hg, const float* hu, float* dact, float* dg, int64_t n) {
  for_ranges(n, [&](int64_t begin, int64_t end) { backward_range(hg, hu, dact, dg, begin, end); });
}

}  // namespace sy::cpu
