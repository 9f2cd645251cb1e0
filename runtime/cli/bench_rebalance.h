// `switchyard bench rebalance`: what live rebalancing buys and costs on a running cluster.
#pragma once

#include <string>
#include <vector>

namespace sy {

// args: everything after "bench rebalance". Returns the exit code.
int cli_bench_rebalance(const std::vector<std::string>& args);

}  // namespace sy
