#include "switchyard/cli/toy_task.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <algorithm>
#include <iomanip>
#include <optional>
#include <ostream>

#include "switchyard/client/cluster_client.h"
#include "switchyard/engine/staged_experts.h"
#include "switchyard/engine/layer_engine.h"
#include "switchyard/engine/optimizer.h"
#include "switchyard/kernels/buffer.h"

namespace sy {

Tensor random_tokens(int64_t tokens, int64_t d, RandomStream& rng) {
  Tensor x({tokens, d});
  for (int64_t i = 0; i < x.numel(); ++i) x[i] = rng.normal();
  return x;
}

Tensor random_attention(int64_t b, int64_t h, int64_t l, float scale, RandomStream& rng) {
  Tensor a({b, h, l, l});
  for (int64_t row = 0; row < b * h * l; ++row) {
    const int64_t q = row % l;
    float* r = a.data() + row * l;
    double sum = 0.0;
    for (int64_t t = 0; t <= q; ++t) {
      r[t] = std::exp(scale * rng.normal());
      sum += r[t];
    }
    for (int64_t t = 0; t <= q; ++t) r[t] = static_cast<float>(r[t] / sum);
  }
  return a;
}

SkewedTokens::SkewedTokens(const ModelConfig& model, double skew, uint64_t seed) : d(model.hidden_size) {
  const int clusters = model.layer.stages.at(0).experts;
  RandomStream rng(seed, "toy-skew");
  std::vector<int> rank(static_cast<size_t>(clusters));
  for (int i = 0; i < clusters; ++i) rank[static_cast<size_t>(i)] = i;
  for (int i = clusters - 1; i > 0; --i)  // Fisher-Yates: which expert is hottest
    std::swap(rank[static_cast<size_t>(i)], rank[static_cast<size_t>(rng.next_u64() % static_cast<uint64_t>(i + 1))]);
  double total = 0;
  std::vector<double> p(static_cast<size_t>(clusters));
  for (int c = 0; c < clusters; ++c) total += p[static_cast<size_t>(c)] = 1.0 / std::pow(rank[static_cast<size_t>(c)] + 1.0, skew);
  double acc = 0;
  for (double v : p) cumulative.push_back(acc += v / total);
  for (int c = 0; c < clusters; ++c) {
    std::vector<float> u(static_cast<size_t>(d));
    double norm = 0;
    for (float& x : u) {
      x = rng.normal();
      norm += static_cast<double>(x) * x;
    }
    for (float& x : u) x = static_cast<float>(x / std::sqrt(norm));
    dirs.push_back(std::move(u));
  }
}

Tensor SkewedTokens::sample(int64_t tokens, RandomStream& rng) const {
  Tensor x = random_tokens(tokens, d, rng);
  for (int64_t t = 0; t < tokens; ++t) {
    const double r = rng.uniform(0.0f, 1.0f);
    const size_t c = static_cast<size_t>(std::lower_bound(cumulative.begin(), cumulative.end(), r) - cumulative.begin());
    const std::vector<float>& u = dirs[std::min(c, dirs.size() - 1)];
    for (int64_t i = 0; i < d; ++i) x.data()[t * d + i] += 2.0f * u[static_cast<size_t>(i)];
  }
  return x;
}

// Adds `weight` × 3·u_(e mod E) to row e of every stage's router.
void SkewedTokens::skew_router(TensorMap& weights, const ModelConfig& model, float weight) const {
  for (size_t s = 0; s < model.layer.stages.size(); ++s) {
    auto it = weights.find("stages." + std::to_string(s) + ".router.weight");
    if (it == weights.end()) continue;
    Tensor& w = it->second;
    for (int64_t e = 0; e < w.dim(0); ++e)
      for (int64_t i = 0; i < w.dim(1); ++i)
        w.data()[e * w.dim(1) + i] += weight * 3.0f * dirs[static_cast<size_t>(e) % dirs.size()][static_cast<size_t>(i)];
  }
}

namespace {

double mse_and_grad(const Tensor& y, const Tensor& target, Tensor* grad) {
  double loss = 0.0;
  const double n = static_cast<double>(y.numel());
  if (grad) *grad = Tensor(y.shape());
  for (int64_t i = 0; i < y.numel(); ++i) {
    const double diff = static_cast<double>(y[i]) - target[i];
    loss += diff * diff;
    if (grad) (*grad)[i] = static_cast<float>(2.0 * diff / n);
  }
  return loss / n;
}

// The teacher: the config's initialisation, with its DAG `up` weights drawn U(±1/√d_g) instead
// of zero so that its structure is not trivial.
TensorMap teacher_weights(const ModelConfig& model, uint64_t seed) {
  TensorMap teacher = init_layer_weights(model, seed);
  for (auto& [name, t] : teacher) {
    if (name.find(".dag.") != std::string::npos && name.ends_with("up.weight")) {
      RandomStream rng(seed, name);
      const float bound = 1.0f / std::sqrt(static_cast<float>(t.dim(1)));
      for (int64_t i = 0; i < t.numel(); ++i) t[i] = rng.uniform(-bound, bound);
    }
  }
  return teacher;
}

// The progress bar's text: the MSE, and with a cluster the throughput and each worker's share.
std::string progress_status(double mse, const ClusterClient* cluster, int64_t T, int step,
                            std::chrono::steady_clock::time_point start) {
  std::string status = "mse " + std::to_string(mse);
  if (!cluster) return status;
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  status += " | " + std::to_string(static_cast<int64_t>(static_cast<double>(T) * step / secs)) + " tok/s | load";
  const std::vector<uint64_t> rows = cluster->rows_sent();
  uint64_t total = 0;
  for (uint64_t r : rows) total += r;
  for (uint64_t r : rows) status += " " + std::to_string(total ? 100 * r / total : 0) + "%";
  return status;
}

void print_summary(std::ostream& out, const ToyTaskResult& result, int steps) {
  out << "step " << steps << " eval_mse " << std::setprecision(6) << result.last_eval << "\n";
  out << "tokens_per_s: " << std::fixed << std::setprecision(0) << result.tokens_per_second << "\n";
  out.unsetf(std::ios::fixed);
  out << "loss_drop: " << std::setprecision(4) << result.first_eval / result.last_eval << std::endl;
}

}  // namespace

ToyTaskResult run_toy_task(const Config& config, const ToyTaskOptions& opt, std::ostream& out, ClusterClient* cluster) {
  const ModelConfig& model = config.require_model();
  const int64_t d = model.hidden_size, T = opt.sequences * opt.seq_len;
  TensorMap teacher = teacher_weights(model, opt.teacher_seed);
  TensorMap student = init_layer_weights(model, opt.student_seed);
  std::optional<SkewedTokens> skewed;
  if (opt.skew > 0) {
    skewed.emplace(model, opt.skew, opt.teacher_seed);
    for (size_t s = 0; s < model.layer.stages.size(); ++s)  // the teacher routes by cluster only
      if (auto it = teacher.find("stages." + std::to_string(s) + ".router.weight"); it != teacher.end()) it->second.fill(0.0f);
    skewed->skew_router(teacher, model, 1.0f);
    skewed->skew_router(student, model, 0.5f);
  }
  Backend& backend = opt.backend ? *opt.backend : cpu_backend();
  const bool host = backend.device() == Device::cpu;
  // A device backend: teacher, student and gradients in its memory (the cpu: the maps themselves).
  BufferMap teacher_device, student_device, grads_device;
  if (!host) teacher_device = BufferMap(backend, teacher);
  const TensorMap& teacher_w = host ? teacher : teacher_device.tensors();
  LocalExperts teacher_experts(model, teacher_w, nullptr, "", backend);
  LayerEngine teacher_layer(model, teacher_w, teacher_experts, "", backend);
  if (cluster) {
    // Experts go to the workers; the client keeps (and optimizes) only the dense parameters.
    cluster->load_model(config, student);
    for (const ParamSpec& spec : layer_param_specs(model))
      if (spec.owner == ParamOwner::expert) student.erase(spec.name);
  }
  TensorMap host_grads = zeros_like(student);
  if (!host) {
    student_device = BufferMap(backend, student);
    grads_device = BufferMap(backend, host_grads);
  }
  TensorMap& student_w = host ? student : student_device.tensors();
  TensorMap& grads = host ? host_grads : grads_device.tensors();
  LocalExperts student_experts(model, student_w, &grads, "", backend);
  std::optional<StagedExperts> staged;  // a device client's rows to and from the workers
  ExpertCompute& student_compute = cluster ? experts_on(cluster->experts(0), backend, staged) : student_experts;
  LayerEngine student_layer(model, student_w, student_compute, "", backend);
  AdamW adam({.lr = opt.lr}, backend);

  RandomStream data(opt.data_seed, "toy-data");
  const bool dynamic = needs_importance(model);
  auto batch = [&](RandomStream& rng, Tensor& x, Tensor& attention) {
    x = skewed ? skewed->sample(T, rng) : random_tokens(T, d, rng);
    if (dynamic) attention = random_attention(opt.sequences, opt.heads, opt.seq_len, 1.5f, rng);
  };
  RandomStream eval_rng(opt.data_seed, "toy-eval");
  Tensor eval_x, eval_attention;
  batch(eval_rng, eval_x, eval_attention);
  const ImportanceInput eval_imp{dynamic ? &eval_attention : nullptr, nullptr};
  const Tensor eval_target = teacher_layer.forward(eval_x, eval_imp);
  auto evaluate = [&] {
    if (cluster) cluster->set_training(false);
    const double mse = mse_and_grad(student_layer.forward(eval_x, eval_imp), eval_target, nullptr);
    if (cluster) cluster->set_training(true);
    return mse;
  };

  ToyTaskResult result;
  result.first_eval = evaluate();
  out << "train-toy: d=" << d << " stages=" << model.layer.stages.size() << " tokens/step=" << T
      << " steps=" << opt.steps << " lr=" << opt.lr;
  if (skewed) out << " skew=" << opt.skew;
  out << "\n";
  out << "step 0 eval_mse " << std::setprecision(6) << result.first_eval << "\n";
  ProgressBar bar(opt.steps, "train-toy", opt.progress);
  const auto start = std::chrono::steady_clock::now();
  for (int step = 1; step <= opt.steps; ++step) {
    Tensor x, attention, g;
    batch(data, x, attention);
    const ImportanceInput imp{dynamic ? &attention : nullptr, nullptr};
    const Tensor target = teacher_layer.forward(x, imp);
    const Tensor y = student_layer.forward(x, imp);
    const double mse = mse_and_grad(y, target, &g);
    const double loss = mse + student_layer.aux_loss();
    for (auto& [name, t] : grads) borrow_buffer(backend, t).fill_zero();
    student_layer.backward(g, grads);
    adam.set_lr(opt.lr * 0.5 * (1.0 + std::cos(3.141592653589793 * (step - 1) / opt.steps)));  // cosine decay
    adam.step(student_w, grads);
    if (cluster) cluster->step(adam.config(), 1, static_cast<uint64_t>(step));
    result.losses.push_back(loss);
    result.mse.push_back(mse);
    if (step % std::max(1, opt.steps / 10) == 0 || step == opt.steps)
      out << "step " << step << " mse " << std::setprecision(6) << mse << " aux " << student_layer.aux_loss() << "\n";
    bar.update(step, progress_status(mse, cluster, T, step, start));
  }
  bar.finish();
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  result.tokens_per_second = secs > 0 ? static_cast<double>(T) * opt.steps / secs : 0.0;
  result.last_eval = evaluate();
  print_summary(out, result, opt.steps);
  return result;
}

ProgressBar::ProgressBar(int64_t total, std::string label, bool enabled)
    : total_(total), label_(std::move(label)), enabled_(enabled), tty_(isatty(STDERR_FILENO) != 0) {}

void ProgressBar::update(int64_t done, const std::string& suffix) {
  if (!enabled_ || total_ <= 0) return;
  const int width = 30;
  const int filled = static_cast<int>(width * done / total_);
  if (tty_) {
    std::fprintf(stderr, "\r%s [%s%s] %lld/%lld %s\033[K", label_.c_str(), std::string(static_cast<size_t>(filled), '#').c_str(),
                 std::string(static_cast<size_t>(width - filled), '.').c_str(), static_cast<long long>(done),
                 static_cast<long long>(total_), suffix.c_str());
    std::fflush(stderr);
    return;
  }
  const int64_t decile = done * 10 / total_;
  if (decile != last_decile_) {
    last_decile_ = decile;
    std::fprintf(stderr, "%s [%s%s] %lld/%lld %s\n", label_.c_str(), std::string(static_cast<size_t>(filled), '#').c_str(),
                 std::string(static_cast<size_t>(width - filled), '.').c_str(), static_cast<long long>(done),
                 static_cast<long long>(total_), suffix.c_str());
  }
}

void ProgressBar::finish() {
  if (enabled_ && tty_) std::fprintf(stderr, "\n");
}

}  // namespace sy
