// Co-located expert parallelism (runtime/colocated): N ranks as threads, each a trainer rank with
// its own batch and the holder of E/N experts, over the in-process transport and over UCX. Every
// rank's forward and backward equal the single process's on that rank's batch, step after step,
// when the single process accumulates every rank's gradients before its step.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <thread>
#include <tuple>

#include "switchyard/colocated/colocated.h"
#include "switchyard/core/error.h"
#include "switchyard/transport/factory.h"
#include "switchyard/transport/inprocess.h"
#include "../support/trajectory_adamw.h"
#include "../support/close.h"
#include "../support/free_port.h"
#include "../support/test_model.h"
#include "../support/up_process.h"

namespace sy {
namespace {

using namespace std::chrono_literals;


// A fixed world of `n` transports of kind `kind`, connected.
std::vector<std::unique_ptr<transport::Transport>> make_world(const std::string& kind, int n) {
  transport::BackendOptions backend;
  if (kind == "inprocess") backend.fabric = transport::make_inprocess_fabric(n);
  std::vector<std::unique_ptr<transport::Transport>> ranks;
  std::vector<std::string> addresses;
  for (int r = 0; r < n; ++r) {
    transport::TransportOptions o;
    o.rank = r;
    o.world_size = n;
    o.label = "rank " + std::to_string(r);
    ranks.push_back(transport::make_transport(kind, o, backend));
    addresses.push_back(ranks.back()->local_address());
  }
  for (auto& t : ranks) EXPECT_TRUE(t->connect(addresses));
  return ranks;
}

struct Batch {
  Tensor x, g;
};
Batch batch(int step, int rank) {
  RandomStream rng(static_cast<uint64_t>(100 * step + rank), "colocated");
  return {random_tokens(40, 16, rng), random_tokens(40, 16, rng)};
}

// (transport, ranks, whether the ranks ask for dL/dx: backward, or backward_params).
class Colocated : public ::testing::TestWithParam<std::tuple<std::string, int, bool>> {};

TEST_P(Colocated, EveryRankMatchesTheSingleProcessStepAfterStep) {
  const auto [kind, n, input_grad] = GetParam();
  Config cfg = two_layer_model();
  // backward_params: the first layer's first stage fed x itself, so it skips its input gradients.
  if (!input_grad) cfg.model.layer.input_norm = InputNorm::none;
  const TensorMap weights = init_model_weights(cfg.model, 11);
  const int steps = 3;
  const AdamWConfig adamw = testing::trajectory_adamw(1e-2);
  // The single process: each rank's batch in turn, gradients accumulated, then one step.
  MoeModel local(cfg, weights);
  std::vector<std::vector<std::pair<Tensor, Tensor>>> expected(static_cast<size_t>(n));
  for (int s = 0; s < steps; ++s) {
    for (int r = 0; r < n; ++r) {
      const Batch b = batch(s, r);
      Tensor y = local.forward(b.x);
      expected[static_cast<size_t>(r)].emplace_back(std::move(y), local.backward(b.g));
    }
    local.step(adamw);
  }

  auto world = make_world(kind, n);
  std::vector<std::vector<std::pair<Tensor, Tensor>>> got(static_cast<size_t>(n));
  std::vector<std::string> errors(static_cast<size_t>(n));
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r)
    threads.emplace_back([&, r] {
      try {
        ColocatedExperts group(*world[static_cast<size_t>(r)], cfg.model, weights, 20000ms);
        MoeModel model(cfg, weights, group);
        for (int s = 0; s < steps; ++s) {
          const Batch b = batch(s, r);
          Tensor y = model.forward(b.x);
          Tensor dx;
          if (input_grad) dx = model.backward(b.g);
          else model.backward_params(b.g);
          got[static_cast<size_t>(r)].emplace_back(std::move(y), std::move(dx));
          group.sum_dense_grads(model.mutable_grads());
          model.step(adamw);
        }
      } catch (const std::exception& e) {
        errors[static_cast<size_t>(r)] = e.what();
      }
    });
  for (auto& t : threads) t.join();
  for (int r = 0; r < n; ++r) {
    ASSERT_EQ(errors[static_cast<size_t>(r)], "") << "rank " << r;
    for (int s = 0; s < steps; ++s) {
      const std::string what = kind + " rank " + std::to_string(r) + " step " + std::to_string(s);
      expect_close(got[static_cast<size_t>(r)][static_cast<size_t>(s)].first,
                   expected[static_cast<size_t>(r)][static_cast<size_t>(s)].first, what + " forward", 2e-5);
      if (input_grad)  // without it, the next steps' forwards show the weights followed
        expect_close(got[static_cast<size_t>(r)][static_cast<size_t>(s)].second,
                     expected[static_cast<size_t>(r)][static_cast<size_t>(s)].second, what + " grad_input", 2e-5);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Ranks, Colocated,
                         ::testing::Combine(::testing::Values("inprocess", "ucx"), ::testing::Values(2, 4),
                                            ::testing::Bool()),
                         [](const auto& p) {
                           return std::get<0>(p.param) + "_" + std::to_string(std::get<1>(p.param)) +
                                  (std::get<2>(p.param) ? "" : "_backward_params");
                         });

TEST(ColocatedConfig, ExpertsNotAMultipleOfTheRanksIsAConfigErrorNamingTheStage) {
  const Config cfg = two_layer_model();  // 4 experts per stage
  auto world = make_world("inprocess", 3);
  try {
    ColocatedExperts group(*world[0], cfg.model, init_model_weights(cfg.model, 1), 1000ms);
    FAIL() << "accepted 4 experts over 3 ranks";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::config);
    EXPECT_NE(std::string(e.what()).find("model.layer.stages[0].experts"), std::string::npos) << e.what();
  }
}

// The line of step `n` ("step 3/3: loss 1.234") in a job's output, "" when missing.
std::string step_line(const std::string& out, int n, int steps) {
  const std::string key = "step " + std::to_string(n) + "/" + std::to_string(steps) + ": loss ";
  const size_t at = out.find(key);
  return at == std::string::npos ? "" : out.substr(at, out.find('\n', at) - at);
}

const std::string kJob = "colocated --config " + std::string(SY_SOURCE_DIR) + "/configs/models/topk.yaml --steps 3 --tokens 64";

// `switchyard colocated --ranks 2` starts two ranks here; the same job under torchrun's
// variables (rank 0, which serves the rendezvous at MASTER_PORT + 1) and Open MPI's (rank 1)
// prints the same losses: the ranks and their data depend on the rank only, not the launcher.
TEST(ColocatedCli, RanksHereAndUnderLaunchersTrainTheSame) {
  const auto [code, out] = run_cli("", kJob + " --ranks 2");
  ASSERT_EQ(code, 0) << out;
  const std::string last = step_line(out, 3, 3);
  ASSERT_NE(last, "") << out;
  EXPECT_NE(out.find("colocated_step_ms: "), std::string::npos) << out;

  const int port = free_port();
  auto rank1 = launch::LocalProcess::spawn(
      {kBinary, "colocated", "--config", std::string(SY_SOURCE_DIR) + "/configs/models/topk.yaml", "--steps", "3",
       "--tokens", "64"},
      {{"OMPI_COMM_WORLD_RANK", "1"}, {"OMPI_COMM_WORLD_SIZE", "2"}, {"SWITCHYARD_COORDINATOR", "127.0.0.1:" + std::to_string(port)}});
  const auto [code0, out0] =
      run_cli("RANK=0 WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=" + std::to_string(port - 1), kJob);
  auto code1 = rank1.wait(std::chrono::milliseconds(60000));
  EXPECT_EQ(code0, 0) << out0;
  ASSERT_TRUE(code1.is_ok());
  EXPECT_EQ(*code1, 0);
  EXPECT_EQ(step_line(out0, 3, 3), last) << out0;
}

TEST(ColocatedCli, WithoutALauncherOrRanksItSaysWhatToGive) {
  const auto [code, out] = run_cli("", kJob);
  EXPECT_EQ(code, 2) << out;
  EXPECT_NE(out.find("give --ranks N"), std::string::npos) << out;
}

}  // namespace
}  // namespace sy
