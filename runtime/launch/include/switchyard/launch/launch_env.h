// Rank, world size and coordinator address from the launcher that started this process.
//
// On a cluster, Switchyard's processes run under the launcher people already use, which tells
// each process who it is through environment variables:
//
//   launcher            rank                   world size             local rank
//   torchrun            RANK                   WORLD_SIZE             LOCAL_RANK
//   Open MPI (mpirun)   OMPI_COMM_WORLD_RANK   OMPI_COMM_WORLD_SIZE   OMPI_COMM_WORLD_LOCAL_RANK
//   Slurm (srun)        SLURM_PROCID           SLURM_NTASKS           SLURM_LOCALID
//
// checked in that order (torchrun under Slurm, or mpirun inside a Slurm allocation, reports
// its own per-process rank, not Slurm's).
//
// The coordinator address:
//   1. SWITCHYARD_COORDINATOR="host:port", when set, always wins (any launcher);
//   2. else MASTER_ADDR (torchrun sets it; Slurm scripts often export it) with the port
//      SWITCHYARD_COORDINATOR_PORT, or MASTER_PORT + 1 when that is not set — MASTER_PORT
//      itself is torch.distributed's TCP store, which Switchyard must not collide with;
//   3. else "" — the caller uses `cluster.coordinator` of its config.
#pragma once

#include <cstdlib>
#include <functional>
#include <optional>
#include <string>

namespace sy {

struct LaunchEnv {
  int rank = 0;
  int world_size = 1;
  std::string coordinator;  // "host:port", or "" (not given by the environment)
  std::string source;       // "torchrun", "openmpi" or "slurm"
  int local_rank = 0;       // rank among the processes on this node; 0 when the launcher does not say
};

using GetEnv = std::function<const char*(const char*)>;

// The launcher's view of this process, or nullopt when no launcher variables are set.
// Malformed values (not an integer, negative, rank >= world size, a bad host:port, a rank
// variable without its world-size partner) throw sy::Error(config) naming the variable.
// `getenv` is injectable for tests.
std::optional<LaunchEnv> detect_launch_env(const GetEnv& getenv = ::getenv);

// The coordinator address from the environment alone (rules 1 and 2 above), "" when it does
// not give one. Throws sy::Error(config) naming the variable on malformed values.
std::string coordinator_from_env(const GetEnv& getenv = ::getenv);

}  // namespace sy
