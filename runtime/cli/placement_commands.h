// `switchyard placement plan|simulate`: the rebalance planner and the step-time simulator on a
// load trace (docs/placement.md).
#pragma once

#include <string>
#include <vector>

namespace sy {

int cli_placement(const std::vector<std::string>& args);

}  // namespace sy
