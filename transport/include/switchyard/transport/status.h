// The transport's error model is the project's one: sy::Status / sy::Result (core/status.h).
#pragma once

#include "switchyard/core/status.h"

namespace sy::transport {
using sy::Result;
using sy::Status;
using sy::status_code_name;
using sy::StatusCode;
}  // namespace sy::transport
