#include "switchyard/core/trace.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "switchyard/core/error.h"

namespace sy::trace {
namespace {

struct Event {
  const char* name;
  std::string where;
  int64_t start_us, dur_us;
  uint64_t tid;
};

// The process's recorder; spans beyond kMaxEvents are counted, not kept.
struct Recorder {
  static constexpr size_t kMaxEvents = 2'000'000;
  std::mutex mu;
  std::string path, process;
  std::vector<Event> events;
  uint64_t dropped = 0;
  int64_t steady_at_start_us = 0, system_at_start_us = 0;
  bool at_exit_registered = false;
};

std::atomic<bool> g_enabled{false};
Recorder& recorder() {
  static Recorder* r = new Recorder;  // never destroyed: spans may end during static destruction
  return *r;
}

int64_t steady_us() {
  return std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
int64_t system_us() {
  return std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}
uint64_t thread_id() { return std::hash<std::thread::id>{}(std::this_thread::get_id()) & 0xffffff; }

nlohmann::json document(const Recorder& r) {
  const int pid = static_cast<int>(::getpid());
  nlohmann::json events = nlohmann::json::array();
  events.push_back({{"name", "process_name"}, {"ph", "M"}, {"pid", pid}, {"args", {{"name", r.process}}}});
  for (const Event& e : r.events) {
    nlohmann::json ev = {{"name", e.name}, {"cat", "switchyard"}, {"ph", "X"}, {"pid", pid}, {"tid", e.tid},
                         {"ts", e.start_us - r.steady_at_start_us}, {"dur", e.dur_us}};
    if (!e.where.empty()) ev["args"] = {{"where", e.where}};
    events.push_back(std::move(ev));
  }
  return {{"traceEvents", std::move(events)},
          {"displayTimeUnit", "ms"},
          {"switchyard", {{"process", r.process}, {"pid", pid}, {"system_us_at_ts0", r.system_at_start_us},
                          {"dropped_spans", r.dropped}}}};
}

}  // namespace

void start(const std::string& path, const std::string& process) {
  Recorder& r = recorder();
  std::lock_guard<std::mutex> lock(r.mu);
  r.path = path;
  r.process = process;
  if (!g_enabled) {
    r.steady_at_start_us = steady_us();
    r.system_at_start_us = system_us();
  }
  if (!r.at_exit_registered) {
    r.at_exit_registered = true;
    std::atexit([] {
      try {
        flush();
      } catch (...) {  // at exit nothing can be reported any more
      }
    });
  }
  g_enabled = true;
}

void start_from_env(const std::string& process) {
  const char* path = std::getenv("SWITCHYARD_TRACE");
  if (path && *path && !g_enabled) start(path, process);
}

bool enabled() { return g_enabled; }

void set_process_name(const std::string& process) {
  Recorder& r = recorder();
  std::lock_guard<std::mutex> lock(r.mu);
  r.process = process;
}

void flush() {
  if (!g_enabled) return;
  Recorder& r = recorder();
  std::lock_guard<std::mutex> lock(r.mu);
  std::ofstream out(r.path, std::ios::trunc);
  if (out) out << document(r).dump() << "\n";
  if (!out) throw Error(ErrorKind::input, "trace file " + r.path + ": cannot write it");
}

namespace {

nlohmann::json read_trace(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw Error(ErrorKind::input, "trace file " + path + ": cannot open it");
  nlohmann::json doc = nlohmann::json::parse(in, nullptr, false);
  if (doc.is_discarded() || !doc.contains("traceEvents") || !doc.contains("switchyard") ||
      !doc["switchyard"].contains("system_us_at_ts0"))
    throw Error(ErrorKind::input, "trace file " + path + ": not a Switchyard trace (written by --trace)");
  return doc;
}

}  // namespace

size_t merge_files(const std::vector<std::string>& inputs, const std::string& output) {
  std::vector<nlohmann::json> docs;
  int64_t earliest = 0;
  for (const std::string& path : inputs) {
    docs.push_back(read_trace(path));
    const int64_t t0 = docs.back()["switchyard"]["system_us_at_ts0"].get<int64_t>();
    earliest = docs.size() == 1 ? t0 : std::min(earliest, t0);
  }
  nlohmann::json events = nlohmann::json::array();
  size_t spans = 0;
  for (size_t i = 0; i < docs.size(); ++i) {
    const int64_t shift = docs[i]["switchyard"]["system_us_at_ts0"].get<int64_t>() - earliest;
    for (nlohmann::json& e : docs[i]["traceEvents"]) {
      e["pid"] = static_cast<int>(i + 1);  // pids of different machines may collide
      if (e.value("ph", "") == "X") {
        e["ts"] = e["ts"].get<int64_t>() + shift;
        ++spans;
      }
      events.push_back(std::move(e));
    }
  }
  std::ofstream out(output, std::ios::trunc);
  if (out) out << nlohmann::json{{"traceEvents", std::move(events)}, {"displayTimeUnit", "ms"}}.dump() << "\n";
  if (!out) throw Error(ErrorKind::input, "trace file " + output + ": cannot write it");
  return spans;
}

Span::Span(const char* name, std::string where) : name_(name) {
  if (!g_enabled) return;
  where_ = std::move(where);
  start_us_ = steady_us();
}

Span::~Span() {
  if (start_us_ < 0) return;
  const int64_t end = steady_us();
  Recorder& r = recorder();
  std::lock_guard<std::mutex> lock(r.mu);
  if (r.events.size() >= Recorder::kMaxEvents) {
    ++r.dropped;
    return;
  }
  r.events.push_back({name_, std::move(where_), start_us_, end - start_us_, thread_id()});
}

}  // namespace sy::trace
