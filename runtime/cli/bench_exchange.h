// `switchyard bench exchange`: two-process all-to-all-v over UCX shared memory and TCP, as a
// ratio to `ucx_perftest -t tag_bw` measured in the same run.
#pragma once

#include <string>
#include <vector>

namespace sy {

// args: everything after "bench". Returns the exit code; throws sy::Error for bad flags.
int cli_bench_exchange(const std::vector<std::string>& args);

// One `ucx_perftest -t tag_bw` stream of `mib`-MiB messages over loopback with UCX_TLS for
// `tls` ("shm": sm,self; "tcp": tcp,self), the better of its poll and sleep wait modes, in MiB/s
// (0 when ucx_perftest gave no result).
double ucx_perftest_tag_bw(const std::string& tls, int64_t mib, const std::string& perftest = "ucx_perftest");

}  // namespace sy
