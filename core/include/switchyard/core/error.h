// Switchyard's error model at process boundaries (CLI, config, files, wire).
//
// Start-up, configuration and file I/O throw `sy::Error` with a kind and a message that
// names the offending key, file, tensor or peer. The CLI maps the kind to an exit code:
// config errors exit 2, input/file errors (bad user input only) exit 3, dead peers and
// timeouts exit 4, everything else exits 1. Hot paths return sy::Status (core/status.h).
#pragma once

#include <stdexcept>
#include <string>

namespace sy {

enum class ErrorKind {
  config,     // bad YAML / settings: exit code 2
  input,      // bad files, shapes, user-provided tensors: exit code 3
  runtime,    // internal failures (numerical, resource): exit code 1
  transport,  // peers, wire frames, timeouts: exit code 4
};

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& message) : std::runtime_error(message), kind_(kind) {}
  ErrorKind kind() const { return kind_; }
  int exit_code() const {
    switch (kind_) {
      case ErrorKind::config: return 2;
      case ErrorKind::input: return 3;
      case ErrorKind::transport: return 4;
      case ErrorKind::runtime: break;
    }
    return 1;
  }

 private:
  ErrorKind kind_;
};

[[noreturn]] inline void throw_config_error(const std::string& m) { throw Error(ErrorKind::config, m); }
[[noreturn]] inline void throw_input_error(const std::string& m) { throw Error(ErrorKind::input, m); }
[[noreturn]] inline void throw_runtime_error(const std::string& m) { throw Error(ErrorKind::runtime, m); }

// SY_CHECK(cond, msg): an internal contract (a caller inside Switchyard broke it). Throws a
// runtime error (exit code 1) naming the condition; user input is validated where it enters,
// with an input error (exit code 3) that names the file, key or tensor.
#define SY_CHECK(cond, msg)                                                                          \
  do {                                                                                              \
    if (!(cond)) ::sy::throw_runtime_error("internal error: " + std::string(msg) + " (failed: " #cond ")"); \
  } while (0)

}  // namespace sy
