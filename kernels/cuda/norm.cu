// RMSNorm and LayerNorm forward/backward, as cpu/dense.cc: one block per row for the row
// statistics and dx; one thread per column for the weight gradients (rows summed in order).
#include "cuda_ops.h"
#include "device.cuh"

namespace sy::cuda {
namespace {

__global__ void rmsnorm_forward_kernel(const float* x, int64_t d, const float* w, float* y, float* rstd) {
  const float* xr = x + blockIdx.x * d;
  float ss = 0.0f;
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) ss += xr[j] * xr[j];
  ss = block_sum(ss);
  const float rs = 1.0f / sqrtf(ss / static_cast<float>(d) + cpu::kRmsNormEps);
  if (threadIdx.x == 0) rstd[blockIdx.x] = rs;
  float* yr = y + blockIdx.x * d;
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) yr[j] = xr[j] * rs * w[j];
}

// dw_j += Σ_r dy_rj x_rj rstd_r
__global__ void rmsnorm_dw_kernel(const float* dy, const float* x, int64_t n, int64_t d, const float* rstd, float* dw) {
  SY_GRID_STRIDE(j, d) {
    float acc = dw[j];
    for (int64_t r = 0; r < n; ++r) acc += dy[r * d + j] * x[r * d + j] * rstd[r];
    dw[j] = acc;
  }
}

__global__ void rmsnorm_dx_kernel(const float* dy, const float* x, int64_t d, const float* w, const float* rstd,
                                  float* dx) {
  const int64_t off = blockIdx.x * d;
  const float rs = rstd[blockIdx.x];
  float dot = 0.0f;  // Σ dy_j w_j x_j
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) dot += dy[off + j] * w[j] * x[off + j];
  dot = block_sum(dot);
  const float c = rs * rs * rs * dot / static_cast<float>(d);
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) dx[off + j] += dy[off + j] * w[j] * rs - c * x[off + j];
}

__global__ void layernorm_forward_kernel(const float* x, int64_t d, const float* gamma, const float* beta, float* y,
                                         float* mean, float* rstd) {
  const float* xr = x + blockIdx.x * d;
  float mu = 0.0f;
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) mu += xr[j];
  mu = block_sum(mu) / static_cast<float>(d);
  float var = 0.0f;
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) var += (xr[j] - mu) * (xr[j] - mu);
  var = block_sum(var) / static_cast<float>(d);
  const float rs = 1.0f / sqrtf(var + cpu::kLayerNormEps);
  if (threadIdx.x == 0) {
    mean[blockIdx.x] = mu;
    rstd[blockIdx.x] = rs;
  }
  float* yr = y + blockIdx.x * d;
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) yr[j] = (xr[j] - mu) * rs * gamma[j] + beta[j];
}

// dγ_j += Σ_r dy_rj (x_rj − μ_r) rstd_r, dβ_j += Σ_r dy_rj (either may be null).
__global__ void layernorm_dparams_kernel(const float* dy, const float* x, int64_t n, int64_t d, const float* mean,
                                         const float* rstd, float* dgamma, float* dbeta) {
  SY_GRID_STRIDE(j, d) {
    float g = dgamma ? dgamma[j] : 0.0f, b = dbeta ? dbeta[j] : 0.0f;
    for (int64_t r = 0; r < n; ++r) {
      g += dy[r * d + j] * (x[r * d + j] - mean[r]) * rstd[r];
      b += dy[r * d + j];
    }
    if (dgamma) dgamma[j] = g;
    if (dbeta) dbeta[j] = b;
  }
}

// xhat = (x−μ) r; g = dy ⊙ γ; dx += r (g − mean(g) − xhat·mean(g ⊙ xhat)).
__global__ void layernorm_dx_kernel(const float* dy, const float* x, int64_t d, const float* gamma, const float* mean,
                                    const float* rstd, float* dx) {
  const int64_t off = blockIdx.x * d;
  const float mu = mean[blockIdx.x], rs = rstd[blockIdx.x];
  float sum_g = 0.0f, sum_gx = 0.0f;
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
    const float g = dy[off + j] * gamma[j];
    sum_g += g;
    sum_gx += g * (x[off + j] - mu) * rs;
  }
  sum_g = block_sum(sum_g);
  sum_gx = block_sum(sum_gx);
  const float inv_d = 1.0f / static_cast<float>(d);
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
    const float xhat = (x[off + j] - mu) * rs;
    dx[off + j] += rs * (dy[off + j] * gamma[j] - sum_g * inv_d - xhat * sum_gx * inv_d);
  }
}

// One block per row; rows beyond the grid limit are not expected (2³¹ − 1 rows).
unsigned row_blocks(int64_t n) { return static_cast<unsigned>(n); }

}  // namespace

void layernorm_forward(const Context& ctx, const float* x, int64_t n, int64_t d, const float* gamma, const float* beta,
                       float* y, float* mean, float* rstd) {
  if (n == 0) return;
  layernorm_forward_kernel<<<row_blocks(n), kThreads, 0, ctx.stream>>>(x, d, gamma, beta, y, mean, rstd);
  check_launch("layernorm_forward_kernel");
}

void layernorm_backward(const Context& ctx, const float* dy, const float* x, int64_t n, int64_t d, const float* gamma,
                        const float* mean, const float* rstd, float* dx, float* dgamma, float* dbeta) {
  if (n == 0 || d == 0) return;
  if (dgamma || dbeta) {
    layernorm_dparams_kernel<<<grid_for(d), kThreads, 0, ctx.stream>>>(dy, x, n, d, mean, rstd, dgamma, dbeta);
    check_launch("layernorm_dparams_kernel");
  }
  if (dx) {
    layernorm_dx_kernel<<<row_blocks(n), kThreads, 0, ctx.stream>>>(dy, x, d, gamma, mean, rstd, dx);
    check_launch("layernorm_dx_kernel");
  }
}

void exec(const Context& ctx, const RmsNormForwardArgs& a, void*) {
  if (a.n == 0) return;
  rmsnorm_forward_kernel<<<row_blocks(a.n), kThreads, 0, ctx.stream>>>(a.x, a.d, a.w, a.y, a.rstd);
  check_launch("rmsnorm_forward_kernel");
}

void exec(const Context& ctx, const RmsNormBackwardArgs& a, void*) {
  if (a.n == 0 || a.d == 0) return;
  if (a.dw) {
    rmsnorm_dw_kernel<<<grid_for(a.d), kThreads, 0, ctx.stream>>>(a.dy, a.x, a.n, a.d, a.rstd, a.dw);
    check_launch("rmsnorm_dw_kernel");
  }
  if (a.dx) {
    rmsnorm_dx_kernel<<<row_blocks(a.n), kThreads, 0, ctx.stream>>>(a.dy, a.x, a.d, a.w, a.rstd, a.dx);
    check_launch("rmsnorm_dx_kernel");
  }
}

void exec(const Context& ctx, const LayerNormForwardArgs& a, void*) {
  layernorm_forward(ctx, a.x, a.n, a.d, a.gamma, a.beta, a.y, a.mean, a.rstd);
}

void exec(const Context& ctx, const LayerNormBackwardArgs& a, void*) {
  layernorm_backward(ctx, a.dy, a.x, a.n, a.d, a.gamma, a.mean, a.rstd, a.dx, a.dgamma, a.dbeta);
}

}  // namespace sy::cuda
