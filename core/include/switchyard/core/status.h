// Status and Result: the error model of every hot path (data plane, control channel,
// dispatch, worker requests).
//
// Hot paths (post, progress, test, exchange, control calls) never throw and never block
// without a deadline: they return a [[nodiscard]] `Status` or `Result<T>`. A failure carries a
// code the caller can act on (`no_resource` means "progress and retry", `timeout` and
// `peer_failed` mean a peer is gone) and a message that names the peer by rank and address.
// Construction and configuration errors (bad options, UCX/NCCL init failures) throw
// `sy::Error` with `ErrorKind::transport`, as everywhere else at start-up.
#pragma once

#include <string>
#include <utility>
#include <variant>

#include "switchyard/core/error.h"

namespace sy {

enum class StatusCode {
  ok,
  no_resource,        // too many requests in flight: call progress()/test() and retry
  timeout,            // a deadline passed; the message names the peers still pending
  peer_failed,        // the peer is gone (connection reset, process exit, cancelled)
  unreachable,        // no address imported for the peer, or no transport reaches it
  invalid_argument,   // caller error: bad rank, tag, size or memory kind
  truncated,          // a message was larger than the posted receive buffer
  protocol,           // malformed or unexpected control-channel message
  unsupported,        // the backend does not do this (e.g. CUDA memory over host-only UCX)
  internal,           // a backend library call failed for another reason
};

const char* status_code_name(StatusCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;  // ok
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}
  static Status ok() { return Status(); }

  bool is_ok() const { return code_ == StatusCode::ok; }
  explicit operator bool() const { return is_ok(); }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }
  // "peer_failed: rank 1 (host:pid 4242): connection reset"
  std::string to_string() const;
  // For start-up code that prefers exceptions: throws sy::Error(transport) unless ok.
  void throw_if_error() const;

 private:
  StatusCode code_ = StatusCode::ok;
  std::string message_;
};

// A value or a non-ok Status; like std::expected (C++23), small on purpose.
template <class T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}  // NOLINT: implicit on purpose
  Result(Status status) : v_(std::move(status)) {  // NOLINT
    if (std::get<Status>(v_).is_ok()) v_ = Status(StatusCode::internal, "Result built from an ok Status without a value");
  }

  bool is_ok() const { return std::holds_alternative<T>(v_); }
  explicit operator bool() const { return is_ok(); }
  // The error; Status::ok() when there is a value.
  Status status() const { return is_ok() ? Status::ok() : std::get<Status>(v_); }

  T& value() & {
    check();
    return std::get<T>(v_);
  }
  const T& value() const& {
    check();
    return std::get<T>(v_);
  }
  T&& value() && {
    check();
    return std::get<T>(std::move(v_));
  }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }

 private:
  void check() const {
    if (!is_ok()) std::get<Status>(v_).throw_if_error();
  }
  std::variant<T, Status> v_;
};

}  // namespace sy
