// The harness contract of every fuzz target (README "Fuzzing"):
//
//   - a parser refuses bad input with sy::Error of the kind it documents (config for YAML,
//     input for tensor files) — or, where it says so, a protobuf parse that returns false;
//   - any other exception, and sy::Error of kind runtime ("internal error", exit code 1), is a
//     bug: the harness prints it and aborts, so libFuzzer records the input as a crash;
//   - crashes, hangs and sanitizer reports (ASan, UBSan) are bugs as well.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <initializer_list>
#include <string>
#include <string_view>

#include "switchyard/core/error.h"
#include "switchyard/core/tensor.h"

namespace sy::fuzz {

[[noreturn]] inline void bug(const std::string& what) {
  std::fprintf(stderr, "\nfuzz: BUG: %s\n", what.c_str());
  std::fflush(stderr);
  std::abort();
}

inline const char* kind_name(ErrorKind k) {
  switch (k) {
    case ErrorKind::config: return "config";
    case ErrorKind::input: return "input";
    case ErrorKind::runtime: return "runtime (internal)";
    case ErrorKind::transport: return "transport";
  }
  return "?";
}

// Runs `f`; true when it returned. sy::Error of an `allowed` kind is a refusal (false); any
// other exception aborts.
template <class F>
bool refuses_only_with(std::initializer_list<ErrorKind> allowed, const char* what, F&& f) {
  try {
    f();
    return true;
  } catch (const Error& e) {
    for (ErrorKind k : allowed)
      if (e.kind() == k) return false;
    bug(std::string(what) + " threw sy::Error of kind " + kind_name(e.kind()) + " (exit " +
        std::to_string(e.exit_code()) + "): " + e.what());
  } catch (const std::exception& e) {
    bug(std::string(what) + " threw an exception that is not sy::Error: " + e.what());
  } catch (...) {
    bug(std::string(what) + " threw something that is not an exception");
  }
}

// Runs `f`, which must not throw at all (a round trip of what a parser accepted).
template <class F>
void must_succeed(const char* what, F&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    bug(std::string(what) + " failed on what was accepted before: " + e.what());
  }
}

// Same shape and the same bytes (NaN payloads included).
bool same_bits(const Tensor& a, const Tensor& b);

// A per-process scratch file for the readers that take a path: "$TMPDIR/sy-fuzz-<pid>-<name>".
std::string scratch_path(std::string_view name);
void write_file(const std::string& path, const uint8_t* data, size_t size);

}  // namespace sy::fuzz
