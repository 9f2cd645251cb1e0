// Private to placement/: one (layer, stage) row of the planner. A row plan lists, per expert,
// the workers holding a replica and the rows planned onto each ("pieces", summing to the
// expert's load). RowSearch keeps the per-worker loads and slot use beside it and improves it
// by local search.
#pragma once

#include <cstddef>
#include <cstdint>
#include <set>
#include <utility>
#include <vector>

namespace sy::planner_detail {

struct RowPlan {
  std::vector<std::vector<int>> holders;   // [E] worker ids (distinct)
  std::vector<std::vector<double>> pieces; // [E] rows planned per holder (sum = the expert's load)
};

// Greedy replica counts: every expert once, then each extra slot (of K·G − E) to the expert
// with the largest load / count (ties: lowest index), never more than G, stopping once that
// ratio is <= `stop_at`. Returns the counts; `*max_ratio` gets the final max load / count.
std::vector<int> replica_counts(const std::vector<double>& load, int workers, int64_t slots, double stop_at,
                                double* max_ratio);

// DeepSeek-EPLB-style replicas (baselines.h "greedy"): every slot used, replicas packed onto
// the lightest worker with room, `per_worker` each. Holders per expert.
std::vector<std::vector<int>> eplb_holders(const std::vector<double>& load, int workers, int per_worker);

// The per-row lower bound of any placement's max worker load (see planner.cc).
double row_bound(const std::vector<double>& load, int workers, int slots_per_worker);

struct SearchLimits {
  double stop_level = 0;       // stop once the max worker load is <= this
  int64_t max_iterations = 0;
  int64_t* move_budget = nullptr;                     // replicas it may add outside `current` (null: any)
  const std::vector<std::vector<int>>* current = nullptr;  // [E] sorted holders of the current placement
};

class RowSearch {
 public:
  // node_size: workers per node (0: one node), so that new replicas can prefer a node.
  RowSearch(std::vector<double> load, int workers, int slots_per_worker, int node_size);
  // Places every expert by descending load on the least loaded workers with a free slot,
  // water-filling its load over `counts[e]` of them (a worker the water does not reach gets
  // no replica).
  void pack(const std::vector<int>& counts);
  // Starts from a given plan (holders and pieces); false when it breaks the slot limit.
  bool start_from(const RowPlan& plan);
  // Augmenting-path share shifts off the most loaded worker, and new replicas on the least
  // loaded worker with a free slot, until no gain, the stop level or the iteration cap.
  void improve(const SearchLimits& limits);

  double max_load() const { return by_load_.empty() ? 0.0 : by_load_.rbegin()->first; }
  const RowPlan& plan() const { return plan_; }
  const std::vector<double>& loads() const { return load_of_; }

 private:
  void set_load(int w, double v);
  void add_replica(int e, int w, double piece);
  void drop_replica(int e, size_t i);
  size_t index_of(int e, int w) const;
  struct Move {
    int expert = -1, target = -1;
    double gain = 0;
  };
  Move find_path(int from);               // BFS over shared experts to a lighter worker
  void apply_path(int from, const Move& m);
  Move find_new_replica(int from, const SearchLimits& limits) const;
  int least_loaded_free(const std::set<std::pair<double, int>>& free, int e) const;
  bool holds(int w, int e) const;

  std::vector<double> load_;       // [E] expert loads
  int workers_, slots_, node_size_;
  RowPlan plan_;
  std::vector<double> load_of_;    // [G]
  std::vector<int> used_;          // [G] slots used
  std::vector<std::vector<int>> held_;  // [G] experts held
  std::set<std::pair<double, int>> by_load_, free_by_load_;
  std::vector<std::set<std::pair<double, int>>> free_by_node_;
  struct Hop {
    int prev = -1, expert = -1;
    double bottleneck = 0;
    int depth = 0;
  };
  std::vector<Hop> hop_;           // BFS bookkeeping, valid where stamp_ == stamp_now_
  std::vector<int> stamp_;
  int stamp_now_ = 0;
};

}  // namespace sy::planner_detail
