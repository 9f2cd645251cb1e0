#include "switchyard/launch/launch_env.h"

#include <charconv>
#include <string_view>

#include "switchyard/core/config.h"
#include "switchyard/core/error.h"

namespace sy {
namespace {

struct Launcher {
  const char* source;
  const char* rank;
  const char* world_size;
  const char* local_rank;
};

constexpr Launcher kLaunchers[] = {
    {"torchrun", "RANK", "WORLD_SIZE", "LOCAL_RANK"},
    {"openmpi", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"},
    {"slurm", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"},
};

const char* lookup(const GetEnv& getenv, const char* name) {
  const char* v = getenv(name);
  return v && *v ? v : nullptr;  // set-but-empty counts as unset
}

[[noreturn]] void bad(const char* name, const std::string& value, const std::string& why) {
  throw_config_error(std::string("environment variable ") + name + "=\"" + value + "\": " + why);
}

int integer(const char* name, const char* value, int min) {
  const std::string_view t(value);
  int v = 0;
  const auto r = std::from_chars(t.data(), t.data() + t.size(), v);
  if (r.ec != std::errc() || r.ptr != t.data() + t.size()) bad(name, value, "expected an integer");
  if (v < min) bad(name, value, "must be >= " + std::to_string(min));
  return v;
}

}  // namespace

std::string coordinator_from_env(const GetEnv& getenv) {
  if (const char* c = lookup(getenv, "SWITCHYARD_COORDINATOR")) {
    if (!parse_host_port(c)) bad("SWITCHYARD_COORDINATOR", c, "expected host:port with a port in 0..65535");
    return c;
  }
  const char* addr = lookup(getenv, "MASTER_ADDR");
  if (!addr) return "";
  int port = 0;
  if (const char* p = lookup(getenv, "SWITCHYARD_COORDINATOR_PORT")) {
    port = integer("SWITCHYARD_COORDINATOR_PORT", p, 1);
    if (port > 65535) bad("SWITCHYARD_COORDINATOR_PORT", p, "must be <= 65535");
  } else if (const char* mp = lookup(getenv, "MASTER_PORT")) {
    port = integer("MASTER_PORT", mp, 1) + 1;
    if (port > 65535) {
      bad("MASTER_PORT", mp, "Switchyard's coordinator uses MASTER_PORT + 1, which is past 65535; set "
                             "SWITCHYARD_COORDINATOR_PORT");
    }
  } else {
    bad("MASTER_ADDR", addr, "set, but neither MASTER_PORT nor SWITCHYARD_COORDINATOR_PORT gives the port");
  }
  const std::string a(addr);
  const std::string hp = (a.find(':') != std::string::npos ? "[" + a + "]" : a) + ":" + std::to_string(port);
  if (!parse_host_port(hp)) bad("MASTER_ADDR", addr, "not a host name or IP address");
  return hp;
}

std::optional<LaunchEnv> detect_launch_env(const GetEnv& getenv) {
  for (const Launcher& l : kLaunchers) {
    const char* rank = lookup(getenv, l.rank);
    const char* size = lookup(getenv, l.world_size);
    if (!rank && !size) continue;
    if (!size) bad(l.rank, rank, std::string("set without ") + l.world_size + " (" + l.source + ")");
    if (!rank) bad(l.world_size, size, std::string("set without ") + l.rank + " (" + l.source + ")");
    LaunchEnv env;
    env.source = l.source;
    env.world_size = integer(l.world_size, size, 1);
    env.rank = integer(l.rank, rank, 0);
    if (env.rank >= env.world_size) {
      bad(l.rank, rank, std::string("rank must be below ") + l.world_size + " (" + std::to_string(env.world_size) + ")");
    }
    if (const char* local = lookup(getenv, l.local_rank)) env.local_rank = integer(l.local_rank, local, 0);
    env.coordinator = coordinator_from_env(getenv);
    return env;
  }
  return std::nullopt;
}

}  // namespace sy
