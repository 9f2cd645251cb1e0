// The rebalance planner (issue 10): load traces, plan invariants, the bound, baselines,
// keeping a current placement, move caps, nodes, determinism and input errors.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <algorithm>
#include <set>

#include "switchyard/core/error.h"
#include "switchyard/placement/baselines.h"
#include "switchyard/placement/load_trace.h"
#include "switchyard/placement/planner.h"
#include "switchyard/placement/simulate.h"
#include "switchyard/placement/zipf_trace.h"

namespace sy {
namespace {

namespace fs = std::filesystem;

LoadMatrix zipf(int rows, int experts, double skew, uint64_t seed, double rows_per_step = 8192) {
  ZipfTraceOptions o;
  o.rows = rows;
  o.experts = experts;
  o.skew = skew;
  o.seed = seed;
  o.rows_per_step = rows_per_step;
  return zipf_trace(o)[0];
}

ModelConfig model_of(const LoadMatrix& load) {
  ModelConfig m;
  m.hidden_size = 8;
  m.layers = load.rows();
  StageConfig st;
  st.experts = load.experts;
  st.ffn_hidden_size = 8;
  m.layer.stages.push_back(st);
  return m;
}

// Every invariant the issue states for a plan of `load` on G workers, K slots each.
void expect_valid(const PlanResult& res, const LoadMatrix& load, int G, int K) {
  ASSERT_NO_THROW(res.placement.validate(model_of(load), G));
  for (int r = 0; r < load.rows(); ++r) {
    std::vector<int> per(static_cast<size_t>(G), 0);
    for (int e = 0; e < load.row_experts[static_cast<size_t>(r)]; ++e) {
      const ExpertKey key{load.layer[static_cast<size_t>(r)], load.stage[static_cast<size_t>(r)], e};
      const auto& ws = res.placement.workers_for(key);
      EXPECT_EQ(std::set<int>(ws.begin(), ws.end()).size(), ws.size()) << key.to_string();
      for (int w : ws) ++per[static_cast<size_t>(w)];
      if (auto it = res.placement.shares.find(key); it != res.placement.shares.end()) {
        EXPECT_NO_THROW(check_shares(key, it->second, ws.size()));
      }
    }
    for (int w = 0; w < G; ++w) EXPECT_LE(per[static_cast<size_t>(w)], K) << "row " << r << " worker " << w;
  }
  EXPECT_NEAR(res.balancedness, placement_balancedness(res.placement, load, G), 1e-12);
  EXPECT_LE(res.balancedness, res.bound + 1e-9);
  EXPECT_GT(res.balancedness, 0);
}

TEST(Planner, RandomLoadsKeepEveryInvariant) {
  uint64_t seed = 1;
  for (int E : {3, 16, 40})
    for (int G : {1, 4, 8})
      for (int K : {1, 2, 5}) {
        if (K * G < E) continue;
        for (double skew : {0.0, 0.8, 1.6}) {
          const LoadMatrix load = zipf(3, E, skew, ++seed);
          for (int N : {1, 2}) {
            if (G % N) continue;
            PlannerOptions o;
            o.workers = G;
            o.slots_per_worker = K;
            o.nodes = N;
            SCOPED_TRACE("E " + std::to_string(E) + " G " + std::to_string(G) + " K " + std::to_string(K) + " N " + std::to_string(N));
            expect_valid(plan_placement(load, o), load, G, K);
          }
        }
      }
}

TEST(Planner, ZeroRowsAndZeroExpertsArePlaced) {
  LoadMatrix load = load_matrix_rows(2, 6);
  load.counts[6 + 2] = 100;  // row 1: one expert has every row
  PlannerOptions o;
  o.workers = 3;
  o.slots_per_worker = 3;
  const PlanResult res = plan_placement(load, o);
  expect_valid(res, load, 3, 3);
  EXPECT_NEAR(res.balancedness, 1.0, 1e-9);  // the hot expert split in thirds over 3 workers
  EXPECT_NEAR(res.bound, 1.0, 1e-12);
}

TEST(Planner, BoundIsTightOnAnEasyLoadAndAboveEveryBaseline) {
  const LoadMatrix load = zipf(4, 64, 1.0, 7);
  PlannerOptions o;
  o.workers = 16;
  o.slots_per_worker = 8;
  const PlanResult res = plan_placement(load, o);
  EXPECT_GE(res.balancedness, 0.97 * res.bound);
  for (const Placement& p : {round_robin_placement(load, 16), greedy_placement(load, 16, 8), hierarchical_placement(load, 16, 8, 4)})
    EXPECT_LE(placement_balancedness(p, load, 16), res.bound + 1e-9);
}

TEST(Planner, BeatsTheGreedyBaselineOnZipfLoads) {
  uint64_t seed = 100;
  for (int E : {64, 256})
    for (int K : {4, 8})
      for (double skew : {0.6, 1.0, 1.4}) {
        const int G = 32;
        if (K * G < E) continue;
        const LoadMatrix load = zipf(2, E, skew, ++seed);
        PlannerOptions o;
        o.workers = G;
        o.slots_per_worker = K;
        const double planner = plan_placement(load, o).balancedness;
        const double greedy = placement_balancedness(greedy_placement(load, G, K), load, G);
        EXPECT_GE(planner, greedy - 1e-9) << "E " << E << " K " << K << " s " << skew;
      }
}

TEST(Planner, KeepsAGoodCurrentPlacementWithoutMoves) {
  const LoadMatrix load = zipf(3, 64, 1.2, 11);
  PlannerOptions o;
  o.workers = 16;
  o.slots_per_worker = 6;
  const PlanResult first = plan_placement(load, o);
  o.current = &first.placement;
  o.replica_bytes = {10, 20, 30};
  const PlanResult again = plan_placement(load, o);
  EXPECT_EQ(again.moved_replicas, 0);
  EXPECT_EQ(again.moved_bytes, 0);
  EXPECT_GE(again.balancedness, first.balancedness - 1e-6);
  expect_valid(again, load, 16, 6);
  // Without a current placement every replica counts as moved.
  o.current = nullptr;
  const PlanResult fresh = plan_placement(load, o);
  int64_t replicas = 0;
  for (const auto& [k, ws] : fresh.placement.replicas) replicas += static_cast<int64_t>(ws.size());
  EXPECT_EQ(fresh.moved_replicas, replicas);
}

TEST(Planner, ShiftsSharesBeforeMovingReplicas) {
  // A placement of the old load; the new load changes which experts are hot.
  const LoadMatrix old_load = zipf(2, 32, 1.0, 21), new_load = zipf(2, 32, 1.0, 22);
  PlannerOptions o;
  o.workers = 8;
  o.slots_per_worker = 8;
  const PlanResult old_plan = plan_placement(old_load, o);
  const double stale = placement_balancedness(old_plan.placement, new_load, 8);
  o.current = &old_plan.placement;
  const PlanResult re = plan_placement(new_load, o);
  expect_valid(re, new_load, 8, 8);
  EXPECT_GT(re.balancedness, stale);
  o.current = nullptr;
  const PlanResult fresh = plan_placement(new_load, o);
  EXPECT_LT(re.moved_replicas, fresh.moved_replicas);
  EXPECT_GE(re.balancedness, fresh.balancedness * (1 - 0.006));
}

TEST(Planner, RespectsMaxMoves) {
  const LoadMatrix old_load = zipf(4, 64, 1.2, 31), new_load = zipf(4, 64, 1.2, 32);
  PlannerOptions o;
  o.workers = 16;
  o.slots_per_worker = 6;
  const Placement rr = round_robin_placement(old_load, 16);
  o.current = &rr;
  double last = 0;
  for (int cap : {0, 3, 20, 200}) {
    o.max_moves = cap;
    const PlanResult res = plan_placement(new_load, o);
    expect_valid(res, new_load, 16, 6);
    EXPECT_LE(res.moved_replicas, cap);
    EXPECT_GE(res.balancedness, last - 1e-9) << cap;
    last = res.balancedness;
  }
}

TEST(Planner, NodesKeepReplicasInsideANodeWhereBalanceAllows) {
  const LoadMatrix mild = zipf(2, 64, 0.3, 41), hot = zipf(2, 64, 2.0, 42);
  PlannerOptions o;
  o.workers = 16;
  o.slots_per_worker = 8;
  o.nodes = 4;
  const PlanResult a = plan_placement(mild, o);
  expect_valid(a, mild, 16, 8);
  EXPECT_LT(a.cross_node_fraction, 0.2);
  const PlanResult b = plan_placement(hot, o);  // the top expert alone exceeds a node's mean
  expect_valid(b, hot, 16, 8);
  EXPECT_GT(b.cross_node_fraction, 0.0);
  EXPECT_GE(b.balancedness, 0.95 * b.bound);
  EXPECT_GE(b.balancedness, placement_balancedness(hierarchical_placement(hot, 16, 8, 4), hot, 16));
}

// Fault tolerance: with min_replicas 2 every expert is on two distinct workers (and, with
// nodes, two nodes), so any single worker (or node) loss leaves it a replica; the standbys the
// balance did not ask for get share 0, so the planned balancedness is unchanged.
TEST(Planner, MinReplicasSpreadsEveryExpertOverWorkersAndNodes) {
  const LoadMatrix hot = zipf(2, 16, 1.5, 43);
  PlannerOptions o;
  o.workers = 8;
  o.slots_per_worker = 6;
  const PlanResult plain = plan_placement(hot, o);
  o.min_replicas = 2;
  const PlanResult spread = plan_placement(hot, o);
  EXPECT_NEAR(spread.balancedness, plain.balancedness, 1e-12);
  o.nodes = 2;
  const PlanResult by_node = plan_placement(hot, o);
  for (const PlanResult* res : {&spread, &by_node})
    for (const auto& [key, ws] : res->placement.replicas) {
      ASSERT_GE(ws.size(), 2u) << key.to_string();
      EXPECT_EQ(std::set<int>(ws.begin(), ws.end()).size(), ws.size()) << key.to_string();
      EXPECT_NO_THROW(check_shares(key, res->placement.shares_of(key), ws.size()));
      for (int dead = 0; dead < 8; ++dead)  // any one worker lost: a replica with rows or a standby
        EXPECT_TRUE(std::any_of(ws.begin(), ws.end(), [&](int w) { return w != dead; })) << key.to_string();
      if (res == &by_node) {
        std::set<int> nodes;
        for (int w : ws) nodes.insert(w / 4);
        EXPECT_GE(nodes.size(), 2u) << key.to_string() << " on one node";
      }
    }
  o.min_replicas = 9;
  EXPECT_THROW(plan_placement(hot, o), Error);
}

TEST(Planner, IsDeterministic) {
  const LoadMatrix load = zipf(3, 128, 1.1, 51);
  PlannerOptions o;
  o.workers = 32;
  o.slots_per_worker = 8;
  o.nodes = 4;
  const PlanResult a = plan_placement(load, o), b = plan_placement(load, o);
  EXPECT_EQ(a.placement.replicas, b.placement.replicas);
  EXPECT_EQ(a.placement.shares, b.placement.shares);
  EXPECT_EQ(placement_to_yaml(a.placement), placement_to_yaml(b.placement));
}

std::string error_of(const LoadMatrix& load, const PlannerOptions& o) {
  try {
    plan_placement(load, o);
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::input);
    EXPECT_EQ(e.exit_code(), 3);
    return e.what();
  }
  return "";
}

TEST(Planner, BadInputNamesWhatIsWrong) {
  LoadMatrix load = zipf(2, 8, 1.0, 61);
  PlannerOptions o;
  o.workers = 4;
  o.slots_per_worker = 1;
  EXPECT_NE(error_of(load, o).find("more than the 4 slots"), std::string::npos);
  o.slots_per_worker = 2;
  o.nodes = 3;
  EXPECT_NE(error_of(load, o).find("divide"), std::string::npos);
  o.nodes = 1;
  o.replica_bytes = {1};
  EXPECT_NE(error_of(load, o).find("replica_bytes"), std::string::npos);
  o.replica_bytes.clear();
  LoadMatrix bad = load;
  bad.counts[3] = -1;
  EXPECT_NE(error_of(bad, o).find("row 0 expert 3"), std::string::npos);
  bad.counts[3] = std::nan("");
  EXPECT_NE(error_of(bad, o).find("row 0 expert 3"), std::string::npos);
  bad = load;
  bad.counts.pop_back();
  EXPECT_NE(error_of(bad, o).find("counts for 2 rows"), std::string::npos);
  Placement cur = round_robin_placement(load, 4);
  cur.replicas[{0, 0, 1}] = {7};
  o.current = &cur;
  EXPECT_NE(error_of(load, o).find("worker 7"), std::string::npos);
  cur = round_robin_placement(load, 4);
  cur.replicas[{5, 0, 1}] = {0};
  EXPECT_NE(error_of(load, o).find("layers.5.stages.0.experts.1"), std::string::npos);
  cur = round_robin_placement(load, 4);
  cur.replicas.erase({1, 0, 2});
  EXPECT_NE(error_of(load, o).find("does not place"), std::string::npos);
}

class Trace : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("sy_trace_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string path(const std::string& n) const { return (dir_ / n).string(); }
  // A hand-made .npy with the given header dict and raw data.
  std::string npy(const std::string& name, const std::string& dict, const std::string& data) const {
    std::string h = dict;
    while ((10 + h.size() + 1) % 64) h += ' ';
    h += '\n';
    std::string out = "\x93NUMPY\x01";
    out += '\0';
    out += static_cast<char>(h.size());
    out += '\0';
    std::ofstream(path(name), std::ios::binary) << out << h << data;
    return path(name);
  }
  fs::path dir_;
};

template <typename T>
std::string raw(std::vector<T> v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}

std::string read_error(const std::string& p, const ModelConfig* m = nullptr) {
  try {
    read_load_trace(p, m);
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::input);
    return e.what();
  }
  return "";
}

TEST_F(Trace, RoundTripsAndSumsSteps) {
  const LoadMatrix load = zipf(3, 5, 1.0, 71);
  write_load_trace(path("a.npy"), load);
  const LoadMatrix back = read_load_trace(path("a.npy"), nullptr);
  EXPECT_EQ(back.counts, load.counts);
  EXPECT_EQ(back.layer, (std::vector<int>{0, 1, 2}));
  ZipfTraceOptions z;
  z.rows = 2;
  z.experts = 4;
  z.steps = 3;
  z.drift = 0.5;
  const auto steps = zipf_trace(z);
  write_load_trace_steps(path("s.npy"), steps);
  EXPECT_EQ(read_load_trace_steps(path("s.npy"), nullptr).size(), 3u);
  EXPECT_EQ(read_load_trace(path("s.npy"), nullptr).counts, sum_steps(steps, 0, 3).counts);
}

TEST_F(Trace, ReadsEveryDtype) {
  const std::string d = "'fortran_order': False, 'shape': (1, 3), }";
  EXPECT_EQ(read_load_trace(npy("f4.npy", "{'descr': '<f4', " + d, raw<float>({1, 2, 3})), nullptr).counts, (std::vector<double>{1, 2, 3}));
  EXPECT_EQ(read_load_trace(npy("i4.npy", "{'descr': '<i4', " + d, raw<int32_t>({4, 0, 3})), nullptr).counts, (std::vector<double>{4, 0, 3}));
  EXPECT_EQ(read_load_trace(npy("i8.npy", "{'descr': '<i8', " + d, raw<int64_t>({4, 5, 3})), nullptr).counts, (std::vector<double>{4, 5, 3}));
  EXPECT_EQ(read_load_trace(npy("u4.npy", "{'descr': '<u4', " + d, raw<uint32_t>({7, 5, 3})), nullptr).counts, (std::vector<double>{7, 5, 3}));
  EXPECT_EQ(read_load_trace(npy("u8.npy", "{'descr': '<u8', " + d, raw<uint64_t>({7, 5, 9})), nullptr).counts, (std::vector<double>{7, 5, 9}));
}

TEST_F(Trace, ErrorsNameTheFileAndTheProblem) {
  const std::string d = "'fortran_order': False, 'shape': ";
  std::string e = read_error(npy("neg.npy", "{'descr': '<i4', " + d + "(1, 3), }", raw<int32_t>({1, -2, 3})));
  EXPECT_NE(e.find("neg.npy"), std::string::npos) << e;
  EXPECT_NE(e.find("[0, 1] is negative"), std::string::npos) << e;
  e = read_error(npy("nan.npy", "{'descr': '<f8', " + d + "(1, 2), }", raw<double>({1, std::nan("")})));
  EXPECT_NE(e.find("not finite"), std::string::npos) << e;
  e = read_error(npy("dim.npy", "{'descr': '<f8', " + d + "(2,), }", raw<double>({1, 2})));
  EXPECT_NE(e.find("1 dimensions"), std::string::npos) << e;
  e = read_error(npy("dt.npy", "{'descr': '<f2', " + d + "(1, 2), }", "abcd"));
  EXPECT_NE(e.find("'<f2' is not supported"), std::string::npos) << e;
  e = read_error(npy("short.npy", "{'descr': '<f8', " + d + "(2, 2), }", raw<double>({1, 2, 3})));
  EXPECT_NE(e.find("truncated"), std::string::npos) << e;
  e = read_error(npy("f.npy", "{'descr': '<f8', 'fortran_order': True, 'shape': (1, 1), }", raw<double>({1})));
  EXPECT_NE(e.find("Fortran"), std::string::npos) << e;
  e = read_error(path("missing.npy"));
  EXPECT_NE(e.find("missing.npy"), std::string::npos) << e;
}

TEST_F(Trace, ChecksRowsAgainstAModel) {
  ModelConfig m;
  m.hidden_size = 8;
  m.layers = 2;
  StageConfig a, b;
  a.experts = 4;
  b.experts = 2;
  m.layer.stages = {a, b};
  const LoadMatrix zero = load_matrix_rows(m);
  EXPECT_EQ(zero.rows(), 4);
  EXPECT_EQ(zero.experts, 4);
  EXPECT_EQ(zero.stage, (std::vector<int>{0, 1, 0, 1}));
  EXPECT_EQ(zero.row_experts, (std::vector<int>{4, 2, 4, 2}));
  LoadMatrix ok = zero;
  ok.counts[0] = 5;
  ok.counts[4 + 1] = 2;
  write_load_trace(path("ok.npy"), ok);
  EXPECT_EQ(read_load_trace(path("ok.npy"), &m).counts, ok.counts);
  LoadMatrix wide = load_matrix_rows(4, 4);
  wide.counts[4 + 3] = 1;  // stage 1 has only 2 experts
  write_load_trace(path("wide.npy"), wide);
  EXPECT_NE(read_error(path("wide.npy"), &m).find("only 2 experts"), std::string::npos);
  write_load_trace(path("rows.npy"), load_matrix_rows(3, 4));
  EXPECT_NE(read_error(path("rows.npy"), &m).find("has 3 rows, the model has 4"), std::string::npos);
  write_load_trace(path("narrow.npy"), load_matrix_rows(4, 3));
  EXPECT_NE(read_error(path("narrow.npy"), &m).find("widest stage has 4"), std::string::npos);
}

TEST(Simulate, PerfectBalanceOnOneNodeIsIdeal) {
  LoadMatrix load = load_matrix_rows(1, 4);
  load.counts = {100, 100, 100, 100};
  Placement p = round_robin_placement(load, 4);
  const SimResult one = simulate_placement(p, load, 4, 1, CostModel{});
  EXPECT_NEAR(one.step_ms, one.ideal_step_ms, 1e-9);
  EXPECT_EQ(one.inter_node_fraction, 0.0);
  const SimResult two = simulate_placement(p, load, 4, 2, CostModel{});
  EXPECT_NEAR(two.inter_node_fraction, 0.5, 1e-12);
  EXPECT_GT(two.step_ms, two.ideal_step_ms);
  load.counts = {400, 0, 0, 0};
  EXPECT_NEAR(simulate_placement(p, load, 4, 1, CostModel{}).balancedness, 0.25, 1e-12);
}

}  // namespace
}  // namespace sy
