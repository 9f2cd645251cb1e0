// GPU benchmarks of issue 15 (built when CUDA is compiled in), each against a measured limit:
//
//   bench_gpu ffn       the grouped expert FFN, forward + backward, on the CUDA backend: E experts
//                       with uneven row counts, one ffn_forward and one ffn_backward op per expert
//                       (swiglu, FP32 with TF32 off), against a dense cuBLAS SGEMM chain of the
//                       same FLOPs: the same 9 products (3 forward, 6 backward with dx) on all rows
//                       as one matrix, same pedantic FP32 math, measured in the same run.
//                       Prints gpu_ffn_vs_cublas = dense ms / grouped ms (target >= 0.7).
//   bench_gpu exchange  the NCCL transport's exchange_rows (2 ranks, one GPU each, one thread
//                       each) against raw grouped ncclSend/ncclRecv of the same bytes on two
//                       communicators of ncclCommInitAll. Needs 2 GPUs: NCCL puts every rank of
//                       a communicator on its own device, so with one GPU it prints "not measured".
//   bench_gpu layer     one top-k MoE layer forward through the CUDA backend's ops (router linear,
//                       softmax, [top-k, gates and the dispatch layout on the host], gather, one
//                       FFN per expert, weighted sum): what bench/bench_gpu_torch.py times against
//                       PyTorch eager. Prints gpu_layer_ms.
//   bench_gpu           ffn, then exchange.
//
// Timing: every timed repetition starts and ends with the device idle (the backend's stream is
// private to it, so its work is bracketed by synchronize(); the cuBLAS side by the same
// synchronisation on its own stream), and is measured with cudaEvents recorded on an idle
// stream around it: the event span is the wall time of the repetition on the GPU clock. The
// median of --reps after --warmup untimed repetitions. Without a usable CUDA device the program
// prints "no CUDA device: skipped", its headline names as "not measured", and exits 0.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <barrier>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "switchyard/kernels/backend.h"
#include "switchyard/kernels/cpu_ops.h"
#include "switchyard/kernels/ops.h"
#include "switchyard/transport/nccl.h"

#ifdef SY_BENCH_HAVE_NCCL
#include <nccl.h>
#endif

namespace {

using sy::Activation;

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
}
void check(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS) throw std::runtime_error(std::string(what) + ": " + cublasGetStatusString(s));
}

struct Options {
  std::string mode = "all";
  int64_t d = 1024, f = 2816, experts = 16, rows = 16384;  // ffn: rows = T·k
  int64_t tokens = 4096, k = 2;                              // layer
  int reps = 10, warmup = 3;
  double skew = 0.6;  // ffn: expert sizes ∝ exp(skew · N(0,1))
  int64_t exchange_rows = 8192;
  uint64_t seed = 1;
};

[[noreturn]] void usage(const std::string& why) {
  std::fprintf(stderr,
               "bench_gpu: %s\nusage: bench_gpu [ffn|exchange|layer|all] [--d N] [--f N] [--experts E] [--rows R]\n"
               "                 [--tokens T] [--k K] [--reps N] [--warmup N] [--skew S] [--exchange-rows R] [--seed S]\n",
               why.c_str());
  std::exit(2);
}

Options parse(int argc, char** argv) {
  Options o;
  int i = 1;
  if (i < argc && argv[i][0] != '-') o.mode = argv[i++];
  if (o.mode != "all" && o.mode != "ffn" && o.mode != "exchange" && o.mode != "layer") usage("unknown mode " + o.mode);
  for (; i < argc; ++i) {
    const std::string a = argv[i];
    if (i + 1 >= argc) usage(a + " needs a value");
    const char* v = argv[++i];
    try {
      if (a == "--d") o.d = std::stoll(v);
      else if (a == "--f") o.f = std::stoll(v);
      else if (a == "--experts") o.experts = std::stoll(v);
      else if (a == "--rows") o.rows = std::stoll(v);
      else if (a == "--tokens") o.tokens = std::stoll(v);
      else if (a == "--k") o.k = std::stoll(v);
      else if (a == "--reps") o.reps = std::stoi(v);
      else if (a == "--warmup") o.warmup = std::stoi(v);
      else if (a == "--skew") o.skew = std::stod(v);
      else if (a == "--exchange-rows") o.exchange_rows = std::stoll(v);
      else if (a == "--seed") o.seed = std::stoull(v);
      else usage("unknown option " + a);
    } catch (const std::invalid_argument&) {
      usage("bad value for " + a + ": " + v);
    }
  }
  if (o.d <= 0 || o.f <= 0 || o.experts <= 0 || o.rows <= 0 || o.tokens <= 0 || o.k <= 0 || o.k > o.experts ||
      o.reps <= 0 || o.warmup < 0 || o.exchange_rows <= 0)
    usage("sizes must be positive (and k <= experts)");
  return o;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Median ms of `body` (which must leave the device idle when it returns) over reps, after warmup.
class EventTimer {
 public:
  EventTimer() {
    check(cudaStreamCreateWithFlags(&idle_, cudaStreamNonBlocking), "cudaStreamCreate");
    check(cudaEventCreate(&start_), "cudaEventCreate");
    check(cudaEventCreate(&stop_), "cudaEventCreate");
  }
  ~EventTimer() {
    cudaEventDestroy(start_);
    cudaEventDestroy(stop_);
    cudaStreamDestroy(idle_);
  }
  EventTimer(const EventTimer&) = delete;
  EventTimer& operator=(const EventTimer&) = delete;

  double median_ms(int warmup, int reps, const std::function<void()>& body) {
    for (int i = 0; i < warmup; ++i) body();
    std::vector<double> ms;
    for (int i = 0; i < reps; ++i) {
      check(cudaEventRecord(start_, idle_), "cudaEventRecord");
      body();
      check(cudaEventRecord(stop_, idle_), "cudaEventRecord");
      check(cudaEventSynchronize(stop_), "cudaEventSynchronize");
      float t = 0;
      check(cudaEventElapsedTime(&t, start_, stop_), "cudaEventElapsedTime");
      ms.push_back(t);
    }
    return median(ms);
  }

 private:
  cudaStream_t idle_ = nullptr;
  cudaEvent_t start_ = nullptr, stop_ = nullptr;
};

// Device buffers of one backend, released at scope end.
class DeviceFloats {
 public:
  DeviceFloats(sy::Backend& b, int64_t n, std::mt19937_64* rng = nullptr, float scale = 0.05f)
      : b_(&b), n_(n), p_(static_cast<float*>(b.allocate(static_cast<size_t>(std::max<int64_t>(n, 1)) * 4))) {
    std::vector<float> h(static_cast<size_t>(n), 0.0f);
    if (rng) {
      std::uniform_real_distribution<float> u(-scale, scale);
      for (float& x : h) x = u(*rng);
    }
    b.copy_from_host(p_, h.data(), h.size() * 4);
  }
  ~DeviceFloats() { b_->release(p_); }
  DeviceFloats(const DeviceFloats&) = delete;
  DeviceFloats& operator=(const DeviceFloats&) = delete;
  float* get() const { return p_; }
  int64_t size() const { return n_; }

 private:
  sy::Backend* b_;
  int64_t n_;
  float* p_;
};

sy::Backend* find_cuda_backend() {
  for (sy::Backend* b : sy::backends())
    if (b->name() == "cuda") return b;
  return nullptr;
}

void print_device() {
  int dev = 0;
  cudaDeviceProp prop{};
  if (cudaGetDevice(&dev) == cudaSuccess && cudaGetDeviceProperties(&prop, dev) == cudaSuccess)
    std::printf("gpu: %s (compute capability %d.%d, %d SMs, %.1f GiB)\n", prop.name, prop.major, prop.minor,
                prop.multiProcessorCount, static_cast<double>(prop.totalGlobalMem) / (1 << 30));
}

// Uneven expert sizes summing to `rows`: ∝ exp(skew · N(0,1)), the remainder to the largest.
std::vector<int64_t> uneven_rows(int64_t rows, int64_t experts, double skew, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> n01;
  std::vector<double> w(static_cast<size_t>(experts));
  double sum = 0;
  for (double& x : w) sum += (x = std::exp(skew * n01(rng)));
  std::vector<int64_t> out(static_cast<size_t>(experts));
  int64_t used = 0;
  for (size_t e = 0; e < out.size(); ++e) used += (out[e] = static_cast<int64_t>(std::floor(rows * w[e] / sum)));
  out[static_cast<size_t>(std::max_element(w.begin(), w.end()) - w.begin())] += rows - used;
  return out;
}

// ---------------------------------------------------------------------------------------------
// ffn: grouped per-expert FFN fwd+bwd (CUDA backend) vs the dense SGEMM chain (cuBLAS)

// Column-major C = op(A) op(B) (+ C), as kernels/cuda/dense.cu calls it.
void sgemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int64_t m, int64_t n, int64_t k,
           const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  const float one = 1.0f;
  check(cublasSgemm(h, ta, tb, static_cast<int>(m), static_cast<int>(n), static_cast<int>(k), &one, a,
                    static_cast<int>(lda), b, static_cast<int>(ldb), &beta, c, static_cast<int>(ldc)),
        "cublasSgemm");
}

int run_ffn(sy::Backend& cuda, const Options& o, EventTimer& timer) {
  const int64_t d = o.d, f = o.f, E = o.experts, R = o.rows;
  const std::vector<int64_t> rows = uneven_rows(R, E, o.skew, o.seed);
  std::vector<int64_t> first(static_cast<size_t>(E) + 1, 0);
  for (int64_t e = 0; e < E; ++e) first[static_cast<size_t>(e) + 1] = first[static_cast<size_t>(e)] + rows[static_cast<size_t>(e)];
  const auto [mn, mx] = std::minmax_element(rows.begin(), rows.end());
  const double gflop = 18.0 * static_cast<double>(R) * static_cast<double>(d) * static_cast<double>(f) / 1e9;
  std::printf("ffn: %lld experts, %lld rows in all (per expert %lld..%lld, skew %.2f), d=%lld f=%lld swiglu, FP32 "
              "(TF32 off), forward + backward with dx: %.1f GFLOP per step (9 products of 2·rows·d·f)\n",
              static_cast<long long>(E), static_cast<long long>(R), static_cast<long long>(*mn),
              static_cast<long long>(*mx), o.skew, static_cast<long long>(d), static_cast<long long>(f), gflop);

  std::mt19937_64 rng(o.seed + 1);
  const int64_t wsize = f * d;
  DeviceFloats wg(cuda, E * wsize, &rng), wu(cuda, E * wsize, &rng), wd(cuda, E * wsize, &rng);
  DeviceFloats gg(cuda, E * wsize), gu(cuda, E * wsize), gd(cuda, E * wsize);
  DeviceFloats x(cuda, R * d, &rng, 1.0f), dout(cuda, R * d, &rng, 1.0f), out(cuda, R * d), dx(cuda, R * d);
  DeviceFloats saved(cuda, sy::cpu::ffn_saved_floats(R, f, Activation::swiglu));

  sy::OpRunner runner(cuda);
  auto grouped_step = [&] {
    for (int64_t e = 0; e < E; ++e) {
      const int64_t r0 = first[static_cast<size_t>(e)], n = rows[static_cast<size_t>(e)];
      sy::FfnForwardArgs a;
      a.x = x.get() + r0 * d;
      a.rows = n, a.d = d, a.f = f, a.activation = Activation::swiglu;
      a.w = {wg.get() + e * wsize, wu.get() + e * wsize, wd.get() + e * wsize};
      a.out = out.get() + r0 * d;
      a.saved = saved.get() + sy::cpu::ffn_saved_floats(r0, f, Activation::swiglu);
      runner.run(a);
    }
    for (int64_t e = 0; e < E; ++e) {
      const int64_t r0 = first[static_cast<size_t>(e)], n = rows[static_cast<size_t>(e)];
      sy::FfnBackwardArgs a;
      a.dout = dout.get() + r0 * d;
      a.x = x.get() + r0 * d;
      a.rows = n, a.d = d, a.f = f, a.activation = Activation::swiglu;
      a.w = {wg.get() + e * wsize, wu.get() + e * wsize, wd.get() + e * wsize};
      a.saved = saved.get() + sy::cpu::ffn_saved_floats(r0, f, Activation::swiglu);
      a.dx = dx.get() + r0 * d;
      a.grads = {gg.get() + e * wsize, gu.get() + e * wsize, gd.get() + e * wsize};
      runner.run(a);
    }
    cuda.synchronize();
  };
  const double grouped_ms = timer.median_ms(o.warmup, o.reps, grouped_step);

  // The dense chain: the same 9 products on all R rows as one matrix, on the backend's buffers
  // (one expert's weights; h_up, act, h_gate = the saved buffer; ∂act, ∂h_gate reuse two more).
  cudaStream_t stream = nullptr;
  cublasHandle_t blas = nullptr;
  check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
  check(cublasCreate(&blas), "cublasCreate");
  check(cublasSetStream(blas, stream), "cublasSetStream");
  check(cublasSetMathMode(blas, CUBLAS_PEDANTIC_MATH), "cublasSetMathMode");
  DeviceFloats dact(cuda, R * f), dhg(cuda, R * f);
  float* hu = saved.get();
  float* act = hu + R * f;
  float* hg = act + R * f;
  const auto N = CUBLAS_OP_N, T = CUBLAS_OP_T;
  auto dense_step = [&] {
    // forward: h_up = x Wuᵀ, h_gate = x Wgᵀ, out = act Wdᵀ
    sgemm(blas, T, N, f, R, d, wu.get(), d, x.get(), d, 0.0f, hu, f);
    sgemm(blas, T, N, f, R, d, wg.get(), d, x.get(), d, 0.0f, hg, f);
    sgemm(blas, T, N, d, R, f, wd.get(), f, act, f, 0.0f, out.get(), d);
    // backward: dWd += doutᵀ act, ∂act = dout Wd, dWg += ∂hgᵀ x, dWu += ∂actᵀ x, dx += ∂hg Wg + ∂act Wu
    sgemm(blas, N, T, f, d, R, act, f, dout.get(), d, 1.0f, gd.get(), f);
    sgemm(blas, N, N, f, R, d, wd.get(), f, dout.get(), d, 0.0f, dact.get(), f);
    sgemm(blas, N, T, d, f, R, x.get(), d, dhg.get(), f, 1.0f, gg.get(), d);
    sgemm(blas, N, T, d, f, R, x.get(), d, dact.get(), f, 1.0f, gu.get(), d);
    sgemm(blas, N, N, d, R, f, wg.get(), d, dhg.get(), f, 1.0f, dx.get(), d);
    sgemm(blas, N, N, d, R, f, wu.get(), d, dact.get(), f, 1.0f, dx.get(), d);
    check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  };
  const double dense_ms = timer.median_ms(o.warmup, o.reps, dense_step);
  cublasDestroy(blas);
  cudaStreamDestroy(stream);

  const double ratio = dense_ms / grouped_ms;
  std::printf("ffn grouped (cuda backend, %lld x ffn_forward + ffn_backward ops, element-wise kernels included): "
              "%.3f ms, %.1f TFLOP/s (median of %d after %d warm-up)\n",
              static_cast<long long>(E), grouped_ms, gflop / grouped_ms, o.reps, o.warmup);
  std::printf("ffn dense (cuBLAS SGEMM chain, 9 products on %lld rows as one matrix, GEMMs only): %.3f ms, %.1f "
              "TFLOP/s\n",
              static_cast<long long>(R), dense_ms, gflop / dense_ms);
  std::printf("gpu_ffn_grouped_ms: %.3f\ngpu_ffn_grouped_tflops: %.2f\ngpu_ffn_dense_ms: %.3f\ngpu_ffn_dense_tflops: "
              "%.2f\ngpu_ffn_vs_cublas: %.3f\n",
              grouped_ms, gflop / grouped_ms, dense_ms, gflop / dense_ms, ratio);
  std::printf("ffn: gpu_ffn_vs_cublas = dense ms / grouped ms; target >= 0.7: %s\n", ratio >= 0.7 ? "met" : "NOT met");
  return 0;
}

// ---------------------------------------------------------------------------------------------
// exchange: the NCCL transport's exchange_rows vs raw ncclSend/ncclRecv, 2 ranks on 2 GPUs

int run_exchange(const Options& o) {
  namespace tr = sy::transport;
  const int gpus = tr::cuda_device_count();
  if (!tr::nccl_transport_compiled()) {
    std::printf("gpu_exchange_vs_nccl: not measured (this build has no NCCL transport)\n");
    return 0;
  }
  if (gpus < 2) {
    std::printf("gpu_exchange_vs_nccl: not measured (needs 2 GPUs; this machine has %d: NCCL puts every rank of a "
                "communicator on its own device; since NCCL 2.5 two ranks on one GPU fail at init with "
                "ncclInvalidUsage, \"Duplicate GPU detected\")\n",
                gpus);
    return 0;
  }
#ifndef SY_BENCH_HAVE_NCCL
  std::printf("gpu_exchange_vs_nccl: not measured (bench_gpu was built without nccl.h for the raw side)\n");
  return 0;
#else
  const size_t row_bytes = static_cast<size_t>(o.d) * sizeof(float);
  const int64_t S = o.exchange_rows;  // rows each rank sends to the other (none to itself)
  const size_t bytes = static_cast<size_t>(S) * row_bytes;
  std::printf("exchange: 2 ranks on GPUs 0 and 1, each sends %lld rows of %zu bytes (%.1f MiB) to the other\n",
              static_cast<long long>(S), row_bytes, static_cast<double>(bytes) / (1 << 20));
  void* send[2] = {};
  void* recv[2] = {};
  for (int r = 0; r < 2; ++r) {
    auto s = tr::device_allocate(bytes, r);
    auto v = tr::device_allocate(bytes, r);
    if (!s || !v) throw std::runtime_error("device_allocate failed");
    send[r] = *s, recv[r] = *v;
  }

  // Ours: one thread per rank, a barrier around each repetition; rank 0's clock.
  std::unique_ptr<tr::Transport> t[2];
  for (int r = 0; r < 2; ++r) {
    tr::TransportOptions opt;
    opt.rank = r, opt.world_size = 2;
    tr::NcclOptions n;
    n.device = r;
    t[r] = tr::make_nccl_transport(opt, n);
  }
  const std::vector<std::string> addresses = {t[0]->local_address(), t[1]->local_address()};
  const tr::Timeout timeout{30000};
  std::vector<double> ours;
  std::string failure[2];
  std::barrier sync(2);
  auto rank_main = [&](int r) {
    if (sy::transport::Status s = t[r]->connect(addresses); !s) {
      failure[r] = s.to_string();
      return;
    }
    const std::vector<int64_t> counts = r == 0 ? std::vector<int64_t>{0, S} : std::vector<int64_t>{S, 0};
    auto layout = t[r]->exchange_counts(counts, timeout);
    if (!layout) {
      failure[r] = layout.status().to_string();
      return;
    }
    tr::ExchangeBuffers buf;
    buf.send = send[r], buf.recv = recv[r], buf.row_bytes = row_bytes, buf.kind = tr::MemoryKind::cuda;
    for (int i = 0; i < o.warmup + o.reps; ++i) {
      sync.arrive_and_wait();
      const auto t0 = std::chrono::steady_clock::now();
      if (sy::transport::Status s = t[r]->exchange_rows(*layout, buf, timeout); !s) failure[r] = s.to_string();
      sync.arrive_and_wait();
      const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      if (r == 0 && i >= o.warmup) ours.push_back(ms);
    }
  };
  {
    std::thread other(rank_main, 1);
    rank_main(0);
    other.join();
  }
  for (int r = 0; r < 2; ++r)
    if (!failure[r].empty()) throw std::runtime_error("rank " + std::to_string(r) + ": " + failure[r]);
  t[0].reset(), t[1].reset();

  // Raw NCCL: ncclCommInitAll over both devices, one thread, grouped send/recv.
  ncclComm_t comms[2];
  const int devs[2] = {0, 1};
  if (ncclCommInitAll(comms, 2, devs) != ncclSuccess) throw std::runtime_error("ncclCommInitAll failed");
  cudaStream_t streams[2];
  for (int r = 0; r < 2; ++r) {
    check(cudaSetDevice(r), "cudaSetDevice");
    check(cudaStreamCreateWithFlags(&streams[r], cudaStreamNonBlocking), "cudaStreamCreate");
  }
  std::vector<double> raw;
  for (int i = 0; i < o.warmup + o.reps; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    ncclGroupStart();
    for (int r = 0; r < 2; ++r) {
      ncclSend(send[r], bytes, ncclUint8, 1 - r, comms[r], streams[r]);
      ncclRecv(recv[r], bytes, ncclUint8, 1 - r, comms[r], streams[r]);
    }
    if (ncclGroupEnd() != ncclSuccess) throw std::runtime_error("ncclGroupEnd failed");
    for (int r = 0; r < 2; ++r) check(cudaStreamSynchronize(streams[r]), "cudaStreamSynchronize");
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    if (i >= o.warmup) raw.push_back(ms);
  }
  for (int r = 0; r < 2; ++r) {
    ncclCommDestroy(comms[r]);
    cudaStreamDestroy(streams[r]);
    tr::device_free(send[r]);
    tr::device_free(recv[r]);
  }
  check(cudaSetDevice(0), "cudaSetDevice");
  const double ours_ms = median(ours), raw_ms = median(raw);
  const double gbs = static_cast<double>(bytes) / 1e6;  // per direction, per ms → GB/s
  std::printf("exchange ours (nccl transport exchange_rows, host clock around a barrier): %.3f ms, %.1f GB/s per "
              "direction\nexchange raw (ncclSend/ncclRecv grouped, one thread): %.3f ms, %.1f GB/s per direction\n",
              ours_ms, gbs / ours_ms, raw_ms, gbs / raw_ms);
  std::printf("gpu_exchange_ms: %.3f\ngpu_exchange_nccl_ms: %.3f\ngpu_exchange_vs_nccl: %.3f\n", ours_ms, raw_ms,
              raw_ms / ours_ms);
  return 0;
#endif
}

// ---------------------------------------------------------------------------------------------
// layer: one top-k MoE layer forward through the CUDA backend's ops

int run_layer(sy::Backend& cuda, const Options& o, EventTimer& timer) {
  const int64_t T = o.tokens, d = o.d, f = o.f, E = o.experts, k = o.k;
  std::printf("layer: top-%lld of %lld experts, %lld tokens, d=%lld f=%lld swiglu, FP32 (TF32 off), forward only; "
              "router linear, softmax, gather, per-expert FFN and weighted sum on the GPU (cuda backend ops); "
              "top-k, gates, dispatch layout and node list on the HOST (cpu ops), with the router probabilities "
              "copied to the host and the row index copied back inside the timed step\n",
              static_cast<long long>(k), static_cast<long long>(E), static_cast<long long>(T),
              static_cast<long long>(d), static_cast<long long>(f));
  std::mt19937_64 rng(o.seed + 2);
  const int64_t wsize = f * d;
  DeviceFloats x(cuda, T * d, &rng, 1.0f), wr(cuda, E * d, &rng);
  DeviceFloats wg(cuda, E * wsize, &rng), wu(cuda, E * wsize, &rng), wd(cuda, E * wsize, &rng);
  DeviceFloats z(cuda, T * E), p(cuda, T * E), m(cuda, T * d);
  // Packed rows: at most T·k.
  DeviceFloats xp(cuda, T * k * d), yp(cuda, T * k * d);
  auto* index = static_cast<int64_t*>(cuda.allocate(static_cast<size_t>(T * k) * sizeof(int64_t)));
  std::vector<float> p_host(static_cast<size_t>(T * E));
  const std::vector<int32_t> k_per_token(static_cast<size_t>(T), static_cast<int32_t>(k));
  sy::OpRunner runner(cuda);
  sy::Backend& host = sy::cpu_backend();
  sy::cpu::Selection sel;
  sy::cpu::DispatchLayout layout;
  sy::cpu::NodeList nodes;
  int64_t last_rows = 0, min_rows = 0, max_rows = 0;
  auto step = [&] {
    runner.run(sy::LinearForwardArgs{x.get(), T, d, E, wr.get(), z.get(), false});
    runner.run(sy::SoftmaxForwardArgs{z.get(), T, E, p.get(), nullptr});
    cuda.copy_to_host(p_host.data(), p.get(), p_host.size() * sizeof(float));
    sy::SelectExpertsArgs s;
    s.p = p_host.data(), s.n = T, s.e = E, s.k_per_token = k_per_token, s.selection = &sel;
    sy::run_with_own_workspace(host, s);
    sy::ComputeGatesArgs g;
    g.p = p_host.data(), g.normalize = true, g.selection = &sel;
    sy::run_with_own_workspace(host, g);
    layout = sy::cpu::build_dispatch_layout(sel);
    nodes = sy::cpu::build_node_list(sel, layout);
    const int64_t rows = layout.rows();
    cuda.copy_from_host(index, layout.token.data(), static_cast<size_t>(rows) * sizeof(int64_t));
    runner.run(sy::GatherRowsArgs{x.get(), d, index, rows, xp.get()});
    for (int64_t e = 0; e < E; ++e) {
      sy::FfnForwardArgs a;
      const int64_t r0 = layout.expert_offsets[static_cast<size_t>(e)];
      a.x = xp.get() + r0 * d;
      a.rows = layout.expert_rows(e), a.d = d, a.f = f, a.activation = Activation::swiglu;
      a.w = {wg.get() + e * wsize, wu.get() + e * wsize, wd.get() + e * wsize};
      a.out = yp.get() + r0 * d;
      runner.run(a);
    }
    sy::WeightedSumForwardArgs w;
    w.nodes = &nodes, w.expert_out = yp.get(), w.d = d, w.m = m.get();
    runner.run(w);
    cuda.synchronize();
    last_rows = rows;
    min_rows = max_rows = layout.expert_rows(0);
    for (int64_t e = 1; e < E; ++e) {
      min_rows = std::min(min_rows, layout.expert_rows(e));
      max_rows = std::max(max_rows, layout.expert_rows(e));
    }
  };
  const double ms = timer.median_ms(o.warmup, o.reps, step);
  cuda.release(index);
  const double gflop = 2.0 * static_cast<double>(T) * static_cast<double>(d) * static_cast<double>(E) / 1e9 +
                       6.0 * static_cast<double>(last_rows) * static_cast<double>(d) * static_cast<double>(f) / 1e9;
  std::printf("layer ours: %.3f ms, %.1f TFLOP/s (%lld rows, per expert %lld..%lld; median of %d after %d warm-up)\n",
              ms, gflop / ms, static_cast<long long>(last_rows), static_cast<long long>(min_rows),
              static_cast<long long>(max_rows), o.reps, o.warmup);
  std::printf("gpu_layer_ms: %.3f\n", ms);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const Options o = parse(argc, argv);
  try {
    sy::Backend* cuda = find_cuda_backend();
    if (cuda == nullptr) {
      std::printf("bench_gpu: no CUDA device: skipped (the CUDA backend is compiled in; no device is usable here)\n");
      for (const char* name : {"gpu_ffn_vs_cublas", "gpu_exchange_vs_nccl"})  // the headline names, for scripts
        std::printf("%s: not measured (no usable CUDA device)\n", name);
      return 0;
    }
    print_device();
    EventTimer timer;
    int rc = 0;
    if (o.mode == "ffn" || o.mode == "all") rc |= run_ffn(*cuda, o, timer);
    if (o.mode == "exchange" || o.mode == "all") rc |= run_exchange(o);
    if (o.mode == "layer") rc |= run_layer(*cuda, o, timer);
    return rc;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_gpu: %s\n", e.what());
    return 1;
  }
}
