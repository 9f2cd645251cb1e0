// Leveled, subsystem-tagged logging, cheap when off.
//
// SWITCHYARD_LOG=error|warn|info|debug|trace sets the level (default warn);
// SWITCHYARD_LOG_SUBSYS=kernels,transport,... restricts debug/trace output to subsystems.
// An embedding program can install its own sink with `set_log_sink`.
#pragma once

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

}  // namespace sy

#define SY_LOG(level, subsys, expr)                                              \
  do {                                                                           \
    if (::sy::log_enabled(::sy::LogLevel::level, subsys)) {                      \
      std::ostringstream sy_log_os_;                                             \
      sy_log_os_ << expr;                                                        \
      ::sy::log_message(::sy::LogLevel::level, subsys, sy_log_os_.str());        \
    }                                                                            \
  } while (0)
