#include "switchyard/core/log.h"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>

namespace sy {
namespace {

struct LogState {
  std::mutex mu;
  LogSink sink;
  std::atomic<int> level{static_cast<int>(LogLevel::warn)};
  std::string subsystems;  // empty: all

  LogState() {
    if (const char* env = std::getenv("SWITCHYARD_LOG")) {
      std::string v = env;
      if (v == "error") level = 0;
      else if (v == "warn") level = 1;
      else if (v == "info") level = 2;
      else if (v == "debug") level = 3;
      else if (v == "trace") level = 4;
    }
    if (const char* env = std::getenv("SWITCHYARD_LOG_SUBSYS")) subsystems = env;
  }
};

LogState& state() {
  static LogState s;
  return s;
}

const char* level_name(LogLevel l) {
  switch (l) {
    case LogLevel::error: return "ERROR";
    case LogLevel::warn: return "WARN";
    case LogLevel::info: return "INFO";
    case LogLevel::debug: return "DEBUG";
    case LogLevel::trace: return "TRACE";
  }
  return "?";
}

}  // namespace

void set_log_sink(LogSink sink) {
  std::lock_guard<std::mutex> lock(state().mu);
  state().sink = std::move(sink);
}

void set_log_level(LogLevel level) { state().level = static_cast<int>(level); }

bool log_enabled(LogLevel level, std::string_view subsystem) {
  LogState& s = state();
  if (static_cast<int>(level) > s.level.load(std::memory_order_relaxed)) return false;
  if (level <= LogLevel::info || s.subsystems.empty()) return true;
  return s.subsystems.find(subsystem) != std::string::npos;
}

void log_message(LogLevel level, std::string_view subsystem, const std::string& message) {
  LogState& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  if (s.sink) {
    s.sink(level, subsystem, message);
    return;
  }
  std::fprintf(stderr, "[switchyard %s %.*s] %s\n", level_name(level), static_cast<int>(subsystem.size()),
               subsystem.data(), message.c_str());
}

}  // namespace sy
