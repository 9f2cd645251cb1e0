#include <gtest/gtest.h>

#include "switchyard/core/error.h"
#include "switchyard/placement/placement.h"
#include "switchyard/scheduler/dispatch_plan.h"

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

TEST(DispatchPlan, SplitsEachExpertOverItsLiveReplicasInListOrder) {
  Placement p;
  p.replicas[{0, 0, 0}] = {0, 1};
  p.replicas[{0, 0, 1}] = {1};
  p.replicas[{0, 0, 2}] = {2, 0};
  const std::vector<int64_t> offsets = {0, 10, 14, 14};  // expert 2 has no rows
  WorkerLoad load;
  auto plan = plan_dispatch(offsets, 0, 0, p, {0, 1, 2}, load);
  ASSERT_TRUE(plan.is_ok()) << plan.status().to_string();
  ASSERT_EQ(plan->workers.size(), 2u);
  EXPECT_EQ(plan->rows, 14);
  EXPECT_EQ(plan->workers[0].worker, 0);  // expert 0: rows 0-4 to worker 0 (ties: first listed)
  ASSERT_EQ(plan->workers[0].chunks.size(), 1u);
  EXPECT_EQ(plan->workers[0].chunks[0].first_row, 0);
  EXPECT_EQ(plan->workers[0].chunks[0].rows, 5);
  EXPECT_EQ(plan->workers[1].worker, 1);  // rows 5-9 of expert 0, then expert 1's 4 rows
  ASSERT_EQ(plan->workers[1].chunks.size(), 2u);
  EXPECT_EQ(plan->workers[1].chunks[0].first_row, 5);
  EXPECT_EQ(plan->workers[1].chunks[1].expert, 1);
  EXPECT_EQ(plan->workers[1].rows, 9);
  EXPECT_EQ(load, (WorkerLoad{5, 9}));  // workers of experts with rows
  // Load accumulates; an odd row goes to the replica listed first, whatever the load.
  auto next = plan_dispatch(std::vector<int64_t>{0, 3, 3, 3}, 0, 0, p, {0, 1, 2}, load);
  ASSERT_TRUE(next.is_ok());
  ASSERT_EQ(next->workers.size(), 2u);
  EXPECT_EQ(next->workers[0].rows, 2);
  EXPECT_EQ(next->workers[1].rows, 1);
  EXPECT_EQ(load, (WorkerLoad{7, 10}));
  p.replicas[{0, 0, 0}] = {1, 0};  // listed the other way round: worker 1 gets the odd row
  auto swapped = plan_dispatch(std::vector<int64_t>{0, 3, 3, 3}, 0, 0, p, {0, 1, 2}, load);
  ASSERT_TRUE(swapped.is_ok());
  EXPECT_EQ(load, (WorkerLoad{8, 12}));
}

TEST(DispatchPlan, HonoursPlannedSharesAndRenormalizesOverLiveReplicas) {
  Placement p;
  p.replicas[{0, 0, 0}] = {2, 0, 1};
  p.shares[{0, 0, 0}] = {0.5, 0.375, 0.125};
  WorkerLoad load;
  auto plan = plan_dispatch(std::vector<int64_t>{0, 800}, 0, 0, p, {0, 1, 2}, load);
  ASSERT_TRUE(plan.is_ok()) << plan.status().to_string();
  EXPECT_EQ(load, (WorkerLoad{300, 100, 400}));
  // Packing order follows the replica list: worker 2's rows come first in the layout.
  EXPECT_EQ(plan->workers[2].worker, 2);
  EXPECT_EQ(plan->workers[2].chunks[0].first_row, 0);
  EXPECT_EQ(plan->workers[0].chunks[0].first_row, 400);
  // Worker 2 dead: its share goes to the others in proportion (0.75 : 0.25).
  WorkerLoad after;
  auto without = plan_dispatch(std::vector<int64_t>{0, 800}, 0, 0, p, {0, 1}, after);
  ASSERT_TRUE(without.is_ok());
  EXPECT_EQ(after, (WorkerLoad{600, 200, 0}));
  // Rounding: 7 rows at 0.5/0.375/0.125 = 3.5/2.625/0.875 → 3/2/0 then the 2 left over to the
  // largest remainders (0.875, 0.625).
  WorkerLoad small;
  ASSERT_TRUE(plan_dispatch(std::vector<int64_t>{0, 7}, 0, 0, p, {0, 1, 2}, small).is_ok());
  EXPECT_EQ(small, (WorkerLoad{3, 1, 3}));
  // A zero share gets no rows while another replica is live.
  p.shares[{0, 0, 0}] = {1.0, 0.0, 0.0};
  WorkerLoad all_on_2;
  ASSERT_TRUE(plan_dispatch(std::vector<int64_t>{0, 9}, 0, 0, p, {0, 1, 2}, all_on_2).is_ok());
  EXPECT_EQ(all_on_2, (WorkerLoad{0, 0, 9}));
}

TEST(DispatchPlan, ReplanWithoutADeadWorkerMovesItsRowsToSurvivors) {
  Placement p;
  p.replicas[{1, 0, 0}] = {0, 1};
  p.replicas[{1, 0, 1}] = {1};
  WorkerLoad load;
  auto plan = plan_dispatch(std::vector<int64_t>{0, 6, 6}, 1, 0, p, {0}, load);
  ASSERT_TRUE(plan.is_ok());
  ASSERT_EQ(plan->workers.size(), 1u);
  EXPECT_EQ(plan->workers[0].worker, 0);
  EXPECT_EQ(plan->workers[0].rows, 6);
  auto none = plan_dispatch(std::vector<int64_t>{0, 0, 2}, 1, 0, p, {0}, load);
  ASSERT_FALSE(none.is_ok());
  EXPECT_EQ(none.status().code(), StatusCode::unreachable);
  EXPECT_NE(none.status().message().find("layers.1.stages.0.experts.1"), std::string::npos);
  auto missing = plan_dispatch(std::vector<int64_t>{0, 0, 0, 1}, 1, 0, p, {0, 1}, load);
  ASSERT_FALSE(missing.is_ok());
  EXPECT_EQ(missing.status().code(), StatusCode::invalid_argument);
}

TEST(DispatchPlan, FailoverReplansOnlyTheLostChunksOverSurvivingReplicas) {
  Placement p;
  p.replicas[{0, 1, 0}] = {0, 1, 2};
  p.replicas[{0, 1, 1}] = {1, 2};
  p.replicas[{0, 1, 2}] = {1};
  WorkerLoad load;
  auto plan = plan_dispatch(std::vector<int64_t>{0, 9, 13, 14}, 0, 1, p, {0, 1, 2}, load);
  ASSERT_TRUE(plan.is_ok());
  ASSERT_EQ(plan->workers[1].worker, 1);  // worker 1: expert 0 rows 3-5, expert 1 rows 9-10, expert 2 row 13
  const std::vector<DispatchChunk> lost = plan->workers[1].chunks;
  ASSERT_EQ(lost.size(), 3u);
  WorkerLoad unused, after;
  // Without worker 1, expert 2 has no replica: named, unreachable.
  auto none = plan_failover(lost, 0, 1, p, {0, 2}, unused);
  ASSERT_FALSE(none.is_ok());
  EXPECT_EQ(none.status().code(), StatusCode::unreachable);
  EXPECT_NE(none.status().message().find("layers.0.stages.1.experts.2 (its workers 1 are all dead)"), std::string::npos)
      << none.status().message();
  p.replicas[{0, 1, 2}] = {1, 0};
  auto moved = plan_failover(lost, 0, 1, p, {0, 2}, after);
  ASSERT_TRUE(moved.is_ok()) << moved.status().to_string();
  EXPECT_EQ(moved->rows, 6);
  EXPECT_EQ(after, (WorkerLoad{3, 0, 3}));  // expert 0's 3 rows split 2/1, expert 1's 2 to worker 2
  ASSERT_EQ(moved->workers.size(), 2u);
  // The rows keep their layout positions: results land where worker 1's would have.
  EXPECT_EQ(moved->workers[0].chunks[0].first_row, 3);
  EXPECT_EQ(moved->workers[0].chunks[0].rows, 2);
  EXPECT_EQ(moved->workers[1].chunks[0].first_row, 5);
  EXPECT_EQ(moved->workers[1].chunks[1].expert, 1);
  EXPECT_EQ(moved->workers[1].chunks[1].first_row, 9);
  EXPECT_EQ(moved->workers[0].chunks.back().expert, 2);
  EXPECT_EQ(moved->workers[0].chunks.back().first_row, 13);
}

}  // namespace
}  // namespace sy
