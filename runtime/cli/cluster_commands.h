// CLI commands of the distributed runtime: up, coordinator, worker, status, checkpoint,
// shutdown, rebalance, placement load, bench serve.
#pragma once

#include <string>
#include <vector>

namespace sy {

int cli_up(const std::vector<std::string>& args);
int cli_coordinator(const std::vector<std::string>& args);
int cli_worker(const std::vector<std::string>& args);
int cli_status(const std::vector<std::string>& args);
int cli_checkpoint(const std::vector<std::string>& args);
int cli_shutdown(const std::vector<std::string>& args);
int cli_rebalance(const std::vector<std::string>& args);
int cli_placement_load(const std::vector<std::string>& args);
int cli_bench_serve(const std::vector<std::string>& args);
int cli_http_token(const std::vector<std::string>& args);
int cli_placement_show(const std::vector<std::string>& args);  // placement_show.cc

}  // namespace sy
