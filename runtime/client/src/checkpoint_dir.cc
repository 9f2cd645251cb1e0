#include "checkpoint_dir.h"

#include <fcntl.h>
#include <stdio.h>  // renameat2
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string_view>

#include "switchyard/core/error.h"
#include "switchyard/core/io.h"
#include "switchyard/core/log.h"
#include "switchyard/core/yaml_text.h"

namespace sy::client_detail {
namespace {

namespace fs = std::filesystem;

constexpr std::string_view kFormat = "switchyard.checkpoint";
constexpr int kVersion = 1;

std::optional<uint64_t> parse_u64(std::string_view text) {
  uint64_t v = 0;
  const auto r = std::from_chars(text.data(), text.data() + text.size(), v);
  if (r.ec != std::errc() || r.ptr != text.data() + text.size() || text.empty()) return std::nullopt;
  return v;
}

// S for "step-S" (digits only), else nullopt.
std::optional<uint64_t> step_of_name(std::string_view name) {
  if (!name.starts_with("step-")) return std::nullopt;
  name.remove_prefix(5);
  if (name.empty() || !std::all_of(name.begin(), name.end(), [](char c) { return c >= '0' && c <= '9'; }))
    return std::nullopt;
  return parse_u64(name);
}

// The complete checkpoints in `root` (step-S directories with a manifest), by step.
std::vector<std::pair<uint64_t, fs::path>> complete_checkpoints(const fs::path& root) {
  std::vector<std::pair<uint64_t, fs::path>> out;
  std::error_code ec;
  for (const fs::directory_entry& e : fs::directory_iterator(root, ec)) {
    const auto step = step_of_name(e.path().filename().string());
    if (step && e.is_directory(ec) && fs::exists(e.path() / kManifestFile, ec)) out.emplace_back(*step, e.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

// The name `root/latest` holds, trimmed; "" when there is none.
std::string latest_name(const fs::path& root) {
  std::ifstream in(root / kLatestFile);
  std::string name;
  if (in) std::getline(in, name);
  while (!name.empty() && std::isspace(static_cast<unsigned char>(name.back()))) name.pop_back();
  return name;
}

void sync_directory(const fs::path& dir) {  // makes renames in it durable (best effort)
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  (void)::fsync(fd);
  ::close(fd);
}

void point_latest_at(const fs::path& root, const std::string& name) {
  write_text_atomically((root / kLatestFile).string(), name + "\n", "checkpoint pointer");
  sync_directory(root);
}

// Of the complete checkpoints up to `step`, all but the newest `keep`; stale temporaries of
// earlier steps (a crash while writing) too. Failures are logged: the new checkpoint stands.
void prune(const fs::path& root, uint64_t step, int keep) {
  std::vector<std::pair<uint64_t, fs::path>> done = complete_checkpoints(root);
  std::erase_if(done, [&](const auto& c) { return c.first > step; });
  std::vector<fs::path> doomed;
  for (size_t i = 0; i + static_cast<size_t>(keep) < done.size(); ++i) doomed.push_back(done[i].second);
  std::error_code ec;
  for (const fs::directory_entry& e : fs::directory_iterator(root, ec)) {
    std::string name = e.path().filename().string();
    if (!name.ends_with(".tmp")) continue;
    name.resize(name.size() - 4);
    if (const auto s = step_of_name(name); s && *s < step) doomed.push_back(e.path());
  }
  for (const fs::path& p : doomed) {
    fs::remove_all(p, ec);
    if (ec)
      SY_LOG(warn, "runtime",
             "checkpoint_dir: cannot delete the old checkpoint " << p.string() << ": " << ec.message());
  }
}

}  // namespace

std::string worker_file(const std::string& dir, int worker) {
  return dir + "/worker-" + std::to_string(worker) + ".safetensors";
}

std::string step_dir_name(uint64_t step) { return "step-" + std::to_string(step); }

void write_checkpoint_files(const std::string& dir, const CheckpointManifest& manifest,
                            const std::string& placement_yaml, const std::string& model_yaml) {
  write_text_atomically(dir + "/" + kPlacementFile, placement_yaml, "checkpoint placement");
  write_text_atomically(dir + "/" + kModelFile, model_yaml, "checkpoint model");
  std::ostringstream m;
  m << "# Switchyard checkpoint (README \"Checkpoints\"): every worker's expert replicas, weights and\n"
    << "# AdamW state, after training step `step`, under the placement in " << kPlacementFile << ".\n"
    << "format: " << kFormat << "\nversion: " << kVersion << "\nstep: " << manifest.step
    << "\nplacement_epoch: " << manifest.placement_epoch << "\nworkers: [";
  for (size_t i = 0; i < manifest.workers.size(); ++i) m << (i ? ", " : "") << manifest.workers[i];
  m << "]   # each wrote worker-{id}.safetensors\n";
  write_text_atomically(dir + "/" + kManifestFile, m.str(), "checkpoint manifest");
  sync_directory(dir);
}

std::string read_checkpoint_text(const std::string& dir, const char* name) {
  const std::string path = dir + "/" + name;
  std::error_code ec;
  if (!fs::exists(path, ec)) throw_input_error("checkpoint file '" + path + "' does not exist");
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  if (!in) throw_input_error("checkpoint file '" + path + "': cannot read: " + std::strerror(errno));
  return text.str();
}

std::optional<std::string> resolve_checkpoint(const std::string& dir) {
  std::error_code ec;
  const fs::path d(dir);
  if (fs::exists(d / kManifestFile, ec)) return dir;
  const fs::path latest = d / kLatestFile;
  if (fs::exists(latest, ec)) {
    const std::string name = latest_name(d);
    if (!step_of_name(name))
      throw_input_error("checkpoint pointer '" + latest.string() + "' holds \"" + name +
                        "\", not the name of a checkpoint (step-N)");
    const fs::path target = d / name;
    if (!fs::exists(target / kManifestFile, ec))
      throw_input_error("checkpoint pointer '" + latest.string() + "' names " + name + ", but " +
                        (target / kManifestFile).string() + " does not exist");
    return target.string();
  }
  if (fs::is_directory(d, ec)) {  // worker files only (before manifests), or nothing
    for (const fs::directory_entry& e : fs::directory_iterator(d, ec)) {
      const std::string name = e.path().filename().string();
      if (name.starts_with("worker-") && name.ends_with(".safetensors")) return std::nullopt;
    }
    throw_input_error("'" + dir + "' holds no checkpoint: neither " + kManifestFile + " (a checkpoint), nor " +
                      kLatestFile + " (a cluster.checkpoint_dir with a complete checkpoint), nor worker files");
  }
  return std::nullopt;  // not visible here: the workers name their files if they lack them
}

CheckpointManifest read_manifest(const std::string& dir) {
  const std::string path = dir + "/" + kManifestFile;
  const std::string text = read_checkpoint_text(dir, kManifestFile);
  const YamlFail fail = [&](int line, const std::string& where, const std::string& message) {
    throw_input_error(path + ":" + std::to_string(line) + ": " + (where.empty() ? "(top level)" : where) + ": " +
                      message);
  };
  YamlDocuments docs;
  try {
    docs = yaml_load_documents(text);
  } catch (const YAML::Exception& e) {
    throw_input_error(path + ":" + std::to_string(yaml_line(e.mark, 1)) + ": YAML syntax error: " + e.msg);
  }
  const YAML::Node root = docs.first;
  if (docs.count != 1 || !root.IsMap())
    fail(1, "", "expected one map (format, version, step, placement_epoch, workers)");
  static constexpr std::string_view known[] = {"format", "version", "step", "placement_epoch", "workers"};
  CheckpointManifest m;
  bool seen[5] = {};
  for (const YamlEntry& e : yaml_map_entries(root, "", 1, known, fail)) {
    const auto index = static_cast<size_t>(std::find(std::begin(known), std::end(known), e.key) - std::begin(known));
    seen[index] = true;
    auto number = [&]() -> uint64_t {
      const auto v = e.value.IsScalar() ? parse_u64(e.value.Scalar()) : std::nullopt;
      if (!v) fail(e.line, e.key, "expected a non-negative integer, got " + describe_yaml_value(e.value));
      return *v;
    };
    if (e.key == "format") {
      if (!e.value.IsScalar() || e.value.Scalar() != kFormat)
        fail(e.line, e.key, "expected \"" + std::string(kFormat) + "\", got " + describe_yaml_value(e.value));
    } else if (e.key == "version") {
      if (number() != kVersion)
        fail(e.line, e.key, "version " + e.value.Scalar() + " (this build reads " + std::to_string(kVersion) + ")");
    } else if (e.key == "step") {
      m.step = number();
    } else if (e.key == "placement_epoch") {
      m.placement_epoch = number();
    } else {
      if (!e.value.IsSequence())
        fail(e.line, e.key, "expected a list of worker ids, got " + describe_yaml_value(e.value));
      for (const YAML::Node& w : e.value) {
        int id = -1;
        if (!w.IsScalar() || parse_yaml_int(w.Scalar(), id) != YamlInt::ok || id < 0)
          fail(yaml_line(w.Mark(), e.line), e.key, "expected a worker id, got " + describe_yaml_value(w));
        m.workers.push_back(id);
      }
    }
  }
  for (size_t i = 0; i < std::size(known); ++i)
    if (!seen[i]) fail(1, std::string(known[i]), "required key is missing");
  return m;
}

void publish_checkpoint(const std::string& root, uint64_t step, int keep) {
  const fs::path r(root);
  const std::string name = step_dir_name(step);
  const fs::path tmp = r / (name + ".tmp"), final_dir = r / name;
  std::error_code ec;
  auto fail = [&](const std::string& what, const std::string& why) {
    throw_input_error("checkpoint of step " + std::to_string(step) + ": " + what + ": " + why);
  };
  if (fs::exists(final_dir, ec)) {  // a run resumed from an earlier step writes this step again
    if (::renameat2(AT_FDCWD, tmp.c_str(), AT_FDCWD, final_dir.c_str(), RENAME_EXCHANGE) == 0) {
      fs::remove_all(tmp, ec);  // now the old one
    } else {
      // No atomic swap on this file system: `latest` must not name what is deleted meanwhile.
      if (latest_name(r) == name) {
        std::vector<std::pair<uint64_t, fs::path>> done = complete_checkpoints(r);
        std::erase_if(done, [&](const auto& c) { return c.first == step; });
        if (!done.empty()) point_latest_at(r, done.back().second.filename().string());
      }
      fs::remove_all(final_dir, ec);
      if (ec) fail("cannot delete the older " + final_dir.string(), ec.message());
      fs::rename(tmp, final_dir, ec);
      if (ec) fail("cannot rename " + tmp.string() + " to " + final_dir.string(), ec.message());
    }
  } else {
    fs::rename(tmp, final_dir, ec);
    if (ec) fail("cannot rename " + tmp.string() + " to " + final_dir.string(), ec.message());
  }
  sync_directory(r);
  point_latest_at(r, name);
  prune(r, step, keep);
}

}  // namespace sy::client_detail
