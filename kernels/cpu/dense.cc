// GEMM wrappers (OpenBLAS) and normalisation layers.
#include <cblas.h>

#include <cmath>
#include <cstring>

#include "switchyard/kernels/cpu_ops.h"
#include "parallel.h"

namespace sy::cpu {
namespace {

// Threads for one GEMM: small products run on the calling thread (waking the pool costs
// more than it saves there: the d=64 toy layer ran 1.3x faster), large ones on all threads.
// With OpenBLAS's OpenMP build this sets the OpenMP thread count, so the element-wise loops
// that follow a small GEMM also run on one thread: small work stays small.
void select_blas_threads(int64_t m, int64_t n, int64_t k) {
  static const int max_threads = openblas_get_num_threads();
  static int current = max_threads;
  const double flops = 2.0 * static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(k);
  const int want = flops < 3.2e7 ? 1 : max_threads;
  if (want != current) {
    openblas_set_num_threads(want);
    current = want;
  }
}

}  // namespace

void linear_forward(const float* x, int64_t n, int64_t in, const float* w, int64_t out, float* y, bool accumulate) {
  if (n == 0 || out == 0) return;
  if (in == 0) {
    if (!accumulate) std::memset(y, 0, sizeof(float) * static_cast<size_t>(n * out));
    return;
  }
  select_blas_threads(n, out, in);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(n), static_cast<int>(out),
              static_cast<int>(in), 1.0f, x, static_cast<int>(in), w, static_cast<int>(in), accumulate ? 1.0f : 0.0f,
              y, static_cast<int>(out));
}

void linear_backward_input(const float* dy, int64_t n, int64_t out, const float* w, int64_t in, float* dx,
                           bool accumulate) {
  if (n == 0 || in == 0) return;
  if (out == 0) {
    if (!accumulate) std::memset(dx, 0, sizeof(float) * static_cast<size_t>(n * in));
    return;
  }
  select_blas_threads(n, in, out);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(n), static_cast<int>(in),
              static_cast<int>(out), 1.0f, dy, static_cast<int>(out), w, static_cast<int>(in), accumulate ? 1.0f : 0.0f,
              dx, static_cast<int>(in));
}

void linear_backward_weight(const float* dy, int64_t n, int64_t out, const float* x, int64_t in, float* dw) {
  if (n == 0 || in == 0 || out == 0) return;
  select_blas_threads(out, in, n);
  cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, static_cast<int>(out), static_cast<int>(in),
              static_cast<int>(n), 1.0f, dy, static_cast<int>(out), x, static_cast<int>(in), 1.0f, dw,
              static_cast<int>(in));
}

void add_inplace(const float* x, int64_t n, float* y) {
#pragma omp parallel for schedule(static) if(worth_threads(n))
  for (int64_t i = 0; i < n; ++i) y[i] += x[i];
}

void rmsnorm_forward(const float* x, int64_t n, int64_t d, const float* w, float* y, float* rstd) {
#pragma omp parallel for schedule(static) if(worth_threads(n * d))
  for (int64_t r = 0; r < n; ++r) {
    const float* xr = x + r * d;
    float ss = 0.0f;
    for (int64_t j = 0; j < d; ++j) ss += xr[j] * xr[j];
    const float rs = 1.0f / std::sqrt(ss / static_cast<float>(d) + kRmsNormEps);
    rstd[r] = rs;
    float* yr = y + r * d;
    for (int64_t j = 0; j < d; ++j) yr[j] = xr[j] * rs * w[j];
  }
}

void rmsnorm_backward(const float* dy, const float* x, int64_t n, int64_t d, const float* w, const float* rstd,
                      float* dx, float* dw) {
  // y_j = x_j r w_j, r = (mean(x²)+eps)^(-1/2); ∂r/∂x_k = −r³ x_k / d.
  if (dw) {
    for (int64_t r = 0; r < n; ++r) {
      const float* xr = x + r * d;
      const float* dyr = dy + r * d;
      const float rs = rstd[r];
      for (int64_t j = 0; j < d; ++j) dw[j] += dyr[j] * xr[j] * rs;
    }
  }
  if (!dx) return;
#pragma omp parallel for schedule(static) if(worth_threads(n * d))
  for (int64_t r = 0; r < n; ++r) {
    const float* xr = x + r * d;
    const float* dyr = dy + r * d;
    const float rs = rstd[r];
    float dot = 0.0f;  // Σ dy_j w_j x_j
    for (int64_t j = 0; j < d; ++j) dot += dyr[j] * w[j] * xr[j];
    const float c = rs * rs * rs * dot / static_cast<float>(d);
    float* dxr = dx + r * d;
    for (int64_t j = 0; j < d; ++j) dxr[j] += dyr[j] * w[j] * rs - c * xr[j];
  }
}

void layernorm_forward(const float* x, int64_t n, int64_t d, const float* gamma, const float* beta, float* y,
                       float* mean, float* rstd) {
#pragma omp parallel for schedule(static) if(worth_threads(n * d))
  for (int64_t r = 0; r < n; ++r) {
    const float* xr = x + r * d;
    float mu = 0.0f;
    for (int64_t j = 0; j < d; ++j) mu += xr[j];
    mu /= static_cast<float>(d);
    float var = 0.0f;
    for (int64_t j = 0; j < d; ++j) {
      const float c = xr[j] - mu;
      var += c * c;
    }
    var /= static_cast<float>(d);
    const float rs = 1.0f / std::sqrt(var + kLayerNormEps);
    mean[r] = mu;
    rstd[r] = rs;
    float* yr = y + r * d;
    for (int64_t j = 0; j < d; ++j) yr[j] = (xr[j] - mu) * rs * gamma[j] + beta[j];
  }
}

void layernorm_backward(const float* dy, const float* x, int64_t n, int64_t d, const float* gamma,
                        const float* mean, const float* rstd, float* dx, float* dgamma, float* dbeta) {
  if (dgamma || dbeta) {
    for (int64_t r = 0; r < n; ++r) {
      const float* xr = x + r * d;
      const float* dyr = dy + r * d;
      for (int64_t j = 0; j < d; ++j) {
        if (dgamma) dgamma[j] += dyr[j] * (xr[j] - mean[r]) * rstd[r];
        if (dbeta) dbeta[j] += dyr[j];
      }
    }
  }
  if (!dx) return;
#pragma omp parallel for schedule(static) if(worth_threads(n * d))
  for (int64_t r = 0; r < n; ++r) {
    const float* xr = x + r * d;
    const float* dyr = dy + r * d;
    const float mu = mean[r], rs = rstd[r];
    // xhat = (x−μ) r; g = dy ⊙ γ; dx = r (g − mean(g) − xhat·mean(g ⊙ xhat)).
    float sum_g = 0.0f, sum_gx = 0.0f;
    for (int64_t j = 0; j < d; ++j) {
      const float g = dyr[j] * gamma[j];
      sum_g += g;
      sum_gx += g * (xr[j] - mu) * rs;
    }
    const float inv_d = 1.0f / static_cast<float>(d);
    float* dxr = dx + r * d;
    for (int64_t j = 0; j < d; ++j) {
      const float xhat = (xr[j] - mu) * rs;
      dxr[j] += rs * (dyr[j] * gamma[j] - sum_g * inv_d - xhat * sum_gx * inv_d);
    }
  }
}

const char* blas_core_name() { return openblas_get_corename(); }

}  // namespace sy::cpu
