// SwiGLU's element-wise halves. They live in swiglu.cc, alone, because only they are built with
// the flags that let GCC vectorize their sigmoid (kernels/CMakeLists.txt).
#pragma once

#include <cstdint>

namespace sy::cpu {

// act = silu(hg) ⊙ hu over n floats.
void swiglu_forward(const float* hg, const float* hu, float* act, int64_t n);
// From dact = ∂L/∂act: dg = ∂L/∂hg, and dact becomes ∂L/∂hu in place.
void swiglu_backward(const float* hg, const float* hu, float* dact, float* dg, int64_t n);

}  // namespace sy::cpu
