// `switchyard trace merge` (trace_command.cc).
#pragma once

#include <string>
#include <vector>

namespace sy {

int cli_trace(const std::vector<std::string>& args);

}  // namespace sy
