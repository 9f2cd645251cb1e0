#include "switchyard/core/log.h"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>

namespace sy {
namespace {

struct LogState {
  std::mutex mu;
  LogSink sink;
  std::atomic<int> level{static_cast<int>(LogLevel::warn)};
  std::string subsystems;  // empty: all
  bool json = false;       // SWITCHYARD_LOG_FORMAT=json
  LogContext context;      // guarded by mu

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
    if (const char* env = std::getenv("SWITCHYARD_LOG_FORMAT")) {
      const std::string v = env;
      if (v == "json") json = true;
      else if (v != "text" && !v.empty())
        std::fprintf(stderr, "[switchyard WARN core] SWITCHYARD_LOG_FORMAT='%s' is neither text nor json; using text\n", env);
    }
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

const char* level_json_name(LogLevel l) {
  switch (l) {
    case LogLevel::error: return "error";
    case LogLevel::warn: return "warn";
    case LogLevel::info: return "info";
    case LogLevel::debug: return "debug";
    case LogLevel::trace: return "trace";
  }
  return "?";
}

// UTC, ISO 8601 with milliseconds: "2025-01-02T03:04:05.678Z".
std::string utc_now() {
  const auto now = std::chrono::system_clock::now();
  const std::time_t secs = std::chrono::system_clock::to_time_t(now);
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000;
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[32];
  const size_t n = std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
  char millis[8];
  std::snprintf(millis, sizeof millis, ".%03dZ", static_cast<int>(ms));
  return std::string(buf, n) + millis;
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

void set_log_role(std::string_view role, int id) {
  std::lock_guard<std::mutex> lock(state().mu);
  state().context = {std::string(role), id, 0};
}

void set_log_role_if_unset(std::string_view role, int id) {
  std::lock_guard<std::mutex> lock(state().mu);
  if (state().context.role.empty()) state().context = {std::string(role), id, 0};
}

void set_log_id(std::string_view role, int id) {
  std::lock_guard<std::mutex> lock(state().mu);
  if (state().context.role == role) state().context.id = id;
}

void set_log_epoch(std::string_view role, uint64_t epoch) {
  std::lock_guard<std::mutex> lock(state().mu);
  if (state().context.role == role) state().context.epoch = epoch;
}

LogContext log_context() {
  std::lock_guard<std::mutex> lock(state().mu);
  return state().context;
}

std::string format_json_log_line(LogLevel level, std::string_view subsystem, std::string_view message,
                                 const LogContext& context) {
  nlohmann::ordered_json line;
  line["time"] = utc_now();
  line["level"] = level_json_name(level);
  line["component"] = std::string(subsystem);
  line["role"] = context.role.empty() ? nlohmann::ordered_json(nullptr) : nlohmann::ordered_json(context.role);
  line["id"] = context.id < 0 ? nlohmann::ordered_json(nullptr) : nlohmann::ordered_json(context.id);
  line["epoch"] = context.epoch;
  line["pid"] = static_cast<int>(::getpid());
  line["message"] = std::string(message);
  // Invalid UTF-8 in a message (a peer's bytes) is replaced, never a throw inside logging.
  return line.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
}

void log_message(LogLevel level, std::string_view subsystem, const std::string& message) {
  LogState& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  if (s.sink) {
    s.sink(level, subsystem, message);
    return;
  }
  if (s.json) {
    const std::string line = format_json_log_line(level, subsystem, message, s.context) + "\n";
    std::fwrite(line.data(), 1, line.size(), stderr);
    return;
  }
  std::fprintf(stderr, "[switchyard %s %.*s] %s\n", level_name(level), static_cast<int>(subsystem.size()),
               subsystem.data(), message.c_str());
}

}  // namespace sy
