// Packing token rows by expert and unpacking them.
#include <cstring>

#include "switchyard/kernels/cpu_ops.h"
#include "parallel.h"

namespace sy::cpu {

DispatchLayout build_dispatch_layout(const Selection& sel) {
  DispatchLayout layout;
  layout.experts = sel.experts;
  layout.expert_offsets.assign(static_cast<size_t>(sel.experts + 1), 0);
  layout.routed.assign(static_cast<size_t>(sel.experts), 0);
  for (int64_t s = 0; s < sel.slots(); ++s) {
    const auto e = static_cast<size_t>(sel.expert[static_cast<size_t>(s)]);
    ++layout.routed[e];
    if (sel.kept[static_cast<size_t>(s)]) ++layout.expert_offsets[e + 1];
  }
  for (int64_t i = 0; i < sel.experts; ++i)
    layout.expert_offsets[static_cast<size_t>(i + 1)] += layout.expert_offsets[static_cast<size_t>(i)];
  const int64_t rows = layout.expert_offsets.back();
  layout.token.resize(static_cast<size_t>(rows));
  layout.slot.resize(static_cast<size_t>(rows));
  std::vector<int64_t> cursor(layout.expert_offsets.begin(), layout.expert_offsets.end() - 1);
  for (int64_t t = 0; t < sel.tokens; ++t) {
    for (int64_t s = sel.offsets[static_cast<size_t>(t)]; s < sel.offsets[static_cast<size_t>(t + 1)]; ++s) {
      if (!sel.kept[static_cast<size_t>(s)]) continue;
      const int64_t r = cursor[static_cast<size_t>(sel.expert[static_cast<size_t>(s)])]++;
      layout.token[static_cast<size_t>(r)] = t;
      layout.slot[static_cast<size_t>(r)] = s;
    }
  }
  return layout;
}

NodeList build_node_list(const Selection& sel, const DispatchLayout& layout) {
  std::vector<int64_t> row_of_slot(static_cast<size_t>(sel.slots()), -1);
  for (int64_t r = 0; r < layout.rows(); ++r) row_of_slot[static_cast<size_t>(layout.slot[static_cast<size_t>(r)])] = r;
  NodeList nodes;
  nodes.offsets.assign(static_cast<size_t>(sel.tokens + 1), 0);
  for (int64_t t = 0; t < sel.tokens; ++t) {
    for (int64_t s = sel.offsets[static_cast<size_t>(t)]; s < sel.offsets[static_cast<size_t>(t + 1)]; ++s) {
      if (!sel.kept[static_cast<size_t>(s)]) continue;
      nodes.row.push_back(row_of_slot[static_cast<size_t>(s)]);
      nodes.slot.push_back(s);
      nodes.gate.push_back(sel.gate[static_cast<size_t>(s)]);
    }
    nodes.offsets[static_cast<size_t>(t + 1)] = static_cast<int64_t>(nodes.row.size());
  }
  return nodes;
}

void gather_rows(const float* src, int64_t d, std::span<const int64_t> index, float* dst) {
  const int64_t n = static_cast<int64_t>(index.size());
#pragma omp parallel for schedule(static) if(worth_threads(n * d))
  for (int64_t r = 0; r < n; ++r)
    std::memcpy(dst + r * d, src + index[static_cast<size_t>(r)] * d, sizeof(float) * static_cast<size_t>(d));
}

void scatter_add_rows(const float* src, int64_t d, std::span<const int64_t> index, float* dst) {
  const int64_t n = static_cast<int64_t>(index.size());
#pragma omp parallel for schedule(static) if(worth_threads(n * d))
  for (int64_t r = 0; r < n; ++r) {
    float* out = dst + index[static_cast<size_t>(r)] * d;
    const float* in = src + r * d;
    for (int64_t k = 0; k < d; ++k) out[k] += in[k];
  }
}

}  // namespace sy::cpu
