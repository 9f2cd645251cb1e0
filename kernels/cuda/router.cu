// Router ops on the device, as cpu/router.cc: softmax forward/backward, the backward of the
// gates, the load-balance and z losses, and DA-MoE token importance from attention. Top-k
// selection, gates, capacity and allocation are host ops (ops.h) and are not here.
#include <cfloat>
#include <cmath>
#include <string>
#include <vector>

#include "cuda_ops.h"
#include "device.cuh"
#include "switchyard/core/error.h"

namespace sy::cuda {
namespace {

// ---------- softmax (one thread per row: e, the experts, is small) ----------

__global__ void softmax_forward_kernel(const float* z, int64_t n, int64_t e, float* p, float* lse) {
  SY_GRID_STRIDE(t, n) {
    const float* zr = z + t * e;
    float* pr = p + t * e;
    float mx = zr[0];
    for (int64_t i = 1; i < e; ++i) mx = fmaxf(mx, zr[i]);
    float sum = 0.0f;
    for (int64_t i = 0; i < e; ++i) {
      pr[i] = expf(zr[i] - mx);
      sum += pr[i];
    }
    const float inv = 1.0f / sum;
    for (int64_t i = 0; i < e; ++i) pr[i] *= inv;
    if (lse) lse[t] = mx + logf(sum);
  }
}

// dz += p ⊙ (dp − Σ p dp)
__global__ void softmax_backward_kernel(const float* dp, const float* p, int64_t n, int64_t e, float* dz) {
  SY_GRID_STRIDE(t, n) {
    const float* pr = p + t * e;
    const float* dpr = dp + t * e;
    float dot = 0.0f;
    for (int64_t i = 0; i < e; ++i) dot += pr[i] * dpr[i];
    float* dzr = dz + t * e;
    for (int64_t i = 0; i < e; ++i) dzr[i] += pr[i] * (dpr[i] - dot);
  }
}

// ---------- gates ----------

struct DeviceSelection {
  const int64_t* offsets;  // [tokens + 1]
  const int32_t* expert;   // [slots]
  const uint8_t* kept;     // [slots]
  const float* denom;      // [tokens]
};

// One thread per token: the token's dp row is its own.
__global__ void gates_backward_kernel(const float* p, DeviceSelection sel, int64_t tokens, int64_t e, bool normalize,
                                      const float* dgate, float* dp) {
  SY_GRID_STRIDE(t, tokens) {
    const float* pr = p + t * e;
    float* dpr = dp + t * e;
    const int64_t b = sel.offsets[t], end = sel.offsets[t + 1];
    if (!normalize) {
      for (int64_t j = b; j < end; ++j)
        if (sel.kept[j]) dpr[sel.expert[j]] += dgate[j];
      continue;
    }
    const float denom = sel.denom[t];
    float cross = 0.0f;  // Σ_kept dg_j p_j
    for (int64_t j = b; j < end; ++j) {
      if (!sel.kept[j]) continue;
      const int32_t i = sel.expert[j];
      dpr[i] += dgate[j] / denom;
      cross += dgate[j] * pr[i];
    }
    if (denom <= FLT_EPSILON) continue;  // clamped: the denominator is a constant
    const float ds = -cross / (denom * denom);
    for (int64_t j = b; j < end; ++j) dpr[sel.expert[j]] += ds;
  }
}

// ---------- load-balance loss α·E·Σ f_i P_i ----------

// Block i: f_i = (assignments to i) / slots, colsum_i = Σ_t p_ti, both in double.
__global__ void load_balance_stats_kernel(const float* p, int64_t n, int64_t e, const int32_t* expert, int64_t slots,
                                          double* f, double* colsum) {
  const int32_t i = static_cast<int32_t>(blockIdx.x);
  double count = 0.0, sum = 0.0;
  for (int64_t s = threadIdx.x; s < slots; s += blockDim.x) count += expert[s] == i ? 1.0 : 0.0;
  for (int64_t t = threadIdx.x; t < n; t += blockDim.x) sum += p[t * e + i];
  count = block_sum(count);
  sum = block_sum(sum);
  if (threadIdx.x == 0) {
    f[i] = slots > 0 ? count / static_cast<double>(slots) : count;
    colsum[i] = sum;
  }
}

__global__ void load_balance_loss_kernel(const double* f, const double* colsum, int64_t n, int64_t e, double alpha,
                                         double* loss) {
  double l = 0.0;
  for (int64_t i = 0; i < e; ++i) l += f[i] * colsum[i] / static_cast<double>(n);
  *loss = l * (alpha * static_cast<double>(e));
}

__global__ void load_balance_grad_kernel(const double* f, int64_t n, int64_t e, double alpha, float* dp) {
  SY_GRID_STRIDE(k, n * e) {
    dp[k] += static_cast<float>(alpha * static_cast<double>(e) * f[k % e] / static_cast<double>(n));
  }
}

// ---------- z-loss β·mean_t lse_t² ----------

__global__ void z_loss_kernel(const float* lse, int64_t n, double beta, double* loss) {
  double s = 0.0;
  for (int64_t t = threadIdx.x; t < n; t += blockDim.x) s += static_cast<double>(lse[t]) * lse[t];
  s = block_sum(s);
  if (threadIdx.x == 0) *loss = s * (beta / static_cast<double>(n));
}

__global__ void z_loss_grad_kernel(const float* p, const float* lse, int64_t n, int64_t e, double beta, float* dz) {
  SY_GRID_STRIDE(k, n * e) {
    const float c = static_cast<float>(beta * 2.0 * lse[k / e] / static_cast<double>(n));
    dz[k] += c * p[k];
  }
}

// Copies a device double to the host and waits for it.
void download_scalar(const Context& ctx, const double* device, double* host) {
  check_cuda(cudaMemcpyAsync(host, device, sizeof(double), cudaMemcpyDeviceToHost, ctx.stream),
             "cudaMemcpyAsync (loss download)");
  check_cuda(cudaStreamSynchronize(ctx.stream), "cudaStreamSynchronize (loss)");
}

// ---------- importance from attention ----------

// One thread per attention row (b, h, q): marks the lowest invalid row (an entry that is not
// a finite non-negative number, or a sum off 1 by more than 1e-3) in *bad.
__global__ void attention_rows_check_kernel(const float* attention, int64_t rows, int64_t l, unsigned long long* bad) {
  SY_GRID_STRIDE(row, rows) {
    const float* a = attention + row * l;
    double sum = 0.0;
    bool ok = true;
    for (int64_t t = 0; t < l; ++t) {
      ok = ok && isfinite(a[t]) && a[t] >= 0.0f;
      sum += a[t];
    }
    if (!ok || fabs(sum - 1.0) > 1e-3) atomicMin(bad, static_cast<unsigned long long>(row));
  }
}

// acc[b, t] = Σ_h Σ_q A[b, h, q, t], in the CPU's order (h, then q).
__global__ void attention_column_sums_kernel(const float* attention, int64_t b, int64_t h, int64_t l, double* acc) {
  SY_GRID_STRIDE(k, b * l) {
    const int64_t bi = k / l, t = k % l;
    double s = 0.0;
    for (int64_t hi = 0; hi < h; ++hi)
      for (int64_t q = 0; q < l; ++q) s += attention[((bi * h + hi) * l + q) * l + t];
    acc[k] = s;
  }
}

// One thread per sequence: /H, the causal correction and its rescale to mean 1.
__global__ void importance_kernel(double* acc, int64_t b, int64_t h, int64_t l, bool causal, float* s) {
  SY_GRID_STRIDE(bi, b) {
    double* a = acc + bi * l;
    double mean = 0.0;
    for (int64_t t = 0; t < l; ++t) {
      double v = a[t] / static_cast<double>(h);
      if (causal) v /= static_cast<double>(l - t);
      a[t] = v;
      mean += v;
    }
    mean /= static_cast<double>(l);
    for (int64_t t = 0; t < l; ++t) s[bi * l + t] = static_cast<float>(causal && mean > 0 ? a[t] / mean : a[t]);
  }
}

// The CPU's message for the invalid attention row `row` (copied to the host).
[[noreturn]] void throw_bad_attention_row(const Context& ctx, const float* attention, int64_t row, int64_t h,
                                          int64_t l) {
  std::vector<float> a(static_cast<size_t>(l));
  check_cuda(
      cudaMemcpyAsync(a.data(), attention + row * l, a.size() * sizeof(float), cudaMemcpyDeviceToHost, ctx.stream),
      "cudaMemcpyAsync (attention row)");
  check_cuda(cudaStreamSynchronize(ctx.stream), "cudaStreamSynchronize (attention row)");
  const int64_t q = row % l, hi = row / l % h, bi = row / l / h;
  const std::string at = std::to_string(bi) + "," + std::to_string(hi) + "," + std::to_string(q);
  double sum = 0.0;
  for (int64_t t = 0; t < l; ++t) {
    const float v = a[static_cast<size_t>(t)];
    if (!std::isfinite(v) || v < 0.0f)
      throw_input_error("attention[" + at + "," + std::to_string(t) + "] is not a probability");
    sum += v;
  }
  throw_input_error("attention row [" + at + ",:] sums to " + std::to_string(sum) + ", not 1 (tolerance 1e-3)");
}

struct ImportanceWorkspace {
  double* acc;
  unsigned long long* bad;
};
ImportanceWorkspace carve(Carver& ws, const ImportanceArgs& a) {
  return {ws.take<double>(a.b * a.l), ws.take<unsigned long long>(1)};
}

struct LoadBalanceWorkspace {
  const int32_t* expert;
  double *f, *colsum, *loss;
};
LoadBalanceWorkspace carve(const Context& ctx, Carver& ws, const LoadBalanceLossArgs& a) {
  const int32_t* expert = upload(ctx, ws, a.selection->expert);
  double* f = ws.take<double>(a.selection->experts);
  double* colsum = ws.take<double>(a.selection->experts);
  return {expert, f, colsum, ws.take<double>(1)};
}

DeviceSelection upload_selection(const Context& ctx, Carver& ws, const cpu::Selection& sel) {
  const int64_t* offsets = upload(ctx, ws, sel.offsets);
  const int32_t* expert = upload(ctx, ws, sel.expert);
  const uint8_t* kept = upload(ctx, ws, sel.kept);
  return {offsets, expert, kept, upload(ctx, ws, sel.denom)};
}

}  // namespace

void exec(const Context& ctx, const SoftmaxForwardArgs& a, void*) {
  if (a.n == 0) return;
  softmax_forward_kernel<<<grid_for(a.n), kThreads, 0, ctx.stream>>>(a.z, a.n, a.e, a.p, a.lse);
  check_launch("softmax_forward_kernel");
}

void exec(const Context& ctx, const SoftmaxBackwardArgs& a, void*) {
  if (a.n == 0) return;
  softmax_backward_kernel<<<grid_for(a.n), kThreads, 0, ctx.stream>>>(a.dp, a.p, a.n, a.e, a.dz);
  check_launch("softmax_backward_kernel");
}

size_t workspace(const GatesBackwardArgs& a) {
  Carver ws(nullptr);
  upload_selection({}, ws, *a.selection);
  return ws.bytes();
}

void exec(const Context& ctx, const GatesBackwardArgs& a, void* workspace) {
  const cpu::Selection& sel = *a.selection;
  if (sel.tokens == 0) return;
  Carver ws(workspace);
  const DeviceSelection dsel = upload_selection(ctx, ws, sel);
  gates_backward_kernel<<<grid_for(sel.tokens), kThreads, 0, ctx.stream>>>(a.p, dsel, sel.tokens, sel.experts,
                                                                           a.normalize, a.dgate, a.dp);
  check_launch("gates_backward_kernel");
}

size_t workspace(const LoadBalanceLossArgs& a) {
  Carver ws(nullptr);
  carve({}, ws, a);
  return ws.bytes();
}

void exec(const Context& ctx, const LoadBalanceLossArgs& a, void* workspace) {
  const cpu::Selection& sel = *a.selection;
  if (a.alpha == 0.0 || sel.tokens == 0 || sel.experts == 0) {
    if (a.loss) *a.loss = 0.0;
    return;
  }
  Carver carver(workspace);
  const LoadBalanceWorkspace ws = carve(ctx, carver, a);
  const int64_t n = sel.tokens, e = sel.experts;
  load_balance_stats_kernel<<<static_cast<unsigned>(e), kThreads, 0, ctx.stream>>>(a.p, n, e, ws.expert, sel.slots(),
                                                                                   ws.f, ws.colsum);
  check_launch("load_balance_stats_kernel");
  if (a.dp) {
    load_balance_grad_kernel<<<grid_for(n * e), kThreads, 0, ctx.stream>>>(ws.f, n, e, a.alpha, a.dp);
    check_launch("load_balance_grad_kernel");
  }
  if (!a.loss) return;
  load_balance_loss_kernel<<<1, 1, 0, ctx.stream>>>(ws.f, ws.colsum, n, e, a.alpha, ws.loss);
  check_launch("load_balance_loss_kernel");
  download_scalar(ctx, ws.loss, a.loss);
}

size_t workspace(const ZLossArgs&) { return sizeof(double); }

void exec(const Context& ctx, const ZLossArgs& a, void* workspace) {
  if (a.beta == 0.0 || a.n == 0) {
    if (a.loss) *a.loss = 0.0;
    return;
  }
  if (a.dz) {
    z_loss_grad_kernel<<<grid_for(a.n * a.e), kThreads, 0, ctx.stream>>>(a.p, a.lse, a.n, a.e, a.beta, a.dz);
    check_launch("z_loss_grad_kernel");
  }
  if (!a.loss) return;
  double* loss = Carver(workspace).take<double>(1);
  z_loss_kernel<<<1, kThreads, 0, ctx.stream>>>(a.lse, a.n, a.beta, loss);
  check_launch("z_loss_kernel");
  download_scalar(ctx, loss, a.loss);
}

size_t workspace(const ImportanceArgs& a) {
  Carver ws(nullptr);
  carve(ws, a);
  return ws.bytes();
}

void exec(const Context& ctx, const ImportanceArgs& a, void* workspace) {
  if (a.b == 0 || a.l == 0) return;
  Carver carver(workspace);
  const ImportanceWorkspace ws = carve(carver, a);
  const int64_t rows = a.b * a.h * a.l;
  check_cuda(cudaMemsetAsync(ws.bad, 0xff, sizeof(unsigned long long), ctx.stream), "cudaMemsetAsync");
  if (rows > 0) {
    attention_rows_check_kernel<<<grid_for(rows), kThreads, 0, ctx.stream>>>(a.attention, rows, a.l, ws.bad);
    check_launch("attention_rows_check_kernel");
  }
  unsigned long long bad = 0;
  check_cuda(cudaMemcpyAsync(&bad, ws.bad, sizeof(bad), cudaMemcpyDeviceToHost, ctx.stream),
             "cudaMemcpyAsync (attention check)");
  check_cuda(cudaStreamSynchronize(ctx.stream), "cudaStreamSynchronize (attention check)");
  if (bad != ~0ull) throw_bad_attention_row(ctx, a.attention, static_cast<int64_t>(bad), a.h, a.l);
  attention_column_sums_kernel<<<grid_for(a.b * a.l), kThreads, 0, ctx.stream>>>(a.attention, a.b, a.h, a.l, ws.acc);
  check_launch("attention_column_sums_kernel");
  importance_kernel<<<grid_for(a.b), kThreads, 0, ctx.stream>>>(ws.acc, a.b, a.h, a.l, a.causal_correction,
                                                                a.importance);
  check_launch("importance_kernel");
}

}  // namespace sy::cuda
