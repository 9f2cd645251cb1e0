// Placement YAML: reading (with errors naming file, line and entry) and writing.
#include <yaml-cpp/yaml.h>

#include <cerrno>
#include <cmath>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "switchyard/core/error.h"
#include "switchyard/placement/placement.h"
#include "switchyard/core/yaml_text.h"

namespace sy {
namespace {

int line_of(const YAML::Node& node, int fallback) { return yaml_line(node.Mark(), fallback); }

std::string describe(const YAML::Node& n) { return describe_yaml_value(n); }

class PlacementReader {
 public:
  PlacementReader(std::string source, const ModelConfig& model, int workers)
      : source_(std::move(source)), model_(model), workers_(workers) {}

  [[noreturn]] void fail(int line, const std::string& where, const std::string& message) const {
    throw_config_error(source_ + ":" + std::to_string(line) + ": " + where + ": " + message);
  }

  // Map keys as (key, key line, value), rejecting non-scalar, duplicate and unknown keys: the
  // config schema's reader (core/yaml_text.h).
  using Entry = YamlEntry;
  std::vector<Entry> entries(const YAML::Node& map, const std::string& where, int line,
                             const std::vector<std::string_view>& known) const {
    return yaml_map_entries(map, where, line, known,
                            [this](int l, const std::string& w, const std::string& m) { fail(l, w, m); });
  }

  int integer(const YAML::Node& n, int line, const std::string& where) const {
    if (!n.IsScalar() || n.Tag() == "!") fail(line, where, "expected an integer, got " + describe(n));
    int v = 0;
    if (parse_yaml_int(n.Scalar(), v) != YamlInt::ok) fail(line, where, "expected an integer, got " + describe(n));
    return v;
  }

  Placement read(const YAML::Node& root) const {
    const Entry list = expert_list(root);
    Placement p;
    std::map<ExpertKey, std::pair<std::string, int>> placed_by;  // key → (entry, line)
    for (std::size_t i = 0; i < list.value.size(); ++i) {
      const std::string where = "placement.experts[" + std::to_string(i) + "]";
      const int line = line_of(list.value[i], list.line);
      const PlacedExperts e = read_entry(list.value[i], where, line);
      for (int x = e.first; x <= e.last; ++x) {
        const ExpertKey key{e.layer, e.stage, x};
        const auto [it, fresh] = placed_by.try_emplace(key, where, line);
        if (!fresh) {
          fail(line, where,
               key.to_string() + " is already placed by " + it->second.first + " (line " +
                   std::to_string(it->second.second) + "); list each expert once, with all its workers");
        }
        p.replicas[key] = e.workers;
        if (!e.shares.empty()) p.shares[key] = e.shares;
      }
    }
    check_every_expert_placed(p, list.line);
    return p;
  }

 private:
  // What one entry of placement.experts says: experts first..last of (layer, stage) on workers.
  struct PlacedExperts {
    int layer = 0, stage = 0, first = 0, last = 0;
    std::vector<int> workers;
    std::vector<double> shares;  // empty: even
  };

  // `placement.experts`: the top-level map, its one key, and a non-empty list.
  Entry expert_list(const YAML::Node& root) const {
    if (!root.IsMap()) fail(root.IsNull() ? 1 : line_of(root, 1), "(top level)", "expected a map with a `placement:` key, got " + describe(root));
    const std::vector<Entry> top = entries(root, "(top level)", 1, {"placement"});
    if (top.empty()) fail(line_of(root, 1), "placement", "required setting is missing");
    const Entry& pe = top[0];
    if (!pe.value.IsMap()) fail(pe.line, "placement", "expected a map, got " + describe(pe.value));
    const std::vector<Entry> body = entries(pe.value, "placement", pe.line, {"experts"});
    if (body.empty()) fail(line_of(pe.value, pe.line), "placement.experts", "required setting is missing");
    const Entry& list = body[0];
    if (!list.value.IsSequence() || list.value.size() == 0) {
      fail(list.line, "placement.experts",
           "expected a non-empty list of entries, got " + (list.value.IsSequence() ? std::string("an empty list") : describe(list.value)));
    }
    return list;
  }

  PlacedExperts read_entry(const YAML::Node& item, const std::string& where, int line) const {
    if (!item.IsMap()) fail(line, where, "expected a map {layer, stage, expert(s), workers}, got " + describe(item));
    const std::vector<Entry> keys = entries(item, where, line, {"layer", "stage", "expert", "experts", "workers", "shares"});
    const auto find = [&](std::string_view k) -> const Entry* {
      for (const Entry& e : keys)
        if (e.key == k) return &e;
      return nullptr;
    };
    const Entry* layer_e = find("layer");
    const Entry* stage_e = find("stage");
    const Entry* expert_e = find("expert");
    const Entry* experts_e = find("experts");
    const Entry* workers_e = find("workers");
    if (!layer_e) fail(line, where + ".layer", "required setting is missing");
    if (!stage_e) fail(line, where + ".stage", "required setting is missing");
    if (!workers_e) fail(line, where + ".workers", "required setting is missing");
    if (!expert_e && !experts_e) fail(line, where, "needs `expert: i` or `experts: \"a-b\"`");
    if (expert_e && experts_e) fail(experts_e->line, where + ".experts", "give either `expert` or `experts`, not both");

    PlacedExperts out;
    out.layer = integer(layer_e->value, layer_e->line, where + ".layer");
    if (out.layer < 0 || out.layer >= model_.layers) {
      fail(layer_e->line, where + ".layer",
           std::to_string(out.layer) + " does not exist; the model has layers 0.." + std::to_string(model_.layers - 1));
    }
    const int stages = static_cast<int>(model_.layer.stages.size());
    out.stage = integer(stage_e->value, stage_e->line, where + ".stage");
    if (out.stage < 0 || out.stage >= stages) {
      fail(stage_e->line, where + ".stage",
           std::to_string(out.stage) + " does not exist; the model has stages 0.." + std::to_string(stages - 1));
    }
    expert_range(out, expert_e, experts_e, where);
    out.workers = worker_ids(*workers_e, where + ".workers");
    if (const Entry* shares_e = find("shares")) out.shares = shares(*shares_e, out.workers.size(), where + ".shares");
    return out;
  }

  // `expert: i`, or `experts:` as an index, "a-b" (inclusive) or all, inside the stage's experts.
  void expert_range(PlacedExperts& out, const Entry* expert_e, const Entry* experts_e, const std::string& where) const {
    const int experts = model_.layer.stages[static_cast<size_t>(out.stage)].experts;
    const std::string range_text = "; stage " + std::to_string(out.stage) + " has experts 0.." + std::to_string(experts - 1);
    if (expert_e) {
      out.first = out.last = integer(expert_e->value, expert_e->line, where + ".expert");
      if (out.first < 0 || out.first >= experts)
        fail(expert_e->line, where + ".expert", std::to_string(out.first) + " does not exist" + range_text);
      return;
    }
    const YAML::Node& v = experts_e->value;
    const std::string ewhere = where + ".experts";
    if (!v.IsScalar()) fail(experts_e->line, ewhere, "expected an index, \"a-b\" or all, got " + describe(v));
    const std::string& t = v.Scalar();
    if (t == "all") {
      out.first = 0;
      out.last = experts - 1;
      return;
    }
    const auto dash = t.find('-', 1);
    const auto parse = [&](std::string_view part) {
      int x = 0;
      const auto r = std::from_chars(part.data(), part.data() + part.size(), x);
      if (r.ec != std::errc() || r.ptr != part.data() + part.size() || part.empty())
        fail(experts_e->line, ewhere, "expected an index, \"a-b\" or all, got " + describe(v));
      return x;
    };
    const std::string_view sv(t);
    out.first = parse(sv.substr(0, dash));
    out.last = dash == std::string::npos ? out.first : parse(sv.substr(dash + 1));
    if (out.first > out.last) fail(experts_e->line, ewhere, "range \"" + t + "\" is empty (start after end)");
    if (out.first < 0 || out.last >= experts)
      fail(experts_e->line, ewhere, "range \"" + t + "\" goes past the model's experts" + range_text);
  }

  // A non-empty list of distinct worker ids of the cluster.
  std::vector<int> worker_ids(const Entry& workers_e, const std::string& wwhere) const {
    const YAML::Node& wv = workers_e.value;
    if (!wv.IsSequence() || wv.size() == 0) {
      fail(workers_e.line, wwhere,
           "expected a non-empty list of worker ids, got " + (wv.IsSequence() ? std::string("an empty list") : describe(wv)));
    }
    std::vector<int> ids;
    for (std::size_t j = 0; j < wv.size(); ++j) {
      const int id = integer(wv[j], line_of(wv[j], workers_e.line), wwhere);
      if (id < 0 || id >= workers_) {
        fail(line_of(wv[j], workers_e.line), wwhere,
             "worker " + std::to_string(id) + " does not exist (workers 0.." + std::to_string(workers_ - 1) + ")");
      }
      for (int seen : ids)
        if (seen == id) fail(line_of(wv[j], workers_e.line), wwhere, "worker " + std::to_string(id) + " listed twice");
      ids.push_back(id);
    }
    return ids;
  }

  // One number >= 0 per worker of the entry, summing to 1 within 1e-6.
  std::vector<double> shares(const Entry& e, size_t workers, const std::string& where) const {
    const YAML::Node& v = e.value;
    if (!v.IsSequence() || v.size() != workers)
      fail(e.line, where, "expected a list of " + std::to_string(workers) + " numbers (one per worker), got " + describe(v));
    std::vector<double> out;
    double sum = 0;
    for (std::size_t j = 0; j < v.size(); ++j) {
      double x = -1;
      const bool number = v[j].IsScalar() && v[j].Tag() != "!" && parse_yaml_double(v[j].Scalar(), x);
      if (!number || !(x >= 0.0) || !std::isfinite(x))
        fail(line_of(v[j], e.line), where, "expected a number >= 0, got " + describe(v[j]));
      out.push_back(x);
      sum += x;
    }
    if (std::fabs(sum - 1.0) > 1e-6) fail(e.line, where, "the shares sum to " + std::to_string(sum) + ", not 1");
    return out;
  }

  void check_every_expert_placed(const Placement& p, int list_line) const {
    for (int l = 0; l < model_.layers; ++l)
      for (int s = 0; s < static_cast<int>(model_.layer.stages.size()); ++s)
        for (int e = 0; e < model_.layer.stages[static_cast<size_t>(s)].experts; ++e) {
          const ExpertKey key{l, s, e};
          if (!p.replicas.count(key)) {
            fail(list_line, "placement.experts",
                 "expert " + key.to_string() + " (layer " + std::to_string(l) + ", stage " + std::to_string(s) +
                     ", expert " + std::to_string(e) + ") is not placed; every expert of the model needs a worker");
          }
        }
  }

  std::string source_;
  const ModelConfig& model_;
  int workers_;
};

}  // namespace

Placement parse_placement(const std::string& yaml_text, const std::string& source, const ModelConfig& model,
                          int workers, int64_t worker_memory_bytes) {
  if (workers < 1) throw_config_error(source + ": placement needs at least one worker, got " + std::to_string(workers));
  YamlDocuments docs;
  try {
    docs = yaml_load_documents(yaml_text);
  } catch (const YAML::Exception& e) {
    throw_config_error(source + ":" + std::to_string(e.mark.line >= 0 ? e.mark.line + 1 : 1) +
                       ": YAML syntax error: " + e.msg);
  }
  const PlacementReader reader(source, model, workers);
  if (docs.count > 1)
    reader.fail(yaml_line(docs.second, 1), "(top level)", "expected one YAML document, found " + std::to_string(docs.count));
  Placement p;
  try {
    p = reader.read(docs.first);
  } catch (const YAML::Exception& e) {  // not expected: only non-throwing accessors are used
    throw_config_error(source + ":" + std::to_string(e.mark.line >= 0 ? e.mark.line + 1 : 1) + ": " + e.msg);
  }
  p.validate(model, workers);  // the invariants again, through the one shared check
  check_worker_memory(p, model, workers, worker_memory_bytes, source);
  return p;
}

Placement load_placement(const std::string& path, const ModelConfig& model, int workers, int64_t worker_memory_bytes) {
  return parse_placement(read_yaml_file(path, "placement file"), path, model, workers, worker_memory_bytes);
}

std::string placement_to_yaml(const Placement& placement) {
  std::string out = "# placement epoch " + std::to_string(placement.epoch) + "\nplacement:\n  experts:\n";
  for (const auto& [key, list] : placement.replicas) {
    out += "    - {layer: " + std::to_string(key.layer) + ", stage: " + std::to_string(key.stage) +
           ", expert: " + std::to_string(key.expert) + ", workers: [";
    for (std::size_t i = 0; i < list.size(); ++i) out += (i ? ", " : "") + std::to_string(list[i]);
    out += "]";
    if (auto it = placement.shares.find(key); it != placement.shares.end()) {
      out += ", shares: [";
      for (std::size_t i = 0; i < it->second.size(); ++i) {
        char buf[32];
        std::snprintf(buf, sizeof buf, "%.17g", it->second[i]);
        out += (i ? ", " : "") + std::string(buf);
      }
      out += "]";
    }
    out += "}\n";
  }
  return out;
}

}  // namespace sy
