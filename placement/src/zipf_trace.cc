#include "switchyard/placement/zipf_trace.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "switchyard/core/error.h"
#include "switchyard/placement/load_trace.h"

namespace sy {
namespace {

// splitmix64: small, fast and the same everywhere (std distributions are not).
struct Rng {
  uint64_t s;
  uint64_t next() {
    uint64_t z = (s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }
  double normal() {  // Box–Muller
    const double u = std::max(uniform(), 1e-300), v = uniform();
    return std::sqrt(-2 * std::log(u)) * std::cos(2 * M_PI * v);
  }
};

struct RowState {
  std::vector<int> by_rank;   // expert at each rank
  std::vector<double> walk;   // [E] log-popularity random walk per expert
  double skew;
};

void fill_row(LoadMatrix& m, int r, const RowState& st, double rows_per_step, Rng& rng) {
  const size_t E = st.by_rank.size();
  std::vector<double> p(E);
  for (size_t i = 0; i < E; ++i) {
    const size_t e = static_cast<size_t>(st.by_rank[i]);
    p[e] = std::exp(st.walk[e] - st.skew * std::log(static_cast<double>(i + 1)));
  }
  const double sum = std::accumulate(p.begin(), p.end(), 0.0);
  for (size_t e = 0; e < E; ++e) {
    const double q = p[e] / sum, mu = rows_per_step * q;
    const double c = std::round(mu + std::sqrt(mu * (1 - q)) * rng.normal());
    m.counts[static_cast<size_t>(r) * E + e] = std::max(0.0, c);
  }
}

void drift_row(RowState& st, const ZipfTraceOptions& o, Rng& rng) {
  for (double& w : st.walk) w += o.drift * rng.normal();
  st.skew = std::clamp(st.skew + o.skew_drift * (2 * rng.uniform() - 1), 0.2, 3.0);
}

}  // namespace

std::vector<LoadMatrix> zipf_trace(const ZipfTraceOptions& o) {
  if (o.rows < 1 || o.experts < 1 || o.steps < 1 || !(o.rows_per_step >= 0) || !(o.skew >= 0))
    throw_input_error("zipf trace: need rows, experts, steps >= 1 and rows_per_step, skew >= 0");
  Rng rng{o.seed};
  std::vector<RowState> rows(static_cast<size_t>(o.rows));
  for (RowState& st : rows) {
    st.by_rank.resize(static_cast<size_t>(o.experts));
    std::iota(st.by_rank.begin(), st.by_rank.end(), 0);
    for (size_t i = st.by_rank.size(); i > 1; --i) std::swap(st.by_rank[i - 1], st.by_rank[rng.next() % i]);
    st.walk.assign(st.by_rank.size(), 0.0);
    st.skew = o.skew;
  }
  std::vector<LoadMatrix> steps;
  for (int s = 0; s < o.steps; ++s) {
    LoadMatrix m = load_matrix_rows(o.rows, o.experts);
    for (int r = 0; r < o.rows; ++r) {
      if (s > 0) drift_row(rows[static_cast<size_t>(r)], o, rng);
      fill_row(m, r, rows[static_cast<size_t>(r)], o.rows_per_step, rng);
    }
    steps.push_back(std::move(m));
  }
  return steps;
}

LoadMatrix sum_steps(const std::vector<LoadMatrix>& steps, size_t begin, size_t end) {
  if (begin >= end || end > steps.size()) throw_input_error("sum_steps: empty or out-of-range window");
  LoadMatrix sum = steps[begin];
  for (size_t s = begin + 1; s < end; ++s)
    for (size_t i = 0; i < sum.counts.size(); ++i) sum.counts[i] += steps[s].counts[i];
  return sum;
}

}  // namespace sy
