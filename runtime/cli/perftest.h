// ucx_perftest (Debian ucx-utils) as the peer the benchmarks measure against in the same run:
// a server process and a client on loopback, its "Final:" line parsed.
#pragma once

#include <cstdint>
#include <cstdio>
#include <optional>
#include <string>

namespace sy {

// A free TCP port on 127.0.0.1 (for a perftest server or a coordinator).
uint16_t free_loopback_port();

// ucx_perftest's summary: median one-way latency (µs) and overall bandwidth (MiB/s).
struct PerftestFinal {
  double latency_50_us = 0;
  double bandwidth_mib_s = 0;
};
// Reads a perftest client's output from `pipe` (appended to `output`); nothing without a
// "Final:" line.
std::optional<PerftestFinal> read_perftest_final(FILE* pipe, std::string& output);

// Median one-way latency in µs of `bytes`-byte tagged messages (`ucx_perftest -t tag_lat`),
// over `ucx_tls` ("" = UCX's choice); nothing when perftest gave no result (printed to stderr).
std::optional<double> perftest_latency_us(const std::string& perftest, const std::string& ucx_tls, int64_t bytes,
                                          int iterations);

}  // namespace sy
