// `switchyard colocated`: a co-located expert-parallel training job (colocated_command.cc).
#pragma once

#include <string>
#include <vector>

namespace sy {

int cli_colocated(const std::vector<std::string>& args);

}  // namespace sy
