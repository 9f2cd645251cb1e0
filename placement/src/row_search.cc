#include "row_search.h"

#include <algorithm>
#include <cmath>
#include <deque>
#include <limits>
#include <numeric>
#include <queue>
#include <stdexcept>

namespace sy::planner_detail {

std::vector<int> replica_counts(const std::vector<double>& load, int workers, int64_t slots, double stop_at,
                                double* max_ratio) {
  const int n = static_cast<int>(load.size());
  std::vector<int> count(static_cast<size_t>(n), 1);
  std::priority_queue<std::pair<double, int>> queue;  // (load / count, -expert): ties to the lowest index
  for (int e = 0; e < n; ++e) queue.push({load[static_cast<size_t>(e)], -e});
  for (int64_t spare = slots - n; spare > 0 && !queue.empty();) {
    const auto [ratio, neg] = queue.top();
    if (ratio <= stop_at) break;
    queue.pop();
    const size_t e = static_cast<size_t>(-neg);
    if (count[e] >= workers) continue;  // on every worker already
    ++count[e];
    --spare;
    queue.push({load[e] / count[e], neg});
  }
  double worst = 0;
  for (int e = 0; e < n; ++e) worst = std::max(worst, load[static_cast<size_t>(e)] / count[static_cast<size_t>(e)]);
  if (max_ratio) *max_ratio = worst;
  return count;
}

// Lower bound of the max worker load of any placement of this row (proof sketch):
//  (a) the G workers share the row's total, so one of them gets >= total / G;
//  (b) an expert with r_e replicas sits on r_e distinct workers, so one of them gets
//      >= L_e / r_e whatever the shares; the counts are limited by the slots
//      (Σ r_e <= K·G, r_e >= 1) and by r_e <= G, so max_w load >= min over such counts of
//      max_e L_e / r_e. Giving each extra slot to the expert with the largest L_e / r_e
//      minimizes that max (an exchange argument: any count vector whose max is lower must
//      give the current argmax one more replica, which the greedy does first).
// Hence max_w load >= max(total / G, that min) for every placement, and balancedness
// (Σ mean / Σ max) is at most Σ mean / Σ bound.
double row_bound(const std::vector<double>& load, int workers, int slots_per_worker) {
  const double total = std::accumulate(load.begin(), load.end(), 0.0);
  const double mean = total / workers;
  double worst = 0;
  replica_counts(load, workers, int64_t{slots_per_worker} * workers, mean, &worst);
  return std::max(mean, worst);
}

RowSearch::RowSearch(std::vector<double> load, int workers, int slots_per_worker, int node_size)
    : load_(std::move(load)), workers_(workers), slots_(slots_per_worker), node_size_(node_size > 0 ? node_size : workers) {
  const size_t n = load_.size(), g = static_cast<size_t>(workers);
  plan_.holders.resize(n);
  plan_.pieces.resize(n);
  load_of_.assign(g, 0.0);
  used_.assign(g, 0);
  held_.resize(g);
  hop_.resize(g);
  stamp_.assign(g, 0);
  free_by_node_.resize(static_cast<size_t>(workers / node_size_));
  for (int w = 0; w < workers; ++w) {
    by_load_.insert({0.0, w});
    free_by_load_.insert({0.0, w});
    free_by_node_[static_cast<size_t>(w / node_size_)].insert({0.0, w});
  }
}

void RowSearch::set_load(int w, double v) {
  const size_t i = static_cast<size_t>(w);
  const std::pair<double, int> old{load_of_[i], w};
  auto& node_free = free_by_node_[i / static_cast<size_t>(node_size_)];
  by_load_.erase(old);
  free_by_load_.erase(old);
  node_free.erase(old);
  load_of_[i] = v;
  by_load_.insert({v, w});
  if (used_[i] < slots_) {
    free_by_load_.insert({v, w});
    node_free.insert({v, w});
  }
}

void RowSearch::add_replica(int e, int w, double piece) {
  const size_t i = static_cast<size_t>(w);
  plan_.holders[static_cast<size_t>(e)].push_back(w);
  plan_.pieces[static_cast<size_t>(e)].push_back(piece);
  held_[i].push_back(e);
  ++used_[i];
  set_load(w, load_of_[i] + piece);
}

void RowSearch::drop_replica(int e, size_t k) {
  auto& hs = plan_.holders[static_cast<size_t>(e)];
  auto& ps = plan_.pieces[static_cast<size_t>(e)];
  const int w = hs[k];
  const double piece = ps[k];
  hs.erase(hs.begin() + static_cast<std::ptrdiff_t>(k));
  ps.erase(ps.begin() + static_cast<std::ptrdiff_t>(k));
  auto& h = held_[static_cast<size_t>(w)];
  h.erase(std::find(h.begin(), h.end(), e));
  --used_[static_cast<size_t>(w)];
  set_load(w, load_of_[static_cast<size_t>(w)] - piece);
}

size_t RowSearch::index_of(int e, int w) const {
  const auto& hs = plan_.holders[static_cast<size_t>(e)];
  return static_cast<size_t>(std::find(hs.begin(), hs.end(), w) - hs.begin());
}

bool RowSearch::holds(int w, int e) const {
  const auto& h = held_[static_cast<size_t>(w)];
  return std::find(h.begin(), h.end(), e) != h.end();
}

void RowSearch::pack(const std::vector<int>& counts) {
  std::vector<int> order(load_.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return load_[static_cast<size_t>(a)] > load_[static_cast<size_t>(b)]; });
  std::vector<std::pair<double, int>> chosen;
  for (int e : order) {
    const double amount = load_[static_cast<size_t>(e)];
    chosen.clear();
    if (free_by_load_.empty()) throw std::logic_error("planner: no free slot left while packing");
    for (auto it = free_by_load_.begin(); it != free_by_load_.end() && static_cast<int>(chosen.size()) < counts[static_cast<size_t>(e)]; ++it)
      chosen.push_back(*it);
    // Water level h over the k lightest: Σ_{i<k} (h − l_i) = amount, with h <= l_k.
    size_t k = 1;
    double prefix = chosen[0].first;
    while (k < chosen.size() && (amount + prefix) / static_cast<double>(k) > chosen[k].first) prefix += chosen[k++].first;
    const double level = (amount + prefix) / static_cast<double>(k);
    double left = amount;
    for (size_t i = 0; i < k; ++i) {
      const double piece = i + 1 == k ? left : std::max(0.0, level - chosen[i].first);
      left -= piece;
      add_replica(e, chosen[i].second, piece);
    }
  }
}

bool RowSearch::start_from(const RowPlan& plan) {
  for (size_t e = 0; e < plan.holders.size(); ++e)
    for (size_t i = 0; i < plan.holders[e].size(); ++i) add_replica(static_cast<int>(e), plan.holders[e][i], plan.pieces[e][i]);
  for (int u : used_)
    if (u > slots_) return false;
  return true;
}

RowSearch::Move RowSearch::find_path(int from) {
  constexpr int kVisitLimit = 96, kMaxDepth = 4;
  const double top = load_of_[static_cast<size_t>(from)];
  ++stamp_now_;
  stamp_[static_cast<size_t>(from)] = stamp_now_;
  hop_[static_cast<size_t>(from)] = {-1, -1, std::numeric_limits<double>::infinity(), 0};
  std::deque<int> queue{from};
  Move best;
  int visited = 0;
  while (!queue.empty() && visited < kVisitLimit) {
    const int u = queue.front();
    queue.pop_front();
    const Hop at = hop_[static_cast<size_t>(u)];
    for (int e : held_[static_cast<size_t>(u)]) {
      const double piece = plan_.pieces[static_cast<size_t>(e)][index_of(e, u)];
      if (piece <= 0) continue;
      const double b = std::min(at.bottleneck, piece);
      for (int v : plan_.holders[static_cast<size_t>(e)]) {
        if (stamp_[static_cast<size_t>(v)] == stamp_now_ || visited >= kVisitLimit) continue;
        stamp_[static_cast<size_t>(v)] = stamp_now_;
        hop_[static_cast<size_t>(v)] = {u, e, b, at.depth + 1};
        ++visited;
        const double gain = std::min(b, (top - load_of_[static_cast<size_t>(v)]) / 2);
        if (gain > best.gain) best = {e, v, gain};
        if (at.depth + 1 < kMaxDepth) queue.push_back(v);
      }
    }
  }
  return best;
}

void RowSearch::apply_path(int from, const Move& m) {
  for (int v = m.target; v != from;) {
    const Hop h = hop_[static_cast<size_t>(v)];
    auto& ps = plan_.pieces[static_cast<size_t>(h.expert)];
    const size_t iu = index_of(h.expert, h.prev), iv = index_of(h.expert, v);
    ps[iu] = std::max(0.0, ps[iu] - m.gain);
    ps[iv] += m.gain;
    v = h.prev;
  }
  set_load(from, load_of_[static_cast<size_t>(from)] - m.gain);
  set_load(m.target, load_of_[static_cast<size_t>(m.target)] + m.gain);
  // Replicas the path emptied give their slot back (an expert keeps at least one).
  for (int v = m.target; v != from;) {
    const Hop h = hop_[static_cast<size_t>(v)];
    const size_t iu = index_of(h.expert, h.prev);
    if (plan_.pieces[static_cast<size_t>(h.expert)][iu] <= 0 && plan_.holders[static_cast<size_t>(h.expert)].size() > 1)
      drop_replica(h.expert, iu);
    v = h.prev;
  }
}

int RowSearch::least_loaded_free(const std::set<std::pair<double, int>>& free, int e) const {
  for (const auto& [l, w] : free)
    if (!holds(w, e)) return w;
  return -1;
}

RowSearch::Move RowSearch::find_new_replica(int from, const SearchLimits& limits) const {
  if (free_by_load_.empty()) return {};
  int e = -1;
  double piece = 0;
  for (int x : held_[static_cast<size_t>(from)]) {
    const double p = plan_.pieces[static_cast<size_t>(x)][index_of(x, from)];
    if (p > piece && static_cast<int>(plan_.holders[static_cast<size_t>(x)].size()) < workers_) e = x, piece = p;
  }
  if (e < 0) return {};
  const double top = load_of_[static_cast<size_t>(from)];
  auto gain_on = [&](int w) { return w < 0 ? 0.0 : std::min(piece, (top - load_of_[static_cast<size_t>(w)]) / 2); };
  const int any = least_loaded_free(free_by_load_, e);
  const int near = least_loaded_free(free_by_node_[static_cast<size_t>(from / node_size_)], e);
  int w = near >= 0 && gain_on(near) >= 0.8 * gain_on(any) ? near : any;
  if (w < 0) return {};
  if (limits.current && limits.move_budget) {
    const auto& cur = (*limits.current)[static_cast<size_t>(e)];
    if (!std::binary_search(cur.begin(), cur.end(), w) && *limits.move_budget <= 0) return {};
  }
  return {e, w, gain_on(w)};
}

void RowSearch::improve(const SearchLimits& limits) {
  for (int64_t it = 0; it < limits.max_iterations && !by_load_.empty(); ++it) {
    const int from = by_load_.rbegin()->second;
    const double top = by_load_.rbegin()->first;
    if (top <= limits.stop_level) return;
    const double eps = std::max(1e-12, 1e-7 * top);
    const Move path = find_path(from);
    const Move fresh = find_new_replica(from, limits);
    if (path.gain > eps && path.gain >= 0.5 * fresh.gain) {
      apply_path(from, path);
    } else if (fresh.gain > eps) {
      const size_t i = index_of(fresh.expert, from);
      plan_.pieces[static_cast<size_t>(fresh.expert)][i] -= fresh.gain;
      set_load(from, top - fresh.gain);
      add_replica(fresh.expert, fresh.target, fresh.gain);
      if (limits.current && limits.move_budget) {
        const auto& cur = (*limits.current)[static_cast<size_t>(fresh.expert)];
        if (!std::binary_search(cur.begin(), cur.end(), fresh.target)) --*limits.move_budget;
      }
    } else {
      return;
    }
  }
}

}  // namespace sy::planner_detail
