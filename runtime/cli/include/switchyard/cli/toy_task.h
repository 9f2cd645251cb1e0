// The student–teacher learning check (`switchyard train-toy`) and the random inputs the
// demo and benchmarks use.
#pragma once

#include <cstdint>
#include <iosfwd>
#include <vector>

#include "switchyard/core/config.h"
#include "switchyard/core/tensor.h"
#include "switchyard/kernels/backend.h"
#include <string>
#include "switchyard/engine/layer_weights.h"

namespace sy {

class ClusterClient;

// x ~ N(0, 1), shape [tokens, d].
Tensor random_tokens(int64_t tokens, int64_t d, RandomStream& rng);
// Attention probabilities [b, h, l, l]: causal rows, softmax of N(0, scale²) logits.
Tensor random_attention(int64_t b, int64_t h, int64_t l, float scale, RandomStream& rng);

struct ToyTaskOptions {
  int steps = 4000;
  int64_t sequences = 4;     // tokens per step = sequences · seq_len
  int64_t seq_len = 64;
  int64_t heads = 2;         // of the random attention fed to dynamic stages
  uint64_t teacher_seed = 1;
  uint64_t student_seed = 2;
  uint64_t data_seed = 3;
  double lr = 3e-3;
  bool progress = true;      // progress bar on stderr
  double skew = 0;           // > 0: tokens and the teacher's routing favour experts by Zipf(skew)
  Backend* backend = nullptr;  // the engines' and AdamW's backend (null: the cpu); a device one
                               // holds weights, gradients and moments in its memory
};

// The skewed toy task (`train-toy --skew S`). Each token belongs to a cluster c ~ Zipf(S) over
// the first stage's E experts (popularity ∝ 1/rank^S, ranks a seeded permutation of the
// experts) and is x = z + 2·u_c with z ~ N(0, I) and u_c a seeded unit vector. Every stage's
// teacher router row e is 3·u_(e mod E): the teacher sends a cluster's tokens to its expert, so
// its routing follows the Zipf law. The student's router starts from its own initialisation
// plus half of the teacher's, so its load is uneven from the first step and moves while it
// learns the teacher's routing.
struct SkewedTokens {
  SkewedTokens(const ModelConfig& model, double skew, uint64_t seed);
  Tensor sample(int64_t tokens, RandomStream& rng) const;
  void skew_router(TensorMap& weights, const ModelConfig& model, float weight) const;

  int64_t d = 0;
  std::vector<double> cumulative;       // Zipf CDF over clusters
  std::vector<std::vector<float>> dirs; // [clusters][d] unit vectors
};

struct ToyTaskResult {
  std::vector<double> losses;  // training loss per step (MSE + aux)
  std::vector<double> mse;     // its MSE part
  double first_eval = 0.0;     // MSE on a fixed held-out batch before training
  double last_eval = 0.0;      // ... and after training
  double tokens_per_second = 0.0;
};

// Trains a student layer (seed `student_seed`) with AdamW to match a fixed random teacher layer
// of the same config on random tokens; loss = mean((y_s − y_t)²) + aux losses. The teacher's
// DAG `up` weights are drawn U(±1/√d_g) instead of zero so its structure is not trivial.
// Prints the loss curve to `out`, ending with `loss_drop: <first_eval / last_eval>`.
// With `cluster`, the student's routed experts live on the cluster's workers (loaded from the
// student's initial weights, stepped there with the same AdamW settings); the progress bar then
// also shows each worker's share of the rows.
ToyTaskResult run_toy_task(const Config& config, const ToyTaskOptions& options, std::ostream& out,
                           ClusterClient* cluster = nullptr);

// A terminal progress bar on stderr: redraws in place on a TTY, prints every 10% otherwise.
class ProgressBar {
 public:
  ProgressBar(int64_t total, std::string label, bool enabled = true);
  void update(int64_t done, const std::string& suffix);
  void finish();

 private:
  int64_t total_;
  std::string label_;
  bool enabled_, tty_;
  int64_t last_decile_ = -1;
};

}  // namespace sy
