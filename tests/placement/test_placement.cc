#include <gtest/gtest.h>

#include "switchyard/core/error.h"
#include "switchyard/placement/placement.h"
#include "switchyard/scheduler/replica_scheduler.h"

namespace sy {
namespace {

ModelConfig two_stage_model() {
  return load_config_string(
             "model:\n  hidden_size: 8\n  layers: 2\n  layer:\n    stages:\n"
             "      - {experts: 3, ffn_hidden_size: 4}\n      - {experts: 2, ffn_hidden_size: 4}\n")
      .model;
}

TEST(Placement, RoundRobinPlacesEveryExpertOnce) {
  const ModelConfig m = two_stage_model();
  const Placement p = Placement::round_robin(m, 4);
  EXPECT_EQ(p.replicas.size(), 10u);
  EXPECT_EQ(p.workers_for({0, 0, 0}), std::vector<int>{0});
  EXPECT_EQ(p.workers_for({0, 1, 1}), std::vector<int>{0});  // the 5th expert → worker 4 mod 4
  EXPECT_EQ(p.workers_for({1, 1, 1}), std::vector<int>{1});
  EXPECT_NO_THROW(p.validate(m, 4));
}

TEST(Placement, ValidationNamesTheEntry) {
  const ModelConfig m = two_stage_model();
  auto expect_error = [&](const Placement& p, const std::string& needle) {
    try {
      p.validate(m, 4);
      ADD_FAILURE() << "expected an error naming " << needle;
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::config);
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  Placement p = Placement::round_robin(m, 4);
  p.replicas.erase({1, 0, 2});
  expect_error(p, "layers.1.stages.0.experts.2 is not placed");
  p = Placement::round_robin(m, 4);
  p.replicas[{0, 0, 1}] = {1, 7};
  expect_error(p, "worker 7 does not exist");
  p = Placement::round_robin(m, 4);
  p.replicas[{0, 0, 1}] = {2, 2};
  expect_error(p, "listed twice");
  p = Placement::round_robin(m, 4);
  p.replicas[{0, 2, 0}] = {0};
  expect_error(p, "no such expert");
}

TEST(ReplicaScheduler, PicksLeastLoadedReplica) {
  ReplicaScheduler s(3);
  EXPECT_EQ(s.pick({0, 1}, 10), 0);
  EXPECT_EQ(s.pick({0, 1}, 4), 1);
  EXPECT_EQ(s.pick({0, 1}, 4), 1);   // 1 has 4 < 10
  EXPECT_EQ(s.pick({0, 1, 2}, 1), 2);
  EXPECT_EQ(s.load(), (std::vector<int64_t>{10, 8, 1}));
  s.reset();
  EXPECT_EQ(s.pick({2, 0}, 1), 2);   // ties: first listed
  EXPECT_THROW(s.pick({}, 1), Error);
  EXPECT_THROW(s.pick({5}, 1), Error);
}

}  // namespace
}  // namespace sy
