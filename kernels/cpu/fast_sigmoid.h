// The expert FFN's sigmoid (the SiLU gate of SwiGLU), written once for the CPU kernels and the
// CUDA kernels. e^x by Cody-Waite range reduction and the Cephes degree-5 polynomial: within
// 2 ulp of expf over the range it keeps (tests/kernels/test_ops.cc), in plain arithmetic that
// GCC vectorizes. glibc's expf is one call per element and kept the SwiGLU loops scalar: they
// were 8% of the co-located training step's CPU time. Both backends round it alike: no FMA
// contraction on either (the CPU build targets x86-64-v2; nvcc runs with --fmad=false).
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define SY_HOST_DEVICE __host__ __device__
#else
#define SY_HOST_DEVICE
#endif

namespace sy::cpu {

SY_HOST_DEVICE inline float bits_to_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
#endif
}

SY_HOST_DEVICE inline uint32_t float_to_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
#endif
}

// e^x for x in [-87, 88] (clamped there: 2^n stays a normal float); NaN stays NaN.
SY_HOST_DEVICE inline float exp_poly(float x) {
  x = x > 88.0f ? 88.0f : x;
  x = x < -87.0f ? -87.0f : x;
  // x = n ln2 + r, |r| <= ln2/2; ln2 split in two so that n*ln2 is exact in its high part.
  float n = x * 1.44269504088896341f + 0.5f;
#if defined(__CUDA_ARCH__)
  n = floorf(n);
#else
  n = __builtin_floorf(n);
#endif
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  // 2^n from n's bits: n + 2^23 + 127 holds n + 127 in its low mantissa bits (n integral, small).
  const uint32_t biased = float_to_bits(n + 8388735.0f) - 0x4B000000u;
  return p * bits_to_float(biased << 23);
}

SY_HOST_DEVICE inline float fast_sigmoid(float x) { return 1.0f / (1.0f + exp_poly(-x)); }

}  // namespace sy::cpu
