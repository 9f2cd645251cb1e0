// `switchyard bench exchange`: two-process all-to-all-v over UCX shared memory and TCP, as a
// ratio to `ucx_perftest -t tag_bw` measured in the same run.
#pragma once

#include <string>
#include <vector>

namespace sy {

// args: everything after "bench". Returns the exit code; throws sy::Error for bad flags.
int cli_bench_exchange(const std::vector<std::string>& args);

}  // namespace sy
