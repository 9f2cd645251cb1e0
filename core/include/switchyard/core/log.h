// Leveled, subsystem-tagged logging, cheap when off.
//
// SWITCHYARD_LOG=error|warn|info|debug|trace sets the level (default warn);
// SWITCHYARD_LOG_SUBSYS=kernels,transport,... restricts debug/trace output to subsystems.
// An embedding program can install its own sink with `set_log_sink`.
// SWITCHYARD_LOG_FORMAT=json writes one JSON object per line instead, for log collectors:
//   {"time":"2025-01-02T03:04:05.678Z","level":"warn","component":"runtime","role":"worker",
//    "id":2,"epoch":3,"pid":4242,"message":"..."}
// with the process's role, id (null until known) and placement epoch (the log context below).
#pragma once

#include <cstdint>
#include <functional>
#include <sstream>
#include <string>
#include <string_view>

namespace sy {

enum class LogLevel { error = 0, warn = 1, info = 2, debug = 3, trace = 4 };

using LogSink = std::function<void(LogLevel, std::string_view subsystem, std::string_view message)>;

void set_log_sink(LogSink sink);  // nullptr restores the default (stderr)
void set_log_level(LogLevel level);
bool log_enabled(LogLevel level, std::string_view subsystem);
void log_message(LogLevel level, std::string_view subsystem, const std::string& message);

// The process's log context: its role ("coordinator", "worker", "client", or the CLI command),
// its id in that role (a worker's id, a client's data-plane id; -1: none) and the placement epoch
// it works with. Roles are per process: set_log_role is called by the program's entry point;
// the id and epoch setters change them only while the process has that role (so in-process
// tests, where every role is a thread of one process, keep the role the test set).
void set_log_role(std::string_view role, int id = -1);
void set_log_role_if_unset(std::string_view role, int id = -1);
void set_log_id(std::string_view role, int id);
void set_log_epoch(std::string_view role, uint64_t epoch);
struct LogContext {
  std::string role;
  int id = -1;
  uint64_t epoch = 0;
};
LogContext log_context();
// One log line in the JSON format (what the json format writes, without the newline).
std::string format_json_log_line(LogLevel level, std::string_view subsystem, std::string_view message,
                                 const LogContext& context);

}  // namespace sy

#define SY_LOG(level, subsys, expr)                                              \
  do {                                                                           \
    if (::sy::log_enabled(::sy::LogLevel::level, subsys)) {                      \
      std::ostringstream sy_log_os_;                                             \
      sy_log_os_ << expr;                                                        \
      ::sy::log_message(::sy::LogLevel::level, subsys, sy_log_os_.str());        \
    }                                                                            \
  } while (0)
